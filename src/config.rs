//! Validated proxy configuration shared by the compiler and the commands.
//!
//! The CLI (`main.rs`) turns flags and environment into a [`ProxyConfig`]; everything downstream
//! may rely on its invariants (non-empty lower-case node name, family-consistent CIDRs, a sane
//! masquerade bit).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{IpFamily, NodeInfo};

/// Configuration errors. None is retryable: the operator must fix the flags.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The node name is empty after trimming.
    #[error(
        "the node name is empty: pass --hostname-override (or set NODE_NAME from the downward API spec.nodeName)"
    )]
    EmptyNodeName,
    /// The masquerade bit is outside 0..=31.
    #[error("--iptables-masquerade-bit {0} is out of range 0-31")]
    MasqueradeBit(u8),
    /// A dispatch leaf size of 1 cannot build a tree.
    #[error("--dispatch-leaf-size {0} must be 0 (linear) or at least 2")]
    LeafSize(usize),
    /// A `--cluster-cidr` value is not a CIDR.
    #[error("--cluster-cidr {value:?} is not a CIDR (such as 10.244.0.0/16): {reason}")]
    ClusterCidr { value: String, reason: String },
    /// `--detect-local-mode=BridgeInterface` or `InterfaceNamePrefix` without its interface.
    #[error("--detect-local-mode={mode} needs a non-empty {flag}")]
    EmptyInterface {
        mode: &'static str,
        flag: &'static str,
    },
    /// `--detect-local-mode=ClusterCIDR` with CIDRs that are not one CIDR or a dual-stack pair
    /// (kube-proxy's validation).
    #[error(
        "--cluster-cidr {0:?}: must be either a single CIDR or a dual-stack pair of CIDRs (one IPv4, one IPv6)"
    )]
    ClusterCidrCount(String),
    /// A `--cluster-cidr=$(VAR)` the kubelet left unexpanded: the variable is not set.
    #[error(
        "--cluster-cidr {0:?}: the kubelet left the variable unexpanded because it is not set; \
         add it (KNAT_CLUSTER_CIDR, empty for none) to ConfigMap kube-system/knat"
    )]
    UnexpandedVariable(String),
}

/// One `--cluster-cidr` value: empty (the DaemonSet's `--cluster-cidr=$(KNAT_CLUSTER_CIDR)` with
/// the ConfigMap's empty default) means "not set"; a literal `$(...)` is refused with the fix.
pub fn parse_cluster_cidr(text: &str) -> Result<Option<IpNet>, ConfigError> {
    let value = text.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.starts_with("$(") {
        return Err(ConfigError::UnexpandedVariable(value.to_string()));
    }
    value
        .parse()
        .map(Some)
        .map_err(|e: ipnet::AddrParseError| ConfigError::ClusterCidr {
            value: value.to_string(),
            reason: e.to_string(),
        })
}

/// One `--nodeport-addresses` / `nodePortAddresses` entry: a CIDR or one of kube-proxy's
/// keywords (`primary`: the node's primary IP of each family; `localhost`: 127.0.0.0/8 and
/// ::1/128; `all`: 0.0.0.0/0 and ::/0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePortAddress {
    Cidr(IpNet),
    Primary,
    Localhost,
    All,
}

impl std::str::FromStr for NodePortAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "primary" => Ok(NodePortAddress::Primary),
            "localhost" => Ok(NodePortAddress::Localhost),
            "all" => Ok(NodePortAddress::All),
            other => crate::model::convert::parse_cidr_sloppy(other)
                .map(NodePortAddress::Cidr)
                .ok_or_else(|| {
                    format!(
                        "{other:?} must be a valid CIDR or one of the keywords 'primary', 'localhost', 'all'"
                    )
                }),
        }
    }
}

impl NodePortAddress {
    /// The CIDRs of the entries (keywords `localhost` and `all` expanded), and whether
    /// `primary` is among them (resolved per sync by [`ProxyConfig::resolve_for_node`]).
    pub fn expand(list: &[NodePortAddress]) -> (Vec<IpNet>, bool) {
        let net = |s: &str| s.parse::<IpNet>().ok();
        let mut nets = Vec::new();
        let mut primary = false;
        for entry in list {
            match entry {
                NodePortAddress::Cidr(n) => nets.push(*n),
                NodePortAddress::Primary => primary = true,
                NodePortAddress::Localhost => {
                    nets.extend(net("127.0.0.0/8").into_iter().chain(net("::1/128")))
                }
                NodePortAddress::All => {
                    nets.extend(net("0.0.0.0/0").into_iter().chain(net("::/0")))
                }
            }
        }
        (nets, primary)
    }
}

