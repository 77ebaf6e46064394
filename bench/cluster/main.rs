//! Cluster benchmark (issues 6 and 17): knat and upstream kube-proxy (iptables mode), side by
//! side, against one real kube-apiserver, on the same machine in the same run. Prints one
//! table with both systems, the restore floor and the ratios, and writes it into
//! `docs/performance.md` between the markers of the run's backend.
//!
//! Layout: a lab (`knat::lab`) with two node namespaces, `kp` (kube-proxy) and `kn` (knat),
//! each with one pod namespace (`ep`, `ek`); etcd + kube-apiserver (no controller manager: it
//! is stopped, every Service being selector-less) in the fabric namespace.
//! Every endpoint address of every Service lies in 10.128.0.0/10, which each node routes to its
//! own pod, where it is a local address served by a TCP listener on port 9000: so every Service
//! is really connectable, whatever order kube-proxy writes KUBE-SERVICES in (a Go map order,
//! new on every sync).
//!
//! The API client must run where the API server is reachable: the program re-runs itself as
//! `driver` inside the fabric namespace (`ip netns exec`), and as `helper-listen` /
//! `helper-connect` / `helper-replay` inside pod and node namespaces.
//!
//! Run with `scripts/bench.sh` (builds everything) or, as root,
//!     cargo run --release --example cluster-bench -- [--sizes 100,1000,10000]
//!         [--lb-sizes 100,10000|none] [--churn-sizes 10000] [--churn-secs 60]
//!         [--samples 200] [--changes 5] [--floor-runs 7] [--program-timeout 600]
//!         [--min-sync 1s] [--no-doc] [--backend nft|legacy] [--program-only SECS]
//!         [--upstream-bulk-zero] [--section NAME] [--api-state-cache DIR]
//!         [--create-via api|etcd]

mod api;
mod changes;
mod churn;
mod connect;
mod etcd_bulk;
mod payloads;
mod proxy;
mod report;
mod sys;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knat::lab::{Backend, Family, Lab, LabOptions, Scenario, preflight};
use knat_testbed::control_plane::{ControlPlane, ControlPlaneOptions, K8sBinaries};

use crate::proxy::{Launcher, Running, Side};
use crate::report::{Report, SizeResult};
use crate::sys::{BenchError, io_err};

const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Every endpoint address (initial and fresh) lies here; local in the pods.
const ENDPOINT_RANGE: &str = "10.128.0.0/10";
/// Default `--program-timeout`.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(600);

