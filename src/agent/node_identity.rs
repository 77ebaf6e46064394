//! Which Node this proxy runs on, and whether that Node exists.
//!
//! The name comes from `--hostname-override`, else the `NODE_NAME` environment variable (the
//! DaemonSet sets it from the downward API `spec.nodeName`), else the kernel host name with a
//! warning; it is trimmed and lower-cased as upstream's `GetHostname` does. Endpoint locality
//! is exact string equality with this name, so a wrong name silently turns every
//! `externalTrafficPolicy: Local` service into a black hole; [`NodeCheck`] and
//! [`MISSING_NODE_FIX`] make that loud instead.

/// Node identity errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeIdentityError {
    /// Every source gave an empty name. Not retryable: the operator must set the flag.
    #[error("cannot determine the node name: {MISSING_NODE_FIX}")]
    Empty,
}

/// The exact fix, repeated in every message about a missing or unverified Node.
pub const MISSING_NODE_FIX: &str =
    "set --hostname-override=$(NODE_NAME) with NODE_NAME from the downward API spec.nodeName";

/// Where the node name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    Flag,
    Env,
    Hostname,
}

impl NameSource {
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Flag => "--hostname-override",
            NameSource::Env => "NODE_NAME",
            NameSource::Hostname => "host name",
        }
    }
}

/// Resolves the node name from the flag, the environment and the host name, in that order.
/// Empty (after trimming) values are skipped.
pub fn resolve(
    flag: Option<&str>,
    env: Option<&str>,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<(String, NameSource), NodeIdentityError> {
    let clean = |s: &str| {
        let s = s.trim().to_lowercase();
        (!s.is_empty()).then_some(s)
    };
    if let Some(name) = flag.and_then(clean) {
        return Ok((name, NameSource::Flag));
    }
    if let Some(name) = env.and_then(clean) {
        return Ok((name, NameSource::Env));
    }
    hostname()
        .as_deref()
        .and_then(clean)
        .map(|n| (n, NameSource::Hostname))
        .ok_or(NodeIdentityError::Empty)
}

/// The kernel host name (`/proc/sys/kernel/hostname`, as Go's `os.Hostname`).
pub fn kernel_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok()
}

/// What is known about the Node named like this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCheck {
    /// The Node has not been listed yet.
    Unknown,
    /// A Node with this name exists.
    Found,
    /// The list completed and no Node has this name.
    Missing,
}

/// The error logged while the Node is missing.
/// `frozen` says whether rule updates are suspended (API source) or continue (static source).
pub fn missing_message(node_name: &str, source: NameSource, frozen: bool) -> String {
    let effect = if frozen {
        "rules are not being updated"
    } else {
        "rules are programmed with every endpoint treated as remote"
    };
    format!(
        "no Node named {node_name:?} exists (name taken from {}): endpoints cannot be recognised as local, \
         so externalTrafficPolicy: Local and internalTrafficPolicy: Local services would drop traffic on this node; \
         {effect} and /healthz fails until this is fixed: {MISSING_NODE_FIX}",
        source.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_then_env_then_hostname() {
        assert_eq!(
            resolve(Some(" Node-A\n"), Some("b"), || Some("c".into())),
            Ok(("node-a".into(), NameSource::Flag))
        );
        assert_eq!(
            resolve(Some("  "), Some("B"), || Some("c".into())),
            Ok(("b".into(), NameSource::Env))
        );
        assert_eq!(
            resolve(None, None, || Some("Host\n".into())),
            Ok(("host".into(), NameSource::Hostname))
        );
        assert_eq!(
            resolve(None, Some(""), || None),
            Err(NodeIdentityError::Empty)
        );
    }

    #[test]
    fn message_names_the_fix() {
        let msg = missing_message("ip-10-0-0-1", NameSource::Hostname, true);
        assert!(msg.contains("rules are not being updated"));
        assert!(msg.contains("\"ip-10-0-0-1\""));
        assert!(msg.contains("set --hostname-override=$(NODE_NAME) with NODE_NAME from the downward API spec.nodeName"));
    }
}
