//! Per-port endpoint lists: slices merged, deduplicated and sorted as upstream does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::types::*;

/// One endpoint of one service port, as the rule compiler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// `ip:port`, IPv6 bracketed: the sort key, the SEP hash input and the DNAT target.
    pub key: Arc<str>,
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName == this proxy's node name`, exact string comparison, as upstream.
    pub is_local: bool,
    pub hint_zones: Option<Vec<String>>,
    pub hint_nodes: Option<Vec<String>>,
}

/// Formats `ip:port` the way Go's `net.JoinHostPort` does.
pub fn join_host_port(ip: &IpAddr, port: u16) -> String {
    let mut out = String::with_capacity(24);
    crate::text::push_host_port(&mut out, ip, port);
    out
}

/// Endpoint lists of every port of one Service for one family, keyed by (port name, protocol).
/// Lists are sorted by the `ip:port` string; duplicates keep the non-terminating entry.
pub fn endpoints_by_port<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    family: IpFamily,
    node_name: &str,
) -> BTreeMap<(String, Protocol), Vec<EndpointInfo>> {
    let mut merged: BTreeMap<(String, Protocol), Vec<EndpointInfo>> = BTreeMap::new();
    let mut key = String::with_capacity(48);
    for slice in slices.filter(|s| s.family == family) {
        for port in &slice.ports {
            let bucket = merged
                .entry((port.name.clone(), port.protocol))
                .or_default();
            bucket.reserve(slice.endpoints.len());
            for ep in &slice.endpoints {
                key.clear();
                crate::text::push_host_port(&mut key, &ep.ip, port.port);
                bucket.push(EndpointInfo {
                    key: Arc::from(key.as_str()),
                    ip: ep.ip,
                    port: port.port,
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    is_local: !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name),
                    hint_zones: ep.hint_zones().cloned(),
                    hint_nodes: ep.hint_nodes().cloned(),
                });
            }
        }
    }
    // Sorted by key; of duplicates the first non-terminating one wins (else the first seen):
    // a stable sort by (key, terminating) puts it first, and dedup keeps the first.
    for bucket in merged.values_mut() {
        bucket.sort_by(|a, b| (&a.key, a.terminating).cmp(&(&b.key, b.terminating)));
        bucket.dedup_by(|later, first| later.key == first.key);
    }
    merged
}

/// Upstream's `LocalReadyEndpoints` for one Service: distinct IPs that are local and ready,
/// across all its ports.
pub fn local_ready_ip_count<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    family: IpFamily,
    node_name: &str,
) -> usize {
    let mut ips = std::collections::BTreeSet::new();
    for slice in slices.filter(|s| s.family == family && !s.ports.is_empty()) {
        for ep in &slice.endpoints {
            if ep.ready && !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name) {
                ips.insert(ep.ip);
            }
        }
    }
    ips.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, node: &str, terminating: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            ready: !terminating,
            serving: true,
            terminating,
            node_name: Some(node.into()),
            topology: None,
        }
    }

    fn slice(name: &str, eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            slice_name: name.into(),
            service: ServiceName::new("ns", "svc"),
            family: IpFamily::V4,
            ports: vec![SlicePort {
                name: "p".into(),
                port: 80,
                protocol: Protocol::Tcp,
            }],
            endpoints: eps,
        }
    }

    #[test]
    fn sorted_by_string_and_deduplicated_preferring_non_terminating() {
        let a = slice(
            "a",
            vec![ep("10.0.1.2", "n1", true), ep("10.0.1.10", "n2", false)],
        );
        let b = slice("b", vec![ep("10.0.1.2", "n1", false)]);
        let by_port = endpoints_by_port([&a, &b].into_iter(), IpFamily::V4, "n1");
        let list = &by_port[&("p".to_string(), Protocol::Tcp)];
        let keys: Vec<&str> = list.iter().map(|e| &*e.key).collect();
        assert_eq!(keys, ["10.0.1.10:80", "10.0.1.2:80"]);
        assert!(!list[1].terminating);
        assert!(list[1].is_local);
        assert!(!list[0].is_local);
    }

    #[test]
    fn ipv6_keys_are_bracketed() {
        assert_eq!(
            join_host_port(&"fd00::5".parse().unwrap(), 8080),
            "[fd00::5]:8080"
        );
    }

    #[test]
    fn local_ready_count_dedups_ips_and_skips_terminating() {
        let a = slice(
            "a",
            vec![ep("10.0.1.2", "n1", false), ep("10.0.1.3", "n1", true)],
        );
        let b = slice("b", vec![ep("10.0.1.2", "n1", false)]);
        assert_eq!(
            local_ready_ip_count([&a, &b].into_iter(), IpFamily::V4, "n1"),
            1
        );
        assert_eq!(
            local_ready_ip_count([&a, &b].into_iter(), IpFamily::V4, ""),
            0
        );
    }
}
