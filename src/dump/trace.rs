//! The packet tracer behind `knat trace`: follows one new connection through a [`Dump`] the way
//! the kernel would, and reports the verdict, every reachable DNAT target and whether the packet
//! is masqueraded.
//!
//! Walk order: nat PREROUTING (nat OUTPUT for `local` packets); then, with the destination as
//! DNAT left it, filter INPUT when it is local, else filter FORWARD and nat POSTROUTING; a `local`
//! packet goes through filter OUTPUT and nat POSTROUTING (and filter INPUT when the destination is
//! local). The mangle and raw tables are not walked.
//!
//! Branches: a rule with `-m statistic` is followed on a copy of the packet and scanning then
//! continues with the original, so every endpoint is found (as upstream's tracer does); a branch
//! that ends without a verdict is dropped. Each branch that ends in nat (DNAT, ACCEPT, ...) is then
//! walked through filter and POSTROUTING on its own, with its own packet mark. `masquerade` is true
//! if **any** branch that filter accepts is source-NATed (MASQUERADE or SNAT) in POSTROUTING; the
//! per-branch answers are in `branches` (a hairpin connection is masqueraded only in the branch
//! that picks the client's own endpoint). The verdict and the recorded filter/POSTROUTING path are
//! those of the first branch that DNATs (rule order), or of the only branch.
//!
//! Each branch also says how likely it is and why it is masqueraded: `chance` is the share of
//! new connections the kernel sends down it (the product of the `-m statistic` probabilities
//! taken, and of one minus those passed over; a `-m recent` affinity list is empty for the new
//! connection traced), `mark_set_by` the nat rule that set the packet mark POSTROUTING acted on
//! (the caller of a one-rule mark chain such as `KUBE-MARK-MASQ`: the hairpin rule
//! `-s <endpoint> -j KUBE-MARK-MASQ` of the endpoint's chain, or the service chain's
//! `! -s <cluster CIDR>` rule), and `masquerade_by` the MASQUERADE or SNAT rule itself.

use std::net::IpAddr;

use serde::Serialize;

use super::eval::{Env, Eval, Packet, eval_rule};
use super::matches::Match;
use super::model::{Dump, Rule};
use super::target::Target;
use crate::model::Protocol;

/// Nested jumps deeper than this are reported and not followed.
pub const MAX_DEPTH: usize = 64;

/// At most this many rule evaluations per trace; a dump whose branches fan out further is
/// reported and the rest treated as not matching (the kernel would walk one branch only).
pub const MAX_EVALUATIONS: usize = 250_000;

/// The packet to trace: the first packet of a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRequest {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Generated on the node (nat OUTPUT, filter OUTPUT; no input interface) rather than
    /// arriving from the network (nat PREROUTING, then filter INPUT or FORWARD).
    pub local: bool,
    /// Addresses that `-m addrtype --src-type/--dst-type LOCAL` treats as local; 127.0.0.0/8 and
    /// ::1 always are.
    pub node_ips: Vec<IpAddr>,
    /// The input interface of a packet from the network; `-i X` never matches when `None`.
    pub in_iface: Option<String>,
}

/// The outcome of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// Accepted with its destination translated.
    Dnat,
    /// Accepted unchanged.
    Accept,
    /// Dropped.
    Drop,
    /// Rejected.
    Reject,
}

impl Verdict {
    /// The upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Dnat => "DNAT",
            Verdict::Accept => "ACCEPT",
            Verdict::Drop => "DROP",
            Verdict::Reject => "REJECT",
        }
    }
}

/// One step of the recorded path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Table (`nat`, `filter`), or `route` for a routing decision.
    pub table: String,
    /// Chain.
    pub chain: String,
    /// Jump depth (0 in a built-in chain).
    pub depth: usize,
    /// 1-based position of the rule in its chain, if the step is a rule.
    pub rule_index: Option<usize>,
    /// Line of the rule in the parsed text.
    pub rule_line: Option<usize>,
    /// The rule text as parsed.
    pub rule: Option<String>,
    /// What happened.
    pub action: String,
}

/// A rule of the dump, named for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub table: String,
    pub chain: String,
    /// 1-based position in its chain.
    pub rule_index: usize,
    /// Line in the parsed text.
    pub rule_line: usize,
    /// The rule text as parsed.
    pub rule: String,
}

