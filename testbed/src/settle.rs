//! Waiting for a proxy's rules to settle: read them again and again until they are complete
//! and two reads in a row agree, failing when the proxy exits first or the time is up. Shared
//! by the tests that compare what two runs program (`--config` file against flags), with the
//! normal form of an `iptables-save` dump they compare.

use std::time::{Duration, Instant};

/// Why the rules did not settle.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The proxy exited before its rules settled; the text says how (status, log tail).
    #[error("the proxy exited before its rules settled: {0}")]
    Exited(String),
    /// The rules were still incomplete or changing when the time was up.
    #[error("rules did not settle in {limit:?}; last read:\n{last}")]
    Timeout { limit: Duration, last: String },
}

/// How to wait.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    /// Give up after this long.
    pub limit: Duration,
    /// Time between two reads.
    pub interval: Duration,
}

impl Settle {
    /// Reads with `read` until the result is `complete` and equal to the read before; returns
    /// it and how long that took. `exited` is asked before every read and says how the proxy
    /// ended, if it did; `show` renders a read for the timeout error.
    pub fn wait<T: PartialEq>(
        &self,
        mut exited: impl FnMut() -> Option<String>,
        mut read: impl FnMut() -> T,
        complete: impl Fn(&T) -> bool,
        show: impl Fn(&T) -> String,
    ) -> Result<(T, Duration), SettleError> {
        let started = Instant::now();
        let mut last: Option<T> = None;
        loop {
            if let Some(how) = exited() {
                return Err(SettleError::Exited(how));
            }
            let now = read();
            if complete(&now) && last.as_ref() == Some(&now) {
                return Ok((now, started.elapsed()));
            }
            if started.elapsed() >= self.limit {
                return Err(SettleError::Timeout {
                    limit: self.limit,
                    last: show(&now),
                });
            }
            last = Some(now);
            std::thread::sleep(self.interval);
        }
    }
}

/// `iptables-save` without comment lines and with chain counters zeroed, so that two dumps of
/// the same rules compare equal.
pub fn normalise_save(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]", &l[..i]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Settle {
        Settle {
            limit: Duration::from_millis(200),
            interval: Duration::from_millis(1),
        }
    }

    #[test]
    fn settles_on_two_equal_complete_reads() {
        let mut reads = vec![1, 2, 3, 3].into_iter();
        let (value, _) = quick()
            .wait(
                || None,
                || reads.next().unwrap_or(9),
                |v| *v >= 2,
                |v| v.to_string(),
            )
            .expect("settles");
        assert_eq!(value, 3);
    }

    #[test]
    fn equal_but_incomplete_reads_do_not_settle() {
        let err = quick()
            .wait(|| None, || 1, |v| *v >= 2, |v| format!("read {v}"))
            .expect_err("never complete");
        assert!(
            matches!(&err, SettleError::Timeout { last, .. } if last == "read 1"),
            "{err}"
        );
    }

    #[test]
    fn an_exited_proxy_fails_at_once() {
        let err = quick()
            .wait(
                || Some("exit status 1".to_string()),
                || 3,
                |_| true,
                |v| v.to_string(),
            )
            .expect_err("exited");
        assert!(matches!(&err, SettleError::Exited(how) if how == "exit status 1"));
    }

    #[test]
    fn normalised_dumps_lose_comments_and_counters() {
        assert_eq!(
            normalise_save("# Generated\n:KUBE-A - [5:300]\n-A KUBE-A -j ACCEPT"),
            ":KUBE-A - [0:0]\n-A KUBE-A -j ACCEPT"
        );
    }
}