/// Command-line options.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Options {
    sizes: Vec<usize>,
    /// Sizes of the LoadBalancer set (NodePort and LB VIP rows); empty: none.
    lb_sizes: Vec<usize>,
    /// Sizes (of `sizes`) at which churn runs.
    churn_sizes: Vec<usize>,
    /// How long each proxy gets to program a size from a cold start before it is reported
    /// as not finished (and left out of that size's other rows).
    program_timeout: u64,
    /// Replays of knat's one-change payload for the restore floor.
    floor_runs: u32,
    churn_secs: u64,
    samples: u32,
    changes: u32,
    min_sync: String,
    doc: Option<PathBuf>,
    /// The iptables backend both proxies use.
    backend: sys::IptBackend,
    /// Only cold-start programming (each proxy given this many seconds) and knat's single
    /// changes; a short table instead of the full one (for backends where upstream cannot
    /// finish programming the largest size).
    program_only: Option<u64>,
    /// The arguments as given (printed above the table).
    args: String,
    /// iptables-nft only: kube-proxy's restores that declare more than 10,000 chains get the
    /// `-Z` knat's backend adds, so that upstream can program 10,000 services at all (it
    /// otherwise spends over 300 s in iptables-nft's chain bookkeeping); the full-programming
    /// ratio is then not against stock kube-proxy and the table says so.
    upstream_bulk_zero: bool,
    /// `--section NAME`: the table goes between the markers `BACKEND-NAME` instead of
    /// `BACKEND` (a run of other sizes that keeps the backend's main table).
    section: Option<String>,
    /// `--api-state-cache DIR`: the API's objects for the run's one size are kept in DIR (etcd's
    /// data directory, saved after a run that created them, restored before later runs).
    api_state_cache: Option<PathBuf>,
    /// `--create-via etcd`: ClusterIP Services after the first are written straight into etcd
    /// (see `etcd_bulk`); `api` (default): every object through kube-apiserver.
    create_via_etcd: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, BenchError> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut o = Options {
            sizes: vec![100, 1000, 10_000],
            lb_sizes: vec![100, 10_000],
            churn_sizes: vec![10_000],
            program_timeout: PROGRAM_TIMEOUT.as_secs(),
            floor_runs: 7,
            churn_secs: 60,
            samples: 200,
            changes: 5,
            min_sync: "1s".into(),
            doc: Some(repo.join("docs/performance.md")),
            backend: sys::IptBackend::Nft,
            program_only: None,
            upstream_bulk_zero: false,
            section: None,
            api_state_cache: None,
            create_via_etcd: false,
            args: args.join(" "),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| BenchError::Usage(format!("{name} needs a value")))
            };
            let bad =
                |name: &str, e: &dyn std::fmt::Display| BenchError::Usage(format!("{name}: {e}"));
            let list = |text: String, name: &str| -> Result<Vec<usize>, BenchError> {
                if text == "none" || text.is_empty() {
                    return Ok(Vec::new());
                }
                text.split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(name, &e))
            };
            match flag.as_str() {
                "--sizes" => o.sizes = list(value(flag)?, flag)?,
                "--lb-sizes" => o.lb_sizes = list(value(flag)?, flag)?,
                "--churn-sizes" => o.churn_sizes = list(value(flag)?, flag)?,
                "--program-timeout" => {
                    o.program_timeout = value(flag)?.parse().map_err(|e| bad(flag, &e))?;
                }
                "--floor-runs" => {
                    o.floor_runs = value(flag)?.parse().map_err(|e| bad(flag, &e))?;
                }
                "--churn-secs" => {
                    o.churn_secs = value(flag)?.parse().map_err(|e| bad(flag, &e))?;
                }
                "--samples" => o.samples = value(flag)?.parse().map_err(|e| bad(flag, &e))?,
                "--changes" => o.changes = value(flag)?.parse().map_err(|e| bad(flag, &e))?,
                "--min-sync" => o.min_sync = value(flag)?,
                "--doc" => o.doc = Some(PathBuf::from(value(flag)?)),
                "--no-doc" => o.doc = None,
                "--program-only" => {
                    let secs: u64 = value(flag)?.parse().map_err(|e| bad(flag, &e))?;
                    o.program_only = Some(secs);
                    o.doc = None;
                }
                "--upstream-bulk-zero" => o.upstream_bulk_zero = true,
                "--api-state-cache" => o.api_state_cache = Some(PathBuf::from(value(flag)?)),
                "--create-via" => {
                    o.create_via_etcd = match value(flag)?.as_str() {
                        "etcd" => true,
                        "api" => false,
                        other => return Err(bad(flag, &format!("{other:?} (api or etcd)"))),
                    }
                }
                "--section" => {
                    let name = value(flag)?;
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(bad(flag, &format!("{name:?} (letters, digits, - and _)")));
                    }
                    o.section = Some(name);
                }
                "--backend" => {
                    o.backend = match value(flag)?.as_str() {
                        "nft" => sys::IptBackend::Nft,
                        "legacy" => sys::IptBackend::Legacy,
                        other => return Err(bad(flag, &format!("{other:?} (nft or legacy)"))),
                    }
                }
                other => return Err(BenchError::Usage(format!("unknown argument {other:?}"))),
            }
        }
        for v in [&mut o.sizes, &mut o.lb_sizes, &mut o.churn_sizes] {
            v.sort_unstable();
            v.dedup();
        }
        if o.sizes.is_empty() || o.sizes.iter().any(|s| *s == 0 || *s > 50_000) {
            return Err(BenchError::Usage("--sizes: 1..=50000 each".into()));
        }
        if o.lb_sizes.iter().any(|s| *s == 0 || *s > api::MAX_LB) {
            return Err(BenchError::Usage(format!(
                "--lb-sizes: 1..={} each (NodePorts {})",
                api::MAX_LB,
                api::NODE_PORT_RANGE
            )));
        }
        if o.api_state_cache.is_some() && (o.sizes.len() != 1 || !o.lb_sizes.is_empty()) {
            return Err(BenchError::Usage(
                "--api-state-cache needs exactly one --sizes value and --lb-sizes none".into(),
            ));
        }
        if o.floor_runs == 0 {
            return Err(BenchError::Usage("--floor-runs: at least 1".into()));
        }
        if o.upstream_bulk_zero && o.backend != sys::IptBackend::Nft {
            return Err(BenchError::Usage(
                "--upstream-bulk-zero applies to --backend nft only".into(),
            ));
        }
        Ok(o)
    }
}

