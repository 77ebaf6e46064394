//! Typed iptables rules with a `Display` that reproduces upstream's argument order exactly.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::chain::ChainName;
use crate::model::{IpFamily, Protocol};

/// An address argument: a bare address (`-d 10.96.0.10`) or a network (`! -s 10.0.0.0/8`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    Ip(IpAddr),
    Net(IpNet),
}

/// Which address `-m addrtype` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrTypeDir {
    Src,
    Dst,
}

/// One match clause, rendered with its `-m module` where it needs one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `-m comment --comment X`, quoted when X has spaces.
    Comment(Arc<str>),
    /// `-m comment --comment "SPN -> ip:port"` (the per-endpoint comment, built without
    /// allocating a string per rule).
    EndpointComment { spn: Arc<str>, endpoint: Arc<str> },
    /// `-m P -p P`.
    Proto(Protocol),
    /// `[!] -s ADDR`.
    Src { negated: bool, addr: Addr },
    /// `[!] -d ADDR`.
    Dst { negated: bool, addr: Addr },
    /// `--dport N` (follows a `Proto`).
    DPort(u16),
    /// `--dport LO:HI` (follows a `Proto`).
    DPortRange(u16, u16),
    /// `[!] -i IFACE`.
    InIface { negated: bool, name: String },
    /// `-m addrtype [!] --src-type|--dst-type LOCAL`.
    AddrTypeLocal { dir: AddrTypeDir, negated: bool },
    /// `-m statistic --mode random --probability P`.
    Probability(Arc<str>),
    /// `-m recent --name N --rcheck --seconds S --reap`.
    RecentCheck { name: ChainName, seconds: u32 },
    /// `-m recent --name N --set`.
    RecentSet { name: ChainName },
    /// `-m mark [!] --mark M/M`.
    Mark { negated: bool, mark: Arc<str> },
    /// `-m conntrack [!] --ctstate STATES`.
    CtState { negated: bool, states: &'static str },
    /// `-m nfacct --nfacct-name NAME`.
    Nfacct(&'static str),
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `-j CHAIN`.
    Jump(ChainName),
    /// `-j DNAT --to-destination ip:port`.
    Dnat(Arc<str>),
    /// `-j MASQUERADE [--random-fully]`.
    Masquerade {
        random_fully: bool,
    },
    /// `-j MARK --or-mark M`.
    MarkOr(Arc<str>),
    /// `-j MARK --xor-mark M`.
    MarkXor(Arc<str>),
    Return,
    Accept,
    Drop,
    Reject,
    /// No target (a comment-only rule, as in the FW chain's last line).
    None,
}

/// A rule: match clauses in upstream's order, then the target. `Display` renders what follows
/// `-A CHAIN `.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub target: Target,
}

impl Rule {
    pub fn new(matches: Vec<Match>, target: Target) -> Self {
        Rule { matches, target }
    }
}

// Rendering writes straight into a String: rule sets of 300,000 rules are rendered on every
// full sync, and `fmt` machinery per argument costs several times more than appending.

