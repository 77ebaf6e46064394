//! `--detect-local-mode=NodeCIDR` in the agent: the local detector is the own Node's
//! `spec.podCIDRs`, learned from the Node watch, so the sync loop must not write before the
//! Node has them.
//!
//! Upstream kube-proxy reads the pod CIDRs once at start: it waits for them (up to 5 minutes,
//! then exits with "timeout waiting for PodCIDR allocation") and exits when they change later
//! (`NodeManager.OnNodeChange`), so its restart picks up the new ones. knat instead waits as
//! long as it takes (writing nothing, `/healthz` failing because no sync has happened, the
//! wait logged every `--iptables-sync-period`), and follows a change without a restart: the
//! detector is resolved from the snapshot at every compile, so the next sync rewrites the
//! chains whose rules carry it (a Node's pod CIDRs cannot change in place; a Node deleted and
//! created again with others can). [`NodeCidrGate`] decides (pure) and says what happened.

use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use crate::config::{LocalDetector, NodeCidrError, node_cidr_ready};
use crate::model::NodeInfo;

/// What [`NodeCidrGate::check`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEvent {
    /// Still (or again) waiting; `log` says whether this is worth a log line now.
    Waiting { reason: NodeCidrError, log: bool },
    /// The pod CIDRs are known for the first time (or again after a wait).
    Resolved(Vec<IpNet>),
    /// The pod CIDRs differ from the ones the rules were written with.
    Changed { old: Vec<IpNet>, new: Vec<IpNet> },
    /// Nothing new.
    Unchanged,
}

/// The NodeCIDR gate of the sync loop; exists only when some family uses NodeCIDR.
#[derive(Debug, Clone)]
pub struct NodeCidrGate {
    repeat: Duration,
    known: Option<Vec<IpNet>>,
    waiting: Option<(NodeCidrError, Instant)>,
}

impl NodeCidrGate {
    /// A gate when any of `detectors` is `NodeCidr`; waits are logged again every `repeat`.
    pub fn new<'a>(
        detectors: impl IntoIterator<Item = &'a LocalDetector>,
        repeat: Duration,
    ) -> Option<Self> {
        detectors
            .into_iter()
            .any(|d| *d == LocalDetector::NodeCidr)
            .then_some(NodeCidrGate {
                repeat,
                known: None,
                waiting: None,
            })
    }

    /// Whether the sync loop may write at `now`, given the own Node (or its absence).
    pub fn check(&mut self, node_name: &str, node: Option<&NodeInfo>, now: Instant) -> GateEvent {
        match node_cidr_ready(&LocalDetector::NodeCidr, node_name, node) {
            Err(reason) => {
                let log = match &self.waiting {
                    Some((last, at)) => *last != reason || now >= *at + self.repeat,
                    None => true,
                };
                if log {
                    self.waiting = Some((reason.clone(), now));
                }
                GateEvent::Waiting { reason, log }
            }
            Ok(()) => {
                self.waiting = None;
                let cidrs = node.map(|n| n.pod_cidrs.clone()).unwrap_or_default();
                match self.known.replace(cidrs.clone()) {
                    None => GateEvent::Resolved(cidrs),
                    Some(old) if old != cidrs => GateEvent::Changed { old, new: cidrs },
                    Some(_) => GateEvent::Unchanged,
                }
            }
        }
    }

    /// Logs `event` (the operator's view of the gate); returns whether writing may proceed.
    pub fn report(event: &GateEvent) -> bool {
        let list = |c: &[IpNet]| {
            c.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match event {
            GateEvent::Waiting { reason, log } => {
                if *log {
                    tracing::warn!("{reason}; waiting (kube-proxy waits 5 minutes, then exits)");
                }
                false
            }
            GateEvent::Resolved(cidrs) => {
                tracing::info!(pod_cidrs = %list(cidrs), "--detect-local-mode=NodeCIDR: pod traffic is traffic from the Node's spec.podCIDRs (the first of each family)");
                true
            }
            GateEvent::Changed { old, new } => {
                tracing::warn!(old = %list(old), new = %list(new), "the Node's spec.podCIDRs changed: the rules follow at this sync (kube-proxy exits and restarts here)");
                true
            }
            GateEvent::Unchanged => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cidrs: &[&str]) -> NodeInfo {
        NodeInfo {
            name: "node-1".into(),
            zone: None,
            addresses: Vec::new(),
            pod_cidrs: cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
            unschedulable_for_deletion: false,
        }
    }

    #[test]
    fn only_node_cidr_needs_a_gate() {
        let cidr = LocalDetector::Cidr("10.244.0.0/16".parse().expect("cidr"));
        assert!(
            NodeCidrGate::new([&cidr, &LocalDetector::None], Duration::from_secs(30)).is_none()
        );
        assert!(
            NodeCidrGate::new([&cidr, &LocalDetector::NodeCidr], Duration::from_secs(30)).is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_logs_every_period_then_resolves_and_follows_changes() {
        let mut gate =
            NodeCidrGate::new([&LocalDetector::NodeCidr], Duration::from_secs(30)).expect("gate");
        let t0 = Instant::now();
        let no_node = NodeCidrError::NoNode("node-1".into());
        assert_eq!(
            gate.check("node-1", None, t0),
            GateEvent::Waiting {
                reason: no_node.clone(),
                log: true
            }
        );
        assert_eq!(
            gate.check("node-1", None, t0 + Duration::from_secs(5)),
            GateEvent::Waiting {
                reason: no_node,
                log: false
            },
            "not logged again within the period"
        );
        let bare = node(&[]);
        let no_cidrs = NodeCidrError::NoPodCidrs("node-1".into());
        assert_eq!(
            gate.check("node-1", Some(&bare), t0 + Duration::from_secs(6)),
            GateEvent::Waiting {
                reason: no_cidrs.clone(),
                log: true
            },
            "a new reason is logged at once"
        );
        assert_eq!(
            gate.check("node-1", Some(&bare), t0 + Duration::from_secs(36)),
            GateEvent::Waiting {
                reason: no_cidrs,
                log: true
            },
            "logged again after the period"
        );
        assert!(!NodeCidrGate::report(&gate.check(
            "node-1",
            Some(&bare),
            t0 + Duration::from_secs(37)
        )));
        let one = node(&["10.244.1.0/24"]);
        let event = gate.check("node-1", Some(&one), t0 + Duration::from_secs(40));
        assert_eq!(event, GateEvent::Resolved(one.pod_cidrs.clone()));
        assert!(NodeCidrGate::report(&event));
        assert_eq!(
            gate.check("node-1", Some(&one), t0 + Duration::from_secs(41)),
            GateEvent::Unchanged
        );
        let other = node(&["10.244.7.0/24"]);
        assert_eq!(
            gate.check("node-1", Some(&other), t0 + Duration::from_secs(50)),
            GateEvent::Changed {
                old: one.pod_cidrs.clone(),
                new: other.pod_cidrs.clone()
            }
        );
    }
}
