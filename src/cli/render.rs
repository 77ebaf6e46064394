//! `knat render`: manifests in, the node's complete iptables-restore payload out.

use std::net::IpAddr;
use std::process::ExitCode;

use ipnet::IpNet;
use knat::config::{DEFAULT_LEAF_SIZE, Dispatch, LocalDetector, ProxyConfig};
use knat::input::{self, Severity};
use knat::rules::{compile, render_standalone};

use super::common::{FamilyArg, read_sources};

/// Dispatch styles for nat KUBE-SERVICES.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DispatchArg {
    /// One rule per destination, exactly as upstream kube-proxy.
    Linear,
    /// A prefix tree of chains (identical to linear for small clusters).
    Tree,
}

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// This node's name, as in the Node object and EndpointSlice `nodeName`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Pod CIDR(s) used to tell pod traffic from other traffic (first one per family is used).
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all traffic sent to ClusterIPs.
    #[arg(long)]
    pub masquerade_all: bool,
    #[arg(long, value_enum, default_value = "ipv4")]
    pub ip_family: FamilyArg,
    /// Restrict NodePorts to local addresses in these CIDRs (default: all local addresses).
    #[arg(long = "nodeport-addresses", value_delimiter = ',')]
    pub nodeport_addresses: Vec<IpNet>,
    /// This node's addresses (the primary first): used for "allow from node" source-range
    /// rules and, with --nodeport-addresses, as the local addresses.
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Serve NodePorts on 127.0.0.1 (IPv4), as upstream does by default.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub localhost_nodeports: bool,
    /// Append --random-fully to MASQUERADE.
    #[arg(long)]
    pub random_fully: bool,
    #[arg(long, value_enum, default_value = "tree")]
    pub dispatch: DispatchArg,
    /// Maximum entries per dispatch chain.
    #[arg(long, default_value_t = DEFAULT_LEAF_SIZE)]
    pub dispatch_leaf_size: usize,
    /// Manifests (YAML or JSON; directories are read for *.yaml, *.yml, *.json); `-` is stdin.
    pub files: Vec<String>,
}

impl RenderArgs {
    /// The compiler configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<ProxyConfig> {
        let family = self.ip_family.into();
        let mut cfg = ProxyConfig::new(&self.node_name, family)?;
        cfg.local_detector = LocalDetector::from_cidrs(&self.cluster_cidrs, family);
        cfg.masquerade_all = self.masquerade_all;
        cfg.nodeport_addresses = self.nodeport_addresses.clone();
        cfg.node_ips = self.node_ips.clone();
        cfg.local_addresses = self.node_ips.clone();
        cfg.local_addresses
            .push(if family == knat::model::IpFamily::V4 {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
            });
        cfg.localhost_nodeports = self.localhost_nodeports;
        cfg.random_fully = self.random_fully;
        cfg.dispatch = match self.dispatch {
            DispatchArg::Linear => Dispatch::Linear,
            DispatchArg::Tree => Dispatch::Tree {
                leaf_size: self.dispatch_leaf_size,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(args: RenderArgs) -> anyhow::Result<ExitCode> {
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
    let compiled = compile(&loaded.snapshot, &cfg);
    super::common::emit(&render_standalone(&compiled.rules))?;
    Ok(ExitCode::SUCCESS)
}