impl RuleRef {
    fn new(table: &str, chain: &str, index: usize, rule: &Rule) -> Self {
        RuleRef {
            table: table.to_string(),
            chain: chain.to_string(),
            rule_index: index + 1,
            rule_line: rule.line,
            rule: rule.text.clone(),
        }
    }
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} #{} (line {}): {}",
            self.table, self.chain, self.rule_index, self.rule_line, self.rule
        )
    }
}

/// The result of one branch (one way the connection can be load-balanced).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Branch {
    /// The DNAT target, if the branch DNATed.
    pub target: Option<String>,
    /// The branch's verdict.
    pub verdict: Verdict,
    /// Whether the branch is source-NATed in POSTROUTING.
    pub masquerade: bool,
    /// The share of new connections that take this branch (0 to 1).
    pub chance: f64,
    /// Masqueraded branches: the rule that set the packet mark (see the module header).
    pub mark_set_by: Option<RuleRef>,
    /// Masqueraded branches: the MASQUERADE or SNAT rule.
    pub masquerade_by: Option<RuleRef>,
}

/// What happens to the traced packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceResult {
    /// DROP/REJECT if filtered, else DNAT if translated, else ACCEPT.
    pub verdict: Verdict,
    /// Every `ip:port` reachable through the branches, sorted as strings, deduplicated.
    pub targets: Vec<String>,
    /// Whether any accepted branch is masqueraded.
    pub masquerade: bool,
    /// The path walked (every nat branch, then filter and POSTROUTING of the primary branch).
    pub path: Vec<Step>,
    /// Every branch, in rule order.
    pub branches: Vec<Branch>,
    /// Rules that could have matched but hold something the tracer does not understand; they
    /// were treated as not matching.
    pub unknown: Vec<String>,
}

/// How a table walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Accept,
    Drop,
    Reject,
    Dnat,
    SourceNat,
}

enum Flow {
    Next,
    Return,
    Stop(End),
}

/// What a branch carries besides the packet.
#[derive(Debug, Clone)]
struct Context {
    chance: f64,
    mark_set_by: Option<RuleRef>,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            chance: 1.0,
            mark_set_by: None,
        }
    }
}

struct Outcome {
    pkt: Packet,
    end: End,
    ctx: Context,
}

struct Tracer<'a> {
    dump: &'a Dump,
    env: Env,
    record: bool,
    path: Vec<Step>,
    unknown: Vec<String>,
    outcomes: Vec<Outcome>,
    /// The chains being walked (jumps into one of them would loop; the kernel forbids it).
    stack: Vec<String>,
    /// The rules that jumped into the chains being walked.
    callers: Vec<RuleRef>,
    /// The walking branch's chance and mark provenance.
    ctx: Context,
    /// The last MASQUERADE or SNAT rule that ran.
    snat_by: Option<RuleRef>,
    evaluations: usize,
}

struct At<'a> {
    table: &'a str,
    chain: &'a str,
    depth: usize,
}

/// Traces `req` through `dump`.
pub fn trace(dump: &Dump, req: &TraceRequest) -> TraceResult {
    let mut t = Tracer {
        dump,
        env: Env {
            local: req.local,
            in_iface: req.in_iface.clone(),
            node_ips: req.node_ips.clone(),
        },
        record: true,
        path: Vec::new(),
        unknown: Vec::new(),
        outcomes: Vec::new(),
        stack: Vec::new(),
        callers: Vec::new(),
        ctx: Context::default(),
        snat_by: None,
        evaluations: 0,
    };
    let mut pkt = Packet {
        src: req.src,
        dst: req.dst,
        dport: req.dport,
        protocol: req.protocol,
        mark: 0,
        dnat: None,
    };
    let hook = if req.local { "OUTPUT" } else { "PREROUTING" };
    let end = t.run_hook("nat", hook, &mut pkt);
    let ctx = std::mem::take(&mut t.ctx);
    t.outcomes.push(Outcome { pkt, end, ctx });
    let outcomes = std::mem::take(&mut t.outcomes);

    let primary = outcomes
        .iter()
        .position(|o| o.pkt.dnat.is_some())
        .unwrap_or(outcomes.len().saturating_sub(1));
    // The primary branch is walked first so that its filter/POSTROUTING path is the one recorded.
    let mut primary_branch = outcomes.get(primary).map(|o| t.finish(o));
    let verdict = primary_branch
        .as_ref()
        .map(|b| b.verdict)
        .unwrap_or(Verdict::Accept);
    t.record = false;
    let mut branches = Vec::with_capacity(outcomes.len());
    for (i, o) in outcomes.iter().enumerate() {
        let done = if i == primary {
            primary_branch.take()
        } else {
            None
        };
        branches.push(done.unwrap_or_else(|| t.finish(o)));
    }
    let mut targets: Vec<String> = branches.iter().filter_map(|b| b.target.clone()).collect();
    targets.sort();
    targets.dedup();
    TraceResult {
        verdict,
        targets,
        masquerade: branches.iter().any(|b| b.masquerade),
        path: t.path,
        branches,
        unknown: t.unknown,
    }
}

