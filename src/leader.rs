//! Leader election on a namespaced Lease, turned into an "am I leader" signal.
//!
//! The Lease name is fixed per namespace (default `bulkhead`), so a second release in the same
//! namespace stays standby. On shutdown the Lease is released so a standby takes over at once
//! instead of waiting for it to expire.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    task: Option<
        JoinHandle<
            std::result::Result<
                kube_lease_manager::LeaseManager,
                kube_lease_manager::LeaseManagerError,
            >,
        >,
    >,
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
                task: None,
                _always: Some(tx),
            });
        }
        let manager = LeaseManagerBuilder::new(client, &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.lease_duration.as_secs().max(1))
            .with_grace(config.renew_grace.as_secs().max(1))
            .with_field_manager(LEASE_FIELD_MANAGER)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .build()
            .await?;
        let (receiver, task) = manager.watch().await;
        Ok(Self {
            receiver,
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
        let Self { receiver, task, .. } = self;
        // Closing every receiver makes the manager release the Lease and return.
        drop(receiver);
        if let Some(task) = task {
            match tokio::time::timeout(timeout, task).await {
                Ok(Ok(Ok(_))) => tracing::info!("Lease released"),
                Ok(Ok(Err(err))) => {
                    tracing::warn!(error = %err, "releasing the Lease failed; a standby takes over when it expires")
                }
                Ok(Err(err)) => tracing::warn!(error = %err, "leader-election task failed"),
                Err(_) => tracing::warn!(
                    "releasing the Lease timed out; a standby takes over when it expires"
                ),
            }
        }
    }
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
