//! The `knat` command line: render, trace, demo (and, hidden, the lab's echo server and probe).
//!
//! This is the only place that uses `anyhow`; everything it calls returns typed errors.

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write as _;

// mimalloc instead of glibc malloc: compiling 10,000 services allocates and frees about a million
// small objects, and glibc's free-list consolidation was a fifth of the time (render benchmark:
// compile 190 -> 145 ms, render 165 -> 100 ms at 10,000 services; docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "knat",
    version,
    about = "A kube-proxy (iptables mode) replacement built around externalTrafficPolicy: Local"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a small cluster in network namespaces, program it with knat's rules, and show what
    /// real connections do and how to debug them (needs root, iproute2, iptables).
    Demo(cli::lab::DemoArgs),
    /// Print the complete iptables-restore payload (filter and nat) for one node from manifests.
    Render(cli::render::RenderArgs),
    /// Follow one new connection through an iptables-save dump and explain the verdict.
    Trace(cli::trace::TraceArgs),
    /// Run the proxy agent (the DaemonSet's process): watch the API (or --from-files DIR) and program iptables.
    Run(Box<cli::run::RunArgs>),
    /// Remove every chain and hook jump knat or kube-proxy (iptables mode) installed.
    Cleanup(cli::cleanup::CleanupArgs),
    /// Check node identity, Local-service spread and Services that cannot work; exit 1 when something is broken.
    Doctor(cli::doctor::DoctorArgs),
    /// Compare the live iptables (or saved dumps) with what knat would program; exit 1 on drift.
    Diff(cli::diff::DiffArgs),
    /// Set net.ipv4.conf.all.route_localnet=1 (localhost NodePorts): the DaemonSet's privileged init container.
    NodeSetup(cli::node_setup::NodeSetupArgs),
    /// Lab helper: TCP+UDP echo server run inside a pod namespace.
    #[command(hide = true)]
    LabEcho(cli::lab::LabEchoArgs),
    /// Lab helper: connect (or send a datagram) and print the outcome as JSON lines.
    #[command(hide = true)]
    LabProbe(cli::lab::LabProbeArgs),
    /// Lab helper: send packets conntrack classifies as INVALID (unsolicited echo replies).
    #[command(hide = true)]
    LabInvalid(cli::lab::LabInvalidArgs),
}

fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr's reader is gone, e.g. `2>&1 | head`) is
        // dropped: by default tracing-subscriber reports it with eprintln!, which panics then.
        .log_internal_errors(false)
        // Colour only on a terminal: logs collected from a file or a container runtime stay
        // plain text (tests and log pipelines read them as such).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn fail(err: anyhow::Error) -> std::process::ExitCode {
    // Not eprintln!: it panics when stderr is a closed pipe, and the exit code must stay 2.
    let _ = writeln!(std::io::stderr(), "knat: error: {err:#}");
    std::process::ExitCode::from(2)
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let sub = |name: &str| {
        matches
            .subcommand_matches(name)
            .cloned()
            .unwrap_or_default()
    };
    // `knat run` reads its --config file before logging starts: the file's verbosity (or -v)
    // decides the log level, and an invalid file stops it before anything is touched.
    let (cli, prepared) = match cli.command {
        Command::Run(args) if args.kube_proxy.version_requested() => {
            println!("knat {}", env!("CARGO_PKG_VERSION"));
            return std::process::ExitCode::SUCCESS;
        }
        Command::Run(args) => match cli::run::prepare(*args, &sub("run")) {
            Ok(prepared) => (None, Some(prepared)),
            Err(err) => {
                init_logging("info");
                return fail(err);
            }
        },
        other => (Some(other), None),
    };
    let verbosity = prepared.as_ref().and_then(|p| p.verbosity).unwrap_or(0);
    init_logging(cli::kube_proxy_flags::log_filter(verbosity));
    if !knat::memory::purge_immediately() {
        tracing::debug!("mimalloc purge delay left as it is (set in the environment?)");
    }
    let result = match (cli, prepared) {
        (_, Some(prepared)) => {
            for warning in &prepared.warnings {
                tracing::warn!("{warning}");
            }
            if prepared.args.kube_proxy.cleanup {
                cli::cleanup::run(cli::cleanup::CleanupArgs {
                    ip_families: prepared.args.ip_families.clone(),
                    dry_run: false,
                })
            } else {
                cli::run::run(prepared.args)
            }
        }
        (Some(Command::Demo(args)), None) => cli::lab::demo(args),
        (Some(Command::LabEcho(args)), None) => cli::lab::lab_echo(args),
        (Some(Command::LabProbe(args)), None) => cli::lab::lab_probe(args),
        (Some(Command::LabInvalid(args)), None) => cli::lab::lab_invalid(args),
        (Some(Command::Render(args)), None) => cli::render::run(args, &sub("render")),
        (Some(Command::Trace(args)), None) => cli::trace::run(args),
        (Some(Command::Cleanup(args)), None) => cli::cleanup::run(args),
        (Some(Command::Doctor(args)), None) => cli::doctor::run(args),
        (Some(Command::Diff(args)), None) => cli::diff::run(args, &sub("diff")),
        (Some(Command::NodeSetup(args)), None) => cli::node_setup::run(args),
        (Some(Command::Run(_)), None) | (None, None) => Ok(std::process::ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(err) => fail(err),
    }
}
