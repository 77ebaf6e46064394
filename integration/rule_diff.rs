//! The rule-level differential (issue 18): upstream kube-proxy v1.37 (iptables mode, built by
//! `scripts/build-k8s.sh`) and `knat run --dispatch linear` are given the same Services,
//! EndpointSlices and Nodes through one real dual-stack kube-apiserver, and after every step
//! the whole `iptables-save` (filter, nat, mangle; IPv4 and IPv6) of each knat node and of its
//! kube-proxy twin must be equal, chain by chain, on both iptables front-ends.
//!
//! A twin calls itself by its knat node's name (`--hostname-override node-1` on `node-1` and on
//! `twin-1`), so both proxies see exactly the same local endpoints and node addresses and no
//! name has to be mapped: every per-Service chain must match byte for byte, in order. The only
//! normalisation is upstream's own non-determinism: kube-proxy writes the shared chains (nat
//! and filter `KUBE-SERVICES`, `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES`,
//! `KUBE-PROXY-FIREWALL`) in Go map order, so those compare as sets of runs of rules with the
//! same comment (the order within a run, e.g. a localhost NodePort rule before its NodePort
//! rule, is kept), the NodePort tail rule of nat `KUBE-SERVICES` must be last on both, and the
//! chains of a table compare by name (iptables-nft lists them in creation order).
//!
//! Lab nodes: `node-1`/`node-2` (knat, iptables-nft), `twin-1`/`twin-2` (kube-proxy,
//! iptables-nft), `node-3`/`node-4` (knat, iptables-legacy, named node-1/node-2),
//! `twin-3`/`twin-4` (kube-proxy, iptables-legacy), and the variant pairs `node-5`/`twin-5`
//! (nft) and `node-6`/`twin-6` (legacy), named node-1, whose proxies both also get
//! [`VARIANT`]'s flags (NodeCIDR local detection, masquerade-all, mark bit 13, NodePorts only on
//! the node subnet, so no localhost NodePorts). kube-proxy picks the front-end through
//! `PATH` (a directory of `iptables*` links to `xtables-{nft,legacy}-multi`), knat through
//! `--iptables-backend`.
//!
//! After the first step, real packets: unsolicited ICMP echo replies (conntrack INVALID)
//! through node-1 and twin-1 and connections to `127.0.0.1:<nodePort>` on both; the nfacct
//! counters must count them and both proxies' metrics
//! (`kubeproxy_iptables_ct_state_invalid_dropped_packets_total`,
//! `kubeproxy_iptables_localhost_nodeports_accepted_packets_total`) must report them.
//!
//! Without root, the tools or the binaries it prints `*** SKIPPED ***`; with `CI=true` it
//! builds the binaries and fails instead of skipping.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use knat::backend::{CANARY_RULE, CANARY_TABLES};
use knat::lab::{Backend, Family, Lab, LabOptions, Proto, Scenario, in_netns, preflight, run};
use knat::rules::ChainName;
use knat_testbed::control_plane::{
    ControlPlane, ControlPlaneOptions, Daemon, K8sBinaries, now_rfc3339,
};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");
const NS: &str = "rd";
const SERVICE_CIDRS: &str = "10.96.0.0/16,fd00:10:96::/112";
const CLUSTER_CIDRS: &str = "10.244.0.0/16,fd00:10:244::/48";
const CONVERGE: Duration = Duration::from_secs(30);
const CLIENT: &str = "ext";
/// LB VIPs of `web` routed by the client to node-1 and to twin-1 (the INVALID packets' way).
const VIP_NODE: &str = "198.51.100.11";
const VIP_TWIN: &str = "198.51.100.21";
/// Pods (all on the lab's node-1 and node-2, whose Node names the proxies use).
const PODS: [(&str, &str); 3] = [
    ("web-1a", "node-1"),
    ("web-1b", "node-1"),
    ("web-2a", "node-2"),
];

/// One comparison: a knat node and its kube-proxy twin, both named `name`, on one front-end.
#[derive(Debug, Clone, Copy)]
struct Pair {
    knat: &'static str,
    twin: &'static str,
    name: &'static str,
    backend: Backend,
    /// Flags both proxies of the pair get on top of the common ones.
    extra: &'static [&'static str],
}

/// The flags of the variant pairs: everything else a node may set that changes rules.
const VARIANT: &[&str] = &[
    "--detect-local-mode=NodeCIDR",
    "--masquerade-all",
    "--iptables-masquerade-bit=13",
    "--nodeport-addresses=192.168.77.0/24,fd00:77::/64",
];

const PAIRS: [Pair; 6] = [
    Pair {
        knat: "node-1",
        twin: "twin-1",
        name: "node-1",
        backend: Backend::Nft,
        extra: &[],
    },
    Pair {
        knat: "node-2",
        twin: "twin-2",
        name: "node-2",
        backend: Backend::Nft,
        extra: &[],
    },
    Pair {
        knat: "node-3",
        twin: "twin-3",
        name: "node-1",
        backend: Backend::Legacy,
        extra: &[],
    },
    Pair {
        knat: "node-4",
        twin: "twin-4",
        name: "node-2",
        backend: Backend::Legacy,
        extra: &[],
    },
    Pair {
        knat: "node-5",
        twin: "twin-5",
        name: "node-1",
        backend: Backend::Nft,
        extra: VARIANT,
    },
    Pair {
        knat: "node-6",
        twin: "twin-6",
        name: "node-1",
        backend: Backend::Legacy,
        extra: VARIANT,
    },
];

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn skip(why: &str) -> Option<K8sBinaries> {
    if ci() {
        panic!("rule_diff: cannot run under CI=true: {why}");
    }
    eprintln!("\n*** SKIPPED rule_diff (real control plane): {why} ***\n");
    None
}