impl Tracer<'_> {
    /// Walks a packet that left nat through filter and POSTROUTING.
    fn finish(&mut self, outcome: &Outcome) -> Branch {
        let mut pkt = outcome.pkt.clone();
        self.ctx = outcome.ctx.clone();
        self.snat_by = None;
        let target = pkt.dnat.map(|d| d.to_string());
        let chance = outcome.ctx.chance;
        let filtered = |verdict| Branch {
            target: target.clone(),
            verdict,
            masquerade: false,
            chance,
            mark_set_by: None,
            masquerade_by: None,
        };
        match outcome.end {
            End::Drop => return filtered(Verdict::Drop),
            End::Reject => return filtered(Verdict::Reject),
            End::Accept | End::Dnat | End::SourceNat => {}
        }
        let dst_local = self.env.is_local(pkt.dst);
        let (first, postrouting, then_input) = match (self.env.local, dst_local) {
            (true, _) => ("OUTPUT", true, dst_local),
            (false, true) => ("INPUT", false, false),
            (false, false) => ("FORWARD", true, false),
        };
        self.note(
            first,
            format!(
                "destination {} is {}: filter {first}{}{}",
                pkt.dst,
                if dst_local { "local" } else { "not local" },
                if postrouting {
                    ", then nat POSTROUTING"
                } else {
                    ""
                },
                if then_input {
                    ", then filter INPUT"
                } else {
                    ""
                },
            ),
        );
        if let Some(verdict) = self.filter(first, &mut pkt) {
            return filtered(verdict);
        }
        let masquerade =
            postrouting && self.run_hook("nat", "POSTROUTING", &mut pkt) == End::SourceNat;
        if then_input && let Some(verdict) = self.filter("INPUT", &mut pkt) {
            return filtered(verdict);
        }
        let (mark_set_by, masquerade_by) = if masquerade {
            (self.ctx.mark_set_by.take(), self.snat_by.take())
        } else {
            (None, None)
        };
        Branch {
            verdict: if pkt.dnat.is_some() {
                Verdict::Dnat
            } else {
                Verdict::Accept
            },
            target,
            masquerade,
            chance,
            mark_set_by,
            masquerade_by,
        }
    }

    fn filter(&mut self, hook: &str, pkt: &mut Packet) -> Option<Verdict> {
        match self.run_hook("filter", hook, pkt) {
            End::Drop => Some(Verdict::Drop),
            End::Reject => Some(Verdict::Reject),
            End::Accept | End::Dnat | End::SourceNat => None,
        }
    }

    fn note(&mut self, chain: &str, action: String) {
        if self.record {
            self.path.push(Step {
                table: "route".into(),
                chain: chain.into(),
                depth: 0,
                rule_index: None,
                rule_line: None,
                rule: None,
                action,
            });
        }
    }

    fn record(&mut self, at: &At<'_>, rule: Option<(usize, &Rule)>, action: String) {
        if !self.record {
            return;
        }
        self.path.push(Step {
            table: at.table.to_string(),
            chain: at.chain.to_string(),
            depth: at.depth,
            rule_index: rule.map(|(i, _)| i + 1),
            rule_line: rule.map(|(_, r)| r.line),
            rule: rule.map(|(_, r)| r.text.clone()),
            action,
        });
    }

    fn report(&mut self, at: &At<'_>, rule: Option<(usize, &Rule)>, why: &str) {
        let entry = match rule {
            Some((i, r)) => format!(
                "{}/{} rule {} (line {}): {}: {why}",
                at.table,
                at.chain,
                i + 1,
                r.line,
                r.text
            ),
            None => format!("{}/{}: {why}", at.table, at.chain),
        };
        if !self.unknown.contains(&entry) {
            self.unknown.push(entry);
        }
    }

    /// Walks a built-in chain; a missing table or chain lets the packet pass.
    fn run_hook(&mut self, table: &str, hook: &str, pkt: &mut Packet) -> End {
        let at = At {
            table,
            chain: hook,
            depth: 0,
        };
        if self.dump.chain(table, hook).is_none() {
            self.record(
                &at,
                None,
                format!("no {table} {hook} chain in the dump: passes"),
            );
            return End::Accept;
        }
        self.record(&at, None, format!("enter {table} {hook}"));
        self.walk(table, hook, pkt, 0).unwrap_or(End::Accept)
    }

    /// Walks a chain; `Some(end)` when the packet's fate in this table is decided, `None` when the
    /// chain returns to its caller.
    fn walk(&mut self, table: &str, chain: &str, pkt: &mut Packet, depth: usize) -> Option<End> {
        let dump = self.dump;
        let c = dump.chain(table, chain)?;
        let at = At {
            table,
            chain,
            depth,
        };
        let mut fell_off = true;
        self.stack.push(chain.to_string());
        for (i, rule) in c.rules.iter().enumerate() {
            self.evaluations += 1;
            if self.evaluations > MAX_EVALUATIONS {
                let why = format!("more than {MAX_EVALUATIONS} rule evaluations: trace cut short");
                self.report(&at, None, &why);
                fell_off = false;
                break;
            }
            match self.step(&at, i, rule, pkt) {
                Flow::Next => {}
                Flow::Return => {
                    fell_off = false;
                    break;
                }
                Flow::Stop(end) => {
                    self.stack.pop();
                    return Some(end);
                }
            }
        }
        self.stack.pop();
        match &c.policy {
            Some(policy) => {
                self.record(&at, None, format!("end of built-in chain: policy {policy}"));
                Some(if policy == "DROP" {
                    End::Drop
                } else {
                    End::Accept
                })
            }
            None => {
                if fell_off {
                    self.record(&at, None, "end of chain: return to the caller".into());
                }
                None
            }
        }
    }

    fn step(&mut self, at: &At<'_>, i: usize, rule: &Rule, pkt: &mut Packet) -> Flow {
        match eval_rule(rule, pkt, &self.env) {
            Eval::NoMatch => Flow::Next,
            Eval::Unknown(why) => {
                self.report(at, Some((i, rule)), &why);
                self.record(
                    at,
                    Some((i, rule)),
                    format!("not understood ({why}): treated as not matching"),
                );
                Flow::Next
            }
            Eval::Matches { branch: None } => self.exec(at, i, rule, pkt, None),
            Eval::Matches { branch: Some(desc) } => {
                let p = branch_probability(rule);
                let saved = self.ctx.clone();
                self.ctx.chance *= p;
                let mut copy = pkt.clone();
                if let Flow::Stop(end) = self.exec(at, i, rule, &mut copy, Some(&desc)) {
                    let ctx = self.ctx.clone();
                    self.outcomes.push(Outcome {
                        pkt: copy,
                        end,
                        ctx,
                    });
                }
                self.ctx = saved;
                self.ctx.chance *= 1.0 - p;
                Flow::Next
            }
        }
    }

    fn exec(
        &mut self,
        at: &At<'_>,
        i: usize,
        rule: &Rule,
        pkt: &mut Packet,
        branch: Option<&str>,
    ) -> Flow {
        let here = Some((i, rule));
        let label = |action: String| match branch {
            Some(desc) => format!("branch ({desc}): {action}; scanning continues after it"),
            None => action,
        };
        match &rule.target {
            Target::None => {
                self.record(at, here, label("matches (no target)".into()));
                Flow::Next
            }
            Target::Jump(chain) | Target::Goto(chain) => {
                let goto = matches!(rule.target, Target::Goto(_));
                if self.dump.chain(at.table, chain).is_none() {
                    let why = format!("jump to missing chain `{chain}`");
                    self.report(at, here, &why);
                    self.record(at, here, label(format!("{why}: treated as not matching")));
                    return Flow::Next;
                }
                if self.stack.iter().any(|c| c == chain) {
                    let why = format!("jump to `{chain}` loops (the kernel refuses loops)");
                    self.report(at, here, &why);
                    self.record(at, here, label(format!("{why}: not followed")));
                    return Flow::Next;
                }
                if at.depth >= MAX_DEPTH {
                    let why = format!("jump depth limit {MAX_DEPTH} reached");
                    self.report(at, here, &why);
                    self.record(at, here, label(format!("{why}: not followed")));
                    return Flow::Next;
                }
                let verb = if goto { "goto" } else { "jump to" };
                self.record(at, here, label(format!("{verb} {chain}")));
                self.callers.push(RuleRef::new(at.table, at.chain, i, rule));
                let end = self.walk(at.table, chain, pkt, at.depth + 1);
                self.callers.pop();
                match end {
                    Some(end) => Flow::Stop(end),
                    None if goto => Flow::Return,
                    None => Flow::Next,
                }
            }
            Target::Accept => self.stop(at, here, label("ACCEPT".into()), End::Accept),
            Target::Drop => self.stop(at, here, label("DROP".into()), End::Drop),
            Target::Reject { .. } => self.stop(at, here, label("REJECT".into()), End::Reject),
            Target::Return => {
                self.record(at, here, label("RETURN to the caller".into()));
                Flow::Return
            }
            Target::Dnat { to, .. } => {
                pkt.dst = to.ip;
                if let Some(port) = to.port {
                    pkt.dport = port;
                }
                pkt.dnat = Some(*to);
                self.stop(at, here, label(format!("DNAT to {to}")), End::Dnat)
            }
            Target::Snat { to, .. } => {
                self.snat_by = Some(RuleRef::new(at.table, at.chain, i, rule));
                self.stop(at, here, label(format!("SNAT to {to}")), End::SourceNat)
            }
            Target::Masquerade { .. } => {
                self.snat_by = Some(RuleRef::new(at.table, at.chain, i, rule));
                self.stop(at, here, label("MASQUERADE".into()), End::SourceNat)
            }
            Target::Mark { value, mask } => {
                let before = pkt.mark;
                pkt.mark = Target::apply_mark(*value, *mask, before);
                if pkt.mark & !before != 0 {
                    self.ctx.mark_set_by = Some(self.mark_cause(at, i, rule));
                }
                let action = format!("MARK {before:#x} -> {:#x}", pkt.mark);
                self.record(at, here, label(action));
                Flow::Next
            }
            Target::Other { name, .. } => {
                let why = format!("target `{name}` is not modelled");
                self.report(at, here, &why);
                self.record(at, here, label(format!("{why}: ignored")));
                Flow::Next
            }
        }
    }

    /// Who set a mark: the caller of a one-rule chain (`-j KUBE-MARK-MASQ`), else the rule.
    fn mark_cause(&self, at: &At<'_>, i: usize, rule: &Rule) -> RuleRef {
        let one_rule_chain = self
            .dump
            .chain(at.table, at.chain)
            .is_some_and(|c| c.rules.len() == 1);
        match self.callers.last() {
            Some(caller) if one_rule_chain && at.depth > 0 => caller.clone(),
            _ => RuleRef::new(at.table, at.chain, i, rule),
        }
    }

    fn stop(
        &mut self,
        at: &At<'_>,
        here: Option<(usize, &Rule)>,
        action: String,
        end: End,
    ) -> Flow {
        self.record(at, here, action);
        Flow::Stop(end)
    }
}

