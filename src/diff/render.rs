//! `knat diff` output: chain by chain in words, or JSON.

use std::fmt::Write as _;

use super::DiffReport;

/// The text report of one family.
pub fn text(report: &DiffReport) -> String {
    let mut out = String::new();
    if !report.has_drift() {
        let _ = writeln!(
            out,
            "{}: no drift: all {} of knat's chains and {} rules are present, in order, and nothing foreign is in them",
            report.family, report.chains, report.rules
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{}: DRIFT in {} chain(s), {} difference(s) ({} chains, {} rules compared)",
        report.family,
        report.drift.len(),
        report.change_count(),
        report.chains,
        report.rules
    );
    for chain in &report.drift {
        let owner = chain
            .owner
            .as_ref()
            .map(|o| format!(" for {o}"))
            .unwrap_or_default();
        for change in &chain.changes {
            let _ = writeln!(
                out,
                "  {} {}{owner} {}",
                chain.table, chain.chain, change.message
            );
            if let Some(live) = &change.live {
                let _ = writeln!(out, "      live:   {live}");
            }
            if let Some(desired) = &change.desired {
                let _ = writeln!(out, "      wanted: {desired}");
            }
        }
    }
    out
}
