//! The in-memory model of a ruleset: tables of chains of rules, as `iptables-save` shows them.
//!
//! The reader's model of any dump; the compiler writes with its own, smaller one
//! (`crate::rules::rule`, whose header says why there are two).
//!
//! Equality is semantic: two rules are equal when their typed matches, target and unknown parts
//! are equal, whatever their line numbers and spelling (so knat's restore input and the
//! `iptables-save` output of the same ruleset compare equal).

use std::collections::BTreeMap;

use super::matches::Match;
use super::target::Target;

/// A whole ruleset: every table by name (`filter`, `nat`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
}

/// One table: its chains by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
}

/// One chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// The policy of a built-in chain (`ACCEPT`, `DROP`); `None` for a user chain (`-`).
    pub policy: Option<String>,
    /// The rules in order.
    pub rules: Vec<Rule>,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The 1-based line of the text it was parsed from.
    pub line: usize,
    /// The original rule text without the leading `-A CHAIN `.
    pub text: String,
    /// The typed matches, in canonical order.
    pub matches: Vec<Match>,
    /// What the rule does.
    pub target: Target,
    /// Matches and options this model does not understand, verbatim (for example
    /// `-m limit --limit 5/s` or `-m tcp --tcp-flags SYN,RST SYN`). Never silently dropped.
    pub unknown: Vec<String>,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.matches == other.matches
            && self.target == other.target
            && self.unknown == other.unknown
    }
}

impl Eq for Rule {}

impl Rule {
    /// The rule's protocol (the first non-negated `-p`), used to name the port module.
    pub fn protocol(&self) -> Option<&str> {
        self.matches.iter().find_map(|m| match m {
            Match::Protocol {
                negated: false,
                name,
            } => Some(name.as_str()),
            _ => None,
        })
    }

    /// The canonical rendering of the rule (without `-A CHAIN`): matches in canonical order,
    /// each module loaded once per group, then unknown parts, then the target.
    pub fn canonical(&self) -> String {
        let protocol = self.protocol().unwrap_or("tcp");
        let mut parts: Vec<String> = Vec::new();
        let mut last: Option<(&str, u8)> = None;
        for m in &self.matches {
            if let Some(module) = m.module(protocol) {
                let grouped = matches!(last, Some((lm, lr)) if lm == module && lr != m.rank() && m.groupable());
                if !grouped {
                    parts.push(format!("-m {module}"));
                }
                last = Some((module, m.rank()));
            } else {
                last = None;
            }
            parts.push(m.to_string());
        }
        parts.extend(self.unknown.iter().cloned());
        let target = self.target.to_string();
        if !target.is_empty() {
            parts.push(target);
        }
        parts.join(" ")
    }
}

/// The built-in chains of a known table, in hook order, or `None` for an unknown table.
pub fn builtin_chains(table: &str) -> Option<&'static [&'static str]> {
    Some(match table {
        "filter" => &["INPUT", "FORWARD", "OUTPUT"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "raw" => &["PREROUTING", "OUTPUT"],
        "security" => &["INPUT", "FORWARD", "OUTPUT"],
        _ => return None,
    })
}

/// Whether `chain` is a built-in chain of `table`.
pub fn is_builtin(table: &str, chain: &str) -> bool {
    builtin_chains(table).is_some_and(|b| b.contains(&chain))
}

impl Table {
    /// A table holding only its built-in chains, each with policy ACCEPT (empty for an unknown
    /// table name).
    pub fn with_builtins(name: &str) -> Self {
        let chains = builtin_chains(name)
            .unwrap_or(&[])
            .iter()
            .map(|c| {
                (
                    (*c).to_string(),
                    Chain {
                        policy: Some("ACCEPT".into()),
                        rules: Vec::new(),
                    },
                )
            })
            .collect();
        Table { chains }
    }

    /// Chain names in save order: built-in chains in hook order, then the others by name.
    pub fn chain_order(&self, name: &str) -> Vec<&str> {
        let builtins = builtin_chains(name).unwrap_or(&[]);
        let mut order: Vec<&str> = builtins
            .iter()
            .copied()
            .filter(|c| self.chains.contains_key(*c))
            .collect();
        order.extend(
            self.chains
                .keys()
                .map(String::as_str)
                .filter(|c| !builtins.contains(c)),
        );
        order
    }
}

impl Dump {
    /// The chain `chain` of table `table`, if present.
    pub fn chain(&self, table: &str, chain: &str) -> Option<&Chain> {
        self.tables.get(table)?.chains.get(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::matches::PortRange;

    fn rule(matches: Vec<Match>, target: Target) -> Rule {
        Rule {
            line: 1,
            text: String::new(),
            matches,
            target,
            unknown: Vec::new(),
        }
    }

    #[test]
    fn canonical_groups_ports_under_one_module() {
        let r = rule(
            vec![
                Match::Protocol {
                    negated: false,
                    name: "udp".into(),
                },
                Match::SourcePort {
                    negated: false,
                    ports: PortRange::single(53),
                },
                Match::DestinationPort {
                    negated: false,
                    ports: PortRange::single(5353),
                },
            ],
            Target::Accept,
        );
        assert_eq!(
            r.canonical(),
            "-p udp -m udp --sport 53 --dport 5353 -j ACCEPT"
        );
    }

    #[test]
    fn equality_ignores_line_and_text() {
        let mut a = rule(vec![], Target::Return);
        let mut b = a.clone();
        a.line = 3;
        a.text = "-j RETURN".into();
        b.line = 9;
        assert_eq!(a, b);
        b.unknown.push("-f".into());
        assert_ne!(a, b);
    }

    #[test]
    fn chain_order_puts_builtins_first() {
        let mut t = Table::with_builtins("nat");
        t.chains.insert("KUBE-A".into(), Chain::default());
        assert_eq!(
            t.chain_order("nat"),
            vec!["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "KUBE-A"]
        );
        assert!(is_builtin("filter", "FORWARD"));
        assert!(!is_builtin("nat", "FORWARD"));
    }
}
