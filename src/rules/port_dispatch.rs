//! NodePort dispatch for nat KUBE-NODEPORTS: linear as upstream, or a tree of port ranges.
//!
//! Upstream's KUBE-NODEPORTS is one rule per NodePort (two with localhost NodePorts counted by
//! nfacct), so the first packet to the last of 10,000 NodePorts is compared with 10,000 rules.
//! With `--dispatch tree` and more NodePorts than `leaf_size`, the rules are ordered by
//! (protocol, port) and split by port-number prefix: a chain holds at most `leaf_size` rules for
//! single ports or `-m P -p P --dport LO:HI -j KNAT-NP-<hash>` jumps to a sub-chain for an aligned
//! range. Ranges of one protocol are disjoint and every rule of a port stays in one chain, in its
//! order, so a packet reaches exactly the rules it would reach in the linear list, and one that
//! matches none falls back through the parents to the end of KUBE-NODEPORTS, as before. Up to
//! `leaf_size` NodePorts the chain is left in Service order, byte for byte upstream's.

use std::sync::Arc;

use super::chain::{ChainName, NODEPORT_DISPATCH_PREFIX, hash16};
use super::dispatch::EntryRule;
use super::rule::{Match, Rule, RuleText, Table, Target};
use crate::config::Dispatch;
use crate::model::Protocol;

/// A KUBE-NODEPORTS rule together with the protocol and port it matches.
#[derive(Debug, Clone)]
pub struct PortEntry {
    pub proto: Protocol,
    pub port: u16,
    pub rule: EntryRule,
}

impl PortEntry {
    pub fn new(proto: Protocol, port: u16, rule: Rule) -> Self {
        PortEntry {
            proto,
            port,
            rule: EntryRule::Typed(rule),
        }
    }

    /// The same entry with its rule rendered (what follows `-A CHAIN `), in a fresh
    /// allocation.
    pub fn rendered(&self) -> Self {
        PortEntry {
            proto: self.proto,
            port: self.port,
            rule: EntryRule::Rendered(self.text()),
        }
    }

    /// The rendered rule.
    pub fn text(&self) -> Arc<str> {
        match &self.rule {
            EntryRule::Typed(rule) => {
                let mut text = String::new();
                rule.write_to(&mut text);
                Arc::from(text)
            }
            EntryRule::Rendered(text) => Arc::from(&**text),
        }
    }

    fn push_to(&self, rules: &mut RuleText) {
        match &self.rule {
            EntryRule::Typed(rule) => rules.push_rule(rule),
            EntryRule::Rendered(text) => rules.push_rendered(text),
        }
    }
}

/// The chain of a port range of one protocol.
fn range_chain(proto: Protocol, lo: u16, hi: u16) -> ChainName {
    ChainName::new(format!(
        "{NODEPORT_DISPATCH_PREFIX}{}",
        hash16(&format!("{}:{lo}-{hi}", proto.as_str()))
    ))
}

/// Writes `entries` (in Service order) into `root`, creating range sub-chains in `table`
/// when there are more ports than the tree's leaf size.
pub fn build(entries: Vec<PortEntry>, dispatch: Dispatch, root: &ChainName, table: &mut Table) {
    let leaf_size = match dispatch {
        Dispatch::Tree { leaf_size } => leaf_size,
        Dispatch::Linear => usize::MAX,
    };
    let mut ports: Vec<(Protocol, u16)> = entries.iter().map(|e| (e.proto, e.port)).collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.len() <= leaf_size {
        let chain = table.chain(root);
        for entry in &entries {
            entry.push_to(chain);
        }
        return;
    }
    // Groups of rules per (protocol, port), in that order (stable within a group).
    let mut sorted = entries;
    sorted.sort_by_key(|e| (e.proto, e.port));
    let mut groups: Vec<Vec<PortEntry>> = Vec::new();
    for entry in sorted {
        match groups.last_mut() {
            Some(group) if (group[0].proto, group[0].port) == (entry.proto, entry.port) => {
                group.push(entry)
            }
            _ => groups.push(vec![entry]),
        }
    }
    let fanout_bits = (usize::BITS - 1 - leaf_size.leading_zeros()).clamp(1, 16);
    table.chain(root);
    let mut rest = groups.as_slice();
    while let Some(first) = rest.first() {
        let proto = first[0].proto;
        let end = rest
            .iter()
            .position(|g| g[0].proto != proto)
            .unwrap_or(rest.len());
        split(root, proto, &rest[..end], leaf_size, fanout_bits, table);
        rest = &rest[end..];
    }
}

