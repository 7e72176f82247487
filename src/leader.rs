//! Leader election on a namespaced Lease, turned into an "am I leader" signal.
//!
//! The Lease name is fixed per namespace (default `bulkhead`), so a second release in the same
//! namespace stays standby. On shutdown the Lease is released, and a standby takes over at once:
//! it watches exactly that Lease (a `metadata.name` field selector, which RBAC authorizes against
//! the Role's `resourceNames`) and competes again the moment the holder clears it, instead of
//! sleeping until the expiry it last saw.

use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// Field manager the Lease is written with.
pub const LEASE_FIELD_MANAGER: &str = "bulkhead-leader";

/// How leadership is decided.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub enabled: bool,
    pub namespace: String,
    pub lease_name: String,
    /// Unique per process (pod name plus a random suffix).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How long before expiry the holder renews.
    pub renew_grace: Duration,
}

/// The leadership signal and the task that maintains it.
pub struct Leadership {
    receiver: watch::Receiver<bool>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    // Keeps an always-leader channel open when election is disabled.
    _always: Option<watch::Sender<bool>>,
}

impl Leadership {
    /// Start competing for the Lease (or lead unconditionally when election is disabled).
    pub async fn start(client: Client, config: &LeaderConfig) -> Result<Self> {
        if !config.enabled {
            let (tx, rx) = watch::channel(true);
            return Ok(Self {
                receiver: rx,
                stop: CancellationToken::new(),
                task: None,
                _always: Some(tx),
            });
        }
        // The first manager is built here so that a Lease that cannot be read or created is an
        // error of `start`, reported before anything is reconciled.
        let first = build_manager(client.clone(), config).await?;
        let (tx, rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let freed = lease_freed(
            Api::namespaced(client.clone(), &config.namespace),
            &config.lease_name,
        );
        let task = tokio::spawn(compete(
            client,
            config.clone(),
            first,
            freed,
            tx,
            stop.clone(),
        ));
        Ok(Self {
            receiver: rx,
            stop,
            task: Some(task),
            _always: None,
        })
    }

    /// A receiver of the current leadership state.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.receiver.clone()
    }

    /// Release the Lease (if held) and stop competing, within `timeout`.
    pub async fn release(self, timeout: Duration) {
        self.stop.cancel();
        if let Some(task) = self.task {
            match tokio::time::timeout(timeout, task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "leader-election task failed"),
                Err(_) => tracing::warn!(
                    "releasing the Lease timed out; a standby takes over when it expires"
                ),
            }
        }
    }
}

async fn build_manager(client: Client, config: &LeaderConfig) -> Result<LeaseManager> {
    Ok(LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration.as_secs().max(1))
        .with_grace(config.renew_grace.as_secs().max(1))
        .with_field_manager(LEASE_FIELD_MANAGER)
        .with_create_mode(LeaseCreateMode::AutoCreate)
        .build()
        .await?)
}

/// Pause before competing for a Lease seen released.
const FREED_PAUSE: Duration = Duration::from_millis(100);

/// Why one manager's run ended.
enum Outcome {
    /// Shutdown: the manager released the Lease.
    Stopped,
    /// The Lease was freed while we stood by: compete again now.
    Freed,
    /// The manager gave up (an API error it does not retry).
    Failed,
}

/// Keep competing for the Lease until `stop`, forwarding the manager's signal to `signal`.
///
/// kube-lease-manager's standby sleeps until the expiry it last read; it has no way to be told
/// the Lease was released. So when the watch reports the Lease free while we stand by, the
/// manager is replaced by a fresh one, which reads the Lease and takes it.
async fn compete(
    client: Client,
    config: LeaderConfig,
    first: LeaseManager,
    freed: impl Stream<Item = ()> + Send + 'static,
    signal: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut freed = std::pin::pin!(freed);
    let mut next = Some(first);
    let mut failures: u32 = 0;
    loop {
        let manager = match next.take() {
            Some(manager) => manager,
            None => match build_manager(client.clone(), &config).await {
                Ok(manager) => manager,
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = crate::controller::backoff::delay_for(failures);
                    tracing::warn!(error = %err, retry_in_s = delay.as_secs(), "leader election cannot read the Lease; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            },
        };
        // Free events queued before this manager read the Lease are stale: it has seen them.
        while let Some(Some(())) = freed.next().now_or_never() {}
        let (mut leading, task) = manager.watch().await;
        let outcome = loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break Outcome::Stopped,
                changed = leading.changed() => {
                    if changed.is_err() {
                        break Outcome::Failed;
                    }
                    let now = *leading.borrow_and_update();
                    signal.send_replace(now);
                    if now {
                        failures = 0;
                    }
                }
                Some(()) = freed.next(), if !*leading.borrow() => break Outcome::Freed,
            }
        };
        // Closing the receiver makes the manager release the Lease if it holds it (a standby's
        // release changes nothing) and return.
        drop(leading);
        let ended = task.await;
        match (&outcome, ended) {
            (Outcome::Stopped, Ok(Ok(_))) => tracing::info!("Lease released"),
            (Outcome::Stopped, Ok(Err(err))) => {
                tracing::warn!(error = %err, "releasing the Lease failed; a standby takes over when it expires");
            }
            (_, Err(err)) => tracing::warn!(error = %err, "leader-election task failed"),
            (_, Ok(Err(err))) => {
                tracing::warn!(error = %err, "leader election stopped on an error; starting over")
            }
            (_, Ok(Ok(_))) => {}
        }
        signal.send_replace(false);
        match outcome {
            Outcome::Stopped => return,
            Outcome::Freed => {
                tracing::debug!("the Lease was released; competing for it now");
                // A short pause: standbys that saw the same release do not race in lockstep,
                // and a stale event can never turn this into a tight loop.
                tokio::select! {
                    () = tokio::time::sleep(FREED_PAUSE) => {}
                    () = stop.cancelled() => return,
                }
            }
            Outcome::Failed => {
                failures = failures.saturating_add(1);
                let delay = crate::controller::backoff::delay_for(failures);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

/// A signal each time the named Lease is seen without a holder (released) or deleted.
///
/// The watch is pinned to the one name, so the Role only needs `list`/`watch` on that Lease.
/// Watch errors are retried with backoff; while the watch is down, takeover falls back to
/// waiting for the Lease to expire.
fn lease_freed(api: Api<Lease>, name: &str) -> impl Stream<Item = ()> + Send + 'static {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Ok(Event::Apply(lease) | Event::InitApply(lease)) => {
                    is_free(&lease).then_some(())
                }
                Ok(Event::Delete(_)) => Some(()),
                Ok(Event::Init | Event::InitDone) => None,
                Err(err) => {
                    tracing::warn!(error = %err, "watching the Lease failed; a released Lease is taken over when it expires");
                    None
                }
            }
        })
}

/// A Lease nobody holds.
fn is_free(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

/// Validate the lease timings, with a message naming the flags.
pub fn validate_timings(duration: Duration, grace: Duration) -> Result<()> {
    if duration < Duration::from_secs(5) {
        return Err(crate::Error::Usage(
            "--lease-duration must be at least 5s (default 30s)".to_owned(),
        ));
    }
    if grace.is_zero() || grace >= duration {
        return Err(crate::Error::Usage(format!(
            "--lease-renew-grace must be more than 0s and less than --lease-duration ({}); default 10s",
            crate::api::duration::format(duration)
        )));
    }
    Ok(())
}
