//! The evaluation pass: snapshot -> diagnose -> plan -> act -> record, and the
//! per-incident state machine persisted in each Remediation's status.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Instant,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType},
};
use serde_json::json;
use tracing::{debug, info, warn};

use super::Context;
use crate::{
    api::{
        APPROVE_ANNOTATION, DiagnosisRecord, FIELD_MANAGER, INTENT_ANNOTATION, Mode, OPEN_LABEL,
        Phase, Remediation, RemediationPolicy, RemediationPolicyStatus, RemediationSpec,
        RemediationStatus, SUSPENDED_BY_ANNOTATION, Step, TARGET_LABEL, TargetRef,
    },
    diagnose::{self, Diagnosis, Report, Snapshot},
    error::{Error, Result},
    flux::{FluxKind, FluxObject, ObjectKey},
    policy::{self, Action, Blocked, Decision, IncidentView, PlanContext, Policy, source_revision},
    remedy::{UnlockOutcome, fresh_token},
    telemetry::{CaseLabels, ReasonLabels},
};

/// FNV-1a: a stable hash for Remediation names and labels (stable across restarts and builds).
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Fault injection for the crash-safety tests: `FLUXMEDIC_CRASH_AT=<point>` aborts the
/// process (no cleanup, like SIGKILL) when a step reaches that point. Unset in production.
fn crash_point(point: &str) {
    if std::env::var("FLUXMEDIC_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("FLUXMEDIC_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

fn now_s() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn parse_ts(s: &Option<String>) -> Option<i64> {
    s.as_deref()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

pub fn target_label(key: &ObjectKey) -> String {
    format!("{:016x}", stable_hash(&key.to_string()))
}

/// Deterministic name of the incident that started at `since` on `key`.
pub fn remediation_name(key: &ObjectKey, since: i64) -> String {
    let mut base: String = key.name.chars().take(40).collect();
    base = base.trim_end_matches(['-', '.']).to_string();
    format!(
        "{}-{}-{:08x}",
        key.kind.abbrev(),
        base,
        stable_hash(&format!("{key}@{since}")) as u32
    )
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

/// Views the incident through what its Remediation recorded.
fn incident_view(rem: &Remediation, s: &RemediationStatus) -> IncidentView {
    let approved = rem.spec.approved
        || rem
            .annotations()
            .get(APPROVE_ANNOTATION)
            .is_some_and(|v| v == "true");
    IncidentView {
        phase: s.phase,
        attempts: s.attempts,
        polls: s.polls,
        approved,
        detected_at: parse_ts(&s.detected_at).unwrap_or_else(now_s),
        last_action_at: parse_ts(&s.last_action_at),
        rolled_back: s
            .steps
            .iter()
            .any(|st| st.action == "rollback" && st.outcome == "Succeeded")
            && !s
                .steps
                .iter()
                .any(|st| st.action == "resume" && st.outcome == "Succeeded"),
        observed_generation: s.observed_generation,
        observed_revision: s.observed_revision.clone(),
        observed_secret_version: s.observed_secret_version.clone(),
    }
}

fn source_secret_version(snap: &Snapshot, obj: &FluxObject) -> Option<String> {
    let secret = obj.secret_ref.as_ref()?;
    snap.secrets
        .get(&(obj.key.namespace.clone(), secret.clone()))
        .and_then(|s| s.resource_version.clone())
}

/// Kustomizations, HelmReleases and HelmCharts that consume `source` (directly or via a HelmChart).
pub fn consumers(snap: &Snapshot, source: &ObjectKey) -> Vec<ObjectKey> {
    let mut out: Vec<ObjectKey> = vec![];
    let charts: Vec<ObjectKey> = snap
        .objects
        .values()
        .filter(|o| o.key.kind == FluxKind::HelmChart && o.source_ref.as_ref() == Some(source))
        .map(|o| o.key.clone())
        .collect();
    for o in snap.objects.values() {
        if o.key.kind.is_source() && o.key.kind != FluxKind::HelmChart {
            continue;
        }
        if let Some(s) = &o.source_ref
            && (s == source || charts.contains(s))
        {
            out.push(o.key.clone());
        }
    }
    out.sort_by_key(|k| (k.kind != FluxKind::HelmChart, k.clone()));
    out
}

#[allow(clippy::large_enum_variant)] // a handful per pass; boxing buys nothing
enum Work {
    Incident {
        d: Diagnosis,
        policy: Option<Policy>,
        existing: Option<Arc<Remediation>>,
    },
    Close {
        rem: Arc<Remediation>,
        reason: &'static str,
    },
    Orphan {
        key: ObjectKey,
    },
}

impl Work {
    fn key(&self) -> Option<ObjectKey> {
        match self {
            Work::Incident { d, .. } => Some(d.target.clone()),
            Work::Close { rem, .. } => rem.spec.target.to_key(),
            Work::Orphan { key } => Some(key.clone()),
        }
    }
}

/// One evaluation pass over the whole index.
pub async fn pass(ctx: &Arc<Context>) {
    let started = Instant::now();
    let now = now_s();
    let (snap, raw_policies, remediations) = {
        let idx = ctx.index.read().await;
        (
            idx.snapshot(now),
            idx.policies.values().cloned().collect::<Vec<_>>(),
            idx.remediations.clone(),
        )
    };
    let snap = enrich_secrets(ctx, snap).await;
    let policies = validate_policies(ctx, &raw_policies, &snap).await;
    let report = diagnose::diagnose(&snap);
    let threshold =
        policy::circuit_breaker_threshold(&policies, &ctx.opts.namespace, ctx.opts.circuit_breaker);
    // Objects outside the watched namespaces still count as roots, not as failures of ours.
    let failing = report
        .diagnoses
        .iter()
        .filter(|d| ctx.in_scope(&d.target.namespace))
        .count();
    ctx.metrics.failing_targets.set(failing as i64);
    ctx.metrics
        .circuit_breaker_open
        .set((failing > threshold as usize) as i64);

    let mut open: HashMap<ObjectKey, Arc<Remediation>> = HashMap::new();
    for r in remediations.values() {
        if r.status
            .as_ref()
            .map(|s| s.phase)
            .unwrap_or_default()
            .is_open()
            && let Some(k) = r.spec.target.to_key()
        {
            open.insert(k, r.clone());
        }
    }
    ctx.metrics.open_incidents.set(open.len() as i64);

    let mut work = vec![];
    for d in &report.diagnoses {
        let obj = &snap.objects[&d.target];
        if !ctx.in_scope(&d.target.namespace) {
            continue;
        }
        let p = policy::select(&policies, obj, &ctx.opts.namespace)
            .0
            .cloned();
        if p.as_ref().is_some_and(|p| p.mode(d.case) == Mode::Off) {
            continue;
        }
        let existing = open.remove(&d.target);
        work.push(Work::Incident {
            d: d.clone(),
            policy: p,
            existing,
        });
    }
    // Close only on recovery (Ready=True) or when the target is gone; a target that is
    // merely progressing (Ready=Unknown while Flux works) keeps its incident open.
    for (key, rem) in open {
        match snap.objects.get(&key) {
            Some(o) if !o.is_ready() => {}
            _ => work.push(Work::Close {
                rem,
                reason: "Ready",
            }),
        }
    }
    // A HelmRelease suspended by fluxmedic whose Remediation no longer holds it is resumed.
    for o in snap.objects.values() {
        if let Some(owner) = o.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION) {
            let rem = remediations.get(&(o.key.namespace.clone(), owner.clone()));
            let holds = rem.is_some_and(|r| {
                let s = recorded_status(r);
                s.phase.is_open()
                    && (s.phase == Phase::AwaitingFix
                        || s.steps.last().is_some_and(|st| st.outcome == "Running"))
            });
            if !holds && o.suspended {
                work.push(Work::Orphan { key: o.key.clone() });
            }
        }
    }

    let items = work.len();
    let report = Arc::new(report);
    let snap = Arc::new(snap);
    let ctx2 = ctx.clone();
    futures::stream::iter(work)
        .for_each_concurrent(ctx.opts.concurrency, |w| {
            let (ctx, report, snap) = (ctx2.clone(), report.clone(), snap.clone());
            async move {
                let key = w.key();
                if let Some(k) = &key
                    && !ctx.backoff_ready(k, now)
                {
                    return;
                }
                let res = match w {
                    Work::Incident { d, policy, existing } => {
                        handle_incident(&ctx, &snap, &report, &d, policy.as_ref(), existing, (failing, threshold)).await
                    }
                    Work::Close { rem, reason } => close(&ctx, &snap, &rem, reason).await,
                    Work::Orphan { key } => resume_orphan(&ctx, &key).await,
                };
                if let Some(k) = key {
                    match res {
                        Ok(()) => ctx.backoff_reset(&k),
                        Err(e) => {
                            ctx.metrics.error(e.category());
                            let delay = ctx.backoff_fail(&k, now);
                            warn!(target = %k, category = e.category(), error = %e, retry_in_s = delay, "remediation step failed");
                        }
                    }
                }
            }
        })
        .await;
    gc_history(ctx, &remediations).await;
    debug!(
        failing,
        items,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "evaluation pass"
    );
    ctx.metrics.passes.inc();
    ctx.metrics
        .pass_duration
        .observe(started.elapsed().as_secs_f64());
}

/// Most overridden targets listed in a policy's status.
const MAX_OVERRIDDEN: usize = 10;

/// For each policy, the targets it covers where another policy wins (first few, sorted).
fn overridden(ctx: &Context, policies: &[Policy], snap: &Snapshot) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if policies.len() < 2 {
        return out;
    }
    for obj in snap.objects.values().filter(|o| {
        let kind = o.key.kind;
        ctx.in_scope(&o.key.namespace) && (!kind.is_source() || kind == FluxKind::GitRepository)
    }) {
        let (winner, losers) = policy::select(policies, obj, &ctx.opts.namespace);
        let Some(winner) = winner else { continue };
        for l in losers {
            let list = out.entry(l.id()).or_default();
            if list.len() < MAX_OVERRIDDEN {
                list.push(format!("{} (policy {} wins)", obj.key, winner.id()));
            }
        }
    }
    out
}

/// Validate every policy; write its `Valid` condition, and the targets another policy wins
/// for, into its status when they change.
async fn validate_policies(
    ctx: &Arc<Context>,
    raw: &[Arc<RemediationPolicy>],
    snap: &Snapshot,
) -> Vec<Policy> {
    let checked: Vec<_> = raw
        .iter()
        .map(|p| {
            (
                p,
                Policy::new(
                    &p.namespace().unwrap_or_default(),
                    &p.name_any(),
                    p.spec.clone(),
                ),
            )
        })
        .collect();
    let usable: Vec<Policy> = checked
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    let overrides = overridden(ctx, &usable, snap);
    for (p, checked) in checked {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let (valid, reason, message) = match checked {
            Ok(pol) => {
                let cross = !pol.spec.targets.namespaces.is_empty() && ns != ctx.opts.namespace;
                let breaker = pol.spec.circuit_breaker.is_some() && ns != ctx.opts.namespace;
                if cross || breaker {
                    (
                        "True",
                        "PartiallyIgnored",
                        format!(
                            "valid; {} honoured only in the operator's namespace {}",
                            if cross {
                                "spec.targets.namespaces is"
                            } else {
                                "spec.circuitBreaker is"
                            },
                            ctx.opts.namespace
                        ),
                    )
                } else {
                    ("True", "Valid", "the policy is in use".to_string())
                }
            }
            Err(e) => ("False", "Invalid", e.to_string()),
        };
        let current = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Valid"));
        let gen_ = p.metadata.generation;
        let overridden = overrides
            .get(&format!("{ns}/{name}"))
            .cloned()
            .unwrap_or_default();
        let same_overrides = p.status.as_ref().map(|s| &s.overridden) == Some(&overridden);
        if same_overrides
            && current.is_some_and(|c| {
                c.status == valid && c.message == message && c.observed_generation == gen_
            })
        {
            continue;
        }
        let status = RemediationPolicyStatus {
            observed_generation: gen_,
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Valid".into(),
                status: valid.into(),
                reason: reason.into(),
                message,
                observed_generation: gen_,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::now(),
                ),
            }],
            overridden,
        };
        let api: Api<RemediationPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        ctx.limiter.acquire().await;
        let patch = json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "RemediationPolicy", "status": status});
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            warn!(policy = %format!("{ns}/{name}"), error = %e, "cannot write policy status");
        }
    }
    usable
}

