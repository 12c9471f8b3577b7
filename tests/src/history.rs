//! A recorded history of client operations and its check by porcupine.
//!
//! The records are the JSON the Go checker in `tests/linearizability`
//! reads: one object per operation with its call and return times; a write
//! whose outcome is unknown has no return time (it may take effect at any
//! point after its call, or never). Failed reads are not recorded: they
//! have no effect.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// What one operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A write that was acknowledged, or a read that answered.
    Ok,
    /// A write that never reached a node, or a read that failed: no effect.
    Failed,
    /// A write that may or may not have taken effect.
    Unknown,
}

/// A shared, append-only history with its clock.
#[derive(Clone, Debug)]
pub struct History {
    t0: Instant,
    records: Arc<Mutex<Vec<Value>>>,
}

impl History {
    pub fn new() -> History {
        History {
            t0: Instant::now(),
            records: Arc::default(),
        }
    }

    /// Nanoseconds since the history began: its clock.
    pub fn now(&self) -> i64 {
        self.t0.elapsed().as_nanos() as i64
    }

    /// Records a put (`value: Some`) or a delete (`None`) called at `call`.
    pub fn write(
        &self,
        client: usize,
        key: &str,
        value: Option<&str>,
        call: i64,
        outcome: &Outcome,
    ) {
        let ret = match outcome {
            Outcome::Ok => json!(self.now()),
            Outcome::Unknown => Value::Null,
            Outcome::Failed => return,
        };
        let record = match value {
            Some(v) => json!({"client": client, "op": "put", "key": key, "value": v,
                              "call": call, "return": ret}),
            None => json!({"client": client, "op": "delete", "key": key,
                           "call": call, "return": ret}),
        };
        self.push(record);
    }

    /// Records a linearizable read that answered (`None`: key absent).
    pub fn read(&self, client: usize, key: &str, value: Option<&str>, call: i64) {
        self.push(json!({"client": client, "op": "get", "key": key,
                         "value": value.unwrap_or_default(), "found": value.is_some(),
                         "call": call, "return": self.now()}));
    }

    fn push(&self, record: Value) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the history to `file` and runs porcupine on it; `Ok` carries
    /// the checker's one-line verdict when the history is linearizable.
    /// On a violation the check runs again to write an HTML visualization
    /// next to the history.
    pub fn check(&self, file: &Path, timeout_secs: u64) -> anyhow::Result<String> {
        let records = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        std::fs::write(file, serde_json::to_vec(&records)?)?;
        let (success, report) = run_checker(file, timeout_secs, None)?;
        // `go run` turns every failing exit status into 1: the verdict is
        // read from the checker's report line instead.
        let verdict = report
            .lines()
            .find_map(|l| l.strip_prefix("linearizability: "))
            .and_then(|l| l.rsplit(": ").next())
            .unwrap_or_default();
        match verdict {
            "Ok" if success => Ok(report),
            "Illegal" => {
                let viz = file.with_extension("html");
                let shown = match run_checker(file, timeout_secs, Some(&viz)) {
                    Ok(_) => format!("visualization: {}", viz.display()),
                    Err(e) => format!("no visualization: {e:#}"),
                };
                bail!(
                    "NOT LINEARIZABLE: {report}\nhistory: {}\n{shown}",
                    file.display()
                )
            }
            _ => bail!(
                "the check did not decide: {report}\nhistory: {}",
                file.display()
            ),
        }
    }
}

/// Runs the Go checker; whether it exited 0, and its output.
fn run_checker(
    file: &Path,
    timeout_secs: u64,
    viz: Option<&Path>,
) -> anyhow::Result<(bool, String)> {
    let checker = Path::new(env!("CARGO_MANIFEST_DIR")).join("linearizability");
    let mut cmd = std::process::Command::new(go());
    cmd.current_dir(&checker)
        .args(["run", ".", "-timeout", &format!("{timeout_secs}s")]);
    if let Some(viz) = viz {
        cmd.arg("-viz").arg(viz);
    }
    let out = cmd
        .arg(file)
        .output()
        .context("the linearizability check needs Go (see .ci/install)")?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), report.trim().to_string()))
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// `go` on the PATH, or the usual install location.
pub fn go() -> String {
    let usual = Path::new("/usr/local/go/bin/go");
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("go").is_file()));
    if !on_path && usual.is_file() {
        return usual.display().to_string();
    }
    "go".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_tells_a_lost_write_from_a_linearizable_history() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::new();
        h.write(0, "k", Some("v"), h.now(), &Outcome::Ok);
        h.read(1, "k", Some("v"), h.now());
        assert!(h.check(&dir.path().join("ok.json"), 60).is_ok());
        h.read(1, "k", None, h.now());
        let e = h.check(&dir.path().join("lost.json"), 60).unwrap_err();
        assert!(format!("{e:#}").contains("NOT LINEARIZABLE"), "{e:#}");
        assert!(dir.path().join("lost.html").exists());
    }
}
