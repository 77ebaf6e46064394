//! Cluster benchmark (issue 6): knat and upstream kube-proxy (iptables mode), side by side,
//! against one real kube-apiserver, on the same machine in the same run. Prints one table
//! with both systems and the ratios and writes it into `docs/performance.md`.
//!
//! Layout: a lab (`knat::lab`) with two node namespaces, `kp` (kube-proxy) and `kn` (knat),
//! each with one pod namespace (`ep`, `ek`); etcd + kube-apiserver (+ the lab's
//! kube-controller-manager, idle here: every Service is selector-less) in the fabric namespace.
//! Every endpoint address of every Service lies in 10.128.0.0/10, which each node routes to its
//! own pod, where it is a local address served by a TCP listener on port 9000: so every Service
//! is really connectable, whatever order kube-proxy writes KUBE-SERVICES in (a Go map order,
//! new on every sync).
//!
//! The API client must run where the API server is reachable: the program re-runs itself as
//! `driver` inside the fabric namespace (`ip netns exec`), and as `helper-listen` /
//! `helper-connect` inside pod and node namespaces.
//!
//! Run with `scripts/bench.sh` (builds everything) or, as root,
//!     cargo run --release --example cluster-bench -- [--sizes 100,1000,10000]
//!         [--churn-secs 60] [--samples 200] [--changes 5] [--min-sync 1s] [--no-doc]
//!         [--backend nft|legacy] [--program-only SECS] [--upstream-bulk-zero]

mod api;
mod payloads;
mod proxy;
mod report;
mod sys;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use knat::lab::{Backend, Family, Lab, LabOptions, Scenario, preflight};
use knat_testbed::control_plane::{ControlPlane, ControlPlaneOptions, K8sBinaries};

use crate::proxy::{Launcher, Running, Side};
use crate::report::{Latency, Report, SizeResult};
use crate::sys::{BenchError, io_err};

const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Every endpoint address (initial and fresh) lies here; local in the pods.
const ENDPOINT_RANGE: &str = "10.128.0.0/10";
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(600);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Churn rate: changes per second, and one sampled change in this many.
const CHURN_RATE: u64 = 50;
const SAMPLE_EVERY: u64 = 10;

