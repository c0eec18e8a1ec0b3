//! Events are published off the remediation path. A Remediation's status is the record an
//! incident cannot lose; its Events are for people (`kubectl events`, `flux events`). So a
//! step never waits for an Event write: it queues the Event and moves on, and a few publisher
//! tasks write them under the same client-side write limit. This is what client-go's event
//! broadcaster does too (an asynchronous queue that drops when full), and for the same reason:
//! in a storm the actions come first.
//!
//! Events about one object keep their order (one publisher per object, chosen by hash); a full
//! queue drops the Event and counts it (`fluxmedic_events_dropped_total`) rather than blocking.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tracing::warn;

use crate::limiter::WriteLimiter;

/// Publisher tasks; Events about one object always go to the same one.
const PUBLISHERS: usize = 4;
/// Events waiting per publisher (client-go's broadcaster queues 1,000 in all).
const QUEUE: usize = 256;

pub struct EventQueue {
    shards: Vec<mpsc::Sender<(Event, ObjectReference)>>,
    /// Queued or being written.
    pending: Arc<AtomicUsize>,
    dropped: Counter,
}

impl EventQueue {
    /// Start the publishers (on the current Tokio runtime).
    pub fn start(recorder: Recorder, limiter: Arc<WriteLimiter>, dropped: Counter) -> Self {
        let pending = Arc::new(AtomicUsize::new(0));
        let shards = (0..PUBLISHERS)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
                let (recorder, limiter, pending) =
                    (recorder.clone(), limiter.clone(), pending.clone());
                tokio::spawn(async move {
                    while let Some((ev, regarding)) = rx.recv().await {
                        if limiter.acquire().await.is_err() {
                            // No longer the leader: the new one records what it does.
                            pending.fetch_sub(1, Ordering::SeqCst);
                            continue;
                        }
                        if let Err(e) = recorder.publish(&ev, &regarding).await {
                            warn!(error = %e, reason = %ev.reason, "cannot publish Event");
                        }
                        pending.fetch_sub(1, Ordering::SeqCst);
                    }
                });
                tx
            })
            .collect();
        EventQueue {
            shards,
            pending,
            dropped,
        }
    }

    /// Queue an Event about `regarding`; never waits.
    pub fn send(&self, ev: Event, regarding: ObjectReference) {
        let key = format!(
            "{}/{}/{}",
            regarding.kind.as_deref().unwrap_or_default(),
            regarding.namespace.as_deref().unwrap_or_default(),
            regarding.name.as_deref().unwrap_or_default()
        );
        let shard = crate::incident::stable_hash(&key) as usize % self.shards.len();
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.shards[shard].try_send((ev, regarding)) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.dropped.inc();
            let (ev, _) = e.into_inner();
            warn!(reason = %ev.reason, "Event queue full: Event dropped");
        }
    }

    /// Events queued or being written.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Wait until every queued Event is written, at most `timeout` (used at shutdown).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.pending() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::{Request, Response};
    use kube::{
        Client,
        client::Body,
        runtime::events::{EventType, Reporter},
    };

    use super::*;

    fn ev(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(reason.into()),
            action: "Test".into(),
            secondary: None,
        }
    }

    fn about(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("kustomize.toolkit.fluxcd.io/v1".into()),
            kind: Some("Kustomization".into()),
            namespace: Some("apps".into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    /// A client whose API server records each created Event's (regarding name, reason), after
    /// waiting on `gate` when one is given.
    fn client(
        seen: Arc<Mutex<Vec<(String, String)>>>,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Client {
        let svc = tower::service_fn(move |req: Request<Body>| {
            let (seen, gate) = (seen.clone(), gate.clone());
            async move {
                if let Some(g) = gate {
                    let _permit = g.acquire().await;
                }
                let body = req.into_body().collect_bytes().await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                seen.lock().unwrap().push((
                    v["regarding"]["name"].as_str().unwrap_or_default().into(),
                    v["reason"].as_str().unwrap_or_default().into(),
                ));
                Ok::<_, std::convert::Infallible>(Response::new(Body::from(body.to_vec())))
            }
        });
        Client::new(svc, "default")
    }

    fn queue(client: Client, dropped: Counter) -> EventQueue {
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "fluxmedic".into(),
                instance: None,
            },
        );
        EventQueue::start(
            recorder,
            Arc::new(WriteLimiter::new(100_000, 100_000)),
            dropped,
        )
    }

    #[tokio::test]
    async fn every_event_is_written_in_order_per_object() {
        let seen = Arc::new(Mutex::new(vec![]));
        let q = queue(client(seen.clone(), None), Counter::default());
        for i in 0..20 {
            for obj in ["a", "b", "c"] {
                q.send(ev(&format!("R{i}")), about(obj));
            }
        }
        assert!(q.flush(Duration::from_secs(10)).await, "the queue drains");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 60, "every Event written once");
        for obj in ["a", "b", "c"] {
            let reasons: Vec<&str> = seen
                .iter()
                .filter(|(n, _)| n == obj)
                .map(|(_, r)| r.as_str())
                .collect();
            let expected: Vec<String> = (0..20).map(|i| format!("R{i}")).collect();
            assert_eq!(reasons, expected, "Events about {obj} keep their order");
        }
    }

    #[tokio::test]
    async fn a_stuck_api_server_drops_events_instead_of_blocking_the_caller() {
        let seen = Arc::new(Mutex::new(vec![]));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let dropped = Counter::default();
        let q = queue(client(seen.clone(), Some(gate.clone())), dropped.clone());
        let started = tokio::time::Instant::now();
        let n = QUEUE + 50;
        for i in 0..n {
            q.send(ev(&format!("R{i}")), about("same"));
            tokio::task::yield_now().await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "send never waits on the API server"
        );
        // One Event is being written (stuck), QUEUE wait, the rest were dropped and counted.
        assert_eq!(dropped.get() as usize, n - QUEUE - 1);
        assert_eq!(q.pending(), QUEUE + 1);
        assert!(!q.flush(Duration::from_millis(100)).await);
        gate.add_permits(n);
        assert!(q.flush(Duration::from_secs(10)).await);
        assert_eq!(seen.lock().unwrap().len(), QUEUE + 1);
    }
}
