//! Reading Kubernetes manifests (YAML or JSON, multi-document, `v1` Lists) into a snapshot.
//!
//! Used by `knat render`, the demo and (later) `knat run --from-files`. Text that cannot be
//! parsed at all is an error with the file and line; an object that parses but is malformed is
//! skipped with a note naming it and the reason, and the rest is kept.

use std::fmt;

use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;
use serde::Deserialize;
use serde_json::Value;

use crate::model::convert::{self, Skip};
use crate::model::{NodeInfo, Snapshot};

/// One input document source (a file, or standard input).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Input that cannot be parsed at all. Not retryable: the file must be fixed.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// YAML/JSON syntax error: where, in which document (and the object it seems to hold, as
    /// far as the text could be read), and what the parser said.
    #[error("{file}:{line}:{column}: cannot parse document {document} (from line {document_line}{}): {message}", object_part(object.as_deref()))]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        /// 1-based document number in the file (documents are separated by `---`).
        document: usize,
        /// The line the document starts on.
        document_line: usize,
        /// `Kind namespace/name` read from the document's text up to the error, if found.
        object: Option<String>,
        message: String,
    },
}

fn object_part(object: Option<&str>) -> String {
    object
        .map(|o| format!(", {o} as far as it could be read"))
        .unwrap_or_default()
}

/// The line the document holding `line` starts on: the line after the last `---` separator
/// before it (1 when there is none).
fn document_start(text: &str, line: usize) -> usize {
    text.lines()
        .take(line.saturating_sub(1))
        .enumerate()
        .filter(|(_, l)| *l == "---" || l.starts_with("--- "))
        .map(|(i, _)| i + 2)
        .last()
        .unwrap_or(1)
}

/// The value of the first `key: value` or `"key": "value"` in `text` (YAML block or flow
/// style, or JSON), unquoted.
fn first_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = text;
    loop {
        let at = rest.find(key)?;
        let before = rest[..at].chars().last();
        let after = &rest[at + key.len()..];
        let after = after.strip_prefix('"').unwrap_or(after);
        let starts_word = before.is_none_or(|c| !c.is_alphanumeric());
        if starts_word && let Some(value) = after.strip_prefix(':') {
            let value = value.trim_start_matches([' ', '\t', '"', '\'']);
            let end = value
                .find(|c: char| c.is_whitespace() || matches!(c, ',' | '}' | '"' | '\'' | ']'))
                .unwrap_or(value.len());
            if end > 0 {
                return Some(&value[..end]);
            }
        }
        rest = &rest[at + key.len()..];
    }
}

/// `Kind namespace/name` (or what of it is there) from a document's text up to an error.
fn object_hint(text: &str) -> Option<String> {
    let kind = first_value(text, "kind");
    let metadata = text.find("metadata").map(|at| &text[at..]);
    let name = metadata.and_then(|m| first_value(m, "name"));
    let namespace = metadata.and_then(|m| first_value(m, "namespace"));
    match (kind, namespace, name) {
        (None, _, None) => None,
        (kind, Some(ns), Some(name)) => Some(format!("{} {ns}/{name}", kind.unwrap_or("object"))),
        (kind, None, Some(name)) => Some(format!("{} {name}", kind.unwrap_or("object"))),
        (Some(kind), _, None) => Some(format!("a {kind}")),
    }
}

/// How serious a note is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Deliberately ignored, as upstream would (headless, other kinds, ...).
    Info,
    /// Broken object skipped.
    Warning,
}

/// Something worth telling the operator about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Info => "note",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.message)
    }
}

/// Everything read from the sources.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Services and slices; `node` is set when a Node named like this proxy's node was found.
    pub snapshot: Snapshot,
    /// Every Node found, by name.
    pub nodes: Vec<NodeInfo>,
    pub notes: Vec<Note>,
}

