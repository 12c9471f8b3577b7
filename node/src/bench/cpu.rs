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
        // Spin until 20 ms of CPU time show up, or give up after 10 s of
        // wall time: on a loaded machine this thread may get a small share
        // of a core, so a fixed wall-clock spin would prove nothing.
        let before = process_cpu_time().unwrap();
        let start = std::time::Instant::now();
        let mut x: u64 = 1;
        let mut used = Duration::ZERO;
        while used < Duration::from_millis(20) && start.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            used = process_cpu_time().unwrap().saturating_sub(before);
        }
        assert!(
            used >= Duration::from_millis(20),
            "10 s of spinning showed only {used:?} of CPU time"
        );
    }
}