/// What the harness hands the driver.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Setup {
    options: Options,
    admin_kubeconfig: PathBuf,
    knat: PathBuf,
    k8s_bin: PathBuf,
    work: PathBuf,
    /// kube-proxy first, then knat.
    sides: Vec<Side>,
    /// Pod namespace per side (same order), where the listener runs.
    pod_namespaces: Vec<String>,
    /// Node IP per side (same order): the NodePorts' address.
    node_ips: Vec<String>,
    machine: String,
    versions: String,
    /// The API already holds the run's Services (restored from `--api-state-cache`).
    adopt: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("helper-listen") => sys::helper_listen(args.get(2).map_or("", String::as_str)),
        Some("helper-connect") => sys::helper_connect(
            args.get(2).map_or("", String::as_str),
            args.get(3).map_or("", String::as_str),
        ),
        Some("helper-replay") => sys::helper_replay(args.get(2..).unwrap_or_default()),
        Some("driver") => driver(Path::new(args.get(2).map_or("", String::as_str))),
        _ => Options::parse(args.get(1..).unwrap_or_default()).and_then(|o| harness(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn log(text: &str) {
    eprintln!("cluster-bench: {text}");
}

fn command_text(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine_description() -> String {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "{} CPUs ({cpu}), {mem} RAM, kernel {}, {}",
        command_text("nproc", &[]),
        command_text("uname", &["-r"]),
        command_text(
            &sys::IptBackend::current().binary("iptables"),
            &["--version"]
        ),
    )
}

/// The parent: builds the lab and the control plane, runs the driver inside the fabric
/// namespace, tears everything down.
fn harness(options: &Options) -> Result<(), BenchError> {
    options.backend.select();
    preflight(&[Backend::Nft], false)?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binaries = K8sBinaries::locate(repo, false)?;
    let me = sys::self_exe()?;
    let knat = match std::env::var_os("KNAT_BIN") {
        Some(p) => PathBuf::from(p),
        None => me
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("knat"))
            .ok_or_else(|| BenchError::Usage("cannot locate the knat binary".into()))?,
    };
    if !knat.is_file() {
        return Err(BenchError::Usage(format!(
            "{} missing: build it (cargo build --release) or set KNAT_BIN",
            knat.display()
        )));
    }
    let scenario = Scenario::new("bench")
        .node("kp")
        .node("kn")
        .pod("ep", "kp")
        .pod("ek", "kn");
    let t = Instant::now();
    let lab = Lab::build(scenario, LabOptions::new(&knat, Backend::Nft))?;
    let address = lab.scenario().fabric_gateway(Family::V4);
    // The NodePort range widened so that the LoadBalancer set's NodePorts fit (20000 + N).
    let node_port_range = format!("--service-node-port-range={}", api::NODE_PORT_RANGE);
    let state = api_state(options, &binaries);
    let seed = state.as_ref().filter(|p| p.is_dir());
    if let Some(seed) = seed {
        log(&format!(
            "restoring the API's objects from {}",
            seed.display()
        ));
    }
    let mut cp = ControlPlane::start_seeded(
        ControlPlaneOptions {
            binaries: binaries.clone(),
            namespace: lab.fabric_namespace(),
            address,
            extra_sans: Vec::new(),
            real_nodes: None,
        },
        knat_testbed::control_plane::SERVICE_CIDR,
        &[node_port_range.as_str()],
        seed.map(PathBuf::as_path),
    )?;
    // No controller has work here (selector-less Services, hand-written slices), but at
    // 50,000 Services kube-controller-manager's EndpointSlice mirroring alone spends minutes of
    // CPU on them (its queue still held 36,966 of 49,574 Services nine minutes after they were
    // written): it would load the machine under both proxies' measurements.
    cp.stop_controller_manager();
    log(&format!(
        "lab and control plane (etcd, kube-apiserver; no controller manager) ready in {:.1?}",
        t.elapsed()
    ));
    for file in ["serviceaccount.yaml", "rbac.yaml"] {
        let path = repo.join("daemonset").join(file);
        let yaml =
            std::fs::read_to_string(&path).map_err(io_err(format!("read {}", path.display())))?;
        cp.apply(&yaml)?;
    }
    let knat_kubeconfig =
        cp.write_kubeconfig("knat", "system:serviceaccount:kube-system:knat", &[])?;
    let kp_kubeconfig = cp.write_kubeconfig("kube-proxy", "system:kube-proxy", &[])?;
    let s = lab.scenario();
    let mut pod_namespaces = Vec::new();
    let mut node_ips = Vec::new();
    for (node, pod) in [("kp", "ep"), ("kn", "ek")] {
        let ip = s
            .node_ip(node, Family::V4)
            .ok_or_else(|| BenchError::Usage(node.into()))?;
        let cidr = s
            .pod_cidr(node, Family::V4)
            .ok_or_else(|| BenchError::Usage(node.into()))?;
        cp.register_node(node, ip, &cidr.to_string())?;
        node_ips.push(ip.to_string());
        let pod_ip = s
            .pod_ip(pod, Family::V4)
            .ok_or_else(|| BenchError::Usage(pod.into()))?;
        let node_ns = lab.namespace(node)?;
        let pod_ns = lab.namespace(pod)?;
        // The node routes the endpoint range to its pod (over its veth `vp1`); the pod treats
        // the whole range as local addresses.
        sys::netns_run(
            &node_ns,
            "ip",
            &[
                "route",
                "add",
                ENDPOINT_RANGE,
                "via",
                &pod_ip.to_string(),
                "dev",
                "vp1",
            ],
        )?;
        sys::netns_run(
            &pod_ns,
            "ip",
            &["route", "add", "local", ENDPOINT_RANGE, "dev", "lo"],
        )?;
        // The load-balancer VIPs are routed to the pod as well (inside the lab only): a SYN to
        // a VIP is DNATed in the node's nat OUTPUT; one that is not never leaves the lab.
        sys::netns_run(
            &node_ns,
            "ip",
            &[
                "route",
                "add",
                api::VIP_RANGE,
                "via",
                &pod_ip.to_string(),
                "dev",
                "vp1",
            ],
        )?;
        pod_namespaces.push(pod_ns);
    }
    let work = cp.dir().join("bench");
    std::fs::create_dir_all(&work).map_err(io_err(format!("create {}", work.display())))?;
    let sides = vec![
        Side {
            label: "kube-proxy".into(),
            node: "kp".into(),
            namespace: lab.namespace("kp")?,
            kubeconfig: kp_kubeconfig,
            lock_file: work.join("xtables-kp.lock"),
        },
        Side {
            label: "knat".into(),
            node: "kn".into(),
            namespace: lab.namespace("kn")?,
            kubeconfig: knat_kubeconfig,
            lock_file: work.join("xtables-kn.lock"),
        },
    ];
    let kube_proxy_version = command_text(
        &binaries.path("kube-proxy").display().to_string(),
        &["--version"],
    );
    let commit = command_text(
        "git",
        &[
            "-C",
            &repo.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !command_text(
        "git",
        &[
            "-C",
            &repo.display().to_string(),
            "status",
            "--porcelain",
            "--",
            "src",
        ],
    )
    .is_empty();
    let setup = Setup {
        options: options.clone(),
        admin_kubeconfig: cp.admin_kubeconfig().to_path_buf(),
        knat,
        k8s_bin: binaries.dir().to_path_buf(),
        work: work.clone(),
        sides,
        pod_namespaces,
        node_ips,
        machine: machine_description(),
        adopt: seed.is_some(),
        versions: format!(
            "{kube_proxy_version} (built from source by scripts/build-k8s.sh); knat {commit}{}",
            if dirty {
                " with uncommitted changes in src/"
            } else {
                ""
            }
        ),
    };
    let setup_path = work.join("setup.json");
    let text =
        serde_json::to_string_pretty(&setup).map_err(|e| BenchError::Usage(e.to_string()))?;
    std::fs::write(&setup_path, text).map_err(io_err(format!("write {}", setup_path.display())))?;
    let status = Command::new("ip")
        .args(["netns", "exec", cp.namespace()])
        .arg(&me)
        .arg("driver")
        .arg(&setup_path)
        .status()
        .map_err(io_err("run the driver"))?;
    if let Some(state) = state
        .as_ref()
        .filter(|_| status.success() && seed.is_none())
    {
        let t = Instant::now();
        let bytes = cp.save_etcd_state(state)?;
        log(&format!(
            "saved the API's objects ({:.0} MiB of etcd data) as {} in {:.1?}",
            bytes as f64 / 1048576.0,
            state.display(),
            t.elapsed()
        ));
    }
    drop(cp);
    lab.teardown()?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Command {
            command: "driver".into(),
            detail: status.to_string(),
        })
    }
}

/// Where `--api-state-cache` keeps the objects of this run's one size: per Kubernetes build
/// and size (`DIR/<k8s build>-clusterip-<size>`).
fn api_state(options: &Options, binaries: &K8sBinaries) -> Option<PathBuf> {
    let dir = options.api_state_cache.as_ref()?;
    let size = options.sizes.first()?;
    let build = binaries
        .dir()
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "k8s".into());
    Some(dir.join(format!("{build}-clusterip-{size}")))
}

