//! Keys of a configuration file that are not `KubeProxyConfiguration` fields.
//!
//! kube-proxy decodes strictly first and, when that fails only because of unknown fields,
//! decodes again leniently and logs that it did: the unknown fields are ignored. knat ignores
//! them too and names each one in a warning.

use serde_yaml_ng::Value;

use super::types::KubeProxyConfiguration;

/// The dotted paths (`iptables.masqueradeBits`) of keys in `document` that the schema lacks.
pub fn unknown_fields(document: &Value) -> Vec<String> {
    let schema = match serde_yaml_ng::to_value(KubeProxyConfiguration::default()) {
        Ok(value) => value,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    walk(document, &schema, "", &mut out);
    out
}

fn walk(document: &Value, schema: &Value, prefix: &str, out: &mut Vec<String>) {
    let (Value::Mapping(doc), Value::Mapping(known)) = (document, schema) else {
        // A leaf (or a free-form value such as featureGates) in the schema: not descended.
        return;
    };
    for (key, value) in doc {
        let name = match key {
            Value::String(s) => s.clone(),
            other => serde_yaml_ng::to_string(other)
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        };
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match known.get(key) {
            Some(sub) => walk(value, sub, &path, out),
            None => out.push(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unknown_keys_at_every_level() {
        let doc: Value = serde_yaml_ng::from_str(
            "apiVersion: x\nmetadata:\n  name: config\niptables:\n  masqueradeBits: 3\n  minSyncPeriod: 1s\nfeatureGates:\n  Anything: true\nClusterCIDR: 10.0.0.0/8\n",
        )
        .expect("yaml");
        assert_eq!(
            unknown_fields(&doc),
            vec!["metadata", "iptables.masqueradeBits", "ClusterCIDR"]
        );
    }
}