/// Fetch key names of Secrets referenced by failing Git sources (values are not kept).
async fn enrich_secrets(ctx: &Arc<Context>, mut snap: Snapshot) -> Snapshot {
    for (ns, name) in snap.uninspected_git_secrets() {
        match ctx.actuator.secret_info(&ns, &name).await {
            Ok(Some(info)) => {
                snap.secrets
                    .insert((ns.clone(), name.clone()), info.clone());
                ctx.index.write().await.secret_keys.insert((ns, name), info);
            }
            Ok(None) => {
                snap.secrets.remove(&(ns, name));
            }
            Err(e) => {
                warn!(secret = %format!("{ns}/{name}"), error = %e, "cannot read Secret key names")
            }
        }
    }
    snap
}

fn event(
    ctx: &Context,
    regarding: &ObjectReference,
    related: Option<ObjectReference>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: related,
    };
    ctx.events.send(ev, regarding.clone());
}

fn rem_ref(rem: &Remediation) -> ObjectReference {
    rem.object_ref(&())
}

/// One Event about the target (where `flux events` and `kubectl describe` look), naming the
/// Remediation as its related object; about the Remediation itself once the target is gone.
/// One write per occurrence, not one per object; queued, never awaited.
fn announce(
    ctx: &Context,
    target: Option<&FluxObject>,
    rem: &Remediation,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    match target {
        Some(o) => {
            let related = Some(rem_ref(rem));
            event(ctx, &object_ref(o), related, type_, reason, action, note)
        }
        None => event(ctx, &rem_ref(rem), None, type_, reason, action, note),
    }
}