/// The probability that a rule's `-m statistic` match holds (1 without one).
fn branch_probability(rule: &Rule) -> f64 {
    rule.matches
        .iter()
        .find_map(|m| match m {
            Match::Statistic { negated, mode } => {
                let p = mode.probability().clamp(0.0, 1.0);
                Some(if *negated { 1.0 - p } else { p })
            }
            _ => None,
        })
        .unwrap_or(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::read::parse;

    fn request(src: &str, dst: &str, dport: u16) -> TraceRequest {
        TraceRequest {
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            dport,
            protocol: Protocol::Tcp,
            local: false,
            node_ips: vec!["192.168.0.2".parse().expect("ip")],
            in_iface: None,
        }
    }

    fn run(text: &str, req: &TraceRequest) -> TraceResult {
        trace(&parse(text).expect("dump parses"), req)
    }

    #[test]
    fn goto_returns_to_the_callers_caller() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n\
-A PREROUTING -j A\n-A PREROUTING -j DNAT --to-destination 10.0.0.2:8080\n\
-A A -g B\n-A A -j DNAT --to-destination 10.0.0.1:80\n-A B -j RETURN\nCOMMIT\n";
        let r = run(text, &request("1.1.1.1", "2.2.2.2", 80));
        assert_eq!(r.verdict, Verdict::Dnat);
        assert_eq!(r.targets, vec!["10.0.0.2:8080"]);
        assert!(r.unknown.is_empty());
    }

    #[test]
    fn return_from_a_builtin_chain_applies_the_policy() {
        let text = "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n-A INPUT -p udp -j ACCEPT\n-A INPUT -j RETURN\n-A INPUT -j ACCEPT\nCOMMIT\n";
        let r = run(text, &request("1.1.1.1", "192.168.0.2", 22));
        assert_eq!(r.verdict, Verdict::Drop);
        let last = r.path.last().expect("path");
        assert_eq!(last.action, "end of built-in chain: policy DROP");
        // Not local: FORWARD, whose policy accepts.
        assert_eq!(
            run(text, &request("1.1.1.1", "8.8.8.8", 22)).verdict,
            Verdict::Accept
        );
    }

    #[test]
    fn marks_are_modelled() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
-A PREROUTING -s 10.0.0.0/8 -j KUBE-MARK-MASQ\n\
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
-A POSTROUTING -j KUBE-POSTROUTING\n\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
-A KUBE-POSTROUTING -j MASQUERADE --random-fully\nCOMMIT\n";
        let marked = run(text, &request("10.1.1.1", "8.8.8.8", 53));
        assert!(marked.masquerade);
        assert_eq!(marked.verdict, Verdict::Accept);
        assert!(marked.path.iter().any(|s| s.action == "MARK 0x0 -> 0x4000"));
        assert!(marked.path.iter().any(|s| s.action == "MARK 0x4000 -> 0x0"));
        let unmarked = run(text, &request("11.1.1.1", "8.8.8.8", 53));
        assert!(!unmarked.masquerade);
        // The caller of the one-rule mark chain asked; clearing the mark later does not count.
        let b = &marked.branches[0];
        let mark = b.mark_set_by.as_ref().expect("marked");
        assert_eq!(
            (mark.chain.as_str(), mark.rule_index, mark.rule_line),
            ("PREROUTING", 1, 6)
        );
        assert_eq!(mark.rule, "-s 10.0.0.0/8 -j KUBE-MARK-MASQ");
        let snat = b.masquerade_by.as_ref().expect("source NAT");
        assert_eq!(
            snat.to_string(),
            "nat KUBE-POSTROUTING #3 (line 11): -j MASQUERADE --random-fully"
        );
        assert_eq!(unmarked.branches[0].mark_set_by, None);
        assert_eq!(unmarked.branches[0].masquerade_by, None);
    }

    #[test]
    fn a_mark_set_inside_a_longer_chain_names_its_own_rule() {
        let text = "*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SEP - [0:0]
-A PREROUTING -j SEP
-A SEP -s 10.0.0.5/32 -j MARK --or-mark 0x4000
-A SEP -p tcp -j DNAT --to-destination 10.0.0.5:80
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
COMMIT
";
        let r = run(text, &request("10.0.0.5", "172.30.0.1", 80));
        assert!(r.masquerade);
        let mark = r.branches[0].mark_set_by.as_ref().expect("marked");
        assert_eq!((mark.chain.as_str(), mark.rule_index), ("SEP", 1));
    }

    #[test]
    fn snat_counts_as_masquerade() {
        let text = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j SNAT --to-source 192.168.0.2\nCOMMIT\n";
        assert!(run(text, &request("10.1.1.1", "8.8.8.8", 53)).masquerade);
    }

    #[test]
    fn statistic_branches_are_all_explored() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:SVC - [0:0]\n:SEP1 - [0:0]\n:SEP2 - [0:0]\n:SEP3 - [0:0]\n\
