//! `knat cleanup`: remove everything knat or upstream kube-proxy (iptables mode) installed.
//!
//! For each IP family and each iptables front-end (nft and legacy) that is installed, one
//! atomic `iptables-restore --noflush` per front-end and family removes, per table, first the
//! jumps into our chains (hook jumps), then the chains themselves (reference §2.1). Kubelet's
//! `KUBE-FIREWALL` and `KUBE-KUBELET-CANARY` are never touched.

use std::process::ExitCode;

use anyhow::Context;
use knat::backend::{self, Iptables, Mode};
use knat::model::IpFamily;

use super::common::FamilyArg;

#[derive(clap::Args, Debug)]
pub struct CleanupArgs {
    /// IP families to clean (default: both).
    #[arg(long = "ip-families", value_enum, value_delimiter = ',')]
    pub ip_families: Vec<FamilyArg>,
    /// Print the payloads instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let families: Vec<IpFamily> = if args.ip_families.is_empty() {
        vec![IpFamily::V4, IpFamily::V6]
    } else {
        args.ip_families.iter().map(|f| (*f).into()).collect()
    };
    let mut seen = Vec::new();
    let mut failed = false;
    for mode in [Mode::Nft, Mode::Legacy] {
        for family in &families {
            let ipt = Iptables::new(*family, mode);
            // Without the suffixed binaries both modes resolve to the same program: do it once.
            if seen.contains(&ipt.bins.save) {
                continue;
            }
            seen.push(ipt.bins.save.clone());
            let save = match ipt.save(None).await {
                Ok(text) => text,
                Err(err) => {
                    tracing::debug!(%err, mode = mode.as_str(), family = family.label(), "skipping front-end");
                    continue;
                }
            };
            let payload = backend::cleanup_payload(&save);
            if payload.is_empty() {
                tracing::info!(
                    mode = mode.as_str(),
                    family = family.label(),
                    "nothing to clean"
                );
                continue;
            }
            let jumps = payload.lines().filter(|l| l.starts_with("-D ")).count();
            let chains = payload.lines().filter(|l| l.starts_with("-X ")).count();
            if args.dry_run {
                println!("# {} {}", ipt.bins.restore, family.label());
                print!("{payload}");
                continue;
            }
            match ipt.restore(&payload).await {
                Ok(()) => tracing::info!(
                    mode = mode.as_str(),
                    family = family.label(),
                    jumps,
                    chains,
                    "cleaned up"
                ),
                Err(err) => {
                    tracing::error!(mode = mode.as_str(), family = family.label(), %err, "cleanup failed");
                    failed = true;
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
