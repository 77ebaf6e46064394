//! `knat run`: the agent (the DaemonSet's process), from the API server or from files.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use knat::agent::events::{self, Outbox};
use knat::agent::family_sync::FamilySync;
use knat::agent::index::SourceState;
use knat::agent::loop_events::LoopEvents;
use knat::agent::node_event::{self, PodRefError};
use knat::agent::node_identity::{self, MISSING_NODE_FIX, NameSource};
use knat::agent::schedule::{DEFAULT_CPU_PERCENT, Scheduler, Timing};
use knat::agent::sync::SyncLoop;
use knat::agent::{capabilities, localnet};
use knat::agent::{files, watch as kwatch};
use knat::backend::nfacct::Nfacct;
use knat::backend::{self, Iptables, Mode};
use knat::config::ProxyConfig;
use knat::health::{self, AdminState, ProxyHealth, ServiceHealthServers};
use knat::metrics::Metrics;
use knat::model::IpFamily;

use knat::kube_proxy_config::settings::{HEALTHZ_PORT, METRICS_PORT};

use super::common::{FamilyArg, RuleFlags};
use super::kube_proxy_flags::{self, KubeProxyFlags};

/// `--iptables-backend` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// Detect as kubernetes-sigs iptables-wrappers does (kubelet hint chains, then rule counts).
    Auto,
    Nft,
    Legacy,
}

fn duration(text: &str) -> Result<Duration, String> {
    knat::kube_proxy_config::duration::parse_duration(text)
}

/// A bind-address flag: as kube-proxy's (`IP` or `IP:PORT`), and also `IP:0` for a port the
/// kernel chooses (the tests run many agents side by side; the config file keeps kube-proxy's
/// 1-65535 validation).
///
/// An empty value is the default address, as in kube-proxy v1.37: its `IPPortVar` flag ignores
/// an empty value (`--healthz-bind-address= --write-config-to=F` writes `0.0.0.0:10256`).
fn bind_address_flag(
    text: &str,
    default: SocketAddr,
    default_port: u16,
) -> Result<SocketAddr, String> {
    if text.trim().is_empty() {
        return Ok(default);
    }
    match text.trim().parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Ok(addr),
        _ => knat::kube_proxy_config::settings::parse_bind_address(text, default_port),
    }
}

fn healthz_address(text: &str) -> Result<SocketAddr, String> {
    let default = SocketAddr::from(([0, 0, 0, 0], HEALTHZ_PORT));
    bind_address_flag(text, default, HEALTHZ_PORT)
}

fn metrics_address(text: &str) -> Result<SocketAddr, String> {
    let default = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
    bind_address_flag(text, default, METRICS_PORT)
}

