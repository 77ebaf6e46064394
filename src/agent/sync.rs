//! The one sync loop: it carries out what the [`Scheduler`] decides and sleeps until the
//! scheduler's next deadline or the next change of the source.
//!
//! Sources only publish a new [`SourceState`]; this loop publishes what it sees (node-name
//! check, readiness) to metrics and health, logs what the scheduler says the operator must be
//! told, runs [`FamilySync::sync`] for every family when a sync is due, checks the canary
//! chains when that is due, and reports each sync to metrics, `/healthz`, the health-check
//! servers and Kubernetes Events. It keeps no deadline of its own.
//!
//! Shutdown (SIGTERM, SIGINT, a changed `--config` file) is awaited between syncs and during
//! them: a sync or canary check in progress is stopped ([`crate::backend::stop`]), its running
//! command killed with its process group and reaped, and the loop returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use super::cpu_time;
use super::family_sync::{FamilyError, FamilyOutcome, FamilySync, merge_health};
use super::index::{Readiness, SourceState};
use super::loop_events::LoopEvents;
use super::node_cidr::NodeCidrGate;
use super::node_identity::{NameSource, NodeCheck, missing_message};
use super::schedule::{Action, Notices, Scheduler};
use crate::backend::{BackendError, Stop, StopHandle, Stopped, command_timeout};
use crate::health::{ProxyHealth, ServiceHealthServers};
use crate::metrics::Metrics;
use crate::model::{IpFamily, Snapshot};
use crate::rules::plan::SyncKind;

/// Sync errors.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The backend failed (restore rejected, iptables missing, lock timeout). Retryable: the
    /// loop retries with a full sync after a backoff; the kernel keeps the last good rules.
    #[error("{family:?} sync failed: {source}")]
    Backend {
        family: IpFamily,
        #[source]
        source: FamilyError,
    },
    /// Shutdown stopped a command of this family's sync. Not retried: the agent is exiting.
    #[error("{family:?} sync stopped for shutdown: {stopped}")]
    Stopped { family: IpFamily, stopped: Stopped },
}

/// Everything the loop drives.
pub struct SyncLoop {
    pub families: Vec<FamilySync>,
    pub scheduler: Scheduler,
    pub source: watch::Receiver<SourceState>,
    pub health: Arc<Mutex<ProxyHealth>>,
    pub servers: ServiceHealthServers,
    pub metrics: Arc<Metrics>,
    pub name_source: NameSource,
    /// The newest change trigger already observed in the programming-latency metric.
    pub observed_trigger: u64,
    /// Kubernetes Events (API-server source only).
    pub events: Option<LoopEvents>,
}

