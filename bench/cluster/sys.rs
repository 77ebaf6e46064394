//! Small process helpers for the cluster benchmark: running commands inside network
//! namespaces, reading `/proc` accounting of the proxies, the `iptables-restore` wrapper that
//! counts the bytes each proxy hands to the kernel, and the two helper modes the benchmark runs
//! of itself inside namespaces (`helper-listen`, `helper-connect`).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Benchmark errors.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A command failed; stderr attached.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The control plane or lab failed.
    #[error(transparent)]
    ControlPlane(#[from] knat_testbed::control_plane::ControlPlaneError),
    #[error(transparent)]
    Lab(#[from] knat::lab::LabError),
    /// An API call failed.
    #[error("API {what}: {detail}")]
    Api { what: String, detail: String },
    /// Something did not happen in time.
    #[error("timed out after {waited:?}: {what}")]
    Timeout { what: String, waited: Duration },
    /// Bad command line or setup.
    #[error("usage: {0}")]
    Usage(String),
}

/// Maps an io error with context.
pub fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}

/// Runs `ip netns exec NS program args...`; returns (success, stdout, stderr).
pub fn netns_output(
    namespace: &str,
    program: &str,
    args: &[&str],
) -> Result<(bool, String, String), BenchError> {
    let out = Command::new("ip")
        .args(["netns", "exec", namespace, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("run {program} in {namespace}")))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Like [`netns_output`], but a failure is an error; returns stdout.
pub fn netns_run(namespace: &str, program: &str, args: &[&str]) -> Result<String, BenchError> {
    let (ok, out, err) = netns_output(namespace, program, args)?;
    if ok {
        Ok(out)
    } else {
        Err(BenchError::Command {
            command: format!("ip netns exec {namespace} {program} {}", args.join(" ")),
            detail: err.trim().to_string(),
        })
    }
}

/// Like [`netns_run`], with `XTABLES_LOCKFILE=lock` in the environment: iptables 1.8.9's
/// legacy front-ends (and `iptables-legacy-restore`) take their xtables lock on that file
/// instead of `/run/xtables.lock`, so each lab node has a lock of its own, as a real node
/// does (iptables-nft takes no such lock).
pub fn netns_run_locked(
    namespace: &str,
    lock: &Path,
    program: &str,
    args: &[&str],
) -> Result<String, BenchError> {
    let env = format!("{LOCK_ENV}={}", lock.display());
    let mut full = vec![env.as_str(), program];
    full.extend_from_slice(args);
    netns_run(namespace, "env", &full)
}

/// The environment variable iptables reads for its lock file's path.
pub const LOCK_ENV: &str = "XTABLES_LOCKFILE";

/// The iptables backend both proxies use in a run (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IptBackend {
    Nft,
    Legacy,
}

static BACKEND: std::sync::OnceLock<IptBackend> = std::sync::OnceLock::new();

impl IptBackend {
    /// Sets the backend of this process (once, from the options).
    pub fn select(self) {
        let _ = BACKEND.set(self);
    }

    /// The backend of this process (nft unless selected otherwise).
    pub fn current() -> IptBackend {
        BACKEND.get().copied().unwrap_or(IptBackend::Nft)
    }

    pub fn name(self) -> &'static str {
        match self {
            IptBackend::Nft => "nft",
            IptBackend::Legacy => "legacy",
        }
    }

    /// `iptables-nft` / `iptables-legacy` and the other front-end binaries.
    pub fn binary(self, tool: &str) -> String {
        match tool.split_once("tables") {
            Some((family, rest)) => format!("{family}tables-{}{rest}", self.name()),
            None => tool.to_string(),
        }
    }
}