/// The driver: runs inside the fabric namespace (where the API server is reachable).
fn driver(setup_path: &Path) -> Result<(), BenchError> {
    let text = std::fs::read_to_string(setup_path)
        .map_err(io_err(format!("read {}", setup_path.display())))?;
    let setup: Setup =
        serde_json::from_str(&text).map_err(|e| BenchError::Usage(format!("setup: {e}")))?;
    setup.options.backend.select();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_err("start the async runtime"))?;
    let client = runtime
        .block_on(knat::agent::watch::client(Some(
            setup.admin_kubeconfig.clone(),
        )))
        .map_err(|e| BenchError::Api {
            what: "client".into(),
            detail: e.to_string(),
        })?;
    let mut objects = api::Objects::new(client.clone(), api::Kind::ClusterIp);
    if setup.options.create_via_etcd {
        objects = objects.create_via_etcd();
    }
    let objects = Arc::new(objects);
    runtime.block_on(objects.create_namespace())?;
    if let (true, Some(&size)) = (setup.adopt, setup.options.sizes.first()) {
        let took = runtime.block_on(objects.adopt(size))?;
        log(&format!(
            "{size} Services already in the API (restored state), read in {took:.1?}"
        ));
    }
    let me = sys::self_exe()?;
    // The listeners behind every endpoint address.
    let mut listeners = Vec::new();
    for pod_ns in &setup.pod_namespaces {
        listeners.push(knat_testbed::control_plane::Daemon::spawn(
            "listener",
            pod_ns,
            &me,
            &[
                "helper-listen".to_string(),
                format!("0.0.0.0:{}", api::TARGET_PORT),
            ],
            &setup.work.join(format!("{pod_ns}-listener.log")),
        )?);
    }
    let launcher = Launcher {
        knat: setup.knat.clone(),
        binaries: K8sBinaries::at(&setup.k8s_bin)?,
        work: setup.work.clone(),
        cluster_cidr: CLUSTER_CIDR.into(),
        min_sync: setup.options.min_sync.clone(),
        upstream_bulk_zero: setup.options.upstream_bulk_zero,
    };
    let ctx = Ctx {
        runtime: &runtime,
        launcher: &launcher,
        setup: &setup,
        me: &me,
    };
    let outcome = match setup.options.program_only {
        Some(secs) => program_only(&ctx, &objects, Duration::from_secs(secs)),
        None => full_run(&ctx, &objects, client),
    };
    for mut l in listeners {
        l.stop();
    }
    outcome
}

