//! The `knat` command line: render, trace, demo (and, hidden, the lab's echo server and probe).
//!
//! This is the only place that uses `anyhow`; everything it calls returns typed errors.

mod cli;

use clap::{Parser, Subcommand};

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
    Run(cli::run::RunArgs),
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

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs collected from a file or a container runtime stay
        // plain text (tests and log pipelines read them as such).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !knat::memory::purge_immediately() {
        tracing::debug!("mimalloc purge delay left as it is (set in the environment?)");
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => cli::lab::demo(args),
        Command::LabEcho(args) => cli::lab::lab_echo(args),
        Command::LabProbe(args) => cli::lab::lab_probe(args),
        Command::LabInvalid(args) => cli::lab::lab_invalid(args),
        Command::Render(args) => cli::render::run(args),
        Command::Trace(args) => cli::trace::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Cleanup(args) => cli::cleanup::run(args),
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Diff(args) => cli::diff::run(args),
        Command::NodeSetup(args) => cli::node_setup::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("knat: error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
