//! `knat run --config FILE` on a real control plane (issue 15): kubeadm's and kind's
//! `kube-proxy` ConfigMaps (tests/fixtures/kube-proxy-config/), started with exactly the
//! arguments of their kube-proxy DaemonSet (`--config=FILE --hostname-override=NODE`), must
//! program the same rules as knat started with the equivalent flags, against the same real
//! kube-apiserver, EndpointSlice controller and objects.
//!
//! One control plane (etcd, kube-apiserver, kube-controller-manager from
//! `scripts/build-k8s.sh`) serves the whole test; knat runs four times in turn on node
//! `cfg-1` of a lab of network namespaces (file and flags, for each fixture), and between runs
//! `knat cleanup` empties the node's tables (and the test removes the `KUBE-FIREWALL` chain
//! that cleanup leaves, as upstream's does), so that every run starts from the same pristine
//! node (asserted). Each run's `iptables-save` and `ip6tables-save`
//! (comments and counters dropped) are compared table by table and chain by chain. The file
//! copy differs from the fixture only in `clientConnection.kubeconfig`, which names the
//! test's kubeconfig instead of `/var/lib/kube-proxy/kubeconfig.conf`. A NodePort connection
//! through the file-configured node proves the rules carry traffic. knat authenticates as
//! kubeadm's kube-proxy ServiceAccount (bound to `system:node-proxier`, as kubeadm binds it),
//! without knat's own RBAC: the existing DaemonSet's identity is enough.
//!
//! Without root, the binaries or the tools it prints `*** SKIPPED ***`; with `CI=true` it
//! builds the binaries and fails instead of skipping.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use knat::lab::{Backend, Family, Lab, LabOptions, ProbeResult, Proto, Scenario, preflight};
use knat_testbed::control_plane::{ControlPlane, ControlPlaneOptions, Daemon, K8sBinaries};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");
const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kube-proxy-config"
);
/// The Kubernetes namespace of the test's objects.
const NS: &str = "cfg";
/// The node knat programs.
const NODE: &str = "cfg-1";
/// A second node, holding the remote endpoints.
const OTHER: &str = "cfg-2";
const CLIENT: &str = "cfg-ext";
const POD_PORT: u16 = 8080;
/// What both fixtures' `clientConnection.kubeconfig` says (kubeadm's path).
const FIXTURE_KUBECONFIG: &str = "kubeconfig: /var/lib/kube-proxy/kubeconfig.conf";
/// How long one run may take to program every Service and endpoint.
const SETTLE: Duration = Duration::from_secs(30);

/// What kubeadm creates for kube-proxy (cmd/kubeadm/app/phases/addons/proxy).
const KUBEADM_PROXY_IDENTITY: &str = "apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-proxy, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kubeadm:node-proxier}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node-proxier}
subjects:
- {kind: ServiceAccount, name: kube-proxy, namespace: kube-system}
";

/// A fixture and the flags that say what it says (besides the kubeconfig and the node name,
/// which both runs get).
struct Case {
    fixture: &'static str,
    flags: &'static [&'static str],
}

const CASES: [Case; 2] = [
    Case {
        // kubeadm: clusterCIDR from --pod-network-cidr; everything else kube-proxy's defaults.
        fixture: "kubeadm.conf",
        flags: &["--cluster-cidr=10.244.0.0/16"],
    },
    Case {
        // kind: the same, plus iptables.minSyncPeriod 1s (and conntrack.maxPerCore 0, which
        // programs nothing).
        fixture: "kind-configmap.conf",
        flags: &[
            "--cluster-cidr=10.244.0.0/16",
            "--iptables-min-sync-period=1s",
        ],
    },
];

