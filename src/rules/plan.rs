//! Planning `iptables-restore --noflush` payloads: full, or only what changed.
//!
//! The planner keeps a record of what was last applied: per named chain its rule count and
//! digest, and per Service the group of chains shared with the compiler (so an unchanged
//! Service is recognised by one pointer comparison; a changed one is compared chain by chain
//! by digest, and once the agent has released the applied text only names, counts and
//! digests remain). A partial payload declares (and so flushes and rewrites) exactly the
//! chains whose text changed or that are new, and deletes (`:X` then `-X X`) the chains that
//! are no longer wanted. Chains that did not change are not mentioned, so `--noflush` leaves
//! them alone. Unlike upstream, KUBE-SERVICES, KUBE-NODEPORTS and KUBE-EXTERNAL-SERVICES are
//! not rewritten unless their content changed; since a restore replaces a declared chain
//! entirely and keeps undeclared ones, the kernel ends up with exactly the desired chains
//! either way (property-tested against the restore model in `dump::restore`).
//!
//! [`plan_restore`] gives the payload as sections that refer to the rule set's text
//! ([`super::payload`]): the agent streams them into the restore's stdin, so at 10,000
//! Services the 33 MB payload never sits next to the compiled text. [`plan_with_hooks`] is
//! the same plan written out as one string.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::chain::ChainName;
use super::compile::IncrementalCompiler;
use super::layered::Layered;
use super::payload::{Payload, TablePayload};
use super::rule::{ChainGroup, ChainText, Hook, Lineage, RuleSet, RuleText, Table, TableName};
use super::service_list::{Keyed, ServiceList};

/// One named chain as last applied: its rule count and the digest of its text (named chains
/// are rebuilt on every sync and compared by digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedChain {
    pub count: usize,
    pub digest: u128,
}

impl AppliedChain {
    fn of(rules: &RuleText) -> Self {
        AppliedChain {
            count: rules.len(),
            digest: rules.digest(),
        }
    }
}

/// What knat believes is in the kernel: named chains per table and chain (a [`Layered`] map),
/// and the Services' chain groups per table in Service order (a [`ServiceList`], shared with
/// the rule set it was planned from). A partial sync copies the record in O(1) and changes the
/// few entries that changed.
#[derive(Debug, Clone, Default)]
pub struct AppliedState {
    chains: Layered<(TableName, ChainName), AppliedChain>,
    /// Per table ([`index`]): the groups in the kernel.
    groups: [ServiceList<Arc<ChainGroup>>; 2],
    /// The rule set this record was planned from ([`RuleSet::id`]).
    source: Option<u64>,
}

/// Equal records of the kernel (which rule set they came from does not matter).
impl PartialEq for AppliedState {
    fn eq(&self, other: &Self) -> bool {
        self.chains == other.chains && self.groups == other.groups
    }
}

impl Eq for AppliedState {}

/// Full: rewrite every chain (and delete stale ones). Partial: only what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    Full,
    Partial,
}

/// Counts describing a payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub chains_written: usize,
    pub rules_written: usize,
    pub chains_deleted: usize,
    pub bytes: usize,
    /// Rules knat owns after this sync, per table (filter, nat).
    pub filter_rules_total: usize,
    pub nat_rules_total: usize,
}

/// The planner was asked to write a chain whose text was released (only its digest is kept).
/// Full syncs recompile every chain first, so this is a bug; the caller must not restore and
/// should recompile everything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the text of chain {chain} was released and cannot be written; a full recompile is needed")]
pub struct PlanError {
    pub chain: ChainName,
}

/// A payload and the state the kernel is in once it has been applied successfully.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `iptables-restore --noflush` input; empty when nothing needs to change.
    pub payload: String,
    pub next: AppliedState,
    pub stats: PlanStats,
}

/// [`Plan`] with the payload not written yet: its sections refer to the rule set's text
/// ([`Payload`]), so the restore's stdin can be fed chunk by chunk and no copy of the whole
/// payload is ever resident. What the agent uses; [`Plan`] is its text form.
#[derive(Debug, Clone)]
pub struct PlannedRestore<'a> {
    /// `iptables-restore --noflush` input; empty when nothing needs to change.
    pub payload: Payload<'a>,
    pub next: AppliedState,
    /// `bytes` is the payload's length.
    pub stats: PlanStats,
}

impl PlannedRestore<'_> {
    /// The plan with its payload written out as one string.
    pub fn into_plan(self) -> Plan {
        Plan {
            payload: self.payload.to_text(),
            next: self.next,
            stats: self.stats,
        }
    }
}

