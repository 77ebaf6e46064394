//! Upstream's own e2e suite (`e2e.test` from `k8s.io/kubernetes/test/e2e`, the tier's release)
//! against the real-node tier, once per proxy: the cluster is brought up fresh, the suite's
//! images are imported into every node under the exact references `e2e.test --list-images`
//! names (`integration/upstream-e2e/image-map.sh`), CoreDNS runs as kube-dns, the proxy runs as
//! the DaemonSet, and `e2e.test` runs in the fabric namespace with a JSON report that is read
//! back here into one result per spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{ClusterError, NodeCluster};
use crate::images::Images;
use crate::proxies::{self, Proxy};

/// Runner errors.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A file or process operation failed. Not retryable.
    #[error("{0}")]
    Io(String),
    /// The JSON report could not be read. Not retryable.
    #[error("cannot read the ginkgo report {path}: {detail}")]
    Report { path: String, detail: String },
}

/// One spec's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecResult {
    /// `passed`, `failed`, `skipped`, `pending`, `panicked`, `timedout`, `interrupted`, ...
    pub state: String,
    pub run_time: Duration,
    /// The first line of the failure message, if it failed.
    pub failure: Option<String>,
}

/// The spec's full name: container texts and the leaf text, as ginkgo prints them.
fn spec_name(spec: &serde_json::Value) -> Option<String> {
    let mut parts: Vec<String> = spec
        .get("ContainerHierarchyTexts")?
        .as_array()?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    parts.push(spec.get("LeafNodeText")?.as_str()?.to_string());
    Some(parts.join(" "))
}

/// The `It` specs of a ginkgo v2 JSON report, by name.
pub fn parse_report(text: &str) -> Result<BTreeMap<String, SpecResult>, String> {
    let suites: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for suite in suites
        .as_array()
        .ok_or("the report is not a list of suites")?
    {
        let Some(specs) = suite.get("SpecReports").and_then(|s| s.as_array()) else {
            continue;
        };
        for spec in specs {
            if spec.get("LeafNodeType").and_then(|t| t.as_str()) != Some("It") {
                continue;
            }
            let Some(name) = spec_name(spec) else {
                continue;
            };
            let state = spec
                .get("State")
                .and_then(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string();
            let nanos = spec.get("RunTime").and_then(|t| t.as_u64()).unwrap_or(0);
            let failure = spec
                .get("Failure")
                .and_then(|f| f.get("Message"))
                .and_then(|m| m.as_str())
                .and_then(|m| m.lines().find(|l| !l.trim().is_empty()))
                .map(|l| l.trim().chars().take(200).collect());
            out.insert(
                name,
                SpecResult {
                    state,
                    run_time: Duration::from_nanos(nanos),
                    failure,
                },
            );
        }
    }
    Ok(out)
}

/// How to run the suite.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// `e2e.test`.
    pub e2e_test: PathBuf,
    /// The `kubectl` the suite runs (`kubectl exec` for most probes).
    pub kubectl: PathBuf,
    /// `ginkgo` (for parallel processes); `None` runs `e2e.test` alone, serially.
    pub ginkgo: Option<PathBuf>,
    pub procs: usize,
    pub focus: String,
    pub skip: String,
    /// Where reports and logs go.
    pub report_dir: PathBuf,
    pub timeout: Duration,
}

/// What one proxy's run produced.
#[derive(Debug)]
pub struct ProxyRun {
    pub proxy: Proxy,
    pub results: BTreeMap<String, SpecResult>,
    pub wall: Duration,
    pub exit: String,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunnerError {
    let context = context.into();
    move |e| RunnerError::Io(format!("{context}: {e}"))
}

/// Imports the suite's images into every node under the references the suite names.
pub fn import_suite_images(
    cluster: &NodeCluster,
    repo: &Path,
    images_dir: &Path,
    list: &Path,
) -> Result<usize, RunnerError> {
    let output = Command::new("bash")
        .arg(repo.join("integration/upstream-e2e/image-map.sh"))
        .arg(images_dir)
        .arg(list)
        .stderr(Stdio::inherit())
        .output()
        .map_err(io("run image-map.sh"))?;
    if !output.status.success() {
        return Err(RunnerError::Io(format!(
            "image-map.sh failed: {}",
            output.status
        )));
    }
    let pairs: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let (a, r) = l.split_once(' ')?;
            Some((a.trim().to_string(), r.trim().to_string()))
        })
        .collect();
    for node in cluster.nodes() {
        let mut imported = std::collections::BTreeSet::new();
        for (archive, reference) in &pairs {
            if imported.insert(archive.clone()) {
                node.import_image(Path::new(archive))
                    .map_err(|e| RunnerError::Cluster(e.into()))?;
            }
            let ref_file = PathBuf::from(archive).with_extension("ref");
            let local = std::fs::read_to_string(&ref_file)
                .map_err(io(format!("read {}", ref_file.display())))?;
            node.ctr(&["images", "tag", "--force", local.trim(), reference])
                .map_err(|e| RunnerError::Cluster(e.into()))?;
        }
    }
    Ok(pairs.len())
}

