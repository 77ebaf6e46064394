//! Chain names, including upstream's byte-exact per-service hash recipe.

use std::fmt;
use std::sync::Arc;

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use crate::model::{Protocol, ServicePortName};

/// An iptables chain name (at most 28 characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChainName(Arc<str>);

impl ChainName {
    pub const KUBE_SERVICES: &'static str = "KUBE-SERVICES";
    pub const KUBE_EXTERNAL_SERVICES: &'static str = "KUBE-EXTERNAL-SERVICES";
    pub const KUBE_NODEPORTS: &'static str = "KUBE-NODEPORTS";
    pub const KUBE_POSTROUTING: &'static str = "KUBE-POSTROUTING";
    pub const KUBE_MARK_MASQ: &'static str = "KUBE-MARK-MASQ";
    pub const KUBE_FORWARD: &'static str = "KUBE-FORWARD";
    pub const KUBE_PROXY_FIREWALL: &'static str = "KUBE-PROXY-FIREWALL";
    pub const KUBE_FIREWALL: &'static str = "KUBE-FIREWALL";
    pub const KUBE_PROXY_CANARY: &'static str = "KUBE-PROXY-CANARY";

    /// A fixed, well-known chain.
    pub fn fixed(name: &str) -> Self {
        ChainName(Arc::from(name))
    }

    /// Wraps any chain name (for parsing and cleanup).
    pub fn new(name: impl Into<String>) -> Self {
        ChainName(Arc::from(name.into()))
    }