/// Plans the restore that takes the kernel from `applied` to `desired`. `stale` lists chains
/// found in the kernel that knat owns but did not write (deleted on full syncs). No hooks,
/// chains in [`ChainOrder::Descending`]; the agent uses [`plan_with_hooks`].
pub fn plan(
    applied: &AppliedState,
    desired: &RuleSet,
    kind: SyncKind,
    stale: &[(TableName, ChainName)],
) -> Result<Plan, PlanError> {
    plan_with_hooks(applied, desired, kind, stale, &[], ChainOrder::Descending)
}

/// The order in which a payload declares and writes its chains; it only changes how fast
/// the iptables tools handle the result, never what the kernel ends up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainOrder {
    /// Descending name order, for iptables-legacy. iptables-legacy-restore keeps declared
    /// chains in a sorted list indexed every 40 chains and inserts a chain below the first
    /// index entry at the head in one comparison, while an ascending insert walks the
    /// unindexed tail; and libxtables keeps declared names in a 512-bucket hash whose lists
    /// put the latest first, so names declared late are found soonest: KUBE-MARK-MASQ and the
    /// SEP chains, the most frequent jump targets, come after the SVC chains. A full restore
    /// of 10,000 services: 4.5-4.9 s with each Service's chains together, 3.8-3.9 s ascending,
    /// 3.2-3.4 s descending (same payload otherwise, measured alone in a namespace).
    Descending,
    /// Scattered by a hash of the name, for iptables-nft. The kernel keeps chains in the
    /// order they were created, and iptables-nft's cache (iptables-save, -L, -S, every later
    /// command that lists chains) sorts them by insertion: over a table created in name
    /// order, either direction, `iptables-nft-save` of 10,000 services ran 92-96 s (one run
    /// died with SIGSEGV, another printed nothing), against 2.7-2.9 s created in a scattered
    /// order. The restore of the same payload is about 8 % slower scattered than sorted
    /// (12.9-13.3 s vs 11.9-12.2 s).
    Scattered,
}

impl ChainOrder {
    fn sort(self, chains: &mut [ChainText<'_>]) {
        match self {
            ChainOrder::Descending => chains.sort_unstable_by(|a, b| b.name().cmp(a.name())),
            ChainOrder::Scattered => {
                chains.sort_unstable_by_key(|c| (fnv1a(c.name().as_bytes()), c.name()))
            }
        }
    }
}

/// 64-bit FNV-1a: a fixed, cheap scattering of chain names (not a digest).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What one table's payload must declare and write, and delete.
#[derive(Default)]
struct TableWork<'a> {
    written: Vec<ChainText<'a>>,
    deletes: Vec<ChainName>,
}

const TABLES: [TableName; 2] = [TableName::Filter, TableName::Nat];

fn index(table: TableName) -> usize {
    match table {
        TableName::Filter => 0,
        TableName::Nat => 1,
    }
}

/// [`plan`], and the payload also inserts `hooks` (`-I CHAIN 1 ...`, in reverse, so that they
/// end up at the top of their builtin chains in the given order). Only for hooks known to be
/// missing: a restore cannot test whether a rule exists. Chains go in `order`.
///
/// A partial sync of a rule set whose parent ([`Lineage`]) is what `applied` records looks
/// only at what the compiler says changed; any other sync compares every chain.
pub fn plan_with_hooks(
    applied: &AppliedState,
    desired: &RuleSet,
    kind: SyncKind,
    stale: &[(TableName, ChainName)],
    hooks: &[&Hook],
    order: ChainOrder,
) -> Result<Plan, PlanError> {
    plan_restore(applied, desired, kind, stale, hooks, order).map(PlannedRestore::into_plan)
}

