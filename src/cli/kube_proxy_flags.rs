//! kube-proxy's command-line flags that `knat run` accepts beside its own, so that a
//! kube-proxy DaemonSet's arguments work unchanged: the ones with an effect (`--proxy-mode`,
//! `--feature-gates`, `-v`, `--cleanup`), the ones accepted with a warning because knat has
//! nothing to do with them, and the ones refused with a message (docs/operations.md, "Flags").

use clap::parser::ValueSource;

use knat::kube_proxy_config::feature_gates::{self, Verdict};

/// True when the argument `id` was given on the command line (not defaulted, not from the
/// environment): such a flag wins over the `--config` file.
pub fn explicit(matches: &clap::ArgMatches, id: &str) -> bool {
    matches!(
        matches.try_get_raw(id).ok().and(matches.value_source(id)),
        Some(ValueSource::CommandLine)
    )
}

/// kube-proxy's flags that knat implements differently or not at all.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "kube-proxy compatibility")]
pub struct KubeProxyFlags {
    /// kube-proxy's proxy mode: only `iptables` (or empty) is accepted.
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,
    /// `NAME=BOOL,...`: the gates of kube-proxy's iptables mode are checked, others ignored
    /// with a warning. A gate given here wins over the file's `featureGates`.
    #[arg(long, value_name = "GATES")]
    pub feature_gates: Vec<String>,
    /// Log verbosity as klog's `-v`: 0-3 info, 4-5 debug, 6 and more trace (RUST_LOG wins).
    #[arg(short = 'v', long = "v", value_name = "N")]
    pub verbosity: Option<u32>,
    /// Remove every chain and jump knat or kube-proxy installed, then exit (`knat cleanup`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub cleanup: bool,
    /// Print knat's version and exit, as kube-proxy's `--version[=true|raw]` (`=false`: run).
    #[arg(long, value_name = "true|raw|false", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    pub version: Option<String>,

    // Accepted; knat does not write conntrack sysctls (a warning says so).
    #[arg(long, hide = true, value_name = "N")]
    pub conntrack_max_per_core: Option<String>,
    #[arg(long, hide = true, value_name = "N")]
    pub conntrack_min: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub conntrack_tcp_timeout_established: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub conntrack_tcp_timeout_close_wait: Option<String>,
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub conntrack_tcp_be_liberal: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub conntrack_udp_timeout: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub conntrack_udp_timeout_stream: Option<String>,

    // Accepted with a warning: nothing in knat to apply them to.
    #[arg(long, hide = true, value_name = "DURATION")]
    pub config_sync_period: Option<String>,
    #[arg(long, hide = true, value_name = "QPS")]
    pub kube_api_qps: Option<String>,
    #[arg(long, hide = true, value_name = "N")]
    pub kube_api_burst: Option<String>,
    #[arg(long, hide = true, value_name = "TYPE")]
    pub kube_api_content_type: Option<String>,
    #[arg(long, hide = true, value_name = "N", allow_hyphen_values = true)]
    pub oom_score_adj: Option<String>,
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub profiling: Option<String>,
    #[arg(long, hide = true, value_name = "VERSION")]
    pub show_hidden_metrics_for_version: Option<String>,
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub bind_address_hard_fail: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub ipvs_sync_period: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub ipvs_min_sync_period: Option<String>,
    #[arg(long, hide = true, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,
    #[arg(long, hide = true, value_name = "CIDRS")]
    pub ipvs_exclude_cidrs: Option<String>,
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ipvs_strict_arp: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,
    #[arg(long, hide = true, value_name = "PATTERN")]
    pub vmodule: Option<String>,
    #[arg(long, hide = true, value_name = "DURATION")]
    pub log_flush_frequency: Option<String>,
    #[arg(long, hide = true, value_name = "FORMAT")]
    pub logging_format: Option<String>,
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub log_text_split_stream: Option<String>,
    #[arg(long, hide = true, value_name = "SIZE")]
    pub log_text_info_buffer_size: Option<String>,
    #[arg(long, hide = true, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub log_json_split_stream: Option<String>,
    #[arg(long, hide = true, value_name = "SIZE")]
    pub log_json_info_buffer_size: Option<String>,

