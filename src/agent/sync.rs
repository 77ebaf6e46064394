//! The one sync loop.
//!
//! Sources only publish a new [`SourceState`]; this loop decides when to write. The decision
//! ([`Scheduler`]) is pure and driven by `tokio::time::Instant`s passed in, so it is tested with
//! paused time:
//!
//! - nothing is written until every watched kind has completed its first list (and, for the
//!   API-server source, until the Node named like us has been seen);
//! - changes coalesce: any number of changes between two syncs cause one sync;
//! - `--iptables-min-sync-period` limits the rate (start to start, burst 2, as upstream's
//!   BoundedFrequencyRunner);
//! - full syncs at start, after a failure (with exponential backoff from the min period up to
//!   `--iptables-sync-period`), when the canary chains vanish, and every hour; partial syncs
//!   otherwise.
//!
//! [`FamilySync`] does one sync of one IP family: compile, plan, one atomic
//! `iptables-restore`, and `applied = next` only on success; hook jumps, canaries and stale
//! chain deletion on full syncs; UDP conntrack cleanup when the UDP endpoints changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::index::{Readiness, SourceState};
use super::loop_events::LoopEvents;
use super::node_cidr::NodeCidrGate;
use super::node_identity::{NameSource, NodeCheck, missing_message};
use crate::backend::conntrack::Conntrack;
use crate::backend::nfacct::Nfacct;
use crate::backend::{BackendError, ChainListing, Iptables, canary_payload, command_timeout};
use crate::config::ProxyConfig;
use crate::health::{ProxyHealth, ServiceHealthServers};
use crate::metrics::Metrics;
use crate::model::{IpFamily, ServiceName, Snapshot};
use crate::rules::compile::IncrementalCompiler;
use crate::rules::compile::UdpServicePort;
use crate::rules::plan::SyncKind;
use crate::rules::rule::Hook;
use crate::rules::{AppliedState, Plan, PlanError, PlanStats, ServiceHealth, plan_with_hooks};

/// Upstream's `FullSyncPeriod`: a full sync at least this often.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

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
}

/// Why one family's sync failed.
#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Planning met released rule text (a bug); nothing was written.
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// The timing parameters of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `--iptables-min-sync-period`.
    pub min_interval: Duration,
    /// `--iptables-sync-period`: canary poll interval and the maximum retry backoff.
    pub sync_period: Duration,
    /// Full sync at least this often.
    pub full_period: Duration,
    /// Syncs allowed back to back before `min_interval` applies.
    pub burst: u32,
}

impl Timing {
    pub fn new(min_interval: Duration, sync_period: Duration) -> Self {
        Timing {
            min_interval,
            sync_period,
            full_period: FULL_SYNC_PERIOD,
            burst: 2,
        }
    }
}

/// What the loop should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Sync(SyncKind),
    /// Nothing to do before this instant (unless something changes).
    WaitUntil(Instant),
    /// Nothing to do until something changes.
    Idle,
}

/// The pure sync scheduler.
#[derive(Debug, Clone)]
pub struct Scheduler {
    timing: Timing,
    dirty: bool,
    need_full: bool,
    /// GCRA "theoretical arrival time" of the rate limiter.
    tat: Option<Instant>,
    last_full: Option<Instant>,
    retry_at: Option<Instant>,
    failures: u32,
}

impl Scheduler {
    /// A scheduler that wants a full sync as soon as the source is ready.
    pub fn new(timing: Timing) -> Self {
        Scheduler {
            timing,
            dirty: true,
            need_full: true,
            tat: None,
            last_full: None,
            retry_at: None,
            failures: 0,
        }
    }

    /// Something changed in the source.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The next sync must be full (canary lost, tables flushed by someone else).
    pub fn force_full(&mut self) {
        self.need_full = true;
        self.dirty = true;
    }

