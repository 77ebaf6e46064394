//! "Rule in the kernel", read from the restore wrapper's record instead of the kernel: the end
//! of the first successful `iptables-restore` call whose payload declares a chain (a restore
//! is one transaction, so once it returns every chain it declares is in).
//!
//! Polling the kernel (`iptables -t nat -S CHAIN` in a loop) disturbs what it measures: every
//! call takes the xtables lock, and on iptables-legacy it copies the whole table out of the
//! kernel (about a second at 10,000 services), so the pollers of both nodes kept the proxies'
//! own restores waiting for the lock.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::sys;

/// One indexed call: when it ended, whether it succeeded, which chains it declared.
struct IndexedCall {
    end: f64,
    ok: bool,
    chains: HashSet<String>,
}

/// The calls of one proxy's wrapper log, with the chains each payload declares.
pub struct PayloadIndex {
    log: PathBuf,
    calls: Vec<IndexedCall>,
}

impl PayloadIndex {
    pub fn new(log: PathBuf) -> Self {
        PayloadIndex {
            log,
            calls: Vec::new(),
        }
    }

    /// Reads the calls logged since the last refresh and the chains their payloads declare.
    pub fn refresh(&mut self) {
        let calls = sys::restore_calls(&self.log);
        for call in calls.into_iter().skip(self.calls.len()) {
            let chains = call
                .payload
                .as_ref()
                .and_then(|path| std::fs::read_to_string(path).ok())
                .map(|text| declared_chains(&text))
                .unwrap_or_default();
            self.calls.push(IndexedCall {
                end: call.end,
                ok: call.exit == 0,
                chains,
            });
        }
    }

    /// The end (seconds since the epoch) of the first successful call that ended at or after
    /// `since` and declared `chain`.
    pub fn programmed(&mut self, chain: &str, since: f64) -> Option<f64> {
        self.refresh();
        self.calls
            .iter()
            .find(|c| c.ok && c.end >= since && c.chains.contains(chain))
            .map(|c| c.end)
    }
}

/// Names of the chains a restore payload declares (`:NAME POLICY [counters]` lines).
fn declared_chains(payload: &str) -> HashSet<String> {
    payload
        .lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_chains_are_the_colon_lines() {
        let chains = declared_chains(
            "*nat\n:KUBE-SEP-A - [0:0]\n:PREROUTING ACCEPT [0:0]\n-A KUBE-SEP-A -j ACCEPT\nCOMMIT\n",
        );
        assert!(chains.contains("KUBE-SEP-A"));
        assert!(chains.contains("PREROUTING"));
        assert_eq!(chains.len(), 2);
    }
}
