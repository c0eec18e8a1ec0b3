//! Flux events into Flux's own notification-controller, so the Alerts people already route to
//! Slack, Teams or PagerDuty show what fluxmedic sees and does.
//!
//! notification-controller takes events from any reporter over HTTP (the `eventv1.Event` JSON,
//! POSTed to its event server, any path). Each occurrence is an event about the Flux object
//! (Alerts select on Flux kinds), severity `info` or `error`, its message prefixed `fluxmedic:`
//! so an Alert can include or exclude them (`inclusionList`/`exclusionList`), the Remediation
//! named in metadata under `event.toolkit.fluxcd.io/`, and a unique token there so
//! notification-controller's duplicate suppression never swallows a distinct occurrence. No
//! revision or commit keys: on commit-status providers those would overwrite Flux's own.
//!
//! Like Kubernetes Events, these are for people: queued, posted off the remediation path, and
//! dropped (counted) rather than waited on when notification-controller is slow or away.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::debug;

use crate::{flux::FluxObject, telemetry::OutcomeLabels};

/// The prefix of every message fluxmedic posts.
pub const PREFIX: &str = "fluxmedic: ";
const QUEUE: usize = 512;

/// `involvedObject` of an eventv1.Event.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Involved {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    pub api_version: String,
}

/// The eventv1.Event notification-controller reads.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FluxEvent {
    pub involved_object: Involved,
    pub severity: &'static str,
    pub timestamp: String,
    pub message: String,
    pub reason: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub reporting_controller: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reporting_instance: Option<String>,
}

impl FluxEvent {
    /// An occurrence about `target`, recorded by Remediation `record`.
    pub fn about(
        target: &FluxObject,
        api_version: &str,
        warning: bool,
        reason: &str,
        note: &str,
        record: Option<&str>,
        instance: Option<&str>,
    ) -> Self {
        let now = jiff::Timestamp::now();
        let mut metadata = std::collections::BTreeMap::new();
        if let Some(r) = record {
            metadata.insert(
                "event.toolkit.fluxcd.io/remediation".to_string(),
                r.to_string(),
            );
        }
        // Unique per occurrence: notification-controller suppresses repeats of the same
        // (object, message, revision, token) within its rate-limit interval.
        metadata.insert("event.toolkit.fluxcd.io/token".to_string(), now.to_string());
        FluxEvent {
            involved_object: Involved {
                kind: target.key.kind.as_str().to_string(),
                namespace: target.key.namespace.clone(),
                name: target.key.name.clone(),
                uid: target.uid.clone(),
                api_version: api_version.to_string(),
            },
            severity: if warning { "error" } else { "info" },
            timestamp: now.to_string(),
            message: format!("{PREFIX}{note}"),
            reason: reason.to_string(),
            metadata,
            reporting_controller: "fluxmedic",
            reporting_instance: instance.map(str::to_string),
        }
    }
}

/// A queue of events and the task posting them.
pub struct Notifier {
    tx: mpsc::Sender<FluxEvent>,
    outcomes: Family<OutcomeLabels, Counter>,
}

impl Notifier {
    /// Start posting to `addr` (an `http://` URL: notification-controller's event server).
    pub fn start(addr: String, outcomes: Family<OutcomeLabels, Counter>) -> Self {
        let (tx, mut rx) = mpsc::channel::<FluxEvent>(QUEUE);
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let counts = outcomes.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let outcome = match post(&client, &addr, &ev).await {
                    Ok(()) => "sent",
                    Err(e) => {
                        debug!(error = %e, reason = %ev.reason, "cannot post a Flux event");
                        "failed"
                    }
                };
                counts
                    .get_or_create(&OutcomeLabels {
                        outcome: outcome.into(),
                    })
                    .inc();
            }
        });
        Notifier { tx, outcomes }
    }

    /// Queue an event; never waits (a full queue drops and counts it).
    pub fn send(&self, ev: FluxEvent) {
        if self.tx.try_send(ev).is_err() {
            self.outcomes
                .get_or_create(&OutcomeLabels {
                    outcome: "dropped".into(),
                })
                .inc();
        }
    }
}

async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: &str,
    ev: &FluxEvent,
) -> Result<(), String> {
    let body = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
    let req = http::Request::post(addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    // 429: notification-controller suppressed it as a repeat; not an error of ours.
    if res.status().is_success() || res.status().as_u16() == 429 {
        Ok(())
    } else {
        Err(format!("HTTP {}", res.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_reach_an_http_receiver_as_notification_controller_reads_them() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}/", listener.local_addr().unwrap());
        let got = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let mut n = 0;
            loop {
                let k = s.read(&mut buf[n..]).await.unwrap();
                n += k;
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .unwrap();
                        return body.to_string();
                    }
                }
                if k == 0 {
                    return String::new();
                }
            }
        });
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let n = Notifier::start(addr, outcomes.clone());
        let obj = crate::flux::from_value(&serde_json::json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "app", "namespace": "apps", "uid": "u1"}}))
        .unwrap();
        n.send(FluxEvent::about(
            &obj,
            "kustomize.toolkit.fluxcd.io/v1",
            true,
            "FailureDetected",
            "invalid-manifests: the build fails",
            Some("ks-app-1"),
            Some("pod-0"),
        ));
        let body: serde_json::Value = serde_json::from_str(&got.await.unwrap()).unwrap();
        assert_eq!(body["involvedObject"]["kind"], "Kustomization");
        assert_eq!(
            body["involvedObject"]["apiVersion"],
            "kustomize.toolkit.fluxcd.io/v1"
        );
        assert_eq!(body["severity"], "error");
        assert_eq!(body["reason"], "FailureDetected");
        assert!(body["message"].as_str().unwrap().starts_with("fluxmedic: "));
        assert_eq!(
            body["metadata"]["event.toolkit.fluxcd.io/remediation"],
            "ks-app-1"
        );
        assert!(body["metadata"]["event.toolkit.fluxcd.io/token"].is_string());
        assert!(
            body["metadata"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.contains("revision") && !k.contains("commit"))
        );
        assert_eq!(body["reportingController"], "fluxmedic");
        for _ in 0..50 {
            if outcomes
                .get_or_create(&OutcomeLabels {
                    outcome: "sent".into(),
                })
                .get()
                == 1
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not counted as sent");
    }
}
