//! `knat doctor`: node identity, Local-service spread and Services that cannot work, from the
//! API server (like `knat run`) or from manifests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use knat::agent::node_identity::{self, NameSource};
use knat::agent::watch;
use knat::doctor::{self, Inventory, NodeArg, Options, render};
use knat::input::{self, Severity};
use kube::Api;
use kube::api::ListParams;

use super::common::read_sources;

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputArg {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Read Services, EndpointSlices and Nodes from these manifests (files or directories)
    /// instead of the API server.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub from_files: Vec<String>,
    /// kubeconfig file; default: in-cluster configuration (or $KUBECONFIG / ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The node to check. Default: $NODE_NAME, else the host name (as `knat run`).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Show every node's health-check answers; the node identity check then runs only when a
    /// node name is given.
    #[arg(long)]
    pub all_nodes: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub output: OutputArg,
    /// Max/min pod load ratio at which a Local service is reported as imbalanced.
    #[arg(long, default_value_t = 2.0)]
    pub imbalance_threshold: f64,
}

async fn list_live(kubeconfig: Option<PathBuf>) -> anyhow::Result<Inventory> {
    let client = watch::client(kubeconfig).await?;
    let lp = ListParams::default();
    let services = Api::<Service>::all(client.clone())
        .list(&lp)
        .await
        .context("listing Services")?;
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&lp)
        .await
        .context("listing EndpointSlices")?;
    let nodes = Api::<Node>::all(client)
        .list(&lp)
        .await
        .context("listing Nodes")?;
    Ok(Inventory {
        services: services.items,
        slices: slices.items,
        nodes: nodes.items,
    })
}

fn inventory(args: &DoctorArgs) -> anyhow::Result<Inventory> {
    if !args.from_files.is_empty() {
        let sources = read_sources(&args.from_files)?;
        let objects = input::load_objects(&sources)?;
        for note in &objects.notes {
            if note.severity == Severity::Warning {
                tracing::warn!("{}", note.message);
            }
        }
        return Ok(Inventory {
            services: objects.services,
            slices: objects.slices,
            nodes: objects.nodes,
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(list_live(args.kubeconfig.clone()))
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.imbalance_threshold >= 1.0,
        "--imbalance-threshold must be at least 1.0 (a ratio of most to least loaded pod)"
    );
    let env_name = std::env::var("NODE_NAME").ok();
    let node = if args.all_nodes
        && args.node_name.is_none()
        && env_name.as_deref().is_none_or(|n| n.trim().is_empty())
    {
        None
    } else {
        let (name, source) = node_identity::resolve(
            args.node_name.as_deref(),
            env_name.as_deref(),
            node_identity::kernel_hostname,
        )?;
        let source = match source {
            NameSource::Flag => "--node-name",
            other => other.as_str(),
        };
        Some(NodeArg {
            name,
            source: source.to_string(),
        })
    };
    let inventory = inventory(&args)?;
    let options = Options {
        node,
        hostname: node_identity::kernel_hostname(),
        all_nodes: args.all_nodes,
        imbalance_threshold: args.imbalance_threshold,
    };
    let report = doctor::diagnose(&inventory, &options);
    match args.output {
        OutputArg::Table => super::common::emit(&render::table(&report))?,
        OutputArg::Json => super::common::emit(&render::json(&report)?)?,
    }
    Ok(if report.is_broken() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