/// Deploys CoreDNS as kube-dns (`integration/upstream-e2e/coredns.yaml`; its image must be
/// imported) and waits until it is Ready.
pub fn deploy_dns(cluster: &NodeCluster, repo: &Path) -> Result<(), RunnerError> {
    let path = repo.join("integration/upstream-e2e/coredns.yaml");
    let text = std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
    cluster.kubectl(&["apply", "-f", "-"], Some(&text))?;
    cluster.kubectl(
        &[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deploy/coredns",
            "--timeout=180s",
        ],
        None,
    )?;
    Ok(())
}

/// Runs the suite against `cluster` with `proxy` already deployed.
pub fn run_suite(
    cluster: &NodeCluster,
    proxy: Proxy,
    options: &SuiteOptions,
) -> Result<ProxyRun, RunnerError> {
    let name = proxy.daemonset();
    std::fs::create_dir_all(&options.report_dir).map_err(io("create the report directory"))?;
    let report = options.report_dir.join(format!("{name}.json"));
    let _ = std::fs::remove_file(&report);
    let kubeconfig = cluster
        .control_plane()?
        .admin_kubeconfig()
        .display()
        .to_string();
    let suite_args = vec![
        "--provider=local".to_string(),
        format!("--kubeconfig={kubeconfig}"),
        "--num-nodes=2".to_string(),
        format!("--kubectl-path={}", options.kubectl.display()),
        format!("--report-dir={}", options.report_dir.join(name).display()),
        "--e2e-verify-service-account=false".to_string(),
        "--dump-logs-on-failure=false".to_string(),
    ];
    let ginkgo_args = vec![
        format!("--focus={}", options.focus),
        format!("--skip={}", options.skip),
        format!("--json-report={}", report.display()),
        format!("--timeout={}s", options.timeout.as_secs()),
        "--no-color".to_string(),
    ];
    let netns = cluster.netns("fabric");
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &netns]);
    match &options.ginkgo {
        Some(ginkgo) => {
            command
                .arg(ginkgo)
                .arg(format!("--procs={}", options.procs))
                .args(&ginkgo_args)
                .arg(&options.e2e_test)
                .arg("--")
                .args(&suite_args);
        }
        None => {
            command
                .arg(&options.e2e_test)
                .args(ginkgo_args.iter().map(|a| format!("--ginkgo.{}", &a[2..])))
                .args(&suite_args);
        }
    }
    let log = options.report_dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
    let err = out.try_clone().map_err(io("log"))?;
    let start = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(io("run e2e.test"))?;
    let wall = start.elapsed();
    let text = std::fs::read_to_string(&report).map_err(|e| RunnerError::Report {
        path: report.display().to_string(),
        detail: format!("{e} (suite exit {status}; log {})", log.display()),
    })?;
    let results = parse_report(&text).map_err(|detail| RunnerError::Report {
        path: report.display().to_string(),
        detail,
    })?;
    Ok(ProxyRun {
        proxy,
        results,
        wall,
        exit: status.to_string(),
    })
}

