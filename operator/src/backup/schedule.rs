//! `spec.backup.schedule`: checked with a cron parser before it reaches a
//! CronJob (a bad one is reported in the status instead of failing every
//! pass), and turned into the longest gap between two runs, which tells
//! how old the newest backup may get before something is wrong.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;

/// Runs looked at to find the longest gap: enough to cover a weekly
/// schedule's whole year and a monthly one's five years.
const RUNS_EXAMINED: usize = 64;

/// Parses a CronJob schedule: five fields or an `@` shorthand, no seconds
/// and no year (which a CronJob does not take).
pub fn parse(schedule: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(schedule)
        .map_err(|e| format!("spec.backup.schedule {schedule:?} is not a cron schedule: {e}"))
}

/// The longest time between two consecutive runs after `from`, in
/// seconds, over the next [`RUNS_EXAMINED`] runs (UTC). `None` if the
/// schedule has fewer than two runs ahead (e.g. February 30th).
pub fn longest_gap_seconds(cron: &Cron, from: Timestamp) -> Option<i64> {
    let start = from.to_zoned(TimeZone::UTC);
    let runs: Vec<i64> = cron
        .iter_after(start)
        .take(RUNS_EXAMINED)
        .map(|z| z.timestamp().as_second())
        .collect();
    runs.windows(2).map(|w| w[1] - w[0]).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn cronjob_schedules_are_accepted() {
        for ok in [
            "0 3 * * *",
            "*/15 * * * *",
            "@daily",
            "@hourly",
            "30 2 * * 1-5",
            "0 0 1 * *",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn what_a_cronjob_would_refuse_is_refused() {
        for bad in [
            "",
            "daily",
            "0 3 * *",
            "0 0 3 * * *",
            "61 * * * *",
            "0 25 * * *",
            "* * * * * 2027",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("spec.backup.schedule"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_longest_gap_follows_the_schedule() {
        let from = at("2026-12-01T00:00:00Z");
        let gap = |s: &str| longest_gap_seconds(&parse(s).unwrap(), from).unwrap();
        assert_eq!(gap("@hourly"), 3600);
        assert_eq!(gap("0 3 * * *"), 86_400);
        // Weekdays only: Friday to Monday.
        assert_eq!(gap("0 3 * * 1-5"), 3 * 86_400);
    }
}
