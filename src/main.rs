//! The `knat` command line: render, trace, demo (and, hidden, the lab's echo server and probe).
//!
//! This is the only place that uses `anyhow`; everything it calls returns typed errors.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "knat", version, about = "A kube-proxy (iptables mode) replacement built around externalTrafficPolicy: Local")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the complete iptables-restore payload (filter and nat) for one node from manifests.
    Render(cli::render::RenderArgs),
    /// Follow one new connection through an iptables-save dump and explain the verdict.
    Trace(cli::trace::TraceArgs),
    /// Run the proxy agent (the DaemonSet's process): watch the API (or --from-files DIR) and program iptables.
    Run(cli::run::RunArgs),
    /// Remove every chain and hook jump knat or kube-proxy (iptables mode) installed.
    Cleanup(cli::cleanup::CleanupArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => cli::render::run(args),
        Command::Trace(args) => cli::trace::run(args),
        Command::Run(args) => cli::run::run(args),
        Command::Cleanup(args) => cli::cleanup::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("knat: error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
