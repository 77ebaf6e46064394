//! One proxy under test (knat or upstream kube-proxy) in its node namespace: started through
//! `env PATH=<wrapper dir>:...` so that its `iptables-restore` calls go through the counting
//! wrapper, watched through `/proc`, and asked (through the wrapper's record) when a chain
//! reached the kernel.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use knat_testbed::control_plane::{Daemon, K8sBinaries, ProxyKind, ProxyOptions};

use crate::payloads::PayloadIndex;
use crate::sys::{self, BenchError, ProcStats, RestoreCall};

/// Static description of one side.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Side {
    /// `knat` or `kube-proxy`.
    pub label: String,
    /// The Node name (`--hostname-override`).
    pub node: String,
    /// The node's network namespace.
    pub namespace: String,
    pub kubeconfig: PathBuf,
    /// The node's own xtables lock file (`XTABLES_LOCKFILE`): real nodes do not share
    /// `/run/xtables.lock`, so neither proxy's legacy restores wait for the other's.
    pub lock_file: PathBuf,
}

impl Side {
    pub fn kind(&self) -> ProxyKind {
        if self.label == "knat" {
            ProxyKind::Knat
        } else {
            ProxyKind::KubeProxy
        }
    }
}

/// A running proxy.
pub struct Running {
    pub side: Side,
    pub daemon: Daemon,
    /// When the proxy was spawned, seconds since the epoch (the wrapper's clock).
    pub started_wall: f64,
    pub restore_log: PathBuf,
    /// Which chains each restore declared (see `payloads`).
    pub payloads: PayloadIndex,
}

/// Everything needed to start proxies.
pub struct Launcher {
    pub knat: PathBuf,
    pub binaries: K8sBinaries,
    pub work: PathBuf,
    pub cluster_cidr: String,
    pub min_sync: String,
    /// `--upstream-bulk-zero`: kube-proxy's large restores get knat's `-Z` (iptables-nft).
    pub upstream_bulk_zero: bool,
}

impl Launcher {
    /// Starts `side`'s proxy with a fresh restore log.
    pub fn start(&self, side: &Side, run: &str) -> Result<Running, BenchError> {
        let wrap = self.work.join(format!("wrap-{}", side.label));
        let restore_log = self.work.join(format!("{}-{run}.restores", side.label));
        let _ = std::fs::remove_file(&restore_log);
        // Each proxy looks up its restore binary by name on PATH: kube-proxy `iptables-restore`,
        // knat `iptables-<backend>-restore` (--iptables-backend). Both resolve to the run's
        // backend; kube-proxy's other front-ends (`iptables`, `iptables-save`, ...) are linked
        // to the same backend in the wrapper directory.
        let backend = sys::IptBackend::current();
        let restore = backend.binary("iptables-restore");
        sys::write_restore_wrapper(
            &wrap,
            &["iptables-restore", restore.as_str()],
            &format!("/usr/sbin/{restore}"),
            &restore_log,
            (self.upstream_bulk_zero && side.kind() == ProxyKind::KubeProxy)
                .then_some(knat::backend::NFT_BULK_CHAINS),
        )?;
        for tool in [
            "iptables",
            "iptables-save",
            "ip6tables",
            "ip6tables-save",
            "ip6tables-restore",
        ] {
            let link = wrap.join(tool);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("/usr/sbin/{}", backend.binary(tool)), &link)
                .map_err(|e| BenchError::Command {
                    command: format!("symlink {}", link.display()),
                    detail: e.to_string(),
                })?;
        }
        let options = ProxyOptions {
            kind: side.kind(),
            node_name: side.node.clone(),
            kubeconfig: side.kubeconfig.clone(),
            cluster_cidr: self.cluster_cidr.clone(),
            min_sync_period: self.min_sync.clone(),
            // No periodic full resync during the run (kube-proxy would rewrite KUBE-SERVICES
            // in a new order every 30 s); the same for both.
            extra: vec!["--iptables-sync-period=1h".to_string()],
        };

        let program = match side.kind() {
            ProxyKind::Knat => self.knat.clone(),
            ProxyKind::KubeProxy => self.binaries.path("kube-proxy"),
        };
        let mut args = vec![
            format!(
                "PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                wrap.display()
            ),
            format!("{}={}", sys::LOCK_ENV, side.lock_file.display()),
            program.display().to_string(),
        ];
        // knat's backend flag (the e2e options say nft) follows the run's backend.
        args.extend(options.args().into_iter().map(|a| {
            if a.starts_with("--iptables-backend=") {
                format!("--iptables-backend={}", backend.name())
            } else {
                a
            }
        }));
        let log = self.work.join(format!("{}-{run}.log", side.label));
        let started_wall = sys::epoch_now();
        let daemon = Daemon::spawn(
            &side.label,
            &side.namespace,
            Path::new("/usr/bin/env"),
            &args,
            &log,
        )?;
        Ok(Running {
            side: side.clone(),
            daemon,
            started_wall,
            payloads: PayloadIndex::new(restore_log.clone()),
            restore_log,
        })
    }
}

impl Running {
    pub fn stats(&self) -> Result<ProcStats, BenchError> {
        sys::proc_stats(self.daemon.pid())
    }

    pub fn restores(&self) -> Vec<RestoreCall> {
        sys::restore_calls(&self.restore_log)
    }

    /// SIGCONT: a proxy stopped for another's measurement (see `changes`) runs again.
    pub fn resume(&self) {
        sys::signal_pause(self.daemon.pid(), false);
    }

    /// Waits until a restore that declares `chain` has returned successfully; returns the time
    /// from the proxy's start to the end of that restore.
    pub fn wait_chain(&mut self, chain: &str, timeout: Duration) -> Result<Duration, BenchError> {
        let begin = Instant::now();
        loop {
            if let Some(end) = self.payloads.programmed(chain, self.started_wall) {
                return Ok(Duration::from_secs_f64((end - self.started_wall).max(0.0)));
            }
            if !self.daemon.is_running() {
                return Err(BenchError::Command {
                    command: self.side.label.clone(),
                    detail: format!("exited; log tail:\n{}", self.daemon.log_tail(20)),
                });
            }
            if begin.elapsed() > timeout {
                return Err(BenchError::Timeout {
                    what: format!(
                        "{} to program {chain}; log tail:\n{}",
                        self.side.label,
                        self.daemon.log_tail(20)
                    ),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the proxy and removes every rule from its namespace (`nft flush ruleset` inside
    /// the node namespace only), so the next start is cold.
    pub fn stop(mut self) -> Result<(), BenchError> {
        if self.daemon.is_running() {
            self.resume();
            sys::kill_descendants(self.daemon.pid());
        }
        self.daemon.stop();
        flush(&self.side)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // On an error path: no wrapper or iptables-restore may outlive the run. Only while
        // the proxy is our unreaped child, so its PID cannot belong to anyone else.
        if self.daemon.is_running() {
            self.resume();
            sys::kill_descendants(self.daemon.pid());
        }
    }
}

/// Removes every rule of the run's backend in a side's (lab) namespace.
pub fn flush(side: &Side) -> Result<(), BenchError> {
    let namespace = side.namespace.as_str();
    match sys::IptBackend::current() {
        sys::IptBackend::Nft => sys::netns_run(namespace, "nft", &["flush", "ruleset"]).map(drop),
        sys::IptBackend::Legacy => {
            for table in ["nat", "filter", "mangle"] {
                for op in ["-F", "-X"] {
                    sys::netns_run_locked(
                        namespace,
                        &side.lock_file,
                        "iptables-legacy",
                        &["-t", table, op],
                    )?;
                }
            }
            Ok(())
        }
    }
}