fn prerequisites() -> Option<K8sBinaries> {
    if let Err(e) = preflight(&[Backend::Nft, Backend::Legacy], true) {
        return skip(&e.to_string());
    }
    let missing: Vec<&str> = [
        "openssl",
        "curl",
        "xtables-nft-multi",
        "xtables-legacy-multi",
    ]
    .into_iter()
    .filter(|p| knat::lab::find_program(p).is_none())
    .collect();
    if !missing.is_empty() {
        return skip(&format!("missing tools: {missing:?}"));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    match K8sBinaries::locate(repo, ci()) {
        Ok(b) => Some(b),
        Err(e) => skip(&format!("{e}; build them with scripts/build-k8s.sh")),
    }
}

fn scenario() -> Scenario {
    let mut s = Scenario::new(NS).with_ipv6();
    for pair in PAIRS {
        s = s.node(pair.knat).node(pair.twin);
    }
    for (pod, node) in PODS {
        s = s.pod(pod, node);
    }
    s.client(CLIENT)
        .route(VIP_NODE.parse().expect("ip"), "node-1")
        .route(VIP_TWIN.parse().expect("ip"), "twin-1")
}

// ---------------------------------------------------------------------------------------------
// iptables-save, normalised

/// One table: chains by name, each with its policy and rules (without `-A NAME`).
type Table = BTreeMap<String, (String, Vec<String>)>;

fn parse_save(text: &str) -> BTreeMap<String, Table> {
    let mut tables = BTreeMap::new();
    let mut current: Option<(String, Table)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = Some((name.to_string(), Table::new()));
        } else if line == "COMMIT" {
            if let Some((name, table)) = current.take() {
                tables.insert(name, table);
            }
        } else if let (Some(decl), Some((_, table))) = (line.strip_prefix(':'), current.as_mut()) {
            let mut words = decl.split_whitespace();
            let name = words.next().unwrap_or_default().to_string();
            let policy = words.next().unwrap_or("-").to_string();
            table.entry(name).or_insert((policy, Vec::new()));
        } else if let (Some(rule), Some((_, table))) = (line.strip_prefix("-A "), current.as_mut())
        {
            let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
            table
                .entry(chain.to_string())
                .or_insert(("-".to_string(), Vec::new()))
                .1
                .push(rest.to_string());
        }
    }
    tables
}

/// The chains upstream writes in Go map order.
fn map_ordered(table: &str, chain: &str) -> bool {
    matches!(
        (table, chain),
        ("nat", "KUBE-SERVICES")
            | ("nat", "KUBE-NODEPORTS")
            | ("filter", "KUBE-SERVICES")
            | ("filter", "KUBE-NODEPORTS")
            | ("filter", "KUBE-EXTERNAL-SERVICES")
            | ("filter", "KUBE-PROXY-FIREWALL")
    )
}

fn comment_of(rule: &str) -> &str {
    rule.split_once("--comment ")
        .map(|(_, rest)| {
            if let Some(quoted) = rest.strip_prefix('"') {
                quoted.split('"').next().unwrap_or_default()
            } else {
                rest.split_whitespace().next().unwrap_or_default()
            }
        })
        .unwrap_or_default()
}

const TAIL: &str = "must be the last rule in this chain";

/// A map-ordered chain as sorted runs of same-comment rules, the NodePort tail rules last.
fn canonical(rules: &[String]) -> Vec<String> {
    let (tail, body): (Vec<&String>, Vec<&String>) = rules.iter().partition(|r| r.contains(TAIL));
    let mut runs: Vec<Vec<String>> = Vec::new();
    for rule in body {
        match runs.last_mut() {
            Some(run) if comment_of(&run[0]) == comment_of(rule) => run.push(rule.clone()),
            _ => runs.push(vec![rule.clone()]),
        }
    }
    runs.sort();
    let mut out: Vec<String> = runs.into_iter().flatten().collect();
    out.extend(tail.into_iter().cloned());
    out
}

/// knat's one deliberate addition, normalised explicitly: each `KUBE-PROXY-CANARY` chain holds
/// exactly [`CANARY_RULE`] (so a table flush that keeps the chains is noticed), where upstream's
/// canary chains are empty. The rule is removed when it is exactly that; anything else in the
/// chain stays and is compared, and a missing canary rule is itself a difference.
fn normalise_knat_canaries(knat: &mut BTreeMap<String, Table>, out: &mut Vec<String>) {
    for table in CANARY_TABLES {
        let Some((_, rules)) = knat
            .get_mut(table)
            .and_then(|t| t.get_mut(ChainName::KUBE_PROXY_CANARY))
        else {
            continue;
        };
        match rules.iter().position(|r| r == CANARY_RULE) {
            Some(i) => {
                rules.remove(i);
            }
            None => out.push(format!(
                "{table} {}: knat's canary rule {CANARY_RULE:?} is missing",
                ChainName::KUBE_PROXY_CANARY
            )),
        }
    }
}

