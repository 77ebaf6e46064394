//! `knat diff`: the live iptables of this node (or saved dumps) against what knat would
//! program now from the given manifests, chain by chain.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Context;
use knat::backend::{self, Iptables, Mode};
use knat::diff::{self, DiffReport};
use knat::dump::parse;
use knat::input::{self, Severity};
use knat::model::IpFamily;
use knat::rules::compile;

use super::common::RuleFlags;
use super::common::{FamilyArg, read_sources};
use super::render::RenderArgs;
use super::run::BackendArg;

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputArg {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// This node's name, as in the Node object and EndpointSlice `nodeName`.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Compare this `iptables-save` dump (IPv4) instead of the live tables.
    #[arg(long, value_name = "FILE")]
    pub dump: Option<String>,
    /// Compare this `ip6tables-save` dump (IPv6) instead of the live tables.
    #[arg(long, value_name = "FILE")]
    pub dump6: Option<String>,
    /// Families to compare live (default: IPv4, plus IPv6 when the host has it, as `knat run`).
    #[arg(long = "ip-family", value_enum, value_delimiter = ',')]
    pub ip_families: Vec<FamilyArg>,
    /// Which iptables front-end to read live.
    #[arg(long, value_enum, default_value = "auto")]
    pub iptables_backend: BackendArg,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputArg,
    /// The rule flags given to the agent.
    #[command(flatten)]
    pub rules: RuleFlags,
    /// This node's addresses (the primary first).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Manifests (YAML or JSON; directories are read for *.yaml, *.yml, *.json); `-` is stdin.
    pub files: Vec<String>,
}

impl DiffArgs {
    fn render_args(&self, family: FamilyArg) -> RenderArgs {
        RenderArgs {
            node_name: self.node_name.clone(),
            rules: self.rules.clone(),
            ip_family: family,
            node_ips: self.node_ips.clone(),
            files: Vec::new(),
        }
    }

    /// (family, dump file or None for live).
    fn targets(&self) -> Vec<(FamilyArg, Option<String>)> {
        if self.dump.is_some() || self.dump6.is_some() {
            let mut out = Vec::new();
            if let Some(d) = &self.dump {
                out.push((FamilyArg::Ipv4, Some(d.clone())));
            }
            if let Some(d) = &self.dump6 {
                out.push((FamilyArg::Ipv6, Some(d.clone())));
            }
            return out;
        }
        let mut families: Vec<FamilyArg> = self.ip_families.clone();
        if families.is_empty() {
            families.push(FamilyArg::Ipv4);
            if std::path::Path::new("/proc/net/if_inet6").exists() {
                families.push(FamilyArg::Ipv6);
            }
        }
        families.sort_by_key(|f| IpFamily::from(*f));
        families.dedup_by_key(|f| IpFamily::from(*f));
        families.into_iter().map(|f| (f, None)).collect()
    }
}

async fn save_live(family: IpFamily, backend: BackendArg) -> anyhow::Result<String> {
    let mode = match backend {
        BackendArg::Nft => Mode::Nft,
        BackendArg::Legacy => Mode::Legacy,
        BackendArg::Auto => backend::detect_mode().await.0,
    };
    let ipt = Iptables::new(family, mode);
    let mut text = String::new();
    for table in diff::TABLES {
        text.push_str(
            &ipt.save(Some(table))
                .await
                .with_context(|| format!("running {} -t {table}", ipt.bins.save))?,
        );
    }
    Ok(text)
}

pub fn run(mut args: DiffArgs, matches: &clap::ArgMatches) -> anyhow::Result<ExitCode> {
    args.rules.load_file(matches)?;
    let sources = read_sources(&args.files)?;
    let loaded = input::load(&sources, &args.node_name)?;
    for note in loaded
        .notes
        .iter()
        .filter(|n| n.severity == Severity::Warning)
    {
        tracing::warn!("{}", note.message);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut reports: Vec<DiffReport> = Vec::new();
    for (family_arg, dump) in args.targets() {
        let cfg = args.render_args(family_arg).config()?;
        let family = cfg.family;
        knat::config::node_cidr_ready(
            &cfg.local_detector,
            &cfg.node_name,
            loaded.snapshot.node.as_ref(),
        )?;
        let (text, what) = match dump {
            Some(path) => (
                std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?,
                path,
            ),
            None => (
                rt.block_on(save_live(family, args.iptables_backend))?,
                "the live tables".to_string(),
            ),
        };
        let live = parse(&text).with_context(|| format!("parsing {what}"))?;
        let cfg = cfg
            .resolve_for_node(loaded.snapshot.node.as_ref())
            .unwrap_or(cfg);
        let compiled = compile(&loaded.snapshot, &cfg);
        let desired = diff::desired_dump(&compiled.rules)?;
        let owners = diff::owner_names(&compiled.chain_owners());
        reports.push(diff::diff(&live, &desired, &owners, family.label()));
    }
    match args.output {
        OutputArg::Text => {
            let text: String = reports.iter().map(diff::render::text).collect();
            super::common::emit(&text)?;
        }
        OutputArg::Json => {
            super::common::emit(&format!("{}\n", serde_json::to_string_pretty(&reports)?))?
        }
    }
    Ok(if reports.iter().any(DiffReport::has_drift) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
