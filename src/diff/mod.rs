//! `knat diff`'s comparison: the live tables of a node (a parsed `iptables-save` [`Dump`]) against
//! the rules knat would program now, chain by chain, described in an operator's words.
//!
//! Pure: both sides are values. The desired side is knat's own restore payload parsed back into
//! a [`Dump`] ([`desired_dump`]), so equality is by meaning (`-m tcp` spelling, `/32` suffixes,
//! quoting and line numbers do not matter). Only the `filter` and `nat` tables are compared, and
//! in them only knat's chains: chains knat would program, the hook jumps it adds to the builtin
//! chains, and per-service chains (`KUBE-SVC-…`, `KUBE-SEP-…`, …) it would not program (stale).
//! Other chains and other rules in builtin chains belong to someone else and are left alone.

pub mod align;
pub mod render;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::dump::model::is_builtin;
use crate::dump::{Dump, Match, ParseError, Rule, Target, parse};
use crate::model::ServicePortName;
use crate::rules::{ChainName, RuleSet, render_standalone};

/// Diff errors.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// knat's own payload could not be parsed back. Not retryable (a bug in knat).
    #[error("cannot parse knat's own payload back: {0}")]
    Desired(#[source] ParseError),
}

/// The tables knat programs, in comparison order.
pub const TABLES: [&str; 2] = ["filter", "nat"];

/// What kind of difference a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// A chain knat would program does not exist.
    MissingChain,
    /// A chain exists but holds none of its rules.
    Flushed,
    /// A jump from a builtin chain into knat's chains is missing.
    MissingHook,
    /// A service chain does not send traffic to an endpoint it should.
    MissingEndpoint,
    /// A service chain sends traffic to an endpoint knat would not use.
    UnwantedEndpoint,
    /// A rule with the same target exists, but its matches differ.
    ChangedRule,
    /// A rule is present, but in another position.
    MovedRule,
    /// A rule knat would program is missing.
    MissingRule,
    /// A rule knat would not program is present in one of its chains.
    ForeignRule,
    /// A per-service chain exists that knat would not program.
    StaleChain,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The difference in words, to follow the chain's name.
    pub message: String,
    /// The live rule, as `iptables-save` printed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
    /// The rule knat would program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
}

/// The differences of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainDiff {
    pub table: String,
    pub chain: String,
    /// The service port the chain belongs to, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub changes: Vec<Change>,
}

/// The comparison of one family's tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// knat's chains compared (builtin chains with hooks included).
    pub chains: usize,
    /// knat's rules compared.
    pub rules: usize,
    /// Chains that differ, in table and name order.
    pub drift: Vec<ChainDiff>,
}

impl DiffReport {
    /// True when the live tables differ from what knat would program.
    pub fn has_drift(&self) -> bool {
        !self.drift.is_empty()
    }

    /// The number of individual differences.
    pub fn change_count(&self) -> usize {
        self.drift.iter().map(|c| c.changes.len()).sum()
    }
}

/// knat's restore payload for `rules`, parsed into a [`Dump`].
pub fn desired_dump(rules: &RuleSet) -> Result<Dump, DiffError> {
    parse(&render_standalone(rules)).map_err(DiffError::Desired)
}

/// Chain owners as plain strings (`KUBE-SVC-…` → `demo/web:http`).
pub fn owner_names(owners: &BTreeMap<ChainName, ServicePortName>) -> BTreeMap<String, String> {
    owners
        .iter()
        .map(|(c, spn)| (c.as_str().to_string(), spn.to_string()))
        .collect()
}

fn comment(rule: &Rule) -> Option<&str> {
    rule.matches.iter().find_map(|m| match m {
        Match::Comment(text) => Some(text.as_str()),
        _ => None,
    })
}

fn jump_target(rule: &Rule) -> Option<&str> {
    match &rule.target {
        Target::Jump(c) | Target::Goto(c) => Some(c.as_str()),
        _ => None,
    }
}

/// The DNAT destination of an endpoint chain, looked up in `dumps` in order.
fn endpoint_of(table: &str, chain: &str, dumps: &[&Dump]) -> Option<String> {
    dumps.iter().find_map(|d| {
        d.chain(table, chain)?
            .rules
            .iter()
            .find_map(|r| match &r.target {
                Target::Dnat { to, .. } => Some(to.to_string()),
                _ => None,
            })
    })
}

fn live_text(chain: &str, rule: &Rule) -> String {
    if rule.text.is_empty() {
        format!("-A {chain} {}", rule.canonical())
    } else {
        format!("-A {chain} {}", rule.text)
    }
}

fn desired_text(chain: &str, rule: &Rule) -> String {
    format!("-A {chain} {}", rule.canonical())
}

