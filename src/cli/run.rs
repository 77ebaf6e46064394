//! `knat run`: the agent (the DaemonSet's process), from the API server or from files.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use knat::agent::index::SourceState;
use knat::agent::node_event::{self, PodRefError};
use knat::agent::node_identity::{self, MISSING_NODE_FIX, NameSource};
use knat::agent::sync::{FamilySync, Scheduler, SyncLoop, Timing};
use knat::agent::{capabilities, localnet};
use knat::agent::{files, watch as kwatch};
use knat::backend::{self, Iptables, Mode};
use knat::config::ProxyConfig;
use knat::health::{self, AdminState, ProxyHealth, ServiceHealthServers};
use knat::metrics::Metrics;
use knat::model::IpFamily;

use super::common::{FamilyArg, RuleFlags};

/// `--iptables-backend` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// Detect as kubernetes-sigs iptables-wrappers does (kubelet hint chains, then rule counts).
    Auto,
    Nft,
    Legacy,
}

/// Parses Go-style durations: `500ms`, `1s`, `30s`, `1m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: unit must be ms, s, m or h"
                ));
            }
        };
        total += Duration::from_secs_f64(secs);
        rest = tail;
    }
    Ok(total)
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The node name (as in the Node object and EndpointSlice nodeName). Default: $NODE_NAME,
    /// else the host name (with a warning). The DaemonSet passes $(NODE_NAME) from spec.nodeName.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// kubeconfig file; default: in-cluster configuration (or $KUBECONFIG / ~/.kube/config).
    #[arg(long, conflicts_with = "from_files")]
    pub kubeconfig: Option<PathBuf>,
    /// Program rules from the manifests in DIR (re-read when they change) instead of the API.
    #[arg(long, value_name = "DIR")]
    pub from_files: Option<PathBuf>,
    #[command(flatten)]
    pub rules: RuleFlags,
    /// Minimum interval between two syncs (start to start; a burst of 2 is allowed).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub iptables_min_sync_period: Duration,
    /// Canary poll interval, maximum retry backoff; health times out after twice this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub iptables_sync_period: Duration,
    /// The bit of the packet mark used for masquerading.
    #[arg(long, default_value_t = 14)]
    pub iptables_masquerade_bit: u8,
    /// Address of the /healthz and /livez server.
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: SocketAddr,
    /// Address of the /metrics server.
    #[arg(long, default_value = "127.0.0.1:10249")]
    pub metrics_bind_address: SocketAddr,
    #[arg(long, value_enum, default_value = "auto")]
    pub iptables_backend: BackendArg,
    /// IP families to program (default: IPv4, plus IPv6 when the host has it).
    #[arg(long = "ip-families", value_enum, value_delimiter = ',')]
    pub ip_families: Vec<FamilyArg>,
    /// How often --from-files polls the directory.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub files_poll_interval: Duration,
}

