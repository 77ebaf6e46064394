//! Least privilege, seen from the API server: with the DaemonSet's ServiceAccount and RBAC
//! (`daemonset/serviceaccount.yaml`, `daemonset/rbac.yaml`) applied to a real kube-apiserver,
//! `kubectl auth can-i --list --as=system:serviceaccount:kube-system:knat` must list exactly
//! the rules docs/operations.md gives (the block after the line that names that command):
//! knat's own ClusterRole plus what every authenticated identity gets from the API server's
//! default roles. A rule more or less on either side fails the test. That knat works with
//! these rights and nothing more is the e2e and events tiers' business (they run knat as this
//! identity).
//!
//! Without root, the binaries or the tools it prints `*** SKIPPED ***`; with `CI=true` it fails
//! instead. Everything runs in the lab's fabric namespace; processes end by PID.

use std::collections::BTreeSet;
use std::path::Path;

use knat::lab::{Backend, Lab, LabOptions, Scenario};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");
const IDENTITY: &str = "system:serviceaccount:kube-system:knat";

/// The rows of a `kubectl auth can-i --list` table (its header dropped), sorted, each row's
/// columns split on runs of two or more spaces and rejoined with ` | `, so that a column
/// holding `[get list watch]` stays one column. Duplicate rows (two default roles granting
/// the same URL) are kept: the lists must be equal as multisets.
fn rows(table: &str) -> Vec<String> {
    let mut rows: Vec<String> = table
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Resources "))
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect();
    rows.sort();
    rows
}

/// The fenced block after the line of docs/operations.md that names the `can-i` command.
fn documented() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(repo.join("docs/operations.md")).expect("read the doc");
    let command = format!("kubectl auth can-i --list --as={IDENTITY}");
    let after = doc
        .split_once(&command)
        .unwrap_or_else(|| panic!("docs/operations.md does not name `{command}`"))
        .1;
    let block = after
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a ```text block after the command in docs/operations.md")
        .0;
    block.to_string()
}

#[test]
fn the_service_account_may_do_exactly_what_operations_md_says() {
    let Some(binaries) = knat_testbed::prerequisites::control_plane(
        "rbac",
        &[Backend::Nft],
        false,
        &["openssl", "curl"],
    ) else {
        return;
    };
    let scenario = Scenario::new("rbac").node("node-1").client("ext");
    let lab = Lab::build(scenario, LabOptions::new(Path::new(KNAT), Backend::Nft))
        .expect("build the lab namespaces");
    let plane = knat_testbed::lab_plane::start(
        "rbac",
        &lab,
        binaries,
        &knat_testbed::lab_plane::LabPlaneOptions {
            knat_rbac: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("start the control plane: {e}"));
    let cp = &plane.cp;
    let as_knat = format!("--as={IDENTITY}");
    // Cluster-wide (knat's ClusterRole), in kube-system (its own namespace) and in another
    // namespace: the same rules everywhere, nothing namespaced on top.
    let cluster = cp
        .kubectl(&["auth", "can-i", "--list", &as_knat], None)
        .expect("kubectl auth can-i --list");
    println!("kubectl auth can-i --list {as_knat}:\n{cluster}");
    let wanted = rows(&documented());
    let got = rows(&cluster);
    let (wanted_set, got_set): (BTreeSet<&String>, BTreeSet<&String>) =
        (wanted.iter().collect(), got.iter().collect());
    let extra: Vec<&&String> = got_set.difference(&wanted_set).collect();
    let missing: Vec<&&String> = wanted_set.difference(&got_set).collect();
    assert!(
        got == wanted,
        "the API server grants {IDENTITY} rights docs/operations.md does not list: {extra:?}; \
         the doc lists rights it does not have: {missing:?}\nlive:\n{cluster}"
    );
    for namespace in ["kube-system", "default"] {
        let listed = cp
            .kubectl(
                &["auth", "can-i", "--list", &as_knat, "-n", namespace],
                None,
            )
            .expect("kubectl auth can-i --list -n");
        assert_eq!(rows(&listed), wanted, "in namespace {namespace}:\n{listed}");
    }
    // Spot checks of what least privilege means: no write to what knat reads, no Secrets.
    for (verb, resource) in [
        ("list", "services"),
        ("watch", "endpointslices.discovery.k8s.io"),
        ("get", "nodes"),
        ("create", "events.events.k8s.io"),
        ("update", "services"),
        ("delete", "endpointslices.discovery.k8s.io"),
        ("patch", "nodes"),
        ("get", "secrets"),
        ("list", "pods"),
    ] {
        let out = cp.kubectl(&["auth", "can-i", verb, resource, &as_knat], None);
        let answer = match &out {
            Ok(text) => text.trim().to_string(),
            // `kubectl auth can-i` exits 1 for "no".
            Err(e) => e.to_string(),
        };
        let allowed = wanted.iter().any(|row| {
            let verbs = row.rsplit(" | ").next().unwrap_or("");
            row.starts_with(&format!("{resource} |"))
                && verbs
                    .trim_matches(['[', ']'])
                    .split_whitespace()
                    .any(|v| v == verb || v == "*")
        });
        assert_eq!(
            out.is_ok() && answer == "yes",
            allowed,
            "can-i {verb} {resource}: {answer}"
        );
    }
}
