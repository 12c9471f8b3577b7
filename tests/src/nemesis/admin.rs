//! How the nemesis talks to the cluster's HTTP admin API: statuses, who
//! leads, the member list, and membership calls retried until they are
//! answered (a change in progress, a leader election under way).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::Value;

use super::{Nemesis, STEP_DEADLINE};

impl Nemesis {
    pub(super) async fn status(&self, id: u64) -> Option<Value> {
        let url = format!("{}/v1/status", self.cluster.http(id).ok()?);
        let r = self.http.get(url).send().await.ok()?;
        if r.status() != 200 {
            return None;
        }
        r.json().await.ok()
    }

    /// The voter that says it leads, if one answers.
    pub(super) async fn leader(&self) -> Option<u64> {
        for id in &self.voters {
            let Some(s) = self.status(*id).await else {
                continue;
            };
            if s["role"] == "leader" {
                return Some(*id);
            }
        }
        None
    }

    /// Waits for a leader that every healthy voter agrees on.
    pub(super) async fn agreed_leader(&self, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = BTreeSet::new();
            for id in &self.voters {
                seen.insert(self.status(*id).await.and_then(|s| s["leader_id"].as_u64()));
            }
            if let [Some(l)] = seen.iter().copied().collect::<Vec<_>>()[..] {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader within {within:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn post(
        &self,
        id: u64,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        self.call(reqwest::Method::POST, id, path, body).await
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        id: u64,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let url = format!(
            "{}{path}",
            self.cluster.http(id).map_err(|e| e.to_string())?
        );
        let mut req = self
            .http
            .request(method, url)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// The members (id → role) the leader reports.
    pub(super) async fn members(&self, leader: u64) -> Option<BTreeMap<u64, String>> {
        let s = self.status(leader).await?;
        s["members"]
            .as_array()?
            .iter()
            .map(|m| Some((m["id"].as_u64()?, m["role"].as_str()?.to_string())))
            .collect()
    }

    /// Sends a membership call to the leader until it is answered with
    /// `want`, or a deadline passes; "change in progress" and no-leader
    /// answers are retried.
    pub(super) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + STEP_DEADLINE;
        let mut retried = false;
        loop {
            let leader = self.agreed_leader(STEP_DEADLINE).await?;
            let r = self.call(method.clone(), leader, path, body.clone()).await;
            match &r {
                Ok((s, b)) if *s == want => return Ok(b.clone()),
                Ok((409, b)) if b["code"] == "membership_change_in_progress" => {}
                // A learner that caught up to what was committed when it
                // resumed may still trail a busy leader by more than the
                // 10 % the promotion allows: etcd's answer too, and its
                // users retry.
                Ok((409, b))
                    if b["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("in sync with leader")) => {}
                Ok((503, _)) | Err(_) => {}
                // An earlier attempt may have taken effect ("already a
                // member", "not a member"): the caller checks the outcome.
                Ok((_, b)) if retried => return Ok(b.clone()),
                Ok((s, b)) => bail!("{method} {path}: {s} {b}"),
            }
            retried = true;
            if Instant::now() > deadline {
                bail!("{method} {path}: still {r:?} after {STEP_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the leader reports `id` with `role` (`None`: absent).
    pub(super) async fn wait_member(&self, id: u64, role: Option<&str>) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            if let Ok(leader) = self.agreed_leader(STEP_DEADLINE).await
                && let Some(m) = self.members(leader).await
                && m.get(&id).map(String::as_str) == role
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("member {id} never became {role:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