fn scenario() -> Scenario {
    Scenario::new(NS)
        .node(NODE)
        .node(OTHER)
        .client(CLIENT)
        .pod("web-1", NODE)
        .pod("web-2", OTHER)
        .pod("api-2", OTHER)
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn skip(why: &str) -> Option<K8sBinaries> {
    if ci() {
        panic!("config_e2e: cannot run under CI=true: {why}");
    }
    eprintln!("\n*** SKIPPED config_e2e (real control plane): {why} ***\n");
    None
}

/// The binaries, or None (skip); under CI a missing prerequisite panics and the binaries are
/// built when missing.
fn prerequisites() -> Option<K8sBinaries> {
    if let Err(e) = preflight(&[Backend::Nft], false) {
        return skip(&e.to_string());
    }
    let missing: Vec<&str> = [
        "openssl",
        Backend::Nft.save(Family::V4),
        Backend::Nft.save(Family::V6),
        Backend::Nft.restore(Family::V4),
        Backend::Nft.restore(Family::V6),
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
        Err(e) => skip(&format!(
            "{e}; build them with scripts/build-k8s.sh (many minutes the first time)"
        )),
    }
}

/// The lab, the control plane with the test's objects, and the kubeconfig of kubeadm's
/// kube-proxy ServiceAccount.
struct Cluster {
    // Field order is drop order: the control plane stops before the lab is torn down.
    cp: ControlPlane,
    lab: Lab,
    kubeconfig: PathBuf,
    logs: PathBuf,
}

impl Cluster {
    fn start(binaries: K8sBinaries) -> Cluster {
        let lab = Lab::build(scenario(), LabOptions::new(Path::new(KNAT), Backend::Nft))
            .expect("build the lab namespaces");
        let t = Instant::now();
        let cp = ControlPlane::start(ControlPlaneOptions {
            binaries,
            namespace: lab.fabric_namespace(),
            address: lab.scenario().fabric_gateway(Family::V4),
            extra_sans: Vec::new(),
            real_nodes: None,
        })
        .unwrap_or_else(|e| panic!("start the control plane: {e}"));
        eprintln!("config_e2e: control plane ready in {:.1?}", t.elapsed());
        // kube-proxy's identity on a kubeadm cluster: ServiceAccount kube-system/kube-proxy,
        // bound to the bootstrap ClusterRole system:node-proxier by kubeadm's
        // kubeadm:node-proxier binding. knat runs with it, nothing more.
        cp.apply(KUBEADM_PROXY_IDENTITY)
            .expect("apply kubeadm's kube-proxy ServiceAccount and binding");
        let kubeconfig = cp
            .write_kubeconfig(
                "kube-proxy-sa",
                "system:serviceaccount:kube-system:kube-proxy",
                &[],
            )
            .expect("kube-proxy's kubeconfig");
        let logs = cp.dir().join("proxies");
        std::fs::create_dir_all(&logs).expect("proxy log dir");
        let cluster = Cluster {
            cp,
            lab,
            kubeconfig,
            logs,
        };
        cluster.create_objects();
        cluster
    }

    fn create_objects(&self) {
        let s = self.lab.scenario();
        self.cp
            .kubectl(&["create", "namespace", NS], None)
            .expect("create namespace");
        for node in &s.nodes {
            let ip = s.node_ip(node, Family::V4).expect("node ip");
            let cidr = s.pod_cidr(node, Family::V4).expect("pod cidr");
            self.cp
                .register_node(node, ip, &cidr.to_string())
                .expect("register node");
        }
        for (pod, app) in [("web-1", "web"), ("web-2", "web"), ("api-2", "api")] {
            let spec = s.pod_spec(pod).expect("pod in scenario");
            let object = knat_testbed::control_plane::PodObject {
                namespace: NS,
                name: pod,
                node: &spec.node,
                labels: vec![("app", app)],
                ip: s.pod_ip(pod, Family::V4).expect("pod ip"),
                host_ip: s.node_ip(&spec.node, Family::V4).expect("node ip"),
                port: POD_PORT,
            };
            self.cp.create_pod(&object, true).expect("create pod");
        }
        // A Local LoadBalancer (NodePort, health-check node port, a VIP in its status) and a
        // ClusterIP Service: masquerading, local-traffic detection and Local policy all show.
        let services = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {NS}}}\n\
             spec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  selector: {{app: web}}\n\
             \x20 ports: [{{name: http, protocol: TCP, port: 80, targetPort: {POD_PORT}}}]\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: {NS}}}\n\
             spec:\n  selector: {{app: api}}\n\
             \x20 ports: [{{name: https, protocol: TCP, port: 443, targetPort: {POD_PORT}}}]\n"
        );
        self.cp.apply(&services).expect("apply services");
        self.cp
            .patch_status(
                "service",
                Some(NS),
                "web",
                &serde_json::json!({"status": {"loadBalancer": {"ingress": [
                    {"ip": "198.51.100.31", "ipMode": "VIP"}]}}}),
            )
            .expect("write the VIP into the Service status");
    }

    fn node_namespace(&self) -> String {
        self.lab.namespace(NODE).expect("node namespace")
    }

    fn save(&self, family: Family) -> String {
        self.lab
            .exec(NODE, Backend::Nft.save(family), &[])
            .expect("save the rules")
    }

    /// Both families' rules of the node, normalised.
    fn dumps(&self) -> Dumps {
        Dumps {
            v4: normalise(&self.save(Family::V4)),
            v6: normalise(&self.save(Family::V6)),
        }
    }

    /// Feeds `payload` to `iptables-nft-restore --noflush` (or ip6tables) in the node.
    fn restore(&self, family: Family, payload: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.node_namespace()])
            .args([Backend::Nft.restore(family), "--noflush"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn restore");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(payload.as_bytes())
            .expect("write the payload");
        let out = child.wait_with_output().expect("wait for restore");
        assert!(
            out.status.success(),
            "restore of\n{payload}\nfailed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Removes what `knat cleanup` leaves by design (as upstream's cleanup does, it never
    /// touches `KUBE-FIREWALL`, which kubelet may own): the jumps to it and the chain. Without
    /// this, the next run would find its INPUT and OUTPUT jump in place and insert its other
    /// hook jumps before it.
    fn remove_kube_firewall(&self) {
        for (family, dump) in [
            (Family::V4, self.save(Family::V4)),
            (Family::V6, self.save(Family::V6)),
        ] {
            let filter: Vec<&str> = dump
                .lines()
                .skip_while(|l| *l != "*filter")
                .take_while(|l| *l != "COMMIT")
                .collect();
            if !filter.iter().any(|l| l.starts_with(":KUBE-FIREWALL ")) {
                continue;
            }
            let mut payload = vec!["*filter".to_string()];
            payload.extend(
                filter
                    .iter()
                    .filter(|l| l.ends_with("-j KUBE-FIREWALL"))
                    .filter_map(|l| l.strip_prefix("-A "))
                    .map(|rule| format!("-D {rule}")),
            );
            payload.extend([
                "-F KUBE-FIREWALL".into(),
                "-X KUBE-FIREWALL".into(),
                "COMMIT".into(),
                String::new(),
            ]);
            self.restore(family, &payload.join("\n"));
        }
    }

    /// Runs `knat run ARGS` on the node until its rules hold every Service and endpoint and
    /// stop changing; returns them and knat's log, after stopping knat and cleaning the node.
    fn run(&self, label: &str, args: &[String], pristine: &Dumps) -> (Dumps, String) {
        assert_eq!(
            self.dumps().content(),
            pristine.content(),
            "{label}: the node is not pristine"
        );
        let log = self.logs.join(format!("{label}.log"));
        let mut all = vec!["run".to_string()];
        all.extend(args.iter().cloned());
        let mut knat = Daemon::spawn("knat", &self.node_namespace(), Path::new(KNAT), &all, &log)
            .expect("start knat");
        let started = Instant::now();
        let mut last: Option<Dumps> = None;
        let settled = loop {
            if !knat.is_running() {
                panic!(
                    "{label}: knat exited before programming\n{}",
                    knat.log_tail(40)
                );
            }
            let now = self.dumps();
            if now.complete() && last.as_ref() == Some(&now) {
                break now;
            }
            assert!(
                started.elapsed() < SETTLE,
                "{label}: rules did not settle in {SETTLE:?}\n{}\nlog:\n{}",
                now.v4,
                knat.log_tail(40)
            );
            last = Some(now);
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!(
            "config_e2e: {label}: rules settled {:.1?} after start",
            started.elapsed()
        );
        if label.ends_with("file") {
            self.expect_nodeport_answers(label);
        }
        knat.stop();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        self.lab
            .exec(NODE, KNAT, &["cleanup"])
            .expect("knat cleanup");
        let left = self.dumps();
        assert!(
            !left.v4.contains("KUBE-SERVICES") && !left.v6.contains("KUBE-SERVICES"),
            "{label}: knat cleanup left rules:\n{}",
            left.v4
        );
        self.remove_kube_firewall();
        (settled, text)
    }

    /// A NodePort connection from the client into the node reaches the node's own pod.
    fn expect_nodeport_answers(&self, label: &str) {
        let service = self.cp.get_json("service", NS, "web").expect("service");
        let port = service["spec"]["ports"][0]["nodePort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("node port");
        let ip = self
            .lab
            .scenario()
            .node_ip(NODE, Family::V4)
            .expect("node ip");
        let target = SocketAddr::new(ip, port);
        match self.lab.probe(CLIENT, target, Proto::Tcp) {
            Ok(ProbeResult::Reached { reply }) => {
                assert_eq!(
                    reply.pod, "web-1",
                    "{label}: {target} answered by {reply:?}"
                );
                let client: Option<IpAddr> = self.lab.scenario().host_ip(CLIENT, Family::V4);
                assert_eq!(
                    Some(reply.saw.ip()),
                    client,
                    "{label}: Local policy keeps the client's address"
                );
            }
            other => panic!("{label}: NodePort {target}: {other:?}"),
        }
    }

    fn shutdown(&mut self) {
        self.cp.shutdown();
    }
}

/// One run's rules, per family.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dumps {
    v4: String,
    v6: String,
}

impl Dumps {
    /// Every Service port and the four endpoints (three pods, and kube-apiserver behind
    /// `default/kubernetes`) are programmed (IPv4).
    fn complete(&self) -> bool {
        let endpoints = self
            .v4
            .lines()
            .filter(|l| l.starts_with(":KUBE-SEP-"))
            .count();
        self.v4.contains(&format!("{NS}/web:http"))
            && self.v4.contains(&format!("{NS}/api:https"))
            && self.v4.contains("default/kubernetes:https")
            && endpoints == 4
    }
}

impl Dumps {
    /// What the node holds beyond empty tables: rules, user chains and built-in chains with
    /// a policy other than ACCEPT (an empty table and a missing one are the same node).
    fn content(&self) -> Vec<String> {
        [&self.v4, &self.v6]
            .iter()
            .enumerate()
            .flat_map(|(family, dump)| {
                dump.lines()
                    .filter(|l| {
                        l.starts_with("-A ") || (l.starts_with(':') && !l.contains(" ACCEPT ["))
                    })
                    .map(move |l| format!("{family} {l}"))
            })
            .collect()
    }
}

/// `iptables-save` without comment lines and with chain counters zeroed.
fn normalise(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]", &l[..i]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A dump as `table -> chain -> (policy line, rules in order)`.
type Tables = BTreeMap<String, BTreeMap<String, (String, Vec<String>)>>;

fn tables(dump: &str) -> Tables {
    let mut out = Tables::new();
    let mut table = String::new();
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
            out.entry(table.clone()).or_default();
        } else if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or_default();
            let entry = out.entry(table.clone()).or_default();
            entry.entry(chain.to_string()).or_default().0 = line.to_string();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let entry = out.entry(table.clone()).or_default();
            entry
                .entry(chain.to_string())
                .or_default()
                .1
                .push(line.to_string());
        }
    }
    out
}

