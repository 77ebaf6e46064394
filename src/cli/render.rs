//! `knat render`: manifests in, the node's complete iptables-restore payload out.

use std::net::IpAddr;
use std::process::ExitCode;

use knat::config::ProxyConfig;
use knat::input::{self, Severity};
use knat::rules::{compile, render_standalone};

use super::common::{FamilyArg, RuleFlags, read_sources};

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// This node's name, as in the Node object and EndpointSlice `nodeName`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    #[command(flatten)]
    pub rules: RuleFlags,
    #[arg(long, value_enum, default_value = "ipv4")]
    pub ip_family: FamilyArg,
    /// This node's addresses (the primary first): used for "allow from node" source-range
    /// rules and, with --nodeport-addresses, as the local addresses.
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Manifests (YAML or JSON; directories are read for *.yaml, *.yml, *.json); `-` is stdin.
    pub files: Vec<String>,
}

impl RenderArgs {
    /// The compiler configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<ProxyConfig> {
        let family = self.ip_family.into();
        let mut cfg = self.rules.config(&self.node_name, family)?;
        cfg.node_ips = self.node_ips.clone();
        cfg.local_addresses = self.node_ips.clone();
        cfg.local_addresses
            .push(if family == knat::model::IpFamily::V4 {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
            });
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(mut args: RenderArgs, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    args.rules.load_file(matches)?;
    let cfg = args.config()?;
    let sources = read_sources(&args.files)?;
    let loaded = input::load(&sources, &cfg.node_name)?;
    for note in &loaded.notes {
        match note.severity {
            Severity::Warning => tracing::warn!("{}", note.message),
            Severity::Info => tracing::info!("{}", note.message),
        }
    }
    if !loaded.nodes.is_empty() && loaded.snapshot.node.is_none() {
        tracing::warn!(
            node = %cfg.node_name,
            "no Node named {:?} in the input (found: {}); every endpoint will look remote and every externalTrafficPolicy: Local service will drop external traffic on this node",
            cfg.node_name,
            loaded.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    knat::config::node_cidr_ready(
        &cfg.local_detector,
        &cfg.node_name,
        loaded.snapshot.node.as_ref(),
    )?;
    let cfg = cfg
        .resolve_for_node(loaded.snapshot.node.as_ref())
        .unwrap_or(cfg);
    let compiled = compile(&loaded.snapshot, &cfg);
    super::common::emit(&render_standalone(&compiled.rules))?;
    Ok(ExitCode::SUCCESS)
}
