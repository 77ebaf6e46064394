//! A model of `iptables-restore` semantics over a [`Dump`], and a canonical `iptables-save`-style
//! rendering.
//!
//! Semantics follow legacy `iptables-restore` (and upstream kube-proxy's fake iptables):
//! - Each `*table ... COMMIT` block is one transaction. A failing block leaves that table as it
//!   was; blocks committed before it stay committed, later blocks are not applied.
//! - Without `--noflush` every table named in the payload is replaced: all its rules and user
//!   chains go, built-in chains stay with their policies unless the payload sets them.
//! - With `--noflush`, `:CHAIN -` creates a user chain or flushes it if it exists; chains not
//!   mentioned are kept. `:BUILTIN POLICY` only sets the policy (iptables-restore does not flush a
//!   built-in chain on a `:` line); `-` keeps the policy.
//! - `-A`/`-I`/`-D`/`-F` need an existing chain, `-X` refuses built-in, non-empty and referenced
//!   chains, and at `COMMIT` every `-j`/`-g` must name an existing user chain.

use thiserror::Error;

use super::model::{Chain, Dump, Table, builtin_chains, is_builtin};
use super::parse::{DeleteSpec, OpKind, ParseError, TableBlock, parse_blocks};

/// Why iptables-restore would refuse a payload. None is retryable as is: the same payload fails
/// the same way; the caller should fix or recompute it (for knat: fall back to a full sync).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RestoreError {
    /// The payload is malformed. Not retryable.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// `*table` names a table the kernel does not have. Not retryable.
    #[error("line {line}: unknown table `{table}`")]
    UnknownTable {
        /// Line of `*table`.
        line: usize,
        /// The line.
        text: String,
        /// The table name.
        table: String,
    },
    /// A command names a chain that does not exist. Not retryable.
    #[error("line {line}: chain `{chain}` does not exist: `{text}`")]
    NoSuchChain {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The chain.
        chain: String,
    },
    /// `-N` (or a repeated `:` without noflush) of a chain that exists. Not retryable.
    #[error("line {line}: chain `{chain}` already exists: `{text}`")]
    ChainExists {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The chain.
        chain: String,
    },
    /// `-X` of a built-in chain. Not retryable.
    #[error("line {line}: `{chain}` is a built-in chain and cannot be deleted: `{text}`")]
    BuiltinChain {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The chain.
        chain: String,
    },
    /// A policy on a user chain. Not retryable.
    #[error("line {line}: user chain `{chain}` cannot have a policy: `{text}`")]
    PolicyOnUserChain {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The chain.
        chain: String,
    },
    /// A policy other than ACCEPT or DROP. Not retryable.
    #[error("line {line}: invalid policy `{policy}`: `{text}`")]
    BadPolicy {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The policy.
        policy: String,
    },
    /// `-X` of a chain that still has rules. Not retryable.
    #[error("line {line}: chain `{chain}` is not empty: `{text}`")]
    ChainNotEmpty {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The chain.
        chain: String,
    },
    /// `-X` of a chain that a rule still jumps to. Not retryable.
    #[error(
        "line {line}: chain `{chain}` is still referenced by a rule in `{from}` (line {rule_line}): `{text}`"
    )]
    ChainInUse {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The chain being deleted.
        chain: String,
        /// The chain holding the referencing rule.
        from: String,
        /// Line of the referencing rule.
        rule_line: usize,
    },
    /// `-I`/`-D` with a rule number out of range. Not retryable.
    #[error("line {line}: rule number {index} is out of range for chain `{chain}`: `{text}`")]
    BadIndex {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The chain.
        chain: String,
        /// The 1-based number given.
        index: usize,
    },
    /// `-D` of a rule that is not in the chain. Not retryable.
    #[error("line {line}: no such rule in chain `{chain}`: `{text}`")]
    NoSuchRule {
        /// Line of the command.
        line: usize,
        /// The line.
        text: String,
        /// The chain.
        chain: String,
    },
    /// At COMMIT a rule jumps to a chain that does not exist. Not retryable.
    #[error(
        "line {line}: table `{table}`: rule in `{chain}` (line {rule_line}) jumps to missing chain `{target}`"
    )]
    DanglingJump {
        /// Line of `COMMIT`.
        line: usize,
        /// The line.
        text: String,
        /// The table.
        table: String,
        /// The chain holding the rule.
        chain: String,
        /// Line of the rule.
        rule_line: usize,
        /// The missing chain.
        target: String,
    },
    /// At COMMIT a rule jumps to a built-in chain. Not retryable.
    #[error(
        "line {line}: table `{table}`: rule in `{chain}` (line {rule_line}) jumps to built-in chain `{target}`"
    )]
    JumpToBuiltin {
        /// Line of `COMMIT`.
        line: usize,
        /// The line.
        text: String,
        /// The table.
        table: String,
        /// The chain holding the rule.
        chain: String,
        /// Line of the rule.
        rule_line: usize,
        /// The built-in chain.
        target: String,
    },
}

