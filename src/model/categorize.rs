//! Which endpoints each traffic policy uses: upstream's `CategorizeEndpoints`.

use super::endpoints::EndpointInfo;

/// The node-side inputs of categorisation.
#[derive(Debug, Clone, Copy)]
pub struct NodeTopology<'a> {
    pub name: &'a str,
    pub zone: Option<&'a str>,
}

/// The endpoint sets of one service port.
#[derive(Debug, Default)]
pub struct Categorized<'a> {
    /// Endpoints for Cluster-policy traffic (empty when the policy is not used).
    pub cluster: Vec<&'a EndpointInfo>,
    /// Endpoints for Local-policy traffic (empty when the policy is not used).
    pub local: Vec<&'a EndpointInfo>,
    /// Union of both, in endpoint order: every endpoint that gets a SEP chain.
    pub all_reachable: Vec<&'a EndpointInfo>,
    /// At least one usable endpoint exists anywhere in the cluster.
    pub has_any: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    PreferSameZone,
    PreferSameNode,
}

fn topology_mode(endpoints: &[EndpointInfo], node: NodeTopology<'_>) -> TopologyMode {
    let mut all_node_hints = true;
    let mut has_for_node = false;
    let mut all_zone_hints = true;
    let mut has_for_zone = false;
    for ep in endpoints.iter().filter(|e| e.ready) {
        match &ep.hint_nodes {
            Some(nodes) if !nodes.is_empty() => {
                has_for_node |= nodes.iter().any(|n| n == node.name)
            }
            _ => all_node_hints = false,
        }
        match &ep.hint_zones {
            Some(zones) if !zones.is_empty() => {
                has_for_zone |= node.zone.is_some_and(|z| zones.iter().any(|h| h == z))
            }
            _ => all_zone_hints = false,
        }
    }
    if all_node_hints && has_for_node {
        TopologyMode::PreferSameNode
    } else if all_zone_hints && has_for_zone {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

fn available(ep: &EndpointInfo, mode: TopologyMode, node: NodeTopology<'_>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameZone => node
            .zone
            .is_some_and(|z| ep.hint_zones.iter().flatten().any(|h| h == z)),
        TopologyMode::PreferSameNode => ep.hint_nodes.iter().flatten().any(|n| n == node.name),
    }
}

/// Splits a port's endpoints into the cluster and local sets, with the per-policy
/// serving-terminating fallback. `endpoints` must already be in `ip:port` string order.
pub fn categorize<'a>(
    endpoints: &'a [EndpointInfo],
    uses_cluster: bool,
    uses_local: bool,
    node: NodeTopology<'_>,
) -> Categorized<'a> {
    let mut out = Categorized::default();
    if uses_cluster {
        let mode = topology_mode(endpoints, node);
        out.cluster = endpoints
            .iter()
            .filter(|e| e.ready && available(e, mode, node))
            .collect();
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|e| e.serving && e.terminating)
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !uses_local {
        out.all_reachable = out.cluster.clone();
        return out;
    }
    let mut has_local_ready = false;
    let mut has_local_serving_terminating = false;
    for ep in endpoints {
        if ep.ready {
            out.has_any = true;
            has_local_ready |= ep.is_local;
        } else if ep.serving && ep.terminating {
            out.has_any = true;
            has_local_serving_terminating |= ep.is_local;
        }
    }
    out.local = if has_local_ready {
        endpoints.iter().filter(|e| e.is_local && e.ready).collect()
    } else if has_local_serving_terminating {
        endpoints
            .iter()
            .filter(|e| e.is_local && e.serving && e.terminating)
            .collect()
    } else {
        Vec::new()
    };
    if !uses_cluster {
        out.all_reachable = out.local.clone();
    } else {
        out.all_reachable = endpoints
            .iter()
            .filter(|e| {
                out.cluster.iter().any(|c| std::ptr::eq(*c, *e))
                    || out.local.iter().any(|l| std::ptr::eq(*l, *e))
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, local: bool, ready: bool, serving: bool, terminating: bool) -> EndpointInfo {
        EndpointInfo {
            key: format!("{ip}:80").into(),
            ip: ip.parse().unwrap(),
            port: 80,
            ready,
            serving,
            terminating,
            is_local: local,
            hint_zones: None,
            hint_nodes: None,
        }
    }

    const NODE: NodeTopology<'static> = NodeTopology {
        name: "test-node",
        zone: None,
    };

    fn keys(v: &[&EndpointInfo]) -> Vec<String> {
        v.iter().map(|e| e.key.to_string()).collect()
    }

    #[test]
    fn fallback_is_per_policy() {
        // Local only serving-terminating; remote ready (upstream TestTerminatingEndpointsTrafficPolicyLocal).
        let eps = vec![
            ep("10.0.1.2", true, false, true, true),
            ep("10.0.1.3", true, false, true, true),
            ep("10.0.1.4", true, false, false, true),
            ep("10.0.1.5", false, true, true, false),
        ];
        let c = categorize(&eps, true, true, NODE);
        assert_eq!(keys(&c.cluster), ["10.0.1.5:80"]);
        assert_eq!(keys(&c.local), ["10.0.1.2:80", "10.0.1.3:80"]);
        assert_eq!(
            keys(&c.all_reachable),
            ["10.0.1.2:80", "10.0.1.3:80", "10.0.1.5:80"]
        );
        assert!(c.has_any);
    }

    #[test]
    fn nothing_serving_means_no_endpoints() {
        let eps = vec![
            ep("10.0.1.4", true, false, false, true),
            ep("10.0.1.5", false, false, false, true),
        ];
        let c = categorize(&eps, true, true, NODE);
        assert!(!c.has_any);
        assert!(c.cluster.is_empty() && c.local.is_empty());
    }

    #[test]
    fn zone_hints_filter_cluster_set_only() {
        let mut a = ep("10.0.1.1", false, true, true, false);
        a.hint_zones = Some(vec!["z1".into()]);
        let mut b = ep("10.0.1.2", true, true, true, false);
        b.hint_zones = Some(vec!["z2".into()]);
        let eps = vec![a, b];
        let node = NodeTopology {
            name: "test-node",
            zone: Some("z1"),
        };
        let c = categorize(&eps, true, true, node);
        assert_eq!(keys(&c.cluster), ["10.0.1.1:80"]);
        assert_eq!(keys(&c.local), ["10.0.1.2:80"]);
    }
}
