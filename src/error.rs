//! The one error type of the operator.
//!
//! Every variant keeps its source and says what was being done; `metric_label` gives a short,
//! bounded label for the `bulkhead_reconcile_errors_total` metric so error text never becomes a
//! label value. A Kubernetes call says what it did with [`Doing::doing`] (or
//! [`Doing::doing_as`] where the caller knows the Role rule that allows it, so a 403 becomes
//! [`Error::Forbidden`] naming the rule and the fix). There is no `From<kube::Error>`: a bare `?` on
//! a kube call does not compile, so no call site can forget to say what it did.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any underlying error kept as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while running Bulkhead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed; `action` says which (`patch Secret team-a/db`).
    #[error("{action} failed: {}", describe_kube(.source))]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// The API refused a call because the Role lacks a rule.
    #[error("forbidden: {action}; the Role lacks: {rule}. Grant it with {fix}")]
    Forbidden {
        action: String,
        rule: String,
        fix: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Serialising an object failed.
    #[error("serialisation failed: {0}")]
    Serialization(#[from] serde_json::Error),

    /// No usable Kubernetes client or access: `message` says what was being done and the fix.
    #[error("{message}")]
    Config {
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// The operator's own configuration is unusable: `message` names the flag and the fix.
    #[error("configuration: {message}")]
    Usage {
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed while {doing}: {source}")]
    Entropy {
        doing: String,
        #[source]
        source: getrandom::Error,
    },

    /// Restarting a workload after a rotation failed (retried).
    #[error("restarting {target} failed: {}", describe_kube(.source))]
    Restart {
        target: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// A control-plane call failed (retried with backoff, or at the time it asked for).
    #[error("control plane: {0}")]
    ControlPlane(#[from] crate::controlplane::client::ControlPlaneError),

    /// Binding or serving an HTTP socket failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A failed Kubernetes call and what it was doing (`get Lease bulkhead/bulkhead`).
    pub fn api(action: impl Into<String>, err: kube::Error) -> Self {
        Self::Kube {
            action: action.into(),
            source: Box::new(err),
        }
    }

    /// Like [`Error::api`], and a 403 becomes [`Error::Forbidden`] naming the Role `rule` that
    /// allows the call and the `fix` that grants it.
    pub fn api_as(action: impl Into<String>, err: kube::Error, rule: &str, fix: &str) -> Self {
        if is_status(&err, 403) {
            Self::Forbidden {
                action: action.into(),
                rule: rule.to_owned(),
                fix: fix.to_owned(),
                source: Box::new(err),
            }
        } else {
            Self::api(action, err)
        }
    }

    /// A client or access problem with nothing underneath it.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config {
            message: message.into(),
            source: None,
        }
    }

    /// A client or access problem caused by `source`.
    pub fn config_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Config {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A bad flag or setting with nothing underneath it.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage {
            message: message.into(),
            source: None,
        }
    }

    /// A bad flag or setting found because `source` failed.
    pub fn usage_from(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Usage {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The underlying Kubernetes error, if this is one.
    pub fn kube_error(&self) -> Option<&kube::Error> {
        match self {
            Self::Kube { source, .. }
            | Self::Forbidden { source, .. }
            | Self::Restart { source, .. } => Some(source),
            _ => None,
        }
    }

    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Forbidden { .. } => "forbidden",
            Self::Serialization(_) => "serialization",
            Self::Config { .. } => "config",
            Self::Usage { .. } => "usage",
            Self::Entropy { .. } => "entropy",
            Self::Restart { .. } => "restart",
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

/// How a Kubernetes call site says what it was doing:
/// `api.get_opt(name).await.doing(format!("get Lease {ns}/{name}"))?`.
pub trait Doing<T> {
    /// Wrap an error as [`Error::Kube`] naming `action`.
    fn doing(self, action: impl Into<String>) -> Result<T>;
    /// Like [`Doing::doing`]; a 403 becomes [`Error::Forbidden`] naming `rule` and `fix`.
    fn doing_as(self, action: impl Into<String>, rule: &str, fix: &str) -> Result<T>;
}

impl<T> Doing<T> for std::result::Result<T, kube::Error> {
    fn doing(self, action: impl Into<String>) -> Result<T> {
        self.map_err(|err| Error::api(action, err))
    }

    fn doing_as(self, action: impl Into<String>, rule: &str, fix: &str) -> Result<T> {
        self.map_err(|err| Error::api_as(action, err, rule, fix))
    }
}

/// Whether a kube error is an API status with this HTTP code.
pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

/// Turn a 403 into `Error::Forbidden` naming the missing rule and the fix; other errors keep
/// the action too. Same as [`Error::api_as`] (kept for the call sites written against it).
pub fn forbidden_as(err: kube::Error, action: impl Into<String>, rule: &str, fix: &str) -> Error {
    Error::api_as(action, err, rule, fix)
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
        let wrapped = Error::api(
            "get Secret team-a/db",
            kube::Error::Api(Box::new(kube::core::Status {
                code: 404,
                message: "not found".into(),
                ..kube::core::Status::default()
            })),
        );
        let text = wrapped.to_string();
        assert!(
            !text.contains("Status {") && text.contains("HTTP 404 Not Found"),
            "{text}"
        );
    }

    fn api_status(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..kube::core::Status::default()
        }))
    }

    /// The sources under an error, outermost first.
    fn sources(err: &Error) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = std::error::Error::source(err);
        while let Some(e) = current {
            out.push(e.to_string());
            current = e.source();
        }
        out
    }

    fn source_is<T: std::error::Error + 'static>(err: &Error) -> bool {
        std::error::Error::source(err).is_some_and(|s| s.is::<T>())
    }

    #[test]
    fn an_api_error_names_the_action_and_keeps_the_kube_error() {
        let result: std::result::Result<(), kube::Error> = Err(api_status(500, "etcd timed out"));
        let err = result.doing("patch Secret team-a/db").unwrap_err();
        assert_eq!(
            err.to_string(),
            "patch Secret team-a/db failed: HTTP 500 Internal Server Error: etcd timed out"
        );
        assert_eq!(err.metric_label(), "kube");
        assert!(matches!(err.kube_error(), Some(kube::Error::Api(s)) if s.code == 500));
        assert!(
            source_is::<Box<kube::Error>>(&err),
            "the kube error is the source"
        );
    }

    #[test]
    fn a_403_names_the_rule_and_the_fix_only_where_the_caller_knows_them() {
        let result: std::result::Result<(), kube::Error> = Err(api_status(403, "no"));
        let err = result
            .doing_as("get secrets/db", "secrets: get", "helm upgrade")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "forbidden: get secrets/db; the Role lacks: secrets: get. Grant it with helm upgrade"
        );
        assert_eq!(err.metric_label(), "forbidden");
        assert!(err.kube_error().is_some(), "keeps the 403");
        // Without a rule to name, a 403 is a failed call like any other.
        let plain = Error::api("get secrets/db", api_status(403, "no"));
        assert_eq!(plain.metric_label(), "kube");
        assert!(
            plain
                .to_string()
                .starts_with("get secrets/db failed: HTTP 403 Forbidden")
        );
        // Other codes are never called forbidden.
        let other = forbidden_as(api_status(404, "gone"), "get secrets/db", "r", "f");
        assert_eq!(
            other.to_string(),
            "get secrets/db failed: HTTP 404 Not Found: gone"
        );
    }

    #[test]
    fn config_and_usage_say_what_was_done_and_keep_their_source() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let err = Error::usage_from("cannot listen on 0.0.0.0:8080; pick a free address", io);
        assert_eq!(
            err.to_string(),
            "configuration: cannot listen on 0.0.0.0:8080; pick a free address"
        );
        assert_eq!(sources(&err), vec!["address in use"]);
        assert_eq!(err.metric_label(), "usage");
        let bare = Error::usage("--metrics-addr and --probe-addr must differ");
        assert!(sources(&bare).is_empty());

        let err = Error::config_from(
            "cannot build a Kubernetes client: no kubeconfig",
            api_status(401, "Unauthorized"),
        );
        assert_eq!(
            err.to_string(),
            "cannot build a Kubernetes client: no kubeconfig"
        );
        assert!(source_is::<kube::Error>(&err));
        assert_eq!(err.metric_label(), "config");
        assert_eq!(Error::config("no store").to_string(), "no store");
    }

    #[test]
    fn entropy_and_restart_say_what_failed_and_keep_their_source() {
        let err = Error::Entropy {
            doing: "generating a Secret value".into(),
            source: getrandom::Error::UNSUPPORTED,
        };
        let text = err.to_string();
        assert!(
            text.starts_with(
                "the operating system's random number generator failed while generating a Secret value: "
            ),
            "{text}"
        );
        assert_eq!(sources(&err).len(), 1);
        assert_eq!(err.metric_label(), "entropy");

        let err = Error::Restart {
            target: "Deployment/web".into(),
            source: Box::new(api_status(422, "invalid")),
        };
        assert_eq!(
            err.to_string(),
            "restarting Deployment/web failed: HTTP 422 Unprocessable Entity: invalid"
        );
        assert!(err.kube_error().is_some());
        assert_eq!(err.metric_label(), "restart");
    }

    #[test]
    fn serialization_io_and_control_plane_keep_their_source() {
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let err = Error::from(json);
        assert!(err.to_string().starts_with("serialisation failed: "));
        assert_eq!(sources(&err).len(), 1);
        let err = Error::from(std::io::Error::other("disk gone"));
        assert_eq!(err.to_string(), "I/O: disk gone");
        assert_eq!(sources(&err), vec!["disk gone"]);
        assert_eq!(err.metric_label(), "io");
        let timeout = crate::controlplane::client::ControlPlaneError::Timeout(
            std::time::Duration::from_secs(5),
        );
        let err = Error::from(timeout);
        assert_eq!(
            err.to_string(),
            "control plane: the control plane did not answer within 5s"
        );
        assert_eq!(sources(&err).len(), 1);
        assert_eq!(err.metric_label(), "control_plane");
    }
}