impl RestoreError {
    /// The 1-based line the error is about (the `COMMIT` line for commit-time checks).
    pub fn line(&self) -> usize {
        match self {
            RestoreError::Parse(e) => e.line,
            RestoreError::UnknownTable { line, .. }
            | RestoreError::NoSuchChain { line, .. }
            | RestoreError::ChainExists { line, .. }
            | RestoreError::BuiltinChain { line, .. }
            | RestoreError::PolicyOnUserChain { line, .. }
            | RestoreError::BadPolicy { line, .. }
            | RestoreError::ChainNotEmpty { line, .. }
            | RestoreError::ChainInUse { line, .. }
            | RestoreError::BadIndex { line, .. }
            | RestoreError::NoSuchRule { line, .. }
            | RestoreError::DanglingJump { line, .. }
            | RestoreError::JumpToBuiltin { line, .. } => *line,
        }
    }

    /// The text of that line.
    pub fn text(&self) -> &str {
        match self {
            RestoreError::Parse(e) => &e.text,
            RestoreError::UnknownTable { text, .. }
            | RestoreError::NoSuchChain { text, .. }
            | RestoreError::ChainExists { text, .. }
            | RestoreError::BuiltinChain { text, .. }
            | RestoreError::PolicyOnUserChain { text, .. }
            | RestoreError::BadPolicy { text, .. }
            | RestoreError::ChainNotEmpty { text, .. }
            | RestoreError::ChainInUse { text, .. }
            | RestoreError::BadIndex { text, .. }
            | RestoreError::NoSuchRule { text, .. }
            | RestoreError::DanglingJump { text, .. }
            | RestoreError::JumpToBuiltin { text, .. } => text,
        }
    }
}

/// How strictly a block is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// iptables-restore's checks.
    Strict,
    /// For reading dumps: missing chains are created, references are not checked.
    Lenient,
}

