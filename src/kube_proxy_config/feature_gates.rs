//! The feature gates kube-proxy 1.37's iptables mode consults, and what knat does with each
//! (`--feature-gates` and `featureGates`).
//!
//! kube-proxy refuses a gate name it does not know; knat knows only the gates of its own
//! mode, so any other name (a gate of another component, or of nftables mode) is accepted
//! with a warning and has no effect.

/// What knat does with one `NAME=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// knat behaves as kube-proxy does with this value.
    Honoured,
    /// Accepted; it changes nothing in knat (the reason says why).
    Ignored(&'static str),
    /// knat cannot behave as kube-proxy would with this value: refused before anything runs.
    Refused(&'static str),
}

pub fn check(name: &str, value: bool) -> Verdict {
    match (name, value) {
        // GA, default true: externalIPs are programmed. knat always programs them.
        ("AllowServiceExternalIPs", true) => Verdict::Honoured,
        ("AllowServiceExternalIPs", false) => Verdict::Refused(
            "knat always programs Service externalIPs; disabling them is not supported",
        ),
        // GA and locked to true in 1.37: kube-proxy refuses false.
        ("PreferSameTrafficDistribution" | "MultiCIDRServiceAllocator", true) => Verdict::Honoured,
        ("PreferSameTrafficDistribution" | "MultiCIDRServiceAllocator", false) => {
            Verdict::Refused("locked to true in Kubernetes 1.37 (kube-proxy refuses false too)")
        }
        // Decides only whether mode ipvs is accepted; knat accepts mode iptables alone.
        ("KubeProxyIPVS", _) => Verdict::Honoured,
        ("KubeProxyNFTablesLocalhostNodePorts" | "NFTablesNetlink", _) => {
            Verdict::Ignored("applies to mode nftables only")
        }
        _ => Verdict::Ignored("not a gate of kube-proxy's iptables mode; knat ignores it"),
    }
}

/// Parses `--feature-gates` (`A=true,B=false`).
pub fn parse_flag(text: &str) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("missing bool value for {part:?}"))?;
        let value = match value.trim() {
            "true" | "True" | "TRUE" | "1" | "t" | "T" => true,
            "false" | "False" | "FALSE" | "0" | "f" | "F" => false,
            other => return Err(format!("invalid value of {name}: {other:?}")),
        };
        out.push((name.trim().to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates() {
        assert_eq!(check("AllowServiceExternalIPs", true), Verdict::Honoured);
        assert!(matches!(
            check("AllowServiceExternalIPs", false),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            check("PreferSameTrafficDistribution", false),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            check("SomeKubeletGate", true),
            Verdict::Ignored(_)
        ));
        assert_eq!(
            parse_flag("A=true, B=false"),
            Ok(vec![("A".into(), true), ("B".into(), false)])
        );
        assert!(parse_flag("A").is_err());
        assert!(parse_flag("A=maybe").is_err());
    }
}