/// Every difference between knat's and kube-proxy's dump, as readable lines.
fn differences(knat: &str, upstream: &str) -> Vec<String> {
    let (mut k, u) = (parse_save(knat), parse_save(upstream));
    let mut out = Vec::new();
    normalise_knat_canaries(&mut k, &mut out);
    for (label, dump) in [("knat", &k), ("kube-proxy", &u)] {
        if let Some(rules) = dump
            .get("nat")
            .and_then(|t| t.get("KUBE-SERVICES"))
            .map(|c| &c.1)
            && rules.iter().any(|r| r.contains(TAIL))
            && !rules.last().is_some_and(|r| r.contains(TAIL))
        {
            out.push(format!(
                "nat KUBE-SERVICES of {label}: the NodePort rule is not last"
            ));
        }
    }
    let tables: std::collections::BTreeSet<&String> = k.keys().chain(u.keys()).collect();
    let empty = Table::new();
    for table in tables {
        let kt = k.get(table).unwrap_or(&empty);
        let ut = u.get(table).unwrap_or(&empty);
        let chains: std::collections::BTreeSet<&String> = kt.keys().chain(ut.keys()).collect();
        for chain in chains {
            match (kt.get(chain), ut.get(chain)) {
                (Some(_), None) => out.push(format!("{table} {chain}: only knat has it")),
                (None, Some(_)) => out.push(format!("{table} {chain}: only kube-proxy has it")),
                (Some((kp, kr)), Some((up, ur))) => {
                    if kp != up {
                        out.push(format!(
                            "{table} {chain}: policy knat {kp}, kube-proxy {up}"
                        ));
                    }
                    let (kr, ur) = if map_ordered(table, chain) {
                        (canonical(kr), canonical(ur))
                    } else {
                        (kr.clone(), ur.clone())
                    };
                    if kr != ur {
                        let len = kr.len().max(ur.len());
                        for i in 0..len {
                            let a = kr.get(i).map(String::as_str).unwrap_or("(no rule)");
                            let b = ur.get(i).map(String::as_str).unwrap_or("(no rule)");
                            if a != b {
                                out.push(format!(
                                    "{table} {chain} rule {}:\n    knat:       {a}\n    kube-proxy: {b}",
                                    i + 1
                                ));
                            }
                        }
                    }
                }
                (None, None) => {}
            }
        }
    }
    out
}

