//! Events on the Node when programming iptables keeps failing, and when it works again.
//!
//! kube-proxy records no Event for a failed `iptables-restore` (it logs, counts
//! `sync_proxy_rules_iptables_restore_failures_total` and fails `/healthz`); an operator looking
//! at `kubectl describe node` sees nothing. knat records, on the Node object (as kube-proxy's
//! own Events, e.g. `Starting`, regard it):
//!
//! - a Warning [`REASON_FAILED`] once [`THRESHOLD`] syncs in a row have failed (one failure is
//!   retried within a second or two and is not news), again every [`REPEAT`] while they keep
//!   failing, with the count and the last error;
//! - a Normal [`REASON_RECOVERED`] at the first successful sync after a Warning.
//!
//! The reasons follow upstream's naming of the work (`syncProxyRules`,
//! `kubeproxy_sync_proxy_rules_*`). [`SyncFailureThrottle`] decides (pure).

use std::time::Duration;

use kube::runtime::events::{Event, EventType};
use tokio::time::Instant;

use super::events::{NOTE_LIMIT, Outgoing, cut, node_reference};

/// The Warning's reason.
pub const REASON_FAILED: &str = "SyncProxyRulesFailed";
/// The Normal reason after a Warning.
pub const REASON_RECOVERED: &str = "SyncProxyRulesRecovered";
/// The events.k8s.io `action`.
pub const ACTION: &str = "SyncProxyRules";
/// Consecutive failed syncs before the first Warning.
pub const THRESHOLD: u32 = 3;
/// A Warning is repeated this often while syncs keep failing.
pub const REPEAT: Duration = Duration::from_secs(600);

/// Which Event to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEventKind {
    /// Warning [`REASON_FAILED`].
    Failed,
    /// Normal [`REASON_RECOVERED`].
    Recovered,
}

impl SyncEventKind {
    pub fn reason(self) -> &'static str {
        match self {
            SyncEventKind::Failed => REASON_FAILED,
            SyncEventKind::Recovered => REASON_RECOVERED,
        }
    }
}

/// When to record (pure).
#[derive(Debug, Clone)]
pub struct SyncFailureThrottle {
    threshold: u32,
    repeat: Duration,
    /// When the standing Warning was last recorded.
    warned_at: Option<Instant>,
}

impl SyncFailureThrottle {
    pub fn new(threshold: u32, repeat: Duration) -> Self {
        SyncFailureThrottle {
            threshold: threshold.max(1),
            repeat,
            warned_at: None,
        }
    }

    /// A sync finished at `now`; `failures` is the number of consecutive failed syncs including
    /// this one (0 when it succeeded). Returns the Event to record now, if any.
    pub fn observe(&mut self, failures: u32, now: Instant) -> Option<SyncEventKind> {
        if failures == 0 {
            return self.warned_at.take().map(|_| SyncEventKind::Recovered);
        }
        let due = match self.warned_at {
            None => failures >= self.threshold,
            Some(at) => now >= at + self.repeat,
        };
        if due {
            self.warned_at = Some(now);
            Some(SyncEventKind::Failed)
        } else {
            None
        }
    }
}

/// The Event of `kind` on Node `node_name`; `failures` and `error` describe the failing syncs
/// (for the Warning), `failed_for` how long they had been failing (for the Normal).
pub fn outgoing(
    kind: SyncEventKind,
    node_name: &str,
    failures: u32,
    error: &str,
    failed_for: Duration,
) -> Outgoing {
    let (type_, note) = match kind {
        SyncEventKind::Failed => (
            EventType::Warning,
            format!(
                "{failures} consecutive syncs of the proxy rules failed; the kernel keeps the rules last written and knat retries with a full sync (/healthz fails while a sync is owed); last error: {error}"
            ),
        ),
        SyncEventKind::Recovered => (
            EventType::Normal,
            format!(
                "proxy rules synced again after failing for {:.0} s",
                failed_for.as_secs_f64()
            ),
        ),
    };
    Outgoing {
        regarding: node_reference(node_name),
        reason: kind.reason(),
        event: Event {
            type_,
            reason: kind.reason().into(),
            note: Some(cut(&note, NOTE_LIMIT).to_string()),
            action: ACTION.into(),
            secondary: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn warns_after_three_then_every_ten_minutes_then_recovers_once() {
        let mut t = SyncFailureThrottle::new(THRESHOLD, REPEAT);
        let t0 = Instant::now();
        assert_eq!(
            t.observe(0, t0),
            None,
            "success without a Warning is not news"
        );
        assert_eq!(t.observe(1, t0), None);
        assert_eq!(t.observe(2, t0 + Duration::from_secs(1)), None);
        assert_eq!(
            t.observe(3, t0 + Duration::from_secs(3)),
            Some(SyncEventKind::Failed),
            "the third failure in a row"
        );
        let warned = t0 + Duration::from_secs(3);
        for n in 4..30 {
            assert_eq!(t.observe(n, warned + 9 * MIN), None, "rate-limited");
        }
        assert_eq!(
            t.observe(30, warned + 10 * MIN),
            Some(SyncEventKind::Failed),
            "repeated after ten minutes"
        );
        assert_eq!(t.observe(31, warned + 11 * MIN), None);
        assert_eq!(
            t.observe(0, warned + 12 * MIN),
            Some(SyncEventKind::Recovered)
        );
        assert_eq!(t.observe(0, warned + 13 * MIN), None, "recovered once");
        // A new run of failures starts from the threshold again.
        assert_eq!(t.observe(1, warned + 14 * MIN), None);
        assert_eq!(t.observe(2, warned + 14 * MIN), None);
        assert_eq!(t.observe(3, warned + 14 * MIN), Some(SyncEventKind::Failed));
    }

    #[tokio::test(start_paused = true)]
    async fn short_failures_record_nothing() {
        let mut t = SyncFailureThrottle::new(THRESHOLD, REPEAT);
        let t0 = Instant::now();
        for round in 0..5 {
            assert_eq!(t.observe(1, t0 + round * MIN), None);
            assert_eq!(t.observe(2, t0 + round * MIN), None);
            assert_eq!(t.observe(0, t0 + round * MIN), None);
        }
    }

    #[test]
    fn the_events_regard_the_node_and_name_the_error() {
        let out = outgoing(
            SyncEventKind::Failed,
            "node-1",
            3,
            "iptables-restore: line 7 failed",
            Duration::ZERO,
        );
        assert_eq!(out.regarding, node_reference("node-1"));
        assert_eq!(out.reason, "SyncProxyRulesFailed");
        assert_eq!(out.event.type_, EventType::Warning);
        assert_eq!(out.event.action, "SyncProxyRules");
        let note = out.event.note.unwrap_or_default();
        assert!(
            note.starts_with("3 consecutive syncs of the proxy rules failed"),
            "{note}"
        );
        assert!(
            note.ends_with("last error: iptables-restore: line 7 failed"),
            "{note}"
        );

        let long = "e".repeat(4000);
        let out = outgoing(SyncEventKind::Failed, "node-1", 3, &long, Duration::ZERO);
        assert_eq!(out.event.note.unwrap_or_default().len(), NOTE_LIMIT);

        let out = outgoing(
            SyncEventKind::Recovered,
            "node-1",
            0,
            "",
            Duration::from_millis(12_400),
        );
        assert_eq!(out.event.type_, EventType::Normal);
        assert_eq!(out.reason, "SyncProxyRulesRecovered");
        assert_eq!(
            out.event.note.as_deref(),
            Some("proxy rules synced again after failing for 12 s")
        );
    }
}
