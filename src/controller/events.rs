//! Events off the reconcile's critical path: a reconcile hands its Events to a bounded queue
//! and goes on; one background task publishes them in order through kube's `Recorder` (whose
//! cache turns a repeated Event into a series PATCH, as when it was awaited inline).
//!
//! A full queue drops the Event, counts it in `bulkhead_events_dropped_total` and logs once per
//! episode: Events are advisory, and a slow Event write must never hold up a Secret or a status.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Events waiting to be published. A burst of 200 creates queues about 400 (a Created and a
/// Ready Event each); an Event here is a few hundred bytes.
pub const EVENT_QUEUE_CAPACITY: usize = 1024;

/// The sending half: cheap, never waits.
pub struct EventQueue {
    tx: mpsc::Sender<(Event, ObjectReference)>,
    dropped: Counter,
    /// Set while Events are being dropped, so a full queue logs once, not once per Event.
    dropping: Arc<AtomicBool>,
}

/// The publishing half: run it for as long as the controllers run.
pub struct EventPublisher {
    rx: mpsc::Receiver<(Event, ObjectReference)>,
    recorder: Recorder,
}

/// A queue of `capacity` Events in front of `recorder`; drops are counted in `dropped`.
pub fn queue(
    recorder: Recorder,
    capacity: usize,
    dropped: Counter,
) -> (EventQueue, EventPublisher) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        EventQueue {
            tx,
            dropped,
            dropping: Arc::default(),
        },
        EventPublisher { rx, recorder },
    )
}

impl EventQueue {
    /// Queue an Event about `regarding`; when the queue is full (or the publisher gone), drop it.
    pub fn send(&self, event: Event, regarding: ObjectReference) {
        match self.tx.try_send((event, regarding)) {
            Ok(()) => {
                if self.dropping.swap(false, Ordering::Relaxed) {
                    tracing::info!("Event queue drained; publishing Events again");
                }
            }
            Err(err) => {
                self.dropped.inc();
                let (event, regarding) = err.into_inner();
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        kind = regarding.kind.as_deref().unwrap_or_default(),
                        name = regarding.name.as_deref().unwrap_or_default(),
                        reason = %event.reason,
                        capacity = self.tx.max_capacity(),
                        "Event queue full (the API server is slow to take Events); dropping Events until it drains, counted in bulkhead_events_dropped_total"
                    );
                }
            }
        }
    }
}

impl EventPublisher {
    /// Publish queued Events one at a time until every sender is gone.
    pub async fn run(mut self) {
        while let Some((event, regarding)) = self.rx.recv().await {
            if let Err(err) = self.recorder.publish(&event, &regarding).await {
                // Named as a failed call, not kube's dump of the whole Status.
                let err = crate::Error::api(
                    format!(
                        "create Event in {}",
                        regarding.namespace.as_deref().unwrap_or_default()
                    ),
                    err,
                );
                tracing::warn!(
                    error = %err,
                    kind = regarding.kind.as_deref().unwrap_or_default(),
                    name = regarding.name.as_deref().unwrap_or_default(),
                    reason = %event.reason,
                    "cannot publish Event"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::events::{EventType, Reporter};

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.to_owned(),
            note: None,
            action: "Test".to_owned(),
            secondary: None,
        }
    }

    fn regarding() -> ObjectReference {
        ObjectReference {
            namespace: Some("team-a".into()),
            name: Some("db".into()),
            ..ObjectReference::default()
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // An API server that takes each Event request and never answers.
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<String>();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let _ = seen_tx.send(req.uri().path().to_owned());
            async move {
                std::future::pending::<()>().await;
                Ok::<_, std::convert::Infallible>(http::Response::new(kube::client::Body::empty()))
            }
        });
        let client = kube::Client::new(service, "team-a");
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "test".into(),
                instance: None,
            },
        );
        let dropped = Counter::default();
        let (queue, publisher) = queue(recorder, 1, dropped.clone());
        let publishing = tokio::spawn(publisher.run());

        queue.send(event("First"), regarding());
        // The publisher has taken the first Event and is stuck on its POST.
        let path = seen.recv().await.unwrap();
        assert!(path.ends_with("/namespaces/team-a/events"), "{path}");
        queue.send(event("Second"), regarding()); // fills the one slot
        assert_eq!(dropped.get(), 0);
        queue.send(event("Third"), regarding()); // nowhere to go
        queue.send(event("Fourth"), regarding());
        assert_eq!(dropped.get(), 2, "each Event that did not fit is counted");
        assert!(
            seen.try_recv().is_err(),
            "one Event request at a time: the queued one waits for the stuck one"
        );
        publishing.abort();
    }
}
