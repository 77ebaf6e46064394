//! Doctor's output: a readable text report and JSON.

use std::fmt::Write as _;

use super::analyze::{Finding, LocalService, NodeIdentity, NodeOverview, Report, fmt_selector};

/// Lays out rows in columns separated by two spaces (the last column is not padded).
pub fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(indent);
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn pct(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            let _ = writeln!(out, "{indent}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{indent}{line}");
    }
    out
}

/// The text report: the node's identity, every Local Service, the health-check answers per
/// node, the findings and the verdict.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    if let Some(node) = &report.node {
        node_section(&mut out, node);
    }
    if report.local_services.is_empty() {
        out.push_str("No externalTrafficPolicy: Local services.\n\n");
    } else {
        let _ = writeln!(
            out,
            "externalTrafficPolicy: Local services (imbalance threshold {:.1})\n",
            report.imbalance_threshold
        );
    }
    for svc in &report.local_services {
        local_service_section(&mut out, report, svc);
    }
    if let Some(nodes) = &report.nodes {
        health_section(&mut out, nodes);
    }
    if !report.findings.is_empty() {
        findings_section(&mut out, &report.findings);
    }
    let _ = writeln!(
        out,
        "{}: {} broken, {} warning(s)",
        if report.is_broken() { "BROKEN" } else { "OK" },
        report.broken,
        report.warnings
    );
    out
}

/// Which Node doctor checked, and whether its name is right.
fn node_section(out: &mut String, node: &NodeIdentity) {
    let _ = writeln!(out, "Node {} (name from {})", node.name, node.source);
    let exists = match node.exists {
        Some(true) => "yes".to_string(),
        Some(false) => format!("NO (Nodes: {})", node.known_nodes.join(", ")),
        None => "unknown (no Node objects in the input)".to_string(),
    };
    let _ = writeln!(out, "  Node object exists: {exists}");
    match (&node.hostname, node.matches_hostname) {
        (Some(h), Some(true)) => {
            let _ = writeln!(out, "  host name:          {h} (same)");
        }
        (Some(h), _) => {
            let _ = writeln!(out, "  host name:          {h} (differs)");
        }
        _ => {}
    }
    out.push('\n');
}

/// One Local Service: its endpoints per node, the spread, this node's view and the advice.
fn local_service_section(out: &mut String, report: &Report, svc: &LocalService) {
    let mut head = format!("{}  {}", svc.service, svc.service_type);
    if let Some(p) = svc.health_check_node_port {
        let _ = write!(head, "  healthCheckNodePort {p}");
    }
    if !svc.selector.is_empty() {
        let _ = write!(head, "  selector {}", fmt_selector(&svc.selector));
    }
    let _ = writeln!(out, "{head}");
    let mut rows = vec![
        [
            "NODE",
            "READY",
            "TERMINATING",
            "HEALTH",
            "NODE SHARE",
            "POD SHARE",
            "WEIGHTED",
            "PODS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in &svc.endpoints {
        let share = svc.spread.nodes.iter().find(|n| n.node == e.node);
        let mut node = e.node.clone();
        if !e.known_node {
            node.push_str(" (no such Node)");
        }
        if report.node.as_ref().is_some_and(|n| n.name == e.node) {
            node.push_str(" *");
        }
        rows.push(vec![
            node,
            e.ready.to_string(),
            e.terminating.to_string(),
            e.health.to_string(),
            share.map_or("-".into(), |s| pct(s.node_share)),
            share.map_or("-".into(), |s| pct(s.pod_share)),
            share.map_or("-".into(), |s| pct(s.weighted_pod_share)),
            e.pods.join(", "),
        ]);
    }
    out.push_str(&columns(&rows, "  "));
    match svc.spread.ratio {
        Some(r) => {
            let _ = writeln!(
                out,
                "  max/min pod load: {r:.2}{}",
                if svc.imbalanced { "  IMBALANCED" } else { "" }
            );
        }
        None => out.push_str("  max/min pod load: - (no ready endpoint)\n"),
    }
    if let (Some(here), Some(node)) = (&svc.this_node, &report.node) {
        out.push_str(&wrap(
            &format!("this node ({}): {}", node.name, here.explanation),
            96,
            "  ",
        ));
    }
    if let Some(advice) = &svc.advice {
        out.push_str("  spread the pods: add to the pod template (spec.template.spec):\n");
        for line in advice.snippet.lines() {
            let _ = writeln!(out, "    {line}");
        }
        out.push_str(&wrap(&advice.trade_off, 96, "  "));
    }
    out.push('\n');
}

/// Which nodes' health checks answer 200 and which 503.
fn health_section(out: &mut String, nodes: &[NodeOverview]) {
    out.push_str("Health-check answers per node\n");
    let mut rows = vec![
        ["NODE", "200 (LB sends traffic)", "503 (LB skips)"]
            .map(String::from)
            .to_vec(),
    ];
    for n in nodes {
        let list = |v: &Vec<String>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        rows.push(vec![n.node.clone(), list(&n.healthy), list(&n.unhealthy)]);
    }
    out.push_str(&columns(&rows, "  "));
    out.push('\n');
}

/// Every finding, with its fix.
fn findings_section(out: &mut String, findings: &[Finding]) {
    out.push_str("Findings\n");
    for f in findings {
        let text = format!("{}: {}", f.subject, f.message);
        let first = wrap(&text, 88, "");
        for (i, line) in first.lines().enumerate() {
            let label = if i == 0 { f.severity.as_str() } else { "" };
            let _ = writeln!(out, "  {label:<8} {line}");
        }
        if let Some(fix) = &f.fix {
            for (i, line) in wrap(fix, 84, "").lines().enumerate() {
                let _ = writeln!(
                    out,
                    "  {:<8} {}{line}",
                    "",
                    if i == 0 { "fix: " } else { "     " }
                );
            }
        }
    }
    out.push('\n');
}

/// The JSON report.
pub fn json(report: &Report) -> Result<String, super::DoctorError> {
    let mut text = serde_json::to_string_pretty(report).map_err(super::DoctorError::Json)?;
    text.push('\n');
    Ok(text)
}
