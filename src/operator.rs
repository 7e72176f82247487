//! `bulkhead run`: preflight until the namespace is usable, then compete for the Lease and run
//! the controllers only while leading.
//!
//! Never a crash loop: a missing CRD or right keeps the process up, `/readyz` failing with the
//! reason, retried with backoff. On shutdown the controllers stop first, then the Lease is
//! released so a standby takes over at once. The controllers write only through a client
//! fenced by the Lease (`leader::fenced`): once this process cannot prove it holds the Lease,
//! their writes are refused before they are sent.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::backoff::Schedule;
use crate::controller;
use crate::leader::{self, LeaderConfig, Leadership, LeaseRead};
use crate::preflight;
use crate::rbac::{self, RbacOptions};
use crate::telemetry::{Metrics, Readiness};

/// Everything `run` needs besides the client.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub namespace: String,
    pub leader: LeaderConfig,
    pub rbac: RbacOptions,
    /// How long in-flight reconciles may take to finish on shutdown.
    pub drain_timeout: Duration,
    pub settings: controller::Settings,
}

/// Run the operator until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<()> {
    // The Lease is read while the preflight runs (a read; nothing is written before the
    // preflight passes and the Lease is held).
    let (passed, lease) = tokio::join!(
        wait_for_preflight(&client, &config, &metrics, &readiness, &shutdown),
        LeaseRead::read(client.clone(), &config.leader),
    );
    if !passed {
        return Ok(());
    }
    let fence = metrics.leader.fence();
    let leadership =
        Leadership::start_from(client.clone(), &config.leader, fence.clone(), lease).await?;
    let leader = leadership.subscribe();
    let client = leader::fenced(client, fence);
    let instance = config.leader.identity.clone();
    let namespace = config.namespace.clone();
    let settings = config.settings.clone();
    supervise(
        leader,
        shutdown,
        metrics.clone(),
        config.drain_timeout,
        move |stop| {
            controller::run(
                client.clone(),
                namespace.clone(),
                metrics.clone(),
                instance.clone(),
                settings.clone(),
                stop,
            )
        },
    )
    .await;
    leadership.release(Duration::from_secs(5)).await;
    Ok(())
}

