//! One sync of one IP family, as a sequence of small steps: compile, probe the kernel (full
//! syncs: the existing chains), plan, one atomic `iptables-restore` whose stdin is fed from the
//! compiled text chunk by chunk (no payload string), release the compiled text (digests are
//! kept), then the hook jumps and the UDP conntrack cleanup. `applied = next` only after the
//! restore succeeded. Each step decides its own fallback (a failed listing keeps stale chains,
//! a failed plan forgets the cache, a failed conntrack cleanup is retried on the next change);
//! [`FamilySync::sync`] only calls them in order. When to sync is [`super::schedule`]'s job.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::conntrack::Conntrack;
use crate::backend::nfacct::Nfacct;
use crate::backend::{BackendError, ChainListing, Iptables, canary_payload};
use crate::config::ProxyConfig;
use crate::model::{IpFamily, ServiceName, Snapshot};
use crate::rules::compile::{IncrementalCompiler, UdpServicePort};
use crate::rules::payload::Payload;
use crate::rules::plan::SyncKind;
use crate::rules::rule::Hook;
use crate::rules::{
    AppliedState, ChainName, Compiled, PlanError, PlanStats, PlannedRestore, ServiceHealth,
    TableName, plan_restore,
};

/// Why one family's sync failed.
#[derive(Debug, thiserror::Error)]
pub enum FamilyError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Planning met released rule text (a bug); nothing was written.
    #[error(transparent)]
    Plan(#[from] PlanError),
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
    /// Comparing with the applied state: which chains to write and delete.
    pub plan: Duration,
    /// The `iptables-restore` transaction, its input written from the compiled text.
    pub restore: Duration,
    /// Dropping the compiled text once it is in the kernel: digests are kept.
    pub release: Duration,
    /// Hook checks and conntrack cleanup.
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
            "compile {:.1} ms, probe {:.1} ms, plan {:.1} ms, restore {:.1} ms, release {:.1} ms, after {:.1} ms",
            Self::millis(self.compile),
            Self::millis(self.probe),
            Self::millis(self.plan),
            Self::millis(self.restore),
            Self::millis(self.release),
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
        let full = kind == SyncKind::Full;
        let mut clock = PhaseClock::start();
        let mut compiled = self.compile(snapshot, full);
        clock.lap(|p| &mut p.compile);
        let probe = self.probe(full).await?;
        let hooks = compiled.rules.hooks.clone();
        let (in_restore, to_check) = probe.split_hooks(&hooks, full);
        clock.lap(|p| &mut p.probe);
        let planned = self.plan(&compiled, kind, &probe.stale, &in_restore)?;
        clock.lap(|p| &mut p.plan);
        // The listing (a set of 114,000 names at 10,000 services) is not needed any more.
        drop(probe);
        // The restore reads its input from the compiled text itself, a pipe's worth at a time:
        // at 10,000 services the 33 MB payload is never built next to the rule text. A failed
        // restore leaves the applied record unchanged and forgets the cache, so the retry,
        // which is a full sync, compiles every Service afresh.
        let restored = self.write(&planned.payload, full).await;
        let PlannedRestore {
            payload,
            mut next,
            stats,
        } = planned;
        drop(payload);
        clock.lap(|p| &mut p.restore);
        if let Err(err) = restored {
            self.compiler.forget();
            return Err(err.into());
        }
        // In the kernel now: keep only digests of the Services' chains (the compiled result
        // must be gone first, or the cache's fragments are still shared).
        let health = std::mem::take(&mut compiled.health);
        let udp = std::mem::take(&mut compiled.udp);
        let (no_local_internal, no_local_external) = (
            compiled.no_local_endpoints_internal,
            compiled.no_local_endpoints_external,
        );
        drop(compiled);
        next.release_text(&mut self.compiler);
        clock.lap(|p| &mut p.release);
        self.applied = next;
        let hooks_inserted = in_restore.len() + self.ipt.ensure_hooks(&to_check).await?;
        let conntrack_deleted = self.clean_conntrack(&udp).await;
        clock.lap(|p| &mut p.after);
        Ok(FamilyOutcome {
            family: self.cfg.family,
            stats,
            health,
            no_local_internal,
            no_local_external,
            hooks_inserted,
            conntrack_deleted,
            phases: clock.phases,
        })
    }

    /// Compiles the changed Services (full syncs: all of them, and the nfacct counters first).
    fn compile(&mut self, snapshot: &Snapshot, full: bool) -> Compiled {
        if full {
            // Full syncs write every chain; the cached ones keep digests only.
            self.compiler.forget();
            self.ensure_nfacct();
        }
        // `--nodeport-addresses primary` follows the Node's IP of this family.
        let resolved = self.cfg.resolve_for_node(snapshot.node.as_ref());
        let cfg = resolved.as_ref().unwrap_or(&self.cfg);
        self.compiler.compile(snapshot, cfg)
    }

    /// Full syncs list the kernel's chains; a failed listing keeps stale chains until the next
    /// full sync. The canary chains are written by the restore itself (see `canary_payload`).
    /// Only a listing that shutdown stopped ends the sync.
    async fn probe(&self, full: bool) -> Result<Probe, BackendError> {
        if !full {
            return Ok(Probe::default());
        }
        match self.ipt.list_chains().await {
            Ok(listing) => Ok(Probe {
                stale: listing.service_chains(),
                listing: Some(listing),
            }),
            Err(err @ BackendError::Stopped(_)) => Err(err),
            Err(err) => {
                tracing::warn!(family = ?self.cfg.family, %err, "cannot list chains; stale chains are kept until the next full sync");
                Ok(Probe::default())
            }
        }
    }

    /// Plans the restore; on error nothing was written and the next sync is full and
    /// recompiles everything.
    fn plan<'c>(
        &mut self,
        compiled: &'c Compiled,
        kind: SyncKind,
        stale: &[(TableName, ChainName)],
        in_restore: &[&Hook],
    ) -> Result<PlannedRestore<'c>, FamilyError> {
        plan_restore(
            &self.applied,
            &compiled.rules,
            kind,
            stale,
            in_restore,
            self.ipt.mode.chain_order(),
        )
        .map_err(|err| {
            self.compiler.forget();
            err.into()
        })
    }

    /// The one `iptables-restore` (none for an empty partial payload); full syncs add the
    /// canary chains, written after the payload in the same transaction.
    async fn write(&self, payload: &Payload<'_>, full: bool) -> Result<(), BackendError> {
        if full {
            let canaries = canary_payload();
            return self.ipt.restore_planned(payload, &[&canaries]).await;
        }
        if payload.is_empty() {
            return Ok(());
        }
        self.ipt.restore_planned(payload, &[]).await
    }

    /// Deletes UDP conntrack entries when the UDP endpoints changed; a failure is retried on
    /// the next change. Returns how many entries were deleted, if the cleanup ran.
    async fn clean_conntrack(&mut self, udp: &[UdpServicePort]) -> Option<usize> {
        if self.last_udp.as_deref() == Some(udp) {
            return None;
        }
        match self.conntrack.reconcile(udp).await {
            Ok(n) => {
                self.last_udp = Some(udp.to_vec());
                Some(n)
            }
            Err(err) => {
                tracing::warn!(family = ?self.cfg.family, %err, "UDP conntrack cleanup failed; retried on the next change");
                None
            }
        }
    }
}