async fn write_status(
    ctx: &Context,
    rem: &Remediation,
    status: &RemediationStatus,
) -> Result<Remediation> {
    let api: Api<Remediation> =
        Api::namespaced(ctx.client.clone(), &rem.namespace().unwrap_or_default());
    let patch =
        json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "Remediation", "status": status});
    ctx.limiter.acquire().await;
    let out = api
        .patch_status(
            &rem.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    let key = (out.namespace().unwrap_or_default(), out.name_any());
    super::index::put_remediation(&mut *ctx.index.write().await, Some(out.clone()), key);
    Ok(out)
}

/// When the failure of `obj` started (its Ready condition's transition), else now.
fn failing_since(snap: &Snapshot, obj: &FluxObject) -> i64 {
    obj.failing_since()
        .map(|t| t.as_second())
        .unwrap_or(snap.now)
}

/// The Remediation a new incident on `obj` gets (not yet created).
fn draft_remediation(snap: &Snapshot, d: &Diagnosis, obj: &FluxObject) -> Remediation {
    let name = remediation_name(&d.target, failing_since(snap, obj));
    Remediation {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(d.target.namespace.clone()),
            labels: Some(BTreeMap::from([
                (TARGET_LABEL.to_string(), target_label(&d.target)),
                (OPEN_LABEL.to_string(), "true".to_string()),
                ("fluxmedic.io/case".to_string(), d.case.to_string()),
            ])),
            ..Default::default()
        },
        spec: RemediationSpec {
            target: TargetRef::from_key(&d.target),
            target_name: format!("{}/{}", d.target.kind, d.target.name),
            case: d.case,
            approved: false,
        },
        status: None,
    }
}