-A PREROUTING -d 172.30.0.1 -j SVC\n\
-A SVC -m statistic --mode nth --every 3 --packet 0 -j SEP3\n\
-A SVC -m statistic --mode random --probability 0.5 -j SEP1\n\
-A SVC -j SEP2\n\
-A SEP1 -p tcp -j DNAT --to-destination 10.0.0.1:80\n\
-A SEP2 -p tcp -j DNAT --to-destination 10.0.0.2:80\n\
-A SEP3 -p tcp -j DNAT --to-destination 10.0.0.10:80\nCOMMIT\n";
        let r = run(text, &request("1.1.1.1", "172.30.0.1", 80));
        assert_eq!(
            r.targets,
            vec!["10.0.0.10:80", "10.0.0.1:80", "10.0.0.2:80"]
        );
        assert_eq!(r.branches.len(), 3);
        assert_eq!(r.branches[0].target.as_deref(), Some("10.0.0.10:80"));
        // A third each: 1/3 by the nth rule, half of the remaining 2/3, the rest.
        let chances: Vec<f64> = r.branches.iter().map(|b| b.chance).collect();
        for c in &chances {
            assert!((c - 1.0 / 3.0).abs() < 1e-9, "{chances:?}");
        }
        assert_eq!(
            (
                r.branches[1].target.as_deref(),
                r.branches[2].target.as_deref()
            ),
            (Some("10.0.0.1:80"), Some("10.0.0.2:80"))
        );
        assert_eq!(r.verdict, Verdict::Dnat);
        // The primary branch (first DNAT in rule order) decides the routing step.
        assert!(
            r.path
                .iter()
                .any(|s| s.table == "route" && s.action.contains("10.0.0.10"))
        );
        // UDP matches none of the DNAT rules.
        let mut udp = request("1.1.1.1", "172.30.0.1", 80);
        udp.protocol = Protocol::Udp;
        let r = run(text, &udp);
        assert_eq!(r.verdict, Verdict::Accept);
        assert!(r.targets.is_empty());
    }

    #[test]
    fn unknown_things_are_reported_and_do_not_match() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n\