fn describe(value: &Value) -> String {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("<no kind>");
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Calls `visit` with every document of every source and where it came from
/// (`file (document N)`); stops at the first syntax error.
fn for_each_document(
    sources: &[Source],
    mut visit: impl FnMut(Value, &str),
) -> Result<(), InputError> {
    for source in sources {
        for (index, document) in serde_yaml_ng::Deserializer::from_str(&source.text).enumerate() {
            let value = Value::deserialize(document).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                let document_line = document_start(&source.text, line);
                let upto: String = source
                    .text
                    .lines()
                    .skip(document_line - 1)
                    .take(line.saturating_sub(document_line) + 1)
                    .collect::<Vec<_>>()
                    .join("\n");
                InputError::Syntax {
                    file: source.name.clone(),
                    line,
                    column,
                    document: index + 1,
                    document_line,
                    object: object_hint(&upto),
                    message: e.to_string(),
                }
            })?;
            visit(value, &format!("{} (document {})", source.name, index + 1));
        }
    }
    Ok(())
}

/// Calls `visit` with every object of a document: a `v1` List (any `...List` kind) is
/// flattened, an empty document is skipped.
fn for_each_object(value: Value, visit: &mut impl FnMut(Value)) {
    if value.is_null() {
        return;
    }
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"));
    if !is_list {
        visit(value);
        return;
    }
    if let Some(Value::Array(items)) = value.get("items").cloned() {
        for item in items {
            for_each_object(item, visit);
        }
    }
}

/// Parses every document of every source and builds the snapshot for `node_name`.
pub fn load(sources: &[Source], node_name: &str) -> Result<Loaded, InputError> {
    let mut loaded = Loaded::default();
    for_each_document(sources, |value, place| {
        for_each_object(value, &mut |object| {
            add_value(&mut loaded, object, place, node_name)
        })
    })?;
    Ok(loaded)
}

fn add_value(loaded: &mut Loaded, value: Value, place: &str, node_name: &str) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let what = describe(&value);
    let skip = |loaded: &mut Loaded, reason: Skip| {
        let severity = match reason {
            Skip::Ignored(_) => Severity::Info,
            Skip::Malformed(_) => Severity::Warning,
        };
        loaded.notes.push(Note {
            severity,
            message: format!("{place}: {what} skipped: {reason}"),
        });
    };
    match kind.as_str() {
        "Service" => match serde_json::from_value::<K8sService>(value) {
            Ok(svc) => match convert::service(&svc) {
                Ok(service) => loaded.snapshot.upsert_service(service),
                Err(reason) => skip(loaded, reason),
            },
            Err(e) => skip(loaded, Skip::Malformed(e.to_string())),
        },
        "EndpointSlice" => match serde_json::from_value::<K8sEndpointSlice>(value) {
            Ok(slice) => match convert::endpoint_slice(&slice) {
                Ok(converted) => {
                    let ns = slice.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                    loaded.snapshot.upsert_slice(&ns, converted);
                }
                Err(reason) => skip(loaded, reason),
            },
            Err(e) => skip(loaded, Skip::Malformed(e.to_string())),
        },
        "Node" => match serde_json::from_value::<K8sNode>(value) {
            Ok(node) => match convert::node(&node) {
                Ok(info) => {
                    if info.name == node_name {
                        loaded.snapshot.node = Some(info.clone());
                    }
                    loaded.nodes.push(info);
                }
                Err(reason) => skip(loaded, reason),
            },
            Err(e) => skip(loaded, Skip::Malformed(e.to_string())),
        },
        "" => skip(loaded, Skip::Malformed("no kind".into())),
        other => loaded.notes.push(Note {
            severity: Severity::Info,
            message: format!("{place}: {what} ignored: knat reads only Services, EndpointSlices and Nodes ({other})"),
        }),
    }
}

/// The raw Kubernetes objects of the sources, before conversion: what `knat doctor` reads, so
/// it can also see (and explain) the objects that conversion ignores or rejects.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<K8sService>,
    pub slices: Vec<K8sEndpointSlice>,
    pub nodes: Vec<K8sNode>,
    /// Objects that are not even valid Kubernetes objects of their kind, and other kinds.
    pub notes: Vec<Note>,
}

/// Parses every document of every source into raw Services, EndpointSlices and Nodes.
pub fn load_objects(sources: &[Source]) -> Result<Objects, InputError> {
    let mut objects = Objects::default();
    for_each_document(sources, |value, place| {
        for_each_object(value, &mut |object| add_object(&mut objects, object, place))
    })?;
    Ok(objects)
}