/// Create a new incident's Remediation. `intent` is its first step when an action follows at
/// once: recorded in the same write (see [`INTENT_ANNOTATION`]), so the action needs no status
/// write before it. Returns the object and whether this call created it (false: it existed,
/// created before a crash or by the previous leader, and was adopted from the watch).
async fn create_remediation(
    ctx: &Context,
    snap: &Snapshot,
    d: &Diagnosis,
    obj: &FluxObject,
    mut rem: Remediation,
    intent: Option<&Step>,
) -> Result<(Remediation, bool)> {
    let now = snap.now;
    let since = failing_since(snap, obj);
    let name = rem.name_any();
    if let Some(step) = intent {
        rem.annotations_mut().insert(
            INTENT_ANNOTATION.into(),
            serde_json::to_string(step).unwrap_or_default(),
        );
    }
    let api: Api<Remediation> = Api::namespaced(ctx.client.clone(), &d.target.namespace);
    ctx.limiter.acquire().await;
    let created = match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &rem,
        )
        .await
    {
        Ok(r) => r,
        // Created before a crash, or by the previous leader: adopt it from the watch (no
        // `get` right needed); if the watch has not delivered it yet, the next pass will.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let known = ctx
                .index
                .read()
                .await
                .remediations
                .get(&(d.target.namespace.clone(), name.clone()))
                .map(|r| (**r).clone());
            match known {
                Some(r) => return Ok((r, false)),
                None => return Err(kube::Error::Api(s).into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    // Its status is written with the first plan (one write, not two); see handle_incident.
    ctx.metrics
        .incidents
        .get_or_create(&CaseLabels {
            case: d.case.to_string(),
        })
        .inc();
    ctx.metrics
        .time_to_detect
        .observe((now - since).max(0) as f64);
    info!(target = %d.target, case = %d.case, remediation = %name, "incident detected");
    let note = format!(
        "{} ({}): {}",
        d.case,
        if d.retryable {
            "retry can help"
        } else {
            "retry cannot help"
        },
        d.summary
    );
    announce(
        ctx,
        Some(obj),
        &created,
        EventType::Warning,
        "FailureDetected",
        "Diagnose",
        note,
    );
    Ok((created, true))
}

fn record(d: &Diagnosis) -> DiagnosisRecord {
    DiagnosisRecord {
        summary: d.summary.clone(),
        retryable: d.retryable,
        native: d.native,
        evidence: d.evidence.clone(),
    }
}

async fn handle_incident(
    ctx: &Arc<Context>,
    snap: &Snapshot,
    report: &Report,
    d: &Diagnosis,
    policy: Option<&Policy>,
    existing: Option<Arc<Remediation>>,
    (failing, threshold): (usize, u32),
) -> Result<()> {
    let obj = &snap.objects[&d.target];
    // A new incident is planned before its Remediation exists, so that an immediate first
    // action is recorded by the create itself.
    let (mut rem, draft) = match existing {
        Some(r) if r.spec.case == d.case => ((*r).clone(), false),
        Some(r) => {
            // The failure changed nature: close this incident, open one for the new case.
            close(ctx, snap, &r, "Superseded").await?;
            (draft_remediation(snap, d, obj), true)
        }
        None => (draft_remediation(snap, d, obj), true),
    };
    let mut status = recorded_status(&rem);
    if status.detected_at.is_none() {
        // A new incident (or one whose creation a crash interrupted): when it was seen, and
        // what a fix would change. Written together with the first plan.
        status.detected_at = Some(rfc3339(snap.now));
        status.observed_generation = obj.generation;
        status.observed_revision =
            source_revision(snap, obj).or_else(|| obj.artifact_revision.clone());
        status.observed_secret_version = source_secret_version(snap, obj);
    }
    // A step interrupted by a crash is finished first, with the token it recorded.
    if let Some((Some(action), token)) = interrupted_step(&status) {
        info!(target = %d.target, action = %action, "finishing a step interrupted by a restart");
        return run_step(
            ctx,
            snap,
            obj,
            &rem,
            status,
            action,
            token,
            Intent::Recorded,
        )
        .await;
    }
    let inc = incident_view(&rem, &status);
    let pctx = PlanContext {
        snapshot: snap,
        failing_targets: failing,
        circuit_breaker: threshold,
        shared_root: report.shared_roots.iter().any(|(k, _)| k == &d.target),
    };
    let dec: Decision = policy::plan(d, obj, policy, &inc, &pctx);
    status.diagnosis = Some(record(d));
    status.root = (!d.is_root()).then(|| TargetRef::from_key(&d.root));
    status.policy = policy.map(Policy::id);
    status.mode = Some(dec.mode);
    if draft {
        // A first action that follows at once has its intent recorded by the create.
        let first = dec.act().filter(|_| !dec.escalate).map(|a| {
            let token = fresh_token();
            begin_step(&mut status, a, &token, snap.now);
            (a.clone(), token)
        });
        let intent = first.as_ref().and_then(|_| status.steps.last().cloned());
        let (created, fresh) = create_remediation(ctx, snap, d, obj, rem, intent.as_ref()).await?;
        if !fresh {
            // Somebody else's record of this incident: the next pass goes on from it.
            return Ok(());
        }
        if let Some((action, token)) = first {
            return run_step(
                ctx,
                snap,
                obj,
                &created,
                status,
                action,
                token,
                Intent::InCreate,
            )
            .await;
        }
        rem = created;
    }
    if dec.escalate && status.phase != Phase::Escalated && status.phase.is_open() {
        status.phase = Phase::Escalated;
        ctx.metrics
            .escalations
            .get_or_create(&CaseLabels {
                case: d.case.to_string(),
            })
            .inc();
        let note = format!(
            "{} has been failing since {} ({}); a person is needed",
            d.target,
            status.detected_at.clone().unwrap_or_default(),
            d.summary
        );
        announce(
            ctx,
            Some(obj),
            &rem,
            EventType::Warning,
            "Escalated",
            "Escalate",
            note,
        );
    }
    if let Some(action) = dec.act().cloned() {
        return run_step(
            ctx,
            snap,
            obj,
            &rem,
            status,
            action,
            fresh_token(),
            Intent::Write,
        )
        .await;
    }
    let blocked = dec.blocked.clone().unwrap_or(Blocked::NoRunbook);
    let text = match &dec.planned {
        Some(a) => format!("planned {a}; {blocked}"),
        None => blocked.to_string(),
    };
    if status.phase != Phase::Escalated {
        status.phase = match &blocked {
            Blocked::AwaitingApproval => Phase::AwaitingApproval,
            Blocked::MaxAttempts => Phase::Failed,
            Blocked::AwaitingFix(_) => Phase::AwaitingFix,
            _ if status.phase == Phase::AwaitingApproval => Phase::Detected,
            _ => status.phase,
        };
    }
    if dec.planned.is_some() && status.action.is_none() {
        status.action = dec.planned.as_ref().map(|a| format!("{}?", a.name()));
    }
    let changed_reason = status.blocked.as_deref() != Some(text.as_str());
    if changed_reason {
        if status
            .blocked
            .as_deref()
            .map(|b| b.split(';').next() != text.split(';').next())
            .unwrap_or(true)
        {
            ctx.metrics
                .blocked
                .get_or_create(&ReasonLabels {
                    reason: blocked.label().into(),
                })
                .inc();
            if matches!(
                blocked,
                Blocked::AwaitingApproval
                    | Blocked::MaxAttempts
                    | Blocked::CircuitBreakerOpen { .. }
            ) {
                event(
                    ctx,
                    &rem_ref(&rem),
                    None,
                    EventType::Normal,
                    "ActionBlocked",
                    "Plan",
                    text.clone(),
                );
            }
        }
        status.blocked = Some(text);
    }
    if rem.status.as_ref() != Some(&status) {
        write_status(ctx, &rem, &status).await?;
    }
    Ok(())
}

/// The last step, if a crash interrupted it (`Running`): its planned action (when readable)
/// and the token it recorded.
fn interrupted_step(status: &RemediationStatus) -> Option<(Option<Action>, String)> {
    let step = status.steps.last().filter(|s| s.outcome == "Running")?;
    Some((
        planned_action(step),
        step.token.clone().unwrap_or_else(fresh_token),
    ))
}

/// The action a step recorded (machine-readable in `detail`), when readable.
fn planned_action(step: &Step) -> Option<Action> {
    step.detail
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

/// Where a step's intent is (or goes) before its action runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Intent {
    /// Write it to the status now.
    Write,
    /// The Remediation's create carried it ([`INTENT_ANNOTATION`]); `status` holds it too.
    InCreate,
    /// Already recorded (a step a restart interrupted); `status` holds it.
    Recorded,
}

/// Add a Running step for `action` to `status`, with the bookkeeping that goes with it.
fn begin_step(status: &mut RemediationStatus, action: &Action, token: &str, now: i64) {
    status.steps.push(Step {
        action: action.name().into(),
        detail: serde_json::to_string(action).ok(),
        outcome: "Running".into(),
        token: Some(token.into()),
        started_at: rfc3339(now),
        finished_at: None,
        message: action.to_string(),
    });
    // Bound the step list: keep the first and the latest ones.
    if status.steps.len() > 30 {
        status.steps.drain(1..status.steps.len() - 29);
    }
    if action.is_attempt() {
        status.attempts += 1;
    }
    if matches!(action, Action::ReconcileSource { .. }) {
        status.polls += 1;
    }
    status.last_action_at = Some(rfc3339(now));
    status.action = Some(action.name().into());
    status.blocked = None;
    if status.phase != Phase::Escalated {
        status.phase = Phase::Remediating;
    }
}

/// What a Remediation has recorded: its status, plus the first step's intent when the create
/// carried it and a crash came before the outcome reached the status.
fn recorded_status(rem: &Remediation) -> RemediationStatus {
    let mut status = rem.status.clone().unwrap_or_default();
    if status.steps.is_empty()
        && let Some(step) = rem
            .annotations()
            .get(INTENT_ANNOTATION)
            .and_then(|v| serde_json::from_str::<Step>(v).ok())
    {
        let at = step
            .started_at
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .unwrap_or_else(|_| now_s());
        match planned_action(&step) {
            Some(a) => begin_step(&mut status, &a, step.token.as_deref().unwrap_or(""), at),
            None => status.steps.push(step),
        }
    }
    status
}

/// Persist the intent (unless already recorded), act, persist the outcome.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    ctx: &Arc<Context>,
    snap: &Snapshot,
    obj: &FluxObject,
    rem: &Remediation,
    mut status: RemediationStatus,
    action: Action,
    token: String,
    intent: Intent,
) -> Result<()> {
    if intent == Intent::Write {
        begin_step(&mut status, &action, &token, now_s());
        write_status(ctx, rem, &status).await?;
    }
    if intent != Intent::Recorded {
        crash_point(&format!("{}:after-intent", action.name()));
    }
    let result = perform(ctx, snap, obj, rem, &action, &token).await;
    crash_point(&format!("{}:after-act", action.name()));
    let last = status.steps.last_mut().expect("a step was recorded");
    last.finished_at = Some(rfc3339(now_s()));
    let (etype, reason) = match &result {
        Ok(done) => {
            last.outcome = "Succeeded".into();
            last.message = done.message.clone();
            (EventType::Normal, "ActionSucceeded".to_string())
        }
        Err(e) => {
            last.outcome = "Failed".into();
            last.message = e.to_string();
            (EventType::Warning, e.category().to_string())
        }
    };
    let note = format!("{}: {}", action, last.message);
    ctx.metrics.action(
        action.name(),
        if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        },
    );
    if let Ok(done) = &result {
        match &action {
            Action::Rollback { .. } => {
                status.phase = Phase::AwaitingFix;
                // The generation after our own suspend, and the chart revision now: a change
                // of either means the fix landed.
                status.observed_generation = done.generation;
                status.observed_revision = source_revision(snap, obj);
            }
            Action::Reconcile if status.diagnosis.as_ref().is_some() => {
                status.observed_revision =
                    source_revision(snap, obj).or(status.observed_revision.clone());
            }
            Action::ReconcileSourceAndConsumers { .. } => {
                status.observed_secret_version = source_secret_version(snap, obj);
            }
            Action::Resume => status.phase = Phase::Remediating,
            _ => {}
        }
    }
    if let Err(write) = write_status(ctx, rem, &status).await {
        // The outcome did not reach the status: the step stays Running there and is finished
        // again with its token. An action error is still counted, not hidden behind this one.
        if let Err(e) = &result {
            ctx.metrics.error(e.category());
        }
        return Err(write);
    }
    announce(ctx, Some(obj), rem, etype, &reason, action.name(), note);
    result.map(|_| ())
}

