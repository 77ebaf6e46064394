//! Typed iptables rules with a `Display` that reproduces upstream's argument order exactly.
//!
//! This is the *writer's* model: only what kube-proxy's iptables mode emits (its matches, its
//! targets, its argument order), built by the compiler on every sync and rendered straight into
//! restore text. `crate::dump` has a second model of the same nouns (`Match`, `Target`, `Rule`,
//! `Table`) on purpose: the *reader's*, for any `iptables-save` dump (kube-proxy's, a CNI's, a
//! firewall's), with every extension knat understands, normalised values and semantic
//! equality. The compiler must not pay for the reader's generality, and the reader must not be
//! limited to what knat writes; the golden and trace tests tie the two together (what this
//! model renders, the dump model parses back to the same rules).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::chain::ChainName;
use super::service_list::{Keyed, ServiceList};
use crate::model::{IpFamily, Protocol, ServiceName};
use crate::text::{push_ip, push_num};

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

/// Appends what follows `-A CHAIN ` in iptables-restore input for `matches` and `target`
/// (the rule's parts need not live in a [`Rule`], so hot paths keep them on the stack).
pub fn write_rule<'a>(
    out: &mut String,
    matches: impl IntoIterator<Item = &'a Match>,
    target: &Target,
) {
    let mut first = true;
    for m in matches {
        if !first {
            out.push(' ');
        }
        first = false;
        m.write_to(out);
    }
    if *target != Target::None {
        if !first {
            out.push(' ');
        }
        target.write_to(out);
    }
}

impl Rule {
    /// Appends what follows `-A CHAIN ` in iptables-restore input.
    pub fn write_to(&self, out: &mut String) {
        write_rule(out, &self.matches, &self.target);
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

/// The rules of one chain, kept as the text iptables-restore takes: `-A CHAIN RULE` lines, each
/// ended by a newline. Rules are rendered once, when they are compiled; a rule set of 300,000
/// rules is then about 33 MB of text in some 100,000 buffers instead of millions of small typed
/// objects, and rendering a payload is copying.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleText {
    chain: ChainName,
    text: String,
    count: usize,
}

/// The digest of rule text: SipHash-1-3 with two random keys per process (128 bits; the keys
/// are not known outside the process, so text cannot be crafted to collide).
pub fn text_digest(text: &str) -> u128 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    static KEYS: OnceLock<[std::collections::hash_map::RandomState; 2]> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    let half = |state: &std::collections::hash_map::RandomState| {
        let mut hasher = state.build_hasher();
        hasher.write(text.as_bytes());
        hasher.finish()
    };
    (u128::from(half(&keys[0])) << 64) | u128::from(half(&keys[1]))
}

/// The first allocation of a chain's text: two rules of a KUBE-SEP chain (about 200 bytes).
const FIRST_CAPACITY: usize = 256;

impl RuleText {
    /// No rules yet, for `chain`.
    pub fn new(chain: ChainName) -> Self {
        RuleText {
            chain,
            text: String::new(),
            count: 0,
        }
    }

    /// Appends one rule given by its parts.
    pub fn push<'a>(&mut self, matches: impl IntoIterator<Item = &'a Match>, target: &Target) {
        self.reserve_first();
        self.text.push_str("-A ");
        self.text.push_str(self.chain.as_str());
        self.text.push(' ');
        write_rule(&mut self.text, matches, target);
        self.text.push('\n');
        self.count += 1;
    }

    /// Appends one rule already rendered (what follows `-A CHAIN `).
    pub fn push_rendered(&mut self, rule: &str) {
        self.reserve_first();
        self.text.push_str("-A ");
        self.text.push_str(self.chain.as_str());
        self.text.push(' ');
        self.text.push_str(rule);
        self.text.push('\n');
        self.count += 1;
    }

    /// Gives an empty buffer room for a few rules at once: growing from nothing by doubling
    /// reallocates (and copies) five times before the first 256 bytes, for every chain.
    fn reserve_first(&mut self) {
        if self.text.capacity() == 0 {
            self.text.reserve(FIRST_CAPACITY);
        }
    }

    /// Appends one typed rule.
    pub fn push_rule(&mut self, rule: &Rule) {
        self.push(&rule.matches, &rule.target);
    }

    /// Appends every rule of `other` (a list for the same chain), in order.
    pub fn append(&mut self, other: &RuleText) {
        debug_assert_eq!(self.chain, other.chain);
        self.text.push_str(&other.text);
        self.count += other.count;
    }

    /// The chain these rules belong to.
    pub fn chain(&self) -> &ChainName {
        &self.chain
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `-A CHAIN RULE` lines, each without its newline.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split_terminator('\n')
    }

    /// All `-A` lines, each followed by a newline: this chain's part of a restore payload.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The digest of the text ([`text_digest`]).
    pub fn digest(&self) -> u128 {
        text_digest(&self.text)
    }
}

/// The rules of one chain, shared between the compiler's cache, the rule set and the
/// planner's record of what was applied (cloning is a reference-count increment).
pub type ChainRules = Arc<RuleText>;

