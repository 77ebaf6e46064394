//! knat's Kubernetes Events through a real API server (etcd, kube-apiserver,
//! kube-controller-manager from `scripts/build-k8s.sh`, in the lab's fabric namespace), with
//! knat running as the DaemonSet's ServiceAccount under the DaemonSet's own RBAC:
//!
//! 1. `FailedToStartServiceHealthcheck`: the health-check node port of a Local LoadBalancer
//!    Service is already taken in the node's network namespace before the Service appears. One
//!    Warning on the Service (kube-proxy's note), listed by `kubectl describe service`; later
//!    syncs retry and fail again without a second Event; the port freed, the server listens at
//!    the next sync; the Service deleted and created again on another taken port (the port is
//!    immutable), a new Event for that port.
//! 2. `SyncProxyRulesFailed`: a rule someone else added jumps to an endpoint chain of knat's
//!    (`iptables -t nat -I OUTPUT -j KUBE-SEP-...`); when the endpoint goes, every restore
//!    that deletes the chain fails. After three failed syncs, one Warning on the Node (listed by
//!    `kubectl describe node`); the foreign rule removed, the next sync succeeds and a Normal
//!    `SyncProxyRulesRecovered` follows.
//!
//! Without root, the binaries or the tools it prints `*** SKIPPED ***`; with `CI=true` it builds
//! the binaries and fails instead of skipping. Everything runs in the lab's namespaces; the
//! processes are ended by PID (and die with the test through `PR_SET_PDEATHSIG`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use knat::lab::{Backend, Family, Lab, LabOptions, Scenario, preflight};
use knat_testbed::control_plane::{
    ControlPlane, ControlPlaneOptions, Daemon, K8sBinaries, PodObject, ProxyKind, ProxyOptions,
};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");
const NS: &str = "events";
const NODE: &str = "node-1";
const POD: &str = "web-1";
const HC_PORT: u16 = 32100;
const HC_PORT_MOVED: u16 = 32102;
const LIMIT: Duration = Duration::from_secs(30);

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

