//! `knat node-setup`: the node settings the unprivileged agent cannot make itself, run once
//! per pod start by the DaemonSet's privileged init container (host network).
//!
//! Only `net.ipv4.conf.all.route_localnet=1`, which localhost NodePorts need (see
//! `knat::agent::localnet`). Exit status 0 when it is 1 afterwards, 1 when it could not be set.

use std::process::ExitCode;

use knat::agent::localnet::{self, Localnet, ProcSys};

#[derive(clap::Args, Debug)]
pub struct NodeSetupArgs {}

pub fn run(_args: NodeSetupArgs) -> anyhow::Result<ExitCode> {
    let state = localnet::ensure(&ProcSys::default());
    match &state {
        Localnet::AlreadyOn => tracing::info!("{} is 1 already", localnet::SYSCTL),
        Localnet::Set { was } => tracing::info!("{} was {was}; set to 1", localnet::SYSCTL),
        Localnet::Unavailable { reason } => {
            tracing::error!(
                "{reason}; this init container needs `privileged: true` and hostNetwork: true"
            );
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}
