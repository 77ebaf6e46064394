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

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(ip) => write!(f, "{ip}"),
            Addr::Net(net) => write!(f, "{net}"),
        }
    }
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

fn write_comment(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    if text.chars().any(char::is_whitespace) {
        write!(f, "-m comment --comment \"{text}\"")
    } else {
        write!(f, "-m comment --comment {text}")
    }
}

fn bang(negated: bool) -> &'static str {
    if negated { "! " } else { "" }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Comment(text) => write_comment(f, text),
            Match::Proto(p) => write!(f, "-m {p} -p {p}"),
            Match::Src { negated, addr } => write!(f, "{}-s {addr}", bang(*negated)),
            Match::Dst { negated, addr } => write!(f, "{}-d {addr}", bang(*negated)),
            Match::DPort(port) => write!(f, "--dport {port}"),
            Match::DPortRange(lo, hi) => write!(f, "--dport {lo}:{hi}"),
            Match::InIface { negated, name } => write!(f, "{}-i {name}", bang(*negated)),
            Match::AddrTypeLocal { dir, negated } => {
                let opt = match dir {
                    AddrTypeDir::Src => "--src-type",
                    AddrTypeDir::Dst => "--dst-type",
                };
                write!(f, "-m addrtype {}{opt} LOCAL", bang(*negated))
            }
            Match::Probability(p) => write!(f, "-m statistic --mode random --probability {p}"),
            Match::RecentCheck { name, seconds } => {
                write!(
                    f,
                    "-m recent --name {name} --rcheck --seconds {seconds} --reap"
                )
            }
            Match::RecentSet { name } => write!(f, "-m recent --name {name} --set"),
            Match::Mark { negated, mark } => {
                write!(f, "-m mark {}--mark {mark}/{mark}", bang(*negated))
            }
            Match::CtState { negated, states } => {
                write!(f, "-m conntrack {}--ctstate {states}", bang(*negated))
            }
            Match::Nfacct(name) => write!(f, "-m nfacct --nfacct-name {name}"),
        }
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// `-j CHAIN`.
    Jump(ChainName),
    /// `-j DNAT --to-destination ip:port`.
    Dnat(String),
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

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Jump(chain) => write!(f, "-j {chain}"),
            Target::Dnat(to) => write!(f, "-j DNAT --to-destination {to}"),
            Target::Masquerade { random_fully: true } => {
                f.write_str("-j MASQUERADE --random-fully")
            }
            Target::Masquerade {
                random_fully: false,
            } => f.write_str("-j MASQUERADE"),
            Target::MarkOr(mark) => write!(f, "-j MARK --or-mark {mark}"),
            Target::MarkXor(mark) => write!(f, "-j MARK --xor-mark {mark}"),
            Target::Return => f.write_str("-j RETURN"),
            Target::Accept => f.write_str("-j ACCEPT"),
            Target::Drop => f.write_str("-j DROP"),
            Target::Reject => f.write_str("-j REJECT"),
            Target::None => Ok(()),
        }
    }
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

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for m in &self.matches {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{m}")?;
        }
        if self.target != Target::None {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{}", self.target)?;
        }
        Ok(())
    }
}

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