/// What every phase needs.
struct Ctx<'a> {
    runtime: &'a tokio::runtime::Runtime,
    launcher: &'a Launcher,
    setup: &'a Setup,
    me: &'a Path,
}

impl Ctx<'_> {
    fn program_timeout(&self) -> Duration {
        Duration::from_secs(self.setup.options.program_timeout)
    }
}

/// The whole table: the LoadBalancer set's sizes first (then deleted), then the ClusterIP
/// sizes.
fn full_run(
    ctx: &Ctx<'_>,
    objects: &Arc<api::Objects>,
    client: kube::Client,
) -> Result<(), BenchError> {
    let setup = ctx.setup;
    let mut report = Report::new(&setup.options.min_sync, setup.options.churn_secs);
    report.upstream_bulk_zero = setup.options.upstream_bulk_zero;
    report.backend = Some(setup.options.backend);
    report.timeout = ctx.program_timeout();
    report.args = setup.options.args.clone();
    let run_start = Instant::now();
    if !setup.options.lb_sizes.is_empty() {
        let lbs = api::Objects::new(client, api::Kind::LoadBalancer);
        for &size in &setup.options.lb_sizes {
            let t = Instant::now();
            report.lb.push(lb_size(ctx, &lbs, size)?);
            report
                .phases
                .push((format!("LoadBalancer {size}"), t.elapsed()));
        }
        let took = ctx.runtime.block_on(lbs.delete_all())?;
        log(&format!("LoadBalancer set deleted in {took:.1?}"));
        report
            .phases
            .push(("LoadBalancer set deleted".into(), took));
    }
    for &size in &setup.options.sizes {
        let t = Instant::now();
        report.sizes.push(cluster_size(ctx, objects, size)?);
        report
            .phases
            .push((format!("ClusterIP {size}"), t.elapsed()));
    }
    report.machine = setup.machine.clone();
    report.versions = setup.versions.clone();
    report.duration = run_start.elapsed();
    let table = report.render();
    println!("{table}");
    if let Some(doc) = &setup.options.doc {
        let key = match &setup.options.section {
            Some(name) => format!("{}-{name}", setup.options.backend.name()),
            None => setup.options.backend.name().to_string(),
        };
        report::write_doc(doc, &key, &table)?;
        log(&format!("wrote {}", doc.display()));
    }
    Ok(())
}

