//! Rendering a [`TraceResult`] for operators: the path, indented by jump depth, then a one-line
//! verdict with the targets and masquerade, the branches when there are several, and the rules
//! that could not be understood.

use std::fmt::Write;

use super::trace::{TraceResult, Verdict};

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
    if result.branches.len() > 1 {
        let _ = writeln!(out, "branches:");
        for b in &result.branches {
            let _ = writeln!(
                out,
                "  {} -> {}{}",
                b.target.as_deref().unwrap_or("(no DNAT)"),
                b.verdict.as_str(),
                if b.masquerade { ", masqueraded" } else { "" }
            );
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
    use crate::dump::trace::{Branch, Step};

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
                },
                Branch {
                    target: Some("10.0.0.2:80".into()),
                    verdict: Verdict::Dnat,
                    masquerade: true,
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
  10.0.0.1:80 -> DNAT
  10.0.0.2:80 -> DNAT, masqueraded
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
