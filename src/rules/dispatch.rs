//! Destination dispatch for nat KUBE-SERVICES: linear as upstream, or a prefix tree of chains.
//!
//! Upstream's KUBE-SERVICES is one rule per service destination, so the first packet of a
//! connection to the last of 10,000 services is compared against 10,000 rules. The tree groups
//! destinations by address prefix: a chain holds at most `leaf_size` entries, either rules for
//! one destination address or `-d PREFIX -j KNAT-DST-<hash>` jumps to a sub-chain. Sibling
//! prefixes are disjoint, so a packet that matches no rule in a sub-chain falls back to the
//! parent and on to the NodePort tail rule exactly as it would in the linear list: the verdict
//! of every packet is unchanged, only the number of rules it is compared with shrinks to about
//! `leaf_size * log_leaf(n)`.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::chain::{ChainName, dispatch_chain};
use super::rule::{Addr, Match, Rule, RuleText, Table, Target};
use crate::config::Dispatch;

/// A KUBE-SERVICES rule together with the destination address it matches.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dst: IpAddr,
    pub rule: EntryRule,
}

/// An entry's rule: typed as compiled (rendering 10,000 of them while compiling cost about
/// 10 ms), rendered (what follows `-A CHAIN `) once the compiler keeps it for later syncs,
/// where one shared string is far smaller than a tree of typed matches.
#[derive(Debug, Clone)]
pub enum EntryRule {
    Typed(Rule),
    Rendered(Arc<str>),
}

impl Entry {
    pub fn new(dst: IpAddr, rule: Rule) -> Self {
        Entry {
            dst,
            rule: EntryRule::Typed(rule),
        }
    }

    /// The same entry with its rule rendered, in a fresh allocation.
    pub fn rendered(&self) -> Self {
        let text: Arc<str> = match &self.rule {
            EntryRule::Typed(rule) => {
                let mut text = String::new();
                rule.write_to(&mut text);
                Arc::from(text)
            }
            EntryRule::Rendered(text) => Arc::from(&**text),
        };
        Entry {
            dst: self.dst,
            rule: EntryRule::Rendered(text),
        }
    }

    /// Appends the rule to `rules`.
    fn push_to(&self, rules: &mut RuleText) {
        match &self.rule {
            EntryRule::Typed(rule) => rules.push_rule(rule),
            EntryRule::Rendered(text) => rules.push_rendered(text),
        }
    }
}

fn bits(ip: &IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(*v4)), 32),
        IpAddr::V6(v6) => (u128::from(*v6), 128),
    }
}

fn common_prefix_len(a: &IpAddr, b: &IpAddr) -> u8 {
    let (x, width) = bits(a);
    let (y, _) = bits(b);
    let diff = (x ^ y) << (128 - u32::from(width));
    if diff == 0 {
        width
    } else {
        diff.leading_zeros() as u8
    }
}

/// Bits `[from, from+count)` of the address, as a number.
fn bit_slice(ip: &IpAddr, from: u8, count: u8) -> u128 {
    let (x, width) = bits(ip);
    let shift = u32::from(width - from - count);
    (x >> shift) & ((1u128 << count) - 1)
}

/// Writes `entries` into `root` (which must already hold nothing that has to come after them
/// except what the caller appends later), creating sub-chains in `table` for the tree. The
/// entries are borrowed (the compiler keeps them in its fragments) and sorted as references.
pub fn build(mut entries: Vec<&Entry>, dispatch: Dispatch, root: &ChainName, table: &mut Table) {
    let leaf_size = match dispatch {
        Dispatch::Tree { leaf_size } => leaf_size,
        Dispatch::Linear => usize::MAX,
    };
    // Groups of entries per destination address, in address order (stable within a group).
    entries.sort_by_key(|e| bits(&e.dst).0);
    let groups: Vec<&[&Entry]> = entries.chunk_by(|a, b| a.dst == b.dst).collect();
    if groups.len() <= leaf_size {
        let chain = table.chain(root);
        for entry in &entries {
            entry.push_to(chain);
        }
        return;
    }
    let fanout_bits = (usize::BITS - 1 - leaf_size.leading_zeros()).max(1) as u8;
    fill(root, &groups, leaf_size, fanout_bits, table);
}