fn skip(why: &str) -> Option<K8sBinaries> {
    if ci() {
        panic!("events: cannot run under CI=true: {why}");
    }
    eprintln!("\n*** SKIPPED events (real control plane): {why} ***\n");
    None
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn prerequisites() -> Option<K8sBinaries> {
    if let Err(e) = preflight(&[Backend::Nft], false) {
        return skip(&e.to_string());
    }
    let missing: Vec<&str> = ["openssl", "curl"]
        .into_iter()
        .filter(|p| !on_path(p))
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

// Field order is drop order: processes, then the control plane, then the namespaces.
struct Bed {
    knat: Option<Daemon>,
    blockers: Vec<Daemon>,
    cp: ControlPlane,
    lab: Lab,
    logs: PathBuf,
}

impl Bed {
    fn start(binaries: K8sBinaries) -> Bed {
        let scenario = Scenario::new(NS).node(NODE).pod(POD, NODE).client("ext");
        let lab = Lab::build(scenario, LabOptions::new(Path::new(KNAT), Backend::Nft))
            .expect("build the lab namespaces");
        let address = lab.scenario().fabric_gateway(Family::V4);
        let cp = ControlPlane::start(ControlPlaneOptions {
            binaries,
            namespace: lab.fabric_namespace(),
            address,
            extra_sans: Vec::new(),
            real_nodes: None,
        })
        .unwrap_or_else(|e| panic!("start the control plane: {e}"));
        let logs = cp.dir().join("proxies");
        std::fs::create_dir_all(&logs).expect("log dir");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["serviceaccount.yaml", "rbac.yaml"] {
            let yaml = std::fs::read_to_string(repo.join("daemonset").join(file))
                .expect("read daemonset manifest");
            cp.apply(&yaml).expect("apply daemonset RBAC");
        }
        cp.kubectl(&["create", "namespace", NS], None)
            .expect("create namespace");
        let s = lab.scenario();
        let ip = s.node_ip(NODE, Family::V4).expect("node ip");
        let cidr = s.pod_cidr(NODE, Family::V4).expect("pod cidr");
        cp.register_node(NODE, ip, &cidr.to_string())
            .expect("register node");
        Bed {
            knat: None,
            blockers: Vec::new(),
            cp,
            lab,
            logs,
        }
    }

    fn node_namespace(&self) -> String {
        self.lab.namespace(NODE).expect("node namespace")
    }

    /// Something else listening on TCP `port` on every address of the node.
    fn block(&mut self, port: u16) {
        let log = self.logs.join(format!("blocker-{port}.log"));
        let args = vec![
            "lab-echo".to_string(),
            "--name".to_string(),
            format!("blocker-{port}"),
            "--listen".to_string(),
            format!("0.0.0.0:{port}"),
        ];
        let daemon = Daemon::spawn(
            "blocker",
            &self.node_namespace(),
            Path::new(KNAT),
            &args,
            &log,
        )
        .expect("start the port blocker");
        self.blockers.push(daemon);
        self.wait(&format!("port {port} taken"), || {
            let listening = self
                .lab
                .exec(NODE, "ss", &["-Htln", &format!("sport = :{port}")])
                .unwrap_or_default();
            (!listening.trim().is_empty(), format!("ss: {listening:?}"))
        });
    }

    fn unblock_all(&mut self) {
        for mut b in self.blockers.drain(..) {
            b.stop();
        }
    }

    fn start_knat(&mut self) {
        let kubeconfig = self
            .cp
            .write_kubeconfig("knat", "system:serviceaccount:kube-system:knat", &[])
            .expect("knat kubeconfig");
        let options = ProxyOptions {
            kind: ProxyKind::Knat,
            node_name: NODE.to_string(),
            kubeconfig,
            cluster_cidr: "10.244.0.0/16".to_string(),
            min_sync_period: "1s".to_string(),
            extra: Vec::new(),
        };
        let log = self.logs.join("knat.log");
        let daemon = options
            .spawn(
                &self.node_namespace(),
                Path::new(KNAT),
                self.cp.binaries(),
                &log,
            )
            .expect("start knat");
        self.knat = Some(daemon);
        self.wait("knat /healthz 200", || {
            let (code, body) = self.http("http://127.0.0.1:10256/healthz");
            (code == 200, format!("{code} {body}"))
        });
    }

    fn knat_log(&self) -> String {
        std::fs::read_to_string(self.logs.join("knat.log")).unwrap_or_default()
    }

    /// `curl` inside the node; (status, body), status 0 without an HTTP answer.
    fn http(&self, url: &str) -> (u16, String) {
        let out = self
            .lab
            .exec(
                NODE,
                "curl",
                &["-s", "--max-time", "2", "-w", "\n%{http_code}", url],
            )
            .unwrap_or_else(|_| "\n000".to_string());
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "000"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Core/v1 Events in `namespace` with this reason (the API server's view of
    /// events.k8s.io Events).
    fn events(&self, namespace: &str, reason: &str) -> Vec<serde_json::Value> {
        let selector = format!("reason={reason}");
        let out = self
            .cp
            .kubectl(
                &[
                    "get",
                    "events",
                    "-n",
                    namespace,
                    "--field-selector",
                    &selector,
                    "-o",
                    "json",
                ],
                None,
            )
            .unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    fn wait_events(&self, namespace: &str, reason: &str, n: usize) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        self.wait(&format!("{n} {reason} Event(s) in {namespace}"), || {
            found = self.events(namespace, reason);
            (found.len() >= n, format!("{found:?}"))
        });
        found
    }

    fn wait(&self, what: &str, mut check: impl FnMut() -> (bool, String)) -> Duration {
        let start = Instant::now();
        loop {
            let (ok, detail) = check();
            if ok {
                return start.elapsed();
            }
            if start.elapsed() > LIMIT {
                let objects = self
                    .cp
                    .kubectl(&["get", "services,endpointslices", "-n", NS], None)
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "events: {what}: not reached after {LIMIT:?}; last: {detail}\n--- objects ---\n{objects}\n--- knat log ---\n{}",
                    tail(&self.knat_log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A change that makes knat sync (a ClusterIP Service without endpoints).
    fn nudge(&self, name: &str) {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
             spec:\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n"
        );
        self.cp.apply(&yaml).expect("apply a nudge Service");
    }

    fn pod(&self) -> PodObject<'static> {
        let s = self.lab.scenario();
        let ip: IpAddr = s.pod_ip(POD, Family::V4).expect("pod ip");
        let host_ip = s.node_ip(NODE, Family::V4).expect("node ip");
        PodObject {
            namespace: NS,
            name: POD,
            node: NODE,
            labels: vec![("app", "web")],
            ip,
            host_ip,
            port: 8080,
        }
    }

    fn iptables(&self, args: &[&str]) -> String {
        self.lab
            .exec(NODE, "iptables-nft", args)
            .unwrap_or_else(|e| panic!("iptables-nft {args:?}: {e}"))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn lb_service(hc_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {NS}\n\
         spec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {hc_port}\n\
         \x20 selector:\n    app: web\n  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n    nodePort: 32101\n"
    )
}

fn str_of<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_default()
}

#[test]
fn events_through_the_real_api_server() {
    let Some(binaries) = prerequisites() else {
        return;
    };
    let started = Instant::now();
    let mut bed = Bed::start(binaries);

    eprintln!("events: == health-check node port taken before the Service appears");
    bed.block(HC_PORT);
    bed.start_knat();
    bed.cp
        .apply(&lb_service(HC_PORT))
        .expect("apply Service web");
    let uid = bed
        .cp
        .get_json("service", NS, "web")
        .map(|s| str_of(&s, &["metadata", "uid"]).to_string())
        .expect("get Service web");
    let t = Instant::now();
    let found = bed.wait_events(NS, "FailedToStartServiceHealthcheck", 1);
    eprintln!(
        "events: FailedToStartServiceHealthcheck after {:.1?}",
        t.elapsed()
    );
    let ev = &found[0];
    assert_eq!(str_of(ev, &["type"]), "Warning", "{ev}");
    assert_eq!(str_of(ev, &["involvedObject", "kind"]), "Service", "{ev}");
    assert_eq!(str_of(ev, &["involvedObject", "name"]), "web", "{ev}");
    assert_eq!(str_of(ev, &["involvedObject", "uid"]), uid, "{ev}");
    assert_eq!(str_of(ev, &["reportingComponent"]), "knat", "{ev}");
    assert_eq!(str_of(ev, &["action"]), "Listen", "{ev}");
    let message = str_of(ev, &["message"]);
    let expected = format!(
        "node {NODE} failed to start healthcheck \"{NS}/web\" on port {HC_PORT}: cannot listen on 0.0.0.0:{HC_PORT}: "
    );
    assert!(message.starts_with(&expected), "{message}");
    assert!(message.contains("in use"), "{message}");
    let describe = bed
        .cp
        .kubectl(&["describe", "service", "web", "-n", NS], None)
        .expect("describe service");
    assert!(
        describe.contains("FailedToStartServiceHealthcheck"),
        "kubectl describe service lists the Event:\n{describe}"
    );

    // More syncs retry and fail again; no second Event, no series.
    for nudge in ["nudge-a", "nudge-b"] {
        let attempts = || {
            bed.knat_log()
                .matches("FailedToStartServiceHealthcheck;")
                .count()
        };
        let before = attempts();
        bed.nudge(nudge);
        bed.wait(
            &format!("another failed attempt to listen after {nudge}"),
            || {
                let n = attempts();
                (n > before, format!("{n} attempts logged"))
            },
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let again = bed.events(NS, "FailedToStartServiceHealthcheck");
    assert_eq!(again.len(), 1, "one Event while it fails: {again:?}");
    assert!(
        again[0]["series"].is_null() && again[0]["count"].as_u64().unwrap_or(1) <= 1,
        "not repeated: {}",
        again[0]
    );

    // Freed: the next sync listens (no endpoints: 503).
    bed.unblock_all();
    bed.nudge("nudge-c");
    bed.wait(
        "health-check server listening after the port is freed",
        || {
            let (code, body) = bed.http(&format!("http://127.0.0.1:{HC_PORT}/"));
            (
                code == 503 && body.contains("\"localEndpoints\": 0"),
                format!("{code} {body}"),
            )
        },
    );
    // The port is immutable: the Service deleted and created again on another taken port
    // fails again, and that is a new Event.
    bed.cp
        .kubectl(&["delete", "service", "web", "-n", NS], None)
        .expect("delete Service web");
    bed.block(HC_PORT_MOVED);
    bed.cp
        .apply(&lb_service(HC_PORT_MOVED))
        .expect("create Service web again");
    let found = bed.wait_events(NS, "FailedToStartServiceHealthcheck", 2);
    let moved = format!("on port {HC_PORT_MOVED}:");
    assert!(
        found
            .iter()
            .any(|e| str_of(e, &["message"]).contains(&moved)),
        "{found:?}"
    );
    bed.unblock_all();

    eprintln!("events: == restores failing: a foreign rule jumps to knat's endpoint chain");
    bed.cp.create_pod(&bed.pod(), true).expect("create pod");
    let mut sep = String::new();
    bed.wait("an endpoint chain for web-1", || {
        let save = bed.lab.iptables_save(NODE, Family::V4).unwrap_or_default();
        let pod_ip = bed.pod().ip.to_string();
        sep = save
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SEP-") && l.contains(&pod_ip))
            .filter_map(|l| l.split_whitespace().nth(1))
            .next()
            .unwrap_or_default()
            .to_string();
        (
            !sep.is_empty(),
            save.lines()
                .filter(|l| l.contains("SEP"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    });
    bed.iptables(&[
        "-t",
        "nat",
        "-I",
        "OUTPUT",
        "-d",
        "192.0.2.1/32",
        "-j",
        &sep,
    ]);
    let t = Instant::now();
    bed.cp.remove_pod(NS, POD).expect("remove pod");
    let found = bed.wait_events("default", "SyncProxyRulesFailed", 1);
    eprintln!(
        "events: SyncProxyRulesFailed {:.1?} after the endpoint went",
        t.elapsed()
    );
    let ev = &found[0];
    assert_eq!(str_of(ev, &["type"]), "Warning", "{ev}");
    assert_eq!(str_of(ev, &["involvedObject", "kind"]), "Node", "{ev}");
    assert_eq!(str_of(ev, &["involvedObject", "name"]), NODE, "{ev}");
    assert_eq!(str_of(ev, &["action"]), "SyncProxyRules", "{ev}");
    let message = str_of(ev, &["message"]);
    assert!(
        message.starts_with("3 consecutive syncs of the proxy rules failed"),
        "{message}"
    );
    assert!(message.contains("last error:"), "{message}");
    let failures = bed.knat_log().matches("sync failed; retrying").count();
    assert!(failures >= 3, "{failures} failed syncs logged");
    let describe = bed
        .cp
        .kubectl(&["describe", "node", NODE], None)
        .expect("describe node");
    assert!(
        describe.contains("SyncProxyRulesFailed"),
        "kubectl describe node lists the Event:\n{describe}"
    );

    bed.iptables(&[
        "-t",
        "nat",
        "-D",
        "OUTPUT",
        "-d",
        "192.0.2.1/32",
        "-j",
        &sep,
    ]);
    let t = Instant::now();
    let found = bed.wait_events("default", "SyncProxyRulesRecovered", 1);
    eprintln!(
        "events: SyncProxyRulesRecovered {:.1?} after the foreign rule went",
        t.elapsed()
    );
    assert_eq!(str_of(&found[0], &["type"]), "Normal", "{}", found[0]);
    assert!(
        str_of(&found[0], &["message"]).starts_with("proxy rules synced again after failing for"),
        "{}",
        found[0]
    );
    let save = bed.lab.iptables_save(NODE, Family::V4).unwrap_or_default();
    assert!(!save.contains(&sep), "the stale chain is gone:\n{save}");
    assert_eq!(
        bed.events("default", "SyncProxyRulesFailed").len(),
        1,
        "one Warning for one run of failures"
    );
    if let Some(mut knat) = bed.knat.take() {
        knat.stop();
    }
    eprintln!("events: all steps passed in {:.1?}", started.elapsed());
}
