//! The nemesis's membership changes: a new node added as a learner (and
//! checked to be unpromotable while it holds nothing), caught up,
//! promoted, and an old voter removed — one step at a time, only while no
//! other fault is active.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::{Nemesis, STEP_DEADLINE};
use crate::peer_proxy::PeerProxy;

impl Nemesis {
    /// One membership cycle, only while no fault is active: add a new node
    /// as a learner, check that it cannot be promoted while it holds
    /// nothing, let it catch up, promote it, remove an old voter (perhaps
    /// the leader). Any step that fails is a problem: the cluster is whole.
    pub(super) async fn change_membership(&mut self) -> anyhow::Result<()> {
        if !self.active.is_empty() {
            bail!("membership change postponed: faults are active");
        }
        let id = self.next_id;
        self.next_id += 1;
        let leaving = self.rng.pick(&self.voters());
        if let Err(e) = self.membership_cycle(id, leaving).await {
            let e = format!("membership cycle (add {id}, remove {leaving}): {e:#}");
            self.problem(e);
            self.resync_voters().await;
        }
        Ok(())
    }

    /// After a failed cycle, takes the voters from the leader, so that the
    /// nemesis still knows how many nodes it may impair.
    async fn resync_voters(&mut self) {
        let Ok(leader) = self.agreed_leader(STEP_DEADLINE).await else {
            return;
        };
        let Some(members) = self.members(leader).await else {
            return;
        };
        let voters: BTreeSet<u64> = members
            .iter()
            .filter(|(_, role)| role.as_str() == "voter")
            .map(|(id, _)| *id)
            .collect();
        for gone in self.voters.difference(&voters) {
            self.endpoints.remove(*gone);
        }
        for new in voters.difference(&self.voters) {
            if let Ok(url) = self.cluster.http(*new) {
                self.endpoints.set(*new, url);
            }
        }
        self.note(&format!("voters are now {voters:?}"));
        self.voters = voters;
    }

    async fn membership_cycle(&mut self, id: u64, leaving: u64) -> anyhow::Result<()> {
        let pids = self.pids.clone();
        let mut proxy = None;
        let node = self.cluster.start_joining_routed(id, |id, peer_port| {
            let p = PeerProxy::start(id, peer_port, pids)?;
            let port = p.port;
            proxy = Some(p);
            Ok(port)
        })?;
        let (peer_url, http) = (node.peer_url(), node.http());
        if let Some(p) = proxy {
            self.proxies.insert(id, p);
        }
        self.apply_partitions();
        // Paused before it is added, the new node cannot have caught up
        // when it is asked to be promoted: that promotion must be refused.
        self.cluster.signal(id, "STOP")?;
        self.note(&format!("add node {id} as a learner (paused)"));
        self.count("add-learner");
        let add =
            json!({"id": id, "name": format!("node-{id}"), "peer_url": peer_url, "learner": true});
        self.admin(reqwest::Method::POST, "/v1/members", Some(add), 201)
            .await?;
        self.wait_member(id, Some("learner")).await?;
        let leader = self.agreed_leader(STEP_DEADLINE).await?;
        let early = self
            .post(leader, &format!("/v1/members/{id}/promote"), None)
            .await;
        let promoted_early = matches!(early, Ok((200, _)));
        if promoted_early {
            self.problem(format!(
                "node {leader} promoted learner {id} while it was paused and held no entries: {early:?}"
            ));
        } else {
            self.note(&format!("early promotion of {id} refused: {early:?}"));
        }
        self.cluster.signal(id, "CONT")?;
        // Caught up: the learner has applied what the leader had committed
        // once it was added.
        let target = self
            .status(leader)
            .await
            .and_then(|s| s["commit_index"].as_u64())
            .context("leader status")?;
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let applied = self
                .status(id)
                .await
                .and_then(|s| s["applied_index"].as_u64());
            if applied.is_some_and(|a| a >= target) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "learner {id} did not catch up to {target} (applied {applied:?}):\n{}",
                    self.cluster.log_tail(id)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A refused early promotion must not take effect later either; if
        // it was merely unanswered (503) it may have.
        let voter_already = match self.agreed_leader(STEP_DEADLINE).await {
            Ok(l) => self
                .members(l)
                .await
                .is_some_and(|m| m.get(&id).is_some_and(|r| r == "voter")),
            Err(_) => false,
        };
        if voter_already && !promoted_early && !matches!(early, Ok((503, _)) | Err(_)) {
            self.problem(format!(
                "learner {id} became a voter although its promotion was refused: {early:?}"
            ));
        }
        if !promoted_early && !voter_already {
            self.note(&format!("promote node {id}"));
            self.count("promote");
            self.admin(
                reqwest::Method::POST,
                &format!("/v1/members/{id}/promote"),
                None,
                200,
            )
            .await?;
        }
        self.wait_member(id, Some("voter")).await?;
        self.voters.insert(id);
        self.endpoints.set(id, http);
        self.note(&format!("remove node {leaving}"));
        self.count("remove");
        self.admin(
            reqwest::Method::DELETE,
            &format!("/v1/members/{leaving}"),
            None,
            200,
        )
        .await?;
        self.voters.remove(&leaving);
        self.endpoints.remove(leaving);
        self.wait_member(leaving, None).await?;
        self.cluster.kill(leaving)?;
        self.proxies.remove(&leaving);
        Ok(())
    }
}