-A PREROUTING -m limit --limit 1/s -j DNAT --to-destination 10.0.0.9:80\n\
-A PREROUTING -d 9.9.9.9 -m limit --limit 1/s -j DNAT --to-destination 10.0.0.8:80\n\
-A PREROUTING -j KUBE-MISSING\n\
-A PREROUTING -j LOG --log-prefix x\n\
-A PREROUTING -o eth0 -j ACCEPT\n\
-A PREROUTING -j A\n-A A -j PREROUTING2\n\
-A PREROUTING -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n";
        let r = run(text, &request("1.1.1.1", "2.2.2.2", 80));
        assert_eq!(r.targets, vec!["10.0.0.1:80"]);
        assert_eq!(r.unknown.len(), 5, "{:#?}", r.unknown);
        assert!(r.unknown[0].starts_with("nat/PREROUTING rule 1 (line 4): -m limit --limit 1/s"));
        assert!(r.unknown[1].contains("jump to missing chain `KUBE-MISSING`"));
        assert!(r.unknown[2].contains("target `LOG` is not modelled"));
        assert!(r.unknown[3].contains("output interface"));
        assert!(r.unknown[4].contains("nat/A rule 1"));
    }

    #[test]
    fn loops_are_reported_and_not_followed() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A PREROUTING -j A\n-A A -j B\n-A B -j A\nCOMMIT\n";
        let r = run(text, &request("1.1.1.1", "2.2.2.2", 80));
        assert_eq!(r.verdict, Verdict::Accept);
        assert_eq!(r.unknown.len(), 1);
        assert!(r.unknown[0].starts_with("nat/B rule 1 (line 7): -j A: jump to `A` loops"));
    }

    #[test]
    fn deep_chains_stop_at_the_depth_limit() {
        let mut text = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j C0\n");
        for i in 0..=MAX_DEPTH + 1 {
            text.push_str(&format!("-A C{i} -j C{}\n", i + 1));
        }
        text.push_str("COMMIT\n");
        let r = run(&text, &request("1.1.1.1", "2.2.2.2", 80));
        assert_eq!(r.verdict, Verdict::Accept);
        assert_eq!(r.unknown.len(), 1, "{:?}", r.unknown);
        assert!(r.unknown[0].contains("depth limit"));
    }

    #[test]
    fn fan_out_is_bounded() {
        // 24 levels of two probabilistic jumps each would be 2^24 paths.
        let mut text = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j C0\n");
        for i in 0..24 {
            for _ in 0..2 {
                text.push_str(&format!(
                    "-A C{i} -m statistic --mode random --probability 0.5 -j C{}\n",
                    i + 1
                ));
            }
        }
        text.push_str("-A C24 -j RETURN\nCOMMIT\n");
        let r = run(&text, &request("1.1.1.1", "2.2.2.2", 80));
        assert_eq!(r.verdict, Verdict::Accept);
        assert!(
            r.unknown.iter().any(|u| u.contains("trace cut short")),
            "{:?}",
            r.unknown
        );
    }

    #[test]
    fn empty_dump_accepts() {
        let r = trace(&Dump::default(), &request("1.1.1.1", "2.2.2.2", 80));
        assert_eq!(r.verdict, Verdict::Accept);
        assert!(r.targets.is_empty() && !r.masquerade && r.unknown.is_empty());
        assert_eq!(r.branches.len(), 1);
    }

    #[test]
    fn local_packets_walk_output_chains() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