/// Brings a cluster up for `proxy`, runs the suite, tears it down.
pub fn run_for(
    proxy: Proxy,
    repo: &Path,
    binaries: crate::control_plane::K8sBinaries,
    images: &Images,
    suite_images: (&Path, &Path),
    options: &SuiteOptions,
) -> Result<ProxyRun, RunnerError> {
    let requests = [
        crate::cluster::NodeRequest {
            name: "node-1".into(),
            hostname: "host-of-node-1".into(),
        },
        crate::cluster::NodeRequest {
            name: "node-2".into(),
            hostname: "host-of-node-2".into(),
        },
    ];
    let cluster = NodeCluster::start(binaries, &requests, &images.all())?;
    let (images_dir, list) = suite_images;
    let n = import_suite_images(&cluster, repo, images_dir, list)?;
    for node in cluster.nodes() {
        node.import_image(&images_dir.join("e2e-coredns.tar"))
            .map_err(|e| RunnerError::Cluster(e.into()))?;
    }
    eprintln!("upstream-e2e: {n} image references imported into each node");
    let ready = proxies::deploy(&cluster, proxy, repo, images)?;
    eprintln!("upstream-e2e: {} Ready in {ready:.1?}", proxy.daemonset());
    deploy_dns(&cluster, repo)?;
    eprintln!(
        "upstream-e2e: CoreDNS Ready; running e2e.test with {}",
        proxy.daemonset()
    );
    run_suite(&cluster, proxy, options)
}

/// The comparison table (markdown): one row per spec, both proxies' results and times.
pub fn table(runs: &[ProxyRun]) -> String {
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.results.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = String::from(
        "| test | kube-proxy | knat | time (kube-proxy / knat) |\n|---|---|---|---|\n",
    );
    let find = |proxy: Proxy, name: &str| {
        runs.iter()
            .find(|r| r.proxy == proxy)
            .and_then(|r| r.results.get(name))
    };
    for name in names {
        let kp = find(Proxy::KubeProxy, name);
        let kn = find(Proxy::Knat, name);
        let state =
            |r: Option<&SpecResult>| r.map(|r| r.state.clone()).unwrap_or_else(|| "-".into());
        let time = |r: Option<&SpecResult>| {
            r.map(|r| format!("{:.0} s", r.run_time.as_secs_f64()))
                .unwrap_or_else(|| "-".into())
        };
        if state(kp) == "skipped" && state(kn) == "skipped" {
            continue;
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} |\n",
            name.replace('|', "\\|"),
            state(kp),
            state(kn),
            time(kp),
            time(kn)
        ));
    }
    out
}

/// What the comparison is asked to run.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub repo: PathBuf,
    /// `scripts/build-e2e.sh --print`: e2e.test, ginkgo, images.txt.
    pub e2e_bin: PathBuf,
    pub focus: String,
    pub skip: String,
    pub procs: usize,
    pub proxies: Vec<Proxy>,
    pub timeout: Duration,
    /// Reports, logs and `table.md`.
    pub out: PathBuf,
}

/// Builds the images, runs the suite once per proxy (a fresh cluster each), and writes
/// `out/table.md` (a summary line per proxy, then the table). Returns the runs.
pub fn compare(c: &Comparison) -> Result<Vec<ProxyRun>, RunnerError> {
    std::fs::create_dir_all(&c.out).map_err(io("create the output directory"))?;
    let out = c
        .out
        .canonicalize()
        .map_err(io("find the output directory"))?;
    let binaries = crate::control_plane::K8sBinaries::locate(&c.repo, false)
        .map_err(|e| RunnerError::Cluster(e.into()))?;
    let image_dir = c.repo.join("target/images");
    let built =
        crate::images::build(&c.repo, &image_dir).map_err(|e| RunnerError::Io(e.to_string()))?;
    let status = Command::new("bash")
        .arg(c.repo.join("integration/images/build.sh"))
        .arg(&image_dir)
        .arg("e2e")
        .status()
        .map_err(io("run integration/images/build.sh"))?;
    if !status.success() {
        return Err(RunnerError::Io(format!(
            "integration/images/build.sh e2e: {status}"
        )));
    }
    let options = SuiteOptions {
        e2e_test: c.e2e_bin.join("e2e.test"),
        kubectl: binaries.path("kubectl"),
        ginkgo: (c.procs > 1).then(|| c.e2e_bin.join("ginkgo")),
        procs: c.procs,
        focus: c.focus.clone(),
        skip: c.skip.clone(),
        report_dir: out.clone(),
        timeout: c.timeout,
    };
    let list = c.e2e_bin.join("images.txt");
    let mut runs = Vec::new();
    for proxy in &c.proxies {
        let run = run_for(
            *proxy,
            &c.repo,
            binaries.clone(),
            &built,
            (&image_dir, &list),
            &options,
        )?;
        eprintln!(
            "upstream-e2e: {}: {:?} in {:.0?} (suite {})",
            proxy.daemonset(),
            counts(&run),
            run.wall,
            run.exit
        );
        runs.push(run);
    }
    let mut text = header(c);
    for run in &runs {
        text.push_str(&format!(
            "- {}: {:?}, {:.0} s\n",
            run.proxy.daemonset(),
            counts(run),
            run.wall.as_secs_f64()
        ));
    }
    text.push('\n');
    text.push_str(&table(&runs));
    let path = out.join("table.md");
    std::fs::write(&path, &text).map_err(io(format!("write {}", path.display())))?;
    Ok(runs)
}