/// Applies an `iptables-restore` payload to `state`, as `iptables-restore [--noflush]` would.
/// On error, tables committed before the failing block keep their new contents, the failing
/// table and the ones after it are unchanged.
pub fn apply_restore(state: &mut Dump, payload: &str, noflush: bool) -> Result<(), RestoreError> {
    let (blocks, parse_error) = parse_blocks(payload);
    for block in &blocks {
        let table = replay(state, block, noflush, Mode::Strict)?;
        state.tables.insert(block.name.clone(), table);
    }
    match parse_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Replays one table block over `state` and returns the resulting table (`state` is not
/// modified, so a failure leaves nothing half-applied).
pub fn replay(
    state: &Dump,
    block: &TableBlock,
    noflush: bool,
    mode: Mode,
) -> Result<Table, RestoreError> {
    let name = block.name.as_str();
    if mode == Mode::Strict && builtin_chains(name).is_none() {
        return Err(RestoreError::UnknownTable {
            line: block.line,
            text: format!("*{name}"),
            table: name.to_string(),
        });
    }
    let mut table = match state.tables.get(name) {
        Some(old) if noflush => old.clone(),
        Some(old) => {
            let mut fresh = Table::with_builtins(name);
            for (chain, c) in &mut fresh.chains {
                if let Some(policy) = old.chains.get(chain).and_then(|o| o.policy.clone()) {
                    c.policy = Some(policy);
                }
            }
            fresh
        }
        None => Table::with_builtins(name),
    };
    let tx = Tx {
        name,
        noflush,
        mode,
    };
    for op in &block.ops {
        tx.apply(&mut table, op.line, &op.text, &op.kind)?;
    }
    if mode == Mode::Strict {
        check_jumps(&table, block)?;
    }
    Ok(table)
}

struct Tx<'a> {
    name: &'a str,
    noflush: bool,
    mode: Mode,
}

impl Tx<'_> {
    fn strict(&self) -> bool {
        self.mode == Mode::Strict
    }

    fn apply(
        &self,
        table: &mut Table,
        line: usize,
        text: &str,
        kind: &OpKind,
    ) -> Result<(), RestoreError> {
        let no_chain = |chain: &str| RestoreError::NoSuchChain {
            line,
            text: text.to_string(),
            chain: chain.to_string(),
        };
        match kind {
            OpKind::Declare { chain, policy } => self.declare(table, line, text, chain, policy),
            OpKind::Append { chain, rule } => {
                self.existing(table, chain, || no_chain(chain))?
                    .rules
                    .push(rule.clone());
                Ok(())
            }
            OpKind::Insert {
                chain,
                position,
                rule,
            } => {
                let strict = self.strict();
                let c = self.existing(table, chain, || no_chain(chain))?;
                if *position > c.rules.len() + 1 && strict {
                    return Err(RestoreError::BadIndex {
                        line,
                        text: text.to_string(),
                        chain: chain.clone(),
                        index: *position,
                    });
                }
                let at = (*position - 1).min(c.rules.len());
                c.rules.insert(at, rule.clone());
                Ok(())
            }
            OpKind::Delete { chain, spec } => self.delete_rule(table, line, text, chain, spec),
            OpKind::Flush { chain: None } => {
                table.chains.values_mut().for_each(|c| c.rules.clear());
                Ok(())
            }
            OpKind::Flush { chain: Some(chain) } => {
                match table.chains.get_mut(chain) {
                    Some(c) => c.rules.clear(),
                    None if self.strict() => return Err(no_chain(chain)),
                    None => {}
                }
                Ok(())
            }
            OpKind::DeleteChain { chain } => self.delete_chain(table, line, text, chain.as_deref()),
            OpKind::NewChain { chain } => {
                if table.chains.contains_key(chain) {
                    if self.strict() {
                        return Err(RestoreError::ChainExists {
                            line,
                            text: text.to_string(),
                            chain: chain.clone(),
                        });
                    }
                    return Ok(());
                }
                table.chains.insert(chain.clone(), Chain::default());
                Ok(())
            }
            OpKind::Policy { chain, policy } => {
                check_policy(line, text, policy)?;
                if self.strict() && !is_builtin(self.name, chain) {
                    if !table.chains.contains_key(chain) {
                        return Err(no_chain(chain));
                    }
                    return Err(RestoreError::PolicyOnUserChain {
                        line,
                        text: text.to_string(),
                        chain: chain.clone(),
                    });
                }
                table.chains.entry(chain.clone()).or_default().policy = Some(policy.clone());
                Ok(())
            }
        }
    }

    /// The chain, created in lenient mode when missing.
    fn existing<'t>(
        &self,
        table: &'t mut Table,
        chain: &str,
        missing: impl FnOnce() -> RestoreError,
    ) -> Result<&'t mut Chain, RestoreError> {
        if !table.chains.contains_key(chain) && self.strict() {
            return Err(missing());
        }
        Ok(table.chains.entry(chain.to_string()).or_default())
    }

    fn declare(
        &self,
        table: &mut Table,
        line: usize,
        text: &str,
        chain: &str,
        policy: &Option<String>,
    ) -> Result<(), RestoreError> {
        if let Some(p) = policy {
            check_policy(line, text, p)?;
        }
        if is_builtin(self.name, chain) {
            let c = table.chains.entry(chain.to_string()).or_default();
            if let Some(p) = policy {
                c.policy = Some(p.clone());
            }
            return Ok(());
        }
        if policy.is_some() && self.strict() {
            return Err(RestoreError::PolicyOnUserChain {
                line,
                text: text.to_string(),
                chain: chain.to_string(),
            });
        }
        match table.chains.get_mut(chain) {
            Some(_) if !self.noflush && self.strict() => Err(RestoreError::ChainExists {
                line,
                text: text.to_string(),
                chain: chain.to_string(),
            }),
            Some(c) => {
                c.rules.clear();
                if policy.is_some() {
                    c.policy = policy.clone();
                }
                Ok(())
            }
            None => {
                table.chains.insert(
                    chain.to_string(),
                    Chain {
                        policy: policy.clone(),
                        rules: Vec::new(),
                    },
                );
                Ok(())
            }
        }
    }

    fn delete_rule(
        &self,
        table: &mut Table,
        line: usize,
        text: &str,
        chain: &str,
        spec: &DeleteSpec,
    ) -> Result<(), RestoreError> {
        let strict = self.strict();
        let Some(c) = table.chains.get_mut(chain) else {
            if strict {
                return Err(RestoreError::NoSuchChain {
                    line,
                    text: text.to_string(),
                    chain: chain.to_string(),
                });
            }
            return Ok(());
        };
        let index = match spec {
            DeleteSpec::Index(n) if *n <= c.rules.len() => Some(*n - 1),
            DeleteSpec::Index(n) if strict => {
                return Err(RestoreError::BadIndex {
                    line,
                    text: text.to_string(),
                    chain: chain.to_string(),
                    index: *n,
                });
            }
            DeleteSpec::Index(_) => None,
            DeleteSpec::Rule(rule) => match c.rules.iter().position(|r| r == rule) {
                Some(i) => Some(i),
                None if strict => {
                    return Err(RestoreError::NoSuchRule {
                        line,
                        text: text.to_string(),
                        chain: chain.to_string(),
                    });
                }
                None => None,
            },
        };
        if let Some(i) = index {
            c.rules.remove(i);
        }
        Ok(())
    }

    fn delete_chain(
        &self,
        table: &mut Table,
        line: usize,
        text: &str,
        chain: Option<&str>,
    ) -> Result<(), RestoreError> {
        let Some(chain) = chain else {
            let user: Vec<String> = table
                .chains
                .keys()
                .filter(|c| !is_builtin(self.name, c))
                .cloned()
                .collect();
            for c in &user {
                self.check_deletable(table, line, text, c, false)?;
            }
            for c in &user {
                table.chains.remove(c);
            }
            return Ok(());
        };
        if is_builtin(self.name, chain) {
            return Err(RestoreError::BuiltinChain {
                line,
                text: text.to_string(),
                chain: chain.to_string(),
            });
        }
        if !table.chains.contains_key(chain) {
            if self.strict() {
                return Err(RestoreError::NoSuchChain {
                    line,
                    text: text.to_string(),
                    chain: chain.to_string(),
                });
            }
            return Ok(());
        }
        self.check_deletable(table, line, text, chain, true)?;
        table.chains.remove(chain);
        Ok(())
    }

    /// In strict mode a chain can be deleted only when empty and (if `references`) unreferenced.
    fn check_deletable(
        &self,
        table: &Table,
        line: usize,
        text: &str,
        chain: &str,
        references: bool,
    ) -> Result<(), RestoreError> {
        if !self.strict() {
            return Ok(());
        }
        if table.chains.get(chain).is_some_and(|c| !c.rules.is_empty()) {
            return Err(RestoreError::ChainNotEmpty {
                line,
                text: text.to_string(),
                chain: chain.to_string(),
            });
        }
        if !references {
            return Ok(());
        }
        for (from, c) in &table.chains {
            if let Some(rule) = c.rules.iter().find(|r| r.target.chain() == Some(chain)) {
                return Err(RestoreError::ChainInUse {
                    line,
                    text: text.to_string(),
                    chain: chain.to_string(),
                    from: from.clone(),
                    rule_line: rule.line,
                });
            }
        }
        Ok(())
    }
}