fn with_health<R>(health: &Mutex<ProxyHealth>, f: impl FnOnce(&mut ProxyHealth) -> R) -> R {
    match health.lock() {
        Ok(mut h) => f(&mut h),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

impl SyncLoop {
    fn family_list(&self) -> Vec<IpFamily> {
        self.families.iter().map(|f| f.cfg.family).collect()
    }

    /// A sync of every family is owed from `since` (kept if one was owed already).
    fn queue_all(&self, families: &[IpFamily], since: Instant) {
        for f in families {
            with_health(&self.health, |h| h.queued(*f, since));
            self.metrics.queued_now(*f);
        }
    }

    /// Observes the network programming latency (change trigger to rules in the kernel) of every
    /// slice change not observed yet, as upstream's metric does after a successful restore.
    fn observe_programming(&mut self, triggers: &[(u64, std::time::SystemTime)]) {
        let now = std::time::SystemTime::now();
        let seen = self.observed_trigger;
        for (seq, time) in triggers.iter().filter(|(seq, _)| *seq > seen) {
            if let Ok(latency) = now.duration_since(*time) {
                for family in self.family_list() {
                    self.metrics
                        .network_programming
                        .get_or_create(&vec![("ip_family", family.label())])
                        .observe(latency.as_secs_f64());
                }
            }
            self.observed_trigger = *seq;
        }
    }

    /// Publishes the node-name check to metrics and health; returns whether it is missing.
    fn observe_node(&self, state: &SourceState) -> bool {
        let found = state.node == NodeCheck::Found;
        self.metrics.node_name_matches.set(i64::from(found));
        let eligible = state
            .snapshot
            .node
            .as_ref()
            .is_none_or(|n| !n.unschedulable_for_deletion);
        with_health(&self.health, |h| {
            h.node_name_ok = found;
            h.node_eligible = eligible;
        });
        state.node == NodeCheck::Missing
    }

    async fn sync_all(
        &mut self,
        snapshot: &Snapshot,
        kind: SyncKind,
    ) -> Result<Vec<FamilyOutcome>, SyncError> {
        let mut outcomes = Vec::new();
        for fam in &mut self.families {
            let family = fam.cfg.family;
            let start = Instant::now();
            match fam.sync(snapshot, kind).await {
                Ok(o) => {
                    let secs = start.elapsed().as_secs_f64();
                    self.metrics
                        .observe_sync(family, kind == SyncKind::Full, secs);
                    self.metrics.synced_now(family);
                    self.metrics.rules(
                        family,
                        o.stats.filter_rules_total,
                        o.stats.nat_rules_total,
                        o.stats.rules_written,
                        o.stats.chains_written,
                    );
                    self.metrics
                        .no_local(family, o.no_local_internal, o.no_local_external);
                    if let Some(n) = o.conntrack_deleted {
                        self.metrics
                            .conntrack_deleted
                            .get_or_create(&vec![("ip_family", family.label())])
                            .inc_by(n as u64);
                    }
                    with_health(&self.health, |h| h.updated(family));
                    let written =
                        o.stats.chains_written + o.stats.chains_deleted + o.hooks_inserted > 0;
                    let kind_str = if kind == SyncKind::Full {
                        "full"
                    } else {
                        "partial"
                    };
                    if written || kind == SyncKind::Full {
                        tracing::info!(
                            kind = kind_str,
                            family = family.label(),
                            chains_written = o.stats.chains_written,
                            rules_written = o.stats.rules_written,
                            chains_deleted = o.stats.chains_deleted,
                            hooks_inserted = o.hooks_inserted,
                            bytes = o.stats.bytes,
                            ms = format_args!("{:.1}", secs * 1000.0),
                            phases = %o.phases,
                            "sync done"
                        );
                    } else {
                        tracing::debug!(
                            kind = kind_str,
                            family = family.label(),
                            "sync: nothing changed"
                        );
                    }
                    outcomes.push(o);
                }
                Err(FamilyError::Backend(BackendError::Stopped(stopped))) => {
                    return Err(SyncError::Stopped { family, stopped });
                }
                Err(source) => {
                    self.metrics.restore_failed(family, kind == SyncKind::Full);
                    return Err(SyncError::Backend { family, source });
                }
            }
        }
        Ok(outcomes)
    }

    /// Runs until `shutdown` completes or the source goes away. Rules are left in place. A
    /// shutdown during a sync or canary check stops it (see [`unless_shutdown`]).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let sync_period = self.scheduler.timing().sync_period;
        let families = self.family_list();
        let (stopper, stop) = Stop::channel();
        for fam in &mut self.families {
            fam.ipt.timeout = command_timeout(sync_period);
            fam.ipt.stop = stop.clone();
        }
        for f in &families {
            with_health(&self.health, |h| h.updated(*f));
            self.metrics.queued_now(*f);
        }
        self.scheduler.start(Instant::now());
        let mut node_cidr = NodeCidrGate::new(
            self.families.iter().map(|f| &f.cfg.local_detector),
            sync_period,
        );
        loop {
            let now = Instant::now();
            let (readiness, node_missing) = {
                let state = self.source.borrow();
                (state.readiness(), self.observe_node(&state))
            };
            let notices = self.scheduler.observe(now, readiness, node_missing);
            self.tell(notices);
            let writable = readiness == Readiness::Ready && self.cidrs_known(&mut node_cidr, now);
            let ran = match self.scheduler.poll(now, writable) {
                Some(Action::Sync(kind)) => Some((
                    "a sync",
                    unless_shutdown(self.sync_and_report(kind, now), shutdown.as_mut(), &stopper)
                        .await,
                )),
                Some(Action::CheckCanaries) => Some((
                    "a canary check",
                    unless_shutdown(self.check_canaries(&families), shutdown.as_mut(), &stopper)
                        .await,
                )),
                None => None,
            };
            match ran {
                Some((during, (Some(stopped), _))) => {
                    tracing::info!(
                        "shutting down during {during}: {stopped}; {}",
                        stopped.consequence()
                    );
                    return;
                }
                Some((during, (None, true))) => {
                    tracing::info!(
                        "shutting down: {during} in progress finished first; rules are left in place"
                    );
                    return;
                }
                Some((_, (None, false))) => continue,
                None => {}
            }
            let wake = self.scheduler.poll_timeout(now);
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("shutting down; rules are left in place");
                    return;
                }
                changed = self.source.changed() => {
                    if changed.is_err() {
                        tracing::error!("source stopped; exiting the sync loop, rules are left in place");
                        return;
                    }
                    self.scheduler.mark_dirty();
                    if self.source.borrow().readiness() == Readiness::Ready {
                        for f in &families {
                            with_health(&self.health, |h| h.queued(*f, Instant::now()));
                            self.metrics.queued_now(*f);
                        }
                    }
                }
                () = sleep_until(wake) => {}
            }
        }
    }

    /// Logs what the scheduler says the operator must be told.
    fn tell(&self, notices: Notices) {
        if notices.node_missing {
            let state = self.source.borrow();
            let name = &state.node_name;
            tracing::error!(node = %name, "{}", missing_message(name, self.name_source, state.require_node));
        }
        match notices.readiness {
            Some(Readiness::WaitingForLists) => {
                tracing::info!("waiting for the initial lists before writing any rule")
            }
            Some(Readiness::NodeUnverified) => {
                tracing::warn!(
                    "own Node not found: keeping the rules in the kernel as they are, writing nothing"
                )
            }
            Some(Readiness::Ready) => tracing::info!("source ready"),
            None => {}
        }
    }

    /// `--detect-local-mode=NodeCIDR`: nothing is written before the Node's podCIDRs are known
    /// (always true without the gate). Asked only while the source is ready.
    fn cidrs_known(&self, gate: &mut Option<NodeCidrGate>, now: Instant) -> bool {
        let Some(gate) = gate.as_mut() else {
            return true;
        };
        let state = self.source.borrow();
        NodeCidrGate::report(&gate.check(&state.node_name, state.snapshot.node.as_ref(), now))
    }

    /// Syncs every family from the newest snapshot (the sync started at `started`) and reports
    /// the result to the health-check servers, Events, `/healthz` and the scheduler. A sync
    /// that shutdown stopped reports nothing and returns the command it stopped.
    async fn sync_and_report(&mut self, kind: SyncKind, started: Instant) -> Option<Stopped> {
        let (snapshot, triggers) = {
            let state = self.source.borrow_and_update();
            (state.snapshot.clone(), state.triggers.clone())
        };
        let cpu_before = cpu_time::process_and_children();
        let result = self.sync_all(&snapshot, kind).await;
        if let (Some(before), Some(after)) = (cpu_before, cpu_time::process_and_children()) {
            self.scheduler.cost_measured(after.saturating_sub(before));
        }
        let ok = result.is_ok();
        match result {
            Err(SyncError::Stopped { stopped, .. }) => return Some(stopped),
            Ok(outcomes) => {
                self.observe_programming(&triggers);
                self.serve_health_checks(&outcomes, &snapshot).await;
            }
            Err(err) => {
                let failures = self.scheduler.failures() + 1;
                tracing::error!(%err, failures, "sync failed; retrying with a full sync");
                if let Some(events) = self.events.as_mut() {
                    events.sync_finished(failures, &err.to_string(), Instant::now());
                }
                // The sync is still owed: `/healthz` fails once it has been owed for twice the
                // sync period, whatever asked for it.
                let families = self.family_list();
                self.queue_all(&families, started);
            }
        }
        // Changes that arrived while it ran make a backlog, which the scheduler spaces by the
        // sync's cost.
        if self.source.has_changed().unwrap_or(false) {
            self.scheduler.mark_dirty();
        }
        self.scheduler.finished(Instant::now(), kind, ok);
        None
    }

    /// After a successful sync: the health-check servers follow the merged health, and their
    /// failures become Events.
    async fn serve_health_checks(&mut self, outcomes: &[FamilyOutcome], snapshot: &Snapshot) {
        let merged = merge_health(outcomes);
        let errors = self.servers.sync(&merged).await;
        for (svc, err) in &errors {
            tracing::error!(service = %svc, %err, "FailedToStartServiceHealthcheck; retried on the next sync");
        }
        if let Some(events) = self.events.as_mut() {
            let ports = merged.iter().map(|(k, h)| (k.clone(), h.port)).collect();
            events.health_checks(&errors, &ports, snapshot);
            events.sync_finished(0, "", Instant::now());
        }
        self.metrics
            .health_check_servers
            .set(self.servers.ports().len() as i64);
    }

    /// Checks every family's canary chains; a lost one forces a full sync, owed from now. A
    /// check that shutdown stopped returns the command it stopped.
    async fn check_canaries(&mut self, families: &[IpFamily]) -> Option<Stopped> {
        for fam in &self.families {
            match fam.ipt.canaries_present().await {
                Err(BackendError::Stopped(stopped)) => return Some(stopped),
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        family = fam.cfg.family.label(),
                        "canary chain gone: iptables was flushed by someone else; full sync"
                    );
                    self.scheduler.force_full();
                    self.queue_all(families, Instant::now());
                }
                Err(err) => tracing::warn!(%err, "cannot check canary chains"),
            }
        }
        None
    }
}

