//! The mTLS link to the platform's control plane: the identity from its Secret, the client,
//! and the one shared [`Link`] the controllers use.
//!
//! A rotated certificate is picked up by the name-pinned watch on the identity Secret; the
//! Tenant controller then swaps the client here, and the next request of any controller
//! presents the new certificate. No restart, no right to patch the Deployment.

pub mod client;
pub mod identity;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use client::{ClientSettings, ControlPlaneClient, ControlPlaneError};
use identity::Identity;

use crate::telemetry::Metrics;

/// The client in use, shared by the Tenant controller (which builds it) and the Credential
/// controller (which issues tokens and registry credentials through it).
#[derive(Default)]
pub struct Link {
    current: RwLock<Option<Arc<ControlPlaneClient>>>,
    /// When the current client last heartbeat successfully.
    heartbeat: Mutex<Option<Instant>>,
    /// Bumped whenever a new client is installed, so waiting Credentials retry at once.
    generation: tokio::sync::watch::Sender<u64>,
    settings: ClientSettings,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(settings: ClientSettings, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            current: RwLock::new(None),
            heartbeat: Mutex::new(None),
            generation: tokio::sync::watch::Sender::new(0),
            settings,
            metrics,
        }
    }

    /// The client in use, if the Tenant has a valid identity and an endpoint.
    pub fn current(&self) -> Option<Arc<ControlPlaneClient>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    /// The client for this identity and endpoint: the current one when the certificates (client
    /// and CA) and the endpoint are unchanged (keeping its connections and token), otherwise a
    /// new one that replaces it.
    pub fn connect(
        &self,
        identity: &Identity,
        endpoint: &str,
    ) -> Result<Arc<ControlPlaneClient>, ControlPlaneError> {
        if let Some(current) = self.current()
            && current.material_digest() == identity.material_digest()
            && current.endpoint() == endpoint.trim_end_matches('/')
        {
            return Ok(current);
        }
        let client = Arc::new(ControlPlaneClient::new(
            identity,
            endpoint,
            self.settings.clone(),
            self.metrics.clone(),
        )?);
        if let Ok(mut slot) = self.current.write() {
            *slot = Some(client.clone());
        }
        self.set_heartbeat(None);
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
        tracing::info!(endpoint = %client.endpoint(), fingerprint = %client.fingerprint(), "control-plane client ready");
        Ok(client)
    }

    /// Changes each time a new client is installed (the link came up or its identity rotated).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether a heartbeat is due: none yet with this client, or `interval` has passed.
    pub fn heartbeat_due(&self, interval: Duration) -> bool {
        self.heartbeat
            .lock()
            .ok()
            .and_then(|h| *h)
            .is_none_or(|at| at.elapsed() >= interval)
    }

    /// Record a successful heartbeat.
    pub fn heartbeat_done(&self) {
        self.set_heartbeat(Some(Instant::now()));
    }

    fn set_heartbeat(&self, at: Option<Instant>) {
        if let Ok(mut h) = self.heartbeat.lock() {
            *h = at;
        }
    }

    /// Forget the client (no valid identity, or no control plane configured).
    pub fn clear(&self) {
        if let Ok(mut slot) = self.current.write()
            && slot.take().is_some()
        {
            tracing::info!("control-plane client dropped");
        }
        self.set_heartbeat(None);
    }
}
