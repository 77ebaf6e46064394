//! Flag handling shared by several subcommands.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use knat::input::Source;

/// Reads files (or standard input for `-` or when no file is given) into sources.
pub fn read_sources(files: &[String]) -> anyhow::Result<Vec<Source>> {
    let names: Vec<String> = if files.is_empty() {
        vec!["-".to_string()]
    } else {
        files.to_vec()
    };
    let mut sources = Vec::new();
    for name in names {
        if name == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            sources.push(Source {
                name: "<stdin>".into(),
                text,
            });
        } else if Path::new(&name).is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(&name)
                .with_context(|| format!("reading directory {name}"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            entries.sort();
            for path in entries {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                sources.push(Source {
                    name: path.display().to_string(),
                    text,
                });
            }
        } else {
            let text = std::fs::read_to_string(&name).with_context(|| format!("reading {name}"))?;
            sources.push(Source { name, text });
        }
    }
    Ok(sources)
}

/// `--ip-family` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
}

impl From<FamilyArg> for knat::model::IpFamily {
    fn from(value: FamilyArg) -> Self {
        match value {
            FamilyArg::Ipv4 => knat::model::IpFamily::V4,
            FamilyArg::Ipv6 => knat::model::IpFamily::V6,
        }
    }
}

/// Writes command output to stdout; a closed pipe (`knat ... | head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other.context("writing to standard output")?),
    }
}

/// Dispatch styles for nat KUBE-SERVICES.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DispatchArg {
    /// One rule per destination, exactly as upstream kube-proxy.
    Linear,
    /// A prefix tree of chains (identical to linear for small clusters).
    Tree,
}

fn cluster_cidr(text: &str) -> Result<Option<ipnet::IpNet>, knat::config::ConfigError> {
    knat::config::parse_cluster_cidr(text)
}

/// The flags that shape the rules, shared by `render`, `diff` and `run` so that all three
/// compile exactly the same rules for the same flags.
#[derive(clap::Args, Debug, Clone)]
pub struct RuleFlags {
    /// Pod CIDR(s): traffic from them is pod traffic (the first one per family is used).
    /// Empty values are ignored (`--cluster-cidr=` means none).
    #[arg(long = "cluster-cidr", value_delimiter = ',', value_parser = cluster_cidr)]
    pub cluster_cidrs: Vec<Option<ipnet::IpNet>>,
    /// Masquerade all traffic sent to ClusterIPs.
    #[arg(long)]
    pub masquerade_all: bool,
    /// Accept NodePorts only on local addresses in these CIDRs (default: all local addresses).
    #[arg(long = "nodeport-addresses", value_delimiter = ',')]
    pub nodeport_addresses: Vec<ipnet::IpNet>,
    /// Serve NodePorts on 127.0.0.1 (IPv4), as upstream does by default.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub localhost_nodeports: bool,
    /// MASQUERADE --random-fully (`--random-fully`, `--random-fully=false`). render and diff:
    /// on unless `=false`, as on any current node; run: detected (iptables binary and kernel)
    /// unless given.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub random_fully: Option<bool>,
    /// The nfacct counters' `-m nfacct` clauses and localhost NodePort counting rules
    /// (`--nfacct`, `--nfacct=false`). render and diff: off unless given (a restore of them
    /// fails where the counters do not exist); run: on when the kernel has nfacct (the agent
    /// creates the counters), `--nfacct=true` makes its absence fatal.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub nfacct: Option<bool>,
    /// `linear` writes nat KUBE-SERVICES exactly as upstream; `tree` dispatches by prefix.
    #[arg(long, value_enum, default_value = "tree")]
    pub dispatch: DispatchArg,
    /// Maximum entries per dispatch chain.
    #[arg(long, default_value_t = knat::config::DEFAULT_LEAF_SIZE)]
    pub dispatch_leaf_size: usize,
}

impl RuleFlags {
    /// The compiler configuration for one family (not yet validated: callers may still set
    /// addresses and the masquerade bit).
    pub fn config(
        &self,
        node_name: &str,
        family: knat::model::IpFamily,
    ) -> Result<knat::config::ProxyConfig, knat::config::ConfigError> {
        use knat::config::{Dispatch, LocalDetector, ProxyConfig};
        let mut cfg = ProxyConfig::new(node_name, family)?;
        let cidrs: Vec<ipnet::IpNet> = self.cluster_cidrs.iter().flatten().copied().collect();
        cfg.local_detector = LocalDetector::from_cidrs(&cidrs, family);
        cfg.masquerade_all = self.masquerade_all;
        cfg.nodeport_addresses = self.nodeport_addresses.clone();
        cfg.localhost_nodeports = self.localhost_nodeports;
        cfg.random_fully = self.random_fully.unwrap_or(true);
        cfg.nfacct = self.nfacct.unwrap_or(false);
        cfg.dispatch = match self.dispatch {
            DispatchArg::Linear => Dispatch::Linear,
            DispatchArg::Tree => Dispatch::Tree {
                leaf_size: self.dispatch_leaf_size,
            },
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::RuleFlags;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        rules: RuleFlags,
    }

    fn cidrs(args: &[&str]) -> Result<Vec<String>, String> {
        let cli = Cli::try_parse_from(std::iter::once("knat").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Ok(cli
            .rules
            .cluster_cidrs
            .iter()
            .flatten()
            .map(|n| n.to_string())
            .collect())
    }

    #[test]
    fn empty_cluster_cidr_means_unset() {
        assert_eq!(cidrs(&["--cluster-cidr="]), Ok(vec![]));
        assert_eq!(cidrs(&[]), Ok(vec![]));
        assert_eq!(
            cidrs(&["--cluster-cidr=10.244.0.0/16,fd00:10:244::/56"]),
            Ok(vec![
                "10.244.0.0/16".to_string(),
                "fd00:10:244::/56".to_string()
            ])
        );
        let err = cidrs(&["--cluster-cidr=$(KNAT_CLUSTER_CIDR)"]).unwrap_err();
        assert!(err.contains("ConfigMap kube-system/knat"), "{err}");
        assert!(cidrs(&["--cluster-cidr=10.244.0.0"]).is_err());
    }
}