/// One chain's rules as restore text, borrowed: a named chain's [`RuleText`] or one chain of a
/// [`ChainGroup`]. What the planner, the payload and the renderer handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainText<'a> {
    name: &'a str,
    text: &'a str,
    count: usize,
}

impl<'a> ChainText<'a> {
    /// The chain's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// All `-A` lines, each followed by a newline.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The digest of the text ([`text_digest`]).
    pub fn digest(&self) -> u128 {
        text_digest(self.text)
    }
}

impl RuleText {
    /// The same rules, borrowed as a [`ChainText`].
    pub fn view(&self) -> ChainText<'_> {
        ChainText {
            name: self.chain.as_str(),
            text: &self.text,
            count: self.count,
        }
    }
}

/// The own chains of one Service (SVC, SVL, EXT, FW, SEP), compiled together and shared as a
/// unit by the compiler's cache, the rule set and the planner's record of what was applied:
/// an unchanged Service costs one pointer comparison, not one map entry per chain. Chain names
/// in a group are derived from the Service's own name, so no two groups share a chain.
///
/// The group is three buffers, whatever its number of chains: every chain name (each followed
/// by a newline), every chain's text one after the other, and per chain where its name and
/// text end and its rule count. At 10,000 Services x 10 endpoints that is 30,000 allocations
/// instead of 330,000 (a name, a text buffer and a typed wrapper per chain), about 10 MB less
/// at the compile's peak.
///
/// Once the kernel has a group, its text may be released ([`ChainGroup::released`]): what
/// remains is each chain's name, rule count and 128-bit digest, which is all the planner needs
/// to tell which chains of a recompiled Service changed and which to delete. Released text
/// cannot be written; full syncs recompile every Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainGroup {
    pub key: ServiceName,
    /// The chain names in declaration order, each followed by a newline.
    names: Box<str>,
    /// Per chain, in the same order: where its name and its text end, and its rule count.
    spans: Box<[ChainSpan]>,
    /// Every chain's text, in the same order; `None` once released.
    text: Option<Box<str>>,
    /// Per chain, the digest of its text; kept only once the text is released.
    digests: Option<Box<[u128]>>,
    /// Rules over the chains (counted once: planning sums it over every group).
    rules: usize,
}

/// Where one chain of a group ends in the group's buffers, and its rule count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChainSpan {
    name_end: u32,
    text_end: u32,
    count: u32,
}

/// One chain of a group as the planner compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary<'a> {
    pub name: &'a str,
    pub count: usize,
    pub digest: u128,
}

/// An offset into a group's buffer (a group's text is far below 4 GiB).
fn offset(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl ChainGroup {
    /// The group of `chains`, copied into the group's buffers (each of its exact size).
    pub fn new(key: ServiceName, chains: Vec<RuleText>) -> Self {
        let names_len = chains.iter().map(|c| c.chain().as_str().len() + 1).sum();
        let text_len = chains.iter().map(|c| c.as_str().len()).sum();
        let mut names = String::with_capacity(names_len);
        let mut text = String::with_capacity(text_len);
        let mut spans = Vec::with_capacity(chains.len());
        for chain in &chains {
            names.push_str(chain.chain().as_str());
            names.push('\n');
            text.push_str(chain.as_str());
            spans.push(ChainSpan {
                name_end: offset(names.len()),
                text_end: offset(text.len()),
                count: offset(chain.len()),
            });
        }
        ChainGroup {
            key,
            rules: chains.iter().map(RuleText::len).sum(),
            names: names.into_boxed_str(),
            spans: spans.into_boxed_slice(),
            text: Some(text.into_boxed_str()),
            digests: None,
        }
    }

    /// The same group with its text released (names, counts and digests kept, in fresh
    /// allocations).
    pub fn released(&self) -> ChainGroup {
        let digests = match &self.digests {
            Some(digests) => digests.clone(),
            None => self.chains().map(|c| c.digest()).collect(),
        };
        ChainGroup {
            key: self.key.clone(),
            names: self.names.clone(),
            spans: self.spans.clone(),
            text: None,
            digests: Some(digests),
            rules: self.rules,
        }
    }

    /// True once the text was released.
    pub fn is_released(&self) -> bool {
        self.text.is_none()
    }

    /// Every chain's name and rule count with where its text is, in declaration order.
    fn parts(&self) -> impl Iterator<Item = (&str, std::ops::Range<usize>, usize)> {
        let mut name_start = 0;
        let mut text_start = 0;
        self.spans.iter().map(move |span| {
            let (name_end, text_end) = (span.name_end as usize, span.text_end as usize);
            // The name without its newline.
            let name = self.names.get(name_start..name_end - 1).unwrap_or_default();
            let text = text_start..text_end;
            name_start = name_end;
            text_start = text_end;
            (name, text, span.count as usize)
        })
    }

    /// The chains with their text, in declaration order (none once released).
    pub fn chains(&self) -> impl Iterator<Item = ChainText<'_>> {
        self.text.as_deref().into_iter().flat_map(|text| {
            self.parts().map(move |(name, range, count)| ChainText {
                name,
                text: text.get(range).unwrap_or_default(),
                count,
            })
        })
    }

    /// Name, rule count and digest of every chain (digests of text are computed here).
    pub fn summaries(&self) -> Vec<ChainSummary<'_>> {
        match &self.digests {
            Some(digests) => self
                .parts()
                .zip(digests.iter())
                .map(|((name, _, count), &digest)| ChainSummary {
                    name,
                    count,
                    digest,
                })
                .collect(),
            None => self
                .chains()
                .map(|c| ChainSummary {
                    name: c.name(),
                    count: c.len(),
                    digest: c.digest(),
                })
                .collect(),
        }
    }

    /// The chain names, in declaration order.
    pub fn chain_names(&self) -> Vec<&str> {
        self.names.split_terminator('\n').collect()
    }

    /// Number of chains.
    pub fn chain_count(&self) -> usize {
        self.spans.len()
    }

    /// Number of rules over the group's chains.
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// Bytes of rule text over the group's chains (0 once released).
    pub fn text_len(&self) -> usize {
        self.text.as_deref().map_or(0, str::len)
    }
}

