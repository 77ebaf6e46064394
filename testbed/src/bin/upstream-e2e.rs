//! `upstream-e2e`: runs upstream's sig-network e2e suite against the real-node tier, once with
//! upstream kube-proxy and once with knat as the DaemonSet (same focus and skips, a fresh
//! cluster each), and writes one table. `scripts/upstream-e2e.sh` is the one command. Exit 1
//! when a test that passes with kube-proxy does not pass with knat, 2 on a harness error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use knat_testbed::proxies::Proxy;
use knat_testbed::upstream_e2e::{self, Comparison};

#[derive(Parser, Debug)]
#[command(about = "upstream sig-network e2e against kube-proxy and knat on real kubelet nodes")]
struct Args {
    /// The repository (default: the parent of this crate).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Directory with e2e.test, ginkgo and images.txt: `scripts/build-e2e.sh --print`.
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
    /// Where reports, logs and table.md go.
    #[arg(long, default_value = "target/upstream-e2e")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let proxies = match args.proxies.as_str() {
        "both" => vec![Proxy::KubeProxy, Proxy::Knat],
        "kube-proxy" => vec![Proxy::KubeProxy],
        "knat" => vec![Proxy::Knat],
        other => {
            eprintln!("upstream-e2e: --proxies: unknown {other:?} (kube-proxy, knat, both)");
            return ExitCode::from(2);
        }
    };
    let comparison = Comparison {
        repo: args
            .repo
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")),
        e2e_bin: args.e2e_bin,
        focus: args.focus,
        skip: args.skip,
        procs: args.procs,
        proxies,
        timeout: Duration::from_secs(args.timeout),
        out: args.out.clone(),
    };
    let runs = match upstream_e2e::compare(&comparison) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("upstream-e2e: {e}");
            return ExitCode::from(2);
        }
    };
    match std::fs::read_to_string(args.out.join("table.md")) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("upstream-e2e: table.md: {e}"),
    }
    let regressions = upstream_e2e::regressions(&runs);
    for name in &regressions {
        eprintln!("upstream-e2e: passes with kube-proxy, not with knat: {name}");
    }
    if regressions.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
