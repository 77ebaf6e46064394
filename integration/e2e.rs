//! End to end on a real control plane, without containers (issue 5).
//!
//! etcd, kube-apiserver and kube-controller-manager (built from Go modules by
//! `scripts/build-k8s.sh`) run in the lab's fabric namespace; nodes, pods and an external
//! client are network namespaces built by `knat::lab`. The harness plays the kubelet (Node and
//! Pod objects, status through the status subresource) and the cloud load balancer (VIPs in
//! the Service status, one VIP routed to each node); the real EndpointSlice controller makes
//! the slices. `knat run` programs `node-1`/`node-2`; upstream kube-proxy (iptables mode)
//! programs the twins `twin-1`/`twin-2`, which carry mirror-image pods (`tw-*` for `web-*`),
//! and every check runs against both and must give the same outcome (the differential check),
//! as must `knat trace` of both nodes' `iptables-save`.
//!
//! One test function runs the steps in order on one cluster (starting a control plane costs
//! tens of seconds on two cores). Without root, the binaries or the tools it prints
//! `*** SKIPPED ***`; with `CI=true` it builds the binaries (`scripts/build-k8s.sh`) and fails
//! instead of skipping. `KNAT_E2E_KEEP=1` keeps the control plane's directory (logs, certs).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use knat::lab::{Backend, Family, Lab, LabOptions, ProbeResult, Proto, Scenario};
use knat_testbed::control_plane::{
    self, ControlPlane, Daemon, K8sBinaries, PodObject, ProxyKind, ProxyOptions,
};
use knat_testbed::lab_plane::{self, LabPlane, LabPlaneOptions};
use knat_testbed::prerequisites;

const KNAT: &str = env!("CARGO_BIN_EXE_knat");
/// The Kubernetes namespace of the test's objects.
const NS: &str = "e2e";
const SERVICE: &str = "web";
const SERVICE_PORT: u16 = 80;
const POD_PORT: u16 = 8080;
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const MIN_SYNC: &str = "1s";
/// How long a change may take to show up in the data path (API write, EndpointSlice
/// controller, watch, one rate-limited sync).
const CONVERGE: Duration = Duration::from_secs(20);
/// How long a change may take after kube-apiserver comes back from an outage. Both proxies'
/// watchers back off while it is down or still warming up (403s from RBAC before its informers
/// sync), client-go's reflector and kube-rs's default backoff alike: 0.8 s doubling with jitter,
/// so five failed attempts already add up to about 25 s before the next one.
const CONVERGE_AFTER_OUTAGE: Duration = Duration::from_secs(45);
/// After the watch expiry, how long the EndpointSlice controller may lag before the Service is
/// annotated to queue it again.
const NUDGE_EVERY: Duration = Duration::from_secs(10);
const CLIENT: &str = "ext";
/// The client of the continuous traffic that [`under_traffic`] measures, and of nothing else.
///
/// Convergence checks ([`Cluster::expect`]) probe a VIP before the proxy has programmed it,
/// and the node forwards those SYNs unDNATed (the fabric answers unreachable). Each leaves an
/// unreplied conntrack entry without NAT on the node (`SYN_SENT`, 120 s, renewed by every SYN
/// of the same 4-tuple). A failed connect leaves no `TIME_WAIT`, so the client's ephemeral
/// port allocator hands the same ports out again once it wraps (about 14,000 connections to
/// one destination), and every such connection follows the stale entry to the fabric: "No
/// route to host" seconds or minutes later, on whichever side `expect` happened to probe first (swap
/// `SIDES` and kube-proxy's twin fails instead). Measured traffic from its own address never
/// shares a 4-tuple with those probes, so both proxies are measured on equal terms.
const LOAD_CLIENT: &str = "load";

/// One side of the differential check: the nodes one proxy programs.
#[derive(Debug, Clone, Copy)]
struct Side {
    proxy: ProxyKind,
    label: &'static str,
    nodes: [&'static str; 2],
    /// Pod name prefix: `web-` on knat's nodes, `tw-` on the twins.
    pod_prefix: &'static str,
    client_pod: &'static str,
    /// The load-balancer VIPs delivered to `nodes[0]` and `nodes[1]`.
    vips: [IpAddr; 2],
}

const fn vip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
}

const KNAT_SIDE: Side = Side {
    proxy: ProxyKind::Knat,
    label: "knat",
    nodes: ["node-1", "node-2"],
    pod_prefix: "web-",
    client_pod: "cli-1",
    vips: [vip(11), vip(12)],
};
const UPSTREAM_SIDE: Side = Side {
    proxy: ProxyKind::KubeProxy,
    label: "kube-proxy",
    nodes: ["twin-1", "twin-2"],
    pod_prefix: "tw-",
    client_pod: "tcli-1",
    vips: [vip(21), vip(22)],
};
const SIDES: [Side; 2] = [KNAT_SIDE, UPSTREAM_SIDE];
/// The node for the wrong-node-name check (knat started with a name no Node has).
const LONE_NODE: &str = "node-3";
const LONE_VIP: IpAddr = vip(13);
/// Pod slots per node: `web-1a` is slot `1a` on `node-1`, `tw-1a` its twin on `twin-1`.
const SLOTS: [&str; 4] = ["1a", "1b", "2a", "2b"];