/// Appends the decimal form of `n`.
fn push_num(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

fn push_ip(out: &mut String, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_num(out, u64::from(*octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_bang(out: &mut String, negated: bool) {
    if negated {
        out.push_str("! ");
    }
}

impl Addr {
    /// Appends the address as iptables takes it (`10.96.0.10`, `10.0.0.0/8`).
    pub fn write_to(&self, out: &mut String) {
        match self {
            Addr::Ip(ip) => push_ip(out, ip),
            Addr::Net(net) => {
                push_ip(out, &net.addr());
                out.push('/');
                push_num(out, u64::from(net.prefix_len()));
            }
        }
    }
}

impl Match {
    /// Appends the match clause in upstream's spelling.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Match::Comment(text) => {
                out.push_str("-m comment --comment ");
                if text.chars().any(char::is_whitespace) {
                    out.push('"');
                    out.push_str(text);
                    out.push('"');
                } else {
                    out.push_str(text);
                }
            }
            Match::EndpointComment { spn, endpoint } => {
                out.push_str("-m comment --comment \"");
                out.push_str(spn);
                out.push_str(" -> ");
                out.push_str(endpoint);
                out.push('"');
            }
            Match::Proto(p) => {
                out.push_str("-m ");
                out.push_str(p.as_str());
                out.push_str(" -p ");
                out.push_str(p.as_str());
            }
            Match::Src { negated, addr } => {
                push_bang(out, *negated);
                out.push_str("-s ");
                addr.write_to(out);
            }
            Match::Dst { negated, addr } => {
                push_bang(out, *negated);
                out.push_str("-d ");
                addr.write_to(out);
            }
            Match::DPort(port) => {
                out.push_str("--dport ");
                push_num(out, u64::from(*port));
            }
            Match::DPortRange(lo, hi) => {
                out.push_str("--dport ");
                push_num(out, u64::from(*lo));
                out.push(':');
                push_num(out, u64::from(*hi));
            }
            Match::InIface { negated, name } => {
                push_bang(out, *negated);
                out.push_str("-i ");
                out.push_str(name);
            }
            Match::AddrTypeLocal { dir, negated } => {
                out.push_str("-m addrtype ");
                push_bang(out, *negated);
                out.push_str(match dir {
                    AddrTypeDir::Src => "--src-type LOCAL",
                    AddrTypeDir::Dst => "--dst-type LOCAL",
                });
            }
            Match::Probability(p) => {
                out.push_str("-m statistic --mode random --probability ");
                out.push_str(p);
            }
            Match::RecentCheck { name, seconds } => {
                out.push_str("-m recent --name ");
                out.push_str(name.as_str());
                out.push_str(" --rcheck --seconds ");
                push_num(out, u64::from(*seconds));
                out.push_str(" --reap");
            }
            Match::RecentSet { name } => {
                out.push_str("-m recent --name ");
                out.push_str(name.as_str());
                out.push_str(" --set");
            }
            Match::Mark { negated, mark } => {
                out.push_str("-m mark ");
                push_bang(out, *negated);
                out.push_str("--mark ");
                out.push_str(mark);
                out.push('/');
                out.push_str(mark);
            }
            Match::CtState { negated, states } => {
                out.push_str("-m conntrack ");
                push_bang(out, *negated);
                out.push_str("--ctstate ");
                out.push_str(states);
            }
            Match::Nfacct(name) => {
                out.push_str("-m nfacct --nfacct-name ");
                out.push_str(name);
            }
        }
    }
}

impl Target {
    /// Appends `-j TARGET [options]` (nothing for [`Target::None`]).
    pub fn write_to(&self, out: &mut String) {
        match self {
            Target::Jump(chain) => {
                out.push_str("-j ");
                out.push_str(chain.as_str());
            }
            Target::Dnat(to) => {
                out.push_str("-j DNAT --to-destination ");
                out.push_str(to);
            }
            Target::Masquerade { random_fully } => {
                out.push_str("-j MASQUERADE");
                if *random_fully {
                    out.push_str(" --random-fully");
                }
            }
            Target::MarkOr(mark) => {
                out.push_str("-j MARK --or-mark ");
                out.push_str(mark);
            }
            Target::MarkXor(mark) => {
                out.push_str("-j MARK --xor-mark ");
                out.push_str(mark);
            }
            Target::Return => out.push_str("-j RETURN"),
            Target::Accept => out.push_str("-j ACCEPT"),
            Target::Drop => out.push_str("-j DROP"),
            Target::Reject => out.push_str("-j REJECT"),
            Target::None => {}
        }
    }
}

impl Rule {
    /// Appends what follows `-A CHAIN ` in iptables-restore input.
    pub fn write_to(&self, out: &mut String) {
        let mut first = true;
        for m in &self.matches {
            if !first {
                out.push(' ');
            }
            first = false;
            m.write_to(out);
        }
        if self.target != Target::None {
            if !first {
                out.push(' ');
            }
            self.target.write_to(out);
        }
    }
}

/// `Display` for the typed rule parts: the same text as `write_to`, for messages and tests.
macro_rules! display_via_write_to {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut text = String::new();
                self.write_to(&mut text);
                f.write_str(&text)
            }
        }
    )*};
}
display_via_write_to!(Addr, Match, Target, Rule);