-A PREROUTING -j DNAT --to-destination 10.0.0.1:80\n-A OUTPUT -j DNAT --to-destination 10.0.0.2:80\nCOMMIT\n\
*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -d 10.0.0.2 -j REJECT\nCOMMIT\n";
        let mut req = request("192.168.0.2", "172.30.0.1", 80);
        assert_eq!(run(text, &req).targets, vec!["10.0.0.1:80"]);
        req.local = true;
        let r = run(text, &req);
        assert_eq!(r.verdict, Verdict::Reject);
        assert_eq!(r.targets, vec!["10.0.0.2:80"]);
    }

    #[test]
    fn ipv6_service() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-SVC-X - [0:0]\n\
-A PREROUTING -j KUBE-SERVICES\n\
-A KUBE-SERVICES -d fd00:10:96::a/128 -p tcp -m tcp --dport 80 -j KUBE-SVC-X\n\
-A KUBE-SERVICES -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS\n\
-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-SVC-X\n\
-A KUBE-SVC-X -p tcp -m tcp -j DNAT --to-destination [fd00:10:244::5]:8080\nCOMMIT\n";
        let mut req = request("fd00:10:244::9", "fd00:10:96::a", 80);
        req.node_ips = vec!["2001:db8::2".parse().expect("ip")];
        let r = run(text, &req);
        assert_eq!(r.targets, vec!["[fd00:10:244::5]:8080"]);
        req.dst = "2001:db8::2".parse().expect("ip");
        req.dport = 30080;
        assert_eq!(run(text, &req).targets, vec!["[fd00:10:244::5]:8080"]);
        // IPv6 never supports localhost node ports.
        req.dst = "::1".parse().expect("ip");
        req.src = "::1".parse().expect("ip");
        req.local = true;
        assert!(run(text, &req).targets.is_empty());
    }

    #[test]
    fn serialises_verdict_in_upper_case() {
        let r = trace(&Dump::default(), &request("1.1.1.1", "2.2.2.2", 80));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["verdict"], "ACCEPT");
        assert_eq!(json["masquerade"], false);
        assert_eq!(serde_json::to_value(Verdict::Dnat).expect("json"), "DNAT");
        assert_eq!(
            serde_json::to_value(Verdict::Reject).expect("json"),
            "REJECT"
        );
    }
}
