//! The executor's [`Port`] on the real API server: the write budget and the Lease check on
//! every write, the index told of what was written, Events queued, metrics counted.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType},
};
use serde_json::json;

use super::Context;
use crate::{
    api::{FIELD_MANAGER, OPEN_LABEL, Remediation, RemediationSpec, RemediationStatus, TargetRef},
    diagnose::Case,
    error::{Error, Result},
    executor::{Announcement, Port},
    flux::{FluxObject, ObjectKey},
    incident::{Count, Regarding},
    policy::ReleaseRef,
    remedy::UnlockOutcome,
    telemetry::{CaseLabels, ReasonLabels},
};

impl Port for Context {
    async fn record_exists(&self, ns: &str, name: &str) -> bool {
        self.index
            .read()
            .await
            .remediations
            .contains_key(&(ns.to_string(), name.to_string()))
    }

    async fn next_sequence(&self) -> u64 {
        self.ledger.write().await.next_sequence()
    }

    async fn note(&self, uid: &str, sequence: u64, closed: bool) {
        self.ledger.write().await.note(uid, sequence, closed);
    }

    /// A 409 means the create raced the watch: the record is read into the index, so the
    /// next pass continues that incident instead of opening another.
    async fn create(&self, rem: Remediation) -> Result<Remediation> {
        let ns = rem.namespace().unwrap_or_default();
        let name = rem.name_any();
        let api: Api<Remediation> = Api::namespaced(self.client.clone(), &ns);
        self.limiter.acquire().await?;
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &rem).await {
            Ok(created) => {
                let k = (ns, name);
                self.index.write().await.wrote_record(created.clone(), k);
                Ok(created)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                if let Some(existing) = api.get_opt(&name).await? {
                    let k = (ns, name);
                    super::index::put_remediation(
                        &mut *self.index.write().await,
                        Some(existing),
                        k,
                    );
                }
                Err(Error::Kube(kube::Error::Api(s)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn apply_status(
        &self,
        ns: &str,
        name: &str,
        status: &RemediationStatus,
    ) -> Result<Remediation> {
        let api: Api<Remediation> = Api::namespaced(self.client.clone(), ns);
        let patch =
            json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "Remediation", "status": status});
        self.limiter.acquire().await?;
        let out = api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await?;
        let k = (out.namespace().unwrap_or_default(), out.name_any());
        self.index.write().await.wrote_record(out.clone(), k);
        Ok(out)
    }

    /// Label first: a closed phase then always comes with open=false.
    async fn label_closed(&self, ns: &str, name: &str) -> Result<()> {
        let api: Api<Remediation> = Api::namespaced(self.client.clone(), ns);
        self.limiter.acquire().await?;
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let patch = json!({"metadata": {"labels": {OPEN_LABEL: "false"}}});
        api.patch(name, &pp, &Patch::Merge(patch)).await?;
        Ok(())
    }

    async fn request_reconcile(
        &self,
        key: &ObjectKey,
        token: &str,
        reset: bool,
        force: bool,
    ) -> Result<()> {
        self.actuator
            .request_reconcile(key, token, reset, force)
            .await
    }

    async fn suspend(
        &self,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
        owner: &str,
        hold: &str,
    ) -> Result<Option<i64>> {
        self.actuator
            .suspend(key, uid, resource_version, owner, hold)
            .await
    }

    async fn release_hold(&self, key: &ObjectKey, uid: &str, owner: &str) -> Result<bool> {
        self.actuator.release_hold(key, uid, owner).await
    }

    async fn helm_rollback(
        &self,
        release: &ReleaseRef,
        to_version: i64,
        timeout: Duration,
    ) -> Result<String> {
        self.actuator
            .helm_rollback(release, to_version, timeout, self.stop.subscribe())
            .await
    }

    async fn unlock(
        &self,
        ns: &str,
        secret: &str,
        delete: bool,
        release: &ReleaseRef,
    ) -> Result<UnlockOutcome> {
        self.actuator.unlock(ns, secret, delete, release).await
    }

    fn now(&self) -> i64 {
        jiff::Timestamp::now().as_second()
    }

    fn announce(&self, a: Announcement<'_>) {
        announce(self, a)
    }

    fn count(&self, ns: &str, c: Count) {
        count(self, ns, c)
    }

    /// `FLUXMEDIC_CRASH_AT=<point>` aborts the process (no cleanup, like SIGKILL) when a
    /// step reaches that point: the crash-safety tests' fault injection. Unset in production.
    fn crash_point(&self, point: &str) -> Result<()> {
        if std::env::var("FLUXMEDIC_CRASH_AT").is_ok_and(|p| p == point) {
            eprintln!("FLUXMEDIC_CRASH_AT={point}: aborting");
            std::process::abort();
        }
        Ok(())
    }
}

fn object_ref(obj: &FluxObject) -> ObjectReference {
    ObjectReference {
        api_version: Some(format!(
            "{}/{}",
            obj.key.kind.group(),
            obj.key.kind.version()
        )),
        kind: Some(obj.key.kind.as_str().into()),
        name: Some(obj.key.name.clone()),
        namespace: Some(obj.key.namespace.clone()),
        uid: obj.uid.clone(),
        ..Default::default()
    }
}

fn rem_ref(key: &ObjectKey, name: &str) -> ObjectReference {
    let mut r = Remediation::new(
        name,
        RemediationSpec {
            target: TargetRef::from_key(key),
            target_name: String::new(),
            case: Case::Other,
        },
    );
    r.metadata.namespace = Some(key.namespace.clone());
    r.object_ref(&())
}

/// One Event about the target (where `flux events` and `kubectl describe` look), naming the
/// Remediation as its related object; about the Remediation itself once the target is gone.
/// One write per occurrence; queued, never awaited.
fn announce(ctx: &Context, a: Announcement<'_>) {
    let Announcement {
        key,
        target,
        record,
        regarding,
        warning,
        reason,
        action,
        note,
    } = a;
    let rem = record.map(|name| rem_ref(key, name));
    let ev = |secondary| Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.clone()),
        action: action.into(),
        secondary,
    };
    // The same occurrence into Flux's own alerting, about the Flux object.
    if let (Some(n), Some(o)) = (&ctx.notifier, target) {
        let api_version = ctx
            .actuator
            .apis
            .get(&o.key.kind)
            .map(|r| r.api_version.clone())
            .unwrap_or_else(|| format!("{}/{}", o.key.kind.group(), o.key.kind.version()));
        let record = rem.as_ref().and_then(|r| r.name.clone());
        n.send(super::notify::FluxEvent::about(
            o,
            &api_version,
            warning,
            reason,
            &note,
            record.as_deref(),
            Some(&ctx.opts.identity),
        ));
    }
    match (regarding, target, rem) {
        (Regarding::Target, Some(o), rem) => ctx.events.send(ev(rem), object_ref(o)),
        (_, _, Some(rem)) => ctx.events.send(ev(None), rem),
        (_, Some(o), None) => ctx.events.send(ev(None), object_ref(o)),
        _ => {}
    }
}