fn node_ip(text: &str) -> Result<IpAddr, String> {
    knat::model::convert::parse_ip_sloppy(text)
        .ok_or_else(|| format!("{text:?} is not a valid IP address"))
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
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub iptables_min_sync_period: Duration,
    /// Canary poll interval, maximum retry backoff; health times out after twice this.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub iptables_sync_period: Duration,
    /// Under sustained churn, the share of one CPU (percent) partial syncs may use: after a
    /// partial sync that cost C of CPU (knat's and iptables-restore's) and ended with changes
    /// waiting, the next starts no sooner than C * 100 / PERCENT after it started (at most one
    /// sync period later); 100 turns this off (knat only).
    #[arg(long, value_name = "PERCENT", default_value_t = DEFAULT_CPU_PERCENT,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub sync_cpu_percent: u32,
    /// Address of the /healthz and /livez server (IP:PORT, or IP for port 10256).
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = healthz_address)]
    pub healthz_bind_address: SocketAddr,
    /// Address of the /metrics server (IP:PORT, or IP for port 10249).
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = metrics_address)]
    pub metrics_bind_address: SocketAddr,
    /// The node's primary IP (kube-proxy's --bind-address: nothing is bound to it): used for
    /// `--nodeport-addresses primary` and the load-balancer source-range rules of its family.
    /// 0.0.0.0 or :: (the default) means the Node object's addresses.
    #[arg(long, value_parser = node_ip)]
    pub bind_address: Option<IpAddr>,
    #[arg(long, value_enum, default_value = "auto")]
    pub iptables_backend: BackendArg,
    /// IP families to program (default: IPv4, plus IPv6 when the host has it).
    #[arg(long = "ip-families", value_enum, value_delimiter = ',')]
    pub ip_families: Vec<FamilyArg>,
    /// How often --from-files polls the directory.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub files_poll_interval: Duration,
    #[command(flatten)]
    pub kube_proxy: KubeProxyFlags,
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
        if let Some(ip) = self.bind_address.filter(|ip| !ip.is_unspecified())
            && family.contains(&ip)
        {
            cfg.node_ips = vec![ip];
        }
        if !cfg.nodeports_match_all() || cfg.nodeport_primary {
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

/// The flags (argument id, spelling) that a `--config` file also sets.
const FILE_FIELD_FLAGS: &[(&str, &str)] = &[
    ("cluster_cidrs", "--cluster-cidr"),
    ("detect_local_mode", "--detect-local-mode"),
    ("pod_bridge_interface", "--pod-bridge-interface"),
    ("pod_interface_name_prefix", "--pod-interface-name-prefix"),
    ("masquerade_all", "--masquerade-all"),
    ("iptables_masquerade_bit", "--iptables-masquerade-bit"),
    ("nodeport_addresses", "--nodeport-addresses"),
    ("localhost_nodeports", "--localhost-nodeports"),
    ("kubeconfig", "--kubeconfig"),
    ("iptables_min_sync_period", "--iptables-min-sync-period"),
    ("iptables_sync_period", "--iptables-sync-period"),
    ("healthz_bind_address", "--healthz-bind-address"),
    ("metrics_bind_address", "--metrics-bind-address"),
    ("bind_address", "--bind-address"),
    ("feature_gates", "--feature-gates"),
];

/// Whether the command line set `id`. An empty bind address is no value there (see
/// `bind_address_flag`), so the file's address stays.
fn given(matches: &clap::ArgMatches, id: &str) -> bool {
    let empty_bind_address = matches!(id, "healthz_bind_address" | "metrics_bind_address")
        && matches
            .get_raw(id)
            .is_some_and(|mut raw| raw.all(|v| v.to_string_lossy().trim().is_empty()));
    kube_proxy_flags::explicit(matches, id) && !empty_bind_address
}

/// `knat run`'s arguments with the `--config` file applied and kube-proxy's flags checked:
/// ready to run, nothing touched yet.
#[derive(Debug)]
pub struct Prepared {
    pub args: RunArgs,
    /// To log once logging is set up.
    pub warnings: Vec<String>,
    /// `-v`, else the file's `logging.verbosity`.
    pub verbosity: Option<u32>,
}

/// Applies the `--config` file (a flag given on the command line wins) and validates what
/// kube-proxy validates. Any error here stops `knat run` before iptables is touched.
pub fn prepare(mut args: RunArgs, matches: &clap::ArgMatches) -> anyhow::Result<Prepared> {
    args.kube_proxy.refused()?;
    let mut warnings = Vec::new();
    let flag_gates = args.kube_proxy.gates()?;
    kube_proxy_flags::check_flag_gates(&flag_gates, &mut warnings)?;
    let mut verbosity = args.kube_proxy.verbosity;
    if let Some(path) = args.rules.config_file.clone() {
        let loaded = knat::kube_proxy_config::load(&path)?;
        warnings.extend(
            loaded
                .warnings
                .iter()
                .map(|w| format!("{}: {}", path.display(), w.message)),
        );
        let file = &loaded.settings;
        args.rules.apply_file(file, matches);
        let from_file = |id: &str| !given(matches, id);
        if from_file("hostname_override") && file.hostname_override.is_some() {
            args.hostname_override = file.hostname_override.clone();
        }
        if from_file("kubeconfig") && args.from_files.is_none() && file.kubeconfig.is_some() {
            args.kubeconfig = file.kubeconfig.clone();
        }
        if from_file("iptables_min_sync_period") {
            args.iptables_min_sync_period = file.min_sync_period;
        }
        if from_file("iptables_sync_period") {
            args.iptables_sync_period = file.sync_period;
        }
        if from_file("healthz_bind_address") {
            args.healthz_bind_address = file.healthz_bind_address;
        }
        if from_file("metrics_bind_address") {
            args.metrics_bind_address = file.metrics_bind_address;
        }
        if from_file("bind_address") {
            args.bind_address = Some(file.bind_address);
        }
        if verbosity.is_none() {
            verbosity = Some(file.verbosity);
        }
        // kube-proxy ignores these flags when --config is given; knat lets them win.
        let overriding: Vec<String> = FILE_FIELD_FLAGS
            .iter()
            .filter(|(id, _)| given(matches, id))
            .map(|(_, flag)| flag.to_string())
            .collect();
        if !overriding.is_empty() {
            warnings.push(format!(
                "flags given on the command line override {}: {} (kube-proxy would ignore them and use the file)",
                path.display(),
                overriding.join(" ")
            ));
        }
    }
    if args.iptables_sync_period.is_zero() {
        anyhow::bail!("--iptables-sync-period: invalid value 0s: must be greater than 0");
    }
    if args.iptables_min_sync_period > args.iptables_sync_period {
        anyhow::bail!(
            "--iptables-sync-period: invalid value {:?}: must be greater than or equal to --iptables-min-sync-period ({:?})",
            args.iptables_sync_period,
            args.iptables_min_sync_period
        );
    }
    warnings.extend(args.kube_proxy.warnings());
    Ok(Prepared {
        args,
        warnings,
        verbosity,
    })
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
    let (node_name, source) = resolve_node_name(&args)?;
    let families = args.families();
    let mode = iptables_mode(args.iptables_backend).await;
    let mut metrics = Metrics::new();
    let nfacct = capabilities::nfacct_client(args.rules.nfacct)?;
    if let Some(client) = &nfacct {
        metrics.register_nfacct(client.clone());
    }
    let metrics = Arc::new(metrics);
    let localnet_ok = localhost_nodeports_check(&args, &node_name, &families)?;
    let (family_syncs, localhost) =
        family_syncs(&args, &node_name, &families, mode, &nfacct, localnet_ok).await?;
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
    let Source {
        task: source_task,
        events_task,
        outbox_task,
        loop_events,
    } = start_source(&args, &node_name, source, tx, &rx, &metrics).await?;
    let sync_loop = SyncLoop {
        families: family_syncs,
        scheduler: Scheduler::new(
            Timing::new(args.iptables_min_sync_period, args.iptables_sync_period)
                .with_cpu_percent(args.sync_cpu_percent),
        ),
        source: rx,
        health: health.clone(),
        servers: ServiceHealthServers::new(health, health_check_addresses(&args, &families)),
        metrics,
        name_source: source,
        observed_trigger: 0,
        events: loop_events,
    };
    // As kube-proxy: a changed --config file ends the process, so that its pod restarts.
    let config_changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch_config = watch_config_file(&args, config_changed.clone());
    sync_loop
        .run(async {
            tokio::select! {
                () = shutdown_signal() => {}
                () = watch_config => {}
            }
        })
        .await;
    source_task.abort();
    for task in [events_task, outbox_task].into_iter().flatten() {
        task.abort();
    }
    healthz_task.abort();
    metrics_task.abort();
    if config_changed.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The running source of the sync loop's state, and what runs beside it for the API server.
struct Source {
    task: tokio::task::JoinHandle<()>,
    /// The node-name Events on knat's own Pod (API server, Pod known).
    events_task: Option<tokio::task::JoinHandle<()>>,
    /// Sends the Events the sync loop records (API server only).
    outbox_task: Option<tokio::task::JoinHandle<()>>,
    loop_events: Option<LoopEvents>,
}

/// Starts the static `--from-files` source, or the API-server watches with their Events.
async fn start_source(
    args: &RunArgs,
    node_name: &str,
    source: NameSource,
    tx: tokio::sync::watch::Sender<SourceState>,
    rx: &tokio::sync::watch::Receiver<SourceState>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Source> {
    let mut events_task = None;
    let mut outbox_task = None;
    let mut loop_events = None;
    let task = match &args.from_files {
        Some(dir) => {
            tracing::info!(dir = %dir.display(), "static source: reading manifests");
            tokio::spawn(files::run(
                dir.clone(),
                node_name.to_string(),
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
            let recorder = events::recorder(client.clone(), node_name);
            events_task = node_events(&recorder, node_name, source, rx, metrics);
            let (outbox, outgoing) = Outbox::new(metrics.clone());
            outbox_task = Some(tokio::spawn(events::run_outbox(
                recorder,
                outgoing,
                metrics.clone(),
            )));
            loop_events = Some(LoopEvents::new(outbox, node_name));
            tokio::spawn(kwatch::run(
                client,
                target,
                node_name.to_string(),
                tx,
                metrics.clone(),
            ))
        }
    };
    Ok(Source {
        task,
        events_task,
        outbox_task,
        loop_events,
    })
}

/// The node name (flag, `NODE_NAME` or the host name) and where it came from.
fn resolve_node_name(args: &RunArgs) -> anyhow::Result<(String, NameSource)> {
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
    Ok((node_name, source))
}

/// `--iptables-backend`, detected from the rules already in the kernel when `auto`.
async fn iptables_mode(arg: BackendArg) -> Mode {
    match arg {
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
    }
}

/// One [`FamilySync`] per IP family, with its configuration and capabilities; and whether
/// any family serves NodePorts on localhost.
async fn family_syncs(
    args: &RunArgs,
    node_name: &str,
    families: &[IpFamily],
    mode: Mode,
    nfacct: &Option<Arc<Nfacct>>,
    localnet_ok: bool,
) -> anyhow::Result<(Vec<FamilySync>, bool)> {
    let mut family_syncs = Vec::new();
    let mut localhost = false;
    for family in families {
        let mut cfg = args.config(node_name, *family, localnet_ok)?;
        localhost |= cfg.localhost_nodeports_effective();
        let ipt = Iptables::new(*family, mode);
        cfg.random_fully = capabilities::random_fully(args.rules.random_fully, &ipt).await;
        tracing::info!(family = family.label(), restore = %ipt.bins.restore, local_detector = ?cfg.local_detector, "programming family");
        if cfg.local_detector == knat::config::LocalDetector::None {
            tracing::info!(
                family = family.label(),
                "--detect-local-mode=ClusterCIDR but no --cluster-cidr of this family: pod traffic cannot be told apart (no ClusterIP masquerade rule, no pod short-circuit for Local services)"
            );
        }
        family_syncs.push(FamilySync::new(cfg, ipt).with_nfacct(nfacct.clone()));
    }
    Ok((family_syncs, localhost))
}

/// The addresses the health-check node ports listen on: the wildcard (empty), or the local
/// addresses allowed by `--nodeport-addresses`.
fn health_check_addresses(args: &RunArgs, families: &[IpFamily]) -> Vec<IpAddr> {
    // With `primary` alone the Node's IP is not known yet: the wildcard (or --bind-address).
    let (hc_nets, hc_primary) =
        knat::config::NodePortAddress::expand(&args.rules.nodeport_addresses);
    let mut hc_addresses: Vec<IpAddr> = families
        .iter()
        .flat_map(|f| local_addresses(*f))
        .filter(|ip| hc_nets.iter().any(|n| n.contains(ip)))
        .collect();
    if hc_primary && let Some(ip) = args.bind_address.filter(|ip| !ip.is_unspecified()) {
        hc_addresses.push(ip);
    }
    if hc_nets.is_empty() && (!hc_primary || hc_addresses.is_empty()) {
        hc_addresses.clear();
    }
    hc_addresses
}

/// Sets `changed` and returns when the `--config` file's content changes (never without a
/// file).
fn watch_config_file(
    args: &RunArgs,
    changed: Arc<std::sync::atomic::AtomicBool>,
) -> impl std::future::Future<Output = ()> + use<> {
    let flag = changed;
    let watched = args
        .rules
        .config_file
        .clone()
        .and_then(|path| std::fs::read(&path).ok().map(|initial| (path, initial)));
    async move {
        let Some((path, initial)) = watched else {
            return std::future::pending().await;
        };
        knat::kube_proxy_config::watch::changed(
            path.clone(),
            initial,
            knat::kube_proxy_config::watch::POLL_INTERVAL,
        )
        .await;
        tracing::error!(file = %path.display(), "the content of the --config file changed: exiting so that the pod restarts with it (as kube-proxy does); the rules stay in place");
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Starts recording the node-name Events on knat's own Pod (from the downward API variables
/// POD_NAME, POD_NAMESPACE and POD_UID); without a Pod name there is nothing to attach them to.
fn node_events(
    recorder: &kube::runtime::events::Recorder,
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
            recorder.clone(),
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
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    const KUBEADM: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kube-proxy-config/kubeadm.conf"
    );

    fn prepared(args: &[&str]) -> Result<Prepared, String> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("knat").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        prepare(cli.run, &matches).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn file_settings_apply_and_explicit_flags_win() {
        let p = prepared(&["--config", KUBEADM]).expect("kubeadm file");
        assert_eq!(
            p.args.rules.cluster_cidrs,
            vec![Some("10.244.0.0/16".parse().expect("cidr"))]
        );
        assert_eq!(
            p.args.kubeconfig.as_deref(),
            Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(p.verbosity, Some(0));
        assert!(!p.warnings.iter().any(|w| w.contains("override")));

        let p = prepared(&[
            "--config",
            KUBEADM,
            "--cluster-cidr",
            "10.100.0.0/16",
            "--iptables-masquerade-bit=9",
            "--iptables-sync-period",
            "10s",
            "--healthz-bind-address",
            "127.0.0.1",
            "-v",
            "5",
        ])
        .expect("flags and file");
        assert_eq!(
            p.args.rules.cluster_cidrs,
            vec![Some("10.100.0.0/16".parse().expect("cidr"))]
        );
        assert_eq!(p.args.rules.iptables_masquerade_bit, 9);
        assert_eq!(p.args.iptables_sync_period, Duration::from_secs(10));
        assert_eq!(p.args.iptables_min_sync_period, Duration::from_secs(1));
        assert_eq!(
            p.args.healthz_bind_address,
            "127.0.0.1:10256".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(p.verbosity, Some(5));
        let over = p
            .warnings
            .iter()
            .find(|w| w.contains("override"))
            .expect("override warning");
        assert!(
            over.contains("--cluster-cidr --iptables-masquerade-bit --iptables-sync-period --healthz-bind-address"),
            "{over}"
        );
    }

    #[test]
    fn an_empty_bind_address_is_the_default_as_in_kube_proxy() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let p = prepared(&["--healthz-bind-address=", "--metrics-bind-address="]).expect("empty");
        assert_eq!(p.args.healthz_bind_address, addr("0.0.0.0:10256"));
        assert_eq!(p.args.metrics_bind_address, addr("127.0.0.1:10249"));

        // With a file, an empty flag is no flag: the file's address stays, no override warning.
        let dir = std::env::temp_dir().join(format!("knat-empty-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("config.conf");
        let config = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n\
                      kind: KubeProxyConfiguration\n\
                      healthzBindAddress: 127.0.0.7:7777\n";
        std::fs::write(&file, config).expect("write");
        let path = file.to_str().expect("utf-8 path");
        let p = prepared(&["--config", path, "--healthz-bind-address="]).expect("file");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(p.args.healthz_bind_address, addr("127.0.0.7:7777"));
        assert!(
            !p.warnings.iter().any(|w| w.contains("override")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn version_is_kube_proxy_spelling() {
        let asks = |args: &[&str]| {
            prepared(args)
                .map(|p| p.args.kube_proxy.version_requested())
                .expect("parses")
        };
        assert!(asks(&["--version"]));
        assert!(asks(&["--version=raw"]));
        assert!(!asks(&["--version=false"]));
        assert!(!asks(&[]));
    }

    #[test]
    fn kube_proxy_flags_are_checked() {
        assert!(prepared(&["--proxy-mode", "iptables"]).is_ok());
        let err = prepared(&["--proxy-mode=nftables"]).expect_err("nftables");
        assert!(
            err.contains("--proxy-mode") && err.contains("nftables"),
            "{err}"
        );
        let err = prepared(&["--healthz-port", "0"]).expect_err("healthz-port");
        assert!(err.contains("--healthz-bind-address"), "{err}");
        let err =
            prepared(&["--feature-gates", "AllowServiceExternalIPs=false"]).expect_err("gate");
        assert!(err.contains("AllowServiceExternalIPs=false"), "{err}");
        let p = prepared(&[
            "--feature-gates=SomeGate=true",
            "--conntrack-max-per-core=0",
            "--oom-score-adj=-999",
            "--masquerade-all=false",
            "--iptables-localhost-nodeports=false",
            "--nodeport-addresses=primary,192.168.0.0/16",
        ])
        .expect("accepted");
        assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("SomeGate"));
        assert!(!p.args.rules.localhost_nodeports);
        assert!(!p.args.rules.masquerade_all);
        let err = prepared(&[
            "--iptables-min-sync-period=1m",
            "--iptables-sync-period=30s",
        ])
        .expect_err("min > sync");
        assert!(err.contains("--iptables-sync-period"), "{err}");
    }
}
