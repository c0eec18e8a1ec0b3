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

/// A backlog from which Events about one object are merged (see [`coalesce`]).
const BACKLOG: usize = 64;
/// The API server's limit on an Event's note (events.k8s.io/v1).
const NOTE_MAX: usize = 1024;

/// Events as they will be written, each with how many queued Events it stands for. While a
/// publisher keeps up, that is each Event as it came. Behind by [`BACKLOG`] or more (a storm,
/// when the API server's write capacity is what every incident waits on), the Events about
/// one object from one incident (one regarding, one related record) that follow each other
/// (nothing else about that object between) are merged into one, in the place of the first:
/// the latest reason, action and type, and every note in order behind its reason
/// (`FailureDetected: …; ActionSucceeded: …`), the oldest cut first to the API server's
/// 1 KiB. Nothing is lost that Flux's alerting reads: each occurrence still went to
/// notification-controller as it happened. (client-go's event correlator merges similar
/// Events under pressure for the same reason.)
fn coalesce(queued: Vec<(Event, ObjectReference)>) -> Vec<(Event, ObjectReference, usize)> {
    let mut out: Vec<(Event, ObjectReference, usize)> = Vec::with_capacity(queued.len());
    if queued.len() < BACKLOG {
        return queued
            .into_iter()
            .map(|(mut e, r)| {
                e.note = e.note.map(|n| cut(n, NOTE_MAX));
                (e, r, 1)
            })
            .collect();
    }
    // Per object, where its latest Event is in `out`: one about the same incident right
    // after it (nothing else about that object between) is merged into it.
    let mut last: std::collections::HashMap<String, usize> = Default::default();
    for (mut ev, regarding) in queued {
        let object = reference_key(&regarding);
        let incident = ev.secondary.as_ref().map(reference_key);
        let into = last
            .get(&object)
            .copied()
            .filter(|&i| out[i].0.secondary.as_ref().map(reference_key) == incident);
        let Some(i) = into else {
            last.insert(object, out.len());
            ev.note = ev.note.map(|n| cut(n, NOTE_MAX));
            out.push((ev, regarding, 1));
            continue;
        };
        let merged = &mut out[i];
        if merged.2 == 1 {
            merged.0.note = Some(labelled(&merged.0));
        }
        let note = format!(
            "{}; {}",
            merged.0.note.take().unwrap_or_default(),
            labelled(&ev)
        );
        // The latest note is kept whole where it fits: what is cut is the oldest.
        merged.0.note = Some(cut_front(note, NOTE_MAX));
        merged.0.reason = ev.reason;
        merged.0.action = ev.action;
        merged.0.type_ = ev.type_;
        merged.2 += 1;
    }
    out
}

