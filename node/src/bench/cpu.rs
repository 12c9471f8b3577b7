//! The load generator's own CPU time. On a small machine the bench shares
//! the cores with the cluster it measures, so what it costs per request is
//! part of every result it reports.

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};

/// User plus system CPU time this process has used so far; `None` if the
/// kernel will not say (the bench then reports no CPU figure rather than a
/// wrong one).
pub fn process_cpu_time() -> Option<Duration> {
    let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let user = usage.user_time();
    let system = usage.system_time();
    let micros = |tv: nix::sys::time::TimeVal| -> u64 {
        let secs = u64::try_from(tv.tv_sec()).unwrap_or(0);
        let us = u64::try_from(tv.tv_usec()).unwrap_or(0);
        secs.saturating_mul(1_000_000).saturating_add(us)
    };
    Some(Duration::from_micros(
        micros(user).saturating_add(micros(system)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_up_as_cpu_time() {
        let before = process_cpu_time().unwrap();
        let start = std::time::Instant::now();
        let mut x: u64 = 1;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let after = process_cpu_time().unwrap();
        assert!(after > before, "{after:?} should exceed {before:?}");
        assert!(after - before >= Duration::from_millis(20));
    }
}
