//! Leases end to end, with the real `etcdctl` (etcd 3.4's) against a real
//! three-node raftkv cluster: grant, attach keys, keep alive, time to
//! live, revoke, expiry, and a lease that outlives a leader change (the
//! new leader must neither expire it early nor forget to expire it).

use std::time::{Duration, Instant};

use anyhow::Context;
use raftkv_e2e::{Cluster, Options, etcdctl};

/// The hex lease id in etcdctl's "lease 694d7a… granted with TTL(5s)".
fn granted_id(out: &str) -> anyhow::Result<String> {
    let id = out
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no lease id in {out:?}"))?;
    i64::from_str_radix(id, 16).with_context(|| format!("not a hex id in {out:?}"))?;
    Ok(id.to_string())
}

/// Whether `key` exists, read through `endpoint` (linearizable).
fn exists(endpoint: &str, key: &str) -> anyhow::Result<bool> {
    Ok(!etcdctl(endpoint, &["get", key], "")?.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_grants_keeps_alive_inspects_and_revokes_leases() -> anyhow::Result<()> {
    let c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(Duration::from_secs(20)).await?;
    let follower = c
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .context("a follower")?;
    // Through a follower: grants and revokes are forwarded writes, the
    // rest forwarded lease questions.
    let (e, el) = (c.client_endpoint(follower), c.client_endpoint(leader));

    let granted = etcdctl(&e, &["lease", "grant", "60"], "")?;
    assert!(granted.contains("granted with TTL(60s)"), "{granted}");
    let id = granted_id(&granted)?;
    assert_eq!(
        etcdctl(&e, &["put", "--lease", &id, "/svc/a", "1"], "")?.trim(),
        "OK"
    );
    assert_eq!(
        etcdctl(&el, &["put", "--lease", &id, "/svc/b", "2"], "")?.trim(),
        "OK"
    );
    etcdctl(&e, &["put", "/plain", "3"], "")?;

    let kept = etcdctl(&e, &["lease", "keep-alive", "--once", &id], "")?;
    assert!(
        kept.contains(&format!("lease {id} keepalived with TTL(60)")),
        "{kept}"
    );
    let ttl = etcdctl(&e, &["lease", "timetolive", "--keys", &id], "")?;
    assert!(ttl.contains("granted with TTL(60s)"), "{ttl}");
    assert!(ttl.contains("attached keys([/svc/a /svc/b])"), "{ttl}");
    let list = etcdctl(&e, &["lease", "list"], "")?;
    assert!(
        list.contains("found 1 leases") && list.contains(&id),
        "{list}"
    );

    // The lease shows in reads. (A compare on the lease is tested over
    // gRPC in the node's tests: etcdctl 3.4's txn parser panics on one.)
    let json = etcdctl(&e, &["get", "/svc/a", "-w", "json"], "")?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(
        v["kvs"][0]["lease"].as_i64(),
        Some(i64::from_str_radix(&id, 16)?),
        "{json}"
    );

    // A put with a lease nobody granted is refused.
    let refused = etcdctl(&e, &["put", "--lease", "1234abcd", "/svc/c", "x"], "").unwrap_err();
    assert!(
        refused.to_string().contains("requested lease not found"),
        "{refused}"
    );

    let revoked = etcdctl(&e, &["lease", "revoke", &id], "")?;
    assert!(
        revoked.contains(&format!("lease {id} revoked")),
        "{revoked}"
    );
    assert!(!exists(&e, "/svc/a")? && !exists(&el, "/svc/b")?);
    assert!(exists(&e, "/plain")?, "keys without the lease stay");
    let ttl = etcdctl(&e, &["lease", "timetolive", &id], "")?;
    assert!(ttl.contains("already expired"), "{ttl}");
    let again = etcdctl(&e, &["lease", "revoke", &id], "").unwrap_err();
    assert!(
        again.to_string().contains("requested lease not found"),
        "{again}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_is_not_kept_alive_expires_and_takes_its_keys() -> anyhow::Result<()> {
    let c = Cluster::start(3, Options::default())?;
    let leader = c.wait_leader(Duration::from_secs(20)).await?;
    let e = c.client_endpoint(leader);
    let id = granted_id(&etcdctl(&e, &["lease", "grant", "2"], "")?)?;
    etcdctl(&e, &["put", "--lease", &id, "/ephemeral", "x"], "")?;
    let put_at = Instant::now();
    assert!(exists(&e, "/ephemeral")?);
    let e2 = e.clone();
    Cluster::eventually(Duration::from_secs(15), "the leased key to expire", || {
        let e = e2.clone();
        async move { (!exists(&e, "/ephemeral").ok()?).then_some(()) }
    })
    .await?;
    // Not before its TTL: granted before the put, so at least ~2 s.
    assert!(
        put_at.elapsed() >= Duration::from_millis(1500),
        "expired after {:?}",
        put_at.elapsed()
    );
    let ttl = etcdctl(&e, &["lease", "timetolive", &id], "")?;
    assert!(ttl.contains("already expired"), "{ttl}");
    // Every member deleted it (the revoke went through the log).
    for id in c.running() {
        let ep = c.client_endpoint(id);
        Cluster::eventually(Duration::from_secs(5), "the expiry on every member", || {
            let ep = ep.clone();
            async move {
                let out = etcdctl(&ep, &["get", "--consistency=s", "/ephemeral"], "").ok()?;
                out.is_empty().then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlives_a_leader_change_and_then_expires() -> anyhow::Result<()> {
    const TTL: u64 = 6;
    let mut c = Cluster::start(3, Options::default())?;
    let old = c.wait_leader(Duration::from_secs(20)).await?;
    let survivors: Vec<u64> = c.running().into_iter().filter(|id| *id != old).collect();
    let e = c.client_endpoint(survivors[0]);
    let id = granted_id(&etcdctl(&e, &["lease", "grant", &TTL.to_string()], "")?)?;
    etcdctl(&e, &["put", "--lease", &id, "/lock/owner", "me"], "")?;
    etcdctl(&e, &["lease", "keep-alive", "--once", &id], "")?;
    // The last refresh was at most now: the lease's deadline is no earlier
    // than this plus its TTL, whoever leads.
    let refreshed = Instant::now();
    c.kill(old)?;
    let new = c.wait_leader(Duration::from_secs(20)).await?;
    assert_ne!(new, old);

    // Until the old deadline the key must stay: the new leader gives every
    // lease a full TTL from its election, never less.
    let safe_until = refreshed + Duration::from_secs(TTL) - Duration::from_millis(500);
    let mut checks = 0;
    while Instant::now() < safe_until {
        assert!(
            exists(&e, "/lock/owner")?,
            "expired early, {:?} after the last keep-alive",
            refreshed.elapsed()
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(checks > 0, "the leader change took longer than the TTL");
    let ttl = etcdctl(&e, &["lease", "timetolive", &id], "")?;
    assert!(ttl.contains(&format!("granted with TTL({TTL}s)")), "{ttl}");

    // Nobody keeps it alive: the new leader expires it.
    let e2 = e.clone();
    Cluster::eventually(
        Duration::from_secs(TTL + 15),
        "the new leader to expire the lease",
        || {
            let e = e2.clone();
            async move { (!exists(&e, "/lock/owner").ok()?).then_some(()) }
        },
    )
    .await?;
    let list = etcdctl(&e, &["lease", "list"], "")?;
    assert!(list.contains("found 0 leases"), "{list}");
    Ok(())
}

/// etcd's lease checkpoints: the leader commits how long each lease has
/// left (every second here), so the leader that follows it goes on from
/// there instead of giving the lease its full TTL again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_goes_on_from_the_last_lease_checkpoint() -> anyhow::Result<()> {
    const TTL: u64 = 30;
    const WAIT: Duration = Duration::from_secs(10);
    let opts = Options {
        extra_args: vec!["--lease-checkpoint-interval-ms".into(), "1000".into()],
        ..Options::default()
    };
    let mut c = Cluster::start(3, opts)?;
    let old = c.wait_leader(Duration::from_secs(20)).await?;
    let survivor = c
        .running()
        .into_iter()
        .find(|id| *id != old)
        .context("a follower")?;
    let e = c.client_endpoint(survivor);
    // The lease's clock started before the grant answered.
    let granted = Instant::now();
    let id = granted_id(&etcdctl(&e, &["lease", "grant", &TTL.to_string()], "")?)?;
    // Time must pass for a checkpoint to record less than the full TTL:
    // this waits for the clock, not for a condition.
    tokio::time::sleep(WAIT).await;
    c.kill(old)?;
    let new = c.wait_leader(Duration::from_secs(20)).await?;
    assert_ne!(new, old);

    let ttl = etcdctl(&e, &["lease", "timetolive", &id], "")?;
    let elapsed = granted.elapsed().as_secs();
    // "lease 694d… granted with TTL(30s), remaining(23s)"
    let remaining: u64 = ttl
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no remaining TTL in {ttl:?}"))?;
    // The last checkpoint is at most an interval and its rounding up
    // (about 2 s) behind the old leader's clock, and the election adds a
    // second or two: within 5 s. Without checkpoints the new leader gives
    // the full TTL again, 10 s more than that.
    assert!(
        remaining + elapsed <= TTL + 5,
        "remaining {remaining}s after {elapsed}s of a {TTL}s lease: {ttl}"
    );
    assert!(remaining > 0, "{ttl}");
    Ok(())
}