fn scenario() -> Scenario {
    let mut s = Scenario::new(NS);
    for side in SIDES {
        s = s.node(side.nodes[0]).node(side.nodes[1]);
    }
    s = s.node(LONE_NODE).client(CLIENT).client(LOAD_CLIENT);
    for side in SIDES {
        for slot in SLOTS {
            let node = side.nodes[usize::from(slot.starts_with('2'))];
            s = s.pod(&format!("{}{slot}", side.pod_prefix), node);
        }
        s = s.pod(side.client_pod, side.nodes[0]);
        s = s
            .route(side.vips[0], side.nodes[0])
            .route(side.vips[1], side.nodes[1]);
    }
    s.route(LONE_VIP, LONE_NODE)
}

/// What a probe saw, relative to the node the packet entered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// An endpoint on the entry node answered.
    Local(Source),
    /// An endpoint on another node answered.
    Remote(Source),
    Refused,
    Dropped,
    Failed(String),
}

/// The source address the endpoint saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The sender's own address (client or pod): preserved.
    Preserved,
    /// An address of the entry node: masqueraded.
    EntryNode,
    Other(IpAddr),
}

struct Cluster {
    // Field order is drop order: proxies, then the control plane, then the namespaces.
    proxies: Mutex<Vec<(String, Daemon)>>,
    cp: ControlPlane,
    lab: Lab,
    logs: PathBuf,
    knat_kubeconfig: PathBuf,
    kube_proxy_kubeconfig: PathBuf,
}

fn step(name: &str) {
    eprintln!("e2e: == {name}");
}

impl Cluster {
    fn start(binaries: K8sBinaries) -> Cluster {
        let lab = Lab::build(scenario(), LabOptions::new(Path::new(KNAT), Backend::Nft))
            .expect("build the lab namespaces");
        // A load balancer does not act on ICMP redirects, and nodes in a cloud VPC do not
        // send them. Here a node that forwards a packet back out of the interface it came in
        // on (Cluster traffic to a pod on another node) would redirect the client, whose
        // routing cache would then send later VIP connections straight to another node.
        for host in lab.scenario().nodes.iter().chain(&lab.scenario().clients) {
            lab.exec(
                host,
                "sysctl",
                &[
                    "-q",
                    "-w",
                    "net.ipv4.conf.all.send_redirects=0",
                    "net.ipv4.conf.eth0.send_redirects=0",
                    "net.ipv4.conf.all.accept_redirects=0",
                    "net.ipv4.conf.eth0.accept_redirects=0",
                ],
            )
            .expect("disable ICMP redirects");
        }
        let LabPlane { cp, logs } = lab_plane::start(
            "e2e",
            &lab,
            binaries,
            &LabPlaneOptions {
                knat_rbac: true,
                namespace: Some(NS),
                register_nodes: true,
                ..LabPlaneOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("start the control plane: {e}"));
        // knat with the DaemonSet's own RBAC: a certificate for the user name RBAC gives the
        // ServiceAccount subject; kube-proxy with upstream's bootstrap identity.
        let knat_kubeconfig = cp
            .write_kubeconfig("knat", "system:serviceaccount:kube-system:knat", &[])
            .expect("knat kubeconfig");
        let kube_proxy_kubeconfig = cp
            .write_kubeconfig("kube-proxy", "system:kube-proxy", &[])
            .expect("kube-proxy kubeconfig");
        Cluster {
            proxies: Mutex::new(Vec::new()),
            cp,
            lab,
            logs,
            knat_kubeconfig,
            kube_proxy_kubeconfig,
        }
    }

    fn proxy_options(&self, kind: ProxyKind, name: &str) -> ProxyOptions {
        ProxyOptions {
            kind,
            node_name: name.to_string(),
            kubeconfig: match kind {
                ProxyKind::Knat => self.knat_kubeconfig.clone(),
                ProxyKind::KubeProxy => self.kube_proxy_kubeconfig.clone(),
            },
            cluster_cidr: CLUSTER_CIDR.to_string(),
            min_sync_period: MIN_SYNC.to_string(),
            extra: Vec::new(),
        }
    }

    /// Starts a proxy on `node` calling itself `name`.
    fn start_proxy(&self, kind: ProxyKind, node: &str, name: &str) {
        let options = self.proxy_options(kind, name);
        let namespace = self.lab.namespace(node).expect("node namespace");
        let log = self.logs.join(format!("{node}.log"));
        let daemon = options
            .spawn(&namespace, Path::new(KNAT), self.cp.binaries(), &log)
            .expect("start proxy");
        self.proxies_lock().push((node.to_string(), daemon));
    }

    fn proxies_lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Daemon)>> {
        self.proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stop_proxy(&self, node: &str) {
        let daemon = {
            let mut proxies = self.proxies_lock();
            proxies
                .iter()
                .position(|(n, _)| n == node)
                .map(|pos| proxies.remove(pos).1)
        };
        if let Some(mut daemon) = daemon {
            daemon.stop();
        }
    }

    /// A proxy's log (plain text: knat colours only on a terminal, klog never does).
    fn proxy_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{node}.log"))).unwrap_or_default()
    }

