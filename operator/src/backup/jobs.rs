//! From the finished backup Jobs to `status.backup` and the
//! `BackupFailed` condition.
//!
//! A Job only says whether it succeeded; what it saved is in its pod's
//! termination message, the JSON report of `raftkv snapshot backup`
//! (`{"file", "revision", "size_bytes", "time", ...}`, or `{"error"}`).
//! Jobs come and go (the CronJob keeps a few), so the status is merged
//! into the previous one: a success is only replaced by a later success.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Deserialize;

use super::BACKUP_FAILED;
use super::cronjob::CONTAINER;
use super::spec::BackupStatus;

/// Labels a Job controller puts on its pods (the second, older one is
/// still set by current versions; either will do).
const JOB_NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];
/// Longest failure message copied into the condition.
const MAX_MESSAGE: usize = 512;

/// One finished backup Job.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedJob {
    pub name: String,
    pub succeeded: bool,
    pub finished: Timestamp,
    /// The termination message of its last pod, if any.
    pub message: Option<String>,
}

/// The report of `raftkv snapshot backup`.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct Report {
    pub file: Option<String>,
    pub location: Option<String>,
    pub revision: Option<i64>,
    pub size_bytes: Option<i64>,
    pub time: Option<String>,
    pub error: Option<String>,
}

/// The report in a termination message; a message that is not one (the
/// log tail of a process that died early) is taken as the error.
pub fn parse_report(message: &str) -> Report {
    serde_json::from_str(message.trim()).unwrap_or_else(|_| Report {
        error: Some(message.trim().to_string()),
        ..Report::default()
    })
}

/// The finished Jobs among `jobs`, oldest first, with their pods'
/// termination messages.
pub fn finished(jobs: &[Job], pods: &[Pod]) -> Vec<FinishedJob> {
    let mut out: Vec<FinishedJob> = jobs
        .iter()
        .filter_map(|job| {
            let status = job.status.as_ref()?;
            let done = |type_: &str| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == type_ && c.status == "True")
            };
            let (succeeded, finished) = if let Some(c) = done("Complete") {
                let at = status
                    .completion_time
                    .as_ref()
                    .or(c.last_transition_time.as_ref())?;
                (true, at.0)
            } else if let Some(c) = done("Failed") {
                (false, c.last_transition_time.as_ref()?.0)
            } else {
                return None;
            };
            let name = job.name_any();
            Some(FinishedJob {
                message: termination_message(&name, pods),
                name,
                succeeded,
                finished,
            })
        })
        .collect();
    out.sort_by(|a, b| a.finished.cmp(&b.finished).then(a.name.cmp(&b.name)));
    out
}

/// The termination message of the backup container of the job's pod that
/// finished last.
fn termination_message(job: &str, pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter(|p| {
            JOB_NAME_LABELS
                .iter()
                .any(|l| p.labels().get(*l).map(String::as_str) == Some(job))
        })
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let terminated = statuses
                .iter()
                .find(|s| s.name == CONTAINER)?
                .state
                .as_ref()?
                .terminated
                .as_ref()?;
            let at = terminated.finished_at.as_ref().map(|t| t.0);
            Some((at, terminated.message.clone()?))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, m)| m)
}

/// `status.backup` after `jobs`, starting from `previous`; `claim` is
/// the claim the backups go to now (`None`: a bucket).
pub fn status(
    previous: Option<&BackupStatus>,
    claim: Option<&str>,
    jobs: &[FinishedJob],
) -> BackupStatus {
    let mut s = previous.cloned().unwrap_or_default();
    for job in jobs {
        let last_success = s.last_successful_time.as_ref().map(|t| t.0);
        if job.succeeded {
            if last_success.is_some_and(|t| job.finished < t)
                || s.last_successful_job.as_deref() == Some(job.name.as_str())
            {
                continue;
            }
            let report = job.message.as_deref().map(parse_report).unwrap_or_default();
            let time = report
                .time
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .unwrap_or(job.finished);
            s.last_successful_time = Some(Time(time));
            s.last_successful_job = Some(job.name.clone());
            s.claim_name = claim.map(str::to_string);
            s.file = report.file;
            s.location = report.location;
            s.revision = report.revision;
            s.size_bytes = report.size_bytes;
            if s.last_failed_time
                .as_ref()
                .is_some_and(|f| f.0 <= job.finished)
            {
                s.last_failed_time = None;
            }
        } else if last_success.is_none_or(|t| job.finished > t)
            && s.last_failed_time
                .as_ref()
                .is_none_or(|f| job.finished > f.0)
        {
            s.last_failed_time = Some(Time(job.finished));
        }
    }
    s
}