struct Ctx<'a> {
    live: &'a Dump,
    desired: &'a Dump,
    owners: &'a BTreeMap<String, String>,
}

impl Ctx<'_> {
    fn describe_target(&self, table: &str, target: &str) -> String {
        if target.starts_with("KUBE-SEP-")
            && let Some(ep) = endpoint_of(table, target, &[self.desired, self.live])
        {
            return format!("the endpoint {ep} ({target})");
        }
        match self.owners.get(target) {
            Some(owner) => format!("{target} ({owner})"),
            None => target.to_string(),
        }
    }

    fn builtin(&self, table: &str, chain: &str, wanted: &[Rule]) -> Vec<Change> {
        let present = self
            .live
            .chain(table, chain)
            .map(|c| c.rules.as_slice())
            .unwrap_or(&[]);
        wanted
            .iter()
            .filter(|w| !present.contains(w))
            .map(|w| Change {
                kind: ChangeKind::MissingHook,
                message: format!(
                    "is missing the hook into {}: packets {} never reach knat's rules",
                    jump_target(w).unwrap_or("knat's chains"),
                    comment(w)
                        .map(|c| format!("for \"{c}\""))
                        .unwrap_or_else(|| "here".into())
                ),
                live: None,
                desired: Some(desired_text(chain, w)),
            })
            .collect()
    }

    fn chain(&self, table: &str, chain: &str, wanted: &[Rule]) -> Vec<Change> {
        let Some(live_chain) = self.live.chain(table, chain) else {
            return vec![Change {
                kind: ChangeKind::MissingChain,
                message: format!(
                    "is missing (knat would program {} rules in it)",
                    wanted.len()
                ),
                live: None,
                desired: None,
            }];
        };
        let present = &live_chain.rules;
        if present.is_empty() && wanted.len() > 1 {
            return vec![self.flushed(table, wanted)];
        }
        let d: Vec<String> = wanted.iter().map(Rule::canonical).collect();
        let l: Vec<String> = present.iter().map(Rule::canonical).collect();
        let alignment = align::align(&d, &l);
        let mut missing = alignment.missing;
        let mut extra = alignment.extra;
        let mut changes = Vec::new();

        // The same rule on both sides: it moved.
        missing.retain(|&mi| match extra.iter().position(|&ei| l[ei] == d[mi]) {
            Some(pos) => {
                extra.remove(pos);
                changes.push(Change {
                    kind: ChangeKind::MovedRule,
                    message: "has a rule out of place (iptables stops at the first match, so order matters)".into(),
                    live: None,
                    desired: Some(desired_text(chain, &wanted[mi])),
                });
                false
            }
            None => true,
        });
        // The same jump or DNAT target on both sides: the rule changed.
        missing.retain(|&mi| {
            let w = &wanted[mi];
            let pairable = matches!(
                w.target,
                Target::Jump(_) | Target::Goto(_) | Target::Dnat { .. }
            );
            match extra
                .iter()
                .position(|&ei| pairable && present[ei].target == w.target)
            {
                Some(pos) => {
                    let ei = extra.remove(pos);
                    changes.push(self.changed_rule(table, chain, w, &present[ei]));
                    false
                }
                None => true,
            }
        });
        changes.extend(
            missing
                .into_iter()
                .map(|mi| self.missing_rule(table, chain, &wanted[mi])),
        );
        changes.extend(
            extra
                .into_iter()
                .map(|ei| self.extra_rule(table, chain, &present[ei])),
        );
        changes
    }

    /// A chain that should hold several rules and holds none, and the endpoints it no longer
    /// reaches.
    fn flushed(&self, table: &str, wanted: &[Rule]) -> Change {
        let endpoints: Vec<String> = wanted
            .iter()
            .filter_map(jump_target)
            .filter(|t| t.starts_with("KUBE-SEP-"))
            .filter_map(|t| endpoint_of(table, t, &[self.desired]))
            .collect();
        let lost = if endpoints.is_empty() {
            String::new()
        } else {
            format!("; it no longer sends traffic to {}", endpoints.join(", "))
        };
        Change {
            kind: ChangeKind::Flushed,
            message: format!(
                "was flushed: none of its {} rules are present{lost}",
                wanted.len()
            ),
            live: None,
            desired: None,
        }
    }

    /// A live rule with the wanted rule's target but other matches.
    fn changed_rule(&self, table: &str, chain: &str, wanted: &Rule, live: &Rule) -> Change {
        Change {
            kind: ChangeKind::ChangedRule,
            message: format!(
                "has a different rule for {}",
                jump_target(wanted)
                    .map(|t| self.describe_target(table, t))
                    .or_else(|| comment(wanted).map(|c| format!("\"{c}\"")))
                    .unwrap_or_else(|| "the same target".into())
            ),
            live: Some(live_text(chain, live)),
            desired: Some(desired_text(chain, wanted)),
        }
    }

    /// A wanted rule with no live counterpart: a missing endpoint, jump, DNAT or other rule.
    fn missing_rule(&self, table: &str, chain: &str, w: &Rule) -> Change {
        let target = jump_target(w);
        let (kind, message) = match target {
            Some(t) if t.starts_with("KUBE-SEP-") => (
                ChangeKind::MissingEndpoint,
                format!("is missing {}", self.describe_target(table, t)),
            ),
            Some(t) => (
                ChangeKind::MissingRule,
                format!(
                    "is missing the jump to {}{}",
                    self.describe_target(table, t),
                    comment(w)
                        .map(|c| format!(" for \"{c}\""))
                        .unwrap_or_default()
                ),
            ),
            None if matches!(w.target, Target::Dnat { .. }) => (
                ChangeKind::MissingRule,
                match &w.target {
                    Target::Dnat { to, .. } => format!(
                        "is missing its DNAT to {to}: traffic chosen for this endpoint is not translated"
                    ),
                    _ => "is missing its DNAT".to_string(),
                },
            ),
            None => (
                ChangeKind::MissingRule,
                format!(
                    "is missing a rule{}",
                    comment(w)
                        .map(|c| format!(" (\"{c}\")"))
                        .unwrap_or_default()
                ),
            ),
        };
        Change {
            kind,
            message,
            live: None,
            desired: Some(desired_text(chain, w)),
        }
    }

    /// A live rule knat would not program: an endpoint it would not use, or a foreign rule.
    fn extra_rule(&self, table: &str, chain: &str, r: &Rule) -> Change {
        let (kind, message) = match jump_target(r) {
            Some(t) if t.starts_with("KUBE-SEP-") => (
                ChangeKind::UnwantedEndpoint,
                format!(
                    "sends traffic to {}, which knat would not use",
                    self.describe_target(table, t)
                ),
            ),
            _ => (
                ChangeKind::ForeignRule,
                "has a foreign rule (knat would not program it)".to_string(),
            ),
        };
        Change {
            kind,
            message,
            live: Some(live_text(chain, r)),
            desired: None,
        }
    }

    fn stale(&self, table: &str, chain: &str) -> Change {
        let rules = self
            .live
            .chain(table, chain)
            .map(|c| c.rules.as_slice())
            .unwrap_or(&[]);
        let mut what = Vec::new();
        if let Some(c) = rules.iter().find_map(comment) {
            what.push(format!("\"{c}\""));
        }
        if let Some(ep) = endpoint_of(table, chain, &[self.live]) {
            what.push(format!("DNAT to {ep}"));
        }
        Change {
            kind: ChangeKind::StaleChain,
            message: format!(
                "is stale{}: knat would not program it (left by kube-proxy or by a Service or endpoint that is gone); \
                 knat's next full sync deletes it",
                if what.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", what.join(", "))
                }
            ),
            live: None,
            desired: None,
        }
    }
}

