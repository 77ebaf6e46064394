//! Rendering a [`TraceResult`] for operators: the path, indented by jump depth, then a one-line
//! verdict with the targets and masquerade, the branches when there are several (each with its
//! share of new connections and, when masqueraded, the rule that asked for it and the rule that
//! did it), and the rules that could not be understood.

use std::fmt::Write;

use super::trace::{Branch, TraceResult, Verdict};

/// Renders a trace result as readable text.
pub fn format_text(result: &TraceResult) -> String {
    let mut out = String::new();
    for step in &result.path {
        let indent = "  ".repeat(step.depth);
        let _ = match (&step.rule_index, &step.rule) {
            (Some(index), Some(rule)) => {
                let line = step
                    .rule_line
                    .map(|l| format!(" (line {l})"))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{indent}{} {} #{index}{line}: {rule}\n{indent}    => {}",
                    step.table, step.chain, step.action
                )
            }
            _ => writeln!(
                out,
                "{indent}{} {}: {}",
                step.table, step.chain, step.action
            ),
        };
    }
    let _ = writeln!(out, "{}", verdict_line(result));
    match result.branches.as_slice() {
        [] => {}
        [only] => masquerade_causes(&mut out, only, "  "),
        branches => {
            let _ = writeln!(out, "branches:");
            for b in branches {
                let _ = writeln!(
                    out,
                    "  {} ({:.1}%) -> {}{}",
                    b.target.as_deref().unwrap_or("(no DNAT)"),
                    b.chance * 100.0,
                    b.verdict.as_str(),
                    if b.masquerade { ", masqueraded" } else { "" }
                );
                masquerade_causes(&mut out, b, "      ");
            }
        }
    }
    if !result.unknown.is_empty() {
        let _ = writeln!(out, "not understood (treated as not matching):");
        for u in &result.unknown {
            let _ = writeln!(out, "  {u}");
        }
    }
    out
}

/// Why a branch is masqueraded: the rule that set the mark and the rule that source-NATed.
fn masquerade_causes(out: &mut String, branch: &Branch, indent: &str) {
    if let Some(rule) = &branch.mark_set_by {
        let _ = writeln!(out, "{indent}marked by {rule}");
    }
    if let Some(rule) = &branch.masquerade_by {
        let _ = writeln!(out, "{indent}source NAT by {rule}");
    }
}

fn verdict_line(result: &TraceResult) -> String {
    let some_not = result
        .branches
        .iter()
        .any(|b| !b.masquerade && matches!(b.verdict, Verdict::Dnat | Verdict::Accept));
    let masq = match (result.masquerade, some_not) {
        (true, true) => "masquerade: in some branches only (see below)",
        (true, false) => "masquerade: yes",
        (false, _) => "masquerade: no (source address preserved)",
    };
    match result.verdict {
        Verdict::Dnat => format!("verdict: DNAT to {}; {masq}", result.targets.join(", ")),
        Verdict::Accept => format!("verdict: ACCEPT (no DNAT); {masq}"),
        Verdict::Drop => "verdict: DROP".to_string(),
        Verdict::Reject => "verdict: REJECT".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::trace::{Branch, RuleRef, Step};

    fn rule(chain: &str, index: usize, line: usize, text: &str) -> RuleRef {
        RuleRef {
            table: "nat".into(),
            chain: chain.into(),
            rule_index: index,
            rule_line: line,
            rule: text.into(),
        }
    }

    #[test]
    fn renders_path_and_verdict() {
        let result = TraceResult {
            verdict: Verdict::Dnat,
            targets: vec!["10.0.0.1:80".into(), "10.0.0.2:80".into()],
            masquerade: true,
            path: vec![
                Step {
                    table: "nat".into(),
                    chain: "PREROUTING".into(),
                    depth: 0,
                    rule_index: None,
                    rule_line: None,
                    rule: None,
                    action: "enter nat PREROUTING".into(),
                },
                Step {
                    table: "nat".into(),
                    chain: "KUBE-SERVICES".into(),
                    depth: 1,
                    rule_index: Some(2),
                    rule_line: Some(14),
                    rule: Some("-d 10.96.0.10/32 -j KUBE-SVC-X".into()),
                    action: "jump to KUBE-SVC-X".into(),
                },
            ],
            branches: vec![
                Branch {
                    target: Some("10.0.0.1:80".into()),
                    verdict: Verdict::Dnat,
                    masquerade: false,
                    chance: 2.0 / 3.0,
                    mark_set_by: None,
                    masquerade_by: None,
                },
                Branch {
                    target: Some("10.0.0.2:80".into()),
                    verdict: Verdict::Dnat,
                    masquerade: true,
                    chance: 1.0 / 3.0,
                    mark_set_by: Some(rule(
                        "KUBE-SEP-B",
                        1,
                        30,
                        "-s 10.0.0.2/32 -j KUBE-MARK-MASQ",
                    )),
                    masquerade_by: Some(rule(
                        "KUBE-POSTROUTING",
                        3,
                        12,
                        "-j MASQUERADE --random-fully",
                    )),
                },
            ],
            unknown: vec!["nat/X rule 1 (line 3): -m limit --limit 1/s: not understood".into()],
        };
        let text = format_text(&result);
        let expected = "\
nat PREROUTING: enter nat PREROUTING
  nat KUBE-SERVICES #2 (line 14): -d 10.96.0.10/32 -j KUBE-SVC-X
      => jump to KUBE-SVC-X
verdict: DNAT to 10.0.0.1:80, 10.0.0.2:80; masquerade: in some branches only (see below)
branches:
  10.0.0.1:80 (66.7%) -> DNAT
  10.0.0.2:80 (33.3%) -> DNAT, masqueraded
      marked by nat KUBE-SEP-B #1 (line 30): -s 10.0.0.2/32 -j KUBE-MARK-MASQ
      source NAT by nat KUBE-POSTROUTING #3 (line 12): -j MASQUERADE --random-fully
not understood (treated as not matching):
  nat/X rule 1 (line 3): -m limit --limit 1/s: not understood
";
        assert_eq!(text, expected);
    }

    #[test]
    fn drop_verdict_line() {
        let result = TraceResult {
            verdict: Verdict::Drop,
            targets: vec![],
            masquerade: false,
            path: vec![],
            branches: vec![],
            unknown: vec![],
        };
        assert_eq!(format_text(&result), "verdict: DROP\n");
    }
}
