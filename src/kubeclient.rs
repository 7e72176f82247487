//! The Kubernetes client: kube's own stack (base URI, auth, extra headers, its retry of 429,
//! 503 and 504, its connect/read/write timeouts), on a TCP connector with `TCP_NODELAY`.
//!
//! kube builds its connector without `TCP_NODELAY`, so a request written behind a not yet
//! acknowledged segment (the end of a TLS handshake, a request on a fresh connection) can wait
//! for the peer's delayed ACK, about 40 ms on Linux. Start-up opens a connection per watch, so
//! that wait was most of the time from process start to the first Secret (README, Performance).

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use tower::retry::RetryLayer;
use tower::{BoxError, ServiceBuilder};

/// Idle connections kept for reuse (watches hold their own, busy ones). kube keeps every one
/// for 90 s: after a burst worked through 64 reconciles at once, that was 64 TLS connections,
/// about 3 MiB, held through the next idle minute.
const IDLE_CONNECTIONS: usize = 8;

/// A client for `config`, as `kube::Client::try_from(config)` builds it but with `TCP_NODELAY`.
/// A proxied configuration is left to kube (which refuses it: the proxy features are off).
pub fn build(config: kube::Config) -> Result<kube::Client, kube::Error> {
    if config.proxy_url.is_some() {
        return kube::Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_CONNECTIONS)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}