/// CPU and memory accounting of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// utime + stime of the process itself, seconds.
    pub cpu_self: f64,
    /// cutime + cstime (waited-for children: iptables-restore and friends), seconds.
    pub cpu_children: f64,
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub hwm: u64,
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn proc_stats(pid: u32) -> Result<ProcStats, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(io_err(format!("read /proc/{pid}/stat")))?;
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14 => index 11.
    let num = |i: usize| -> f64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0.0) };
    let ticks = clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(io_err(format!("read /proc/{pid}/status")))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(ProcStats {
        cpu_self: (num(11) + num(12)) / ticks,
        cpu_children: (num(13) + num(14)) / ticks,
        rss: kb("VmRSS:"),
        hwm: kb("VmHWM:"),
    })
}

/// Ends (SIGKILL, by PID) every descendant of `pid`: the wrapper shells and the
/// `iptables-restore` they run outlive a proxy that is killed in the middle of a sync.
pub fn kill_descendants(pid: u32) {
    let mut parents = vec![pid];
    let mut found = Vec::new();
    // Bounded: a process tree of a proxy is a few levels deep.
    for _ in 0..8 {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let children: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| {
                        let rest = s.rsplit_once(')')?.1.to_string();
                        rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    .is_some_and(|ppid| parents.contains(&ppid))
            })
            .filter(|p| !found.contains(p))
            .collect();
        if children.is_empty() {
            break;
        }
        found.extend(&children);
        parents = children;
    }
    for p in found {
        if let Ok(p) = i32::try_from(p) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// One `iptables-restore` call seen by the wrapper.
#[derive(Debug, Clone)]
pub struct RestoreCall {
    /// Wall-clock end of the call, seconds since the epoch.
    pub end: f64,
    pub bytes: u64,
    pub exit: i32,
    /// The payload, kept by the wrapper (see `payloads`).
    pub payload: Option<PathBuf>,
    /// Wall-clock start of the real restore (after the wrapper staged the payload).
    pub start: Option<f64>,
    /// The arguments the proxy passed (e.g. `-w 5 -W 100000 --noflush --counters`).
    pub args: Vec<String>,
}

/// Writes wrapper scripts named `names` into `dir` that record each call's end time, payload
/// size, exit code, payload file, the real restore's start time and the arguments in `log`
/// and run `real` with the same arguments and payload. The payload is staged in a file in `dir` and kept (the benchmark reads which chains
/// it declares), so the wrapper adds the same small cost to both proxies.
pub fn write_restore_wrapper(
    dir: &Path,
    names: &[&str],
    real: &str,
    log: &Path,
    bulk_zero: Option<usize>,
) -> Result<(), BenchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    // `--upstream-bulk-zero`: a payload declaring more chains than the threshold gets `-Z`
    // after `*nat` (after the bytes are counted), as knat's backend does on iptables-nft.
    let zero = bulk_zero.map_or(String::new(), |threshold| {
        format!(
            "if [ \"$(grep -c '^:' \"$t\")\" -gt {threshold} ]; then sed -i '/^\\*nat$/a -Z' \"$t\"; fi\n"
        )
    });
    let script = format!(
        "#!/bin/sh\n\
         # knat cluster benchmark: count the bytes handed to iptables-restore.\n\
         t=$(mktemp -p '{dir}' payload.XXXXXX) || exit 1\n\
         cat > \"$t\"\n\
         n=$(wc -c < \"$t\")\n\
         {zero}\
         s=$(date +%s.%N)\n\
         {real} \"$@\" < \"$t\"\n\
         rc=$?\n\
         echo \"$(date +%s.%N) $n $rc $t $s $*\" >> '{log}'\n\
         exit $rc\n",
        dir = dir.display(),
        log = log.display(),
    );
    for name in names {
        let path = dir.join(name);
        std::fs::write(&path, &script).map_err(io_err(format!("write {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

/// The calls recorded in a wrapper log.
pub fn restore_calls(log: &Path) -> Vec<RestoreCall> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(RestoreCall {
                end: it.next()?.parse().ok()?,
                bytes: it.next()?.parse().ok()?,
                exit: it.next()?.parse().ok()?,
                payload: it.next().map(PathBuf::from),
                start: it.next().and_then(|t| t.parse().ok()),
                args: it.map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Seconds since the epoch, as the wrapper's `date +%s.%N` prints them.
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `helper-listen ADDR`: accepts TCP connections forever and closes them at once. Runs inside
/// a pod namespace; ended by its parent (PR_SET_PDEATHSIG) or by PID.
pub fn helper_listen(addr: &str) -> Result<(), BenchError> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| BenchError::Usage(format!("bad listen address {addr:?}: {e}")))?;
    let listener = TcpListener::bind(addr).map_err(io_err(format!("bind {addr}")))?;
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    for stream in listener.incoming() {
        drop(stream);
    }
    Ok(())
}

/// `helper-connect ADDR COUNT`: COUNT sequential TCP connects (each a new connection, so each
/// SYN walks the nat table); prints one line per connect: microseconds, or `fail`.
pub fn helper_connect(addr: &str, count: &str) -> Result<(), BenchError> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| BenchError::Usage(format!("bad address {addr:?}: {e}")))?;
    let count: u32 = count
        .parse()
        .map_err(|e| BenchError::Usage(format!("bad count {count:?}: {e}")))?;
    let mut out = std::io::stdout().lock();
    for _ in 0..count.min(100_000) {
        let start = Instant::now();
        let line = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => {
                let micros = start.elapsed().as_secs_f64() * 1e6;
                drop(stream);
                format!("{micros:.1}")
            }
            Err(_) => "fail".to_string(),
        };
        writeln!(out, "{line}").map_err(io_err("write a sample"))?;
    }
    Ok(())
}

/// `helper-replay PAYLOAD COUNT GAP_MS LOCK PROGRAM ARGS...`: runs `PROGRAM ARGS...` COUNT
/// times, each with PAYLOAD on stdin and `XTABLES_LOCKFILE=LOCK`, each after GAP_MS of idle
/// (the gap a measured change follows, so that no replay profits from the previous one's warm
/// kernel allocations); prints one line
/// per run: its wall time in milliseconds (spawn to exit). Any failing run is an error (its
/// stderr attached). Runs inside the node namespace, so no `ip netns exec` is timed.
pub fn helper_replay(args: &[String]) -> Result<(), BenchError> {
    let [payload, count, gap_ms, lock, program, rest @ ..] = args else {
        return Err(BenchError::Usage(
            "helper-replay PAYLOAD COUNT GAP_MS LOCK PROGRAM ARGS...".into(),
        ));
    };
    let gap = std::time::Duration::from_millis(
        gap_ms
            .parse()
            .map_err(|e| BenchError::Usage(format!("bad gap {gap_ms:?}: {e}")))?,
    );
    let count: u32 = count
        .parse()
        .map_err(|e| BenchError::Usage(format!("bad count {count:?}: {e}")))?;
    let mut out = std::io::stdout().lock();
    for _ in 0..count.min(1000) {
        std::thread::sleep(gap);
        let input = std::fs::File::open(payload).map_err(io_err(format!("open {payload}")))?;
        let start = Instant::now();
        let result = Command::new(program)
            .args(rest)
            .env(LOCK_ENV, lock)
            .stdin(Stdio::from(input))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(io_err(format!("run {program}")))?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if !result.status.success() {
            return Err(BenchError::Command {
                command: format!("{program} {} < {payload}", rest.join(" ")),
                detail: String::from_utf8_lossy(&result.stderr).trim().to_string(),
            });
        }
        writeln!(out, "{ms:.2}").map_err(io_err("write a sample"))?;
    }
    Ok(())
}

/// Sends SIGSTOP (`pause`) or SIGCONT to a process the benchmark started, by its PID.
pub fn signal_pause(pid: u32, pause: bool) {
    let signal = if pause {
        nix::sys::signal::Signal::SIGSTOP
    } else {
        nix::sys::signal::Signal::SIGCONT
    };
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), signal);
    }
}

/// This program's own path (for re-running itself inside namespaces).
pub fn self_exe() -> Result<PathBuf, BenchError> {
    std::env::current_exe().map_err(io_err("find the benchmark's own path"))
}

/// Percentile (nearest rank) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