fn ipv6_available() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// Local interface addresses of a family (for restricted --nodeport-addresses).
fn local_addresses(family: IpFamily) -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| family.contains(ip))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl RunArgs {
    fn families(&self) -> Vec<IpFamily> {
        if self.ip_families.is_empty() {
            let mut f = vec![IpFamily::V4];
            if ipv6_available() {
                f.push(IpFamily::V6);
            }
            f
        } else {
            let mut f: Vec<IpFamily> = self.ip_families.iter().map(|a| (*a).into()).collect();
            f.sort();
            f.dedup();
            f
        }
    }

    /// The configuration of one family; `localnet_ok` false turns localhost NodePorts off
    /// (route_localnet is 0 and cannot be set).
    fn config(
        &self,
        node_name: &str,
        family: IpFamily,
        localnet_ok: bool,
    ) -> anyhow::Result<ProxyConfig> {
        let mut cfg = self.rules.config(node_name, family)?;
        cfg.localhost_nodeports &= localnet_ok;
        cfg.masquerade_bit = self.iptables_masquerade_bit;
        if !cfg.nodeports_match_all() {
            cfg.local_addresses = local_addresses(family);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// When localhost NodePorts are asked for on IPv4, makes sure `route_localnet` is 1 (setting
/// it if it can) and says so; false (with a warning naming the fix) when it cannot be.
fn localhost_nodeports_check(
    args: &RunArgs,
    node_name: &str,
    families: &[IpFamily],
) -> anyhow::Result<bool> {
    if !families.contains(&IpFamily::V4)
        || !args
            .config(node_name, IpFamily::V4, true)?
            .localhost_nodeports_effective()
    {
        return Ok(true);
    }
    let state = localnet::ensure(&localnet::ProcSys::default());
    if state.usable() {
        tracing::info!("{}", state.message());
    } else {
        tracing::warn!("{}", state.message());
    }
    Ok(state.usable())
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_park(knat::memory::collect_idle_thread)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn run_async(args: RunArgs) -> anyhow::Result<ExitCode> {
    let env_name = std::env::var("NODE_NAME").ok();
    let (node_name, source) = node_identity::resolve(
        args.hostname_override.as_deref(),
        env_name.as_deref(),
        node_identity::kernel_hostname,
    )?;
    if source == NameSource::Hostname {
        tracing::warn!(node = %node_name, "node name taken from the host name; if it differs from the Node object's name, Local services break: {MISSING_NODE_FIX}");
    }
    tracing::info!(node = %node_name, from = source.as_str(), "node name");

    let families = args.families();
    let mode = match args.iptables_backend {
        BackendArg::Nft => Mode::Nft,
        BackendArg::Legacy => Mode::Legacy,
        BackendArg::Auto => {
            let (mode, nft, legacy) = backend::detect_mode().await;
            tracing::info!(
                mode = mode.as_str(),
                nft_rules = nft.rules,
                legacy_rules = legacy.rules,
                nft_kubelet_hint = nft.kubelet_hint,
                legacy_kubelet_hint = legacy.kubelet_hint,
                "iptables backend detected"
            );
            mode
        }
    };
    let mut metrics = Metrics::new();
    let nfacct = capabilities::nfacct_client(args.rules.nfacct)?;
    if let Some(client) = &nfacct {
        metrics.register_nfacct(client.clone());
    }
    let metrics = Arc::new(metrics);
    let localnet_ok = localhost_nodeports_check(&args, &node_name, &families)?;
    let mut family_syncs = Vec::new();
    let mut localhost = false;
    for family in &families {
        let mut cfg = args.config(&node_name, *family, localnet_ok)?;
        localhost |= cfg.localhost_nodeports_effective();
        let ipt = Iptables::new(*family, mode);
        cfg.random_fully = capabilities::random_fully(args.rules.random_fully, &ipt).await;
        tracing::info!(family = family.label(), restore = %ipt.bins.restore, "programming family");
        family_syncs.push(FamilySync::new(cfg, ipt).with_nfacct(nfacct.clone()));
    }
    metrics.localhost_nodeports.set(i64::from(localhost));
    let health = Arc::new(Mutex::new(ProxyHealth::new(
        2 * args.iptables_sync_period,
        &families,
    )));
    let admin = AdminState {
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let healthz = health::bind(args.healthz_bind_address).await?;
    let metrics_listener = health::bind(args.metrics_bind_address).await?;
    tracing::info!(healthz = %args.healthz_bind_address, metrics = %args.metrics_bind_address, "HTTP servers listening");
    let healthz_task = health::serve_healthz(healthz, admin.clone());
    let metrics_task = health::serve_metrics(metrics_listener, admin);

    let (tx, rx) =
        tokio::sync::watch::channel(SourceState::new(&node_name, args.from_files.is_none()));
    let mut events_task = None;
    let source_task = match &args.from_files {
        Some(dir) => {
            tracing::info!(dir = %dir.display(), "static source: reading manifests");
            tokio::spawn(files::run(
                dir.clone(),
                node_name.clone(),
                tx,
                args.files_poll_interval,
                metrics.clone(),
            ))
        }
        None => {
            let (client, target) = kwatch::connect(args.kubeconfig.clone()).await?;
            tracing::info!(
                api_server = %target.address(),
                from = %target.source,
                "API server"
            );
            events_task = node_events(&client, &node_name, source, &rx, &metrics);
            tokio::spawn(kwatch::run(
                client,
                target,
                node_name.clone(),
                tx,
                metrics.clone(),
            ))
        }
    };

    // Health-check node ports listen on the wildcard, or on the local addresses allowed by
    // --nodeport-addresses.
    let hc_addresses: Vec<IpAddr> = if args.rules.nodeport_addresses.is_empty() {
        Vec::new()
    } else {
        families
            .iter()
            .flat_map(|f| local_addresses(*f))
            .filter(|ip| args.rules.nodeport_addresses.iter().any(|n| n.contains(ip)))
            .collect()
    };
    let sync_loop = SyncLoop {
        families: family_syncs,
        scheduler: Scheduler::new(Timing::new(
            args.iptables_min_sync_period,
            args.iptables_sync_period,
        )),
        source: rx,
        health: health.clone(),
        servers: ServiceHealthServers::new(health, hc_addresses),
        metrics,
        name_source: source,
        observed_trigger: 0,
    };
    sync_loop.run(shutdown_signal()).await;
    source_task.abort();
    if let Some(task) = events_task {
        task.abort();
    }
    healthz_task.abort();
    metrics_task.abort();
    Ok(ExitCode::SUCCESS)
}

/// Starts recording the node-name Events on knat's own Pod (from the downward API variables
/// POD_NAME, POD_NAMESPACE and POD_UID); without a Pod name there is nothing to attach them to.
fn node_events(
    client: &kube::Client,
    node_name: &str,
    source: NameSource,
    rx: &tokio::sync::watch::Receiver<SourceState>,
    metrics: &Arc<Metrics>,
) -> Option<tokio::task::JoinHandle<()>> {
    let env = |name| std::env::var(name).ok();
    match node_event::pod_reference(
        env("POD_NAME").as_deref(),
        env("POD_NAMESPACE").as_deref(),
        env("POD_UID").as_deref(),
    ) {
        Ok(pod) => Some(tokio::spawn(node_event::run(
            node_event::recorder(client.clone(), node_name),
            pod,
            node_name.to_string(),
            source,
            rx.clone(),
            metrics.clone(),
        ))),
        Err(err @ PodRefError::NoName) => {
            tracing::debug!("{err}");
            None
        }
        Err(err) => {
            tracing::warn!("{err}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("10").is_err());
    }
}
