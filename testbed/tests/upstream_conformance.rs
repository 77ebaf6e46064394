//! Upstream's judge in CI: the `[Conformance]` tests of sig-network's Services, Conntrack and
//! Networking groups (19 with v1.37.2, the skips of `scripts/upstream-e2e.sh`), run by
//! upstream's own `e2e.test` against the real-node tier twice, with kube-proxy and with knat as
//! the DaemonSet. Every test that passes with kube-proxy must pass with knat, and kube-proxy
//! must pass every selected test (else the harness, not knat, is broken). The full sig-network
//! comparison is `scripts/upstream-e2e.sh` (docs/upstream-e2e.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use knat_testbed::proxies::Proxy;
use knat_testbed::upstream_e2e::{self, Comparison};

const FOCUS: &str = r"\[sig-network\] (Services|Conntrack|Networking).*\[Conformance\]";
const SKIP: &str = r"\[Serial\]|\[Disruptive\]|\[Slow\]|\[Flaky\]|\[Feature:[^]]+\]|SCTP|IPv6|DualStack|HealthCheckNodePort correctly when ExternalTrafficPolicy changes";

fn e2e_bin(repo: &Path) -> Option<PathBuf> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let mut command = Command::new("bash");
    command.arg(repo.join("scripts/build-e2e.sh"));
    if !ci {
        command.arg("--print");
    }
    match command.output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines().last().map(|l| PathBuf::from(l.trim()))
        }
        Ok(out) if ci => panic!(
            "scripts/build-e2e.sh failed under CI=true: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if ci => panic!("scripts/build-e2e.sh: {e}"),
        _ => None,
    }
}

#[test]
fn sig_network_conformance_passes_with_knat_as_with_kube_proxy() {
    if !knat_testbed::cluster::test_prerequisites("upstream sig-network conformance") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(e2e_bin) = e2e_bin(&repo) else {
        eprintln!("*** SKIPPED upstream sig-network conformance: run scripts/build-e2e.sh ***");
        return;
    };
    let out = repo.join("target/upstream-e2e-conformance");
    let runs = upstream_e2e::compare(&Comparison {
        repo: repo.clone(),
        e2e_bin,
        focus: FOCUS.to_string(),
        skip: SKIP.to_string(),
        procs: 3,
        proxies: vec![Proxy::KubeProxy, Proxy::Knat],
        timeout: Duration::from_secs(1800),
        out: out.clone(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let table = std::fs::read_to_string(out.join("table.md")).unwrap_or_default();
    eprintln!("{table}");
    let selected = |run: &upstream_e2e::ProxyRun| {
        run.results
            .values()
            .filter(|r| r.state != "skipped")
            .count()
    };
    for run in &runs {
        assert!(
            selected(run) >= 15,
            "{}: only {} tests ran:\n{table}",
            run.proxy.daemonset(),
            selected(run)
        );
    }
    let kube_proxy = &runs[0];
    let failed: Vec<&String> = kube_proxy
        .results
        .iter()
        .filter(|(_, r)| r.state != "skipped" && r.state != "passed")
        .map(|(n, _)| n)
        .collect();
    assert!(
        failed.is_empty(),
        "kube-proxy fails {failed:?}: the harness is broken\n{table}"
    );
    let regressions = upstream_e2e::regressions(&runs);
    assert!(
        regressions.is_empty(),
        "pass with kube-proxy, not with knat: {regressions:?}\n{table}"
    );
}