/// Count `c`, for a target in namespace `ns`.
fn count(ctx: &Context, ns: &str, c: Count) {
    let m = &ctx.metrics;
    match c {
        Count::Incident(case) => {
            m.incidents
                .get_or_create(&crate::telemetry::CaseNamespaceLabels {
                    case: case.to_string(),
                    namespace: ns.to_string(),
                })
                .inc();
        }
        Count::Detected(s) => m.time_to_detect.observe(s as f64),
        Count::Escalation(case) => {
            m.escalations
                .get_or_create(&crate::telemetry::CaseNamespaceLabels {
                    case: case.to_string(),
                    namespace: ns.to_string(),
                })
                .inc();
        }
        Count::Blocked(reason) => {
            m.blocked
                .get_or_create(&ReasonLabels {
                    reason: reason.into(),
                })
                .inc();
        }
        Count::Recovered { case, seconds } => m
            .time_to_recover
            .get_or_create(&CaseLabels {
                case: case.to_string(),
            })
            .observe(seconds as f64),
        Count::Action { name, ok } => m.action(name, if ok { "succeeded" } else { "failed" }),
        Count::Error(category) => m.error(category),
        Count::RecordEdited => {
            m.records_edited
                .get_or_create(&crate::telemetry::NamespaceLabels {
                    namespace: ns.to_string(),
                })
                .inc();
        }
    }
}
