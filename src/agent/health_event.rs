//! The Warning `FailedToStartServiceHealthcheck` on a Service whose health-check node port cannot
//! be listened on, as kube-proxy records it (`pkg/proxy/healthcheck`: reason, action `Listen`,
//! note "node N failed to start healthcheck "ns/name" on port P: error").
//!
//! kube-proxy records one on every sync that fails to listen and leaves deduplication to its
//! event broadcaster. knat decides itself ([`HealthCheckFailures`], pure): one Event per Service
//! and port when listening first fails, nothing while it keeps failing (every sync retries), and
//! a new one only after the server has listened (or the Service, or its port, went away) and
//! fails again.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::events::{Event, EventType};

use super::events::{NOTE_LIMIT, Outgoing, cut, service_reference};
use crate::model::{ServiceName, Snapshot};

/// The reason, as kube-proxy writes it.
pub const REASON: &str = "FailedToStartServiceHealthcheck";
/// The action, as kube-proxy writes it.
pub const ACTION: &str = "Listen";

/// Which Services' health-check ports are failing, to report each failure once (pure).
#[derive(Debug, Clone, Default)]
pub struct HealthCheckFailures {
    reported: BTreeSet<(ServiceName, u16)>,
}

impl HealthCheckFailures {
    /// The outcome of one round of opening servers: `failed` are the Services (and ports)
    /// whose server could not listen. Returns those to report now; a Service missing from
    /// `failed` has recovered (or is gone) and is reported again when it next fails.
    pub fn observe(&mut self, failed: &[(ServiceName, u16)]) -> Vec<(ServiceName, u16)> {
        let now: BTreeSet<(ServiceName, u16)> = failed.iter().cloned().collect();
        let new: Vec<(ServiceName, u16)> = now.difference(&self.reported).cloned().collect();
        self.reported = now;
        new
    }

    /// Service ports currently failing (and reported).
    pub fn failing(&self) -> usize {
        self.reported.len()
    }
}

/// kube-proxy's note, within the API server's limit.
pub fn message(node_name: &str, service: &ServiceName, port: u16, err: &str) -> String {
    let full =
        format!("node {node_name} failed to start healthcheck \"{service}\" on port {port}: {err}");
    cut(&full, NOTE_LIMIT).to_string()
}

/// The Event for one failing Service port, regarding the Service (its UID from `snapshot`).
pub fn outgoing(
    node_name: &str,
    service: &ServiceName,
    port: u16,
    err: &str,
    snapshot: &Snapshot,
) -> Outgoing {
    let uid = snapshot.service(service).and_then(|s| s.uid.as_deref());
    Outgoing {
        regarding: service_reference(service, uid),
        reason: REASON,
        event: Event {
            type_: EventType::Warning,
            reason: REASON.into(),
            note: Some(message(node_name, service, port, err)),
            action: ACTION.into(),
            secondary: None,
        },
    }
}

/// The errors of one round, with their text, keyed for [`HealthCheckFailures::observe`].
pub fn failures_of<E: std::fmt::Display>(
    errors: &[(ServiceName, E)],
    ports: &BTreeMap<ServiceName, u16>,
) -> Vec<((ServiceName, u16), String)> {
    errors
        .iter()
        .filter_map(|(svc, err)| ports.get(svc).map(|p| ((svc.clone(), *p), err.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ServiceName {
        ServiceName::new("shop", name)
    }

    #[test]
    fn once_while_failing_again_after_recovery() {
        let mut f = HealthCheckFailures::default();
        assert_eq!(f.observe(&[]), vec![]);
        assert_eq!(f.observe(&[(svc("web"), 32000)]), vec![(svc("web"), 32000)]);
        for _ in 0..5 {
            assert_eq!(
                f.observe(&[(svc("web"), 32000)]),
                vec![],
                "still failing: once"
            );
        }
        assert_eq!(f.failing(), 1);
        // Another Service fails too: only it is new.
        assert_eq!(
            f.observe(&[(svc("api"), 32001), (svc("web"), 32000)]),
            vec![(svc("api"), 32001)]
        );
        // web listens now (or went away), api keeps failing.
        assert_eq!(f.observe(&[(svc("api"), 32001)]), vec![]);
        // web fails again: a new Event.
        assert_eq!(
            f.observe(&[(svc("api"), 32001), (svc("web"), 32000)]),
            vec![(svc("web"), 32000)]
        );
        // web's port changed and the new one fails too: another Event.
        assert_eq!(
            f.observe(&[(svc("api"), 32001), (svc("web"), 32005)]),
            vec![(svc("web"), 32005)]
        );
        assert_eq!(f.observe(&[]), vec![]);
        assert_eq!(f.failing(), 0);
    }

    #[test]
    fn the_note_is_kube_proxys() {
        assert_eq!(
            message(
                "node-1",
                &svc("web"),
                32000,
                "cannot listen on 0.0.0.0:32000: Address in use (os error 98)"
            ),
            "node node-1 failed to start healthcheck \"shop/web\" on port 32000: cannot listen on 0.0.0.0:32000: Address in use (os error 98)"
        );
        let long = "x".repeat(5000);
        assert_eq!(message("node-1", &svc("web"), 1, &long).len(), NOTE_LIMIT);
    }

    #[test]
    fn the_event_regards_the_service_by_its_uid() {
        let mut snapshot = Snapshot::default();
        let out = outgoing("node-1", &svc("web"), 32000, "boom", &snapshot);
        assert_eq!(
            out.regarding.uid.as_deref(),
            Some("shop/web"),
            "kube-proxy's fallback"
        );
        assert_eq!(out.event.type_, EventType::Warning);
        assert_eq!(out.event.reason, "FailedToStartServiceHealthcheck");
        assert_eq!(out.event.action, "Listen");
        let mut service = crate::model::Service {
            name: svc("web"),
            service_type: crate::model::ServiceType::LoadBalancer,
            cluster_ips: vec![],
            ports: vec![],
            external_ips: vec![],
            load_balancer_ips: vec![],
            source_ranges: vec![],
            external_policy_local: true,
            internal_policy_local: false,
            session_affinity_timeout: None,
            health_check_node_port: Some(32000),
            uid: None,
        };
        service.uid = Some("7d0c-uid".into());
        snapshot.upsert_service(service);
        let out = outgoing("node-1", &svc("web"), 32000, "boom", &snapshot);
        assert_eq!(out.regarding.uid.as_deref(), Some("7d0c-uid"));
        assert_eq!(out.regarding.namespace.as_deref(), Some("shop"));
        assert_eq!(out.regarding.name.as_deref(), Some("web"));
    }

    #[test]
    fn failures_carry_their_port_and_text() {
        let ports = BTreeMap::from([(svc("web"), 32000)]);
        let errors = vec![(svc("web"), "in use"), (svc("gone"), "x")];
        assert_eq!(
            failures_of(&errors, &ports),
            vec![((svc("web"), 32000), "in use".to_string())]
        );
    }
}