/// Every difference between two dumps, chain by chain (empty when they are equal).
fn differences(family: &str, file: &str, flags: &str) -> Vec<String> {
    let (a, b) = (tables(file), tables(flags));
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for table in names {
        let empty = BTreeMap::new();
        let (ta, tb) = (
            a.get(table).unwrap_or(&empty),
            b.get(table).unwrap_or(&empty),
        );
        let chains: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
        for chain in chains {
            if ta.get(chain) != tb.get(chain) {
                out.push(format!(
                    "{family} {table} {chain}:\n  file:  {:?}\n  flags: {:?}",
                    ta.get(chain),
                    tb.get(chain)
                ));
            }
        }
    }
    // Chain declarations and rules equal, but in another order: the dumps still differ.
    if out.is_empty() && file != flags {
        out.push(format!("{family}: same chains and rules in another order"));
    }
    out
}

/// A copy of a fixture in `dir` whose kubeconfig is `kubeconfig`; nothing else changed.
fn fixture_copy(dir: &Path, name: &str, kubeconfig: &Path) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join(name)).expect("fixture");
    assert_eq!(
        text.matches(FIXTURE_KUBECONFIG).count(),
        1,
        "{name}: one {FIXTURE_KUBECONFIG:?}"
    );
    let copy = text.replacen(
        FIXTURE_KUBECONFIG,
        &format!("kubeconfig: {}", kubeconfig.display()),
        1,
    );
    let path = dir.join(name);
    std::fs::write(&path, copy).expect("write the fixture copy");
    path
}

