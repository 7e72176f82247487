//! The API double behind a gate: requests that match a predicate are held until the test opens
//! the gate (an API server that is slow to take them); every other request passes at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use super::ApiDouble;

type Matches = Arc<dyn Fn(&http::Request<kube::client::Body>) -> bool + Send + Sync>;

/// The double, with the requests `matches` picks held until [`Gate::open`].
#[derive(Clone)]
pub struct Gate {
    double: ApiDouble,
    gate: Arc<Semaphore>,
    held: Arc<AtomicUsize>,
    matches: Matches,
}

impl Gate {
    pub fn new(
        double: ApiDouble,
        matches: impl Fn(&http::Request<kube::client::Body>) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            double,
            gate: Arc::new(Semaphore::new(0)),
            held: Arc::default(),
            matches: Arc::new(matches),
        }
    }

    /// Requests that reached the gate so far (held, or let through once it opened).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Let every held request and every later one through.
    pub fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// A client of the gated double.
    pub fn client(&self, namespace: &str) -> kube::Client {
        kube::Client::new(self.clone(), namespace)
    }
}

impl tower::Service<http::Request<kube::client::Body>> for Gate {
    type Response = http::Response<super::apidouble::ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let this = self.clone();
        async move {
            if (this.matches)(&request) {
                this.held.fetch_add(1, Ordering::SeqCst);
                let _permit = this.gate.acquire().await;
            }
            Ok(this.double.handle(request).await)
        }
        .boxed()
    }
}