    /// Consecutive failed syncs.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn rate_allowed_at(&self) -> Option<Instant> {
        let slack = self.timing.min_interval * self.timing.burst.saturating_sub(1);
        self.tat.map(|tat| tat.checked_sub(slack).unwrap_or(tat))
    }

    /// Decides what to do at `now`; `ready` says whether the source may be written from.
    pub fn decide(&self, now: Instant, ready: bool) -> Decision {
        if !ready {
            return Decision::Idle;
        }
        let periodic_at = self.last_full.map(|t| t + self.timing.full_period);
        let periodic_due = periodic_at.is_some_and(|t| now >= t);
        if !(self.dirty || self.need_full || periodic_due) {
            return periodic_at.map_or(Decision::Idle, Decision::WaitUntil);
        }
        let earliest = [self.rate_allowed_at(), self.retry_at]
            .into_iter()
            .flatten()
            .max();
        if let Some(at) = earliest
            && now < at
        {
            return Decision::WaitUntil(at);
        }
        let full = self.need_full || periodic_due || self.last_full.is_none();
        Decision::Sync(if full {
            SyncKind::Full
        } else {
            SyncKind::Partial
        })
    }

    /// A sync starts at `now`: consumes rate budget; changes after this mark dirty again.
    pub fn started(&mut self, now: Instant) {
        let base = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some(base + self.timing.min_interval);
        self.dirty = false;
    }

    /// The sync that started last finished at `now`.
    pub fn finished(&mut self, now: Instant, kind: SyncKind, ok: bool) {
        if ok {
            self.failures = 0;
            self.retry_at = None;
            if kind == SyncKind::Full {
                self.need_full = false;
                self.last_full = Some(now);
            }
        } else {
            self.failures += 1;
            self.need_full = true;
            self.dirty = true;
            self.retry_at = Some(now + self.backoff());
        }
    }

    /// Retry delay after the current number of failures: min period (at least 1 s), doubling,
    /// capped at the sync period.
    pub fn backoff(&self) -> Duration {
        let base = self.timing.min_interval.max(Duration::from_secs(1));
        let exp = self.failures.saturating_sub(1).min(16);
        (base * 2u32.pow(exp)).min(self.timing.sync_period.max(base))
    }
}

/// What one family's sync did.
#[derive(Debug, Clone)]
pub struct FamilyOutcome {
    pub family: IpFamily,
    pub stats: PlanStats,
    pub health: BTreeMap<ServiceName, ServiceHealth>,
    pub no_local_internal: usize,
    pub no_local_external: usize,
    pub hooks_inserted: usize,
    pub conntrack_deleted: Option<usize>,
    pub phases: SyncPhases,
}

/// Where one sync's time went, for the log line that reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SyncPhases {
    /// Compiling the changed Services and rebuilding the shared chains.
    pub compile: Duration,
    /// Full syncs: canary chains and the listing of existing chains.
    pub probe: Duration,
    /// Comparing with the applied state and writing the payload.
    pub plan: Duration,
    /// The `iptables-restore` transaction.
    pub restore: Duration,
    /// Hook checks, conntrack cleanup and releasing the applied text.
    pub after: Duration,
}

impl SyncPhases {
    fn millis(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }
}

impl std::fmt::Display for SyncPhases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "compile {:.1} ms, probe {:.1} ms, plan {:.1} ms, restore {:.1} ms, after {:.1} ms",
            Self::millis(self.compile),
            Self::millis(self.probe),
            Self::millis(self.plan),
            Self::millis(self.restore),
            Self::millis(self.after)
        )
    }
}

/// The state and backend of one IP family.
pub struct FamilySync {
    pub cfg: ProxyConfig,
    pub ipt: Iptables,
    pub conntrack: Conntrack,
    applied: AppliedState,
    /// Recompiles only Services whose object or slices changed since the last sync.
    compiler: IncrementalCompiler,
    last_udp: Option<Vec<UdpServicePort>>,
    /// The nfacct counters' client (None: nfacct unavailable or turned off).
    nfacct: Option<Arc<Nfacct>>,
}

impl FamilySync {
    pub fn new(cfg: ProxyConfig, ipt: Iptables) -> Self {
        let conntrack = Conntrack::new(cfg.family);
        FamilySync {
            cfg,
            ipt,
            conntrack,
            applied: AppliedState::default(),
            compiler: IncrementalCompiler::default(),
            last_udp: None,
            nfacct: None,
        }
    }

    /// Creates the nfacct counters on every full sync (as upstream does) and writes the
    /// `-m nfacct` clauses while they exist.
    pub fn with_nfacct(mut self, client: Option<Arc<Nfacct>>) -> Self {
        self.cfg.nfacct = client.is_some();
        self.nfacct = client;
        self
    }