#[test]
fn kubeadm_and_kind_config_files_program_what_the_equivalent_flags_program() {
    let Some(binaries) = prerequisites() else {
        return;
    };
    let started = Instant::now();
    let mut cluster = Cluster::start(binaries);
    let c = &cluster;
    let node_flag = format!("--hostname-override={NODE}");
    let pristine = c.dumps();
    for case in &CASES {
        let copy = fixture_copy(c.cp.dir(), case.fixture, &c.kubeconfig);
        // The kube-proxy DaemonSet's arguments, unchanged (kube-proxy itself takes
        // --hostname-override over the file's hostnameOverride, so knat does not warn).
        let (file, file_log) = c.run(
            &format!("{}-file", case.fixture),
            &[format!("--config={}", copy.display()), node_flag.clone()],
            &pristine,
        );
        let mut flags_args = vec![
            format!("--kubeconfig={}", c.kubeconfig.display()),
            node_flag.clone(),
        ];
        flags_args.extend(case.flags.iter().map(|f| f.to_string()));
        let (flags, _) = c.run(&format!("{}-flags", case.fixture), &flags_args, &pristine);

        assert!(
            file.v4.contains("10.244.0.0/16"),
            "{}: the file's clusterCIDR is not in the rules:\n{}",
            case.fixture,
            file.v4
        );
        assert!(
            !file_log.contains("flags given on the command line override"),
            "{}: the DaemonSet's arguments override nothing in the file:\n{file_log}",
            case.fixture
        );
        let mut diffs = differences("IPv4", &file.v4, &flags.v4);
        diffs.extend(differences("IPv6", &file.v6, &flags.v6));
        assert!(
            diffs.is_empty(),
            "{}: the file and the flags programmed different rules:\n{}",
            case.fixture,
            diffs.join("\n")
        );
        let chains = file.v4.lines().filter(|l| l.starts_with(':')).count()
            + file.v6.lines().filter(|l| l.starts_with(':')).count();
        eprintln!(
            "config_e2e: {}: file and flags programmed the same {chains} chains (IPv4 and IPv6)",
            case.fixture
        );
    }
    eprintln!("config_e2e: done in {:.1?}", started.elapsed());
    cluster.shutdown();
}

#[test]
fn differences_are_found_chain_by_chain() {
    let a = "*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT";
    assert!(differences("IPv4", a, a).is_empty());
    let b = "*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j KUBE-C\nCOMMIT";
    let d = differences("IPv4", a, b);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].starts_with("IPv4 nat KUBE-A"), "{d:?}");
    let reordered = "*nat\n:KUBE-B - [0:0]\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT";
    assert_eq!(
        differences("IPv4", a, reordered),
        vec!["IPv4: same chains and rules in another order".to_string()]
    );
    assert_eq!(
        normalise("# Generated\n:KUBE-A - [5:300]\n-A KUBE-A -j ACCEPT"),
        ":KUBE-A - [0:0]\n-A KUBE-A -j ACCEPT"
    );
}
