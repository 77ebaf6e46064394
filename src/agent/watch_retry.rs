//! How long a watcher waits before it retries after an error.
//!
//! kube-rs' `default_backoff` grows exponentially (800 ms doubling to 30 s, jittered) and
//! resets only on the next successful event. That is right for an unreachable or failing API
//! server, but wrong for a watch that ends with `410 Gone` (`too old resource version`,
//! reason `Expired`): the server is up and the watcher's next step is a fresh list. After an
//! outage the backoff is at its ceiling, so a 410 that arrives just as the node reaches the
//! API server again delayed the re-list by 30-60 s (measured in the e2e watch-expiry step),
//! while kube-proxy re-listed within 4 s. Here a 410 re-lists at once, as client-go's
//! reflector does; a second 410 within [`EXPIRED_GRACE`] of an immediate re-list waits the
//! backoff like any other error, so a server that keeps answering 410 is not hammered.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use kube::runtime::watcher;

/// The first wait after an error (kube-rs' and client-go's value).
pub const MIN_DELAY: Duration = Duration::from_millis(800);
/// The longest wait (kube-rs' and client-go's value).
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// At most one immediate re-list after a 410 per this period; later 410s wait the backoff.
pub const EXPIRED_GRACE: Duration = Duration::from_secs(10);

/// True for a watch that ended because its resourceVersion was compacted away (HTTP 410).
pub fn is_expired(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// The retry delay of one watcher: exponential backoff, reset by any successful event, with
/// an immediate re-list after a 410.
#[derive(Debug)]
pub struct RetryPolicy {
    next: Duration,
    last_immediate: Option<Instant>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            next: MIN_DELAY,
            last_immediate: None,
        }
    }
}

/// What the watcher does after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The watch expired: list again now.
    RelistNow,
    /// Wait this long first.
    After(Duration),
}

impl RetryPolicy {
    /// A successful event: the next error starts the backoff from [`MIN_DELAY`] again.
    pub fn on_success(&mut self) {
        self.next = MIN_DELAY;
    }

    /// An error at `now`: what to do before the watcher's next step.
    pub fn on_error(&mut self, expired: bool, now: Instant) -> Retry {
        let recently = self
            .last_immediate
            .is_some_and(|t| now.saturating_duration_since(t) < EXPIRED_GRACE);
        if expired && !recently {
            self.last_immediate = Some(now);
            self.next = MIN_DELAY;
            return Retry::RelistNow;
        }
        let base = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        Retry::After(jittered(base))
    }
}

/// `base` plus up to a quarter of it, so that the three watchers of a node (and the nodes of a
/// cluster) do not retry in step.
fn jittered(base: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let fraction = (random % 1000) as f64 / 4000.0;
    base + base.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone() -> watcher::Error {
        watcher::Error::WatchError(Box::new(kube::core::Status {
            code: 410,
            reason: "Expired".into(),
            message: "too old resource version: 375 (435)".into(),
            ..Default::default()
        }))
    }

    fn delay(r: Retry) -> Duration {
        match r {
            Retry::After(d) => d,
            Retry::RelistNow => Duration::ZERO,
        }
    }

    #[test]
    fn only_410_counts_as_expired() {
        assert!(is_expired(&gone()));
        let forbidden = watcher::Error::WatchError(Box::new(kube::core::Status {
            code: 403,
            ..Default::default()
        }));
        assert!(!is_expired(&forbidden));
        assert!(!is_expired(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn errors_back_off_exponentially_up_to_the_ceiling_and_success_resets() {
        let mut p = RetryPolicy::default();
        let now = Instant::now();
        let mut bases = Vec::new();
        for _ in 0..8 {
            let d = delay(p.on_error(false, now));
            bases.push(d);
        }
        // Each wait is its base plus at most 25%.
        let expected = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0];
        for (d, e) in bases.iter().zip(expected) {
            let s = d.as_secs_f64();
            assert!(s >= e && s <= e * 1.25 + 1e-9, "{bases:?}");
        }
        p.on_success();
        let d = delay(p.on_error(false, now)).as_secs_f64();
        assert!((0.8..=1.0).contains(&d), "{d}");
    }

    #[test]
    fn a_410_after_an_outage_relists_at_once_and_resets_the_backoff() {
        let mut p = RetryPolicy::default();
        let now = Instant::now();
        for _ in 0..10 {
            p.on_error(false, now);
        }
        assert_eq!(p.on_error(is_expired(&gone()), now), Retry::RelistNow);
        let d = delay(p.on_error(false, now)).as_secs_f64();
        assert!((0.8..=1.0).contains(&d), "{d}");
    }

    #[test]
    fn repeated_410s_within_the_grace_period_wait_the_backoff() {
        let mut p = RetryPolicy::default();
        let t0 = Instant::now();
        assert_eq!(p.on_error(true, t0), Retry::RelistNow);
        assert!(matches!(
            p.on_error(true, t0 + Duration::from_secs(1)),
            Retry::After(_)
        ));
        assert!(matches!(
            p.on_error(true, t0 + Duration::from_secs(5)),
            Retry::After(_)
        ));
        assert_eq!(
            p.on_error(true, t0 + EXPIRED_GRACE + Duration::from_secs(1)),
            Retry::RelistNow
        );
    }
}
