//! `knat doctor` over fixture clusters (tests/fixtures/doctor/*): node identity, the spread
//! numbers of each Local service, findings and exit codes, through the real binary.

use std::process::Command;

use serde_json::Value;

const KNAT: &str = env!("CARGO_BIN_EXE_knat");

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/doctor/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs `knat doctor --from-files FIXTURE ARGS`: (exit code, stdout).
fn doctor(name: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(KNAT)
        .args(["doctor", "--from-files", &fixture(name)])
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .expect("spawn knat");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout)
}

fn doctor_json(name: &str, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let (code, out) = doctor(name, &all);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
    )
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["local_services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == name))
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

fn row<'a>(svc: &'a Value, node: &str) -> &'a Value {
    svc["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["node"] == node))
        .unwrap_or_else(|| panic!("no row for {node} in {svc:#}"))
}

fn close(value: &Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-9)
}

fn findings(report: &Value, severity: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["severity"] == severity)
        .map(|f| {
            format!(
                "{}: {}",
                f["subject"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn balanced_cluster_is_healthy_with_equal_shares() {
    let (code, r) = doctor_json("balanced", &["--node-name", "node-2"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["node"]["exists"], true);
    let web = service(&r, "demo/web");
    assert_eq!(web["health_check_node_port"], 32080);
    for node in ["node-1", "node-2", "node-3"] {
        let e = row(web, node);
        assert_eq!(e["ready"], 2, "{node}");
        assert_eq!(e["health"], 200, "{node}");
    }
    let shares = web["spread"]["nodes"].as_array().expect("nodes");
    assert_eq!(shares.len(), 3);
    for s in shares {
        assert!(close(&s["node_share"], 1.0 / 3.0), "{s}");
        assert!(close(&s["pod_share"], 1.0 / 6.0), "{s}");
        assert!(close(&s["weighted_pod_share"], 1.0 / 6.0), "{s}");
    }
    assert!(close(&web["spread"]["ratio"], 1.0));
    assert_eq!(web["imbalanced"], false);
    assert_eq!(web["this_node"]["local_ready"], 2);
    assert_eq!(web["this_node"]["health"], 200);
    assert_eq!(r["broken"], 0);
    assert_eq!(r["warnings"], 0);
    // The NodePort service with Cluster policy is not a Local service.
    assert_eq!(r["local_services"].as_array().map(Vec::len), Some(1));
}

#[test]
fn stacked_cluster_is_imbalanced_but_not_broken() {
    let (code, r) = doctor_json("stacked", &["--node-name", "node-3"]);
    assert_eq!(code, 0, "imbalance alone is not broken: {r:#}");
    let web = service(&r, "demo/web");
    let (n1, n2, n3) = (row(web, "node-1"), row(web, "node-2"), row(web, "node-3"));
    assert_eq!(
        (
            n1["ready"].as_u64(),
            n2["ready"].as_u64(),
            n3["ready"].as_u64()
        ),
        (Some(3), Some(1), Some(0))
    );
    assert_eq!(n3["terminating"], 1);
    assert_eq!(n3["health"], 503);
    assert_eq!(
        n1["pods"],
        serde_json::json!(["web-5d8f-11", "web-5d8f-12", "web-5d8f-13"])
    );
    let spread = &web["spread"];
    assert_eq!(spread["total_pods"], 4);
    let shares = spread["nodes"].as_array().expect("nodes");
    assert_eq!(shares.len(), 2, "node-3 answers 503 and gets nothing");
    assert!(close(&shares[0]["node_share"], 0.5));
    assert!(close(&shares[0]["pod_share"], 1.0 / 6.0));
    assert!(close(&shares[1]["pod_share"], 0.5));
    assert!(close(&shares[0]["weighted_pod_share"], 0.25));
    assert!(close(&shares[1]["weighted_pod_share"], 0.25));
    assert!(close(&spread["ratio"], 3.0));
    assert_eq!(web["imbalanced"], true);
    assert_eq!(web["advice"]["rule"], "topologySpread");
    assert!(web["advice"]["snippet"].as_str().is_some_and(|s| {
        s.contains("topologyKey: kubernetes.io/hostname") && s.contains("app: web")
    }));
    assert!(
        web["advice"]["trade_off"]
            .as_str()
            .is_some_and(|s| s.contains("Pending"))
    );
    assert_eq!(web["this_node"]["health"], 503);
    assert!(
        web["this_node"]["explanation"]
            .as_str()
            .is_some_and(|s| s.contains("1 terminating local endpoint"))
    );
    let warnings = findings(&r, "warning");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("3.0x"), "{warnings:?}");

    // A threshold above the ratio silences the warning.
    let (code, r) = doctor_json(
        "stacked",
        &["--node-name", "node-1", "--imbalance-threshold", "3.5"],
    );
    assert_eq!(code, 0);
    assert_eq!(service(&r, "demo/web")["imbalanced"], false);
    assert_eq!(r["warnings"], 0);
}

#[test]
fn no_endpoints_collisions_and_ignored_services_are_reported() {
    let (code, r) = doctor_json("no-endpoints", &["--node-name", "node-1"]);
    assert_eq!(code, 1, "{r:#}");
    let broken = findings(&r, "broken");
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(
        broken.iter().any(|f| f.starts_with(
            "demo/web: externalTrafficPolicy: Local but no ready endpoint on any node"
        )),
        "{broken:?}"
    );
    assert!(
        broken.iter().any(|f| f.starts_with("port 32080:")
            && f.contains("demo/shop healthCheckNodePort and demo/web healthCheckNodePort")),
        "{broken:?}"
    );
    let warnings = findings(&r, "warning");
    assert!(
        warnings
            .iter()
            .any(|f| f.starts_with("demo/edge:") && f.contains("\"other-proxy\"")),
        "{warnings:?}"
    );
    let info = findings(&r, "info");
    assert!(
        info.iter()
            .any(|f| f.starts_with("demo/db:") && f.contains("headless")),
        "{info:?}"
    );
    let web = service(&r, "demo/web");
    assert!(web["spread"]["ratio"].is_null());
    assert_eq!(row(web, "node-1")["health"], 503);
    assert_eq!(web["this_node"]["health"], 503);
}

#[test]
fn wrong_node_name_is_broken_and_suggests_the_real_name() {
    let (code, r) = doctor_json("wrong-node-name", &["--node-name", "node-1"]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["node"]["exists"], false);
    assert_eq!(r["node"]["source"], "--node-name");
    let broken = findings(&r, "broken");
    assert!(
        broken.iter().any(|f| f.contains("no Node named \"node-1\"")
            && f.contains("Did you mean \"node-1.example.internal\"")),
        "{broken:?}"
    );
    assert!(
        broken.iter().any(
            |f| f.contains("all 1 externalTrafficPolicy: Local services drop external traffic")
        ),
        "{broken:?}"
    );
    let web = service(&r, "demo/web");
    assert_eq!(web["this_node"]["local_ready"], 0);
    assert_eq!(web["this_node"]["health"], 503);

    // With the right name, the same cluster is fine.
    let (code, r) = doctor_json(
        "wrong-node-name",
        &["--node-name", "node-1.example.internal"],
    );
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(service(&r, "demo/web")["this_node"]["local_ready"], 1);
}

#[test]
fn all_nodes_and_table_output() {
    let (code, r) = doctor_json("stacked", &["--all-nodes"]);
    assert_eq!(code, 0);
    assert!(r["node"].is_null(), "no node name given: no identity check");
    let nodes = r["nodes"].as_array().expect("nodes overview");
    let unhealthy: Vec<&str> = nodes
        .iter()
        .filter(|n| n["unhealthy"].as_array().is_some_and(|u| !u.is_empty()))
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(unhealthy, ["node-3"]);

    let (code, text) = doctor("stacked", &["--node-name", "node-1"]);
    assert_eq!(code, 0);
    assert!(text.contains("  node-1 *  3      0            200     50.0%       16.7%      25.0%     web-5d8f-11, web-5d8f-12, web-5d8f-13"), "{text}");
    assert!(
        text.contains("max/min pod load: 3.00  IMBALANCED"),
        "{text}"
    );
    assert!(text.contains("OK: 0 broken, 1 warning(s)"), "{text}");
}

#[test]
fn diff_against_a_saved_dump() {
    let cluster = format!("{}/cluster.yaml", fixture("stacked"));
    let render = Command::new(KNAT)
        .args(["render", "--node-name", "node-1", &cluster])
        .output()
        .expect("render");
    assert!(render.status.success());
    let payload = String::from_utf8(render.stdout).expect("utf-8");
    let dir = std::env::temp_dir().join(format!("knat-diff-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let run = |text: &str| {
        let path = dir.join("dump.txt");
        std::fs::write(&path, text).expect("write");
        let out = Command::new(KNAT)
            .args([
                "diff",
                "--node-name",
                "node-1",
                "--dump",
                path.to_str().unwrap_or_default(),
                &cluster,
            ])
            .output()
            .expect("diff");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&payload);
    assert_eq!(code, 0, "{out}");
    // Drop the DNAT of one endpoint chain: the chain is present but does nothing useful.
    let tampered: String = payload
        .lines()
        .filter(|l| !(l.contains("DNAT --to-destination 10.244.2.11:8080")))
        .map(|l| format!("{l}\n"))
        .collect();
    let (code, out) = run(&tampered);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("for demo/web:http is missing its DNAT to 10.244.2.11:8080"),
        "{out}"
    );
    assert!(out.contains("wanted: -A KUBE-SEP-"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