/// What was run where: release, focus, skips, parallelism, machine, date.
fn header(c: &Comparison) -> String {
    let stamp = std::fs::read_to_string(c.e2e_bin.join(".complete")).unwrap_or_default();
    let release = stamp
        .lines()
        .next()
        .unwrap_or("unknown release")
        .trim()
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = crate::control_plane::now_rfc3339();
    format!(
        "Generated by `scripts/upstream-e2e.sh` (testbed/src/upstream_e2e.rs) on {date}.\n\n\
         - suite: `e2e.test` of {release}, `--provider=local`, ginkgo `--procs={procs}`\n\
         - focus: `{focus}`\n- skip: `{skip}`\n\
         - cluster: the real-node tier (2 kubelet nodes, containerd 1.6, CNI bridge, CoreDNS), a fresh one per proxy\n\
         - machine: {cores} cores, kernel {kernel}\n\n",
        procs = c.procs,
        focus = c.focus,
        skip = c.skip,
        kernel = kernel.trim(),
    )
}

/// The specs that pass with kube-proxy and do not pass with knat.
pub fn regressions(runs: &[ProxyRun]) -> Vec<String> {
    let kube_proxy = runs.iter().find(|r| r.proxy == Proxy::KubeProxy);
    let knat = runs.iter().find(|r| r.proxy == Proxy::Knat);
    match (kube_proxy, knat) {
        (Some(kp), Some(kn)) => kp
            .results
            .iter()
            .filter(|(name, r)| {
                r.state == "passed" && kn.results.get(*name).is_none_or(|k| k.state != "passed")
            })
            .map(|(name, _)| name.clone())
            .collect(),
        _ => Vec::new(),
    }
}

/// Counts per state of one run.
pub fn counts(run: &ProxyRun) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in run.results.values() {
        *out.entry(r.state.clone()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"[{"SuiteDescription":"Kubernetes e2e suite","SpecReports":[
      {"ContainerHierarchyTexts":["[sig-network] Services"],"LeafNodeText":"should serve a basic endpoint from pods","LeafNodeType":"It","State":"passed","RunTime":12000000000},
      {"ContainerHierarchyTexts":["[sig-network] Services"],"LeafNodeText":"should be rejected","LeafNodeType":"It","State":"failed","RunTime":3000000000,"Failure":{"Message":"\nexpected 0 got 1\nmore"}},
      {"LeafNodeText":"","LeafNodeType":"SynchronizedBeforeSuite","State":"passed"}
    ]}]"#;

    #[test]
    fn the_report_gives_one_result_per_it() {
        let results = parse_report(REPORT).expect("report");
        assert_eq!(results.len(), 2);
        let ok = &results["[sig-network] Services should serve a basic endpoint from pods"];
        assert_eq!(ok.state, "passed");
        assert_eq!(ok.run_time, Duration::from_secs(12));
        let bad = &results["[sig-network] Services should be rejected"];
        assert_eq!(bad.failure.as_deref(), Some("expected 0 got 1"));
    }

    #[test]
    fn the_table_pairs_both_proxies() {
        let results = parse_report(REPORT).expect("report");
        let runs = [
            ProxyRun {
                proxy: Proxy::KubeProxy,
                results: results.clone(),
                wall: Duration::ZERO,
                exit: String::new(),
            },
            ProxyRun {
                proxy: Proxy::Knat,
                results,
                wall: Duration::ZERO,
                exit: String::new(),
            },
        ];
        let t = table(&runs);
        assert!(
            t.contains(
                "| [sig-network] Services should be rejected | failed | failed | 3 s / 3 s |"
            ),
            "{t}"
        );
        assert_eq!(counts(&runs[0])["passed"], 1);
    }
}