/// How the proxy tells pod traffic from everything else (`--detect-local-mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDetector {
    /// No detector for this family: no ClusterIP masquerade rule and no pod short-circuit.
    None,
    /// `ClusterCIDR`, or `NodeCIDR` once resolved: `-s CIDR` / `! -s CIDR`.
    Cidr(IpNet),
    /// `NodeCIDR`: the first CIDR of this family in the Node's `spec.podCIDRs`, resolved by
    /// the compiler from the snapshot's Node ([`LocalDetector::resolve`]).
    NodeCidr,
    /// `BridgeInterface`: `-i BRIDGE` / `! -i BRIDGE`.
    Bridge(String),
    /// `InterfaceNamePrefix`: `-i PREFIX+` / `! -i PREFIX+`.
    InterfacePrefix(String),
}

impl LocalDetector {
    /// The first CIDR of this family among `cidrs` (upstream uses only the first), or `None`.
    pub fn from_cidrs(cidrs: &[IpNet], family: IpFamily) -> Self {
        cidrs
            .iter()
            .find(|c| IpFamily::of_net(c) == family)
            .map(|c| LocalDetector::Cidr(c.trunc()))
            .unwrap_or(LocalDetector::None)
    }

    /// `NodeCidr` becomes the Node's first pod CIDR of `family` (or `None` without one, as
    /// upstream's per-family no-op detector); every other detector is returned as it is.
    pub fn resolve(&self, node_pod_cidrs: &[IpNet], family: IpFamily) -> Self {
        match self {
            LocalDetector::NodeCidr => LocalDetector::from_cidrs(node_pod_cidrs, family),
            other => other.clone(),
        }
    }

    /// Whether the detector produces rules (an unresolved `NodeCidr` does not).
    pub fn is_implemented(&self) -> bool {
        !matches!(self, LocalDetector::None | LocalDetector::NodeCidr)
    }
}

/// Why `--detect-local-mode=NodeCIDR` cannot tell pod traffic yet. kube-proxy waits for the
/// Node's `spec.podCIDRs` at start (up to 5 minutes, then exits); knat writes nothing until
/// they are there.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NodeCidrError {
    /// No Node with this proxy's name (the node-name check reports this on its own too).
    #[error(
        "--detect-local-mode=NodeCIDR: no Node named {0:?}, whose spec.podCIDRs say which sources are this node's pods"
    )]
    NoNode(String),
    /// The Node exists but has no pod CIDR (not allocated yet).
    #[error(
        "--detect-local-mode=NodeCIDR: Node {0:?} has no spec.podCIDRs yet (the controller manager's node IPAM or the installer assigns them); no rule is written until it has"
    )]
    NoPodCidrs(String),
}

/// `Ok` unless `detector` is `NodeCidr` and `node` cannot resolve it (no Node, or no pod
/// CIDR of any family: a family without one gets no detector, as upstream).
pub fn node_cidr_ready(
    detector: &LocalDetector,
    node_name: &str,
    node: Option<&NodeInfo>,
) -> Result<(), NodeCidrError> {
    if *detector != LocalDetector::NodeCidr {
        return Ok(());
    }
    match node {
        None => Err(NodeCidrError::NoNode(node_name.to_string())),
        Some(n) if n.pod_cidrs.is_empty() => Err(NodeCidrError::NoPodCidrs(n.name.clone())),
        Some(_) => Ok(()),
    }
}

/// How nat KUBE-SERVICES dispatches on the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// One rule per service destination, as upstream (O(services) per new connection).
    Linear,
    /// A prefix tree of chains; a chain holds at most `leaf_size` entries or sub-prefix jumps.
    /// With at most `leaf_size` destinations the output is identical to `Linear`.
    Tree { leaf_size: usize },
}

/// Default fan-out of the dispatch tree.
pub const DEFAULT_LEAF_SIZE: usize = 16;

