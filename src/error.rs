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
    #[error("Kubernetes API call failed: {}", describe_kube(.0))]
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

/// A kube error as a person should read it: an API answer as `HTTP 401 Unauthorized: <its
/// message>`, anything else as its chain of causes. Never `Debug` formatting (kube's own
/// `Display` of an API error prints the whole `Status` structure).
pub fn describe_kube(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                http::StatusCode::from_u16(status.code)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or("")
                    .to_owned()
            } else {
                status.reason.clone()
            };
            format!("HTTP {} {reason}: {}", status.code, status.message)
        }
        // kube's own prefix ("ServiceError: ") says nothing to a user: start at the cause.
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            std::error::Error::source(err).map_or_else(|| err.to_string(), chain)
        }
        other => chain(other),
    }
}

/// An error and its sources, `: `-separated, without a part the previous one already says.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// No HTTP answer at all: the API server could not be reached (refused, timed out, TLS).
pub fn is_unreachable(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Service(_) | kube::Error::HyperError(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_answer_reads_as_code_reason_and_message_never_as_a_structure() {
        let status = kube::core::Status {
            code: 401,
            message: "Unauthorized".into(),
            reason: "Unauthorized".into(),
            ..kube::core::Status::default()
        };
        let text = describe_kube(&kube::Error::Api(Box::new(status)));
        assert_eq!(text, "HTTP 401 Unauthorized: Unauthorized");
        let wrapped = Error::from(kube::Error::Api(Box::new(kube::core::Status {
            code: 404,
            message: "not found".into(),
            ..kube::core::Status::default()
        })));
        let text = wrapped.to_string();
        assert!(
            !text.contains("Status {") && text.contains("HTTP 404 Not Found"),
            "{text}"
        );
    }
}
