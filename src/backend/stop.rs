//! Stopping a running command at shutdown: the signal the sync loop raises when SIGTERM or
//! SIGINT arrives during a sync, and what a command it stopped leaves in the kernel.
//!
//! The loop holds a [`StopHandle`]; every [`super::Iptables`] it drives holds a [`Stop`]. Once
//! stop is requested, the command running at that moment is killed with its process group and
//! reaped, and no further command starts ([`Stopped`]).

use tokio::sync::watch;

/// The side that asks running commands to stop (the sync loop keeps it).
#[derive(Debug)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    /// Asks every [`Stop`] of this handle to stop; they stay stopped.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// The side a command watches: whether it must stop. [`Stop::never`] (the default) never
/// does, for commands outside the sync loop (cleanup, diff, mode detection).
#[derive(Debug, Clone, Default)]
pub struct Stop(Option<watch::Receiver<bool>>);

impl Stop {
    /// A stop signal and the handle that raises it.
    pub fn channel() -> (StopHandle, Stop) {
        let (tx, rx) = watch::channel(false);
        (StopHandle(tx), Stop(Some(rx)))
    }

    /// A signal that never asks to stop.
    pub fn never() -> Stop {
        Stop(None)
    }

    /// Whether stop has been requested.
    pub fn requested(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Completes once stop is requested (at once if it was already); never when the handle is
    /// gone without asking, or for [`Stop::never`].
    pub async fn wait(&self) {
        if let Some(rx) = &self.0 {
            let mut rx = rx.clone();
            if rx.wait_for(|stop| *stop).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// A command that a stop request ended (or kept from starting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub program: String,
    /// The process that was killed with its group and reaped; None: it was not started.
    pub pid: Option<u32>,
    /// Whether the command was an `iptables-restore` (the only one fed a payload).
    pub restore: bool,
}

impl Stopped {
    /// What the stopped command left in the kernel, for the shutdown log line. Both
    /// front-ends commit each `*table ... COMMIT` block of a restore on its own at its
    /// `COMMIT` line (iptables-legacy replaces the table, iptables-nft sends one nf_tables
    /// transaction per table), so a killed restore leaves each table either as before or
    /// completely written. The next start runs a full sync, which rewrites every chain.
    pub fn consequence(&self) -> &'static str {
        match (self.pid, self.restore) {
            (None, _) => "nothing was written by it; the next start runs a full sync",
            (Some(_), true) => {
                "each table of a restore is committed whole at its COMMIT line (iptables-legacy \
                 and iptables-nft alike): a table whose COMMIT it had not reached is as it was \
                 before this restore, none is half-written; the next start runs a full sync"
            }
            (Some(_), false) => {
                "it reads the tables or changes at most one rule, atomically; the next start \
                 runs a full sync"
            }
        }
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(
                f,
                "stopped {} (pid {pid}) and its process group",
                self.program
            ),
            None => write!(f, "did not start {}", self.program),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stop_is_seen_by_every_clone_before_and_after_it_is_requested() {
        let (handle, stop) = Stop::channel();
        let early = stop.clone();
        assert!(!stop.requested());
        let waiting = tokio::spawn(async move { early.wait().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no stop requested yet");
        handle.stop();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a waiting clone wakes up")
            .expect("the task ran");
        assert!(stop.requested());
        // A clone made after the request completes at once.
        tokio::time::timeout(Duration::from_secs(5), stop.clone().wait())
            .await
            .expect("already stopped");
    }

    #[tokio::test]
    async fn never_and_a_dropped_handle_do_not_stop() {
        assert!(!Stop::never().requested());
        let (handle, stop) = Stop::channel();
        drop(handle);
        assert!(!stop.requested());
        for s in [Stop::never(), stop] {
            let waited = tokio::time::timeout(Duration::from_millis(50), s.wait()).await;
            assert!(waited.is_err(), "wait() must not complete");
        }
    }

    #[test]
    fn the_log_names_the_process_and_what_it_left() {
        let restore = Stopped {
            program: "iptables-nft-restore".into(),
            pid: Some(42),
            restore: true,
        };
        assert_eq!(
            restore.to_string(),
            "stopped iptables-nft-restore (pid 42) and its process group"
        );
        assert!(
            restore
                .consequence()
                .contains("committed whole at its COMMIT line")
        );
        let save = Stopped {
            program: "iptables-save".into(),
            pid: Some(7),
            restore: false,
        };
        assert!(save.consequence().starts_with("it reads the tables"));
        let unstarted = Stopped {
            program: "iptables-restore".into(),
            pid: None,
            restore: true,
        };
        assert_eq!(unstarted.to_string(), "did not start iptables-restore");
        assert!(unstarted.consequence().starts_with("nothing was written"));
    }
}