fn add_object(objects: &mut Objects, value: Value, place: &str) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let what = describe(&value);
    let bad = |objects: &mut Objects, e: serde_json::Error| {
        objects.notes.push(Note {
            severity: Severity::Warning,
            message: format!("{place}: {what} skipped: malformed: {e}"),
        })
    };
    match kind.as_str() {
        "Service" => match serde_json::from_value(value) {
            Ok(o) => objects.services.push(o),
            Err(e) => bad(objects, e),
        },
        "EndpointSlice" => match serde_json::from_value(value) {
            Ok(o) => objects.slices.push(o),
            Err(e) => bad(objects, e),
        },
        "Node" => match serde_json::from_value(value) {
            Ok(o) => objects.nodes.push(o),
            Err(e) => bad(objects, e),
        },
        _ => objects.notes.push(Note {
            severity: Severity::Info,
            message: format!(
                "{place}: {what} ignored: knat reads only Services, EndpointSlices and Nodes"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: demo}
spec:
  clusterIP: 10.96.0.300
  ports: [{port: 80}]
---
apiVersion: v1
kind: List
items:
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: web-abc, namespace: demo, labels: {kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{name: http, port: 8080, protocol: TCP}]
  endpoints: [{addresses: [10.244.1.5], nodeName: node-1}]
"#;

    #[test]
    fn loads_lists_and_skips_bad_objects_with_notes() {
        let loaded = load(
            &[Source {
                name: "x.yaml".into(),
                text: GOOD.into(),
            }],
            "node-1",
        )
        .unwrap();
        assert_eq!(loaded.snapshot.services().len(), 1);
        assert_eq!(loaded.snapshot.slices().len(), 1);
        let warnings: Vec<_> = loaded
            .notes
            .iter()
            .filter(|n| n.severity == Severity::Warning)
            .collect();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].message.contains("Service demo/bad"),
            "{}",
            warnings[0].message
        );
        assert!(
            warnings[0].message.contains("10.96.0.300"),
            "{}",
            warnings[0].message
        );
        assert!(loaded.notes.iter().any(|n| n.message.contains("ConfigMap")));
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let text = "kind: Service\nmetadata: {name: [\n";
        let err = load(
            &[Source {
                name: "broken.yaml".into(),
                text: text.into(),
            }],
            "n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("broken.yaml:"), "{msg}");
    }

    #[test]
    fn syntax_errors_name_the_document_and_the_object_read_so_far() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: d}\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata:\n  name: b\n  namespace: shop\n\
                    spec: {ports: [\n";
        let err = load_objects(&[Source {
            name: "two.yaml".into(),
            text: text.into(),
        }])
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(
                "cannot parse document 2 (from line 5, Service shop/b as far as it could be read)"
            ),
            "{msg}"
        );
        let json =
            "{\"kind\": \"EndpointSlice\", \"metadata\": {\"name\": \"web-1\"}, \"endpoints\": [";
        let msg = load_objects(&[Source {
            name: "s.json".into(),
            text: json.into(),
        }])
        .unwrap_err()
        .to_string();
        assert!(
            msg.starts_with("s.json:")
                && msg.contains(
                    "document 1 (from line 1, EndpointSlice web-1 as far as it could be read)"
                ),
            "{msg}"
        );
        let msg = load_objects(&[Source {
            name: "g.yaml".into(),
            text: "[1, 2\n".into(),
        }])
        .unwrap_err()
        .to_string();
        assert!(msg.contains("document 1 (from line 1): "), "{msg}");
    }

    #[test]
    fn first_value_reads_yaml_and_json_keys_only_as_whole_words() {
        assert_eq!(first_value("kind: Service\n", "kind"), Some("Service"));
        assert_eq!(first_value("{\"kind\": \"Node\"}", "kind"), Some("Node"));
        assert_eq!(first_value("subkind: X\nkind: Y", "kind"), Some("Y"));
        assert_eq!(first_value("metadata: {name: b", "name"), Some("b"));
        assert_eq!(first_value("kind:\n", "kind"), None);
    }
}
