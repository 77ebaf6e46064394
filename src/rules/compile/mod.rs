//! `compile(snapshot, config) -> Compiled`: upstream's `syncProxyRules`, as a pure function.
//!
//! The per-service logic follows `reference/kube-proxy-iptables.md` §3 rule by rule; the only
//! deliberate difference is the optional dispatch tree for nat KUBE-SERVICES
//! (`rules::dispatch`), which keeps every verdict and every per-service chain.
//!
//! One job per file: `service` compiles one Service into a `fragment` (its own chains and its
//! entries in the shared chains), `service_port` holds the per-port sections (ClusterIP,
//! externalIPs, LoadBalancer VIPs, NodePorts, health check, firewall, endpoint chains),
//! `fixed` writes the chains every rule set has and the hooks, `assemble` merges fragments into
//! a rule set, `incremental` caches fragments between syncs and `threads` compiles many
//! Services in parallel; `builders` has the small rule shapes they share.

mod assemble;
mod builders;
mod fixed;
mod fragment;
mod incremental;
mod service;
mod service_port;
mod threads;

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::chain::ChainName;
use super::rule::RuleSet;
use super::service_list::ServiceList;
use crate::config::ProxyConfig;
use crate::model::{ServiceName, ServicePortName, Snapshot};
use fragment::Fragment;
pub use incremental::IncrementalCompiler;
use std::sync::Arc;

/// What the health-check node port of one Service should report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub service: ServiceName,
    pub port: u16,
    /// Distinct local ready endpoint IPs over all ports of the Service.
    pub local_endpoints: usize,
}

/// Destinations of one UDP service port and the endpoints (`IP`, port) serving it, for conntrack
/// cleanup. Every UDP service port is listed, with or without serving endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpServicePort {
    pub spn: ServicePortName,
    pub destinations: Vec<(IpAddr, u16)>,
    pub node_port: Option<u16>,
    pub serving: Vec<(IpAddr, u16)>,
}

/// The result of compilation for one IP family.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub rules: RuleSet,
    pub health: BTreeMap<ServiceName, ServiceHealth>,
    /// Service ports with iTP=Local whose endpoints exist but none is local (DROP).
    pub no_local_endpoints_internal: usize,
    /// Service ports with eTP=Local whose endpoints exist but none is local (DROP).
    pub no_local_endpoints_external: usize,
    /// The per-Service fragments with chains of their own (see `chain_owners`), shared with
    /// the compiler.
    fragments: ServiceList<Arc<Fragment>>,
    /// UDP service ports with serving endpoints, in Service order (shared with the compiler).
    pub udp: Arc<Vec<UdpServicePort>>,
    /// Per-endpoint comments were left out (more than the large-cluster threshold).
    pub large_cluster: bool,
}

/// Compiles the snapshot into the rule set for `cfg.family`.
pub fn compile(snapshot: &Snapshot, cfg: &ProxyConfig) -> Compiled {
    IncrementalCompiler::default().compile(snapshot, cfg)
}

impl Compiled {
    /// Which service port owns each per-service chain (for operator-facing explanations).
    pub fn chain_owners(&self) -> BTreeMap<ChainName, ServicePortName> {
        let mut owners = BTreeMap::new();
        for fragment in self.fragments.iter() {
            let names = fragment.group.chain_names();
            let mut start = 0;
            for (end, spn) in &fragment.owners {
                for name in names.get(start..*end).unwrap_or_default() {
                    owners.insert(ChainName::new(*name), (**spn).clone());
                }
                start = *end;
            }
        }
        owners
    }
}
