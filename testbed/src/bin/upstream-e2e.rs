//! `upstream-e2e`: runs upstream's sig-network e2e suite against the real-node tier, once with
//! upstream kube-proxy and once with knat as the DaemonSet (same focus and skips, a fresh
//! cluster each), and writes one table. `scripts/upstream-e2e.sh` is the one command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use knat_testbed::control_plane::K8sBinaries;
use knat_testbed::images;
use knat_testbed::proxies::Proxy;
use knat_testbed::upstream_e2e::{self, ProxyRun, SuiteOptions};

#[derive(Parser, Debug)]
#[command(about = "upstream sig-network e2e against kube-proxy and knat on real kubelet nodes")]
struct Args {
    /// The repository (default: the parent of this crate).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Directory with e2e.test (and ginkgo): `scripts/build-e2e.sh --print`.
    #[arg(long)]
    e2e_bin: PathBuf,
    /// Ginkgo focus regex.
    #[arg(long)]
    focus: String,
    /// Ginkgo skip regex.
    #[arg(long)]
    skip: String,
    /// Parallel ginkgo processes (1: e2e.test alone, serially).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Which proxies: kube-proxy, knat or both.
    #[arg(long, default_value = "both")]
    proxies: String,
    /// Whole-suite timeout per proxy, seconds.
    #[arg(long, default_value_t = 7200)]
    timeout: u64,
    /// Where reports, logs and the table go.
    #[arg(long, default_value = "target/upstream-e2e")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let repo = args
        .repo
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    match run(&args, &repo) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("upstream-e2e: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args, repo: &std::path::Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let proxies: Vec<Proxy> = match args.proxies.as_str() {
        "both" => vec![Proxy::KubeProxy, Proxy::Knat],
        "kube-proxy" => vec![Proxy::KubeProxy],
        "knat" => vec![Proxy::Knat],
        other => {
            return Err(format!("--proxies: unknown {other:?} (kube-proxy, knat, both)").into());
        }
    };
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let binaries = K8sBinaries::locate(repo, false)?;
    let image_dir = repo.join("target/images");
    let built = images::build(repo, &image_dir)?;
    let status = std::process::Command::new("bash")
        .arg(repo.join("integration/images/build.sh"))
        .arg(&image_dir)
        .arg("e2e")
        .status()?;
    if !status.success() {
        return Err(format!("integration/images/build.sh e2e: {status}").into());
    }
    let list = args.e2e_bin.join("images.txt");
    let ginkgo = args.e2e_bin.join("ginkgo");
    let options = SuiteOptions {
        e2e_test: args.e2e_bin.join("e2e.test"),
        kubectl: binaries.path("kubectl"),
        ginkgo: (args.procs > 1).then_some(ginkgo),
        procs: args.procs,
        focus: args.focus.clone(),
        skip: args.skip.clone(),
        report_dir: out.clone(),
        timeout: Duration::from_secs(args.timeout),
    };
    let mut runs: Vec<ProxyRun> = Vec::new();
    for proxy in proxies {
        let run = upstream_e2e::run_for(
            proxy,
            repo,
            binaries.clone(),
            &built,
            (&image_dir, &list),
            &options,
        )?;
        eprintln!(
            "upstream-e2e: {}: {:?} in {:.0?} (suite exit {})",
            proxy.daemonset(),
            upstream_e2e::counts(&run),
            run.wall,
            run.exit
        );
        runs.push(run);
    }
    let table = upstream_e2e::table(&runs);
    let mut summary = String::new();
    for run in &runs {
        summary.push_str(&format!(
            "- {}: {:?}, {:.0} s\n",
            run.proxy.daemonset(),
            upstream_e2e::counts(run),
            run.wall.as_secs_f64()
        ));
    }
    let text = format!("{summary}\n{table}");
    std::fs::write(out.join("table.md"), &text)?;
    println!("{text}");
    // Every spec kube-proxy passes, knat must pass.
    let regressions: Vec<&String> = match (
        runs.iter().find(|r| r.proxy == Proxy::KubeProxy),
        runs.iter().find(|r| r.proxy == Proxy::Knat),
    ) {
        (Some(kp), Some(kn)) => kp
            .results
            .iter()
            .filter(|(name, r)| {
                r.state == "passed" && kn.results.get(*name).is_none_or(|k| k.state != "passed")
            })
            .map(|(name, _)| name)
            .collect(),
        _ => Vec::new(),
    };
    for name in &regressions {
        eprintln!("upstream-e2e: passes with kube-proxy, not with knat: {name}");
    }
    Ok(if regressions.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
