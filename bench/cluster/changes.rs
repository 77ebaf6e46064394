//! One endpoint change at a time, measured on each proxy alone, and the restore floor.
//!
//! While one proxy's change is measured, the other is stopped (SIGSTOP by the PID the
//! benchmark started); it is continued afterwards and must program the same change before the
//! next one is made, so every latency counts only one proxy's work on an idle machine. The
//! floor is knat's own one-change payload, as its wrapper staged it, replayed alone against
//! knat's table through the same `iptables-restore` with the same arguments, both proxies
//! stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::api::Objects;
use crate::proxy::{Running, Side};
use crate::sys::{self, BenchError, io_err};

/// How long a proxy gets to program one change.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Quiet time before each change: well past `--iptables-min-sync-period`.
const SETTLE: Duration = Duration::from_secs(3);

/// One measured change on one proxy.
#[derive(Debug, Clone)]
pub struct Change {
    /// API write -> end of the restore that declared the new SEP chain.
    pub latency: Duration,
    /// Bytes of every restore that ended after the write.
    pub bytes: u64,
    pub calls: usize,
    /// API write -> start of that restore (the wrapper's stamp after staging the payload).
    pub restore_start: Option<Duration>,
    /// That restore's own duration (the wrapper's stamps around the real binary).
    pub restore_took: Option<Duration>,
    /// Its payload (kept by the wrapper) and arguments.
    pub payload: Option<PathBuf>,
    pub args: Vec<String>,
}

/// The restore floor at one size.
#[derive(Debug, Clone, Default)]
pub struct Floor {
    /// Milliseconds per replay, sorted.
    pub samples: Vec<f64>,
    /// Bytes replayed (after dropping `-X` lines).
    pub bytes: u64,
    /// `-X` lines dropped (the chain they delete is already gone).
    pub dropped: usize,
    pub args: Vec<String>,
}

impl Floor {
    pub fn median(&self) -> Option<f64> {
        self.samples.get(self.samples.len() / 2).copied()
    }
}

/// Stopped proxies (by PID), continued when dropped, on every exit path.
struct Paused(Vec<u32>);

impl Paused {
    fn all_but(running: &[Option<Running>], keep: Option<usize>) -> Paused {
        let pids: Vec<u32> = running
            .iter()
            .enumerate()
            .filter(|(j, _)| Some(*j) != keep)
            .filter_map(|(_, r)| r.as_ref().map(|r| r.daemon.pid()))
            .collect();
        for pid in &pids {
            sys::signal_pause(*pid, true);
        }
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for pid in &self.0 {
            sys::signal_pause(*pid, false);
        }
    }
}