/// Writes `groups` (entries of one destination each, in address order) into `chain`, as
/// rules or as jumps to sub-chains of at most `leaf_size` entries.
fn fill(
    chain: &ChainName,
    groups: &[&[&Entry]],
    leaf_size: usize,
    fanout_bits: u8,
    table: &mut Table,
) {
    if groups.len() <= leaf_size {
        let rules = table.chain(chain);
        for entry in groups.iter().copied().flatten() {
            entry.push_to(rules);
        }
        return;
    }
    let first = groups[0][0].dst;
    let last = groups[groups.len() - 1][0].dst;
    let width = bits(&first).1;
    let common = common_prefix_len(&first, &last);
    let step = fanout_bits.min(width - common);
    table.chain(chain);
    // Children: runs of groups with the same `step` bits after the common prefix.
    let children = groups
        .chunk_by(|a, b| bit_slice(&a[0].dst, common, step) == bit_slice(&b[0].dst, common, step));
    for child in children {
        if child.len() == 1 {
            let rules = table.chain(chain);
            for entry in child.iter().copied().flatten() {
                entry.push_to(rules);
            }
            continue;
        }
        let lo = child[0][0].dst;
        let hi = child[child.len() - 1][0].dst;
        let net = IpNet::new(lo, common_prefix_len(&lo, &hi))
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(lo));
        let sub = dispatch_chain(&net.to_string());
        table.push(
            chain,
            Rule::new(
                vec![Match::Dst {
                    negated: false,
                    addr: Addr::Net(net),
                }],
                Target::Jump(sub.clone()),
            ),
        );
        fill(&sub, child, leaf_size, fanout_bits, table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: &str) -> Entry {
        Entry::new(
            ip.parse().unwrap(),
            Rule::new(
                vec![Match::Dst {
                    negated: false,
                    addr: Addr::Ip(ip.parse().unwrap()),
                }],
                Target::Accept,
            ),
        )
    }

    #[test]
    fn rendered_entries_write_the_same_rule_as_typed_ones() {
        let typed = entry("10.96.0.1");
        let rendered = typed.rendered();
        assert!(matches!(rendered.rule, EntryRule::Rendered(_)));
        let root = ChainName::fixed("KUBE-SERVICES");
        let (mut a, mut b) = (RuleText::new(root.clone()), RuleText::new(root));
        typed.push_to(&mut a);
        rendered.push_to(&mut b);
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "-A KUBE-SERVICES -d 10.96.0.1 -j ACCEPT\n");
    }

    #[test]
    fn small_sets_stay_linear() {
        let mut table = Table::default();
        let root = ChainName::fixed("KUBE-SERVICES");
        build(
            vec![&entry("10.0.0.2"), &entry("10.0.0.1")],
            Dispatch::Tree { leaf_size: 4 },
            &root,
            &mut table,
        );
        assert_eq!(table.chains.len(), 1);
        assert_eq!(table.chains[&root].len(), 2);
    }

    #[test]
    fn large_sets_become_a_bounded_tree_reaching_every_entry() {
        let mut table = Table::default();
        let root = ChainName::fixed("KUBE-SERVICES");
        let entries: Vec<Entry> = (0..1000u32)
            .map(|i| entry(&format!("10.96.{}.{}", (i * 7) % 256, (i * 13) % 251)))
            .collect();
        let distinct: std::collections::BTreeSet<_> = entries.iter().map(|e| e.dst).collect();
        build(
            entries.iter().collect(),
            Dispatch::Tree { leaf_size: 16 },
            &root,
            &mut table,
        );
        let mut leaf_rules = 0;
        for rules in table.chains.values() {
            assert!(rules.len() <= 16, "a chain has {} rules", rules.len());
            leaf_rules += rules.lines().filter(|r| r.ends_with("-j ACCEPT")).count();
        }
        assert_eq!(leaf_rules, distinct.len());
    }

    #[test]
    fn prefix_math() {
        let a: IpAddr = "10.96.0.0".parse().unwrap();
        let b: IpAddr = "10.96.0.255".parse().unwrap();
        assert_eq!(common_prefix_len(&a, &b), 24);
        assert_eq!(bit_slice(&b, 24, 4), 0xf);
        let v6a: IpAddr = "fd00::1".parse().unwrap();
        let v6b: IpAddr = "fd00::3".parse().unwrap();
        assert_eq!(common_prefix_len(&v6a, &v6b), 126);
    }
}
