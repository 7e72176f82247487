//! The write fence: until when this process may write, the `bulkhead_leader` gauge that reports
//! it, and the client that refuses every non-read request once it is closed. The elector in
//! `leader` opens and closes it; `telemetry` and `operator` only read it, so this module depends
//! on nothing else of the crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kube::Client;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;

/// Until when this process may write: closed, open until an instant, or always (no election).
#[derive(Clone, Debug, Default)]
pub struct Fence {
    state: Arc<Mutex<FenceState>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum FenceState {
    #[default]
    Closed,
    Until(Instant),
    Always,
}

impl Fence {
    /// Whether a write may be sent now.
    pub fn allows(&self) -> bool {
        match self.get() {
            FenceState::Closed => false,
            FenceState::Until(until) => Instant::now() < until,
            FenceState::Always => true,
        }
    }

    pub(crate) fn get(&self) -> FenceState {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, state: FenceState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

/// The `bulkhead_leader` gauge: 1 while the controllers run *and* the fence lets them write,
/// evaluated at every scrape, so a process that resumes after a freeze never reports a
/// leadership it can no longer prove.
#[derive(Clone, Debug, Default)]
pub struct LeaderGauge {
    running: Arc<AtomicBool>,
    fence: Fence,
}

impl LeaderGauge {
    /// The fence this gauge reports on (and the elector maintains).
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Whether the controllers run.
    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    /// The current value: 1 or 0.
    pub fn get(&self) -> i64 {
        i64::from(self.running.load(Ordering::SeqCst) && self.fence.allows())
    }
}

impl EncodeMetric for LeaderGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> std::result::Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Why a write was refused without being sent.
#[derive(Debug, thiserror::Error)]
#[error(
    "not sent: this process no longer holds the Lease (it could not renew it before the renew deadline)"
)]
pub struct NotLeader;

/// A client that refuses every non-read request while `fence` is closed. Reads (GET: get, list,
/// watch) pass, so caches stay warm on a standby.
pub fn fenced(client: Client, fence: Fence) -> Client {
    let namespace = client.default_namespace().to_owned();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let client = client.clone();
        let allowed = request.method() == http::Method::GET || fence.allows();
        async move {
            if !allowed {
                return Err(kube::Error::Service(Box::new(NotLeader)));
            }
            client.send(request).await
        }
    });
    Client::new(service, namespace)
}