/// Runs `work` to its end. When `shutdown` completes first, asks the running command to stop
/// (it is killed with its process group and reaped; no other one starts) and still waits for
/// `work`, which then returns at its next command, so no child is left behind. Returns `work`'s
/// output and whether shutdown came.
async fn unless_shutdown<T>(
    work: impl Future<Output = T>,
    shutdown: Pin<&mut impl Future<Output = ()>>,
    stopper: &StopHandle,
) -> (T, bool) {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => return (out, false),
        () = shutdown => {}
    }
    stopper.stop();
    (work.await, true)
}

/// Sleeps until `at`, or forever when nothing is due.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_shutdown_during_the_work_stops_it_and_still_waits_for_its_end() {
        let (stopper, stop) = Stop::channel();
        // The work ends only when asked to stop, as a sync whose restore hangs.
        let work = async {
            stop.wait().await;
            "stopped"
        };
        let shutdown = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(shutdown);
        let ran = tokio::time::timeout(
            Duration::from_secs(5),
            unless_shutdown(work, shutdown.as_mut(), &stopper),
        )
        .await
        .expect("the stop reached the work");
        assert_eq!(ran, ("stopped", true));
        assert!(stop.requested());
    }

    #[tokio::test]
    async fn work_that_ends_first_is_not_stopped() {
        let (stopper, stop) = Stop::channel();
        let shutdown = std::future::pending::<()>();
        tokio::pin!(shutdown);
        let ran = unless_shutdown(async { 7 }, shutdown.as_mut(), &stopper).await;
        assert_eq!(ran, (7, false));
        assert!(!stop.requested());
    }
}