/// The user chains of one table; rule order inside a chain is significant. Chains built per
/// sync (fixed chains, the dispatch tree, the shared KUBE-* lists) are kept by name; the
/// Services' own chains come in groups, in Service order. Both are shared: a rule set that
/// reuses its parent's named chains and groups copies two pointers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub chains: Arc<HashMap<ChainName, ChainRules>>,
    pub groups: ServiceList<Arc<ChainGroup>>,
}

impl Keyed for Arc<ChainGroup> {
    fn key(&self) -> &ServiceName {
        &self.key
    }
    fn counts(&self) -> (usize, usize) {
        (self.chain_count(), self.rule_count())
    }
}

impl Table {
    /// Declares a chain (empty if new) and returns its rules for appending.
    pub fn chain(&mut self, name: &ChainName) -> &mut RuleText {
        let chains = Arc::make_mut(&mut self.chains);
        let rules = chains
            .entry(name.clone())
            .or_insert_with(|| Arc::new(RuleText::new(name.clone())));
        Arc::make_mut(rules)
    }

    /// Appends a rule to a chain, declaring the chain if needed.
    pub fn push(&mut self, chain: &ChainName, rule: Rule) {
        self.chain(chain).push_rule(&rule);
    }

    /// Every chain in output order: the named chains sorted by name, then the groups' chains
    /// in group order. A group whose text was released contributes nothing: render only fresh
    /// compilations (the agent's planner refuses released groups it would have to write).
    pub fn ordered(&self) -> impl Iterator<Item = ChainText<'_>> {
        let mut named: Vec<&RuleText> = self.chains.values().map(|rules| &**rules).collect();
        named.sort_unstable_by(|a, b| a.chain().cmp(b.chain()));
        named
            .into_iter()
            .map(RuleText::view)
            .chain(self.group_chains())
    }

    /// The chains of every group that still has its text.
    pub fn group_chains(&self) -> impl Iterator<Item = ChainText<'_>> {
        self.groups.iter().flat_map(|group| group.chains())
    }

    /// Number of chains.
    pub fn chain_count(&self) -> usize {
        self.chains.len() + self.groups.chain_count()
    }

    /// Number of rules over all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|rules| rules.len()).sum::<usize>() + self.groups.rule_count()
    }

    /// Bytes of rule text over all chains (what rendering copies).
    pub fn text_len(&self) -> usize {
        self.chains
            .values()
            .map(|rules| rules.as_str().len())
            .sum::<usize>()
            + self.groups.iter().map(|g| g.text_len()).sum::<usize>()
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
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub family: IpFamily,
    pub filter: Table,
    pub nat: Table,
    /// Hook jumps, in the order they should appear at the top of each builtin chain.
    pub hooks: Vec<Hook>,
    /// This rule set's identity (unique in the process), recorded by the planner.
    pub id: u64,
    /// How it differs from the rule set the same incremental compiler produced before it.
    pub lineage: Option<Lineage>,
}

/// How a rule set differs from its parent, the previous output of the same incremental
/// compiler. With the record of the parent applied, the planner looks only at this: a sync's
/// planning costs what changed, not the cluster.
#[derive(Debug, Clone)]
pub struct Lineage {
    pub parent: u64,
    /// Services whose nat group was recompiled, added or removed: the group now (`None` or an
    /// empty group: the Service has no chains of its own any more).
    pub changed_groups: Vec<(ServiceName, Option<Arc<ChainGroup>>)>,
    /// The named chains of both tables and the hooks are the parent's, unchanged.
    pub named_unchanged: bool,
}

/// Equal rules; identity and lineage are bookkeeping.
impl PartialEq for RuleSet {
    fn eq(&self, other: &Self) -> bool {
        self.family == other.family
            && self.filter == other.filter
            && self.nat == other.nat
            && self.hooks == other.hooks
    }
}

impl Eq for RuleSet {}

/// A fresh rule-set identity.
pub fn next_rule_set_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl RuleSet {
    pub fn new(family: IpFamily) -> Self {
        RuleSet {
            family,
            filter: Table::default(),
            nat: Table::default(),
            hooks: Vec::new(),
            id: next_rule_set_id(),
            lineage: None,
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
