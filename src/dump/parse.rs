//! Parsing `iptables-save` output and `iptables-restore` input (they share one syntax) into table
//! transactions ([`TableBlock`]s). Replaying them into a [`Dump`] is [`super::restore`]'s job
//! (strict) and [`super::read`]'s (lenient), so this module depends on neither.
//!
//! Understood lines: `*table`, `:CHAIN POLICY [p:b]`, `-A`, `-I [n]`, `-D n|rule`, `-F [chain]`,
//! `-X [chain]`, `-N`, `-P`, `COMMIT`, `#` comments and blank lines. A leading `[p:b]` counter
//! (`iptables-save -c`) is ignored.

use thiserror::Error;

pub use super::model::{Chain, Dump, Rule, Table};
use super::rule::{RuleError, parse_rule};
use super::words::{TokenError, Word, split};

/// The longest chain name iptables accepts (`XT_EXTENSION_MAXNAMELEN - 1`).
pub const MAX_CHAIN_NAME: usize = 28;

/// A line that cannot be parsed, with its 1-based number, text and the table it is in.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}{}: {reason}: `{text}`", in_table(.table.as_deref()))]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// The line as given.
    pub text: String,
    /// What is wrong with it.
    pub reason: ParseReason,
    /// The `*table` block the line is in, if any.
    pub table: Option<String>,
}

fn in_table(table: Option<&str>) -> String {
    table.map(|t| format!(" (table {t})")).unwrap_or_default()
}

/// Why a line cannot be parsed. None of these is retryable: the text itself is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseReason {
    /// The line could not be split into words. Not retryable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The rule specification is malformed. Not retryable.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A chain or rule line before any `*table`. Not retryable.
    #[error("not inside a `*table` block")]
    OutsideTable,
    /// `*table` while another table was not committed. Not retryable.
    #[error("table `{0}` was not committed before this one")]
    NestedTable(String),
    /// The input ended inside a table (the line is the `*table` line). Not retryable.
    #[error("table `{0}` is never committed (missing COMMIT)")]
    Uncommitted(String),
    /// `COMMIT` without an open table. Not retryable.
    #[error("COMMIT outside a table")]
    CommitOutsideTable,
    /// A required word is missing (a chain name, a policy, a table name). Not retryable.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A chain name iptables refuses (too long, or starting with `-` or `!`). Not retryable.
    #[error("invalid chain name `{0}`")]
    BadChainName(String),
    /// A command other than the ones iptables-restore input uses. Not retryable.
    #[error("unsupported command `{0}`")]
    UnknownCommand(String),
    /// A rule number that is not a positive integer. Not retryable.
    #[error("invalid rule number `{0}`")]
    BadIndex(String),
    /// A command that iptables-restore would refuse to apply (see the message). Not retryable.
    #[error("{0}")]
    Rejected(String),
}

/// One `*table ... COMMIT` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableBlock {
    /// The table name.
    pub name: String,
    /// Line of `*table`.
    pub line: usize,
    /// Line of `COMMIT`.
    pub commit_line: usize,
    /// The commands in order.
    pub ops: Vec<Op>,
}

/// One command line inside a table block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// 1-based line number.
    pub line: usize,
    /// The line as given.
    pub text: String,
    /// The command.
    pub kind: OpKind,
}

/// The commands of a table block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// `:CHAIN POLICY`: declare (create or, with noflush, flush) a chain; `None` for `-`.
    Declare {
        /// Chain name.
        chain: String,
        /// The policy, `None` for `-`.
        policy: Option<String>,
    },
    /// `-A CHAIN rule`
    Append {
        /// Chain name.
        chain: String,
        /// The rule.
        rule: Rule,
    },
    /// `-I CHAIN [n] rule` (n is 1-based, default 1)
    Insert {
        /// Chain name.
        chain: String,
        /// 1-based position.
        position: usize,
        /// The rule.
        rule: Rule,
    },
    /// `-D CHAIN n` or `-D CHAIN rule`
    Delete {
        /// Chain name.
        chain: String,
        /// Which rule.
        spec: DeleteSpec,
    },
    /// `-F [CHAIN]` (all chains when `None`)
    Flush {
        /// Chain name.
        chain: Option<String>,
    },
    /// `-X [CHAIN]` (all user chains when `None`)
    DeleteChain {
        /// Chain name.
        chain: Option<String>,
    },
    /// `-N CHAIN`
    NewChain {
        /// Chain name.
        chain: String,
    },
    /// `-P CHAIN POLICY`
    Policy {
        /// Chain name.
        chain: String,
        /// The policy.
        policy: String,
    },
}