/// What a full sync learned about the kernel's chains before planning.
#[derive(Default)]
struct Probe {
    /// The chain listing (None: partial sync, or the listing failed).
    listing: Option<ChainListing>,
    /// Service chains in the kernel, deleted when the rules no longer have them.
    stale: Vec<(TableName, ChainName)>,
}

impl Probe {
    /// Hooks whose target chain is missing go into the restore; the others are checked
    /// afterwards (full syncs without a listing: all of them; partial syncs: none).
    fn split_hooks<'h>(&self, hooks: &'h [Hook], full: bool) -> (Vec<&'h Hook>, Vec<&'h Hook>) {
        match &self.listing {
            Some(listing) if full => listing.split_hooks(hooks),
            _ if full => (Vec::new(), hooks.iter().collect()),
            _ => (Vec::new(), Vec::new()),
        }
    }
}

/// Times the phases of one sync, each lap from the end of the previous one.
struct PhaseClock {
    mark: std::time::Instant,
    phases: SyncPhases,
}

impl PhaseClock {
    fn start() -> Self {
        PhaseClock {
            mark: std::time::Instant::now(),
            phases: SyncPhases::default(),
        }
    }

    /// Ends the phase `which` picks.
    fn lap(&mut self, which: impl FnOnce(&mut SyncPhases) -> &mut Duration) {
        let now = std::time::Instant::now();
        *which(&mut self.phases) = now - self.mark;
        self.mark = now;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_phases_read_as_milliseconds_in_order() {
        let phases = SyncPhases {
            compile: Duration::from_micros(80_150),
            probe: Duration::ZERO,
            plan: Duration::from_millis(35),
            release: Duration::from_micros(61_040),
            restore: Duration::from_micros(4_030_249),
            after: Duration::from_micros(86_700),
        };
        assert_eq!(
            phases.to_string(),
            "compile 80.2 ms, probe 0.0 ms, plan 35.0 ms, restore 4030.2 ms, release 61.0 ms, after 86.7 ms"
        );
    }
}
