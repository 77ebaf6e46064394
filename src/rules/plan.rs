//! Planning `iptables-restore --noflush` payloads: full, or only what changed.
//!
//! The planner keeps, per chain, a 64-bit hash of the rendered rules last applied. A partial
//! payload declares (and so flushes and rewrites) exactly the chains whose rendering changed or
//! that are new, and deletes (`:X` then `-X X`) the chains that are no longer wanted. Chains
//! that did not change are not mentioned, so `--noflush` leaves them alone. Unlike upstream,
//! KUBE-SERVICES, KUBE-NODEPORTS and KUBE-EXTERNAL-SERVICES are not rewritten unless their
//! content changed; since a restore replaces a declared chain entirely and keeps undeclared
//! ones, the kernel ends up with exactly the desired chains either way (property-tested against
//! the restore model in `dump::restore`).

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use super::chain::ChainName;
use super::render::rendered_chains;
use super::rule::{RuleSet, TableName};

/// What knat believes is in the kernel: per table, chain name to rendered-rules hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedState {
    pub chains: BTreeMap<(TableName, ChainName), u64>,
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

fn hash_text(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
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
        let mut declare = String::new();
        let mut rules = String::new();
        let mut deletes = Vec::new();
        for chain in rendered_chains(table) {
            let hash = hash_text(&chain.text);
            let key = (table_name, chain.name.clone());
            let unchanged = applied.chains.get(&key) == Some(&hash);
            if kind == SyncKind::Full || !unchanged {
                let _ = writeln!(declare, ":{} - [0:0]", chain.name);
                rules.push_str(&chain.text);
                stats.chains_written += 1;
                stats.rules_written += chain.rules;
            }
            match table_name {
                TableName::Filter => stats.filter_rules_total += chain.rules,
                TableName::Nat => stats.nat_rules_total += chain.rules,
            }
            next.chains.insert(key, hash);
        }
        let gone = applied
            .chains
            .keys()
            .filter(|(t, name)| *t == table_name && !table.chains.contains_key(name))
            .map(|(_, name)| name.clone());
        let stale_here = stale
            .iter()
            .filter(|(t, name)| *t == table_name && !table.chains.contains_key(name))
            .filter(|_| kind == SyncKind::Full)
            .map(|(_, name)| name.clone());
        for name in gone.chain(stale_here) {
            if !deletes.contains(&name) {
                deletes.push(name);
            }
        }
        for name in &deletes {
            let _ = writeln!(declare, ":{name} - [0:0]");
        }
        if declare.is_empty() {
            continue;
        }
        stats.chains_deleted += deletes.len();
        let _ = writeln!(payload, "*{}", table_name.as_str());
        payload.push_str(&declare);
        payload.push_str(&rules);
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