/// `dump` with every `from/LEN` word (a host route: /32 or /128) written as `to/LEN`.
fn map_address(dump: &str, from: IpAddr, to: IpAddr) -> String {
    let len = if from.is_ipv4() { 32 } else { 128 };
    let (from, to) = (format!("{from}/{len}"), format!("{to}/{len}"));
    dump.lines()
        .map(|line| {
            line.split(' ')
                .map(|word| if word == from { to.as_str() } else { word })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The cluster

struct Bed {
    // Drop order: proxies, control plane, lab.
    proxies: Vec<Daemon>,
    cp: ControlPlane,
    lab: Lab,
    logs: PathBuf,
}

fn save_binary(backend: Backend, family: Family) -> &'static str {
    backend.save(family)
}

impl Bed {
    fn start(binaries: K8sBinaries) -> Bed {
        let lab = Lab::build(scenario(), LabOptions::new(Path::new(KNAT), Backend::Nft))
            .expect("build the lab");
        let cp = ControlPlane::start_with_service_cidr(
            ControlPlaneOptions {
                binaries,
                namespace: lab.fabric_namespace(),
                address: lab.scenario().fabric_gateway(Family::V4),
                extra_sans: Vec::new(),
                real_nodes: None,
            },
            SERVICE_CIDRS,
        )
        .unwrap_or_else(|e| panic!("start the control plane: {e}"));
        let logs = cp.dir().join("proxies");
        std::fs::create_dir_all(&logs).expect("log dir");
        let bed = Bed {
            proxies: Vec::new(),
            cp,
            lab,
            logs,
        };
        bed.cp
            .kubectl(&["create", "namespace", NS], None)
            .expect("namespace");
        for node in ["node-1", "node-2"] {
            bed.register_node(node);
        }
        for (pod, node) in PODS {
            bed.create_pod(pod, node);
            bed.set_pod(pod, node, true);
        }
        bed
    }

    fn register_node(&self, node: &str) {
        let s = self.lab.scenario();
        let node_json = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
            "spec": {
                "podCIDR": s.pod_cidr(node, Family::V4).expect("cidr").to_string(),
                "podCIDRs": [s.pod_cidr(node, Family::V4).expect("cidr").to_string(),
                             s.pod_cidr(node, Family::V6).expect("cidr").to_string()],
            },
        });
        self.cp.apply(&node_json.to_string()).expect("node");
        self.cp
            .patch_status(
                "node",
                None,
                node,
                &serde_json::json!({"status": {
                    "addresses": [
                        {"type": "InternalIP", "address": s.node_ip(node, Family::V4).expect("ip").to_string()},
                        {"type": "InternalIP", "address": s.node_ip(node, Family::V6).expect("ip").to_string()},
                        {"type": "Hostname", "address": node},
                    ],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "rule_diff", "lastHeartbeatTime": now_rfc3339(),
                        "lastTransitionTime": now_rfc3339()}],
                }}),
            )
            .expect("node status");
    }

    fn create_pod(&self, pod: &str, node: &str) {
        let object = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": NS, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 3600,
                "containers": [{"name": "echo", "image": "knat-lab-echo",
                    "ports": [{"containerPort": 8080, "protocol": "TCP"},
                              {"containerPort": 8080, "protocol": "UDP"}]}]},
        });
        self.cp.apply(&object.to_string()).expect("pod");
    }

    fn set_pod(&self, pod: &str, node: &str, ready: bool) {
        let s = self.lab.scenario();
        let status = if ready { "True" } else { "False" };
        let now = now_rfc3339();
        let ip4 = s.pod_ip(pod, Family::V4).expect("ip").to_string();
        let ip6 = s.pod_ip(pod, Family::V6).expect("ip").to_string();
        let host = s.node_ip(node, Family::V4).expect("ip").to_string();
        self.cp
            .patch_status(
                "pod",
                Some(NS),
                pod,
                &serde_json::json!({"status": {
                    "phase": "Running", "hostIP": host, "hostIPs": [{"ip": host}],
                    "podIP": ip4, "podIPs": [{"ip": ip4}, {"ip": ip6}], "startTime": now,
                    "conditions": [
                        {"type": "Ready", "status": status, "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
                }}),
            )
            .expect("pod status");
    }

    /// A directory whose `iptables*` names run `multi` (kube-proxy finds them on `PATH`).
    fn front_end_dir(&self, backend: Backend) -> PathBuf {
        let multi = match backend {
            Backend::Nft => "xtables-nft-multi",
            Backend::Legacy => "xtables-legacy-multi",
        };
        let target = knat::lab::find_program(multi).expect("xtables multi binary");
        let dir = self.cp.dir().join(format!("bin-{}", backend.name()));
        std::fs::create_dir_all(&dir).expect("bin dir");
        for name in [
            "iptables",
            "iptables-save",
            "iptables-restore",
            "ip6tables",
            "ip6tables-save",
            "ip6tables-restore",
        ] {
            let link = dir.join(name);
            if !link.exists() {
                std::os::unix::fs::symlink(&target, &link).expect("symlink");
            }
        }
        dir
    }

    fn start_proxies(&mut self) {
        let knat_kubeconfig = self
            .cp
            .write_kubeconfig("knat", "knat-rule-diff", &["system:masters"])
            .expect("kubeconfig");
        let kp_kubeconfig = self
            .cp
            .write_kubeconfig("kube-proxy", "system:kube-proxy", &[])
            .expect("kubeconfig");
        for pair in PAIRS {
            let common = |kubeconfig: &Path| {
                vec![
                    format!("--kubeconfig={}", kubeconfig.display()),
                    format!("--hostname-override={}", pair.name),
                    format!("--cluster-cidr={CLUSTER_CIDRS}"),
                    "--iptables-min-sync-period=1s".to_string(),
                    "--healthz-bind-address=0.0.0.0:10256".to_string(),
                    "--metrics-bind-address=127.0.0.1:10249".to_string(),
                ]
                .into_iter()
                .chain(pair.extra.iter().map(|f| f.to_string()))
                .collect::<Vec<_>>()
            };
            let mut knat_args = vec![
                "run".to_string(),
                format!("--iptables-backend={}", pair.backend.name()),
                "--ip-families=ipv4,ipv6".to_string(),
                "--dispatch=linear".to_string(),
            ];
            knat_args.extend(common(&knat_kubeconfig));
            let ns = self.lab.namespace(pair.knat).expect("ns");
            let log = self.logs.join(format!("{}.log", pair.knat));
            self.proxies
                .push(Daemon::spawn("knat", &ns, Path::new(KNAT), &knat_args, &log).expect("knat"));
            let path = format!(
                "PATH={}:{}",
                self.front_end_dir(pair.backend).display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let mut kp_args = vec![
                path,
                self.cp.binaries().path("kube-proxy").display().to_string(),
                "--proxy-mode=iptables".to_string(),
                "--conntrack-max-per-core=0".to_string(),
                "--conntrack-tcp-timeout-established=0".to_string(),
                "--conntrack-tcp-timeout-close-wait=0".to_string(),
                "--oom-score-adj=0".to_string(),
                "--v=2".to_string(),
            ];
            kp_args.extend(common(&kp_kubeconfig));
            let ns = self.lab.namespace(pair.twin).expect("ns");
            let log = self.logs.join(format!("{}.log", pair.twin));
            self.proxies.push(
                Daemon::spawn("kube-proxy", &ns, Path::new("/usr/bin/env"), &kp_args, &log)
                    .expect("kube-proxy"),
            );
        }
    }

    fn save(&self, node: &str, backend: Backend, family: Family) -> String {
        let ns = self.lab.namespace(node).expect("ns");
        run(
            &mut in_netns(&ns, save_binary(backend, family), [] as [&str; 0]),
            None,
        )
        .unwrap_or_default()
    }

    /// The one name that cannot be shared: a node's own address, which rules carry when
    /// `--nodeport-addresses` lists CIDRs (`-d <own address>/32 ... -j KUBE-NODEPORTS`). In the
    /// twin's dump, its address is replaced by its knat node's (whole `ADDR/LEN` words only).
    fn twin_as_mirror(&self, pair: Pair, family: Family, dump: &str) -> String {
        let s = self.lab.scenario();
        let (Some(twin), Some(mirror)) =
            (s.node_ip(pair.twin, family), s.node_ip(pair.knat, family))
        else {
            return dump.to_string();
        };
        map_address(dump, twin, mirror)
    }

    fn log_tail(&self, node: &str) -> String {
        knat_testbed::control_plane::tail(&self.logs.join(format!("{node}.log")), 15)
    }

    /// Waits until every pair's dumps (both families) contain `present`, lack `absent`, and
    /// are equal; panics with every difference when they are not within [`CONVERGE`].
    fn compare(
        &self,
        step: &str,
        marks: impl Fn(Family) -> (Vec<String>, Vec<String>),
    ) -> Duration {
        let start = Instant::now();
        loop {
            let mut problems = Vec::new();
            for pair in PAIRS {
                for family in [Family::V4, Family::V6] {
                    let k = self.save(pair.knat, pair.backend, family);
                    let u = self.twin_as_mirror(
                        pair,
                        family,
                        &self.save(pair.twin, pair.backend, family),
                    );
                    let label = format!(
                        "{} vs {} ({}, {})",
                        pair.knat,
                        pair.twin,
                        pair.backend.name(),
                        family.cli_name()
                    );
                    let (present, absent) = marks(family);
                    for (side, dump) in [("knat", &k), ("kube-proxy", &u)] {
                        for p in &present {
                            if !dump.contains(p) {
                                problems.push(format!("{label}: {side} lacks {p:?} (not synced?)"));
                            }
                        }
                        for a in &absent {
                            if dump.contains(a) {
                                problems.push(format!("{label}: {side} still has {a:?}"));
                            }
                        }
                    }
                    for d in differences(&k, &u) {
                        problems.push(format!("{label}: {d}"));
                    }
                }
            }
            if problems.is_empty() {
                let took = start.elapsed();
                eprintln!(
                    "rule_diff: {step}: all {} pairs x 2 families equal after {took:.1?}",
                    PAIRS.len()
                );
                return took;
            }
            if start.elapsed() > CONVERGE {
                if std::env::var_os("KNAT_E2E_KEEP").is_some() {
                    for pair in PAIRS {
                        for family in [Family::V4, Family::V6] {
                            for node in [pair.knat, pair.twin] {
                                let _ = std::fs::write(
                                    self.logs.join(format!("{node}.{}.save", family.cli_name())),
                                    self.save(node, pair.backend, family),
                                );
                            }
                        }
                    }
                }
                panic!(
                    "rule_diff: {step}: knat and kube-proxy differ after {CONVERGE:?}:\n{}\n--- node-1 ---\n{}\n--- twin-1 ---\n{}",
                    problems.join("\n"),
                    self.log_tail("node-1"),
                    self.log_tail("twin-1")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn metric(&self, node: &str, name: &str) -> Option<u64> {
        let out = self
            .lab
            .exec(
                node,
                "curl",
                &["-s", "--max-time", "2", "http://127.0.0.1:10249/metrics"],
            )
            .ok()?;
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (metric, value) = l.rsplit_once(' ')?;
                (metric == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .map(|v| v as u64)
    }
}

fn services() -> String {
    let dual = r#""ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]"#;
    let svc = |name: &str, spec: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "{name}", "namespace": "{NS}"}}, "spec": {{{dual}, {spec}}}}}"#
        )
    };
    [
        svc(
            "web",
            r#""type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30081, "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]"#,
        ),
        svc(
            "api",
            r#""type": "ClusterIP", "internalTrafficPolicy": "Local", "sessionAffinity": "ClientIP", "selector": {"app": "web"}, "ports": [{"name": "dns-tcp", "port": 53, "targetPort": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "targetPort": 8080, "protocol": "UDP"}]"#,
        ),
        svc(
            "np",
            r#""type": "NodePort", "externalIPs": ["203.0.113.50", "2001:db8:113::50"], "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30090}]"#,
        ),
        svc(
            "fw",
            r#""type": "LoadBalancer", "loadBalancerSourceRanges": ["203.0.113.0/24", "2001:db8:113::/64"], "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30100}]"#,
        ),
        svc(
            "empty",
            r#""type": "NodePort", "selector": {"app": "none"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30110}]"#,
        ),
    ]
    .join("\n---\n")
}

fn lb_status(bed: &Bed, service: &str, ips: &[&str]) {
    let ingress: Vec<serde_json::Value> =
        ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
    bed.cp
        .patch_status(
            "service",
            Some(NS),
            service,
            &serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}}),
        )
        .expect("lb status");
}