/// Appends to `chain` the rules of `groups` (one protocol, ascending ports): directly when
/// they fit, else one range jump per child of the next `fanout_bits` bits of the port.
fn split(
    chain: &ChainName,
    proto: Protocol,
    groups: &[Vec<PortEntry>],
    leaf_size: usize,
    fanout_bits: u32,
    table: &mut Table,
) {
    if groups.len() <= leaf_size {
        let rules = table.chain(chain);
        for entry in groups.iter().flatten() {
            entry.push_to(rules);
        }
        return;
    }
    let (first, last) = (groups[0][0].port, groups[groups.len() - 1][0].port);
    let common = common_prefix_len(first, last);
    let step = fanout_bits.min(16 - common);
    let key = |port: u16| (u32::from(port) >> (16 - common - step)) & ((1 << step) - 1);
    let mut rest = groups;
    while let Some(head) = rest.first() {
        let k = key(head[0].port);
        let end = rest
            .iter()
            .position(|g| key(g[0].port) != k)
            .unwrap_or(rest.len());
        let child = &rest[..end];
        rest = &rest[end..];
        if child.len() == 1 {
            let rules = table.chain(chain);
            for entry in &child[0] {
                entry.push_to(rules);
            }
            continue;
        }
        let (lo, hi) = (child[0][0].port, child[child.len() - 1][0].port);
        let bits = common_prefix_len(lo, hi);
        let mask = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits)
        };
        let (range_lo, range_hi) = (lo & mask, (lo & mask) | !mask);
        let sub = range_chain(proto, range_lo, range_hi);
        table.chain(&sub);
        table.push(
            chain,
            Rule::new(
                vec![Match::Proto(proto), Match::DPortRange(range_lo, range_hi)],
                Target::Jump(sub.clone()),
            ),
        );
        split(&sub, proto, child, leaf_size, fanout_bits, table);
    }
}

fn common_prefix_len(a: u16, b: u16) -> u32 {
    (a ^ b).leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(proto: Protocol, port: u16) -> PortEntry {
        PortEntry::new(
            proto,
            port,
            Rule::new(
                vec![Match::Proto(proto), Match::DPort(port)],
                Target::Accept,
            ),
        )
    }

    #[test]
    fn up_to_the_leaf_size_the_chain_keeps_service_order() {
        let mut table = Table::default();
        let root = ChainName::fixed("KUBE-NODEPORTS");
        let entries = vec![entry(Protocol::Tcp, 30002), entry(Protocol::Tcp, 30001)];
        build(entries, Dispatch::Tree { leaf_size: 4 }, &root, &mut table);
        assert_eq!(table.chains.len(), 1);
        let lines: Vec<&str> = table.chains[&root].lines().collect();
        assert!(lines[0].contains("--dport 30002"), "{lines:?}");
    }

    #[test]
    fn many_ports_become_a_bounded_tree_of_disjoint_ranges_reaching_every_rule() {
        let mut table = Table::default();
        let root = ChainName::fixed("KUBE-NODEPORTS");
        let mut entries: Vec<PortEntry> = (0..3000u16)
            .map(|i| entry(Protocol::Tcp, 30000 + (i * 7) % 2768))
            .collect();
        entries.push(entry(Protocol::Udp, 30000));
        build(entries, Dispatch::Tree { leaf_size: 16 }, &root, &mut table);
        let mut leaves = 0;
        for rules in table.chains.values() {
            // Bounded by ports per chain (a port may have several rules).
            let ports: std::collections::BTreeSet<&str> = rules
                .lines()
                .filter_map(|r| r.split("--dport ").nth(1))
                .collect();
            assert!(ports.len() <= 16, "a chain has {} ports", ports.len());
            leaves += rules.lines().filter(|r| r.ends_with("-j ACCEPT")).count();
        }
        assert_eq!(leaves, 3000 + 1, "every rule once");
        // Walking from the root by port reaches the port's rule.
        for port in [30000u16, 31234, 32767] {
            let mut chain = root.clone();
            let mut hops = 0;
            'walk: loop {
                hops += 1;
                assert!(hops < 8, "too deep");
                for line in table.chains[&chain].lines() {
                    if line.contains("-p udp") {
                        continue;
                    }
                    if line.contains(&format!("--dport {port} ")) {
                        break 'walk;
                    }
                    let range = line
                        .split("--dport ")
                        .nth(1)
                        .and_then(|r| r.split(' ').next());
                    if let Some((lo, hi)) = range.and_then(|r| r.split_once(':')) {
                        let (lo, hi): (u16, u16) = (lo.parse().unwrap(), hi.parse().unwrap());
                        if (lo..=hi).contains(&port) {
                            let next = line.rsplit(' ').next().unwrap();
                            chain = ChainName::new(next);
                            continue 'walk;
                        }
                    }
                }
                panic!("port {port} not reached in {chain}");
            }
        }
    }
}