/// The validated configuration of one proxier (one IP family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The node name: endpoints are local when their `nodeName` equals it.
    pub node_name: String,
    pub family: IpFamily,
    pub local_detector: LocalDetector,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    /// `--nodeport-addresses` of this family; empty means every local address.
    pub nodeport_addresses: Vec<IpNet>,
    /// `--nodeport-addresses` contains `primary`: the node's primary IP of this family is
    /// added to `nodeport_addresses` per sync ([`ProxyConfig::resolve_for_node`]).
    pub nodeport_primary: bool,
    /// Local interface addresses (needed only when `nodeport_addresses` is restricted).
    pub local_addresses: Vec<IpAddr>,
    /// Primary node IPs (used for the loadBalancerSourceRanges "allow from node" rules);
    /// when empty, the Node object's addresses are used.
    pub node_ips: Vec<IpAddr>,
    /// `--iptables-localhost-nodeports` as requested (effective only for IPv4 and when the
    /// NodePort addresses include IPv4 loopback).
    pub localhost_nodeports: bool,
    /// Append `--random-fully` to MASQUERADE.
    pub random_fully: bool,
    /// nfacct counters exist (adds `-m nfacct` clauses as upstream does).
    pub nfacct: bool,
    /// Drop conntrack-INVALID packets in KUBE-FORWARD (off when tcp_be_liberal is set).
    pub drop_invalid: bool,
    pub dispatch: Dispatch,
    /// Above this many endpoints, per-endpoint comments are left out (upstream: 1000).
    pub large_cluster_threshold: usize,
}

impl ProxyConfig {
    /// A configuration with upstream's defaults for `node_name` (trimmed and lower-cased).
    pub fn new(node_name: &str, family: IpFamily) -> Result<Self, ConfigError> {
        let node_name = node_name.trim().to_lowercase();
        if node_name.is_empty() {
            return Err(ConfigError::EmptyNodeName);
        }
        Ok(ProxyConfig {
            node_name,
            family,
            local_detector: LocalDetector::None,
            masquerade_all: false,
            masquerade_bit: 14,
            nodeport_addresses: Vec::new(),
            nodeport_primary: false,
            local_addresses: Vec::new(),
            node_ips: Vec::new(),
            localhost_nodeports: true,
            random_fully: false,
            nfacct: false,
            drop_invalid: true,
            dispatch: Dispatch::Tree {
                leaf_size: DEFAULT_LEAF_SIZE,
            },
            large_cluster_threshold: 1000,
        })
    }

