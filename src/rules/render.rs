//! Rendering rule sets as `iptables-restore` input.

use std::fmt::Write as _;

use super::chain::ChainName;
use super::rule::{Rule, RuleSet, Table, TableName};

/// Appends `-A CHAIN RULE\n` for every rule of one chain.
pub fn render_chain_rules(out: &mut String, chain: &ChainName, rules: &[Rule]) {
    for rule in rules {
        out.push_str("-A ");
        out.push_str(chain.as_str());
        out.push(' ');
        rule.write_to(out);
        out.push('\n');
    }
}

/// One chain rendered on its own: the unit the planner compares and rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChain {
    pub name: ChainName,
    /// The chain's `-A` lines.
    pub text: String,
    pub rules: usize,
}

/// Every user chain of a table, rendered, in name order.
pub fn rendered_chains(table: &Table) -> impl Iterator<Item = RenderedChain> + '_ {
    table.sorted().into_iter().map(|(name, rules)| {
        let mut text = String::with_capacity(rules.len() * 120);
        render_chain_rules(&mut text, name, rules);
        RenderedChain {
            name: name.clone(),
            text,
            rules: rules.len(),
        }
    })
}

/// The complete payload for a plain `iptables-restore` (no `--noflush`) into a node that has
/// no other rules: builtin chains with ACCEPT policy, the hook jumps, and every knat chain.
pub fn render_standalone(rs: &RuleSet) -> String {
    let mut out =
        String::with_capacity(rs.filter.rule_count() * 100 + rs.nat.rule_count() * 120 + 1024);
    for table_name in [TableName::Filter, TableName::Nat] {
        let table = rs.table(table_name);
        let _ = writeln!(out, "*{}", table_name.as_str());
        for builtin in table_name.builtin_chains() {
            let _ = writeln!(out, ":{builtin} ACCEPT [0:0]");
        }
        let chains = table.sorted();
        for (name, _) in &chains {
            let _ = writeln!(out, ":{name} - [0:0]");
        }
        for hook in rs.hooks.iter().filter(|h| h.table == table_name) {
            let _ = writeln!(out, "-A {} {}", hook.chain, hook.rule);
        }
        for (name, rules) in chains {
            render_chain_rules(&mut out, name, rules);
        }
        out.push_str("COMMIT\n");
    }
    out
}