/// Compares the live tables with the desired ones. `owners` names the service port of each
/// per-service chain (see [`owner_names`]).
pub fn diff(
    live: &Dump,
    desired: &Dump,
    owners: &BTreeMap<String, String>,
    family: &str,
) -> DiffReport {
    let ctx = Ctx {
        live,
        desired,
        owners,
    };
    let mut report = DiffReport {
        family: family.to_string(),
        chains: 0,
        rules: 0,
        drift: Vec::new(),
    };
    for table in TABLES {
        let Some(wanted_table) = desired.tables.get(table) else {
            continue;
        };
        for (chain, wanted) in &wanted_table.chains {
            let builtin = is_builtin(table, chain);
            if builtin && wanted.rules.is_empty() {
                continue;
            }
            report.chains += 1;
            report.rules += wanted.rules.len();
            let changes = if builtin {
                ctx.builtin(table, chain, &wanted.rules)
            } else {
                ctx.chain(table, chain, &wanted.rules)
            };
            if !changes.is_empty() {
                report.drift.push(ChainDiff {
                    table: table.to_string(),
                    chain: chain.clone(),
                    owner: owners.get(chain).cloned(),
                    changes,
                });
            }
        }
        if let Some(live_table) = live.tables.get(table) {
            for chain in live_table.chains.keys() {
                if wanted_table.chains.contains_key(chain)
                    || !ChainName::new(chain.as_str()).is_service_chain()
                {
                    continue;
                }
                report.drift.push(ChainDiff {
                    table: table.to_string(),
                    chain: chain.clone(),
                    owner: None,
                    changes: vec![ctx.stale(table, chain)],
                });
            }
        }
    }
    report
        .drift
        .sort_by(|a, b| (&a.table, &a.chain).cmp(&(&b.table, &b.chain)));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIRED: &str = "*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"demo/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SVC-X -m statistic --mode random --probability 0.5 -j KUBE-SEP-A
-A KUBE-SVC-X -j KUBE-SEP-B
-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.2.7:8080
COMMIT
";

    fn owners() -> BTreeMap<String, String> {
        [
            ("KUBE-SVC-X", "demo/web:http"),
            ("KUBE-SEP-A", "demo/web:http"),
            ("KUBE-SEP-B", "demo/web:http"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    fn run(live: &str) -> DiffReport {
        let desired = parse(DESIRED).expect("desired");
        let live = parse(live).expect("live");
        diff(&live, &desired, &owners(), "IPv4")
    }

    fn messages(r: &DiffReport) -> Vec<String> {
        r.drift
            .iter()
            .flat_map(|c| {
                c.changes
                    .iter()
                    .map(move |ch| format!("{} {}", c.chain, ch.message))
            })
            .collect()
    }

    #[test]
    fn identical_tables_have_no_drift() {
        let r = run(DESIRED);
        assert!(!r.has_drift(), "{:?}", messages(&r));
        assert_eq!((r.chains, r.rules), (5, 6));
    }

    #[test]
    fn endpoints_hooks_and_stale_chains_in_words() {
        let live = DESIRED
            .replace("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n", "")
            .replace("-A KUBE-SVC-X -j KUBE-SEP-B\n", "-A KUBE-SVC-X -j KUBE-SEP-C\n")
            .replace(":KUBE-SEP-B - [0:0]\n", ":KUBE-SEP-B - [0:0]\n:KUBE-SEP-C - [0:0]\n")
            .replace("COMMIT", "-A KUBE-SEP-C -p tcp -m tcp -j DNAT --to-destination 10.244.9.9:8080\nCOMMIT");
        let r = run(&live);
        let m = messages(&r);
        assert_eq!(
            m,
            [
                "KUBE-SEP-C is stale (DNAT to 10.244.9.9:8080): knat would not program it (left by kube-proxy or by a \
                 Service or endpoint that is gone); knat's next full sync deletes it",
                "KUBE-SVC-X is missing the endpoint 10.244.2.7:8080 (KUBE-SEP-B)",
                "KUBE-SVC-X sends traffic to the endpoint 10.244.9.9:8080 (KUBE-SEP-C), which knat would not use",
                "PREROUTING is missing the hook into KUBE-SERVICES: packets for \"kubernetes service portals\" never reach knat's rules",
            ],
            "{m:#?}"
        );
    }

    #[test]
    fn changed_moved_flushed_and_missing() {
        let changed = DESIRED.replace("--dport 80 -j KUBE-SVC-X", "--dport 81 -j KUBE-SVC-X");
        let r = run(&changed);
        assert_eq!(r.drift[0].changes[0].kind, ChangeKind::ChangedRule);
        assert!(
            r.drift[0].changes[0]
                .message
                .contains("KUBE-SVC-X (demo/web:http)")
        );

        let moved = DESIRED.replace(
            "-A KUBE-SVC-X -m statistic --mode random --probability 0.5 -j KUBE-SEP-A\n-A KUBE-SVC-X -j KUBE-SEP-B\n",
            "-A KUBE-SVC-X -j KUBE-SEP-B\n-A KUBE-SVC-X -m statistic --mode random --probability 0.5 -j KUBE-SEP-A\n",
        );
        let kinds: Vec<ChangeKind> = run(&moved)
            .drift
            .iter()
            .flat_map(|c| c.changes.iter().map(|c| c.kind))
            .collect();
        assert_eq!(kinds, [ChangeKind::MovedRule]);

        let flushed: String = DESIRED
            .lines()
            .filter(|l| !l.starts_with("-A KUBE-SVC-X"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            messages(&run(&flushed)),
            [
                "KUBE-SVC-X was flushed: none of its 2 rules are present; it no longer sends traffic to 10.244.1.5:8080, 10.244.2.7:8080"
            ]
        );

        let missing = DESIRED.replace(":KUBE-SEP-A - [0:0]\n", "").replace(
            "-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.1.5:8080\n",
            "",
        );
        let r = run(&missing);
        assert_eq!(r.drift.len(), 1);
        assert_eq!(r.drift[0].changes[0].kind, ChangeKind::MissingChain);
    }
}