    /// Full syncs: (re)creates the counters; the clauses follow whether that worked.
    fn ensure_nfacct(&mut self) {
        let Some(client) = &self.nfacct else {
            return;
        };
        let ok = match client.ensure_counters() {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(%err, "cannot create the nfacct counters; rules without -m nfacct clauses until a full sync succeeds in creating them");
                false
            }
        };
        if ok != self.cfg.nfacct {
            tracing::info!(
                family = self.cfg.family.label(),
                nfacct = ok,
                "nfacct clauses changed"
            );
        }
        self.cfg.nfacct = ok;
    }

    /// One sync of this family. On error the applied state is unchanged unless the restore
    /// itself succeeded (then only the hook jumps are missing, and the retry is full anyway).
    pub async fn sync(
        &mut self,
        snapshot: &Snapshot,
        kind: SyncKind,
    ) -> Result<FamilyOutcome, FamilyError> {
        let family = self.cfg.family;
        let full = kind == SyncKind::Full;
        let mut phases = SyncPhases::default();
        let mut mark = std::time::Instant::now();
        let mut lap = |phase: &mut Duration| {
            let now = std::time::Instant::now();
            *phase = now - mark;
            mark = now;
        };
        if full {
            // Full syncs write every chain; the cached ones keep digests only.
            self.compiler.forget();
            self.ensure_nfacct();
        }
        // `--nodeport-addresses primary` follows the Node's IP of this family.
        let resolved = self.cfg.resolve_for_node(snapshot.node.as_ref());
        let cfg = resolved.as_ref().unwrap_or(&self.cfg);
        let mut compiled = self.compiler.compile(snapshot, cfg);
        lap(&mut phases.compile);
        let listing = if full {
            // The canary chains are written by the restore itself (see `canary_payload`).
            match self.ipt.list_chains().await {
                Ok(listing) => Some(listing),
                Err(err) => {
                    tracing::warn!(?family, %err, "cannot list chains; stale chains are kept until the next full sync");
                    None
                }
            }
        } else {
            None
        };
        let stale = listing
            .as_ref()
            .map(ChainListing::service_chains)
            .unwrap_or_default();
        // Hooks whose target chain is missing go into the restore; without a listing every
        // hook is checked afterwards.
        let (in_restore, to_check): (Vec<&Hook>, Vec<&Hook>) = match &listing {
            Some(listing) if full => listing.split_hooks(&compiled.rules.hooks),
            _ if full => (Vec::new(), compiled.rules.hooks.iter().collect()),
            _ => (Vec::new(), Vec::new()),
        };
        lap(&mut phases.probe);
        let plan = match plan_with_hooks(
            &self.applied,
            &compiled.rules,
            kind,
            &stale,
            &in_restore,
            self.ipt.mode.chain_order(),
        ) {
            Ok(plan) => plan,
            Err(err) => {
                // Nothing was written; the next sync is full and recompiles everything.
                self.compiler.forget();
                return Err(err.into());
            }
        };
        lap(&mut phases.plan);
        let Plan {
            mut payload,
            next,
            stats,
        } = plan;
        if full {
            payload.push_str(&canary_payload());
        }
        if !payload.is_empty() {
            self.ipt.restore(&payload).await?;
        }
        lap(&mut phases.restore);
        // Freed before the hook checks and conntrack work (33 MB at 10,000 services).
        drop(payload);
        self.applied = next;
        let hooks_inserted = in_restore.len() + self.ipt.ensure_hooks(&to_check).await?;
        let mut conntrack_deleted = None;
        if self.last_udp.as_ref() != Some(&compiled.udp) {
            match self.conntrack.reconcile(&compiled.udp).await {
                Ok(n) => {
                    conntrack_deleted = Some(n);
                    self.last_udp = Some(compiled.udp.clone());
                }
                Err(err) => {
                    tracing::warn!(?family, %err, "UDP conntrack cleanup failed; retried on the next change")
                }
            }
        }
        let mut outcome = FamilyOutcome {
            family,
            stats,
            health: std::mem::take(&mut compiled.health),
            no_local_internal: compiled.no_local_endpoints_internal,
            no_local_external: compiled.no_local_endpoints_external,
            hooks_inserted,
            conntrack_deleted,
            phases: SyncPhases::default(),
        };
        // The kernel has every chain now: keep only digests of the Services' chains (the
        // compiled result must be gone, or the cache's fragments are still shared).
        drop(compiled);
        self.applied.release_text(&mut self.compiler);
        lap(&mut phases.after);
        outcome.phases = phases;
        Ok(outcome)
    }
}

