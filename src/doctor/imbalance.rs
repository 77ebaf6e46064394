//! The arithmetic of `externalTrafficPolicy: Local` load spread.
//!
//! A load balancer in front of a Local service sends traffic only to nodes whose health check
//! answers 200, and (unless it is weighted) splits it evenly across them. Each node then spreads
//! its share evenly over its own ready pods, so a pod on a node with `k` pods receives
//! `1 / (nodes × k)` of the traffic. A weighted load balancer that reads the health check's
//! `X-Load-Balancing-Endpoint-Weight` header (the node's local ready endpoint count) sends each
//! node `k / total`, so every pod receives `1 / total`.

use std::collections::BTreeMap;

use serde::Serialize;

/// The load one node and each of its pods receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeShare {
    pub node: String,
    /// Local ready endpoints (the health check's `localEndpoints` and weight header).
    pub pods: usize,
    /// The node's share of external traffic when the load balancer splits evenly per node.
    pub node_share: f64,
    /// Each pod's share when the load balancer splits evenly per node.
    pub pod_share: f64,
    /// Each pod's share with a load balancer that honours the weight header.
    pub weighted_pod_share: f64,
}

/// The spread of one Local service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    /// Nodes with at least one ready endpoint, by name.
    pub nodes: Vec<NodeShare>,
    /// Ready endpoints on those nodes.
    pub total_pods: usize,
    /// Most loaded pod's share divided by the least loaded pod's share (1.0 is perfect);
    /// `None` when no node has a ready endpoint.
    pub ratio: Option<f64>,
}

impl Spread {
    /// Computes the spread from ready endpoints per node. Nodes with zero are left out: their
    /// health check answers 503 and the load balancer skips them.
    pub fn from_counts(ready_per_node: &BTreeMap<String, usize>) -> Spread {
        let serving: Vec<(&String, usize)> = ready_per_node
            .iter()
            .filter(|(_, k)| **k > 0)
            .map(|(n, k)| (n, *k))
            .collect();
        let total: usize = serving.iter().map(|(_, k)| k).sum();
        let n = serving.len();
        let nodes = serving
            .iter()
            .map(|(node, k)| NodeShare {
                node: (*node).clone(),
                pods: *k,
                node_share: 1.0 / n as f64,
                pod_share: 1.0 / (n * k) as f64,
                weighted_pod_share: 1.0 / total as f64,
            })
            .collect();
        let ratio = match (
            serving.iter().map(|(_, k)| *k).max(),
            serving.iter().map(|(_, k)| *k).min(),
        ) {
            (Some(max), Some(min)) => Some(max as f64 / min as f64),
            _ => None,
        };
        Spread {
            nodes,
            total_pods: total,
            ratio,
        }
    }

    /// True when the ratio reaches `threshold`.
    pub fn imbalanced(&self, threshold: f64) -> bool {
        self.ratio.is_some_and(|r| r >= threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(list: &[(&str, usize)]) -> BTreeMap<String, usize> {
        list.iter().map(|(n, k)| (n.to_string(), *k)).collect()
    }

    #[test]
    fn stacked_three_and_one() {
        let s = Spread::from_counts(&counts(&[("a", 3), ("b", 1), ("c", 0)]));
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(s.total_pods, 4);
        assert!((s.nodes[0].pod_share - 1.0 / 6.0).abs() < 1e-12);
        assert!((s.nodes[1].pod_share - 0.5).abs() < 1e-12);
        assert!((s.nodes[0].weighted_pod_share - 0.25).abs() < 1e-12);
        assert_eq!(s.ratio, Some(3.0));
        assert!(s.imbalanced(2.0));
        assert!(!s.imbalanced(3.5));
    }

    #[test]
    fn nothing_ready_has_no_ratio() {
        let s = Spread::from_counts(&counts(&[("a", 0)]));
        assert!(s.nodes.is_empty());
        assert_eq!(s.ratio, None);
        assert!(!s.imbalanced(1.0));
    }
}