/// Preflight with backoff until it passes. Returns false when shut down first.
async fn wait_for_preflight(
    client: &Client,
    config: &RunConfig,
    metrics: &Metrics,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> bool {
    let required = rbac::required_rules(&config.rbac);
    let mut failures: u32 = 0;
    loop {
        let result = preflight::run(client, &config.namespace, &required).await;
        let missing = result.rights.as_ref().map_or(0, |r| r.missing.len());
        metrics
            .missing_rights
            .set(i64::try_from(missing).unwrap_or(i64::MAX));
        metrics.excess_rights.set(
            i64::try_from(result.rights.as_ref().map_or(0, |r| r.excess.len())).unwrap_or(i64::MAX),
        );
        metrics
            .crds_served
            .set(i64::from(result.crd_problems.is_empty()));
        metrics.preflight_ok.set(i64::from(result.is_ok()));
        if let Some(rights) = &result.rights {
            for extra in &rights.excess {
                tracing::warn!(right = %extra, "the Role grants more than Bulkhead needs; remove it (see `bulkhead rbac`)");
            }
        }
        if result.is_ok() {
            readiness.set_ready();
            tracing::info!(namespace = %config.namespace, "preflight passed: CRDs served, every needed right granted");
            return true;
        }
        failures = failures.saturating_add(1);
        let delay = Schedule::RECONCILE.delay(failures);
        let summary = result.summary();
        readiness.set_not_ready(summary.clone());
        tracing::error!(
            namespace = %config.namespace,
            problems = %summary,
            retry_in_s = delay.as_secs(),
            "preflight failed; not reconciling until it passes"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return false,
        }
    }
}

/// Wait until the leadership signal equals `want`; false when the signal is gone.
async fn wait_until(leader: &mut watch::Receiver<bool>, want: bool) -> bool {
    leader.wait_for(|leading| *leading == want).await.is_ok()
}

/// Run `start` while `leader` says so: start on becoming leader, stop on losing the Lease or on
/// shutdown, and wait (up to `drain`) for the controllers to finish in-flight work.
pub async fn supervise<F, Fut>(
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    drain: Duration,
    mut start: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    loop {
        // Standby: wait to lead.
        tokio::select! {
            alive = wait_until(&mut leader, true) => {
                if !alive {
                    tracing::error!("leader election stopped; not reconciling");
                    shutdown.cancelled().await;
                    return;
                }
            }
            () = shutdown.cancelled() => return,
        }
        tracing::info!("acquired the Lease; reconciling");
        metrics.leader.set_running(true);
        let stop = shutdown.child_token();
        let mut controllers = tokio::spawn(start(stop.clone()));
        let finished_early = tokio::select! {
            alive = wait_until(&mut leader, false) => {
                // Writes are refused from here on (the fence closed first); say so at once,
                // not after the drain.
                metrics.leader.set_running(false);
                if alive {
                    tracing::warn!("lost the Lease; stopping controllers and standing by");
                } else {
                    tracing::error!("leader election stopped; stopping controllers");
                }
                false
            }
            () = shutdown.cancelled() => false,
            res = &mut controllers => {
                match res {
                    Ok(Ok(())) => tracing::warn!("controllers stopped"),
                    Ok(Err(err)) => tracing::error!(error = %err, "controllers failed"),
                    Err(err) => tracing::error!(error = %err, "controllers panicked"),
                }
                true
            }
        };
        stop.cancel();
        if !finished_early && tokio::time::timeout(drain, &mut controllers).await.is_err() {
            tracing::warn!("controllers did not stop within the drain timeout; aborting them");
            controllers.abort();
        }
        metrics.leader.set_running(false);
        if shutdown.is_cancelled() {
            return;
        }
        if finished_early {
            // Do not spin if the controllers exit at once: back off a little before restarting.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Probe {
        started: AtomicUsize,
        stopped: AtomicUsize,
    }

    fn probe() -> Arc<Probe> {
        Arc::new(Probe {
            started: AtomicUsize::new(0),
            stopped: AtomicUsize::new(0),
        })
    }

    fn starter(
        p: Arc<Probe>,
    ) -> impl FnMut(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>>
    {
        move |stop: CancellationToken| {
            let p = p.clone();
            Box::pin(async move {
                p.started.fetch_add(1, Ordering::SeqCst);
                stop.cancelled().await;
                p.stopped.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    /// Returns once every task has run until it waits on something. The tests run on a paused
    /// clock, which Tokio moves forward only when no task can make progress: this sleep ends
    /// at exactly that point (unlike a fixed number of yields, which may end before a chain of
    /// wake-ups has run through).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn standby_does_not_reconcile_and_leader_does_until_it_loses_the_lease() {
        let (tx, rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let p = probe();
        let task = tokio::spawn(supervise(
            rx,
            shutdown.clone(),
            Arc::new(Metrics::default()),
            Duration::from_secs(5),
            starter(p.clone()),
        ));
        settle().await;
        assert_eq!(
            p.started.load(Ordering::SeqCst),
            0,
            "a standby must not reconcile"
        );

        tx.send(true).unwrap();
        settle().await;
        assert_eq!(p.started.load(Ordering::SeqCst), 1);

        tx.send(false).unwrap();
        settle().await;
        assert_eq!(
            p.stopped.load(Ordering::SeqCst),
            1,
            "losing the Lease stops the controllers"
        );

        tx.send(true).unwrap();
        settle().await;
        assert_eq!(
            p.started.load(Ordering::SeqCst),
            2,
            "regaining the Lease restarts them"
        );

        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(
            p.stopped.load(Ordering::SeqCst),
            2,
            "shutdown stops them before returning"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_while_standby_returns_without_starting() {
        let (_tx, rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let p = probe();
        let task = tokio::spawn(supervise(
            rx,
            shutdown.clone(),
            Arc::new(Metrics::default()),
            Duration::from_secs(5),
            starter(p.clone()),
        ));
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(p.started.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn controllers_that_ignore_stop_are_aborted_after_the_drain_timeout() {
        let (_tx, rx) = watch::channel(true);
        let shutdown = CancellationToken::new();
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let task = tokio::spawn(supervise(
            rx,
            shutdown.clone(),
            Arc::new(Metrics::default()),
            Duration::from_secs(3),
            move |_stop| {
                let s = s.clone();
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    Ok(())
                }
            },
        ));
        settle().await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        let before = tokio::time::Instant::now();
        shutdown.cancel();
        task.await.unwrap();
        assert!(
            before.elapsed() >= Duration::from_secs(3),
            "waits the drain timeout, then aborts"
        );
        assert!(before.elapsed() < Duration::from_secs(4));
    }
}
