//! Continuous client traffic from inside a network namespace, counted: a thread joins the
//! client's namespace (`setns`, that thread only) and opens one HTTP/1.0 connection after
//! another to a target, recording every attempt's outcome and what the server answered.
//! Phases are marked by name so a test can ask "how many failed while knat took over".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

/// One connection attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Instant,
    pub phase: String,
    /// The body on success, the error otherwise.
    pub outcome: Result<String, String>,
}

/// Counts for one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    pub attempted: usize,
    pub failed: usize,
}

#[derive(Debug, Default)]
struct Shared {
    phase: Mutex<String>,
    attempts: Mutex<Vec<Attempt>>,
    stop: AtomicBool,
}

/// A running traffic loop. Dropping it stops the loop.
#[derive(Debug)]
pub struct Traffic {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// How often a new connection is opened.
const INTERVAL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_secs(2);

/// One `GET path` over a fresh connection; the body, or what went wrong.
pub fn http_get(target: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "status {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.trim().to_string())
}

impl Traffic {
    /// Starts the loop in `netns` against `target`, `GET path`, in phase `phase`.
    pub fn start(
        netns: &str,
        target: SocketAddr,
        path: &str,
        phase: &str,
    ) -> std::io::Result<Traffic> {
        let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
        let shared = Arc::new(Shared::default());
        if let Ok(mut p) = shared.phase.lock() {
            *p = phase.to_string();
        }
        let inner = Arc::clone(&shared);
        let path = path.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let joined = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string());
            let failed = joined.is_err();
            let _ = ready_tx.send(joined);
            if failed {
                return;
            }
            while !inner.stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let outcome = http_get(target, &path, TIMEOUT);
                let phase = inner.phase.lock().map(|p| p.clone()).unwrap_or_default();
                if let Ok(mut attempts) = inner.attempts.lock() {
                    attempts.push(Attempt {
                        at: started,
                        phase,
                        outcome,
                    });
                }
                let spent = started.elapsed();
                if spent < INTERVAL {
                    std::thread::sleep(INTERVAL - spent);
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Traffic {
                shared,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(std::io::Error::other(format!("setns into {netns}: {e}"))),
            Err(_) => Err(std::io::Error::other("the traffic thread died")),
        }
    }

    /// Attempts from now on count in `phase`.
    pub fn phase(&self, phase: &str) {
        if let Ok(mut p) = self.shared.phase.lock() {
            *p = phase.to_string();
        }
    }

    /// Counts of one phase so far.
    pub fn counts(&self, phase: &str) -> PhaseCounts {
        let attempts = self.attempts(phase);
        PhaseCounts {
            attempted: attempts.len(),
            failed: attempts.iter().filter(|a| a.outcome.is_err()).count(),
        }
    }

    /// Every attempt of one phase so far.
    pub fn attempts(&self, phase: &str) -> Vec<Attempt> {
        self.shared
            .attempts
            .lock()
            .map(|a| a.iter().filter(|x| x.phase == phase).cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until at least `n` attempts of the current phase are recorded (or `timeout`).
    pub fn wait_attempts(&self, phase: &str, n: usize, timeout: Duration) {
        let start = Instant::now();
        while self.counts(phase).attempted < n && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the loop.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop();
    }
}
