//! Leader election between operator replicas over a `coordination.k8s.io`
//! Lease (through the `kube-lease-manager` crate), so that two replicas never
//! reconcile at once: a replica runs the controller only while it holds the
//! lease, and stops the controller as soon as it loses it.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Lease timing: a dead leader is replaced after at most `duration` seconds.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration_seconds: u64,
    pub grace_seconds: u64,
}

/// A running lease watcher; `is_leader` flips as the lease is won or lost.
#[derive(Debug)]
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    pub task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

pub async fn start(
    client: Client,
    settings: &LeaseSettings,
) -> Result<Election, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_seconds)
        .with_grace(settings.grace_seconds)
        .with_field_manager(crate::identity::FIELD_MANAGER)
        .build()
        .await?;
    let (is_leader, task) = manager.watch().await;
    Ok(Election { is_leader, task })
}

/// Resolves once this replica holds the lease. `false` if the watcher ended.
pub async fn acquired(rx: &mut watch::Receiver<bool>) -> bool {
    loop {
        if *rx.borrow_and_update() {
            info!("acquired the operator lease");
            return true;
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

/// Resolves once this replica no longer holds the lease.
pub async fn lost(mut rx: watch::Receiver<bool>) {
    loop {
        if !*rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acquired_and_lost_follow_the_lease_state() {
        let (tx, mut rx) = watch::channel(false);
        let waiter = tokio::spawn(async move {
            let got = acquired(&mut rx).await;
            (got, rx)
        });
        tx.send(true).unwrap();
        let (got, rx) = waiter.await.unwrap();
        assert!(got);
        let loss = tokio::spawn(lost(rx));
        assert!(!loss.is_finished());
        tx.send(false).unwrap();
        loss.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_watcher_never_counts_as_leadership() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        assert!(!acquired(&mut rx).await);
    }
}