/// The `BackupFailed` condition: true when the newest finished Job failed.
/// Without a finished Job the previous condition stands (Jobs are pruned).
pub fn condition(
    previous: Option<&Condition>,
    jobs: &[FinishedJob],
    status: &BackupStatus,
    now: Timestamp,
    generation: Option<i64>,
) -> Condition {
    let (failed, reason, message) = match jobs.last() {
        Some(job) if !job.succeeded => {
            let why = job
                .message
                .as_deref()
                .map(parse_report)
                .and_then(|r| r.error)
                .unwrap_or_else(|| "no report; see the job's pod".into());
            let mut message = format!("backup job {} failed: {why}", job.name);
            truncate(&mut message, MAX_MESSAGE);
            (true, "JobFailed", message)
        }
        Some(_) => (false, "BackupSucceeded", succeeded_message(status)),
        // What the Jobs said last; not a verdict on the schedule, which
        // is valid when this runs.
        None => match previous {
            Some(p) if p.reason == "JobFailed" || p.reason == "BackupSucceeded" => {
                return p.clone();
            }
            _ => (
                false,
                "NoBackupYet",
                "no backup job has finished yet".to_string(),
            ),
        },
    };
    make(previous, failed, reason, message, now, generation)
}

/// `BackupFailed` for a schedule that cannot be used.
pub fn invalid_schedule(
    previous: Option<&Condition>,
    message: String,
    now: Timestamp,
    generation: Option<i64>,
) -> Condition {
    make(previous, true, "InvalidSchedule", message, now, generation)
}

/// `BackupFailed` when the operator itself could not do its part.
pub fn not_reconciled(
    previous: Option<&Condition>,
    message: String,
    now: Timestamp,
    generation: Option<i64>,
) -> Condition {
    make(
        previous,
        true,
        "BackupNotReconciled",
        message,
        now,
        generation,
    )
}

fn succeeded_message(s: &BackupStatus) -> String {
    match (&s.file, s.revision, s.size_bytes) {
        (Some(file), Some(rev), Some(size)) => format!(
            "last backup {}/{file}: revision {rev}, {size} bytes",
            s.claim_name.as_deref().unwrap_or_default()
        ),
        _ => "the last backup job succeeded".to_string(),
    }
}