fn endpoint_comment(bed: &Bed, service_port: &str, pod: &str, family: Family) -> String {
    let ip: IpAddr = bed.lab.scenario().pod_ip(pod, family).expect("pod ip");
    match ip {
        IpAddr::V4(a) => format!("{service_port} -> {a}:8080"),
        IpAddr::V6(a) => format!("{service_port} -> [{a}]:8080"),
    }
}

#[test]
fn knat_and_kube_proxy_program_the_same_rules() {
    let Some(binaries) = prerequisites() else {
        return;
    };
    let t0 = Instant::now();
    let mut bed = Bed::start(binaries);
    eprintln!(
        "rule_diff: control plane and lab ready in {:.1?}",
        t0.elapsed()
    );
    bed.start_proxies();

    // Step 1: every kind of Service, dual-stack.
    bed.cp.apply(&services()).expect("services");
    lb_status(&bed, "web", &[VIP_NODE, VIP_TWIN, "2001:db8:51::11"]);
    lb_status(&bed, "fw", &["198.51.100.31", "2001:db8:51::31"]);
    let ep = |pod: &str, family| endpoint_comment(&bed, "rd/web:http", pod, family);
    bed.compare("all services", |f| {
        (
            vec![
                "rd/empty:http".into(),
                "rd/fw:http loadbalancer IP".into(),
                ep("web-2a", f),
            ],
            vec![],
        )
    });

    // The variant pairs really run with their flags (mark bit 13, NodePorts on the own address).
    for pair in PAIRS.iter().filter(|p| !p.extra.is_empty()) {
        let dump = bed.save(pair.knat, pair.backend, Family::V4);
        let own = bed
            .lab
            .scenario()
            .node_ip(pair.knat, Family::V4)
            .expect("ip");
        for expected in ["0x2000/0x2000".to_string(), format!("-d {own}/32")] {
            assert!(
                dump.contains(&expected),
                "{}: {expected:?}:\n{dump}",
                pair.knat
            );
        }
    }

    // Real packets: the nfacct counters count, and both proxies' metrics say so.
    const INVALID: &str = "kubeproxy_iptables_ct_state_invalid_dropped_packets_total";
    const LOCALHOST: &str = "kubeproxy_iptables_localhost_nodeports_accepted_packets_total";
    for (node, vip) in [("node-1", VIP_NODE), ("twin-1", VIP_TWIN)] {
        let before = (
            bed.metric(node, INVALID)
                .unwrap_or_else(|| panic!("{node}: no {INVALID}")),
            bed.metric(node, LOCALHOST)
                .unwrap_or_else(|| panic!("{node}: no {LOCALHOST}")),
        );
        bed.lab
            .exec(CLIENT, KNAT, &["lab-invalid", "--to", vip, "--count", "3"])
            .expect("send INVALID packets");
        let localhost: std::net::SocketAddr = "127.0.0.1:30080".parse().expect("addr");
        let answers: Vec<String> = bed
            .lab
            .probe_many(node, localhost, Proto::Tcp, 2)
            .unwrap_or_else(|e| panic!("{node}: probe {localhost}: {e}"))
            .iter()
            .map(|r| r.describe())
            .collect();
        let answered = answers
            .iter()
            .filter(|a| a.starts_with("reached web-"))
            .count();
        // The packets cross two veths asynchronously: wait (briefly) for the DROP to count them.
        let deadline = Instant::now() + Duration::from_secs(3);
        let after = loop {
            let now = (
                bed.metric(node, INVALID).unwrap_or_default(),
                bed.metric(node, LOCALHOST).unwrap_or_default(),
            );
            if now.0 >= before.0 + 3 || Instant::now() > deadline {
                break now;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!(
            "rule_diff: {node}: {INVALID} {} -> {}, {LOCALHOST} {} -> {} ({answered} of 2 localhost connections answered)",
            before.0, after.0, before.1, after.1
        );
        assert_eq!(
            after.0,
            before.0 + 3,
            "{node}: exactly the 3 INVALID packets dropped and counted: {before:?} -> {after:?}"
        );
        assert_eq!(
            after.1,
            before.1 + 2,
            "{node}: exactly the 2 localhost NodePort connections counted (nat sees first packets only)"
        );
        assert_eq!(
            answered, 2,
            "{node}: localhost NodePort connections answered by a web pod: {answers:?}"
        );
    }

    // Step 2: a terminating (still serving) endpoint and a not-ready one.
    bed.cp
        .terminate_pod(NS, "web-1b")
        .expect("terminate web-1b");
    bed.set_pod("web-2a", "node-2", false);
    bed.compare("terminating and not ready", |f| {
        (
            vec!["rd/empty:http".into()],
            vec![ep("web-2a", f), ep("web-1b", f)],
        )
    });

    // Step 3: externalTrafficPolicy Local -> Cluster (the health-check node port goes).
    bed.cp
        .kubectl(
            &[
                "patch",
                "service",
                "web",
                "-n",
                NS,
                "--type=merge",
                "-p",
                r#"{"spec": {"externalTrafficPolicy": "Cluster", "healthCheckNodePort": null}}"#,
            ],
            None,
        )
        .expect("patch web");
    bed.compare("web to Cluster", |_| {
        (
            vec!["rd/web:http".into()],
            vec!["rd/web:http health check node port".into()],
        )
    });

    // Step 4: a Service removed, every ready endpoint gone (web-1b terminating remains).
    bed.cp
        .kubectl(&["delete", "service", "fw", "-n", NS], None)
        .expect("delete fw");
    bed.cp.remove_pod(NS, "web-1a").expect("remove web-1a");
    bed.compare("service removed, last ready pod gone", |f| {
        (
            vec!["rd/web:http".into()],
            vec!["rd/fw:".into(), ep("web-1a", f)],
        )
    });

    // Step 5: zones on the Nodes; selectorless Services with hand-written EndpointSlices (11
    // endpoints, zone hints, node hints), ExternalName, headless, LoadBalancer IPs in Proxy mode.
    for (node, zone) in [("node-1", "zone-a"), ("node-2", "zone-b")] {
        bed.cp
            .kubectl(
                &[
                    "label",
                    "node",
                    node,
                    &format!("topology.kubernetes.io/zone={zone}"),
                ],
                None,
            )
            .expect("zone label");
    }
    bed.cp.apply(&more_services()).expect("more services");
    lb_status_modes(
        &bed,
        "proxylb",
        &[
            ("198.51.100.41", "Proxy"),
            ("198.51.100.42", "VIP"),
            ("2001:db8:51::41", "Proxy"),
            ("2001:db8:51::42", "VIP"),
        ],
    );
    bed.compare(
        "slices by hand, hints, ExternalName, headless, ipMode Proxy",
        |f| {
            let last = match f {
                Family::V4 => "rd/many:http -> 10.250.0.11:8080",
                Family::V6 => "rd/many:http -> [fd00:250::b]:8080",
            };
            let (proxy_ip, vip) = match f {
                Family::V4 => ("198.51.100.41", "198.51.100.42"),
                Family::V6 => ("2001:db8:51::41", "2001:db8:51::42"),
            };
            (
                vec![
                    last.into(),
                    "rd/zoned:http".into(),
                    "rd/samenode:http".into(),
                    vip.into(),
                ],
                vec!["rd/headless".into(), "rd/ext".into(), proxy_ip.into()],
            )
        },
    );
    // The hints really filtered (equal on both proxies, so checked on knat's side): node-1 in
    // zone-a keeps the odd endpoints (zone-a, node-1), node-2 in zone-b the even ones.
    for pair in [PAIRS[0], PAIRS[1]] {
        let dump = bed.save(pair.knat, pair.backend, Family::V4);
        for (service, endpoints) in [("zoned", 21..=23), ("samenode", 31..=34)] {
            for i in endpoints {
                let rule = format!("rd/{service}:http -> 10.250.0.{i}:8080");
                let expected = (i % 2 == 1) == (pair.name == "node-1");
                assert_eq!(
                    dump.contains(&rule),
                    expected,
                    "{}: {rule:?} (hints)\n{dump}",
                    pair.knat
                );
            }
        }
    }

    eprintln!("rule_diff: passed in {:.1?}", t0.elapsed());
}

/// Step 5's objects: selectorless Services with their EndpointSlices, and the kinds that
/// must program nothing (ExternalName, headless).
fn more_services() -> String {
    let dual = r#""ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]"#;
    let port = r#""ports": [{"name": "http", "port": 80, "targetPort": 8080}]"#;
    let svc = |name: &str, spec: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": serde_json::from_str::<serde_json::Value>(&format!("{{{spec}}}")).expect("spec")})
        .to_string()
    };
    // (address, node, zone, zone hint, node hint) per endpoint.
    type Ep<'a> = (String, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
    let slice = |service: &str, family: Family, endpoints: Vec<Ep>| {
        let endpoints: Vec<serde_json::Value> = endpoints
            .into_iter()
            .map(|(address, node, zone, zone_hint, node_hint)| {
                let mut ep = serde_json::json!({"addresses": [address], "nodeName": node,
                    "zone": zone, "conditions": {"ready": true, "serving": true, "terminating": false}});
                let mut hints = serde_json::Map::new();
                if let Some(z) = zone_hint {
                    hints.insert("forZones".into(), serde_json::json!([{"name": z}]));
                }
                if let Some(n) = node_hint {
                    hints.insert("forNodes".into(), serde_json::json!([{"name": n}]));
                }
                if !hints.is_empty() {
                    ep["hints"] = serde_json::Value::Object(hints);
                }
                ep
            })
            .collect();
        let (suffix, address_type) = match family {
            Family::V4 => ("v4", "IPv4"),
            Family::V6 => ("v6", "IPv6"),
        };
        serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-{suffix}"), "namespace": NS,
                "labels": {"kubernetes.io/service-name": service,
                           "endpointslice.kubernetes.io/managed-by": "rule-diff"}},
            "addressType": address_type,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints})
        .to_string()
    };
    let addr = |family: Family, i: u32| match family {
        Family::V4 => format!("10.250.0.{i}"),
        Family::V6 => format!("fd00:250::{i:x}"),
    };
    let mut docs = vec![
        svc("many", &format!("{dual}, {port}")),
        svc(
            "zoned",
            &format!("{dual}, \"trafficDistribution\": \"PreferClose\", {port}"),
        ),
        svc(
            "samenode",
            &format!("{dual}, \"trafficDistribution\": \"PreferSameNode\", {port}"),
        ),
        svc(
            "ext",
            r#""type": "ExternalName", "externalName": "example.invalid""#,
        ),
        svc(
            "headless",
            &format!("{dual}, \"clusterIP\": \"None\", \"selector\": {{\"app\": \"web\"}}, {port}"),
        ),
        svc(
            "proxylb",
            &format!(
                "{dual}, \"type\": \"LoadBalancer\", \"selector\": {{\"app\": \"web\"}}, {port}"
            ),
        ),
    ];
    for family in [Family::V4, Family::V6] {
        let node = |i: u32| if i % 2 == 1 { "node-1" } else { "node-2" };
        let zone = |i: u32| if i % 2 == 1 { "zone-a" } else { "zone-b" };
        docs.push(slice(
            "many",
            family,
            (1..=11)
                .map(|i| (addr(family, i), node(i), zone(i), None, None))
                .collect(),
        ));
        docs.push(slice(
            "zoned",
            family,
            (21..=23)
                .map(|i| (addr(family, i), node(i), zone(i), Some(zone(i)), None))
                .collect(),
        ));
        docs.push(slice(
            "samenode",
            family,
            (31..=34)
                .map(|i| {
                    (
                        addr(family, i),
                        node(i),
                        zone(i),
                        Some(zone(i)),
                        Some(node(i)),
                    )
                })
                .collect(),
        ));
    }
    docs.join("\n---\n")
}

