//! The one error type of the operator.
//!
//! Every variant keeps its source; `metric_label` gives a short, bounded label for the
//! `bulkhead_reconcile_errors_total` metric so error text never becomes a label value.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while running Bulkhead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] Box<kube::Error>),

    /// The API refused a call because the Role lacks a rule.
    #[error("forbidden: {action}; the Role lacks: {rule}. Grant it with {fix}")]
    Forbidden {
        action: String,
        rule: String,
        fix: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// The object's spec cannot be acted on; waits for the user to change it.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// A Secret of that name exists and Bulkhead does not manage it.
    #[error("{0}")]
    Conflict(String),

    /// Serialising an object failed.
    #[error("serialisation failed: {0}")]
    Serialization(#[from] serde_json::Error),

    /// Building the Kubernetes client failed.
    #[error("cannot build a Kubernetes client: {0}")]
    Config(String),

    /// The operator's own configuration is unusable.
    #[error("configuration: {0}")]
    Usage(String),

    /// The operating system's random number generator failed.
    #[error("{0}")]
    Entropy(String),

    /// Restarting a workload after a rotation failed (retried).
    #[error("{0}")]
    Restart(String),

    /// A control-plane call failed (retried with backoff, or at the time it asked for).
    #[error("control plane: {0}")]
    ControlPlane(#[from] crate::controlplane::client::ControlPlaneError),

    /// Binding or serving an HTTP socket failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<kube::Error> for Error {
    fn from(err: kube::Error) -> Self {
        Self::Kube(Box::new(err))
    }
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Forbidden { .. } => "forbidden",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Conflict(_) => "conflict",
            Self::Serialization(_) => "serialization",
            Self::Config(_) => "config",
            Self::Usage(_) => "usage",
            Self::Entropy(_) => "entropy",
            Self::Restart(_) => "restart",
            Self::Io(_) => "io",
            Self::ControlPlane(_) => "control_plane",
        }
    }

    /// When the failing party said when to come back (HTTP 429 `Retry-After`).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::ControlPlane(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// Whether a kube error is an API status with this HTTP code.
pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

/// Turn a 403 into `Error::Forbidden` naming the missing rule and the fix; keep other errors.
pub fn forbidden_as(err: kube::Error, action: impl Into<String>, rule: &str, fix: &str) -> Error {
    if is_status(&err, 403) {
        Error::Forbidden {
            action: action.into(),
            rule: rule.to_owned(),
            fix: fix.to_owned(),
            source: Box::new(err),
        }
    } else {
        Error::from(err)
    }
}