/// [`plan_with_hooks`] without writing the payload: the same record, counts and bytes, the
/// payload as sections that borrow `desired`'s text.
pub fn plan_restore<'a>(
    applied: &AppliedState,
    desired: &'a RuleSet,
    kind: SyncKind,
    stale: &[(TableName, ChainName)],
    hooks: &[&Hook],
    order: ChainOrder,
) -> Result<PlannedRestore<'a>, PlanError> {
    let full = kind == SyncKind::Full;
    let lineage = desired
        .lineage
        .as_ref()
        .filter(|l| !full && applied.source == Some(l.parent));
    let mut work: [TableWork<'_>; 2] = Default::default();
    let mut next = AppliedState {
        source: Some(desired.id),
        ..AppliedState::default()
    };
    match lineage {
        Some(lineage) => {
            if lineage.named_unchanged {
                next.chains = applied.chains.clone();
            } else {
                next.chains = named_chains(applied, desired, false, &mut work);
            }
            next.groups = applied.groups.clone();
            changed_groups(
                applied,
                lineage,
                &mut work,
                &mut next.groups[index(TableName::Nat)],
            )?;
        }
        None => {
            next.chains = named_chains(applied, desired, full, &mut work);
            next.groups = all_groups(applied, desired, full, &mut work)?;
            if full && !stale.is_empty() {
                stale_deletes(desired, stale, &mut work);
            }
        }
    }
    let mut stats = PlanStats {
        filter_rules_total: desired.filter.rule_count(),
        nat_rules_total: desired.nat.rule_count(),
        ..PlanStats::default()
    };
    let mut tables = Vec::with_capacity(TABLES.len());
    for (table_name, work) in TABLES.into_iter().zip(work) {
        let table_hooks: Vec<&Hook> = hooks
            .iter()
            .copied()
            .filter(|h| h.table == table_name)
            .collect();
        tables.extend(table_payload(
            table_name,
            work,
            &table_hooks,
            order,
            &mut stats,
        ));
    }
    let payload = Payload::new(tables);
    stats.bytes = payload.len();
    Ok(PlannedRestore {
        payload,
        next,
        stats,
    })
}

/// Named chains of both tables, compared one by one with the record (by count and digest);
/// recorded chains no longer wanted are deleted.
fn named_chains<'a>(
    applied: &AppliedState,
    desired: &'a RuleSet,
    full: bool,
    work: &mut [TableWork<'a>; 2],
) -> Layered<(TableName, ChainName), AppliedChain> {
    let mut next = HashMap::new();
    for table_name in TABLES {
        let table = desired.table(table_name);
        let work = &mut work[index(table_name)];
        for (name, chain_rules) in table.chains.iter() {
            let key = (table_name, name.clone());
            let now = AppliedChain::of(chain_rules);
            if full || applied.chains.get(&key) != Some(&now) {
                work.written.push(chain_rules.view());
            }
            next.insert(key, now);
        }
    }
    for ((table_name, name), _) in applied.chains.iter() {
        if !desired.table(*table_name).chains.contains_key(name) {
            work[index(*table_name)].deletes.push(name.clone());
        }
    }
    Layered::from_map(next)
}

/// Every Service group of both tables: an unchanged Service is one pointer comparison, a
/// changed one is compared chain by chain; recorded Services no longer present are deleted.
/// Record and rule set are both in Service order, so one merged walk pairs them.
fn all_groups<'a>(
    applied: &AppliedState,
    desired: &'a RuleSet,
    full: bool,
    work: &mut [TableWork<'a>; 2],
) -> Result<[ServiceList<Arc<ChainGroup>>; 2], PlanError> {
    for table_name in TABLES {
        let table = desired.table(table_name);
        let work = &mut work[index(table_name)];
        let mut before = applied.groups[index(table_name)].iter().peekable();
        let gone = |work: &mut TableWork<'a>, group: &Arc<ChainGroup>| {
            work.deletes
                .extend(group.chain_names().into_iter().map(ChainName::new));
        };
        for group in table.groups.iter() {
            while let Some(old) = before.next_if(|old| old.key() < group.key()) {
                gone(work, old);
            }
            let old = before.next_if(|old| old.key() == group.key());
            group_diff(old, group, full, work)?;
        }
        for old in before {
            gone(work, old);
        }
    }
    Ok([desired.filter.groups.clone(), desired.nat.groups.clone()])
}

/// Only the Services the lineage names (nat groups; filter has none).
fn changed_groups<'a>(
    applied: &AppliedState,
    lineage: &'a Lineage,
    work: &mut [TableWork<'a>; 2],
    next: &mut ServiceList<Arc<ChainGroup>>,
) -> Result<(), PlanError> {
    let applied = &applied.groups[index(TableName::Nat)];
    let work = &mut work[index(TableName::Nat)];
    for (service, group) in &lineage.changed_groups {
        let before = applied.get(service);
        match group.as_ref().filter(|g| g.chain_count() > 0) {
            Some(group) => {
                group_diff(before, group, false, work)?;
                next.insert(group.clone());
            }
            None => {
                if let Some(before) = before {
                    work.deletes
                        .extend(before.chain_names().into_iter().map(ChainName::new));
                }
                next.remove(service);
            }
        }
    }
    Ok(())
}

