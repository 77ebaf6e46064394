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

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use super::chain::ChainName;
use super::compile::IncrementalCompiler;
use super::rule::{ChainGroup, Hook, RuleSet, RuleText, TableName};
use crate::model::ServiceName;

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

/// What knat believes is in the kernel: named chains per table and chain, and the Services'
/// chain groups per table and Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedState {
    pub chains: HashMap<(TableName, ChainName), AppliedChain>,
    pub groups: HashMap<TableName, HashMap<ServiceName, Arc<ChainGroup>>>,
}

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
    fn sort(self, chains: &mut [&RuleText]) {
        match self {
            ChainOrder::Descending => chains.sort_unstable_by(|a, b| b.chain().cmp(a.chain())),
            ChainOrder::Scattered => chains.sort_unstable_by_key(|c| {
                (fnv1a(c.chain().as_str().as_bytes()), c.chain().as_str())
            }),
        }
    }
}

/// 64-bit FNV-1a: a fixed, cheap scattering of chain names (not a digest).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// [`plan`], and the payload also inserts `hooks` (`-I CHAIN 1 ...`, in reverse, so that they
/// end up at the top of their builtin chains in the given order). Only for hooks known to be
/// missing: a restore cannot test whether a rule exists. Chains go in `order`.
pub fn plan_with_hooks(
    applied: &AppliedState,
    desired: &RuleSet,
    kind: SyncKind,
    stale: &[(TableName, ChainName)],
    hooks: &[&Hook],
    order: ChainOrder,
) -> Result<Plan, PlanError> {
    let full = kind == SyncKind::Full;
    let mut next = AppliedState::default();
    let mut payload = String::new();
    let mut stats = PlanStats::default();
    for table_name in [TableName::Filter, TableName::Nat] {
        let table = desired.table(table_name);
        let mut written: Vec<&RuleText> = Vec::new();
        let mut deletes: Vec<ChainName> = Vec::new();

        // Named chains: compared one by one.
        for (name, chain_rules) in &table.chains {
            let key = (table_name, name.clone());
            let now = AppliedChain::of(chain_rules);
            if full || applied.chains.get(&key) != Some(&now) {
                written.push(chain_rules);
            }
            next.chains.insert(key, now);
        }
        deletes.extend(
            applied
                .chains
                .keys()
                .filter(|(t, name)| *t == table_name && !table.chains.contains_key(name))
                .map(|(_, name)| name.clone()),
        );

        // Groups: an unchanged Service is one pointer comparison; a changed one is compared
        // chain by chain (by digest) with its previous group. Text is needed for every chain
        // written: a released group can only be skipped.
        let applied_groups = applied.groups.get(&table_name);
        let mut next_groups = HashMap::with_capacity(table.groups.len());
        for group in &table.groups {
            let before = applied_groups.and_then(|groups| groups.get(&group.key));
            let unchanged = before.is_some_and(|before| Arc::ptr_eq(before, group));
            if group.is_released() && (full || !unchanged) {
                return Err(PlanError {
                    chain: ChainName::new(group.chain_names().first().copied().unwrap_or("?")),
                });
            }
            match before {
                Some(_) if unchanged => {
                    if full {
                        written.extend(&group.chains);
                    }
                }
                Some(before) => {
                    if full {
                        written.extend(&group.chains);
                    } else {
                        let old: HashMap<&str, (usize, u128)> = before
                            .summaries()
                            .into_iter()
                            .map(|c| (c.name, (c.count, c.digest)))
                            .collect();
                        written.extend(group.chains.iter().filter(|c| {
                            old.get(c.chain().as_str()) != Some(&(c.len(), c.digest()))
                        }));
                    }
                    let kept: HashSet<&str> =
                        group.chains.iter().map(|c| c.chain().as_str()).collect();
                    deletes.extend(
                        before
                            .chain_names()
                            .into_iter()
                            .filter(|name| !kept.contains(name))
                            .map(ChainName::new),
                    );
                }
                None => written.extend(&group.chains),
            }
            next_groups.insert(group.key.clone(), group.clone());
        }
        for (service, before) in applied_groups.into_iter().flatten() {
            if !next_groups.contains_key(service) {
                deletes.extend(before.chain_names().into_iter().map(ChainName::new));
            }
        }
        if !next_groups.is_empty() {
            next.groups.insert(table_name, next_groups);
        }

        if full && !stale.is_empty() {
            let wanted: HashSet<&str> = table
                .chains
                .keys()
                .map(ChainName::as_str)
                .chain(table.group_chains().map(|c| c.chain().as_str()))
                .collect();
            deletes.extend(
                stale
                    .iter()
                    .filter(|(t, name)| *t == table_name && !wanted.contains(name.as_str()))
                    .map(|(_, name)| name.clone()),
            );
        }
        deletes.sort_unstable();
        deletes.dedup();
        let rules_total = table.rule_count();
        match table_name {
            TableName::Filter => stats.filter_rules_total = rules_total,
            TableName::Nat => stats.nat_rules_total = rules_total,
        }
        let table_hooks: Vec<&Hook> = hooks
            .iter()
            .copied()
            .filter(|h| h.table == table_name)
            .collect();
        if written.is_empty() && deletes.is_empty() && table_hooks.is_empty() {
            continue;
        }
        // Declarations first, then the rules, copied straight into the payload, then the
        // deletions; chains in `order` (see ChainOrder).
        order.sort(&mut written);
        let _ = writeln!(payload, "*{}", table_name.as_str());
        for name in written.iter().map(|c| c.chain()).chain(&deletes) {
            payload.push(':');
            payload.push_str(name.as_str());
            payload.push_str(" - [0:0]\n");
        }
        for chain_rules in written {
            payload.push_str(chain_rules.as_str());
            stats.chains_written += 1;
            stats.rules_written += chain_rules.len();
        }
        stats.chains_deleted += deletes.len();
        for name in &deletes {
            let _ = writeln!(payload, "-X {name}");
        }
        for hook in table_hooks.iter().rev() {
            let _ = write!(payload, "-I {} 1 ", hook.chain);
            hook.rule.write_to(&mut payload);
            payload.push('\n');
        }
        payload.push_str("COMMIT\n");
    }
    stats.bytes = payload.len();
    Ok(Plan {
        payload,
        next,
        stats,
    })
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
        let by_name: HashMap<&ServiceName, &(Arc<ChainGroup>, Arc<ChainGroup>)> =
            swaps.iter().map(|pair| (&pair.0.key, pair)).collect();
        for groups in self.groups.values_mut() {
            for (name, group) in groups.iter_mut() {
                if let Some((old, new)) = by_name.get(name)
                    && Arc::ptr_eq(group, old)
                {
                    *group = new.clone();
                }
            }
        }
    }
}