fn make(
    previous: Option<&Condition>,
    failed: bool,
    reason: &str,
    message: String,
    now: Timestamp,
    generation: Option<i64>,
) -> Condition {
    let status = if failed { "True" } else { "False" };
    let last_transition_time = previous
        .filter(|p| p.status == status)
        .map_or(Time(now), |p| p.last_transition_time.clone());
    Condition {
        type_: BACKUP_FAILED.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn job(name: &str, outcome: &str, finished: &str) -> Job {
        let mut status = json!({
            "conditions": [{"type": outcome, "status": "True", "lastTransitionTime": finished}],
        });
        if outcome == "Complete" {
            status["completionTime"] = json!(finished);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod"},
            "status": status,
        }))
        .unwrap()
    }

    fn pod(job: &str, finished: &str, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{job}-x"), "labels": {"batch.kubernetes.io/job-name": job}},
            "status": {"containerStatuses": [{
                "name": "backup", "image": "raftkv:test", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "finishedAt": finished, "message": message}},
            }]},
        }))
        .unwrap()
    }

    const REPORT: &str = r#"{"file":"kv-20261201T030000Z.db","revision":42,"size_bytes":9000,"sha256":"ab","time":"2026-12-01T03:00:02Z","kept":3,"pruned":[]}"#;

    #[test]
    fn a_successful_job_fills_the_status_from_its_report() {
        let jobs = [job("kv-backup-1", "Complete", "2026-12-01T03:00:05Z")];
        let pods = [pod("kv-backup-1", "2026-12-01T03:00:04Z", REPORT)];
        let done = finished(&jobs, &pods);
        let s = status(None, Some("kv-backup"), &done);
        assert_eq!(s.last_successful_job.as_deref(), Some("kv-backup-1"));
        assert_eq!(s.file.as_deref(), Some("kv-20261201T030000Z.db"));
        assert_eq!(s.claim_name.as_deref(), Some("kv-backup"));
        assert_eq!(s.revision, Some(42));
        assert_eq!(s.size_bytes, Some(9000));
        assert_eq!(
            s.last_successful_time.unwrap().0,
            at("2026-12-01T03:00:02Z")
        );
        let c = condition(
            None,
            &done,
            &status(None, Some("kv-backup"), &done),
            at("2026-12-01T04:00:00Z"),
            Some(1),
        );
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            ("BackupFailed", "False")
        );
        assert!(c.message.contains("revision 42"), "{}", c.message);
    }

    #[test]
    fn a_failed_job_sets_the_condition_and_keeps_the_last_success() {
        let jobs = [
            job("kv-backup-1", "Complete", "2026-12-01T03:00:05Z"),
            job("kv-backup-2", "Failed", "2026-12-02T03:00:05Z"),
        ];
        let pods = [
            pod("kv-backup-1", "2026-12-01T03:00:04Z", REPORT),
            pod(
                "kv-backup-2",
                "2026-12-02T03:00:04Z",
                r#"{"error":"no endpoint answered: kv.prod.svc:2379: connection refused"}"#,
            ),
        ];
        let done = finished(&jobs, &pods);
        let s = status(None, Some("kv-backup"), &done);
        assert_eq!(s.last_successful_job.as_deref(), Some("kv-backup-1"));
        assert_eq!(
            s.last_failed_time.as_ref().unwrap().0,
            at("2026-12-02T03:00:05Z")
        );
        let c = condition(None, &done, &s, at("2026-12-02T04:00:00Z"), None);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "JobFailed")
        );
        assert!(
            c.message.contains("kv-backup-2") && c.message.contains("connection refused"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_message_that_is_not_a_report_is_the_error() {
        let r = parse_report("error: something broke\n");
        assert_eq!(r.error.as_deref(), Some("error: something broke"));
        assert_eq!(r.file, None);
    }

    #[test]
    fn unfinished_jobs_are_ignored_and_pruned_jobs_change_nothing() {
        let running: Job = serde_json::from_value(
            json!({"metadata": {"name": "kv-backup-3"}, "status": {"active": 1}}),
        )
        .unwrap();
        assert!(finished(&[running], &[]).is_empty());
        let previous = BackupStatus {
            last_successful_time: Some(Time(at("2026-12-01T03:00:02Z"))),
            last_successful_job: Some("kv-backup-1".into()),
            revision: Some(42),
            ..BackupStatus::default()
        };
        assert_eq!(status(Some(&previous), Some("kv-backup"), &[]), previous);
        let before = make(
            None,
            true,
            "JobFailed",
            "x".into(),
            at("2026-12-01T00:00:00Z"),
            None,
        );
        assert_eq!(
            condition(
                Some(&before),
                &[],
                &previous,
                at("2026-12-03T00:00:00Z"),
                None
            ),
            before
        );
    }

    #[test]
    fn a_later_success_clears_the_failure_and_keeps_the_transition_time_while_unchanged() {
        let first = [FinishedJob {
            name: "a".into(),
            succeeded: false,
            finished: at("2026-12-01T03:00:00Z"),
            message: None,
        }];
        let s1 = status(None, Some("kv-backup"), &first);
        let c1 = condition(None, &first, &s1, at("2026-12-01T03:01:00Z"), None);
        assert_eq!(c1.status, "True");
        let c1_again = condition(Some(&c1), &first, &s1, at("2026-12-01T03:05:00Z"), None);
        assert_eq!(c1_again.last_transition_time, c1.last_transition_time);
        let second = [
            first[0].clone(),
            FinishedJob {
                name: "b".into(),
                succeeded: true,
                finished: at("2026-12-01T04:00:00Z"),
                message: Some(REPORT.into()),
            },
        ];
        let s2 = status(Some(&s1), Some("kv-backup"), &second);
        assert_eq!(s2.last_failed_time, None);
        let c2 = condition(Some(&c1), &second, &s2, at("2026-12-01T04:01:00Z"), None);
        assert_eq!(c2.status, "False");
        assert_eq!(c2.last_transition_time.0, at("2026-12-01T04:01:00Z"));
    }

    #[test]
    fn a_fixed_schedule_clears_invalid_schedule() {
        let now = at("2026-12-01T00:00:00Z");
        let invalid = invalid_schedule(None, "bad".into(), now, None);
        let c = condition(Some(&invalid), &[], &BackupStatus::default(), now, None);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoBackupYet")
        );
    }
}