/// Cold starts, one proxy at a time (kube-proxy first), each timed to `sentinel` (a chain of
/// the last Service: restores are atomic). A proxy that does not get there within the
/// timeout is stopped and left out (`None`) of the size's other measurements.
fn program_all(
    ctx: &Ctx<'_>,
    run: &str,
    sentinel: &str,
) -> Result<(Vec<Option<Running>>, Vec<report::Programmed>), BenchError> {
    let mut running = Vec::new();
    let mut programmed = Vec::new();
    for side in &ctx.setup.sides {
        proxy::flush(side)?;
        let mut r = ctx.launcher.start(side, run)?;
        match r.wait_chain(sentinel, ctx.program_timeout()) {
            Ok(took) => {
                // The wrapper logs a call after iptables-restore returns, a moment after the
                // rules became visible.
                let logged = Instant::now();
                while r.restores().is_empty() && logged.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let calls = r.restores();
                let bytes: u64 = calls.iter().map(|c| c.bytes).sum();
                let failed = calls.iter().filter(|c| c.exit != 0).count();
                log(&format!(
                    "{}: {run} programmed {took:.2?} after start ({bytes} restore bytes, {} calls, {failed} failed)",
                    side.label,
                    calls.len()
                ));
                programmed.push(report::Programmed::Done(took, bytes));
                running.push(Some(r));
            }
            Err(BenchError::Timeout { .. }) => {
                log(&format!(
                    "{}: {run} not programmed within {:.0?}: stopped, left out of this size",
                    side.label,
                    ctx.program_timeout()
                ));
                r.stop()?;
                programmed.push(report::Programmed::NotFinished);
                running.push(None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((running, programmed))
}

fn stop_all(running: Vec<Option<Running>>) -> Result<(), BenchError> {
    for r in running.into_iter().flatten() {
        r.stop()?;
    }
    Ok(())
}

fn hwm(running: &[Option<Running>]) -> Result<Vec<Option<u64>>, BenchError> {
    running
        .iter()
        .map(|r| r.as_ref().map(|r| r.stats().map(|s| s.hwm)).transpose())
        .collect()
}

/// The last (and first) Service in kube-proxy's order for `entry`, or, where kube-proxy is
/// not running, the last one created.
fn first_last(
    ctx: &Ctx<'_>,
    running: &[Option<Running>],
    kind: api::Kind,
    entry: connect::Entry,
    size: usize,
) -> Result<(usize, usize, bool), BenchError> {
    if running.first().is_some_and(Option::is_some) {
        let order = connect::upstream_order(&ctx.setup.sides[0], kind, entry)?;
        if let (Some(f), Some(l)) = (order.first(), order.last()) {
            return Ok((*f, *l, true));
        }
        return Err(BenchError::Command {
            command: format!("iptables -t nat -S ({entry:?})"),
            detail: "no bench service in kube-proxy's chain".into(),
        });
    }
    Ok((0, size - 1, false))
}

/// First-connection latency to `target(side index)` from every running proxy's node.
fn measure_connects(
    ctx: &Ctx<'_>,
    running: &[Option<Running>],
    which: &str,
    svc: usize,
    size: usize,
    target: &dyn Fn(usize) -> String,
    out: &mut Vec<report::Connect>,
) -> Result<(), BenchError> {
    for (i, side) in ctx.setup.sides.iter().enumerate() {
        if running.get(i).is_none_or(Option::is_none) {
            continue;
        }
        let lat = connect::connect_latency(
            ctx.me,
            &side.namespace,
            &target(i),
            ctx.setup.options.samples,
        )?;
        log(&format!(
            "{}: {which} ({svc}) at {size}: p50 {:.0} us p99 {:.0} us ({} failed)",
            side.label, lat.p50, lat.p99, lat.failed
        ));
        out.push(report::Connect {
            which: which.to_string(),
            side: i,
            svc,
            latency: lat,
        });
    }
    Ok(())
}

/// One size of the LoadBalancer set: cold starts, then the first connection to the last
/// NodePort (node IP:nodePort) and the last LB VIP of kube-proxy's order, on each node.
fn lb_size(
    ctx: &Ctx<'_>,
    objects: &api::Objects,
    size: usize,
) -> Result<report::LbResult, BenchError> {
    let took = ctx.runtime.block_on(objects.grow_to(size))?;
    log(&format!(
        "{size} LoadBalancer services x 10 endpoints in the API ({took:.1?} to create)"
    ));
    let sentinel = objects.sep_chain(
        size - 1,
        api::initial_endpoint(size - 1, api::ENDPOINTS - 1),
    );
    let (running, programmed) = program_all(ctx, &format!("lb-{size}"), &sentinel)?;
    std::thread::sleep(Duration::from_secs(3));
    let mut result = report::LbResult {
        size,
        programmed,
        connects: Vec::new(),
        upstream_order: running.first().is_some_and(Option::is_some),
    };
    let kind = api::Kind::LoadBalancer;
    let (_, np_last, _) = first_last(ctx, &running, kind, connect::Entry::NodePort, size)?;
    let node_ips = &ctx.setup.node_ips;
    measure_connects(
        ctx,
        &running,
        "last NodePort",
        np_last,
        size,
        &|i| {
            format!(
                "{}:{}",
                node_ips.get(i).map_or("", String::as_str),
                api::node_port(np_last)
            )
        },
        &mut result.connects,
    )?;
    let (_, lb_last, _) = first_last(ctx, &running, kind, connect::Entry::LoadBalancerIp, size)?;
    measure_connects(
        ctx,
        &running,
        "last LB VIP",
        lb_last,
        size,
        &|_| format!("{}:{}", api::vip(lb_last), api::SERVICE_PORT),
        &mut result.connects,
    )?;
    stop_all(running)?;
    Ok(result)
}

/// One size of the ClusterIP set: cold starts, memory, first connections, one-endpoint
/// changes on each proxy alone, the restore floor, churn (at `--churn-sizes`), peak RSS.
fn cluster_size(
    ctx: &Ctx<'_>,
    objects: &Arc<api::Objects>,
    size: usize,
) -> Result<SizeResult, BenchError> {
    let setup = ctx.setup;
    let took = ctx.runtime.block_on(objects.grow_to(size))?;
    log(&format!(
        "{size} services x 10 endpoints in the API ({took:.1?} to create)"
    ));
    let mut result = SizeResult::new(size);
    let sentinel = objects.sep_chain(
        size - 1,
        api::initial_endpoint(size - 1, api::ENDPOINTS - 1),
    );
    let (mut running, programmed) = program_all(ctx, &format!("{size}"), &sentinel)?;
    result.programming = programmed;
    std::thread::sleep(Duration::from_secs(3));
    result.rss_steady = running
        .iter()
        .map(|r| r.as_ref().map(|r| r.stats().map(|s| s.rss)).transpose())
        .collect::<Result<_, _>>()?;
    // First connections before any change: kube-proxy rewrites KUBE-SERVICES (in a new
    // order) on every sync.
    let kind = api::Kind::ClusterIp;
    let (first, last, known) = first_last(ctx, &running, kind, connect::Entry::ClusterIp, size)?;
    result.upstream_order = known;
    for (which, svc) in [("first", first), ("last", last)] {
        measure_connects(
            ctx,
            &running,
            which,
            svc,
            size,
            &|_| format!("{}:{}", kind.cluster_ip(svc), api::SERVICE_PORT),
            &mut result.connects,
        )?;
    }
    if known {
        let (f2, l2, _) = first_last(ctx, &running, kind, connect::Entry::ClusterIp, size)?;
        result.order_stable = f2 == first && l2 == last;
    } else {
        result.order_stable = true;
    }
    result.changes = changes::single_changes(
        ctx.runtime,
        objects,
        &mut running,
        setup.options.changes,
        size,
    )?;
    if let Some(k) = changes::knat_index(&setup.sides)
        && let (Some(side), Some(last_change)) = (
            setup.sides.get(k),
            result.changes.get(k).and_then(|c| c.last()),
        )
    {
        result.floor = Some(changes::floor(
            ctx.me,
            side,
            &running,
            last_change,
            setup.options.floor_runs,
            &setup.work,
            size,
        )?);
    }
    if setup.options.churn_sizes.contains(&size) {
        let run = churn::churn(
            ctx.runtime,
            objects,
            &running,
            setup.options.churn_secs,
            size,
        )?;
        result.churn = Some(run);
        result.rss_end = running
            .iter()
            .map(|r| r.as_ref().map(|r| r.stats().map(|s| s.rss)).transpose())
            .collect::<Result<_, _>>()?;
    }
    result.hwm = hwm(&running)?;
    stop_all(running)?;
    Ok(result)
}

/// `--program-only`: for each size, a cold start of each proxy (kube-proxy first) with a time
/// limit, then, for knat, single endpoint changes. Prints a short table; a proxy that did not
/// finish is reported as "> limit".
fn program_only(
    ctx: &Ctx<'_>,
    objects: &Arc<api::Objects>,
    limit: Duration,
) -> Result<(), BenchError> {
    let setup = ctx.setup;
    let mut rows = Vec::new();
    for &size in &setup.options.sizes {
        let took = ctx.runtime.block_on(objects.grow_to(size))?;
        log(&format!(
            "{size} services x 10 endpoints in the API ({took:.1?} to create)"
        ));
        let sentinel = objects.sep_chain(
            size - 1,
            api::initial_endpoint(size - 1, api::ENDPOINTS - 1),
        );
        let mut times = Vec::new();
        let mut running = Vec::new();
        for side in &setup.sides {
            proxy::flush(side)?;
            let mut r = ctx.launcher.start(side, &format!("only-{size}"))?;
            let outcome = r.wait_chain(&sentinel, limit);
            let text = match &outcome {
                Ok(t) => format!("{:.2}", t.as_secs_f64()),
                Err(BenchError::Timeout { .. }) => {
                    format!("> {:.0} (not finished)", limit.as_secs_f64())
                }
                Err(e) => return Err(BenchError::Usage(format!("{}: {e}", side.label))),
            };
            log(&format!(
                "{}: {size} services programmed: {text} s",
                side.label
            ));
            let finished = outcome.is_ok();
            times.push((text, outcome.ok()));
            if finished && side.kind() == knat_testbed::control_plane::ProxyKind::Knat {
                running.push(Some(r));
            } else {
                r.stop()?;
                running.push(None);
            }
        }
        let changes = changes::single_changes(
            ctx.runtime,
            objects,
            &mut running,
            setup.options.changes,
            size,
        )?;
        let mut ms: Vec<f64> = changes
            .iter()
            .flatten()
            .map(|c| c.latency.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let change = ms
            .get(ms.len() / 2)
            .map_or("-".to_string(), |m| format!("{m:.0}"));
        stop_all(running)?;
        let ratio = match (&times[0].1, times.get(1).and_then(|t| t.1)) {
            (Some(up), Some(kn)) => format!("{:.2}x", up.as_secs_f64() / kn.as_secs_f64()),
            (None, Some(kn)) => format!("> {:.0}x", limit.as_secs_f64() / kn.as_secs_f64()),
            _ => "-".into(),
        };
        rows.push(format!(
            "| {size} | {} | {} | {ratio} | {change} |",
            times[0].0,
            times.get(1).map_or("-", |t| t.0.as_str()),
        ));
    }
    println!("{}", setup.machine);
    println!("Versions: {}", setup.versions);
    println!(
        "Backend: {}; `--iptables-min-sync-period={}` for both.",
        setup.options.backend.name(),
        setup.options.min_sync
    );
    println!();
    println!(
        "| services x 10 ep | kube-proxy full programming (s) | knat full programming (s) | kube-proxy / knat | knat one endpoint change (ms, median of {}) |",
        setup.options.changes
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}
