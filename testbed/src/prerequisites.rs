//! Whether a real-kernel test can run here: root and the programs it needs. Under `CI=true` a
//! missing prerequisite fails the test (it never skips there); elsewhere the test prints a loud
//! SKIPPED line and returns. Test-only, so it lives in the test bed, not in the shipped crate.
//! [`control_plane`] adds the Kubernetes binaries, for the tests on a real control plane.

use std::path::Path;

use knat::lab::{Backend, preflight};

use crate::control_plane::K8sBinaries;

/// True when running as root with every program in `programs` available. Otherwise the test
/// cannot run: under `CI=true` that is a failure (panic, naming what is missing); elsewhere a
/// loud SKIPPED line is printed and false returned.
pub fn test_prerequisites(test: &str, programs: &[&str]) -> bool {
    let is_root = knat::lab::effective_uid() == Some(0);
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| knat::lab::find_program(p).is_none())
        .collect();
    if is_root && missing.is_empty() {
        return true;
    }
    let why = format!("root: {is_root}, missing programs: {missing:?}");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: prerequisites missing under CI=true ({why})");
    }
    eprintln!("\n*** SKIPPED {test}: needs root and {programs:?} ({why}) ***\n");
    false
}

/// The preamble of every test on a real control plane: root and the lab's programs for
/// `backends` (and IPv6 when `ipv6`), the extra `tools`, and the Kubernetes binaries. Returns
/// the binaries, or None after a loud SKIPPED line; under `CI=true` nothing skips: the binaries
/// are built when missing (`scripts/build-k8s.sh`) and anything else missing is a panic.
pub fn control_plane(
    test: &str,
    backends: &[Backend],
    ipv6: bool,
    tools: &[&str],
) -> Option<K8sBinaries> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let skip = |why: String| -> Option<K8sBinaries> {
        if ci {
            panic!("{test}: cannot run under CI=true: {why}");
        }
        eprintln!("\n*** SKIPPED {test} (real control plane): {why} ***\n");
        None
    };
    if let Err(e) = preflight(backends, ipv6) {
        return skip(e.to_string());
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|p| knat::lab::find_program(p).is_none())
        .collect();
    if !missing.is_empty() {
        return skip(format!("missing tools: {missing:?}"));
    }
    match K8sBinaries::locate(Path::new(REPO), ci) {
        Ok(binaries) => Some(binaries),
        Err(e) => skip(format!(
            "{e}; build them with scripts/build-k8s.sh (many minutes the first time)"
        )),
    }
}

/// The repository (the workspace root, which holds `scripts/build-k8s.sh`).
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