/// Command-line options.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Options {
    sizes: Vec<usize>,
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
    /// iptables-nft only: kube-proxy's restores that declare more than 10,000 chains get the
    /// `-Z` knat's backend adds, so that upstream can program 10,000 services at all (it
    /// otherwise spends over 300 s in iptables-nft's chain bookkeeping); the full-programming
    /// ratio is then not against stock kube-proxy and the table says so.
    upstream_bulk_zero: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, BenchError> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut o = Options {
            sizes: vec![100, 1000, 10_000],
            churn_secs: 60,
            samples: 200,
            changes: 5,
            min_sync: "1s".into(),
            doc: Some(repo.join("docs/performance.md")),
            backend: sys::IptBackend::Nft,
            program_only: None,
            upstream_bulk_zero: false,
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
            match flag.as_str() {
                "--sizes" => {
                    o.sizes = value("--sizes")?
                        .split(',')
                        .map(|s| s.trim().parse::<usize>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| bad("--sizes", &e))?;
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
        o.sizes.sort_unstable();
        o.sizes.dedup();
        if o.sizes.is_empty() || o.sizes.iter().any(|s| *s == 0 || *s > 50_000) {
            return Err(BenchError::Usage("--sizes: 1..=50000 each".into()));
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
    machine: String,
    versions: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("helper-listen") => sys::helper_listen(args.get(2).map_or("", String::as_str)),
        Some("helper-connect") => sys::helper_connect(
            args.get(2).map_or("", String::as_str),
            args.get(3).map_or("", String::as_str),
        ),
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
    let cp = ControlPlane::start(ControlPlaneOptions {
        binaries: binaries.clone(),
        namespace: lab.fabric_namespace(),
        address,
        extra_sans: Vec::new(),
        real_nodes: None,
    })?;
    log(&format!(
        "lab and control plane ready in {:.1?}",
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
    for (node, pod) in [("kp", "ep"), ("kn", "ek")] {
        let ip = s
            .node_ip(node, Family::V4)
            .ok_or_else(|| BenchError::Usage(node.into()))?;
        let cidr = s
            .pod_cidr(node, Family::V4)
            .ok_or_else(|| BenchError::Usage(node.into()))?;
        cp.register_node(node, ip, &cidr.to_string())?;
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
        pod_namespaces.push(pod_ns);
    }
    let sides = vec![
        Side {
            label: "kube-proxy".into(),
            node: "kp".into(),
            namespace: lab.namespace("kp")?,
            kubeconfig: kp_kubeconfig,
        },
        Side {
            label: "knat".into(),
            node: "kn".into(),
            namespace: lab.namespace("kn")?,
            kubeconfig: knat_kubeconfig,
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
    let work = cp.dir().join("bench");
    std::fs::create_dir_all(&work).map_err(io_err(format!("create {}", work.display())))?;
    let setup = Setup {
        options: options.clone(),
        admin_kubeconfig: cp.admin_kubeconfig().to_path_buf(),
        knat,
        k8s_bin: binaries.dir().to_path_buf(),
        work: work.clone(),
        sides,
        pod_namespaces,
        machine: machine_description(),
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
    let objects = Arc::new(api::Objects::new(client));
    runtime.block_on(objects.create_namespace())?;
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
    if let Some(secs) = setup.options.program_only {
        let outcome = program_only(
            &runtime,
            &objects,
            &launcher,
            &setup,
            Duration::from_secs(secs),
        );
        for mut l in listeners {
            l.stop();
        }
        return outcome;
    }
    let mut report = Report::new(&setup.options.min_sync, setup.options.churn_secs);
    report.upstream_bulk_zero = setup.options.upstream_bulk_zero;
    let largest = setup.options.sizes.iter().copied().max().unwrap_or(0);
    let run_start = Instant::now();
    for &size in &setup.options.sizes {
        let took = runtime.block_on(objects.grow_to(size))?;
        log(&format!(
            "{size} services x 10 endpoints in the API ({took:.1?} to create)"
        ));
        let mut result = SizeResult::new(size);
        // Cold starts, one proxy at a time (kube-proxy first), each timed to the sentinel:
        // the SEP chain of the last Service's last endpoint (restores are atomic).
        let sentinel = api::sep_chain(
            size - 1,
            api::initial_endpoint(size - 1, api::ENDPOINTS - 1),
        );
        let mut running = Vec::new();
        for side in &setup.sides {
            proxy::flush(&side.namespace)?;
            let mut r = launcher.start(side, &format!("{size}"))?;
            let took = r.wait_chain(&sentinel, PROGRAM_TIMEOUT)?;
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
                "{}: {size} services programmed {took:.2?} after start ({bytes} restore bytes, {} calls, {failed} failed)",
                side.label,
                calls.len()
            ));
            result.programming.push((took, bytes));
            running.push(r);
        }
        std::thread::sleep(Duration::from_secs(3));
        for r in &running {
            result.rss_steady.push(r.stats()?.rss);
        }
        // First-connection latency to the first and last Service of kube-proxy's list.
        let order = upstream_order(&setup.sides[0].namespace)?;
        let (first, last) = match (order.first(), order.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => {
                return Err(BenchError::Command {
                    command: "iptables -t nat -S KUBE-SERVICES".into(),
                    detail: "no bench service in kube-proxy's KUBE-SERVICES".into(),
                });
            }
        };
        for (which, svc) in [("first", first), ("last", last)] {
            for side in &setup.sides {
                let lat = connect_latency(&me, &side.namespace, svc, setup.options.samples)?;
                log(&format!(
                    "{}: {which} service (svc-{svc}) at {size}: p50 {:.0} us p99 {:.0} us ({} failed)",
                    side.label, lat.p50, lat.p99, lat.failed
                ));
                result
                    .latency
                    .push((which.to_string(), side.label.clone(), svc, lat));
            }
        }
        let order_after = upstream_order(&setup.sides[0].namespace)?;
        result.order_stable =
            order_after.last() == Some(&last) && order_after.first() == Some(&first);
        if size == largest {
            single_changes(&runtime, &objects, &mut running, &setup, size, &mut result)?;
            churn(&runtime, &objects, &running, &setup, size, &mut result)?;
            for r in &running {
                let st = r.stats()?;
                result.rss_end.push(st.rss);
                result.hwm.push(st.hwm);
            }
        } else {
            for r in &running {
                result.hwm.push(r.stats()?.hwm);
            }
        }
        for r in running {
            r.stop()?;
        }
        report.sizes.push(result);
    }
    for mut l in listeners {
        l.stop();
    }
    report.machine = setup.machine.clone();
    report.versions = setup.versions.clone();
    report.duration = run_start.elapsed();
    let table = report.render();
    println!("{table}");
    if let Some(doc) = &setup.options.doc {
        report::write_doc(doc, &table)?;
        log(&format!("wrote {}", doc.display()));
    }
    Ok(())
}

/// The bench Services in the order of kube-proxy's nat KUBE-SERVICES.
fn upstream_order(namespace: &str) -> Result<Vec<usize>, BenchError> {
    let iptables = sys::IptBackend::current().binary("iptables");
    let out = sys::netns_run(namespace, &iptables, &["-t", "nat", "-S", "KUBE-SERVICES"])?;
    let prefix = format!("\"{}/svc-", api::NS);
    Ok(out
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            let (n, tail) = rest.split_once(':')?;
            tail.starts_with("http cluster IP")
                .then(|| n.parse().ok())?
        })
        .collect())
}

fn connect_latency(
    me: &Path,
    namespace: &str,
    svc: usize,
    samples: u32,
) -> Result<Latency, BenchError> {
    let target = format!("{}:{}", api::cluster_ip(svc), api::SERVICE_PORT);
    let me = me.display().to_string();
    // Warm-up (neighbour caches, page cache), then the measured samples.
    sys::netns_run(namespace, &me, &["helper-connect", &target, "20"])?;
    let out = sys::netns_run(
        namespace,
        &me,
        &["helper-connect", &target, &samples.to_string()],
    )?;
    let mut values: Vec<f64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let failed = out.lines().filter(|l| l.trim() == "fail").count();
    values.sort_by(f64::total_cmp);
    Ok(Latency::from_sorted(&values, failed))
}

/// `--program-only`: for each size, a cold start of each proxy (kube-proxy first) with a time
/// limit, then, for knat, single endpoint changes. Prints a short table; a proxy that did not
/// finish is reported as "> limit".
fn program_only(
    runtime: &tokio::runtime::Runtime,
    objects: &Arc<api::Objects>,
    launcher: &Launcher,
    setup: &Setup,
    limit: Duration,
) -> Result<(), BenchError> {
    let mut rows = Vec::new();
    for &size in &setup.options.sizes {
        let took = runtime.block_on(objects.grow_to(size))?;
        log(&format!(
            "{size} services x 10 endpoints in the API ({took:.1?} to create)"
        ));
        let sentinel = api::sep_chain(
            size - 1,
            api::initial_endpoint(size - 1, api::ENDPOINTS - 1),
        );
        let mut times = Vec::new();
        let mut knat = None;
        for side in &setup.sides {
            proxy::flush(&side.namespace)?;
            let mut r = launcher.start(side, &format!("only-{size}"))?;
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
            times.push((text, outcome.ok()));
            if side.kind() == knat_testbed::control_plane::ProxyKind::Knat {
                knat = Some(r);
            } else {
                r.stop()?;
            }
        }
        let mut change = String::from("-");
        if let Some(r) = knat {
            let mut running = vec![r];
            let mut result = SizeResult::new(size);
            single_changes(runtime, objects, &mut running, setup, size, &mut result)?;
            let mut ms: Vec<f64> = result
                .changes
                .iter()
                .filter_map(|row| row.first().map(|c| c.0.as_secs_f64() * 1000.0))
                .collect();
            ms.sort_by(f64::total_cmp);
            if let Some(m) = ms.get(ms.len() / 2) {
                change = format!("{m:.0}");
            }
            for r in running {
                r.stop()?;
            }
        }
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

/// One endpoint change at a time: API write -> SEP chain in each node's kernel, and the bytes
/// each proxy handed to iptables-restore for it.
fn single_changes(
    runtime: &tokio::runtime::Runtime,
    objects: &api::Objects,
    running: &mut [Running],
    setup: &Setup,
    size: usize,
    result: &mut SizeResult,
) -> Result<(), BenchError> {
    for n in 0..setup.options.changes {
        // Well past min-sync-period since the last sync of either proxy.
        std::thread::sleep(Duration::from_secs(3));
        let svc = (size / 2 + n as usize * 37) % size;
        let wall = sys::epoch_now();
        let start = Instant::now();
        let ip = runtime.block_on(objects.change_endpoint(svc, 0))?;
        let chain = api::sep_chain(svc, ip);
        let mut seen: Vec<Option<Duration>> = vec![None; running.len()];
        while seen.iter().any(Option::is_none) && start.elapsed() < CHANGE_TIMEOUT {
            for (r, slot) in running.iter_mut().zip(seen.iter_mut()) {
                if slot.is_none() {
                    *slot = r
                        .payloads
                        .programmed(&chain, wall)
                        .map(|end| Duration::from_secs_f64((end - wall).max(0.0)));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen: Vec<Result<Duration, BenchError>> = running
            .iter()
            .zip(seen)
            .map(|(r, s)| {
                s.ok_or_else(|| BenchError::Timeout {
                    what: format!("{chain} from {}", r.side.label),
                    waited: CHANGE_TIMEOUT,
                })
            })
            .collect();
        // Let the wrapper log the calls (it writes after iptables-restore returns).
        std::thread::sleep(Duration::from_millis(1500));
        let mut row = Vec::new();
        for (r, s) in running.iter().zip(seen) {
            let latency = s?;
            let calls: Vec<_> = r.restores().into_iter().filter(|c| c.end >= wall).collect();
            let bytes: u64 = calls.iter().map(|c| c.bytes).sum();
            log(&format!(
                "{}: endpoint change {n} (svc-{svc}): {latency:.0?}, {bytes} bytes in {} restore(s)",
                r.side.label,
                calls.len()
            ));
            row.push((latency, bytes, calls.len()));
        }
        result.changes.push(row);
    }
    Ok(())
}

/// A sampled churn change waiting to show up.
struct Pending {
    chain: String,
    /// Just before the API write, seconds since the epoch.
    written: f64,
}

/// 50 endpoint changes per second; every 10th is sampled: API write -> SEP chain visible.
fn churn(
    runtime: &tokio::runtime::Runtime,
    objects: &Arc<api::Objects>,
    running: &[Running],
    setup: &Setup,
    size: usize,
    result: &mut SizeResult,
) -> Result<(), BenchError> {
    let secs = setup.options.churn_secs;
    if secs == 0 {
        return Ok(());
    }
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<_> = running
        .iter()
        .map(Running::stats)
        .collect::<Result<_, _>>()?;
    let total = secs * CHURN_RATE;
    let mut senders = Vec::new();
    let mut pollers = Vec::new();
    let deadline_after = Duration::from_secs(secs + 60);
    let begin = Instant::now();
    for r in running {
        let (tx, rx) = mpsc::channel::<Pending>();
        senders.push(tx);
        let index = payloads::PayloadIndex::new(r.restore_log.clone());
        pollers.push(std::thread::spawn(move || {
            poll_pending(index, &rx, begin + deadline_after)
        }));
    }
    let errors = runtime.block_on(async {
        let mut ticker = tokio::time::interval(Duration::from_millis(1000 / CHURN_RATE));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..total {
            ticker.tick().await;
            let svc = ((k as usize) * 7919 + 13) % size;
            let slot = (k as usize) % api::ENDPOINTS;
            let senders = if k % SAMPLE_EVERY == 0 {
                senders.clone()
            } else {
                Vec::new()
            };
            let objects = Arc::clone(objects);
            tasks.spawn(async move {
                let written = sys::epoch_now();
                let ip = objects.change_endpoint(svc, slot).await?;
                let chain = api::sep_chain(svc, ip);
                for tx in &senders {
                    let _ = tx.send(Pending {
                        chain: chain.clone(),
                        written,
                    });
                }
                Ok::<(), BenchError>(())
            });
        }
        let mut errors = 0u32;
        while let Some(done) = tasks.join_next().await {
            if !matches!(done, Ok(Ok(()))) {
                errors += 1;
            }
        }
        errors
    });
    let issued = begin.elapsed();
    drop(senders);
    let mut lat = Vec::new();
    for handle in pollers {
        lat.push(handle.join().unwrap_or_default());
    }
    let after: Vec<_> = running
        .iter()
        .map(Running::stats)
        .collect::<Result<_, _>>()?;
    let window = begin.elapsed();
    log(&format!(
        "churn: {total} changes issued in {issued:.1?} ({errors} failed); measured over {window:.1?}"
    ));
    for (i, r) in running.iter().enumerate() {
        let (samples, missing) = lat.get(i).cloned().unwrap_or_default();
        let mut sorted = samples;
        sorted.sort_by(f64::total_cmp);
        let cpu_self = after[i].cpu_self - before[i].cpu_self;
        let cpu_children = after[i].cpu_children - before[i].cpu_children;
        let latency = Latency::from_sorted(&sorted, missing);
        log(&format!(
            "{}: churn latency p50 {:.0} ms p99 {:.0} ms ({} samples, {missing} not seen); CPU {cpu_self:.1} s + children {cpu_children:.1} s",
            r.side.label,
            latency.p50,
            latency.p99,
            sorted.len()
        ));
        result.churn.push(report::Churn {
            latency,
            cpu_self,
            cpu_children,
        });
    }
    result.churn_issued = issued;
    result.churn_window = window;
    result.churn_errors = errors;
    Ok(())
}

/// Polls a node for the pending chains until the channel closes and nothing is pending (or
/// the deadline passes); returns the latencies in milliseconds and how many were never seen.
fn poll_pending(
    mut index: payloads::PayloadIndex,
    rx: &mpsc::Receiver<Pending>,
    deadline: Instant,
) -> (Vec<f64>, usize) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut done = Vec::new();
    let mut closed = false;
    loop {
        loop {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if (closed && pending.is_empty()) || Instant::now() > deadline {
            break;
        }
        index.refresh();
        pending.retain(|p| match index.programmed(&p.chain, p.written) {
            Some(end) => {
                done.push((end - p.written).max(0.0) * 1000.0);
                false
            }
            None => true,
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    (done, pending.len())
}