fn check_policy(line: usize, text: &str, policy: &str) -> Result<(), RestoreError> {
    if matches!(policy, "ACCEPT" | "DROP") {
        Ok(())
    } else {
        Err(RestoreError::BadPolicy {
            line,
            text: text.to_string(),
            policy: policy.to_string(),
        })
    }
}

fn check_jumps(table: &Table, block: &TableBlock) -> Result<(), RestoreError> {
    for (chain, c) in &table.chains {
        for rule in &c.rules {
            let Some(target) = rule.target.chain() else {
                continue;
            };
            let missing = !table.chains.contains_key(target);
            if !missing && !is_builtin(&block.name, target) {
                continue;
            }
            let (line, text, table_name) =
                (block.commit_line, "COMMIT".to_string(), block.name.clone());
            let (chain, rule_line, target) = (chain.clone(), rule.line, target.to_string());
            return Err(if missing {
                RestoreError::DanglingJump {
                    line,
                    text,
                    table: table_name,
                    chain,
                    rule_line,
                    target,
                }
            } else {
                RestoreError::JumpToBuiltin {
                    line,
                    text,
                    table: table_name,
                    chain,
                    rule_line,
                    target,
                }
            });
        }
    }
    Ok(())
}

/// Renders a dump canonically, as `iptables-save` would lay it out: tables by name, built-in
/// chains first, rules in canonical spelling, zero counters.
pub fn to_save_text(dump: &Dump) -> String {
    let mut out = String::new();
    for (name, table) in &dump.tables {
        out.push_str(&format!("*{name}\n"));
        let order = table.chain_order(name);
        for chain in &order {
            let policy = table
                .chains
                .get(*chain)
                .and_then(|c| c.policy.as_deref())
                .unwrap_or("-");
            out.push_str(&format!(":{chain} {policy} [0:0]\n"));
        }
        for chain in &order {
            let Some(c) = table.chains.get(*chain) else {
                continue;
            };
            for rule in &c.rules {
                let spec = rule.canonical();
                if spec.is_empty() {
                    out.push_str(&format!("-A {chain}\n"));
                } else {
                    out.push_str(&format!("-A {chain} {spec}\n"));
                }
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::read::parse;
    use proptest::prelude::*;

    const BASE: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SVC-B - [0:0]
:CNI-OWNED - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A PREROUTING -j CNI-OWNED
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-A
-A KUBE-SERVICES -d 10.96.0.2/32 -j KUBE-SVC-B
-A KUBE-SVC-A -j DNAT --to-destination 10.0.0.1:80
-A KUBE-SVC-B -j DNAT --to-destination 10.0.0.2:80
-A CNI-OWNED -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
";

    fn base() -> Dump {
        let mut d = Dump::default();
        apply_restore(&mut d, BASE, false).expect("base restores");
        d
    }

    fn rules(d: &Dump, table: &str, chain: &str) -> Vec<String> {
        d.chain(table, chain)
            .map(|c| c.rules.iter().map(|r| r.canonical()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn full_restore_replaces_named_tables_only() {
        let mut d = base();
        apply_restore(&mut d, "*nat\n:KUBE-NEW - [0:0]\nCOMMIT\n", false).expect("restore");
        let nat = &d.tables["nat"];
        assert_eq!(
            nat.chains.keys().cloned().collect::<Vec<_>>(),
            vec!["INPUT", "KUBE-NEW", "OUTPUT", "POSTROUTING", "PREROUTING"]
        );
        assert!(nat.chains["PREROUTING"].rules.is_empty());
        // filter was not named: untouched, FORWARD keeps its DROP policy.
        assert_eq!(
            d.tables["filter"].chains["FORWARD"].policy.as_deref(),
            Some("DROP")
        );
        // A full restore of filter without policy lines keeps the policies.
        apply_restore(&mut d, "*filter\nCOMMIT\n", false).expect("restore");
        assert_eq!(
            d.tables["filter"].chains["FORWARD"].policy.as_deref(),
            Some("DROP")
        );
    }

    #[test]
    fn noflush_declare_flushes_and_keeps_the_rest() {
        let mut d = base();
        let payload = "\
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-C - [0:0]
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-A
-A KUBE-SERVICES -d 10.96.0.3/32 -j KUBE-SVC-C
-A KUBE-SVC-C -j DNAT --to-destination 10.0.0.3:80
COMMIT
";
        apply_restore(&mut d, payload, true).expect("restore");
        assert_eq!(
            rules(&d, "nat", "KUBE-SERVICES"),
            vec![
                "-d 10.96.0.1/32 -j KUBE-SVC-A",
                "-d 10.96.0.3/32 -j KUBE-SVC-C"
            ]
        );
        // Undeclared chains are kept as they were, including ones knat does not own.
        assert_eq!(
            rules(&d, "nat", "KUBE-SVC-B"),
            vec!["-j DNAT --to-destination 10.0.0.2:80"]
        );
        assert_eq!(rules(&d, "nat", "CNI-OWNED"), vec!["-j RETURN"]);
        assert_eq!(rules(&d, "nat", "PREROUTING").len(), 2);
    }

    #[test]
    fn noflush_builtin_declaration_sets_policy_without_flushing() {
        let mut d = base();
        apply_restore(
            &mut d,
            "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING - [0:0]\nCOMMIT\n",
            true,
        )
        .expect("restore");
        assert_eq!(
            d.tables["filter"].chains["FORWARD"].policy.as_deref(),
            Some("ACCEPT")
        );
        assert_eq!(rules(&d, "nat", "PREROUTING").len(), 2);
        assert_eq!(
            d.tables["nat"].chains["PREROUTING"].policy.as_deref(),
            Some("ACCEPT")
        );
    }

    #[test]
    fn noflush_delete_chain() {
        let mut d = base();
        let payload = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-B - [0:0]\n-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-A\n-X KUBE-SVC-B\nCOMMIT\n";
        apply_restore(&mut d, payload, true).expect("restore");
        assert!(d.chain("nat", "KUBE-SVC-B").is_none());
        assert!(d.chain("nat", "KUBE-SVC-A").is_some());
    }

    #[test]
    fn dangling_jump_rejects_the_table_and_leaves_it_unchanged() {
        let mut d = base();
        let before = d.clone();
        let payload = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j KUBE-SVC-GONE\nCOMMIT\n";
        let err = apply_restore(&mut d, payload, true);
        assert_eq!(
            err,
            Err(RestoreError::DanglingJump {
                line: 4,
                text: "COMMIT".into(),
                table: "nat".into(),
                chain: "KUBE-SERVICES".into(),
                rule_line: 3,
                target: "KUBE-SVC-GONE".into(),
            })
        );
        assert_eq!(d, before);
    }

    #[test]
    fn deleting_a_referenced_chain_is_refused() {
        let mut d = base();
        let before = d.clone();
        // KUBE-SVC-A is still referenced from KUBE-SERVICES, which is not re-declared.
        let payload = "*nat\n:KUBE-SVC-A - [0:0]\n-X KUBE-SVC-A\nCOMMIT\n";
        let err = apply_restore(&mut d, payload, true);
        assert!(
            matches!(&err, Err(RestoreError::ChainInUse { line: 3, chain, from, .. }) if chain == "KUBE-SVC-A" && from == "KUBE-SERVICES"),
            "{err:?}"
        );
        assert_eq!(d, before);
    }

    #[test]
    fn other_refusals() {
        type Check = fn(&RestoreError) -> bool;
        let cases: [(&str, Check); 9] = [
            ("*nat\n-A KUBE-NOPE -j ACCEPT\nCOMMIT\n", |e| {
                matches!(e, RestoreError::NoSuchChain { line: 2, .. })
            }),
            ("*nat\n-X KUBE-SVC-A\nCOMMIT\n", |e| {
                matches!(e, RestoreError::ChainNotEmpty { .. })
            }),
            ("*nat\n-X PREROUTING\nCOMMIT\n", |e| {
                matches!(e, RestoreError::BuiltinChain { .. })
            }),
            ("*nat\n:KUBE-X ACCEPT [0:0]\nCOMMIT\n", |e| {
                matches!(e, RestoreError::PolicyOnUserChain { .. })
            }),
            ("*nat\n:PREROUTING RETURN [0:0]\nCOMMIT\n", |e| {
                matches!(e, RestoreError::BadPolicy { .. })
            }),
            ("*nat\n-I KUBE-SVC-A 3 -j ACCEPT\nCOMMIT\n", |e| {
                matches!(e, RestoreError::BadIndex { index: 3, .. })
            }),
            ("*nat\n-D KUBE-SVC-A -j ACCEPT\nCOMMIT\n", |e| {
                matches!(e, RestoreError::NoSuchRule { .. })
            }),
            ("*bogus\nCOMMIT\n", |e| {
                matches!(e, RestoreError::UnknownTable { line: 1, .. })
            }),
            ("*nat\n-A KUBE-SVC-A -j PREROUTING\nCOMMIT\n", |e| {
                matches!(e, RestoreError::JumpToBuiltin { .. })
            }),
        ];
        for (payload, check) in cases {
            let mut d = base();
            let before = d.clone();
            match apply_restore(&mut d, payload, true) {
                Ok(()) => panic!("{payload:?} was accepted"),
                Err(e) => assert!(check(&e), "{payload:?}: {e:?}"),
            }
            assert_eq!(d, before, "{payload:?} changed the state");
        }
    }

    #[test]
    fn full_restore_refuses_a_repeated_declaration() {
        let mut d = Dump::default();
        let err = apply_restore(&mut d, "*nat\n:A - [0:0]\n:A - [0:0]\nCOMMIT\n", false);
        assert!(matches!(
            err,
            Err(RestoreError::ChainExists { line: 3, .. })
        ));
    }

    #[test]
    fn insert_and_delete_positions() {
        let mut d = base();
        let payload = "*nat\n-I KUBE-SVC-A -j MARK --or-mark 0x4000\n-I KUBE-SVC-A 3 -j RETURN\n-D KUBE-SVC-A 2\nCOMMIT\n";
        apply_restore(&mut d, payload, true).expect("restore");
        assert_eq!(
            rules(&d, "nat", "KUBE-SVC-A"),
            vec!["-j MARK --set-xmark 0x4000/0x4000", "-j RETURN"]
        );
    }

    #[test]
    fn earlier_tables_stay_committed_when_a_later_one_fails() {
        let mut d = base();
        let payload = "*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n*nat\n-A NOPE -j ACCEPT\nCOMMIT\n";
        assert!(apply_restore(&mut d, payload, true).is_err());
        assert!(d.chain("filter", "KUBE-FORWARD").is_some());
        let payload = "*filter\n:KUBE-FW2 - [0:0]\nCOMMIT\n*nat\n-A \"oops\nCOMMIT\n";
        assert!(matches!(
            apply_restore(&mut d, payload, true),
            Err(RestoreError::Parse(_))
        ));
        assert!(d.chain("filter", "KUBE-FW2").is_some());
    }

    #[test]
    fn save_text_round_trips() {
        let d = base();
        let text = to_save_text(&d);
        assert!(text.starts_with("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n"));
        assert!(text.contains("\n-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-A\n"));
        let again = parse(&text).expect("parse");
        assert_eq!(again, d);
        assert_eq!(to_save_text(&again), text);
    }

    fn fragment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "-s 10.0.0.0/8",
            "! -s 10.244.0.0/16",
            "-d 172.30.0.41",
            "-i veth+",
            "! -i cbr0",
            "-p tcp -m tcp --dport 80",
            "-p udp --dport 53:55",
            "-m comment --comment \"ns/svc:p cluster IP\"",
            "-m comment --comment \"say \\\"hi\\\"\"",
            "-m addrtype --dst-type LOCAL",
            "-m addrtype ! --src-type LOCAL",
            "-m mark ! --mark 0x4000/0x4000",
            "-m conntrack --ctstate RELATED,ESTABLISHED",
            "-m statistic --mode random --probability 0.3333333333",
            "-m recent --name KUBE-SEP-X --rcheck --seconds 10800 --reap",
            "-m recent --name KUBE-SEP-X --set",
            "-m nfacct --nfacct-name localhost_nps_accepted_pkts",
            "-m multiport --dports 80,443,8000:8080",
            "-m limit --limit 5/s",
        ])
    }

    fn target() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "",
            "-j KUBE-SVC-X",
            "-g KUBE-SVC-X",
            "-j ACCEPT",
            "-j DROP",
            "-j RETURN",
            "-j REJECT",
            "-j REJECT --reject-with tcp-reset",
            "-j DNAT --to-destination 10.0.0.1:80",
            "-j DNAT --to-destination [fd00::1]:8080",
            "-j SNAT --to-source 1.2.3.4",
            "-j MASQUERADE --random-fully",
            "-j MARK --or-mark 0x4000",
            "-j MARK --xor-mark 0x4000",
            "-j LOG --log-prefix \"x y\"",
        ])
    }

    proptest! {
        #[test]
        fn canonical_rendering_parses_back_to_the_same_dump(
            rules in prop::collection::vec((prop::collection::vec(fragment(), 0..5), target()), 0..8)
        ) {
            let mut text = String::from("*nat\n:KUBE-SVC-X - [0:0]\n:KUBE-A - [0:0]\n");
            for (frags, target) in &rules {
                text.push_str(&format!("-A KUBE-A {} {}\n", frags.join(" "), target));
            }
            text.push_str("COMMIT\n");
            let d = parse(&text).expect("generated text parses");
            let rendered = to_save_text(&d);
            let again = parse(&rendered).expect("rendered text parses");
            prop_assert_eq!(&again, &d);
            prop_assert_eq!(to_save_text(&again), rendered);
        }
    }
}
