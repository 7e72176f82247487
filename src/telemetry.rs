//! Logs, metrics and the probe/metrics HTTP endpoints.
//!
//! Metrics carry the `bulkhead_` prefix and bounded label values only (controller names, error
//! labels, condition reasons). `/readyz` fails with the reason while the preflight is failing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Install the global tracing subscriber. `level` is an `EnvFilter` directive (`info`,
/// `bulkhead=debug,kube=info`, ...).
pub fn init_logging(format: LogFormat, level: &str) -> Result<()> {
    // kube's HTTP layer logs every failed request at ERROR; the operator reports each failure
    // itself, once, with what it means, so those lines stay off unless asked for by target.
    let directives = if level.contains("kube_client") {
        level.to_owned()
    } else {
        format!("{level},kube_client::client::builder=off")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).map_err(|e| {
        let message = format!(
            "--log-level {level:?} is not a valid filter ({e}); use e.g. info or bulkhead=debug,kube=warn"
        );
        crate::Error::usage_from(message, e)
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never into a file or a log collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A subscriber already installed (tests) is fine.
    drop(installed);
    LOGGING.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

static LOGGING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `init_logging` ran: errors then go to the log, not a second time to stderr.
pub fn logging_installed() -> bool {
    LOGGING.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControlPlaneLabels {
    pub operation: &'static str,
    /// HTTP status, or `connect`, `tls`, `timeout`.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric Bulkhead exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub leader: crate::fence::LeaderGauge,
    pub preflight_ok: Gauge,
    pub missing_rights: Gauge,
    pub excess_rights: Gauge,
    pub crds_served: Gauge,
    pub rotations: Family<TypeLabels, Counter>,
    pub next_rotation: Family<CredentialLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub credential_ready: Family<CredentialLabels, Gauge>,
    pub control_plane_requests: Family<ControlPlaneLabels, Counter>,
    pub identity_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Objects skipped because this binary cannot decode them (counted once per version).
    pub undecodable: Family<KindLabels, Counter>,
    /// Events dropped because the queue to the API server was full (`controller::events`).
    pub events_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulkhead");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "reconcile",
            "Reconcile runs per controller",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconcile runs per controller and error label",
            reconcile_errors.clone(),
        );
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            });
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration per controller",
            reconcile_duration.clone(),
        );
        let leader = crate::fence::LeaderGauge::default();
        registry.register(
            "leader",
            "1 while this instance holds the Lease and may write (checked at each scrape)",
            leader.clone(),
        );
        let preflight_ok = Gauge::default();
        registry.register(
            "preflight_ok",
            "1 when the CRDs are served and every needed right is granted",
            preflight_ok.clone(),
        );
        let missing_rights = Gauge::default();
        registry.register(
            "preflight_missing_rights",
            "Needed (verb, resource, name) grants the Role does not give",
            missing_rights.clone(),
        );
        let excess_rights = Gauge::default();
        registry.register(
            "preflight_excess_rights",
            "Granted rights beyond what this version needs (e.g. list secrets)",
            excess_rights.clone(),
        );
        let crds_served = Gauge::default();
        registry.register(
            "crds_served",
            "1 when every Bulkhead CRD is served in this namespace",
            crds_served.clone(),
        );
        let rotations = Family::<TypeLabels, Counter>::default();
        registry.register(
            "credential_rotations",
            "Credential rotations performed, by credential type",
            rotations.clone(),
        );
        let next_rotation =
            Family::<CredentialLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "credential_next_rotation_timestamp_seconds",
            "Unix time of each credential's next scheduled rotation",
            next_rotation.clone(),
        );
        let credential_ready = Family::<CredentialLabels, Gauge>::default();
        registry.register(
            "credential_ready",
            "1 while the credential's Ready condition is True, 0 otherwise (as last written to its status)",
            credential_ready.clone(),
        );
        let control_plane_requests = Family::<ControlPlaneLabels, Counter>::default();
        registry.register(
            "control_plane_requests",
            "Control-plane API requests by operation and HTTP status (or connect/tls/timeout)",
            control_plane_requests.clone(),
        );
        let identity_expiry = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "identity_expiry_timestamp_seconds",
            "Unix time the mTLS identity certificate expires (0 when none is loaded)",
            identity_expiry.clone(),
        );
        let undecodable = Family::<KindLabels, Counter>::default();
        registry.register(
            "undecodable_objects",
            "Object versions skipped because this binary cannot decode them (CRD bundle newer than the binary?)",
            undecodable.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Events not published because the queue to the API server was full (Events are advisory)",
            events_dropped.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            preflight_ok,
            missing_rights,
            excess_rights,
            crds_served,
            rotations,
            next_rotation,
            credential_ready,
            control_plane_requests,
            identity_expiry,
            undecodable,
            events_dropped,
        }
    }
}

impl Metrics {
    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Drop a deleted Credential's series, so nothing (an alert, a dashboard) speaks of a
    /// Credential that no longer exists.
    pub fn forget_credential(&self, name: &str) {
        let labels = CredentialLabels {
            credential: name.to_owned(),
        };
        self.next_rotation.remove(&labels);
        self.credential_ready.remove(&labels);
    }

    /// Record one reconcile run.
    pub fn observe_reconcile(
        &self,
        controller: &'static str,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { controller, error })
                .inc();
        }
    }
}

/// What `/readyz` answers: `None` when ready, else the reason.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<Option<String>>>);

impl Readiness {
    /// A fresh readiness state that is not ready yet.
    pub fn starting() -> Self {
        Self(Arc::new(Mutex::new(Some(
            "starting: preflight has not run yet".to_owned(),
        ))))
    }

    pub fn set_ready(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// `None` when ready.
    pub fn reason(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    match state.readiness.reason() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Router for the probe endpoints.
pub fn probe_router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ServerState { metrics, readiness })
}

/// Router for `/metrics`.
pub fn metrics_router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .with_state(ServerState { metrics, readiness })
}

/// Bind and serve a router until `shutdown` is cancelled. Binding errors are returned at once.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        let message = format!(
            "cannot listen on {addr}: {e}; pick a free address with --metrics-addr/--probe-addr"
        );
        crate::Error::usage_from(message, e)
    })?;
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(%addr, error = %err, "HTTP server stopped");
        }
    }))
}