    fn from_string(name: String) -> Self {
        ChainName(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the builtin chains of the filter and nat tables.
    pub fn is_builtin(&self) -> bool {
        matches!(
            &*self.0,
            "INPUT" | "FORWARD" | "OUTPUT" | "PREROUTING" | "POSTROUTING"
        )
    }

    /// True for per-service chains created by knat or upstream kube-proxy, which stale-chain
    /// cleanup may delete.
    pub fn is_service_chain(&self) -> bool {
        SERVICE_CHAIN_PREFIXES.iter().any(|p| self.0.starts_with(p))
    }
}

/// Prefixes of chains that belong to one service (upstream's, plus knat's dispatch chains).
pub const SERVICE_CHAIN_PREFIXES: [&str; 7] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
    DISPATCH_PREFIX,
    NODEPORT_DISPATCH_PREFIX,
];

/// Prefix of knat's destination-dispatch chains (see `rules::dispatch`).
pub const DISPATCH_PREFIX: &str = "KNAT-DST-";

/// Prefix of knat's NodePort port-range chains (see `rules::port_dispatch`).
pub const NODEPORT_DISPATCH_PREFIX: &str = "KNAT-NP-";

/// Lookups by `&str` in maps keyed by chain name (the derived `Hash` hashes the text).
impl std::borrow::Borrow<str> for ChainName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// First 16 characters of base32(sha256(input)): upstream's chain-name hash.
pub fn hash16(input: &str) -> String {
    let mut out = [0u8; 16];
    hash16_parts(&[input], &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `hash16` of the concatenation of `parts`, written into `out` (no allocation).
fn hash16_parts(parts: &[&str], out: &mut [u8; 16]) {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    // 10 bytes encode to exactly 16 base32 characters, no padding.
    BASE32.encode_mut(&digest[..10], out);
}

/// `PREFIX` followed by the hash of `parts`, as a chain name (one allocation).
fn hashed_chain(prefix: &str, parts: &[&str]) -> ChainName {
    let mut hash = [0u8; 16];
    hash16_parts(parts, &mut hash);
    prefixed_chain(prefix, &hash)
}

/// The hash shared by a service port's SVC, SVL, EXT and FW chains.
pub fn service_hash(spn: &ServicePortName) -> String {
    let mut hash = [0u8; 16];
    service_hash_into(spn, &mut hash);
    String::from_utf8_lossy(&hash).into_owned()
}

/// `hash16` of `SPN` followed by its protocol (`ns/name:port` + `tcp`), hashed from the parts
/// (no string is formatted).
fn service_hash_into(spn: &ServicePortName, out: &mut [u8; 16]) {
    let service = &spn.service;
    let port: [&str; 2] = if spn.port.is_empty() {
        ["", ""]
    } else {
        [":", &spn.port]
    };
    hash16_parts(
        &[
            &service.namespace,
            "/",
            &service.name,
            port[0],
            port[1],
            spn.protocol.as_str(),
        ],
        out,
    );
}

/// `prefix` followed by `hash` as a chain name (one allocation, no intermediate string).
fn prefixed_chain(prefix: &str, hash: &[u8; 16]) -> ChainName {
    let mut name = [0u8; 32];
    let len = prefix.len() + hash.len();
    name[..prefix.len()].copy_from_slice(prefix.as_bytes());
    name[prefix.len()..len].copy_from_slice(hash);
    // Prefix and base32 alphabet are ASCII, so this is valid UTF-8.
    ChainName(Arc::from(String::from_utf8_lossy(&name[..len]).as_ref()))
}

/// The per-service chains of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChains {
    pub svc: ChainName,
    pub svl: ChainName,
    pub ext: ChainName,
    pub fw: ChainName,
}

impl ServiceChains {
    pub fn new(spn: &ServicePortName) -> Self {
        let mut h = [0u8; 16];
        service_hash_into(spn, &mut h);
        ServiceChains {
            svc: prefixed_chain("KUBE-SVC-", &h),
            svl: prefixed_chain("KUBE-SVL-", &h),
            ext: prefixed_chain("KUBE-EXT-", &h),
            fw: prefixed_chain("KUBE-FW-", &h),
        }
    }
}

/// The SEP chain of one endpoint (`endpoint` is `ip:port`, IPv6 bracketed).
pub fn endpoint_chain(spn_text: &str, protocol: Protocol, endpoint: &str) -> ChainName {
    hashed_chain("KUBE-SEP-", &[spn_text, protocol.as_str(), endpoint])
}

/// A dispatch chain for a destination prefix.
pub fn dispatch_chain(prefix: &str) -> ChainName {
    ChainName::from_string(format!("{DISPATCH_PREFIX}{}", hash16(prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_test_vectors() {
        let vectors = [
            ("ns1/svc1:p80tcp", "XPGD46QRK7WJZT7O"),
            ("ns2/svc2:p80tcp", "GNZBNJ2PO5MGZ6GT"),
            ("ns4/svc4:p8082tcp", "EBDQOQU5SJFXRIL3"),
            ("ns1/svc1:p80tcp10.180.0.1:80", "SXIVWICOYRO3J4NJ"),
            ("ns5/svc5:p80tcp10.180.0.3:80", "I77PXRDZVX7PMWMN"),
            ("demo/web:httptcp", "XRY76EGRC3BSCIIJ"),
            ("demo/web:httptcp10.244.1.5:8080", "NW5VICAF3Z2QABHQ"),
            ("demo/web:httptcp[fd00:10:244::5]:8080", "KFHTZHN2PPBD6RND"),
            ("demo/webudp", "E5NSH7HY45DGEAZD"),
        ];
        for (input, expected) in vectors {
            assert_eq!(hash16(input), expected, "hash of {input}");
        }
    }

    #[test]
    fn service_and_endpoint_chain_names() {
        let spn = ServicePortName {
            service: crate::model::ServiceName::new("demo", "web"),
            port: "http".into(),
            protocol: Protocol::Tcp,
        };
        let chains = ServiceChains::new(&spn);
        assert_eq!(chains.svc.as_str(), "KUBE-SVC-XRY76EGRC3BSCIIJ");
        assert_eq!(chains.fw.as_str(), "KUBE-FW-XRY76EGRC3BSCIIJ");
        assert_eq!(
            endpoint_chain("demo/web:http", Protocol::Tcp, "10.244.1.5:8080").as_str(),
            "KUBE-SEP-NW5VICAF3Z2QABHQ"
        );
        let unnamed = ServicePortName {
            port: String::new(),
            protocol: Protocol::Udp,
            ..spn
        };
        assert_eq!(service_hash(&unnamed), "E5NSH7HY45DGEAZD");
    }
}