    // Refused with a message.
    #[arg(long, value_name = "URL", hide = true)]
    pub master: Option<String>,
    #[arg(long, value_name = "PORT", hide = true)]
    pub healthz_port: Option<String>,
    #[arg(long, value_name = "PORT", hide = true)]
    pub metrics_port: Option<String>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", hide = true)]
    pub init_only: Option<String>,
    #[arg(long, value_name = "FILE", hide = true)]
    pub write_config_to: Option<String>,
}

impl KubeProxyFlags {
    /// True when `--version` asks for the version instead of a run.
    pub fn version_requested(&self) -> bool {
        self.version.as_deref().is_some_and(|v| v != "false")
    }
}

/// A kube-proxy flag knat will not run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{flag}: {message}")]
pub struct Refused {
    pub flag: String,
    pub message: String,
}

impl KubeProxyFlags {
    /// kube-proxy flags given that knat refuses, each with what to do instead.
    pub fn refused(&self) -> Result<(), Refused> {
        let refuse = |flag: &str, message: &str| {
            Err(Refused {
                flag: flag.into(),
                message: message.into(),
            })
        };
        if self.master.is_some() {
            return refuse(
                "--master",
                "not supported: put the API server's address in the kubeconfig (--kubeconfig)",
            );
        }
        if self.healthz_port.is_some() {
            return refuse(
                "--healthz-port",
                "not supported (deprecated in kube-proxy): use --healthz-bind-address IP:PORT",
            );
        }
        if self.metrics_port.is_some() {
            return refuse(
                "--metrics-port",
                "not supported (deprecated in kube-proxy): use --metrics-bind-address IP:PORT",
            );
        }
        if self.init_only.is_some() {
            return refuse(
                "--init-only",
                "not supported: knat's privileged initialisation is `knat node-setup` (the DaemonSet's init container)",
            );
        }
        if self.write_config_to.is_some() {
            return refuse(
                "--write-config-to",
                "not supported: knat does not write configuration files",
            );
        }
        let mode = self.proxy_mode.as_deref().unwrap_or("").trim();
        if !matches!(mode, "" | "iptables") {
            return refuse(
                "--proxy-mode",
                &format!(
                    "invalid value {mode:?}: knat is kube-proxy's iptables mode; only \"iptables\" is accepted"
                ),
            );
        }
        Ok(())
    }

    /// The `--feature-gates` given, in order (a later one wins).
    pub fn gates(&self) -> Result<Vec<(String, bool)>, Refused> {
        let mut out = Vec::new();
        for text in &self.feature_gates {
            let parsed = feature_gates::parse_flag(text).map_err(|message| Refused {
                flag: "--feature-gates".into(),
                message,
            })?;
            out.extend(parsed);
        }
        Ok(out)
    }