/// Which rule `-D` deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteSpec {
    /// By 1-based position.
    Index(usize),
    /// The first rule equal to this one.
    Rule(Rule),
}

/// Parses one rule specification (the part after `-A CHAIN`), as line 1.
pub fn parse_rule_spec(spec: &str) -> Result<Rule, ParseError> {
    let error = |reason: ParseReason| ParseError {
        line: 1,
        text: spec.to_string(),
        reason,
        table: None,
    };
    let words = split(spec).map_err(|e| error(e.into()))?;
    parse_rule(&words, 1, spec.trim().to_string()).map_err(|e| error(e.into()))
}

/// Parses text into its table blocks, failing on the first malformed line.
pub fn parse_payload(text: &str) -> Result<Vec<TableBlock>, ParseError> {
    match parse_blocks(text) {
        (blocks, None) => Ok(blocks),
        (_, Some(e)) => Err(e),
    }
}

/// Parses text into the table blocks that were complete before the first malformed line (which
/// is returned too), as iptables-restore commits each table at its `COMMIT`.
pub fn parse_blocks(text: &str) -> (Vec<TableBlock>, Option<ParseError>) {
    let mut blocks = Vec::new();
    let mut open: Option<TableBlock> = None;
    // The open block's name, for errors (kept apart from `open`, which the loop borrows).
    let mut open_name: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let error = |reason: ParseReason| ParseError {
            line,
            text: raw.to_string(),
            reason,
            table: open_name.clone(),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('*') {
            if let Some(block) = &open {
                return (
                    blocks,
                    Some(error(ParseReason::NestedTable(block.name.clone()))),
                );
            }
            let name = name.trim();
            if name.is_empty() {
                return (blocks, Some(error(ParseReason::Missing("table name"))));
            }
            open_name = Some(name.to_string());
            open = Some(TableBlock {
                name: name.to_string(),
                line,
                commit_line: 0,
                ops: Vec::new(),
            });
            continue;
        }
        if trimmed == "COMMIT" {
            match open.take() {
                Some(mut block) => {
                    block.commit_line = line;
                    blocks.push(block);
                    open_name = None;
                }
                None => return (blocks, Some(error(ParseReason::CommitOutsideTable))),
            }
            continue;
        }
        let Some(block) = open.as_mut() else {
            return (blocks, Some(error(ParseReason::OutsideTable)));
        };
        match parse_op(raw, trimmed, line) {
            Ok(kind) => block.ops.push(Op {
                line,
                text: raw.to_string(),
                kind,
            }),
            Err(reason) => return (blocks, Some(error(reason))),
        }
    }
    if let Some(block) = open {
        let error = ParseError {
            line: block.line,
            text: format!("*{}", block.name),
            reason: ParseReason::Uncommitted(block.name.clone()),
            table: Some(block.name.clone()),
        };
        return (blocks, Some(error));
    }
    (blocks, None)
}

fn parse_op(raw: &str, trimmed: &str, line: usize) -> Result<OpKind, ParseReason> {
    if let Some(decl) = trimmed.strip_prefix(':') {
        let mut parts = decl.split_whitespace();
        let chain = parts.next().ok_or(ParseReason::Missing("chain name"))?;
        check_chain_name(chain)?;
        let policy = parts.next().ok_or(ParseReason::Missing("policy"))?;
        return Ok(OpKind::Declare {
            chain: chain.to_string(),
            policy: (policy != "-").then(|| policy.to_string()),
        });
    }
    let mut words = split(raw)?;
    // `iptables-save -c` prefixes rules with `[packets:bytes]`.
    if words
        .first()
        .is_some_and(|w| !w.quoted && w.text.starts_with('[') && w.text.ends_with(']'))
    {
        words.remove(0);
    }
    let command = words.first().map(|w| w.text.as_str()).unwrap_or("");
    let chain = || -> Result<String, ParseReason> {
        words
            .get(1)
            .map(|w| w.text.clone())
            .ok_or(ParseReason::Missing("chain name"))
    };
    let optional_chain = words.get(1).map(|w| w.text.clone());
    Ok(match command {
        "-A" | "--append" => OpKind::Append {
            chain: chain()?,
            rule: rule_from(raw, line, &words, 2)?,
        },
        "-I" | "--insert" => {
            let chain = chain()?;
            match words.get(2).and_then(number) {
                Some(position) => OpKind::Insert {
                    chain,
                    position: position?,
                    rule: rule_from(raw, line, &words, 3)?,
                },
                None => OpKind::Insert {
                    chain,
                    position: 1,
                    rule: rule_from(raw, line, &words, 2)?,
                },
            }
        }
        "-D" | "--delete" => {
            let chain = chain()?;
            let spec = match (words.len(), words.get(2).and_then(number)) {
                (3, Some(index)) => DeleteSpec::Index(index?),
                _ => DeleteSpec::Rule(rule_from(raw, line, &words, 2)?),
            };
            OpKind::Delete { chain, spec }
        }
        "-F" | "--flush" => OpKind::Flush {
            chain: optional_chain,
        },
        "-X" | "--delete-chain" => OpKind::DeleteChain {
            chain: optional_chain,
        },
        "-N" | "--new-chain" => {
            let chain = chain()?;
            check_chain_name(&chain)?;
            OpKind::NewChain { chain }
        }
        "-P" | "--policy" => OpKind::Policy {
            chain: chain()?,
            policy: words
                .get(2)
                .map(|w| w.text.clone())
                .ok_or(ParseReason::Missing("policy"))?,
        },
        other => return Err(ParseReason::UnknownCommand(other.to_string())),
    })
}