async fn perform(
    ctx: &Arc<Context>,
    snap: &Snapshot,
    obj: &FluxObject,
    rem: &Remediation,
    action: &Action,
    token: &str,
) -> Result<Done> {
    let a = &ctx.actuator;
    let key = &obj.key;
    match action {
        Action::Reconcile => {
            a.request_reconcile(key, token, false, false).await?;
            Ok(format!("requested reconcile of {key}").into())
        }
        Action::ReconcileSource { source } => {
            a.request_reconcile(source, token, false, false).await?;
            Ok(format!("requested reconcile of {source}").into())
        }
        Action::ReconcileSourceAndConsumers { source } => {
            a.request_reconcile(source, token, false, false).await?;
            crash_point("reconcile-source-and-consumers:after-source");
            let consumers = consumers(snap, source);
            for c in &consumers {
                a.request_reconcile(c, token, false, false).await?;
            }
            Ok(format!(
                "requested reconcile of {source} and {} consumer(s)",
                consumers.len()
            )
            .into())
        }
        Action::RetryRelease { with_source } => {
            if let Some(s) = with_source {
                a.request_reconcile(s, token, false, false).await?;
            }
            a.request_reconcile(key, token, true, true).await?;
            Ok(format!("requested retry of {key} (requestedAt+resetAt+forceAt={token})").into())
        }
        Action::Rollback { to_version } => {
            let h = obj
                .helm
                .as_ref()
                .ok_or_else(|| Error::Precondition("not a HelmRelease".into()))?;
            let generation = a.set_suspend(key, true, &rem.name_any()).await?;
            crash_point("rollback:after-suspend");
            match a
                .helm_rollback(
                    &h.storage_namespace,
                    &h.release_name,
                    *to_version,
                    h.timeout,
                )
                .await
            {
                Ok(msg) => Ok(Done {
                    message: format!("suspended {key}; {msg}; stays suspended until the fix lands"),
                    generation,
                }),
                Err(e) => {
                    // Never leave it suspended because of a failed step.
                    if let Err(undo) = a.set_suspend(key, false, "").await {
                        warn!(target = %key, error = %undo, "cannot resume after a failed rollback; will retry");
                    }
                    Err(e)
                }
            }
        }
        Action::Resume => {
            a.set_suspend(key, false, "").await?;
            Ok(format!("resumed {key}: the fix landed").into())
        }
        Action::UnlockRelease {
            namespace,
            secret,
            delete,
            ..
        } => {
            let outcome = a.unlock(namespace, secret, *delete).await?;
            crash_point(&format!("{}:after-unlock", action.name()));
            a.request_reconcile(key, token, false, false).await?;
            Ok(Done::from(match outcome {
                UnlockOutcome::Unlocked { previous } => format!(
                    "marked {namespace}/{secret} failed (was {previous}); requested reconcile"
                ),
                UnlockOutcome::Deleted => {
                    format!("deleted stale {namespace}/{secret}; requested reconcile")
                }
                UnlockOutcome::AlreadyUnlocked { status } => {
                    format!("{namespace}/{secret} was already {status}; requested reconcile")
                }
                UnlockOutcome::Gone => format!("{namespace}/{secret} is gone; requested reconcile"),
            }))
        }
    }
}

