//! How to spread the pods of an imbalanced Local service: a scheduling snippet for its
//! workload and the trade-off that comes with it.

use std::collections::BTreeMap;

use serde::Serialize;

/// Which scheduling rule the advice uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Rule {
    /// `podAntiAffinity` with `preferredDuringSchedulingIgnoredDuringExecution`.
    PreferredAntiAffinity,
    /// `topologySpreadConstraints` with `maxSkew: 1` over `kubernetes.io/hostname`.
    TopologySpread,
}

/// A fix for an imbalance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advice {
    pub rule: Rule,
    /// YAML for the pod template's `spec` (`spec.template.spec` of a Deployment).
    pub snippet: String,
    /// What the operator gives up, and the alternatives.
    pub trade_off: String,
}

fn match_labels(selector: &BTreeMap<String, String>, indent: &str) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{indent}{k}: {v}\n"))
        .collect()
}

/// The advice for a workload selected by `selector`, with `pods` ready pods and `nodes`
/// schedulable nodes. `None` when the Service has no selector (endpoints managed by hand).
pub fn spread_advice(
    selector: &BTreeMap<String, String>,
    pods: usize,
    nodes: usize,
) -> Option<Advice> {
    if selector.is_empty() {
        return None;
    }
    const COMMON: &str = "Both rule types act only at scheduling time (\"IgnoredDuringExecution\"): running pods \
        are not moved, so roll the workload out again (kubectl rollout restart) after adding the rule. \
        A requiredDuringSchedulingIgnoredDuringExecution anti-affinity guarantees one pod per node but \
        leaves extra pods Pending when the nodes run out (during a surge rollout too); \
        whenUnsatisfiable: DoNotSchedule does the same for topologySpreadConstraints. \
        Alternatively, a load balancer that honours X-Load-Balancing-Endpoint-Weight gives every pod \
        the same share without moving anything.";
    if pods <= nodes {
        let labels = match_labels(selector, "            ");
        Some(Advice {
            rule: Rule::PreferredAntiAffinity,
            snippet: format!(
                "affinity:\n  podAntiAffinity:\n    preferredDuringSchedulingIgnoredDuringExecution:\n    - weight: 100\n      podAffinityTerm:\n        topologyKey: kubernetes.io/hostname\n        labelSelector:\n          matchLabels:\n{labels}"
            ),
            trade_off: format!(
                "{pods} pods fit on {nodes} nodes, so prefer one pod per node; the scheduler still places a pod \
                 next to another when it has no choice. {COMMON}"
            ),
        })
    } else {
        let labels = match_labels(selector, "      ");
        Some(Advice {
            rule: Rule::TopologySpread,
            snippet: format!(
                "topologySpreadConstraints:\n- maxSkew: 1\n  topologyKey: kubernetes.io/hostname\n  whenUnsatisfiable: ScheduleAnyway\n  labelSelector:\n    matchLabels:\n{labels}"
            ),
            trade_off: format!(
                "{pods} pods on {nodes} nodes cannot be one per node, so keep the per-node counts within one of \
                 each other; ScheduleAnyway still schedules when it cannot. {COMMON}"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anti_affinity_when_pods_fit_spread_otherwise() {
        let sel: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let a = spread_advice(&sel, 3, 3).expect("advice");
        assert_eq!(a.rule, Rule::PreferredAntiAffinity);
        assert!(a.snippet.contains("topologyKey: kubernetes.io/hostname"));
        assert!(
            a.snippet.ends_with("            app: web\n"),
            "{}",
            a.snippet
        );
        let b = spread_advice(&sel, 5, 2).expect("advice");
        assert_eq!(b.rule, Rule::TopologySpread);
        assert!(b.snippet.contains("maxSkew: 1"));
        assert!(b.trade_off.contains("Pending"));
        assert!(spread_advice(&BTreeMap::new(), 2, 2).is_none());
    }
}
