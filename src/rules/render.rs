//! Rendering rule sets as `iptables-restore` input.

use std::fmt::Write as _;

use super::rule::{ChainText, RuleSet, Table, TableName};

/// The complete payload for a plain `iptables-restore` (no `--noflush`) into a node that has
/// no other rules: builtin chains with ACCEPT policy, the hook jumps, and every knat chain.
pub fn render_standalone(rs: &RuleSet) -> String {
    // Each chain adds a `:CHAIN - [0:0]` line to its rules.
    let declarations = |t: &Table| t.chain_count() * 48;
    let mut out = String::with_capacity(
        rs.filter.text_len()
            + rs.nat.text_len()
            + declarations(&rs.filter)
            + declarations(&rs.nat)
            + 4096,
    );
    for table_name in [TableName::Filter, TableName::Nat] {
        let table = rs.table(table_name);
        let _ = writeln!(out, "*{}", table_name.as_str());
        for builtin in table_name.builtin_chains() {
            let _ = writeln!(out, ":{builtin} ACCEPT [0:0]");
        }
        debug_assert!(
            !table.groups.iter().any(|g| g.is_released()),
            "rendering a rule set whose Service chains were released"
        );
        let chains: Vec<ChainText<'_>> = table.ordered().collect();
        for rules in &chains {
            out.push(':');
            out.push_str(rules.name());
            out.push_str(" - [0:0]\n");
        }
        for hook in rs.hooks.iter().filter(|h| h.table == table_name) {
            let _ = writeln!(out, "-A {} {}", hook.chain, hook.rule);
        }
        for rules in chains {
            out.push_str(rules.as_str());
        }
        out.push_str("COMMIT\n");
    }
    out
}
