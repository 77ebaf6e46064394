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

/// `--detect-local-mode` values, spelled as kube-proxy spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DetectLocalModeArg {
    /// Pod traffic comes from `--cluster-cidr` (the first CIDR per family).
    #[value(name = "ClusterCIDR")]
    ClusterCidr,
    /// Pod traffic comes from the Node's `spec.podCIDRs` (the first CIDR per family).
    #[value(name = "NodeCIDR")]
    NodeCidr,
    /// Pod traffic arrives on `--pod-bridge-interface`.
    #[value(name = "BridgeInterface")]
    BridgeInterface,
    /// Pod traffic arrives on interfaces named `--pod-interface-name-prefix`*.
    #[value(name = "InterfaceNamePrefix")]
    InterfaceNamePrefix,
}

fn cluster_cidr(text: &str) -> Result<Option<ipnet::IpNet>, knat::config::ConfigError> {
    knat::config::parse_cluster_cidr(text)
}

/// The flags that shape the rules, shared by `render`, `diff` and `run` so that all three
/// compile exactly the same rules for the same flags.
#[derive(clap::Args, Debug, Clone)]
pub struct RuleFlags {
    /// kube-proxy's configuration file (`KubeProxyConfiguration` v1alpha1, YAML or JSON, as
    /// in kubeadm's `kube-proxy` ConfigMap). A flag given on the command line wins over it.
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<std::path::PathBuf>,
    /// Pod CIDR(s): traffic from them is pod traffic (the first one per family is used).
    /// Empty values are ignored (`--cluster-cidr=` means none).
    #[arg(long = "cluster-cidr", value_delimiter = ',', value_parser = cluster_cidr)]
    pub cluster_cidrs: Vec<Option<ipnet::IpNet>>,
    /// How pod traffic is told from other traffic (kube-proxy's modes).
    #[arg(long, value_enum, default_value = "ClusterCIDR")]
    pub detect_local_mode: DetectLocalModeArg,
    /// With `--detect-local-mode=BridgeInterface`: the bridge the pods are attached to.
    #[arg(long, default_value = "")]
    pub pod_bridge_interface: String,
    /// With `--detect-local-mode=InterfaceNamePrefix`: the prefix of the pods' interfaces.
    #[arg(long, default_value = "")]
    pub pod_interface_name_prefix: String,
    /// Masquerade all traffic sent to ClusterIPs (`--masquerade-all[=true|false]`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub masquerade_all: bool,
    /// The bit of the packet mark used for masquerading (0-31).
    #[arg(long, default_value_t = 14)]
    pub iptables_masquerade_bit: u8,
    /// Accept NodePorts only on local addresses in these CIDRs or keywords (`primary`: the
    /// node's IP per family; `localhost`; `all`). Default: all local addresses.
    #[arg(long = "nodeport-addresses", value_delimiter = ',')]
    pub nodeport_addresses: Vec<knat::config::NodePortAddress>,
    /// Serve NodePorts on 127.0.0.1 (IPv4), as upstream does by default.
    #[arg(long, alias = "iptables-localhost-nodeports", num_args = 0..=1,
          default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set)]
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
        use knat::config::{Dispatch, ProxyConfig};
        let mut cfg = ProxyConfig::new(node_name, family)?;
        cfg.local_detector = self.local_detector(family)?;
        cfg.masquerade_all = self.masquerade_all;
        cfg.masquerade_bit = self.iptables_masquerade_bit;
        let (nets, primary) = knat::config::NodePortAddress::expand(&self.nodeport_addresses);
        cfg.nodeport_addresses = nets;
        cfg.nodeport_primary = primary;
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

    /// With `--config`: reads the file, logs its warnings and applies it ([`Self::apply_file`]).
    /// For `render` and `diff`, which use only the rule settings of the file.
    pub fn load_file(&mut self, matches: &clap::ArgMatches) -> anyhow::Result<()> {
        let Some(path) = self.config_file.clone() else {
            return Ok(());
        };
        let loaded = knat::kube_proxy_config::load(&path)?;
        for warning in &loaded.warnings {
            tracing::warn!("{}: {}", path.display(), warning.message);
        }
        self.apply_file(&loaded.settings, matches);
        Ok(())
    }

    /// Takes every rule setting of a `--config` file that was not given on the command line
    /// (`matches` are this subcommand's).
    pub fn apply_file(
        &mut self,
        file: &knat::kube_proxy_config::FileSettings,
        matches: &clap::ArgMatches,
    ) {
        use knat::kube_proxy_config::DetectLocalMode;
        let from_file = |id: &str| !super::kube_proxy_flags::explicit(matches, id);
        if from_file("cluster_cidrs") {
            self.cluster_cidrs = file.cluster_cidrs.iter().copied().map(Some).collect();
        }
        if from_file("detect_local_mode") {
            self.detect_local_mode = match file.detect_local_mode {
                DetectLocalMode::ClusterCidr => DetectLocalModeArg::ClusterCidr,
                DetectLocalMode::NodeCidr => DetectLocalModeArg::NodeCidr,
                DetectLocalMode::BridgeInterface => DetectLocalModeArg::BridgeInterface,
                DetectLocalMode::InterfaceNamePrefix => DetectLocalModeArg::InterfaceNamePrefix,
            };
        }
        if from_file("pod_bridge_interface") {
            self.pod_bridge_interface = file.pod_bridge_interface.clone();
        }
        if from_file("pod_interface_name_prefix") {
            self.pod_interface_name_prefix = file.pod_interface_name_prefix.clone();
        }
        if from_file("masquerade_all") {
            self.masquerade_all = file.masquerade_all;
        }
        if from_file("iptables_masquerade_bit") {
            self.iptables_masquerade_bit = file.masquerade_bit;
        }
        if from_file("nodeport_addresses") {
            self.nodeport_addresses = file.nodeport_addresses.clone();
        }
        if from_file("localhost_nodeports") {
            self.localhost_nodeports = file.localhost_nodeports;
        }
    }

    /// The detector of `--detect-local-mode` for one family (validated as kube-proxy does:
    /// the interface modes need a non-empty name; `--cluster-cidr` counts only in ClusterCIDR,
    /// where it must be one CIDR or a dual-stack pair).
    pub fn local_detector(
        &self,
        family: knat::model::IpFamily,
    ) -> Result<knat::config::LocalDetector, knat::config::ConfigError> {
        use knat::config::{ConfigError, LocalDetector};
        let named = |value: &str, mode: &'static str, flag: &'static str| {
            let value = value.trim();
            if value.is_empty() {
                Err(ConfigError::EmptyInterface { mode, flag })
            } else {
                Ok(value.to_string())
            }
        };
        Ok(match self.detect_local_mode {
            DetectLocalModeArg::ClusterCidr => {
                let cidrs: Vec<ipnet::IpNet> =
                    self.cluster_cidrs.iter().flatten().copied().collect();
                let dual_pair =
                    matches!(cidrs.as_slice(), [a, b] if a.addr().is_ipv4() != b.addr().is_ipv4());
                if cidrs.len() > 1 && !dual_pair {
                    let text: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
                    return Err(ConfigError::ClusterCidrCount(text.join(",")));
                }
                LocalDetector::from_cidrs(&cidrs, family)
            }
            DetectLocalModeArg::NodeCidr => LocalDetector::NodeCidr,
            DetectLocalModeArg::BridgeInterface => LocalDetector::Bridge(named(
                &self.pod_bridge_interface,
                "BridgeInterface",
                "--pod-bridge-interface",
            )?),
            DetectLocalModeArg::InterfaceNamePrefix => LocalDetector::InterfacePrefix(named(
                &self.pod_interface_name_prefix,
                "InterfaceNamePrefix",
                "--pod-interface-name-prefix",
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use knat::config::LocalDetector;
    use knat::model::IpFamily;

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

    fn detector(args: &[&str]) -> Result<LocalDetector, String> {
        let cli = Cli::try_parse_from(std::iter::once("knat").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.rules
            .local_detector(IpFamily::V4)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn cluster_cidrs_are_one_or_a_dual_stack_pair() {
        assert!(detector(&["--cluster-cidr=10.244.0.0/16,fd00:10:244::/56"]).is_ok());
        let err = detector(&["--cluster-cidr=10.244.0.0/16,10.245.0.0/16"]).expect_err("two v4");
        assert!(err.contains("dual-stack pair"), "{err}");
        assert!(
            detector(&["--cluster-cidr=10.244.0.0/16,fd00::/56,10.245.0.0/16"]).is_err(),
            "three"
        );
        // Only ClusterCIDR mode looks at them, as in kube-proxy.
        assert!(
            detector(&[
                "--cluster-cidr=10.244.0.0/16,10.245.0.0/16",
                "--detect-local-mode=NodeCIDR"
            ])
            .is_ok()
        );
    }

    #[test]
    fn detect_local_modes_as_kube_proxy_spells_them() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().expect("cidr");
        assert_eq!(
            detector(&["--cluster-cidr=10.244.0.0/16"]),
            Ok(LocalDetector::Cidr(net("10.244.0.0/16"))),
            "ClusterCIDR is the default"
        );
        assert_eq!(detector(&[]), Ok(LocalDetector::None));
        assert_eq!(
            detector(&[
                "--detect-local-mode=NodeCIDR",
                "--cluster-cidr=10.244.0.0/16"
            ]),
            Ok(LocalDetector::NodeCidr)
        );
        assert_eq!(
            detector(&[
                "--detect-local-mode",
                "BridgeInterface",
                "--pod-bridge-interface",
                "cni0",
                "--cluster-cidr=10.244.0.0/16",
            ]),
            Ok(LocalDetector::Bridge("cni0".into()))
        );
        assert_eq!(
            detector(&[
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=veth",
            ]),
            Ok(LocalDetector::InterfacePrefix("veth".into()))
        );
        let err = detector(&["--detect-local-mode=BridgeInterface"]).unwrap_err();
        assert!(err.contains("--pod-bridge-interface"), "{err}");
        let err = detector(&[
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix= ",
        ])
        .unwrap_err();
        assert!(err.contains("--pod-interface-name-prefix"), "{err}");
        assert!(detector(&["--detect-local-mode=clustercidr"]).is_err());
        assert!(detector(&["--detect-local-mode=Bridge"]).is_err());
    }
}