    /// Checks the invariants that `new` cannot (fields set afterwards).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.masquerade_bit > 31 {
            return Err(ConfigError::MasqueradeBit(self.masquerade_bit));
        }
        if let Dispatch::Tree { leaf_size } = self.dispatch
            && leaf_size < 2
        {
            return Err(ConfigError::LeafSize(leaf_size));
        }
        Ok(())
    }

    /// The configuration for one sync on a node described by `node` (the snapshot's Node):
    /// `primary` in `--nodeport-addresses` becomes the node's IP of this family as a /32 or
    /// /128 (`--bind-address` first, then the Node's addresses, InternalIP before ExternalIP;
    /// a loopback or missing IP adds nothing, as upstream's keyword expansion). `None` when
    /// nothing needs resolving.
    pub fn resolve_for_node(&self, node: Option<&crate::model::NodeInfo>) -> Option<ProxyConfig> {
        if !self.nodeport_primary {
            return None;
        }
        let family = self.family;
        let ip = self
            .node_ips
            .iter()
            .copied()
            .find(|ip| family.contains(ip))
            .or_else(|| {
                node.and_then(|n| n.addresses.iter().copied().find(|ip| family.contains(ip)))
            });
        let mut resolved = self.clone();
        resolved.nodeport_primary = false;
        if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
            resolved.nodeport_addresses.push(IpNet::from(ip));
            // The node's own address is local (render and diff take it from the Node object).
            if !resolved.local_addresses.contains(&ip) {
                resolved.local_addresses.push(ip);
            }
        }
        Some(resolved)
    }

    /// The masquerade mark as upstream formats it (`0x00004000`).
    pub fn masquerade_mark(&self) -> String {
        format!("{:#010x}", 1u32 << self.masquerade_bit)
    }

    /// NodePort addresses of this family.
    pub fn family_nodeport_addresses(&self) -> Vec<IpNet> {
        self.nodeport_addresses
            .iter()
            .copied()
            .filter(|n| IpFamily::of_net(n) == self.family)
            .collect()
    }

    /// True when NodePorts are open on every local address of this family.
    pub fn nodeports_match_all(&self) -> bool {
        let nets = self.family_nodeport_addresses();
        nets.is_empty() || nets.iter().any(|n| n.prefix_len() == 0)
    }

    /// Whether localhost NodePorts are in effect (IPv4 only, and only when the NodePort
    /// addresses include an IPv4 loopback address).
    pub fn localhost_nodeports_effective(&self) -> bool {
        if self.family != IpFamily::V4 || !self.localhost_nodeports {
            return false;
        }
        let loopback: IpAddr = [127, 0, 0, 1].into();
        self.nodeports_match_all()
            || self
                .family_nodeport_addresses()
                .iter()
                .any(|n| n.contains(&loopback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_is_trimmed_and_lowercased() {
        let cfg = ProxyConfig::new("  Node-A \n", IpFamily::V4).unwrap();
        assert_eq!(cfg.node_name, "node-a");
        assert_eq!(
            ProxyConfig::new("  ", IpFamily::V4),
            Err(ConfigError::EmptyNodeName)
        );
    }

    #[test]
    fn empty_cluster_cidr_is_unset() {
        assert_eq!(parse_cluster_cidr(""), Ok(None));
        assert_eq!(parse_cluster_cidr("  "), Ok(None));
        assert_eq!(
            parse_cluster_cidr(" 10.244.0.0/16 "),
            Ok(Some("10.244.0.0/16".parse().unwrap()))
        );
        assert!(matches!(
            parse_cluster_cidr("10.244.0.0"),
            Err(ConfigError::ClusterCidr { .. })
        ));
        let unexpanded = parse_cluster_cidr("$(KNAT_CLUSTER_CIDR)");
        assert_eq!(
            unexpanded,
            Err(ConfigError::UnexpandedVariable(
                "$(KNAT_CLUSTER_CIDR)".into()
            ))
        );
        let text = unexpanded.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("ConfigMap kube-system/knat"), "{text}");
    }

    #[test]
    fn node_cidr_resolves_from_the_node() {
        let net = |s: &str| s.parse::<IpNet>().expect("cidr");
        let node = |cidrs: &[&str]| NodeInfo {
            name: "node-1".into(),
            zone: None,
            addresses: Vec::new(),
            pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
            unschedulable_for_deletion: false,
        };
        let dual = node(&["10.244.1.0/24", "fd00:10:244:1::/64", "10.245.1.0/24"]);
        let d = LocalDetector::NodeCidr;
        assert_eq!(
            d.resolve(&dual.pod_cidrs, IpFamily::V4),
            LocalDetector::Cidr(net("10.244.1.0/24")),
            "the first of the family"
        );
        assert_eq!(
            d.resolve(&dual.pod_cidrs, IpFamily::V6),
            LocalDetector::Cidr(net("fd00:10:244:1::/64"))
        );
        let v4 = node(&["10.244.1.7/24"]);
        assert_eq!(
            d.resolve(&v4.pod_cidrs, IpFamily::V4),
            LocalDetector::Cidr(net("10.244.1.0/24")),
            "printed as the network, as Go's ParseCIDR does"
        );
        assert_eq!(d.resolve(&v4.pod_cidrs, IpFamily::V6), LocalDetector::None);
        assert!(!d.is_implemented());
        let bridge = LocalDetector::Bridge("cni0".into());
        assert_eq!(bridge.resolve(&v4.pod_cidrs, IpFamily::V4), bridge);

        assert_eq!(node_cidr_ready(&d, "node-1", Some(&v4)), Ok(()));
        assert_eq!(
            node_cidr_ready(&d, "node-1", None),
            Err(NodeCidrError::NoNode("node-1".into()))
        );
        let bare = node(&[]);
        let err = node_cidr_ready(&d, "node-1", Some(&bare));
        assert_eq!(err, Err(NodeCidrError::NoPodCidrs("node-1".into())));
        assert!(
            err.err()
                .is_some_and(|e| e.to_string().contains("no spec.podCIDRs yet"))
        );
        assert_eq!(node_cidr_ready(&bridge, "node-1", None), Ok(()));
    }

    #[test]
    fn mark_is_formatted_like_go() {
        let cfg = ProxyConfig::new("n", IpFamily::V4).unwrap();
        assert_eq!(cfg.masquerade_mark(), "0x00004000");
    }

    #[test]
    fn localhost_nodeports_rules() {
        let mut cfg = ProxyConfig::new("n", IpFamily::V4).unwrap();
        assert!(cfg.localhost_nodeports_effective());
        cfg.nodeport_addresses = vec!["192.168.0.0/24".parse().unwrap()];
        assert!(!cfg.localhost_nodeports_effective());
        cfg.nodeport_addresses.push("127.0.0.1/32".parse().unwrap());
        assert!(cfg.localhost_nodeports_effective());
        let v6 = ProxyConfig::new("n", IpFamily::V6).unwrap();
        assert!(!v6.localhost_nodeports_effective());
    }
}