    fn context(&self) -> String {
        let mut out = String::new();
        let nodes: Vec<String> = self.proxies_lock().iter().map(|(n, _)| n.clone()).collect();
        for node in &nodes {
            let log = self.proxy_log(node);
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "--- {node} proxy log (tail) ---\n{}\n",
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
        out.push_str(&self.cp.log_tails(10));
        // Where ICMP errors and drops come from, for "No route to host" and timeouts.
        for host in ["node-1", "twin-1", CLIENT, LOAD_CLIENT] {
            if let Ok(counters) = self.lab.exec(host, "nstat", &["-az"]) {
                let wanted: Vec<&str> = counters
                    .lines()
                    .filter(|l| {
                        let name = l.split_whitespace().next().unwrap_or_default();
                        let value = l.split_whitespace().nth(1).unwrap_or("0");
                        value != "0" && (name.starts_with("Icmp") || name.contains("Unreach"))
                    })
                    .collect();
                out.push_str(&format!(
                    "\n--- {host} nstat (ICMP) ---\n{}",
                    wanted.join("\n")
                ));
            }
        }
        let fabric = self.lab.fabric_namespace();
        if let Ok(counters) = Command::new("ip")
            .args([
                "netns",
                "exec",
                &fabric,
                "nstat",
                "-az",
                "IcmpOutDestUnreachs",
            ])
            .output()
        {
            out.push_str(&format!(
                "\n--- fabric (unreachable for unDNATed packets) ---\n{}",
                String::from_utf8_lossy(&counters.stdout)
            ));
        }
        for host in ["node-1", "twin-1"] {
            if let Ok(stats) = self.lab.exec(host, "conntrack", &["-S"]) {
                out.push_str(&format!("\n--- {host} conntrack -S ---\n{stats}"));
            }
        }
        if let Ok(neigh) = self.lab.exec("node-1", "ip", &["neigh"]) {
            out.push_str(&format!("\n--- node-1 neighbours ---\n{neigh}"));
        }
        out
    }

    /// `curl` from a host; returns (HTTP status, body). Status 0: no HTTP answer.
    fn http(&self, from: &str, url: &str) -> (u16, String) {
        let out = self
            .lab
            .exec(
                from,
                "curl",
                &["-s", "--max-time", "2", "-w", "\n%{http_code}", url],
            )
            .unwrap_or_else(|e| match e {
                // curl exits non-zero when it cannot connect; it still prints the code.
                knat::lab::LabError::Command { .. } => "\n000".to_string(),
                other => panic!("curl: {other}"),
            });
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "000"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Runs `knat doctor` (live mode, knat's own kubeconfig and RBAC) from a node namespace;
    /// returns the exit code and the JSON report.
    fn doctor(&self, node_name: &str) -> (i32, serde_json::Value) {
        let ns = self.lab.namespace("node-1").expect("node-1 namespace");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, KNAT, "doctor", "--kubeconfig"])
            .arg(&self.knat_kubeconfig)
            .args(["--node-name", node_name, "--output", "json"])
            .output()
            .expect("run knat doctor");
        let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "knat doctor printed no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), report)
    }

    /// `knat doctor` reads the same cluster the proxies program: node-1 exists and has the
    /// Local service's ready endpoints; a misspelt node name is reported as broken (exit 1).
    fn doctor_checks(&self) {
        let (code, report) = self.doctor("node-1");
        assert_eq!(
            report["node"]["exists"],
            serde_json::json!(true),
            "{report:#}"
        );
        let services = report["local_services"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let node1_ready: u64 = services
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["node"] == "node-1")
            .filter_map(|e| e["ready"].as_u64())
            .sum();
        assert!(
            node1_ready >= 1,
            "doctor sees node-1's ready endpoints: {report:#}"
        );
        assert!(
            code == 0 || code == 1,
            "doctor exit code {code}: {report:#}"
        );
        let (code, report) = self.doctor("node-3-typo");
        assert_eq!(
            report["node"]["exists"],
            serde_json::json!(false),
            "{report:#}"
        );
        assert_eq!(
            code, 1,
            "a node name matching no Node is broken: {report:#}"
        );
    }

    /// Waits until every proxy answers /healthz 200.
    fn wait_proxies_healthy(&self, nodes: &[&str]) {
        for node in nodes {
            self.wait(&format!("{node} /healthz 200"), || {
                let (code, body) = self.http(node, "http://127.0.0.1:10256/healthz");
                (code == 200, format!("{code} {body}"))
            });
        }
    }

    /// Polls `check` until it says true or [`CONVERGE`] passes; returns the time it took.
    fn wait(&self, what: &str, check: impl FnMut() -> (bool, String)) -> Duration {
        self.wait_within(what, CONVERGE, check)
    }

    /// [`Cluster::wait`] with its own limit.
    fn wait_within(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> (bool, String),
    ) -> Duration {
        let start = Instant::now();
        loop {
            let (ok, detail) = check();
            if ok {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!(
                    "e2e: {what}: not reached after {limit:?}; last: {detail}\n{}",
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Creates the pod of `slot` on both sides, Ready.
    fn deploy(&self, slot: &str) {
        deploy(&self.lab, &self.cp, slot);
    }

    /// Removes the pod of `slot` on both sides.
    fn remove(&self, slot: &str) {
        remove(&self.cp, slot);
    }

    /// Marks the pod of `slot` terminating (graceful delete) on both sides.
    fn terminate(&self, slot: &str) {
        for side in SIDES {
            self.cp
                .terminate_pod(NS, &format!("{}{slot}", side.pod_prefix))
                .expect("terminate pod");
        }
    }

    fn service(&self) -> serde_json::Value {
        self.cp
            .get_json("service", NS, SERVICE)
            .expect("get service")
    }

    fn node_port(&self) -> u16 {
        port_of(&self.service()["spec"]["ports"][0]["nodePort"])
    }

    fn health_check_port(&self) -> Option<u16> {
        let svc = self.service();
        svc["spec"]["healthCheckNodePort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
    }

    fn node_ip(&self, node: &str) -> IpAddr {
        self.lab
            .scenario()
            .node_ip(node, Family::V4)
            .expect("node ip")
    }

    /// Classifies one TCP probe from `from` to `target`, entering at `entry`.
    fn outcome(&self, from: &str, target: SocketAddr, entry: &str) -> Outcome {
        let s = self.lab.scenario();
        let sender = s.host_ip(from, Family::V4);
        match self.lab.probe(from, target, Proto::Tcp) {
            Ok(ProbeResult::Reached { reply }) => {
                let pod_node = s.pod_spec(&reply.pod).map(|p| p.node.clone());
                let saw = reply.saw.ip();
                let source = if Some(saw) == sender {
                    Source::Preserved
                } else if s.node_owning(saw) == Some(entry) {
                    Source::EntryNode
                } else {
                    Source::Other(saw)
                };
                if pod_node.as_deref() == Some(entry) {
                    Outcome::Local(source)
                } else {
                    Outcome::Remote(source)
                }
            }
            Ok(ProbeResult::Refused) => Outcome::Refused,
            Ok(ProbeResult::TimedOut) => Outcome::Dropped,
            Ok(ProbeResult::Failed { error }) => Outcome::Failed(error),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Waits until, on both sides, `probe(side)` (from, target, entry node) classifies as one of
    /// `expected`; reports the time it took. This is the differential check for packets:
    /// knat's nodes and kube-proxy's twins must both reach the expected outcome.
    fn expect(
        &self,
        what: &str,
        probe: impl Fn(&Side) -> (String, SocketAddr, String),
        expected: &[Outcome],
    ) -> Duration {
        let mut worst = Duration::ZERO;
        for side in SIDES {
            let (from, target, entry) = probe(&side);
            let took = self.wait(&format!("[{}] {what}", side.label), || {
                let got = self.outcome(&from, target, &entry);
                (
                    expected.contains(&got),
                    format!("{from} -> {target} via {entry}: {got:?}, expected {expected:?}"),
                )
            });
            eprintln!("e2e:   [{}] {what}: ok after {took:.1?}", side.label);
            worst = worst.max(took);
        }
        worst
    }

    /// Waits until the health-check node port of `node_index` answers `code` with `count`
    /// local endpoints (200) or `code` (503, or 0 for "closed") on both sides.
    fn expect_health(&self, node_index: usize, code: u16, count: Option<u64>) {
        for side in SIDES {
            let node = side.nodes[node_index];
            let took = self.wait(&format!("[{}] health check of {node}", side.label), || {
                let Some(port) = self.health_check_port() else {
                    return (code == 0, "no healthCheckNodePort".to_string());
                };
                let url = format!("http://{}:{port}/", self.node_ip(node));
                let (got, body) = self.http(CLIENT, &url);
                let local = local_endpoints(&body);
                (
                    got == code && (count.is_none() || local == count),
                    format!("{url}: {got} {body}"),
                )
            });
            eprintln!(
                "e2e:   [{}] {node} health check {code} {count:?}: ok after {took:.1?}",
                side.label
            );
        }
    }

    /// The differential trace: `knat trace` of knat's and of kube-proxy's `iptables-save`,
    /// for the same packets, must give the same verdicts, masquerade decisions and (mirrored)
    /// endpoints.
    fn compare_traces(&self, label: &str) {
        let node_port = self.node_port();
        let client = self
            .lab
            .scenario()
            .client_ip(CLIENT, Family::V4)
            .expect("client ip");
        let mut results: Vec<Vec<(String, serde_json::Value)>> = Vec::new();
        for side in SIDES {
            let entry = side.nodes[0];
            let dump = self
                .lab
                .iptables_save(entry, Family::V4)
                .expect("iptables-save");
            let file = self.logs.join(format!("{entry}.{label}.dump"));
            std::fs::write(&file, &dump).expect("write dump");
            let node_ips: Vec<IpAddr> = self.lab.scenario().node_addresses(entry);
            let packets = [
                (
                    "vip-own",
                    client,
                    SocketAddr::new(side.vips[0], SERVICE_PORT),
                ),
                (
                    "vip-other",
                    client,
                    SocketAddr::new(side.vips[1], SERVICE_PORT),
                ),
                (
                    "nodeport",
                    client,
                    SocketAddr::new(self.node_ip(entry), node_port),
                ),
            ];
            let mut side_results = Vec::new();
            for (name, src, dst) in packets {
                let mut command = Command::new(KNAT);
                command.args(["trace", "--output", "json", "--in-iface", "eth0"]);
                command.arg("--dump").arg(&file);
                command.args(["--src", &src.to_string(), "--dst", &dst.to_string()]);
                for ip in &node_ips {
                    command.args(["--node-ip", &ip.to_string()]);
                }
                let out = command.output().expect("run knat trace");
                assert!(
                    out.status.success(),
                    "knat trace failed on {entry}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let value: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("trace json");
                side_results.push((name.to_string(), self.normalise_trace(&value)));
            }
            results.push(side_results);
        }
        assert_eq!(
            results[0],
            results[1],
            "e2e: {label}: knat trace verdicts differ between knat (left) and kube-proxy \
             (right) dumps (kept in {})",
            self.logs.display()
        );
        eprintln!("e2e:   traces agree at {label}: {:?}", results[0]);
    }

    /// Verdict, masquerade and endpoints of a trace, with twin pods named like knat's.
    fn normalise_trace(&self, trace: &serde_json::Value) -> serde_json::Value {
        let s = self.lab.scenario();
        let mut targets = BTreeSet::new();
        for target in trace["targets"].as_array().into_iter().flatten() {
            let text = target.as_str().unwrap_or_default();
            let name = text
                .parse::<SocketAddr>()
                .ok()
                .and_then(|addr| {
                    s.pods
                        .iter()
                        .find(|p| s.pod_ip(&p.name, Family::V4) == Some(addr.ip()))
                        .map(|p| {
                            p.name
                                .replace(UPSTREAM_SIDE.pod_prefix, KNAT_SIDE.pod_prefix)
                        })
                })
                .unwrap_or_else(|| text.to_string());
            targets.insert(name);
        }
        serde_json::json!({
            "verdict": trace["verdict"],
            "masquerade": trace["masquerade"],
            "targets": targets,
        })
    }
}

/// The Pod object of the lab's pod `name`.
fn pod_object<'a>(lab: &'a Lab, name: &'a str) -> PodObject<'a> {
    let s = lab.scenario();
    let spec = s.pod_spec(name).expect("pod in scenario");
    PodObject {
        namespace: NS,
        name,
        node: &spec.node,
        labels: vec![("app", "web")],
        ip: s.pod_ip(name, Family::V4).expect("pod ip"),
        host_ip: s.node_ip(&spec.node, Family::V4).expect("node ip"),
        port: POD_PORT,
    }
}

/// Creates the pod of `slot` on both sides, Ready.
fn deploy(lab: &Lab, cp: &ControlPlane, slot: &str) {
    for side in SIDES {
        let name = format!("{}{slot}", side.pod_prefix);
        cp.create_pod(&pod_object(lab, &name), true)
            .expect("create pod");
    }
}

/// Removes the pod of `slot` on both sides.
fn remove(cp: &ControlPlane, slot: &str) {
    for side in SIDES {
        cp.remove_pod(NS, &format!("{}{slot}", side.pod_prefix))
            .expect("remove pod");
    }
}

fn port_of(value: &serde_json::Value) -> u16 {
    value
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("not a port: {value}"))
}

fn local_endpoints(body: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["localEndpoints"].as_u64())
}

fn service_manifest(policy: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {SERVICE}\n  namespace: {NS}\n\
         spec:\n  type: LoadBalancer\n  externalTrafficPolicy: {policy}\n  selector:\n    app: web\n\
         \x20 ports:\n  - name: http\n    protocol: TCP\n    port: {SERVICE_PORT}\n    targetPort: {POD_PORT}\n"
    )
}

/// Sequential TCP probes from `from` to `target` until `stop` is set; returns every result
/// that was not an answer, and the number of probes.
fn continuous(
    lab: &Lab,
    from: &str,
    target: SocketAddr,
    stop: &AtomicBool,
) -> (usize, Vec<String>) {
    let mut total = 0;
    let mut failures = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match lab.probe_many(from, target, Proto::Tcp, 20) {
            Ok(results) => {
                total += results.len();
                let at = control_plane::now_rfc3339();
                failures.extend(
                    results
                        .iter()
                        .filter(|r| r.reply().is_none())
                        .map(|r| format!("{} (batch ending {at})", r.describe())),
                );
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    (total, failures)
}

/// Runs `during` while both sides' first VIP is probed continuously; asserts no probe failed.
fn under_traffic(cluster: &Cluster, sides: &[Side], what: &str, during: impl FnOnce()) {
    let results = measure(&cluster.lab, sides, during);
    assert_no_failures(cluster, sides, what, &results);
}

/// Runs `during` while each side's first VIP is probed continuously from [`LOAD_CLIENT`]:
/// per side, the number of connections and the failures. Takes the lab alone so that `during`
/// may change the control plane.
fn measure(lab: &Lab, sides: &[Side], during: impl FnOnce()) -> Vec<(usize, Vec<String>)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let handles: Vec<_> = sides
            .iter()
            .map(|side| {
                let target = SocketAddr::new(side.vips[0], SERVICE_PORT);
                let stop = &stop;
                scope.spawn(move || continuous(lab, LOAD_CLIENT, target, stop))
            })
            .collect();
        // Let the probes run before and after the change.
        std::thread::sleep(Duration::from_millis(500));
        during();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, vec!["prober panicked".into()])))
            .collect::<Vec<_>>()
    })
}

/// Prints each side's counts and asserts that none failed.
fn assert_no_failures(
    cluster: &Cluster,
    sides: &[Side],
    what: &str,
    results: &[(usize, Vec<String>)],
) {
    for (side, (total, failures)) in sides.iter().zip(results) {
        eprintln!(
            "e2e:   [{}] {what}: {total} connections, {} failed",
            side.label,
            failures.len()
        );
    }
    for (side, (total, failures)) in sides.iter().zip(results) {
        assert!(
            failures.is_empty() && *total > 0,
            "e2e: [{}] {what}: {} of {total} connections failed: {:?}\n{}",
            side.label,
            failures.len(),
            failures.iter().take(5).collect::<Vec<_>>(),
            cluster.context()
        );
    }
}

/// The watches expire: with kube-apiserver's watch cache off (every watch reads etcd), the
/// nodes are cut off from the API server (their packets to it dropped, in their own
/// namespaces: connections time out), the API server restarts (the watches end), the pods change (`1a` back, `1b`
/// gone) and etcd is compacted past the proxies' last revision; let through again, each
/// proxy's watch from that revision gets 410 Gone, re-lists and must converge to exactly the
/// API's state: traffic reaches `1a`, and no rule names `1b`'s address. Traffic never fails.
fn expect_expired_watches_relist(c: &mut Cluster) {
    step("watches expire (410 Gone, etcd compacted): the proxies re-list and converge");
    let api = c.lab.scenario().fabric_gateway(Family::V4).to_string();
    let port = control_plane::APISERVER_PORT.to_string();
    let nodes: Vec<&str> = SIDES.iter().flat_map(|s| s.nodes).collect();
    let drop_rule = |op: &str| -> Vec<String> {
        [
            op, "OUTPUT", "-d", &api, "-p", "tcp", "--dport", &port, "-j", "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let log_before = c.proxy_log("node-1").len();
    let mut back = Instant::now();
    let mut revision = 0;
    let (lab, cp) = (&c.lab, &mut c.cp);
    let results = measure(lab, &SIDES, || {
        for node in &nodes {
            let args = drop_rule("-I");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.exec(node, "iptables-nft", &args)
                .expect("cut the node off");
        }
        cp.restart_apiserver_with(&["--watch-cache=false"])
            .expect("restart kube-apiserver without its watch cache");
        deploy(lab, cp, "1a");
        remove(cp, "1b");
        // The state the proxies must converge to: every side's `1a` in the EndpointSlices and
        // its `1b` gone (the controller manager re-lists after the restart too; compacting
        // before it wrote the slices would leave `1b` in the API's state).
        let ip = |slot: &str, side: &Side| {
            lab.scenario()
                .pod_ip(&format!("{}{slot}", side.pod_prefix), Family::V4)
                .expect("pod ip")
                .to_string()
        };
        let api_start = Instant::now();
        let mut nudges = 0u32;
        let (api_ready, slices_text) = loop {
            let slices_text =
                serde_json::Value::Array(cp.endpoint_slices(NS, SERVICE).unwrap_or_default())
                    .to_string();
            let done = SIDES.iter().all(|side| {
                slices_text.contains(&format!("\"{}\"", ip("1a", side)))
                    && !slices_text.contains(&format!("\"{}\"", ip("1b", side)))
            });
            if done || api_start.elapsed() > CONVERGE_AFTER_OUTAGE {
                break (done, slices_text);
            }
            // The EndpointSlice controller retries "informer cache is out of date" (its own
            // informer re-listing after the 410s) with exponential backoff, which can pass this
            // allowance (seen in a rehearsal: retries 44 s, then 81 s apart). An update of the
            // Service queues it at once; every 10 s without the slices, annotate it. This is the
            // controller's precondition, not the proxies' convergence measured below.
            let due = api_start.elapsed() >= NUDGE_EVERY * (nudges + 1);
            if due {
                nudges += 1;
                let note = format!("knat-e2e/nudge={nudges}");
                let args = [
                    "annotate",
                    "--overwrite",
                    "-n",
                    NS,
                    "service",
                    SERVICE,
                    &note,
                ];
                if let Err(e) = cp.kubectl(&args, None) {
                    eprintln!("e2e:   annotating the Service to requeue it failed: {e}");
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if nudges > 0 {
            eprintln!("e2e:   the Service was annotated {nudges} time(s) to requeue it");
        }
        assert!(
            api_ready,
            "the EndpointSlices did not follow the pods within {CONVERGE_AFTER_OUTAGE:?}: {slices_text}"
        );
        eprintln!(
            "e2e:   the EndpointSlices followed the pods {:.1?} after the change",
            api_start.elapsed()
        );
        revision = cp.compact_etcd().expect("compact etcd");
        for node in &nodes {
            let args = drop_rule("-D");
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.exec(node, "iptables-nft", &args)
                .expect("let the node through");
        }
        back = Instant::now();
        // Both sides are checked in the same loop, so each one's time is its own: both nodes
        // re-listed (no rule for the removed pod) and traffic reaches `1a`.
        let converged_side = |side: &Side| {
            let gone = ip("1b", side);
            let stale = side.nodes.iter().any(|n| {
                lab.exec(n, "iptables-nft-save", &[])
                    .map_or(true, |d| d.contains(&format!("{gone}:")))
            });
            let target = SocketAddr::new(side.vips[0], SERVICE_PORT);
            let got = lab.probe(CLIENT, target, Proto::Tcp);
            !stale
                && got.as_ref().ok().and_then(|r| r.pod())
                    == Some(format!("{}1a", side.pod_prefix).as_str())
        };
        let deadline = back + CONVERGE_AFTER_OUTAGE;
        let mut converged: Vec<Option<Duration>> = vec![None; SIDES.len()];
        while converged.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, side) in SIDES.iter().enumerate() {
                if converged[i].is_none() && converged_side(side) {
                    converged[i] = Some(back.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The assertions after the traffic has stopped say what is wrong.
        for (side, t) in SIDES.iter().zip(&converged) {
            match t {
                Some(t) => eprintln!(
                    "e2e:   [{}] converged {t:.1?} after the nodes could reach the API server again",
                    side.label
                ),
                None => eprintln!(
                    "e2e:   [{}] NOT converged {:.1?} after the nodes could reach the API server again",
                    side.label,
                    back.elapsed()
                ),
            }
        }
    });
    eprintln!("e2e:   etcd compacted at revision {revision}");
    assert_no_failures(c, &SIDES, "watch expiry (410 Gone) and re-list", &results);
    for side in SIDES {
        let target = SocketAddr::new(side.vips[0], SERVICE_PORT);
        let got = c.lab.probe(CLIENT, target, Proto::Tcp);
        let pod = got.as_ref().ok().and_then(|r| r.pod().map(str::to_string));
        assert_eq!(
            pod.as_deref(),
            Some(format!("{}1a", side.pod_prefix).as_str()),
            "[{}] after the re-list: {got:?}\n{}",
            side.label,
            c.context()
        );
        let gone = c
            .lab
            .scenario()
            .pod_ip(&format!("{}1b", side.pod_prefix), Family::V4)
            .expect("pod ip")
            .to_string();
        for node in side.nodes {
            let dump = c.lab.exec(node, "iptables-nft-save", &[]).expect("save");
            assert!(
                !dump.contains(&format!("{gone}:")),
                "[{}] {node} still has rules for the removed pod {gone}; the EndpointSlices: {}\n{}",
                side.label,
                serde_json::Value::Array(c.cp.endpoint_slices(NS, SERVICE).unwrap_or_default()),
                c.context()
            );
        }
    }
    let log = c.proxy_log("node-1");
    let after = &log[log_before.min(log.len())..];
    assert!(
        after.contains("too old") && after.contains("Expired"),
        "knat's watch did not expire (no `too old ...: Expired` in its log):\n{after}"
    );
    let expired = after
        .lines()
        .filter(|l| l.contains("too old") && l.contains("Expired"))
        .count();
    // A 410 re-lists at once instead of waiting the backoff grown during the cut-off (which
    // delayed the re-list by 30-60 s before knat::agent::watch_retry).
    let immediate = after
        .lines()
        .filter(|l| l.contains("re-listing at once"))
        .count();
    assert!(
        immediate > 0,
        "knat did not re-list at once after the 410 (no `re-listing at once` in its log):\n{after}"
    );
    eprintln!(
        "e2e:   knat on node-1 logged {expired} expired watch(es), {immediate} immediate re-list(s):"
    );
    for line in after.lines().filter(|l| {
        l.contains("Expired") || l.contains("re-listing at once") || l.contains("sync done")
    }) {
        eprintln!("e2e:     {}", line.chars().take(220).collect::<String>());
    }
}

#[test]
fn e2e_real_control_plane() {
    let Some(binaries) =
        prerequisites::control_plane("e2e", &[Backend::Nft], false, &["openssl", "curl"])
    else {
        return;
    };
    let started = Instant::now();
    let mut cluster = Cluster::start(binaries);
    let c = &mut cluster;

    step("proxies start: knat on node-1/node-2, kube-proxy on twin-1/twin-2");
    for side in SIDES {
        for node in side.nodes {
            c.start_proxy(side.proxy, node, node);
        }
    }
    c.wait_proxies_healthy(&["node-1", "node-2", "twin-1", "twin-2"]);

    step("kubectl apply: pods on node 1, a Local LoadBalancer Service, VIPs in its status");
    c.deploy("1a");
    c.deploy("1b");
    let applied = Instant::now();
    c.cp.apply(&service_manifest("Local"))
        .expect("apply service");
    let ingress: Vec<serde_json::Value> = SIDES
        .iter()
        .flat_map(|s| s.vips)
        .chain([LONE_VIP])
        .map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"}))
        .collect();
    c.cp.patch_status(
        "service",
        Some(NS),
        SERVICE,
        &serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}}),
    )
    .expect("write the VIPs into the Service status");
    let vip_own = |side: &Side| {
        (
            CLIENT.to_string(),
            SocketAddr::new(side.vips[0], SERVICE_PORT),
            side.nodes[0].to_string(),
        )
    };
    let vip_other = |side: &Side| {
        (
            CLIENT.to_string(),
            SocketAddr::new(side.vips[1], SERVICE_PORT),
            side.nodes[1].to_string(),
        )
    };
    c.expect(
        "VIP of node 1 reaches a local pod, client address preserved",
        vip_own,
        &[Outcome::Local(Source::Preserved)],
    );
    eprintln!(
        "e2e:   traffic flowed {:.1?} after kubectl apply (min sync period {MIN_SYNC})",
        applied.elapsed()
    );
    let slices = c.cp.endpoint_slices(NS, SERVICE).expect("slices");
    let endpoints: usize = slices
        .iter()
        .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(endpoints, 4, "the EndpointSlice controller made {slices:?}");
    c.expect(
        "VIP of node 2 (no local endpoint) drops",
        vip_other,
        &[Outcome::Dropped],
    );
    let node_port = c.node_port();
    c.expect(
        "NodePort on node 1 reaches a local pod, client preserved",
        |side| {
            (
                CLIENT.to_string(),
                SocketAddr::new(c.node_ip(side.nodes[0]), node_port),
                side.nodes[0].to_string(),
            )
        },
        &[Outcome::Local(Source::Preserved)],
    );
    c.compare_traces("local-two-pods");

    step("health-check node port: 200 with the count on node 1 only, then follows the pods");
    c.expect_health(0, 200, Some(2));
    c.expect_health(1, 503, Some(0));
    c.deploy("2a");
    c.remove("1b");
    c.expect_health(0, 200, Some(1));
    c.expect_health(1, 200, Some(1));
    c.expect(
        "VIP of node 2 now reaches its local pod",
        vip_other,
        &[Outcome::Local(Source::Preserved)],
    );

    step("a pod dialing the VIP keeps its own address");
    for target_index in [0, 1] {
        c.expect(
            &format!("client pod -> VIP {target_index}"),
            |side| {
                (
                    side.client_pod.to_string(),
                    SocketAddr::new(side.vips[target_index], SERVICE_PORT),
                    side.nodes[0].to_string(),
                )
            },
            &[
                Outcome::Local(Source::Preserved),
                Outcome::Remote(Source::Preserved),
            ],
        );
    }
    c.compare_traces("pods-on-both-nodes");

    step("scale to zero: REJECT; scale up again: traffic returns");
    c.remove("1a");
    c.remove("2a");
    c.expect("no endpoints: VIP refused", vip_own, &[Outcome::Refused]);
    c.compare_traces("no-endpoints");
    c.deploy("1a");
    c.expect(
        "scaled up: VIP of node 1 reaches its pod",
        vip_own,
        &[Outcome::Local(Source::Preserved)],
    );

    step("rolling replacement under traffic; terminating-but-serving keeps Local traffic");
    under_traffic(c, &SIDES, "rolling replacement 1a -> 1b", || {
        c.deploy("1b");
        c.expect_health(0, 200, Some(2));
        c.terminate("1a");
        c.expect_health(0, 200, Some(1));
        c.remove("1a");
        // The pod moves to node 2; the last pod on node 1 terminates but still serves.
        c.deploy("2a");
        c.expect_health(1, 200, Some(1));
        c.terminate("1b");
        c.expect_health(0, 503, Some(0));
    });
    c.expect(
        "terminating-but-serving pod still gets node 1's Local traffic",
        vip_own,
        &[Outcome::Local(Source::Preserved)],
    );
    c.compare_traces("terminating-serving");
    c.remove("1b");
    c.expect(
        "terminating pod gone: node 1 drops",
        vip_own,
        &[Outcome::Dropped],
    );

    step("externalTrafficPolicy Local -> Cluster -> Local");
    c.deploy("1a");
    c.expect_health(0, 200, Some(1));
    c.cp.apply(&service_manifest("Cluster"))
        .expect("flip to Cluster");
    c.expect_health(0, 0, None);
    c.expect(
        "Cluster: node 1's VIP is masqueraded",
        vip_own,
        &[
            Outcome::Local(Source::EntryNode),
            Outcome::Remote(Source::EntryNode),
        ],
    );
    c.compare_traces("cluster-policy");
    c.cp.apply(&service_manifest("Local"))
        .expect("flip back to Local");
    c.expect_health(0, 200, Some(1));
    c.expect(
        "Local again: client address preserved",
        vip_own,
        &[Outcome::Local(Source::Preserved)],
    );

    step("knat doctor against the live API server");
    c.doctor_checks();

    step("wrong node name: reported loudly");
    c.start_proxy(ProxyKind::Knat, LONE_NODE, "node-3-typo");
    c.wait("knat with a wrong name: /healthz 503", || {
        let (code, body) = c.http(LONE_NODE, "http://127.0.0.1:10256/healthz");
        (code == 503, format!("{code} {body}"))
    });
    c.wait("knat with a wrong name: knat_node_name_matches 0", || {
        let (code, body) = c.http(LONE_NODE, "http://127.0.0.1:10249/metrics");
        (
            body.lines().any(|l| l.trim() == "knat_node_name_matches 0"),
            format!(
                "{code}: {}",
                body.lines()
                    .filter(|l| l.contains("node_name"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        )
    });
    c.wait("knat with a wrong name: the log names the fix", || {
        let log = c.proxy_log(LONE_NODE);
        (
            log.contains("node-3-typo") && log.contains("--hostname-override"),
            log.lines().last().unwrap_or_default().to_string(),
        )
    });
    c.stop_proxy(LONE_NODE);

    step("knat restarted under continuous traffic");
    under_traffic(c, &[KNAT_SIDE], "knat restart on node-1", || {
        c.stop_proxy("node-1");
        std::thread::sleep(Duration::from_secs(1));
        c.start_proxy(ProxyKind::Knat, "node-1", "node-1");
        c.wait_proxies_healthy(&["node-1"]);
    });

    step("kube-apiserver stopped: traffic flows; changes after it returns are applied");
    c.cp.stop_apiserver();
    under_traffic(c, &SIDES, "API server down", || {
        std::thread::sleep(Duration::from_secs(3));
    });
    c.cp.start_apiserver().expect("restart kube-apiserver");
    let back = Instant::now();
    c.deploy("1b");
    c.remove("1a");
    for side in SIDES {
        let expected = format!("{}1b", side.pod_prefix);
        c.wait_within(
            &format!("[{}] change after API server restart", side.label),
            CONVERGE_AFTER_OUTAGE,
            || {
                let got = c.lab.probe(
                    CLIENT,
                    SocketAddr::new(side.vips[0], SERVICE_PORT),
                    Proto::Tcp,
                );
                let pod = got.as_ref().ok().and_then(|r| r.pod().map(str::to_string));
                (
                    pod.as_deref() == Some(expected.as_str()),
                    format!("{got:?}"),
                )
            },
        );
        eprintln!(
            "e2e: [{}] applied the change {:.1?} after kube-apiserver returned",
            side.label,
            back.elapsed()
        );
    }
    c.compare_traces("after-apiserver-restart");

    step("kube-apiserver restarted 10 times in a row under traffic");
    let mut restart_times = Vec::new();
    let results = measure(&c.lab, &SIDES, || {
        for _ in 0..10 {
            let t = Instant::now();
            c.cp.stop_apiserver();
            c.cp.start_apiserver().expect("restart kube-apiserver");
            restart_times.push(t.elapsed().as_secs_f64());
        }
    });
    eprintln!("e2e:   restarts took {restart_times:.1?} s (stop, start, /readyz)");
    assert_no_failures(c, &SIDES, "10 kube-apiserver restarts", &results);
    expect_expired_watches_relist(c);

    eprintln!("e2e: all steps passed in {:.1?}", started.elapsed());
    drop(cluster);
}
