//! `knat diff` against real kernel tables: a network namespace this test creates is loaded with
//! `knat render` output through `iptables-nft-restore`, then tampered with (a rule deleted, a
//! chain flushed, a foreign rule added, a stale chain created), and `knat diff` must name each
//! change and exit 1, and exit 0 once the tables are restored.
//!
//! Needs root, `ip` and the iptables-nft tools. With `CI=true` missing prerequisites are a
//! failure; otherwise the test prints SKIPPED and returns. Only the namespace it creates is
//! touched, and it is deleted also when the test fails.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/doctor/stacked/cluster.yaml"
);
/// `KUBE-SVL-` + upstream's hash of `demo/web:httptcp` (reference test vector).
const SVL: &str = "KUBE-SVL-XRY76EGRC3BSCIIJ";

/// True when the test can run (see `knat_testbed::prerequisites::test_prerequisites`).
fn prerequisites(test: &str) -> bool {
    knat_testbed::prerequisites::test_prerequisites(
        test,
        &[
            "ip",
            "iptables-nft",
            "iptables-nft-restore",
            "iptables-nft-save",
        ],
    )
}

/// A network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("knat-{tag}-{}-{nanos}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("spawn ip");
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("wait")
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "{args:?} failed in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `knat diff` inside the namespace: (exit code, stdout).
    fn diff(&self, extra: &[&str]) -> (i32, String) {
        let mut args = vec![
            KNAT,
            "diff",
            "--node-name",
            "node-1",
            "--ip-family",
            "ipv4",
            "--iptables-backend",
            "nft",
        ];
        args.extend_from_slice(extra);
        args.push(FIXTURE);
        let out = self.run(&args, None);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "--- knat diff {extra:?} ---\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), stdout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn render() -> String {
    let out = Command::new(KNAT)
        .args(["render", "--node-name", "node-1", FIXTURE])
        .output()
        .expect("spawn knat render");
    assert!(
        out.status.success(),
        "knat render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn diff_names_each_tampering_in_a_real_namespace() {
    if !prerequisites("diff_names_each_tampering_in_a_real_namespace") {
        return;
    }
    let payload = render();
    let ns = Netns::new("diff");
    let load = || {
        ns.ok(&["iptables-nft-restore"], Some(&payload));
    };
    load();

    // Pristine: no drift.
    let (code, out) = ns.diff(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("IPv4: no drift"), "{out}");

    // 1. Delete the second rule of the local-endpoints chain: node-1's endpoints sort as
    //    10.244.1.11, .12, .13, so rule 2 sends to 10.244.1.12:8080.
    ns.ok(&["iptables-nft", "-t", "nat", "-D", SVL, "2"], None);
    let (code, out) = ns.diff(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("IPv4: DRIFT in 1 chain(s), 1 difference(s)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "nat {SVL} for demo/web:http is missing the endpoint 10.244.1.12:8080 (KUBE-SEP-"
        )),
        "{out}"
    );

    // 2. Flush KUBE-SERVICES.
    load();
    ns.ok(&["iptables-nft", "-t", "nat", "-F", "KUBE-SERVICES"], None);
    let (code, out) = ns.diff(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("nat KUBE-SERVICES was flushed: none of its"),
        "{out}"
    );
    assert!(
        out.contains("DRIFT in 1 chain(s), 1 difference(s)"),
        "{out}"
    );

    // 3. A foreign rule in one of knat's chains.
    load();
    ns.ok(
        &[
            "iptables-nft",
            "-t",
            "filter",
            "-A",
            "KUBE-FORWARD",
            "-s",
            "192.0.2.99",
            "-j",
            "ACCEPT",
        ],
        None,
    );
    let (code, out) = ns.diff(&[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("filter KUBE-FORWARD has a foreign rule"),
        "{out}"
    );
    assert!(
        out.contains("live:   -A KUBE-FORWARD -s 192.0.2.99/32 -j ACCEPT"),
        "{out}"
    );

    // 4. All at once, plus a stale endpoint chain, in JSON.
    ns.ok(&["iptables-nft", "-t", "nat", "-D", SVL, "2"], None);
    ns.ok(&["iptables-nft", "-t", "nat", "-F", "KUBE-SERVICES"], None);
    ns.ok(
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-N",
            "KUBE-SEP-AAAAAAAAAAAAAAAA",
        ],
        None,
    );
    let (code, out) = ns.diff(&["--output", "json"]);
    assert_eq!(code, 1, "{out}");
    let reports: serde_json::Value = serde_json::from_str(&out).expect("json");
    let drift = reports[0]["drift"].as_array().expect("drift array");
    let kinds: Vec<(String, String)> = drift
        .iter()
        .flat_map(|c| {
            let chain = c["chain"].as_str().unwrap_or_default().to_string();
            c["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |ch| {
                    (
                        chain.clone(),
                        ch["kind"].as_str().unwrap_or_default().to_string(),
                    )
                })
        })
        .collect();
    let expect = |chain: &str, kind: &str| {
        assert!(
            kinds.contains(&(chain.to_string(), kind.to_string())),
            "{chain} {kind} not in {kinds:?}"
        )
    };
    expect("KUBE-FORWARD", "foreign-rule");
    expect("KUBE-SERVICES", "flushed");
    expect(SVL, "missing-endpoint");
    expect("KUBE-SEP-AAAAAAAAAAAAAAAA", "stale-chain");
    assert_eq!(kinds.len(), 4, "{kinds:?}");

    // Restored: no drift again.
    ns.ok(
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-X",
            "KUBE-SEP-AAAAAAAAAAAAAAAA",
        ],
        None,
    );
    load();
    let (code, out) = ns.diff(&[]);
    assert_eq!(code, 0, "{out}");
}