/// Waits until `r` programmed `chain` in a restore that ended after `wall`; returns its end.
fn wait_programmed(r: &mut Running, chain: &str, wall: f64) -> Result<f64, BenchError> {
    let start = Instant::now();
    loop {
        if let Some(end) = r.payloads.programmed(chain, wall) {
            return Ok(end);
        }
        if start.elapsed() > CHANGE_TIMEOUT {
            return Err(BenchError::Timeout {
                what: format!("{chain} from {}", r.side.label),
                waited: CHANGE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0))
}

/// `count` rounds; in each, every running proxy gets its own change (a different Service),
/// measured with the others stopped. Returns the changes per side (same order as `running`).
pub fn single_changes(
    runtime: &tokio::runtime::Runtime,
    objects: &Objects,
    running: &mut [Option<Running>],
    count: u32,
    size: usize,
) -> Result<Vec<Vec<Change>>, BenchError> {
    let mut out = vec![Vec::new(); running.len()];
    let mut k = 0usize;
    for n in 0..count {
        for i in 0..running.len() {
            if running[i].is_none() {
                continue;
            }
            std::thread::sleep(SETTLE);
            let svc = (size / 2 + k * 37) % size;
            k += 1;
            let paused = Paused::all_but(running, Some(i));
            let wall = sys::epoch_now();
            let ip = runtime.block_on(objects.change_endpoint(svc, 0))?;
            let chain = objects.sep_chain(svc, ip);
            let Some(r) = running[i].as_mut() else {
                continue;
            };
            let end = wait_programmed(r, &chain, wall)?;
            drop(paused);
            // The others catch up before the next change.
            for (j, other) in running.iter_mut().enumerate() {
                if let (true, Some(o)) = (j != i, other.as_mut()) {
                    wait_programmed(o, &chain, wall)?;
                }
            }
            let Some(r) = running[i].as_ref() else {
                continue;
            };
            let calls: Vec<_> = r.restores().into_iter().filter(|c| c.end >= wall).collect();
            let bytes: u64 = calls.iter().map(|c| c.bytes).sum();
            // The call that programmed the chain: the first successful one ending at `end`.
            let call = calls.iter().find(|c| c.exit == 0 && c.end >= end - 1e-6);
            let change = Change {
                latency: secs(end - wall),
                bytes,
                calls: calls.len(),
                restore_start: call.and_then(|c| c.start).map(|s| secs(s - wall)),
                restore_took: call.and_then(|c| c.start.map(|s| secs(c.end - s))),
                payload: call.and_then(|c| c.payload.clone()),
                args: call.map(|c| c.args.clone()).unwrap_or_default(),
            };
            crate::log(&format!(
                "{}: endpoint change {n} at {size} (svc {svc}, the other proxy stopped): {:.0?}, restore started after {:.0?} and took {:.0?}; {bytes} bytes in {} restore(s)",
                r.side.label,
                change.latency,
                change.restore_start.unwrap_or_default(),
                change.restore_took.unwrap_or_default(),
                change.calls
            ));
            out[i].push(change);
        }
    }
    Ok(out)
}

/// Replays `change`'s payload `runs` times in `side`'s namespace with every proxy stopped.
/// A payload that deleted a chain (`-X`) would fail on that line (the chain is gone): such
/// lines are dropped.
pub fn floor(
    me: &Path,
    side: &Side,
    running: &[Option<Running>],
    change: &Change,
    runs: u32,
    work: &Path,
    size: usize,
) -> Result<Floor, BenchError> {
    let source = change.payload.as_ref().ok_or_else(|| BenchError::Command {
        command: "restore floor".into(),
        detail: format!("no staged payload for {}'s change at {size}", side.label),
    })?;
    let text =
        std::fs::read_to_string(source).map_err(io_err(format!("read {}", source.display())))?;
    let mut dropped = 0;
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("-X ") {
            dropped += 1;
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    let path = work.join(format!("floor-{size}.payload"));
    std::fs::write(&path, &kept).map_err(io_err(format!("write {}", path.display())))?;
    let restore = format!(
        "/usr/sbin/{}",
        sys::IptBackend::current().binary("iptables-restore")
    );
    let mut args = vec![
        "helper-replay".to_string(),
        path.display().to_string(),
        runs.to_string(),
        SETTLE.as_millis().to_string(),
        side.lock_file.display().to_string(),
        restore,
    ];
    args.extend(change.args.iter().cloned());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let paused = Paused::all_but(running, None);
    let out = sys::netns_run(&side.namespace, &me.display().to_string(), &arg_refs);
    drop(paused);
    let mut samples: Vec<f64> = out?.lines().filter_map(|l| l.trim().parse().ok()).collect();
    samples.sort_by(f64::total_cmp);
    let floor = Floor {
        samples,
        bytes: kept.len() as u64,
        dropped,
        args: change.args.clone(),
    };
    crate::log(&format!(
        "restore floor at {size}: {} bytes ({dropped} -X lines dropped), {} replays, median {:.0} ms (min {:.0}, max {:.0})",
        floor.bytes,
        floor.samples.len(),
        floor.median().unwrap_or(f64::NAN),
        floor.samples.first().copied().unwrap_or(f64::NAN),
        floor.samples.last().copied().unwrap_or(f64::NAN),
    ));
    Ok(floor)
}

/// The side index of knat (the floor is knat's payload against knat's table).
pub fn knat_index(sides: &[Side]) -> Option<usize> {
    sides
        .iter()
        .position(|s| s.kind() == knat_testbed::control_plane::ProxyKind::Knat)
}