/// `s` without its start, so that at most `max` bytes are left (on a character boundary).
fn cut_front(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

fn reference_key(r: &ObjectReference) -> String {
    format!(
        "{}/{}/{}/{}",
        r.kind.as_deref().unwrap_or_default(),
        r.namespace.as_deref().unwrap_or_default(),
        r.name.as_deref().unwrap_or_default(),
        r.uid.as_deref().unwrap_or_default()
    )
}

fn labelled(ev: &Event) -> String {
    format!("{}: {}", ev.reason, ev.note.as_deref().unwrap_or_default())
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

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
                    while let Some(first) = rx.recv().await {
                        let mut queued = vec![first];
                        while queued.len() < QUEUE {
                            match rx.try_recv() {
                                Ok(next) => queued.push(next),
                                Err(_) => break,
                            }
                        }
                        for (ev, regarding, n) in coalesce(queued) {
                            if limiter.acquire().await.is_ok()
                                && let Err(e) = recorder.publish(&ev, &regarding).await
                            {
                                warn!(error = %e, reason = %ev.reason, "cannot publish Event");
                            }
                            // (Not the leader any more: the new one records what it does.)
                            pending.fetch_sub(n, Ordering::SeqCst);
                        }
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

    fn warning(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            note: Some(note.into()),
            ..ev(reason)
        }
    }

    #[test]
    fn a_backlog_merges_the_events_of_one_incident_and_nothing_else() {
        // Below the backlog: every Event as it came.
        let few: Vec<_> = (0..BACKLOG - 1).map(|_| (ev("R"), about("a"))).collect();
        assert_eq!(coalesce(few).len(), BACKLOG - 1);
        // A storm: each object's FailureDetected and ActionSucceeded queued together.
        let mut queued = vec![];
        for i in 0..BACKLOG {
            queued.push((ev("FailureDetected"), about(&format!("k{i}"))));
        }
        for i in 0..BACKLOG {
            queued.push((warning("ActionFailed", "no"), about(&format!("k{i}"))));
        }
        // Another incident's record as the related object: never merged with the first's.
        let mut other = warning("FailureDetected", "other incident");
        other.secondary = Some(about("remediation-2"));
        queued.push((other, about("k0")));
        let out = coalesce(queued);
        assert_eq!(out.len(), BACKLOG + 1);
        assert_eq!(
            out.iter().map(|o| o.2).sum::<usize>(),
            2 * BACKLOG + 1,
            "every queued Event accounted for"
        );
        let (first, regarding, n) = &out[0];
        assert_eq!((regarding.name.as_deref(), *n), (Some("k0"), 2));
        assert_eq!(first.reason, "ActionFailed", "the latest reason");
        assert_eq!(first.type_, EventType::Warning, "the latest type");
        assert_eq!(
            first.note.as_deref(),
            Some("FailureDetected: FailureDetected; ActionFailed: no"),
            "every note, in order, behind its reason"
        );
        assert_eq!(out[BACKLOG].0.note.as_deref(), Some("other incident"));
        // Names are in order of first appearance: per-object order is kept.
        let names: Vec<_> = out[..BACKLOG]
            .iter()
            .map(|o| o.1.name.clone().unwrap())
            .collect();
        let expected: Vec<_> = (0..BACKLOG).map(|i| format!("k{i}")).collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_merged_note_stays_within_the_api_servers_limit_on_a_character_boundary() {
        let long = "é".repeat(700); // 1,400 bytes
        let queued: Vec<_> = (0..BACKLOG)
            .map(|i| (warning("R", &long), about(if i < 2 { "a" } else { "b" })))
            .collect();
        let out = coalesce(queued);
        for (e, _, _) in &out {
            let note = e.note.as_deref().unwrap();
            assert!(note.len() <= NOTE_MAX, "{}", note.len());
        }
        assert_eq!(out[0].2, 2);
    }

    #[test]
    fn a_merge_keeps_the_latest_note_and_type_and_the_order_per_object() {
        let of = |e: Event, record: &str| {
            let mut e = e;
            e.secondary = Some(about(record));
            (e, about("x"))
        };
        let mut queued: Vec<_> = (0..BACKLOG)
            .map(|i| (ev("Other"), about(&format!("o{i}"))))
            .collect();
        queued.push(of(warning("FailureDetected", &"a".repeat(1000)), "r1"));
        queued.push(of(ev("Recovered"), "r1"));
        queued.push(of(warning("FailureDetected", "again"), "r2"));
        queued.push(of(ev("Recovered"), "r1"));
        let out: Vec<_> = coalesce(queued).into_iter().skip(BACKLOG).collect();
        // r1's two, then r2's, then r1's again: nothing about x is moved across another.
        assert_eq!(out.iter().map(|o| o.2).collect::<Vec<_>>(), [2, 1, 1]);
        let merged = &out[0].0;
        assert_eq!(
            merged.type_,
            EventType::Normal,
            "the latest type: recovered"
        );
        let note = merged.note.as_deref().unwrap();
        assert!(note.len() <= NOTE_MAX);
        assert!(
            note.ends_with("; Recovered: Recovered"),
            "the latest note kept: {note}"
        );
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
        // The stuck one, then the backlog of QUEUE about the same object as one merged Event.
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(
            seen[1].1,
            format!("R{}", QUEUE),
            "the latest reason of the backlog"
        );
    }
}
