//! CPU time used by this process and its waited-for children (the `iptables-restore`s), for
//! the scheduler's spacing of costly syncs.

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeValLike;

/// User + system time of this process (every thread) plus that of its children reaped so far;
/// None if the kernel refuses `getrusage` (then the scheduler falls back to wall time).
pub fn process_and_children() -> Option<Duration> {
    let mut total = Duration::ZERO;
    for who in [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN] {
        let usage = getrusage(who).ok()?;
        for tv in [usage.user_time(), usage.system_time()] {
            total += Duration::from_micros(u64::try_from(tv.num_microseconds()).ok()?);
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_work_done_here_and_in_children() {
        let before = process_and_children().expect("getrusage");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh");
        assert!(status.success());
        let after = process_and_children().expect("getrusage");
        assert!(
            after >= before + Duration::from_millis(40),
            "{before:?} -> {after:?}"
        );
    }
}