/// `Some(Ok(n))` for a positive integer word, `Some(Err)` for `0`, `None` for anything else.
fn number(word: &Word) -> Option<Result<usize, ParseReason>> {
    if word.quoted || word.text.is_empty() || !word.text.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(match word.text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ParseReason::BadIndex(word.text.clone())),
    })
}

fn rule_from(raw: &str, line: usize, words: &[Word], from: usize) -> Result<Rule, ParseReason> {
    let rest = words.get(from..).unwrap_or(&[]);
    let text = rest
        .first()
        .and_then(|w| raw.get(w.start..))
        .unwrap_or("")
        .trim_end()
        .to_string();
    Ok(parse_rule(rest, line, text)?)
}

fn check_chain_name(name: &str) -> Result<(), ParseReason> {
    if name.is_empty()
        || name.len() > MAX_CHAIN_NAME
        || name.starts_with('-')
        || name.starts_with('!')
    {
        return Err(ParseReason::BadChainName(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::matches::Match;
    use crate::dump::read::parse;
    use crate::dump::target::Target;

    const SAVED: &str = "\
# Generated by iptables-save v1.8.10 (nf_tables) on Mon Jan  1 00:00:00 2024
*nat
:PREROUTING ACCEPT [10:600]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
[3:180] -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -d 172.30.0.41/32 -p tcp -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp --dport 80 -j DNAT --to-destination 10.180.0.1:80
COMMIT
# Completed on Mon Jan  1 00:00:00 2024
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
";

    #[test]
    fn parses_a_save_dump() {
        let dump = parse(SAVED).expect("parse");
        assert_eq!(dump.tables.len(), 2);
        let nat = &dump.tables["nat"];
        assert_eq!(nat.chains.len(), 5);
        assert_eq!(nat.chains["PREROUTING"].policy.as_deref(), Some("ACCEPT"));
        assert_eq!(nat.chains["KUBE-SERVICES"].policy, None);
        let pre = &nat.chains["PREROUTING"].rules[0];
        assert_eq!(pre.line, 8);
        assert_eq!(
            pre.text,
            "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        );
        assert_eq!(pre.target, Target::Jump("KUBE-SERVICES".into()));
        let svc = &nat.chains["KUBE-SERVICES"].rules[0];
        assert_eq!(svc.line, 9);
        assert!(
            svc.matches
                .contains(&Match::Comment("ns1/svc1:p80 cluster IP".into()))
        );
        assert_eq!(
            svc.target.to_string(),
            "-j DNAT --to-destination 10.180.0.1:80"
        );
        assert_eq!(
            dump.tables["filter"].chains["INPUT"].policy.as_deref(),
            Some("DROP")
        );
    }

    #[test]
    fn blocks_and_ops() {
        let text = "*filter\n:FOO - [0:0]\n-I FOO 2 -j ACCEPT\n-I FOO -j DROP\n-D FOO 1\n-D FOO -j ACCEPT\n-F\n-X FOO\n-N BAR\n-P INPUT DROP\nCOMMIT\n";
        let blocks = parse_payload(text).expect("parse");
        assert_eq!(blocks.len(), 1);
        let b = &blocks[0];
        assert_eq!((b.name.as_str(), b.line, b.commit_line), ("filter", 1, 11));
        let kinds: Vec<&OpKind> = b.ops.iter().map(|o| &o.kind).collect();
        assert!(matches!(kinds[1], OpKind::Insert { position: 2, .. }));
        assert!(matches!(kinds[2], OpKind::Insert { position: 1, .. }));
        assert!(matches!(
            kinds[3],
            OpKind::Delete {
                spec: DeleteSpec::Index(1),
                ..
            }
        ));
        assert!(matches!(
            kinds[4],
            OpKind::Delete {
                spec: DeleteSpec::Rule(_),
                ..
            }
        ));
        assert_eq!(kinds[5], &OpKind::Flush { chain: None });
        assert_eq!(
            kinds[6],
            &OpKind::DeleteChain {
                chain: Some("FOO".into())
            }
        );
        assert_eq!(
            kinds[7],
            &OpKind::NewChain {
                chain: "BAR".into()
            }
        );
        assert_eq!(
            kinds[8],
            &OpKind::Policy {
                chain: "INPUT".into(),
                policy: "DROP".into()
            }
        );
        assert_eq!(b.ops[1].line, 3);
    }

    fn error(text: &str) -> ParseError {
        match parse_payload(text) {
            Ok(b) => panic!("expected an error, got {b:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn structural_errors_carry_line_and_text() {
        let e = error("-A FOO -j ACCEPT\n");
        assert_eq!((e.line, e.reason.clone()), (1, ParseReason::OutsideTable));
        assert_eq!(e.text, "-A FOO -j ACCEPT");
        let e = error("*nat\n*filter\nCOMMIT\n");
        assert_eq!(
            (e.line, e.reason),
            (2, ParseReason::NestedTable("nat".into()))
        );
        let e = error("\n*nat\n:FOO - [0:0]\n");
        assert_eq!(
            (e.line, e.reason),
            (2, ParseReason::Uncommitted("nat".into()))
        );
        let e = error("COMMIT\n");
        assert_eq!(e.reason, ParseReason::CommitOutsideTable);
        let e = error("*nat\n:KUBE-THIS-NAME-IS-WAY-TOO-LONG-X - [0:0]\nCOMMIT\n");
        assert!(matches!(e.reason, ParseReason::BadChainName(_)));
        let e = error("*nat\n:FOO\nCOMMIT\n");
        assert_eq!(e.reason, ParseReason::Missing("policy"));
        let e = error("*nat\n-Z FOO\nCOMMIT\n");
        assert_eq!(e.reason, ParseReason::UnknownCommand("-Z".into()));
        let e = error("*nat\n-I FOO 0 -j X\nCOMMIT\n");
        assert_eq!(e.reason, ParseReason::BadIndex("0".into()));
    }

    #[test]
    fn rule_errors_carry_line_and_text() {
        let e = error("*nat\n:FOO - [0:0]\n-A FOO -m comment --comment \"oops -j X\nCOMMIT\n");
        assert_eq!(e.line, 3);
        assert_eq!(e.reason, ParseReason::Token(TokenError::UnterminatedQuote));
        let e = error("*nat\n:FOO - [0:0]\n-A FOO -s 10.0.0.300 -j X\nCOMMIT\n");
        assert_eq!(e.line, 3);
        assert_eq!(e.text, "-A FOO -s 10.0.0.300 -j X");
        assert!(matches!(e.reason, ParseReason::Rule(RuleError::Value(_))));
        assert_eq!(e.table.as_deref(), Some("nat"));
        assert!(
            e.to_string()
                .starts_with("line 3 (table nat): invalid address"),
            "{e}"
        );
        assert_eq!(error("-A FOO -j ACCEPT\n").table, None);
    }

    #[test]
    fn blocks_before_an_error_are_returned() {
        let (blocks, err) = parse_blocks("*nat\nCOMMIT\n*filter\n-A\nCOMMIT\n");
        assert_eq!(blocks.len(), 1);
        assert_eq!(err.map(|e| e.line), Some(4));
    }

    #[test]
    fn lenient_parse_creates_missing_chains() {
        let dump = parse("*nat\n-A KUBE-X -j KUBE-MISSING\nCOMMIT\n").expect("parse");
        let nat = &dump.tables["nat"];
        assert_eq!(nat.chains["KUBE-X"].rules.len(), 1);
        assert!(nat.chains.contains_key("PREROUTING"));
        assert!(!nat.chains.contains_key("KUBE-MISSING"));
    }

    #[test]
    fn lenient_parse_still_refuses_invalid_commands() {
        let e = match parse("*filter\n-X INPUT\nCOMMIT\n") {
            Ok(d) => panic!("expected an error, got {d:?}"),
            Err(e) => e,
        };
        assert_eq!(e.line, 2);
        assert!(matches!(e.reason, ParseReason::Rejected(_)));
    }

    #[test]
    fn single_rule_spec() {
        let r = parse_rule_spec("-m mark --mark 0x4000/0x4000 -j ACCEPT").expect("rule");
        assert_eq!(r.canonical(), "-m mark --mark 0x4000/0x4000 -j ACCEPT");
        assert!(parse_rule_spec("-j").is_err());
    }
}
