//! The Events the sync loop records: `FailedToStartServiceHealthcheck` on Services
//! ([`super::health_event`]) and `SyncProxyRulesFailed`/`SyncProxyRulesRecovered` on the Node
//! ([`super::sync_event`]). The decisions are the pure throttles'; this only feeds them and
//! leaves the Events in the [`Outbox`] (the loop never waits for the API server).

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::events::Outbox;
use super::health_event::{self, HealthCheckFailures};
use super::sync_event::{self, SyncFailureThrottle};
use crate::model::{ServiceName, Snapshot};

/// The sync loop's Event state.
pub struct LoopEvents {
    outbox: Outbox,
    node_name: String,
    health_checks: HealthCheckFailures,
    syncs: SyncFailureThrottle,
    failing_since: Option<Instant>,
}

impl LoopEvents {
    pub fn new(outbox: Outbox, node_name: &str) -> Self {
        LoopEvents {
            outbox,
            node_name: node_name.to_string(),
            health_checks: HealthCheckFailures::default(),
            syncs: SyncFailureThrottle::new(sync_event::THRESHOLD, sync_event::REPEAT),
            failing_since: None,
        }
    }

    /// One round of opening health-check servers: `errors` could not listen, `ports` are the
    /// ports wanted.
    pub fn health_checks<E: std::fmt::Display>(
        &mut self,
        errors: &[(ServiceName, E)],
        ports: &BTreeMap<ServiceName, u16>,
        snapshot: &Snapshot,
    ) {
        let failures = health_event::failures_of(errors, ports);
        let keys: Vec<(ServiceName, u16)> = failures.iter().map(|(k, _)| k.clone()).collect();
        for key in self.health_checks.observe(&keys) {
            if let Some((_, err)) = failures.iter().find(|(k, _)| *k == key) {
                let (service, port) = &key;
                self.outbox.send(health_event::outgoing(
                    &self.node_name,
                    service,
                    *port,
                    err,
                    snapshot,
                ));
            }
        }
    }

    /// A sync finished at `now`: `failures` consecutive failures including this one (0: it
    /// succeeded), `error` the failure's text.
    pub fn sync_finished(&mut self, failures: u32, error: &str, now: Instant) {
        if failures == 0 {
            let since = self.failing_since.take();
            if let Some(kind) = self.syncs.observe(0, now) {
                let failed_for = since.map(|s| now - s).unwrap_or_default();
                self.outbox.send(sync_event::outgoing(
                    kind,
                    &self.node_name,
                    0,
                    "",
                    failed_for,
                ));
            }
            return;
        }
        self.failing_since.get_or_insert(now);
        if let Some(kind) = self.syncs.observe(failures, now) {
            self.outbox.send(sync_event::outgoing(
                kind,
                &self.node_name,
                failures,
                error,
                std::time::Duration::ZERO,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test(start_paused = true)]
    async fn feeds_the_throttles_and_queues_their_events() {
        let (outbox, mut rx) = Outbox::new(Arc::new(Metrics::new()));
        let mut ev = LoopEvents::new(outbox, "node-1");
        let web = ServiceName::new("shop", "web");
        let ports = BTreeMap::from([(web.clone(), 32000)]);
        let snapshot = Snapshot::default();
        let errors = vec![(web.clone(), "Address in use")];
        ev.health_checks(&errors, &ports, &snapshot);
        ev.health_checks(&errors, &ports, &snapshot);
        let out = rx.try_recv().expect("one Event");
        assert_eq!(out.reason, "FailedToStartServiceHealthcheck");
        assert!(
            out.event
                .note
                .unwrap_or_default()
                .ends_with(": Address in use"),
            "the error's text"
        );
        assert!(rx.try_recv().is_err(), "once while it fails");

        let t0 = Instant::now();
        for n in 1..=3 {
            ev.sync_finished(n, "restore failed", t0 + Duration::from_secs(u64::from(n)));
        }
        let out = rx.try_recv().expect("a Warning after three");
        assert_eq!(out.reason, "SyncProxyRulesFailed");
        assert!(rx.try_recv().is_err());
        ev.sync_finished(0, "", t0 + Duration::from_secs(11));
        let out = rx.try_recv().expect("a Normal");
        assert_eq!(out.reason, "SyncProxyRulesRecovered");
        assert_eq!(
            out.event.note.as_deref(),
            Some("proxy rules synced again after failing for 10 s"),
            "from the first failure"
        );
    }
}
