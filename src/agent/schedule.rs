//! The sync loop's clock: every deadline of the agent in one sans-IO state machine.
//!
//! [`Scheduler`] owns the sync deadline (changes coalesced, `--iptables-min-sync-period` as a
//! rate limit, the hourly full sync, the backoff after a failure), the canary poll, the alarm
//! while no Node has our name, and the readiness the operator was last told about. It is driven
//! by `tokio::time::Instant`s passed in, does no I/O and is tested with paused time. The loop
//! ([`super::sync`]) asks it what to do now ([`Scheduler::observe`], [`Scheduler::poll`]),
//! carries that out, and sleeps until [`Scheduler::poll_timeout`] or the next change, as
//! quinn-proto's `poll_timeout` does:
//!
//! - nothing is written until every watched kind has completed its first list (and, for the
//!   API-server source, until the Node named like us has been seen);
//! - changes coalesce: any number of changes between two syncs cause one sync;
//! - `--iptables-min-sync-period` limits the rate (start to start, burst 2, as upstream's
//!   BoundedFrequencyRunner);
//! - the rate also adapts to what a sync costs: after a partial sync that cost `c` of CPU
//!   (knat's and its `iptables-restore`'s; wall time when not measured) and ended with changes
//!   already waiting, the next sync starts no sooner than `c * 100 / --sync-cpu-percent` after
//!   that one's start (at most one sync period), so that sustained churn keeps syncing within
//!   that share of one CPU. A change after a quiet spell is synced at once; on iptables-legacy, where every
//!   restore swaps the whole table (about a CPU second at 10,000 Services), this is what keeps
//!   churn from costing more CPU than kube-proxy;
//! - full syncs at start, after a failure (with exponential backoff from the min period up to
//!   `--iptables-sync-period`), when the canary chains vanish, and every hour; partial syncs
//!   otherwise;
//! - the canary chains are checked every `--iptables-sync-period` once a sync has succeeded;
//! - while the own Node is missing, the error is repeated every `--iptables-sync-period`.

use std::time::Duration;

use tokio::time::Instant;

use super::index::Readiness;
use crate::rules::plan::SyncKind;

/// Upstream's `FullSyncPeriod`: a full sync at least this often.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// The timing parameters of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `--iptables-min-sync-period`.
    pub min_interval: Duration,
    /// `--iptables-sync-period`: canary poll interval, node-missing alarm interval and the
    /// maximum retry backoff.
    pub sync_period: Duration,
    /// Full sync at least this often.
    pub full_period: Duration,
    /// Syncs allowed back to back before `min_interval` applies.
    pub burst: u32,
    /// `--sync-cpu-percent` (1-100): under sustained churn, the share of one CPU that partial
    /// syncs may use; 100 turns the cost-based spacing off.
    pub cpu_percent: u32,
}

impl Timing {
    pub fn new(min_interval: Duration, sync_period: Duration) -> Self {
        Timing {
            min_interval,
            sync_period,
            full_period: FULL_SYNC_PERIOD,
            burst: 2,
            cpu_percent: DEFAULT_CPU_PERCENT,
        }
    }

    /// The same timing with another `--sync-cpu-percent` (clamped to 1-100).
    pub fn with_cpu_percent(self, percent: u32) -> Self {
        Timing {
            cpu_percent: percent.clamp(1, 100),
            ..self
        }
    }

    /// How long after its start the next sync may follow a partial sync that cost `cost`:
    /// `cost * 100 / cpu_percent`, at most one sync period.
    pub fn spacing_after(&self, cost: Duration) -> Duration {
        let percent = self.cpu_percent.clamp(1, 100);
        (cost * 100 / percent).min(self.sync_period)
    }
}

/// `--sync-cpu-percent`'s default: under churn, partial syncs use at most half of one CPU.
/// Measured in the legacy cluster benchmark at 10,000 Services (docs/performance.md): 33 kept
/// knat's churn CPU at 0.61x kube-proxy's but its p50 latency 1.12x kube-proxy's.
pub const DEFAULT_CPU_PERCENT: u32 = 50;

/// When the next sync is due (the sync deadline alone, see [`Scheduler::decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Sync(SyncKind),
    /// Nothing to do before this instant (unless something changes).
    WaitUntil(Instant),
    /// Nothing to do until something changes.
    Idle,
}