fn lb_status_modes(bed: &Bed, service: &str, ips: &[(&str, &str)]) {
    let ingress: Vec<serde_json::Value> = ips
        .iter()
        .map(|(ip, mode)| serde_json::json!({"ip": ip, "ipMode": mode}))
        .collect();
    bed.cp
        .patch_status(
            "service",
            Some(NS),
            service,
            &serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}}),
        )
        .expect("lb status");
}

#[cfg(test)]
mod normalisation {
    use super::*;

    #[test]
    fn map_ordered_chains_compare_as_sets_of_runs() {
        let a = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m comment --comment \"a b\" -j X\n-A KUBE-SERVICES -m comment --comment c -j Y\n-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -j KUBE-NODEPORTS\nCOMMIT\n";
        let b = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m comment --comment c -j Y\n-A KUBE-SERVICES -m comment --comment \"a b\" -j X\n-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -j KUBE-NODEPORTS\nCOMMIT\n";
        assert!(differences(a, b).is_empty(), "{:?}", differences(a, b));
        // Per-Service chains keep their order.
        let c = a.replace("KUBE-SERVICES", "KUBE-SVC-X");
        let d = b.replace("KUBE-SERVICES", "KUBE-SVC-X");
        assert!(!differences(&c, &d).is_empty());
        // The tail must stay last.
        let e = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -j KUBE-NODEPORTS\n-A KUBE-SERVICES -m comment --comment c -j Y\nCOMMIT\n";
        let f = "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m comment --comment c -j Y\n-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -j KUBE-NODEPORTS\nCOMMIT\n";
        assert!(differences(e, f).iter().any(|d| d.contains("not last")));
        // A rule knat lacks is named with the chain.
        let g = "*filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n";
        let h = "*filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name  ct_state_invalid_dropped_pkts -j DROP\nCOMMIT\n";
        let diff = differences(g, h);
        assert!(
            diff.len() == 1 && diff[0].contains("filter KUBE-FORWARD rule 1"),
            "{diff:?}"
        );
        // A twin's own address becomes its mirror's, as a whole word only.
        let twin: IpAddr = "192.168.77.20".parse().expect("ip");
        let mirror: IpAddr = "192.168.77.19".parse().expect("ip");
        assert_eq!(
            map_address(
                "-A X -d 192.168.77.20/32 -j Y\n-A X -d 192.168.77.201/32 -j Y",
                twin,
                mirror
            ),
            "-A X -d 192.168.77.19/32 -j Y\n-A X -d 192.168.77.201/32 -j Y"
        );
        // knat's canary rule is removed explicitly, and only that rule.
        let upstream = "*nat\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n";
        let knat = format!(
            "*nat\n:KUBE-PROXY-CANARY - [0:0]\n-A KUBE-PROXY-CANARY {CANARY_RULE}\nCOMMIT\n"
        );
        assert!(
            differences(&knat, upstream).is_empty(),
            "{:?}",
            differences(&knat, upstream)
        );
        let extra = knat.replace("COMMIT", "-A KUBE-PROXY-CANARY -j DROP\nCOMMIT");
        assert_eq!(
            differences(&extra, upstream).len(),
            1,
            "{:?}",
            differences(&extra, upstream)
        );
        let missing = differences(upstream, upstream);
        assert!(
            missing.len() == 1 && missing[0].contains("canary rule"),
            "{missing:?}"
        );
    }
}