/// The two tables knat programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableName {
    Filter,
    Nat,
}

impl TableName {
    pub fn as_str(self) -> &'static str {
        match self {
            TableName::Filter => "filter",
            TableName::Nat => "nat",
        }
    }

    /// The builtin chains of the table, in `iptables-save` order.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            TableName::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            TableName::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        }
    }
}

/// The rules of one chain, shared between the compiler's cache, the rule set and the
/// planner's record of what was applied (cloning is a reference-count increment).
pub type ChainRules = Arc<Vec<Rule>>;

/// The user chains of one table; rule order inside a chain is significant. Chains are kept in
/// a hash map (assembling 100,000 chains into a sorted map on every sync costs more than
/// sorting once when rendering); use [`Table::sorted`] for deterministic output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub chains: HashMap<ChainName, ChainRules>,
}

impl Table {
    /// Declares a chain (empty if new) and returns its rules for appending.
    pub fn chain(&mut self, name: &ChainName) -> &mut Vec<Rule> {
        if !self.chains.contains_key(name) {
            self.chains.insert(name.clone(), ChainRules::default());
        }
        Arc::make_mut(self.chains.get_mut(name).expect("inserted above"))
    }

    /// Appends a rule to a chain, declaring the chain if needed.
    pub fn push(&mut self, chain: &ChainName, rule: Rule) {
        match self.chains.get_mut(chain) {
            Some(rules) => Arc::make_mut(rules).push(rule),
            None => {
                self.chains.insert(chain.clone(), Arc::new(vec![rule]));
            }
        }
    }

    /// Declares a chain with all of its rules at once (replacing any previous content).
    pub fn set(&mut self, chain: ChainName, rules: Vec<Rule>) {
        self.chains.insert(chain, Arc::new(rules));
    }

    /// Declares a chain with rules shared with someone else (a cached fragment).
    pub fn set_shared(&mut self, chain: ChainName, rules: ChainRules) {
        self.chains.insert(chain, rules);
    }

    /// Chains in name order.
    pub fn sorted(&self) -> Vec<(&ChainName, &ChainRules)> {
        let mut chains: Vec<_> = self.chains.iter().collect();
        chains.sort_unstable_by(|a, b| a.0.cmp(b.0));
        chains
    }

    /// Number of rules over all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|rules| rules.len()).sum()
    }
}

/// A jump from a builtin chain into one of ours, ensured on full syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub table: TableName,
    pub chain: ChainName,
    pub rule: Rule,
}

/// Everything knat wants in the kernel for one IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub family: IpFamily,
    pub filter: Table,
    pub nat: Table,
    /// Hook jumps, in the order they should appear at the top of each builtin chain.
    pub hooks: Vec<Hook>,
}

impl RuleSet {
    pub fn new(family: IpFamily) -> Self {
        RuleSet {
            family,
            filter: Table::default(),
            nat: Table::default(),
            hooks: Vec::new(),
        }
    }

    pub fn table(&self, name: TableName) -> &Table {
        match name {
            TableName::Filter => &self.filter,
            TableName::Nat => &self.nat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_upstream_argument_order() {
        let rule = Rule::new(
            vec![
                Match::Comment("demo/web:http cluster IP".into()),
                Match::Proto(Protocol::Tcp),
                Match::Dst {
                    negated: false,
                    addr: Addr::Ip("10.96.0.10".parse().unwrap()),
                },
                Match::DPort(80),
                Match::Src {
                    negated: true,
                    addr: Addr::Net("10.244.0.0/16".parse().unwrap()),
                },
            ],
            Target::Jump(ChainName::fixed("KUBE-MARK-MASQ")),
        );
        assert_eq!(
            rule.to_string(),
            "-m comment --comment \"demo/web:http cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"
        );
        let comment_only = Rule::new(vec![Match::Comment("x y".into())], Target::None);
        assert_eq!(comment_only.to_string(), "-m comment --comment \"x y\"");
        let bare = Rule::new(vec![Match::Comment("ns/svc:p".into())], Target::Return);
        assert_eq!(bare.to_string(), "-m comment --comment ns/svc:p -j RETURN");
    }
}