/// What a performed action reports: the message for the record and, for a suspend, the
/// HelmRelease's generation after it (from the patch response, so no `get` is needed).
struct Done {
    message: String,
    generation: Option<i64>,
}

impl From<String> for Done {
    fn from(message: String) -> Self {
        Done {
            message,
            generation: None,
        }
    }
}

/// Close an incident whose target recovered (or vanished, or changed case).
async fn close(
    ctx: &Arc<Context>,
    snap: &Snapshot,
    rem: &Remediation,
    reason: &'static str,
) -> Result<()> {
    let mut status = recorded_status(rem);
    let target = rem.spec.target.to_key();
    let obj = target.as_ref().and_then(|k| snap.objects.get(k));
    // Our suspension never outlives the incident.
    if let Some(o) = obj
        && o.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION) == Some(&rem.name_any())
    {
        ctx.actuator.set_suspend(&o.key, false, "").await?;
    }
    // A step a crash interrupted is finished with the token it recorded, even though the target
    // recovered meanwhile (an unlock's follow-up reconcile, a source's consumers): every action
    // is idempotent for one token, so this completes it without doing anything twice. A
    // rollback is not re-run on a recovered target; its suspension was released above.
    if let (Some(o), Some((action, token))) = (obj, interrupted_step(&status)) {
        let result = match action {
            Some(Action::Rollback { .. } | Action::Resume) | None => {
                Err("interrupted by a restart; not re-run on a recovered target".to_string())
            }
            Some(action) => {
                info!(target = %o.key, action = %action, "finishing a step interrupted by a restart");
                let r = perform(ctx, snap, o, rem, &action, &token).await;
                ctx.metrics.action(
                    action.name(),
                    if r.is_ok() { "succeeded" } else { "failed" },
                );
                // An API error leaves the incident open; the next pass tries again.
                Ok(r?.message)
            }
        };
        let step = status.steps.last_mut().expect("an interrupted step");
        step.finished_at = Some(rfc3339(now_s()));
        (step.outcome, step.message) = match result {
            Ok(msg) => ("Succeeded".into(), msg),
            Err(msg) => ("Interrupted".into(), msg),
        };
    }
    let now = now_s();
    let acted = status.steps.iter().any(|s| s.outcome == "Succeeded");
    status.phase = if acted {
        Phase::Succeeded
    } else {
        Phase::Resolved
    };
    status.closed_at = Some(rfc3339(now));
    status.blocked = None;
    let detected = parse_ts(&status.detected_at).unwrap_or(now);
    let ttr = (now - detected).max(0) as f64;
    status.time_to_recovery_seconds = Some(ttr);
    status.message = Some(match (reason, obj) {
        ("Superseded", _) => "the failure changed; a new Remediation records it".into(),
        (_, None) => "the target no longer exists".into(),
        _ => "the target is Ready".into(),
    });
    let api: Api<Remediation> =
        Api::namespaced(ctx.client.clone(), &rem.namespace().unwrap_or_default());
    // Label first: a closed phase then always comes with open=false.
    ctx.limiter.acquire().await;
    api.patch(
        &rem.name_any(),
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"metadata": {"labels": {OPEN_LABEL: "false"}}})),
    )
    .await?;
    write_status(ctx, rem, &status).await?;
    ctx.metrics
        .time_to_recover
        .get_or_create(&CaseLabels {
            case: rem.spec.case.to_string(),
        })
        .observe(ttr);
    let note = format!(
        "{} recovered after {}s ({:?})",
        rem.spec.target, ttr as i64, status.phase
    );
    announce(
        ctx,
        obj.map(|o| &**o),
        rem,
        EventType::Normal,
        "Recovered",
        "Close",
        note,
    );
    info!(target = %rem.spec.target, phase = ?status.phase, ttr, "incident closed");
    Ok(())
}

