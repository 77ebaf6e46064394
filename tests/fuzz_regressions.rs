//! Bad input in stable Rust, bounded: the inputs of the cargo-fuzz targets (fuzz/, nightly)
//! run here on every `cargo test`, so that what fuzzing found stays fixed:
//! - every seed (`fuzz/seeds/<target>/`) and every input fuzzing found to crash, hang or grow
//!   without bound (`fuzz/regressions/<target>/`, one file each, named by what it broke);
//! - a bounded proptest run per target (`PROPTEST_CASES`, 512 unless set) of inputs built from
//!   each format's own words, so that the stable suite also reaches the parsers' deeper paths.
//!
//! Each entry point must return (an error is fine) and never panic. Each input runs under a
//! time bound (a hang fails instead of blocking the suite).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use knat::input::{Source, load};
use proptest::prelude::*;

/// Longest time one input may take (a debug build on a loaded 2-core machine).
const PER_INPUT: Duration = Duration::from_secs(20);

#[path = "../fuzz/bodies.rs"]
mod bodies;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("iptables_save", bodies::iptables_save),
    ("trace", bodies::trace),
    ("kube_proxy_config", bodies::kube_proxy_config),
    ("manifests", bodies::manifests),
];

/// Runs `f` on `data` on its own thread: a panic or a run past [`PER_INPUT`] is an error.
fn bounded(f: Target, data: Vec<u8>) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(|| f(&data)).map_err(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string())
        });
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(PER_INPUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(panic)) => Err(format!("panicked: {panic}")),
        Err(_) => Err(format!("did not return within {PER_INPUT:?}")),
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_found_input_returns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seen = 0;
    let mut failures = Vec::new();
    for (name, f) in TARGETS {
        let seeds = files_in(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "no seeds for {name}");
        for file in seeds
            .into_iter()
            .chain(files_in(&root.join("regressions").join(name)))
        {
            let data = std::fs::read(&file).expect("read input");
            seen += 1;
            if let Err(e) = bounded(f, data) {
                failures.push(format!("{name} {}: {e}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(seen >= 4);
}

/// Lines of `iptables-save` text made of the words knat and kube-proxy write, and some noise.
fn dump_text() -> impl Strategy<Value = String> {
    let word = prop::sample::select(vec![
        "*nat",
        "*filter",
        "*mangle",
        "*raw",
        "COMMIT",
        ":PREROUTING ACCEPT [0:0]",
        ":OUTPUT ACCEPT [3:180]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-SVC-ABC - [0:0]",
        ":KUBE-SEP-XYZ - [0:0]",
        "-A",
        "-I",
        "-N",
        "-X",
        "-F",
        "PREROUTING",
        "OUTPUT",
        "KUBE-SERVICES",
        "KUBE-SVC-ABC",
        "KUBE-SEP-XYZ",
        "-j",
        "-g",
        "DNAT",
        "SNAT",
        "MASQUERADE",
        "RETURN",
        "ACCEPT",
        "DROP",
        "REJECT",
        "MARK",
        "--to-destination",
        "--to-source",
        "10.96.0.10:80",
        "[fd00::1]:80",
        "10.0.0.1:",
        ":80",
        "-d",
        "-s",
        "10.96.0.10/32",
        "10.0.0.0/8",
        "::/0",
        "999.1.1.1/33",
        "-p",
        "tcp",
        "udp",
        "sctp",
        "-m",
        "statistic",
        "--mode",
        "random",
        "nth",
        "--probability",
        "0.50000000000",
        "--every",
        "--packet",
        "0",
        "-1",
        "18446744073709551616",
        "recent",
        "--name",
        "--rcheck",
        "--seconds",
        "--reap",
        "--set",
        "--mask",
        "0x4000/0x4000",
        "--set-xmark",
        "--xor-mark",
        "comment",
        "--comment",
        "\"demo/web:http cluster IP\"",
        "\"",
        "\\\"",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "conntrack",
        "--ctstate",
        "INVALID,NEW",
        "mark",
        "--mark",
        "!",
        "--dport",
        "--dports",
        "80:90",
        "multiport",
        "-i",
        "-o",
        "eth+",
        "lo",
        "--random-fully",
        "--reject-with",
        "icmp-port-unreachable",
        "[0:0]",
        "#",
        "",
    ]);
    let chain = prop::sample::select(vec![
        "PREROUTING",
        "OUTPUT",
        "POSTROUTING",
        "INPUT",
        "FORWARD",
        "KUBE-SERVICES",
        "KUBE-SVC-ABC",
        "KUBE-SEP-XYZ",
    ]);
    let rule = (chain.clone(), prop::collection::vec(word, 0..12))
        .prop_map(|(c, w)| format!("-A {c} {}", w.join(" ")));
    let noise = "[ -~]{0,20}";
    let line = prop_oneof![8 => rule, 1 => noise];
    let table = (
        prop::sample::select(vec!["nat", "filter", "mangle"]),
        prop::collection::vec(line, 0..12),
    )
        .prop_map(|(t, lines)| {
            let mut text = format!(
                "*{t}\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
                 :INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
                 :KUBE-SVC-ABC - [0:0]\n:KUBE-SEP-XYZ - [0:0]\n"
            );
            for l in lines {
                text.push_str(&l);
                text.push('\n');
            }
            text.push_str("COMMIT\n");
            text
        });
    prop::collection::vec(table, 0..4).prop_map(|tables| tables.concat())
}

/// YAML/JSON documents of KubeProxyConfiguration-like maps with odd values.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "apiVersion",
        "kind",
        "mode",
        "bindAddress",
        "clusterCIDR",
        "healthzBindAddress",
        "metricsBindAddress",
        "hostnameOverride",
        "nodePortAddresses",
        "detectLocalMode",
        "detectLocal",
        "bridgeInterface",
        "interfaceNamePrefix",
        "iptables",
        "masqueradeAll",
        "masqueradeBit",
        "syncPeriod",
        "minSyncPeriod",
        "localhostNodePorts",
        "featureGates",
        "conntrack",
        "maxPerCore",
        "clientConnection",
        "kubeconfig",
        "oomScoreAdj",
        "showHiddenMetricsForVersion",
        "logging",
    ]);
    let value = prop::sample::select(vec![
        "kubeproxy.config.k8s.io/v1alpha1",
        "KubeProxyConfiguration",
        "iptables",
        "ipvs",
        "nftables",
        "\"\"",
        "0.0.0.0",
        "0.0.0.0:10256",
        "[::]:10249",
        "10.244.0.0/16,fd00::/48",
        "10.244.0.0/33",
        "primary",
        "[localhost, 10.0.0.0/8]",
        "[]",
        "{}",
        "ClusterCIDR",
        "NodeCIDR",
        "BridgeInterface",
        "InterfaceNamePrefix",
        "true",
        "false",
        "null",
        "14",
        "-1",
        "32",
        "99999999999999999999",
        "30s",
        "1h2m3.5s",
        "-5s",
        "1e400s",
        "0s",
        "{AllAlpha: true}",
        "{NoSuchGate: false}",
        "~",
        "&a x",
        "*a",
        "!!binary aGVsbG8=",
        "'x",
    ]);
    let value = value.prop_map(str::to_string);
    let nested = (value.clone(), value.clone()).prop_map(|(a, b)| {
        format!(
            "{{masqueradeBit: {a}, syncPeriod: {b}, minSyncPeriod: 1s, localhostNodePorts: {a}}}"
        )
    });
    let value = prop_oneof![4 => value, 1 => nested];
    let entries = prop::collection::btree_map(key, value, 0..12);
    (any::<bool>(), 0..10u8, entries).prop_map(|(json, header, entries)| {
        let mut lines = Vec::new();
        if header > 0 {
            lines.push("apiVersion: kubeproxy.config.k8s.io/v1alpha1".to_string());
            lines.push("kind: KubeProxyConfiguration".to_string());
        }
        lines.extend(entries.iter().map(|(k, v)| format!("{k}: {v}")));
        let text = lines.join("\n");
        // The same entries as one flow mapping, which is also JSON-like.
        if json {
            format!("{{{}}}", lines.join(", "))
        } else {
            text
        }
    })
}

/// A Service, EndpointSlice, Node or List as JSON, with field values drawn from valid, odd and
/// wrong ones.
fn manifest_text() -> impl Strategy<Value = String> {
    use serde_json::{Value, json};
    let scalar = prop::sample::select(vec![
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(65535),
        json!(65536),
        json!(1e300),
        json!(""),
        json!("None"),
        json!("10.96.0.10"),
        json!("fd00::10"),
        json!("10.96.0.300"),
        json!("TCP"),
        json!("UDP"),
        json!("SCTP"),
        json!("ICMP"),
        json!("http"),
        json!("Local"),
        json!("Cluster"),
        json!("ClientIP"),
        json!("NodePort"),
        json!("LoadBalancer"),
        json!("ExternalName"),
        json!("IPv4"),
        json!("IPv6"),
        json!("FQDN"),
        json!("node-1"),
        json!("kubernetes.io/h2c"),
        json!([]),
        json!({}),
    ]);
    // A valid value three times in four, else any of the scalars.
    let field = move |valid: Value| prop_oneof![3 => Just(valid), 1 => scalar.clone()];
    let ports = prop::collection::vec(
        (
            field(json!("http")),
            field(json!(80)),
            field(json!(8080)),
            field(json!("TCP")),
            field(json!(30080)),
        )
            .prop_map(|(name, port, target, proto, node_port)| {
                json!({"name": name, "port": port, "targetPort": target, "protocol": proto,
                       "nodePort": node_port, "appProtocol": name})
            }),
        0..4,
    );
    let service = (
        field(json!("10.96.0.10")),
        field(json!("ClusterIP")),
        field(json!("Cluster")),
        ports.clone(),
        field(json!("None")),
        field(json!(30256)),
    )
        .prop_map(|(ip, ty, etp, ports, aff, hc)| {
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "demo"},
                   "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": ty,
                            "externalTrafficPolicy": etp, "internalTrafficPolicy": etp,
                            "sessionAffinity": aff, "ports": ports,
                            "externalIPs": [ip], "loadBalancerSourceRanges": ["0.0.0.0/0"],
                            "healthCheckNodePort": hc},
                   "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
        });
    let endpoint = (
        field(json!("10.244.1.5")),
        field(json!(true)),
        field(json!("node-1")),
    )
        .prop_map(|(addr, ready, node)| {
            json!({"addresses": [addr], "conditions": {"ready": ready, "serving": ready,
                   "terminating": false}, "nodeName": node, "zone": "z1",
                   "hints": {"forZones": [{"name": "z1"}]}})
        });
    let slice = (
        field(json!("IPv4")),
        prop::collection::vec(endpoint, 0..4),
        ports,
        field(json!("web")),
    )
        .prop_map(|(family, endpoints, ports, owner)| {
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": "web-1", "namespace": "demo",
                                "labels": {"kubernetes.io/service-name": owner}},
                   "addressType": family, "endpoints": endpoints, "ports": ports})
        });
    let node = field(json!("10.0.0.1")).prop_map(|addr| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
               "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": [addr]},
               "status": {"addresses": [{"type": "InternalIP", "address": addr}]}})
    });
    let object = prop_oneof![service, slice, node];
    prop::collection::vec(object, 0..5).prop_map(|items: Vec<Value>| {
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn iptables_save_and_trace_return_on_generated_dumps(
        text in dump_text(),
        head in prop::array::uniform12(any::<u8>()),
    ) {
        prop_assert_eq!(bounded(bodies::iptables_save, text.clone().into_bytes()), Ok(()));
        let mut data = head.to_vec();
        data.extend_from_slice(text.as_bytes());
        prop_assert_eq!(bounded(bodies::trace, data), Ok(()));
    }

    #[test]
    fn kube_proxy_config_returns_on_generated_files(text in config_text()) {
        prop_assert_eq!(bounded(bodies::kube_proxy_config, text.into_bytes()), Ok(()));
    }

    #[test]
    fn manifests_return_on_generated_objects(text in manifest_text()) {
        prop_assert_eq!(bounded(bodies::manifests, text.into_bytes()), Ok(()));
    }
}

/// Draws `n` values of a strategy with a fixed seed.
fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("a value").current())
        .collect()
}

/// The generators reach past the first error: some generated manifests hold Services that
/// knat keeps, and some configuration files are accepted, so the properties above exercise the
/// converters and the validation, not only the syntax errors.
#[test]
fn the_generators_reach_the_converters_and_the_validation() {
    let kept = sample(manifest_text(), 300)
        .into_iter()
        .filter(|text| {
            let source = Source {
                name: "g.json".to_string(),
                text: text.clone(),
            };
            load(&[source], "node-1").is_ok_and(|l| !l.snapshot.services().is_empty())
        })
        .count();
    assert!(
        kept >= 10,
        "only {kept} of 300 generated manifests kept a Service"
    );
    let configs = sample(config_text(), 300)
        .into_iter()
        .filter(|t| knat::kube_proxy_config::parse(t, "g.yaml").is_ok())
        .count();
    assert!(
        configs >= 10,
        "only {configs} of 300 generated files accepted"
    );
    let dumps = sample(dump_text(), 300)
        .into_iter()
        .filter(|t| knat::dump::read::parse(t).is_ok_and(|d| !d.tables.is_empty()))
        .count();
    assert!(
        dumps >= 10,
        "only {dumps} of 300 generated dumps parsed into a table"
    );
}