/// What the loop must carry out now (from [`Scheduler::poll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Check that the canary chains are still in the kernel; report a loss with
    /// [`Scheduler::force_full`].
    CheckCanaries,
    /// Sync every family; report the end with [`Scheduler::finished`].
    Sync(SyncKind),
}

/// What the operator must be told after [`Scheduler::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notices {
    /// The readiness differs from the one last reported.
    pub readiness: Option<Readiness>,
    /// The own Node is missing and the alarm is due (at once, then every sync period).
    pub node_missing: bool,
}

/// The pure scheduler: the sync loop's deadlines and the state they follow from.
#[derive(Debug, Clone)]
pub struct Scheduler {
    timing: Timing,
    dirty: bool,
    need_full: bool,
    /// GCRA "theoretical arrival time" of the rate limiter.
    tat: Option<Instant>,
    /// When the sync in progress (or the last one) started.
    last_start: Option<Instant>,
    /// No sync before this: the last partial sync's start plus its cost-based spacing.
    cost_gate: Option<Instant>,
    /// The CPU the sync in progress used, when the loop measured it.
    measured_cost: Option<Duration>,
    last_full: Option<Instant>,
    retry_at: Option<Instant>,
    failures: u32,
    /// The next canary check (armed by [`Scheduler::start`]).
    canary_at: Option<Instant>,
    /// The next node-missing alarm, while the Node is missing.
    alarm_at: Option<Instant>,
    node_missing: bool,
    /// Whether the last [`Scheduler::poll`] was allowed to write.
    writable: bool,
    last_readiness: Option<Readiness>,
}

impl Scheduler {
    /// A scheduler that wants a full sync as soon as the source is ready.
    pub fn new(timing: Timing) -> Self {
        Scheduler {
            timing,
            dirty: true,
            need_full: true,
            tat: None,
            last_start: None,
            cost_gate: None,
            measured_cost: None,
            last_full: None,
            retry_at: None,
            failures: 0,
            canary_at: None,
            alarm_at: None,
            node_missing: false,
            writable: false,
            last_readiness: None,
        }
    }