    /// One warning per flag given that knat accepts without applying.
    pub fn warnings(&self) -> Vec<String> {
        let conntrack = "knat does not set conntrack sysctls: the value is ignored (set the sysctl on the node if you rely on it)";
        let ipvs = "applies to mode ipvs only: ignored, as kube-proxy does in iptables mode";
        let logging = "knat writes text logs to stderr unbuffered: ignored";
        let given: [(&str, &Option<String>, &str); 30] = [
            (
                "--conntrack-max-per-core",
                &self.conntrack_max_per_core,
                conntrack,
            ),
            ("--conntrack-min", &self.conntrack_min, conntrack),
            (
                "--conntrack-tcp-timeout-established",
                &self.conntrack_tcp_timeout_established,
                conntrack,
            ),
            (
                "--conntrack-tcp-timeout-close-wait",
                &self.conntrack_tcp_timeout_close_wait,
                conntrack,
            ),
            (
                "--conntrack-tcp-be-liberal",
                &self.conntrack_tcp_be_liberal,
                conntrack,
            ),
            (
                "--conntrack-udp-timeout",
                &self.conntrack_udp_timeout,
                conntrack,
            ),
            (
                "--conntrack-udp-timeout-stream",
                &self.conntrack_udp_timeout_stream,
                conntrack,
            ),
            (
                "--config-sync-period",
                &self.config_sync_period,
                "knat's watches do not resync periodically: ignored",
            ),
            (
                "--kube-api-qps",
                &self.kube_api_qps,
                "knat's API client is not rate-limited: ignored",
            ),
            (
                "--kube-api-burst",
                &self.kube_api_burst,
                "knat's API client is not rate-limited: ignored",
            ),
            (
                "--kube-api-content-type",
                &self.kube_api_content_type,
                "knat's API client speaks JSON: ignored",
            ),
            (
                "--oom-score-adj",
                &self.oom_score_adj,
                "knat does not change its OOM score (set it in the Pod spec): ignored",
            ),
            (
                "--profiling",
                &self.profiling,
                "knat serves no /debug/pprof: ignored",
            ),
            (
                "--show-hidden-metrics-for-version",
                &self.show_hidden_metrics_for_version,
                "knat exports its own metrics: ignored",
            ),
            (
                "--bind-address-hard-fail",
                &self.bind_address_hard_fail,
                "knat always exits when it cannot bind its servers: ignored",
            ),
            ("--ipvs-sync-period", &self.ipvs_sync_period, ipvs),
            ("--ipvs-min-sync-period", &self.ipvs_min_sync_period, ipvs),
            ("--ipvs-scheduler", &self.ipvs_scheduler, ipvs),
            ("--ipvs-exclude-cidrs", &self.ipvs_exclude_cidrs, ipvs),
            ("--ipvs-strict-arp", &self.ipvs_strict_arp, ipvs),
            ("--ipvs-tcp-timeout", &self.ipvs_tcp_timeout, ipvs),
            ("--ipvs-tcpfin-timeout", &self.ipvs_tcpfin_timeout, ipvs),
            ("--ipvs-udp-timeout", &self.ipvs_udp_timeout, ipvs),
            (
                "--vmodule",
                &self.vmodule,
                "not supported: use RUST_LOG with per-module directives",
            ),
            ("--log-flush-frequency", &self.log_flush_frequency, logging),
            ("--logging-format", &self.logging_format, logging),
            (
                "--log-text-split-stream",
                &self.log_text_split_stream,
                logging,
            ),
            (
                "--log-text-info-buffer-size",
                &self.log_text_info_buffer_size,
                logging,
            ),
            (
                "--log-json-split-stream",
                &self.log_json_split_stream,
                logging,
            ),
            (
                "--log-json-info-buffer-size",
                &self.log_json_info_buffer_size,
                logging,
            ),
        ];
        given
            .iter()
            .filter_map(|(flag, value, why)| {
                value
                    .as_ref()
                    .map(|v| format!("kube-proxy flag {flag}={v} is accepted but {why}"))
            })
            .collect()
    }
}

/// Checks the `--feature-gates` given (the file's `featureGates` were checked when it was
/// read): a refused gate is an error, an ignored one a warning.
pub fn check_flag_gates(
    flags: &[(String, bool)],
    warnings: &mut Vec<String>,
) -> Result<(), Refused> {
    for (name, value) in flags {
        match feature_gates::check(name, *value) {
            Verdict::Honoured => {}
            Verdict::Ignored(why) => {
                warnings.push(format!("--feature-gates {name}={value}: {why}"))
            }
            Verdict::Refused(why) => {
                return Err(Refused {
                    flag: "--feature-gates".into(),
                    message: format!("{name}={value}: {why}"),
                });
            }
        }
    }
    Ok(())
}

/// The `tracing` filter for a klog verbosity.
pub fn log_filter(verbosity: u32) -> &'static str {
    match verbosity {
        0..=3 => "info",
        4..=5 => "debug",
        _ => "trace",
    }
}