/// One Service's group against its record: the chains to write and to delete. Text is needed
/// for every chain written: a released group can only be skipped.
fn group_diff<'a>(
    before: Option<&Arc<ChainGroup>>,
    group: &'a Arc<ChainGroup>,
    full: bool,
    work: &mut TableWork<'a>,
) -> Result<(), PlanError> {
    let unchanged = before.is_some_and(|before| Arc::ptr_eq(before, group));
    if group.is_released() && (full || !unchanged) {
        return Err(PlanError {
            chain: ChainName::new(group.chain_names().first().copied().unwrap_or("?")),
        });
    }
    match before {
        Some(_) if unchanged => {
            if full {
                work.written.extend(group.chains());
            }
        }
        Some(before) => {
            if full {
                work.written.extend(group.chains());
            } else {
                let old: HashMap<&str, (usize, u128)> = before
                    .summaries()
                    .into_iter()
                    .map(|c| (c.name, (c.count, c.digest)))
                    .collect();
                work.written.extend(
                    group
                        .chains()
                        .filter(|c| old.get(c.name()) != Some(&(c.len(), c.digest()))),
                );
            }
            let kept: HashSet<&str> = group.chain_names().into_iter().collect();
            work.deletes.extend(
                before
                    .chain_names()
                    .into_iter()
                    .filter(|name| !kept.contains(name))
                    .map(ChainName::new),
            );
        }
        None => work.written.extend(group.chains()),
    }
    Ok(())
}

/// Full syncs delete chains found in the kernel that knat owns but no longer wants.
fn stale_deletes(
    desired: &RuleSet,
    stale: &[(TableName, ChainName)],
    work: &mut [TableWork<'_>; 2],
) {
    for table_name in TABLES {
        let table: &Table = desired.table(table_name);
        let wanted: HashSet<&str> = table
            .chains
            .keys()
            .map(ChainName::as_str)
            .chain(table.groups.iter().flat_map(|g| g.chain_names()))
            .collect();
        work[index(table_name)].deletes.extend(
            stale
                .iter()
                .filter(|(t, name)| *t == table_name && !wanted.contains(name.as_str()))
                .map(|(_, name)| name.clone()),
        );
    }
}

/// One table's part of the payload (none when it has nothing to do): declarations first, then
/// the rules, copied straight in, then the deletions and the hooks; chains in `order` (see
/// [`ChainOrder`]).
fn table_payload<'a>(
    table_name: TableName,
    mut work: TableWork<'a>,
    hooks: &[&Hook],
    order: ChainOrder,
    stats: &mut PlanStats,
) -> Option<TablePayload<'a>> {
    work.deletes.sort_unstable();
    work.deletes.dedup();
    if work.written.is_empty() && work.deletes.is_empty() && hooks.is_empty() {
        return None;
    }
    order.sort(&mut work.written);
    stats.chains_written += work.written.len();
    stats.rules_written += work.written.iter().map(|c| c.len()).sum::<usize>();
    stats.chains_deleted += work.deletes.len();
    let hook_lines = hooks
        .iter()
        .rev()
        .map(|hook| {
            let mut line = format!("-I {} 1 ", hook.chain);
            hook.rule.write_to(&mut line);
            line.push('\n');
            line
        })
        .collect();
    Some(TablePayload::new(
        table_name,
        work.written,
        work.deletes,
        hook_lines,
    ))
}

impl AppliedState {
    /// Call once the restore of the plan that produced this record succeeded: the kernel has
    /// every chain, so the compiler's cached Service groups and this record keep only chain
    /// names, rule counts and digests, and go on sharing one group per Service (an unchanged
    /// Service stays one pointer comparison). Drop the compiled result first: fragments it
    /// still shares keep their text. Returns how many groups were released.
    pub fn release_text(&mut self, compiler: &mut IncrementalCompiler) -> usize {
        let swaps = compiler.release_groups();
        self.adopt(&swaps);
        swaps.len()
    }

    /// Points the record of each Service at `new` where it held `old`.
    fn adopt(&mut self, swaps: &[(Arc<ChainGroup>, Arc<ChainGroup>)]) {
        for (old, new) in swaps {
            for groups in &mut self.groups {
                if groups
                    .get(&old.key)
                    .is_some_and(|group| Arc::ptr_eq(group, old))
                {
                    groups.insert(new.clone());
                }
            }
        }
    }
}