    /// The timing this scheduler follows.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The loop starts at `now`: the first canary check is one sync period away, and a missing
    /// Node is reported at once.
    pub fn start(&mut self, now: Instant) {
        self.canary_at = Some(now + self.timing.sync_period);
        self.alarm_at = Some(now);
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

    /// Whether a sync has succeeded since the start (the first one is always full).
    pub fn synced_once(&self) -> bool {
        self.last_full.is_some()
    }

    /// Takes in the source's readiness and whether the own Node is missing at `now`; says what
    /// the operator must be told.
    pub fn observe(&mut self, now: Instant, readiness: Readiness, node_missing: bool) -> Notices {
        let mut notices = Notices::default();
        if self.last_readiness != Some(readiness) {
            self.last_readiness = Some(readiness);
            notices.readiness = Some(readiness);
        }
        self.node_missing = node_missing;
        let alarm_due = self.alarm_at.is_none_or(|at| now >= at);
        if node_missing && alarm_due {
            self.alarm_at = Some(now + self.timing.sync_period);
            notices.node_missing = true;
        }
        notices
    }

    /// What to do at `now`; `writable` says whether the source may be written from. A
    /// [`Action::Sync`] counts as started at `now`.
    pub fn poll(&mut self, now: Instant, writable: bool) -> Option<Action> {
        self.writable = writable;
        if let Some(at) = self.canary_at
            && now >= at
        {
            self.canary_at = Some(now + self.timing.sync_period);
            if self.synced_once() {
                return Some(Action::CheckCanaries);
            }
        }
        match self.decide(now, writable) {
            Decision::Sync(kind) => {
                self.started(now);
                Some(Action::Sync(kind))
            }
            Decision::WaitUntil(_) | Decision::Idle => None,
        }
    }

    /// The earliest deadline after the last [`Scheduler::poll`] at `now`: the loop sleeps until
    /// then unless the source changes first. None: nothing is due until something changes.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let sync_at = match self.decide(now, self.writable) {
            Decision::Sync(_) => Some(now),
            Decision::WaitUntil(at) => Some(at),
            Decision::Idle => None,
        };
        let alarm_at = self.alarm_at.filter(|_| self.node_missing);
        [sync_at, self.canary_at, alarm_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn rate_allowed_at(&self) -> Option<Instant> {
        let slack = self.timing.min_interval * self.timing.burst.saturating_sub(1);
        self.tat.map(|tat| tat.checked_sub(slack).unwrap_or(tat))
    }

    /// The sync deadline at `now`; `ready` says whether the source may be written from.
    pub fn decide(&self, now: Instant, ready: bool) -> Decision {
        if !ready {
            return Decision::Idle;
        }
        let periodic_at = self.last_full.map(|t| t + self.timing.full_period);
        let periodic_due = periodic_at.is_some_and(|t| now >= t);
        if !(self.dirty || self.need_full || periodic_due) {
            return periodic_at.map_or(Decision::Idle, Decision::WaitUntil);
        }
        let earliest = [self.rate_allowed_at(), self.retry_at, self.cost_gate]
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
        self.last_start = Some(now);
        self.measured_cost = None;
        self.dirty = false;
    }

    /// The sync in progress used `cpu` (knat's and its children's); without this its wall time
    /// counts as its cost.
    pub fn cost_measured(&mut self, cpu: Duration) {
        self.measured_cost = Some(cpu);
    }

    /// The earliest start the last partial sync's cost allows (None: no such limit).
    pub fn cost_gate(&self) -> Option<Instant> {
        self.cost_gate
    }

    /// The sync that started last finished at `now`; changes that arrived while it ran must
    /// have been reported with [`Scheduler::mark_dirty`] before.
    pub fn finished(&mut self, now: Instant, kind: SyncKind, ok: bool) {
        // Only a backlog is spaced: a partial sync that ended with changes already waiting
        // (churn). A change after a quiet spell, and anything after a full sync (which
        // rewrites everything), is synced as soon as the rate limit allows.
        self.cost_gate = match (kind, ok, self.last_start) {
            (SyncKind::Partial, true, Some(start)) if self.dirty => {
                let cost = self
                    .measured_cost
                    .unwrap_or_else(|| now.saturating_duration_since(start));
                Some(start + self.timing.spacing_after(cost))
            }
            _ => None,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Runs a change every 100 ms for `secs` seconds, each sync taking `cost`; returns the
    /// start times of the syncs, in ms from the first.
    async fn churn_starts(timing: Timing, cost: Duration, secs: u64) -> Vec<u128> {
        let mut s = Scheduler::new(timing);
        let t0 = Instant::now();
        s.started(t0);
        s.finished(t0, SyncKind::Full, true);
        let mut starts = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(secs) {
            s.mark_dirty();
            if let Decision::Sync(kind) = s.decide(now, true) {
                s.started(now);
                starts.push((now - t0).as_millis());
                tokio::time::advance(cost).await;
                // Changes kept coming while it ran.
                s.mark_dirty();
                s.finished(Instant::now(), kind, true);
            }
            tokio::time::advance(Duration::from_millis(100)).await;
            now = Instant::now();
        }
        starts
    }

    #[tokio::test(start_paused = true)]
    async fn costly_syncs_under_churn_are_spaced_by_their_cost() {
        // iptables-legacy at 10,000 Services: every partial restore takes about 1.1 s.
        let cost = Duration::from_millis(1100);
        let starts = churn_starts(timing(), cost, 20).await;
        // The first change is synced at once (burst), then one sync per 2.2 s (1.1 s x 100/50,
        // rounded up to the 100 ms steps of the churn) instead of one per 1.2 s.
        assert_eq!(starts[0], 0);
        let gaps: Vec<u128> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| (2200..=2300).contains(g)),
            "sync starts {starts:?}"
        );
        let busy = cost.as_millis() * starts.len() as u128;
        assert!(
            busy * 100 <= 20_000 * 55,
            "busy {busy} ms of 20,000 ms: at most about half"
        );
        // With the spacing off, the same churn syncs back to back (every 1.2 s: 1.1 s of sync,
        // then the next 100 ms step), half again as often as spaced.
        let unspaced = churn_starts(timing().with_cpu_percent(100), cost, 20).await;
        assert!(
            2 * unspaced.len() >= 3 * starts.len(),
            "spaced {} syncs, unspaced {}",
            starts.len(),
            unspaced.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cheap_syncs_follow_the_min_sync_period_alone() {
        // 10 ms syncs: 2 x 10 ms is far below the 1 s rate limit, which alone applies.
        let starts = churn_starts(timing(), Duration::from_millis(10), 5).await;
        let secs: Vec<u128> = starts.iter().map(|ms| ms / 100 * 100).collect();
        assert_eq!(secs, vec![0, 1000, 2000, 3000, 4000]);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_backlog_waits_for_the_spacing() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        s.started(t0);
        s.finished(t0 + Duration::from_secs(5), SyncKind::Full, true);
        let t1 = t0 + Duration::from_secs(5);
        s.mark_dirty();
        assert_eq!(
            s.decide(t1, true),
            Decision::Sync(SyncKind::Partial),
            "a full sync's cost does not hold back the next change"
        );
        s.started(t1);
        let t2 = t1 + Duration::from_secs(1);
        s.finished(t2, SyncKind::Partial, true);
        assert_eq!(
            s.cost_gate(),
            None,
            "no change arrived while it ran: the next one is synced at once"
        );
        s.mark_dirty();
        let t3 = t2 + Duration::from_millis(500);
        assert_eq!(s.decide(t3, true), Decision::Sync(SyncKind::Partial));
        s.started(t3);
        let t4 = t3 + Duration::from_secs(1);
        s.mark_dirty();
        s.finished(t4, SyncKind::Partial, true);
        let gate = t3 + Duration::from_secs(2);
        assert_eq!(s.cost_gate(), Some(gate), "a backlog: spaced by 2 x 1 s");
        assert_eq!(s.decide(t4, true), Decision::WaitUntil(gate));
        assert_eq!(s.decide(gate, true), Decision::Sync(SyncKind::Partial));
        // A sync longer than half the sync period is spaced by the sync period at most.
        s.started(gate);
        let end = gate + Duration::from_secs(20);
        s.mark_dirty();
        s.finished(end, SyncKind::Partial, true);
        assert_eq!(s.cost_gate(), Some(gate + Duration::from_secs(30)));
        // A failure drops the gate: the retry follows its own backoff.
        s.mark_dirty();
        s.started(end);
        s.finished(end, SyncKind::Partial, false);
        assert_eq!(s.cost_gate(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_measured_cpu_is_the_cost_not_the_wall_time() {
        // A restore that waited 2 s for a busy machine (or a lock) but used 0.5 s of CPU.
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        s.started(t0);
        s.finished(t0, SyncKind::Full, true);
        s.mark_dirty();
        s.started(t0);
        s.cost_measured(Duration::from_millis(500));
        s.mark_dirty();
        s.finished(t0 + Duration::from_secs(2), SyncKind::Partial, true);
        assert_eq!(
            s.cost_gate(),
            Some(t0 + Duration::from_secs(1)),
            "2 x 0.5 s of CPU, not 2 x 2 s"
        );
        // The next sync measures afresh: without a measurement its wall time counts.
        s.started(t0 + Duration::from_secs(3));
        s.mark_dirty();
        s.finished(t0 + Duration::from_secs(4), SyncKind::Partial, true);
        assert_eq!(s.cost_gate(), Some(t0 + Duration::from_secs(5)));
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

    #[tokio::test(start_paused = true)]
    async fn canaries_are_checked_every_sync_period_once_synced() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        s.start(t0);
        let period = Duration::from_secs(30);
        assert_eq!(
            s.poll(t0, false),
            None,
            "not writable: nothing to do before the first sync"
        );
        assert_eq!(s.poll_timeout(t0), Some(t0 + period), "the canary deadline");
        let t1 = t0 + period;
        assert_eq!(
            s.poll(t1, false),
            None,
            "no canary check before any sync succeeded"
        );
        assert_eq!(s.poll_timeout(t1), Some(t1 + period), "re-armed");
        assert_eq!(s.poll(t1, true), Some(Action::Sync(SyncKind::Full)));
        s.finished(t1, SyncKind::Full, true);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(s.poll(t2, true), None);
        assert_eq!(s.poll_timeout(t2), Some(t1 + period));
        let t3 = t1 + period;
        assert_eq!(s.poll(t3, true), Some(Action::CheckCanaries));
        assert_eq!(s.poll(t3, true), None, "one check per period");
        assert_eq!(s.poll_timeout(t3), Some(t3 + period));
        s.force_full();
        assert_eq!(
            s.poll(t3, true),
            Some(Action::Sync(SyncKind::Full)),
            "a lost canary is a full sync"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn canary_check_comes_before_a_due_sync() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        s.start(t0);
        assert_eq!(s.poll(t0, true), Some(Action::Sync(SyncKind::Full)));
        s.finished(t0, SyncKind::Full, true);
        s.mark_dirty();
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            s.poll(t1, true),
            Some(Action::CheckCanaries),
            "a lost canary turns the owed sync into a full one"
        );
        assert_eq!(s.poll(t1, true), Some(Action::Sync(SyncKind::Partial)));
    }

    #[tokio::test(start_paused = true)]
    async fn node_missing_alarm_at_once_then_every_sync_period() {
        let mut s = Scheduler::new(timing());
        let t0 = Instant::now();
        s.start(t0);
        let period = Duration::from_secs(30);
        let notices = s.observe(t0, Readiness::NodeUnverified, true);
        assert_eq!(
            notices,
            Notices {
                readiness: Some(Readiness::NodeUnverified),
                node_missing: true
            }
        );
        assert_eq!(s.poll(t0, false), None);
        assert_eq!(s.poll_timeout(t0), Some(t0 + period));
        let t1 = t0 + Duration::from_secs(29);
        assert_eq!(
            s.observe(t1, Readiness::NodeUnverified, true),
            Notices::default(),
            "readiness reported once, alarm not due"
        );
        let t2 = t0 + period;
        assert!(s.observe(t2, Readiness::NodeUnverified, true).node_missing);
        // Found: no alarm deadline; lost again after the deadline passed: at once.
        let t3 = t2 + Duration::from_secs(5);
        let found = s.observe(t3, Readiness::Ready, false);
        assert_eq!(found.readiness, Some(Readiness::Ready));
        assert!(!found.node_missing);
        assert_eq!(s.poll(t3, true), Some(Action::Sync(SyncKind::Full)));
        s.finished(t3, SyncKind::Full, true);
        assert_eq!(
            s.poll_timeout(t3),
            Some(t3 + period),
            "the canary deadline only; the alarm is disarmed while the Node is found"
        );
        let t4 = t2 + period + Duration::from_secs(1);
        assert!(s.observe(t4, Readiness::NodeUnverified, true).node_missing);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_timeout_is_the_earliest_deadline() {
        let mut s = Scheduler::new(Timing::new(Duration::from_secs(1), Duration::from_secs(30)));
        let t0 = Instant::now();
        s.start(t0);
        s.observe(t0, Readiness::Ready, false);
        assert_eq!(s.poll(t0, true), Some(Action::Sync(SyncKind::Full)));
        s.finished(t0, SyncKind::Full, false);
        assert_eq!(s.poll(t0, true), None, "backing off");
        assert_eq!(
            s.poll_timeout(t0),
            Some(t0 + Duration::from_secs(1)),
            "the retry is the earliest deadline"
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.poll(t1, true), Some(Action::Sync(SyncKind::Full)));
        s.finished(t1, SyncKind::Full, true);
        assert_eq!(s.poll(t1, true), None);
        assert_eq!(
            s.poll_timeout(t1),
            Some(t0 + Duration::from_secs(30)),
            "the canary check comes before the hourly full sync"
        );
        s.mark_dirty();
        assert_eq!(
            s.poll(t1, true),
            Some(Action::Sync(SyncKind::Partial)),
            "burst of 2 allows a second sync at once"
        );
        s.finished(t1, SyncKind::Partial, true);
        s.mark_dirty();
        assert_eq!(s.poll(t1, true), None, "rate limited");
        assert_eq!(s.poll_timeout(t1), Some(t1 + Duration::from_secs(1)));
        assert_eq!(s.poll(t1, false), None);
        assert_eq!(
            s.poll_timeout(t1),
            Some(t0 + Duration::from_secs(30)),
            "not writable: no sync deadline, only the canary's"
        );
    }
}
