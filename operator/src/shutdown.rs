//! Stopping on SIGTERM within a bounded time.
//!
//! The controller's graceful shutdown waits for reconciles in flight, and
//! releasing the leader lease is one more API call. Both hang or retry when
//! the API server refuses the operator: exactly what happens during `helm
//! uninstall`, which deletes the operator's ServiceAccount and RBAC while
//! the operator still runs. Kubernetes then waits the whole termination
//! grace period before killing it. So every step after the signal gets a
//! bounded grace period, and the process exits when it is spent.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How long the work still in flight may take once shutdown was requested.
pub const GRACE: Duration = Duration::from_secs(3);

/// A shutdown request that any number of tasks can wait for.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The side that requests shutdown.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(rx))
    }

    /// Resolves once shutdown is requested (or the trigger is gone, since
    /// then nothing could ever request it and waiting is pointless).
    pub async fn requested(mut self) {
        let _ = self.0.wait_for(|requested| *requested).await;
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// Run `work` to completion, unless shutdown is requested: from then on it
/// gets at most `grace` more. `None` means it was cut off.
pub async fn bounded<F: Future>(work: F, shutdown: Shutdown, grace: Duration) -> Option<F::Output> {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => return Some(out),
        () = shutdown.requested() => {}
    }
    tokio::time::timeout(grace, work).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_that_never_ends_is_cut_off_after_the_grace_period() {
        let (trigger, shutdown) = Shutdown::new();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(bounded(
            std::future::pending::<()>(),
            shutdown,
            Duration::from_secs(3),
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!task.is_finished(), "no shutdown requested yet");
        trigger.fire();
        assert_eq!(task.await.unwrap(), None);
        assert_eq!(started.elapsed(), Duration::from_secs(63));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_in_time_returns_its_output() {
        let (trigger, shutdown) = Shutdown::new();
        trigger.fire();
        let work = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        };
        assert_eq!(
            bounded(work, shutdown, Duration::from_secs(3)).await,
            Some(7)
        );
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_a_request() {
        let (trigger, shutdown) = Shutdown::new();
        assert!(!shutdown.is_requested());
        drop(trigger);
        shutdown.requested().await;
    }
}