async fn resume_orphan(ctx: &Arc<Context>, key: &ObjectKey) -> Result<()> {
    warn!(target = %key, "resuming a HelmRelease left suspended without an open Remediation");
    ctx.actuator.set_suspend(key, false, "").await?;
    ctx.metrics.action("resume-orphan", "succeeded");
    Ok(())
}

/// Keep at most `history_limit` closed Remediations per target.
async fn gc_history(
    ctx: &Arc<Context>,
    remediations: &BTreeMap<(String, String), Arc<Remediation>>,
) {
    let mut by_target: HashMap<String, Vec<&Arc<Remediation>>> = HashMap::new();
    for r in remediations.values() {
        if !r
            .status
            .as_ref()
            .map(|s| s.phase)
            .unwrap_or_default()
            .is_open()
        {
            by_target
                .entry(r.spec.target.to_string())
                .or_default()
                .push(r);
        }
    }
    for (_, mut closed) in by_target {
        if closed.len() <= ctx.opts.history_limit {
            continue;
        }
        closed.sort_by_key(|r| {
            std::cmp::Reverse(r.status.as_ref().and_then(|s| s.closed_at.clone()))
        });
        for r in closed.into_iter().skip(ctx.opts.history_limit) {
            let api: Api<Remediation> =
                Api::namespaced(ctx.client.clone(), &r.namespace().unwrap_or_default());
            ctx.limiter.acquire().await;
            match api.delete(&r.name_any(), &DeleteParams::default()).await {
                Ok(_) => info!(remediation = %r.name_any(), "garbage-collected old Remediation"),
                Err(e) => {
                    warn!(remediation = %r.name_any(), error = %e, "cannot garbage-collect Remediation")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rem_with(status: Option<RemediationStatus>, intent: Option<&Step>) -> Remediation {
        let mut r = Remediation::new(
            "ks-app-1",
            RemediationSpec {
                target: TargetRef::from_key(&ObjectKey {
                    kind: FluxKind::Kustomization,
                    namespace: "apps".into(),
                    name: "app".into(),
                }),
                target_name: "Kustomization/app".into(),
                case: crate::diagnose::Case::StaleLock,
                approved: false,
            },
        );
        r.status = status;
        if let Some(step) = intent {
            r.annotations_mut().insert(
                INTENT_ANNOTATION.into(),
                serde_json::to_string(step).unwrap(),
            );
        }
        r
    }

    fn intent_of(action: &Action, token: &str, now: i64) -> (RemediationStatus, Step) {
        let mut status = RemediationStatus::default();
        begin_step(&mut status, action, token, now);
        let step = status.steps[0].clone();
        (status, step)
    }

    #[test]
    fn an_intent_recorded_at_creation_reads_as_the_interrupted_step() {
        let action = Action::UnlockRelease {
            namespace: "apps".into(),
            secret: "sh.helm.release.v1.web.v2".into(),
            version: 2,
            delete: false,
        };
        let (expected, step) = intent_of(&action, "2026-11-23T10:00:00Z", 1_795_000_000);
        let status = recorded_status(&rem_with(None, Some(&step)));
        assert_eq!(status.steps, expected.steps);
        assert_eq!(status.attempts, 1, "the unlock counts as an attempt");
        assert_eq!(status.phase, Phase::Remediating);
        assert_eq!(status.last_action_at, expected.last_action_at);
        let (a, token) = interrupted_step(&status).expect("interrupted");
        assert_eq!(a, Some(action));
        assert_eq!(
            token, "2026-11-23T10:00:00Z",
            "finished with the recorded token"
        );
    }

    #[test]
    fn the_status_wins_once_it_holds_the_step() {
        let action = Action::Reconcile;
        let (mut done, step) = intent_of(&action, "t1", 1_795_000_000);
        done.steps[0].outcome = "Succeeded".into();
        let status = recorded_status(&rem_with(Some(done.clone()), Some(&step)));
        assert_eq!(
            status, done,
            "the annotation is history once the outcome is recorded"
        );
        assert!(interrupted_step(&status).is_none());
    }

    #[test]
    fn an_unreadable_intent_is_kept_as_is_and_not_rerun() {
        let mut step = intent_of(&Action::Reconcile, "t1", 1_795_000_000).1;
        step.detail = Some("{not json".into());
        let status = recorded_status(&rem_with(None, Some(&step)));
        assert_eq!(status.steps, vec![step]);
        assert_eq!(interrupted_step(&status).map(|(a, _)| a), Some(None));
    }
}
