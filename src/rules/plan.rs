//! Planning `iptables-restore --noflush` payloads: full, or only what changed.
//!
//! The planner keeps, per chain, the rule text last applied (shared with the compiler, so a
//! chain that was not recompiled is recognised by pointer; others are compared as text). A
//! partial payload declares (and so flushes and rewrites) exactly the chains whose rendering changed or
//! that are new, and deletes (`:X` then `-X X`) the chains that are no longer wanted. Chains
//! that did not change are not mentioned, so `--noflush` leaves them alone. Unlike upstream,
//! KUBE-SERVICES, KUBE-NODEPORTS and KUBE-EXTERNAL-SERVICES are not rewritten unless their
//! content changed; since a restore replaces a declared chain entirely and keeps undeclared
//! ones, the kernel ends up with exactly the desired chains either way (property-tested against
//! the restore model in `dump::restore`).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::chain::ChainName;
use super::rule::{ChainRules, RuleSet, TableName};

/// One chain as last applied: its rules (shared, so a chain that was not recompiled is
/// recognised by pointer without comparing text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChain {
    pub rules: ChainRules,
}

/// What knat believes is in the kernel, per table and chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedState {
    pub chains: HashMap<(TableName, ChainName), AppliedChain>,
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

/// A payload and the state the kernel is in once it has been applied successfully.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `iptables-restore --noflush` input; empty when nothing needs to change.
    pub payload: String,
    pub next: AppliedState,
    pub stats: PlanStats,
}

/// Plans the restore that takes the kernel from `applied` to `desired`. `stale` lists chains
/// found in the kernel that knat owns but did not write (deleted on full syncs).
pub fn plan(
    applied: &AppliedState,
    desired: &RuleSet,
    kind: SyncKind,
    stale: &[(TableName, ChainName)],
) -> Plan {
    let mut next = AppliedState::default();
    let mut payload = String::new();
    let mut stats = PlanStats::default();
    for table_name in [TableName::Filter, TableName::Nat] {
        let table = desired.table(table_name);
        let mut written = Vec::new();
        for (name, chain_rules) in &table.chains {
            let key = (table_name, name.clone());
            let before = applied.chains.get(&key);
            let unchanged = before.is_some_and(|a| {
                std::sync::Arc::ptr_eq(&a.rules, chain_rules) || a.rules == *chain_rules
            });
            if kind == SyncKind::Full || !unchanged {
                written.push((name, chain_rules));
            }
            match table_name {
                TableName::Filter => stats.filter_rules_total += chain_rules.len(),
                TableName::Nat => stats.nat_rules_total += chain_rules.len(),
            }
            next.chains.insert(
                key,
                AppliedChain {
                    rules: chain_rules.clone(),
                },
            );
        }
        written.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut deletes: Vec<ChainName> = applied
            .chains
            .keys()
            .filter(|(t, name)| *t == table_name && !table.chains.contains_key(name))
            .map(|(_, name)| name.clone())
            .collect();
        if kind == SyncKind::Full {
            deletes.extend(
                stale
                    .iter()
                    .filter(|(t, name)| *t == table_name && !table.chains.contains_key(name))
                    .map(|(_, name)| name.clone()),
            );
        }
        deletes.sort_unstable();
        deletes.dedup();
        if written.is_empty() && deletes.is_empty() {
            continue;
        }
        // Declarations first, then the rules, rendered straight into the payload (no second
        // copy of a full sync's tens of megabytes), then the deletions.
        let _ = writeln!(payload, "*{}", table_name.as_str());
        for name in written.iter().map(|(name, _)| *name).chain(&deletes) {
            let _ = writeln!(payload, ":{name} - [0:0]");
        }
        for (_, chain_rules) in written {
            payload.push_str(chain_rules.as_str());
            stats.chains_written += 1;
            stats.rules_written += chain_rules.len();
        }
        stats.chains_deleted += deletes.len();
        for name in &deletes {
            let _ = writeln!(payload, "-X {name}");
        }
        payload.push_str("COMMIT\n");
    }
    stats.bytes = payload.len();
    Plan {
        payload,
        next,
        stats,
    }
}
