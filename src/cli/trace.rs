//! `knat trace`: follow one new connection through an iptables-save dump.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct TraceArgs {}

pub fn run(_args: TraceArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("trace is being wired")
}