/// Merges per-family health: the same Service and port, the larger local count (a dual-stack
/// pod has one IP per family and must not count twice).
pub fn merge_health(outcomes: &[FamilyOutcome]) -> BTreeMap<ServiceName, ServiceHealth> {
    let mut merged: BTreeMap<ServiceName, ServiceHealth> = BTreeMap::new();
    for o in outcomes {
        for (name, h) in &o.health {
            merged
                .entry(name.clone())
                .and_modify(|m| m.local_endpoints = m.local_endpoints.max(h.local_endpoints))
                .or_insert_with(|| h.clone());
        }
    }
    merged
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
                Err(source) => {
                    self.metrics.restore_failed(family, kind == SyncKind::Full);
                    return Err(SyncError::Backend { family, source });
                }
            }
        }
        Ok(outcomes)
    }

    /// Runs until `shutdown` completes or the source goes away. Rules are left in place.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let sync_period = self.scheduler.timing.sync_period;
        let families = self.family_list();
        for fam in &mut self.families {
            fam.ipt.timeout = command_timeout(sync_period);
        }
        for f in &families {
            with_health(&self.health, |h| h.updated(*f));
            self.metrics.queued_now(*f);
        }
        let mut canary_at = Instant::now() + sync_period;
        let mut alarm_at = Instant::now();
        let mut last_readiness = None;
        let mut synced_once = false;
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
            if node_missing && now >= alarm_at {
                let (name, frozen) = {
                    let state = self.source.borrow();
                    (state.node_name.clone(), state.require_node)
                };
                tracing::error!(node = %name, "{}", missing_message(&name, self.name_source, frozen));
                alarm_at = now + sync_period;
            }
            if last_readiness != Some(readiness) {
                match readiness {
                    Readiness::WaitingForLists => {
                        tracing::info!("waiting for the initial lists before writing any rule")
                    }
                    Readiness::NodeUnverified => {
                        tracing::warn!(
                            "own Node not found: keeping the rules in the kernel as they are, writing nothing"
                        )
                    }
                    Readiness::Ready => tracing::info!("source ready"),
                }
                last_readiness = Some(readiness);
            }
            // --detect-local-mode=NodeCIDR: nothing is written before the Node's podCIDRs.
            let cidrs_known = match node_cidr.as_mut() {
                Some(gate) if readiness == Readiness::Ready => {
                    let state = self.source.borrow();
                    NodeCidrGate::report(&gate.check(
                        &state.node_name,
                        state.snapshot.node.as_ref(),
                        now,
                    ))
                }
                _ => true,
            };
            let mut deadline = None;
            match self
                .scheduler
                .decide(now, readiness == Readiness::Ready && cidrs_known)
            {
                Decision::Sync(kind) => {
                    self.scheduler.started(now);
                    let (snapshot, triggers) = {
                        let state = self.source.borrow_and_update();
                        (state.snapshot.clone(), state.triggers.clone())
                    };
                    let result = self.sync_all(&snapshot, kind).await;
                    let ok = result.is_ok();
                    match result {
                        Ok(outcomes) => {
                            synced_once = true;
                            self.observe_programming(&triggers);
                            let merged = merge_health(&outcomes);
                            let errors = self.servers.sync(&merged).await;
                            for (svc, err) in &errors {
                                tracing::error!(service = %svc, %err, "FailedToStartServiceHealthcheck; retried on the next sync");
                            }
                            if let Some(events) = self.events.as_mut() {
                                let ports =
                                    merged.iter().map(|(k, h)| (k.clone(), h.port)).collect();
                                events.health_checks(&errors, &ports, &snapshot);
                                events.sync_finished(0, "", Instant::now());
                            }
                            self.metrics
                                .health_check_servers
                                .set(self.servers.ports().len() as i64);
                        }
                        Err(err) => {
                            let failures = self.scheduler.failures() + 1;
                            tracing::error!(%err, failures, "sync failed; retrying with a full sync");
                            if let Some(events) = self.events.as_mut() {
                                events.sync_finished(failures, &err.to_string(), Instant::now());
                            }
                            // The sync is still owed: `/healthz` fails once it has been owed
                            // for twice the sync period, whatever asked for it.
                            self.queue_all(&families, now);
                        }
                    }
                    self.scheduler.finished(Instant::now(), kind, ok);
                    continue;
                }
                Decision::WaitUntil(at) => deadline = Some(at),
                Decision::Idle => {}
            }
            let mut wake = canary_at;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            if node_missing {
                wake = wake.min(alarm_at);
            }
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
                () = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= canary_at {
                canary_at = Instant::now() + sync_period;
                if synced_once {
                    for fam in &self.families {
                        match fam.ipt.canaries_present().await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(
                                    family = fam.cfg.family.label(),
                                    "canary chain gone: iptables was flushed by someone else; full sync"
                                );
                                self.scheduler.force_full();
                                self.queue_all(&families, Instant::now());
                            }
                            Err(err) => tracing::warn!(%err, "cannot check canary chains"),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_phases_read_as_milliseconds_in_order() {
        let phases = SyncPhases {
            compile: Duration::from_micros(80_150),
            probe: Duration::ZERO,
            plan: Duration::from_millis(35),
            restore: Duration::from_micros(4_030_249),
            after: Duration::from_micros(86_700),
        };
        assert_eq!(
            phases.to_string(),
            "compile 80.2 ms, probe 0.0 ms, plan 35.0 ms, restore 4030.2 ms, after 86.7 ms"
        );
    }

    fn timing() -> Timing {
        Timing::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_before_ready_then_full_then_partial() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        assert_eq!(
            s.decide(t0, false),
            Decision::Idle,
            "no writes before the initial lists"
        );
        assert_eq!(s.decide(t0, true), Decision::Sync(SyncKind::Full));
        s.started(t0);
        s.finished(t0, SyncKind::Full, true);
        assert_eq!(
            s.decide(t0, true),
            Decision::WaitUntil(t0 + FULL_SYNC_PERIOD),
            "idle until the hourly full sync"
        );
        s.mark_dirty();
        s.mark_dirty();
        assert_eq!(
            s.decide(t0, true),
            Decision::Sync(SyncKind::Partial),
            "burst of 2"
        );
        s.started(t0);
        s.finished(t0, SyncKind::Partial, true);
        assert_eq!(
            s.decide(t0, true),
            Decision::WaitUntil(t0 + FULL_SYNC_PERIOD),
            "coalesced: one sync for two changes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn min_sync_period_limits_the_rate() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        let mut syncs = Vec::new();
        // A change every 100 ms for 5 s.
        let mut now = t0;
        while now < t0 + Duration::from_secs(5) {
            s.mark_dirty();
            if let Decision::Sync(kind) = s.decide(now, true) {
                s.started(now);
                s.finished(now, kind, true);
                syncs.push(now - t0);
            }
            tokio::time::advance(Duration::from_millis(100)).await;
            now = Instant::now();
        }
        // Two in quick succession (burst of 2), then one per second however many changes come.
        let secs: Vec<u128> = syncs.iter().map(|d| d.as_millis()).collect();
        assert_eq!(secs, vec![0, 100, 1000, 2000, 3000, 4000]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_retry_full_with_backoff() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        s.started(t0);
        s.finished(t0, SyncKind::Full, true);
        s.mark_dirty();
        s.started(t0);
        s.finished(t0, SyncKind::Partial, false);
        assert_eq!(
            s.decide(t0, true),
            Decision::WaitUntil(t0 + Duration::from_secs(1))
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            s.decide(t1, true),
            Decision::Sync(SyncKind::Full),
            "a failed partial is retried as full"
        );
        s.started(t1);
        s.finished(t1, SyncKind::Full, false);
        assert_eq!(
            s.decide(t1, true),
            Decision::WaitUntil(t1 + Duration::from_secs(2))
        );
        for _ in 0..10 {
            s.finished(t1, SyncKind::Full, false);
        }
        assert_eq!(
            s.backoff(),
            Duration::from_secs(30),
            "capped at the sync period"
        );
        let t2 = t1 + Duration::from_secs(30);
        s.started(t2);
        s.finished(t2, SyncKind::Full, true);
        assert_eq!(s.failures(), 0);
        assert_eq!(
            s.decide(t2, true),
            Decision::WaitUntil(t2 + FULL_SYNC_PERIOD)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn canary_loss_and_the_hour_force_full_syncs() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        s.started(t0);
        s.finished(t0, SyncKind::Full, true);
        let t1 = t0 + Duration::from_secs(10);
        s.force_full();
        assert_eq!(s.decide(t1, true), Decision::Sync(SyncKind::Full));
        s.started(t1);
        s.finished(t1, SyncKind::Full, true);
        let t2 = t1 + FULL_SYNC_PERIOD;
        assert_eq!(
            s.decide(t2, true),
            Decision::Sync(SyncKind::Full),
            "hourly full sync"
        );
        // Not ready (node lost): nothing happens even when due.
        assert_eq!(s.decide(t2, false), Decision::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn partial_change_waits_for_rate_budget() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        for _ in 0..2 {
            s.started(t0);
            s.finished(t0, SyncKind::Full, true);
        }
        s.mark_dirty();
        let later = t0 + Duration::from_millis(300);
        assert_eq!(
            s.decide(later, true),
            Decision::WaitUntil(t0 + Duration::from_secs(1))
        );
        assert_eq!(
            s.decide(t0 + Duration::from_secs(1), true),
            Decision::Sync(SyncKind::Partial)
        );
    }
}
