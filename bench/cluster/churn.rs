//! Churn: 50 endpoint changes per second (different Services, one endpoint each) for a while;
//! every 10th change is sampled (API write -> SEP chain in the kernel, from each proxy's
//! wrapper record), and each proxy's CPU (its own plus its waited-for children's: the wrapper
//! and iptables-restore) is read from `/proc` over the window.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use crate::api;
use crate::payloads;
use crate::proxy::Running;
use crate::report::{self, Latency};
use crate::sys::{self, BenchError};

/// Churn rate: changes per second, and one sampled change in this many.
pub const CHURN_RATE: u64 = 50;
const SAMPLE_EVERY: u64 = 10;

/// What one churn window measured: per side (same order as `running`, `None` where a proxy
/// is not running), and when the changes were issued.
#[derive(Debug, Default)]
pub struct ChurnRun {
    pub sides: Vec<Option<report::Churn>>,
    pub issued: Duration,
    pub window: Duration,
    pub errors: u32,
}

/// A sampled churn change waiting to show up.
struct Pending {
    chain: String,
    /// Just before the API write, seconds since the epoch.
    written: f64,
}

/// `secs` seconds of churn at `size` Services.
pub fn churn(
    runtime: &tokio::runtime::Runtime,
    objects: &Arc<api::Objects>,
    running: &[Option<Running>],
    secs: u64,
    size: usize,
) -> Result<ChurnRun, BenchError> {
    let mut result = ChurnRun::default();
    if secs == 0 {
        return Ok(result);
    }
    let live: Vec<&Running> = running.iter().flatten().collect();
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<_> = live.iter().map(|r| r.stats()).collect::<Result<_, _>>()?;
    let total = secs * CHURN_RATE;
    let mut senders = Vec::new();
    let mut pollers = Vec::new();
    let deadline_after = Duration::from_secs(secs + 60);
    let begin = Instant::now();
    for r in &live {
        let (tx, rx) = mpsc::channel::<Pending>();
        senders.push(tx);
        let index = payloads::PayloadIndex::new(r.restore_log.clone());
        pollers.push(std::thread::spawn(move || {
            poll_pending(index, &rx, begin + deadline_after)
        }));
    }
    let errors = runtime.block_on(async {
        let mut ticker = tokio::time::interval(Duration::from_millis(1000 / CHURN_RATE));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..total {
            ticker.tick().await;
            let svc = ((k as usize) * 7919 + 13) % size;
            let slot = (k as usize) % api::ENDPOINTS;
            let senders = if k % SAMPLE_EVERY == 0 {
                senders.clone()
            } else {
                Vec::new()
            };
            let objects = Arc::clone(objects);
            tasks.spawn(async move {
                let written = sys::epoch_now();
                let ip = objects.change_endpoint(svc, slot).await?;
                let chain = objects.sep_chain(svc, ip);
                for tx in &senders {
                    let _ = tx.send(Pending {
                        chain: chain.clone(),
                        written,
                    });
                }
                Ok::<(), BenchError>(())
            });
        }
        let mut errors = 0u32;
        while let Some(done) = tasks.join_next().await {
            if !matches!(done, Ok(Ok(()))) {
                errors += 1;
            }
        }
        errors
    });
    let issued = begin.elapsed();
    drop(senders);
    let mut lat = Vec::new();
    for handle in pollers {
        lat.push(handle.join().unwrap_or_default());
    }
    let after: Vec<_> = live.iter().map(|r| r.stats()).collect::<Result<_, _>>()?;
    let window = begin.elapsed();
    crate::log(&format!(
        "churn: {total} changes issued in {issued:.1?} ({errors} failed); measured over {window:.1?}"
    ));
    let mut measured = Vec::new();
    for (i, r) in live.iter().enumerate() {
        let (samples, missing) = lat.get(i).cloned().unwrap_or_default();
        let mut sorted = samples;
        sorted.sort_by(f64::total_cmp);
        let cpu_self = after[i].cpu_self - before[i].cpu_self;
        let cpu_children = after[i].cpu_children - before[i].cpu_children;
        let latency = Latency::from_sorted(&sorted, missing);
        crate::log(&format!(
            "{}: churn latency p50 {:.0} ms p99 {:.0} ms ({} samples, {missing} not seen); CPU {cpu_self:.1} s + children {cpu_children:.1} s",
            r.side.label,
            latency.p50,
            latency.p99,
            sorted.len()
        ));
        measured.push(report::Churn {
            latency,
            cpu_self,
            cpu_children,
        });
    }
    let mut measured = measured.into_iter();
    result.sides = running
        .iter()
        .map(|r| r.as_ref().and_then(|_| measured.next()))
        .collect();
    result.issued = issued;
    result.window = window;
    result.errors = errors;
    Ok(result)
}

/// Polls a node for the pending chains until the channel closes and nothing is pending (or
/// the deadline passes); returns the latencies in milliseconds and how many were never seen.
fn poll_pending(
    mut index: payloads::PayloadIndex,
    rx: &mpsc::Receiver<Pending>,
    deadline: Instant,
) -> (Vec<f64>, usize) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut done = Vec::new();
    let mut closed = false;
    loop {
        loop {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if (closed && pending.is_empty()) || Instant::now() > deadline {
            break;
        }
        index.refresh();
        pending.retain(|p| match index.programmed(&p.chain, p.written) {
            Some(end) => {
                done.push((end - p.written).max(0.0) * 1000.0);
                false
            }
            None => true,
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    (done, pending.len())
}
