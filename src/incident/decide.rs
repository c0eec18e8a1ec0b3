//! The whole decision for one target, pure: its governing policy, today's plan, and what its
//! incident's lifecycle makes of them. The engine performs the effects; `fluxmedic diagnose`
//! shows the plan; both go through [`plan_target`], so the command line can never answer
//! differently from the operator for the same snapshot, policies and records.

use std::collections::BTreeMap;

use super::{Input, Record, Seen, Transition};
use crate::{
    diagnose::{Diagnosis, Report, Snapshot},
    flux::ObjectKey,
    policy::{self, Decision, IncidentView, PlanContext, Policy, source_revision},
};

/// What every target of a pass is decided against.
#[derive(Clone, Copy)]
pub struct Scene<'a> {
    pub snap: &'a Snapshot,
    pub report: &'a Report,
    pub policies: &'a [Policy],
    pub operator_namespace: &'a str,
    /// The circuit breaker of each namespace.
    pub breakers: &'a policy::Breakers,
    /// The sources open incidents poll ([`pollers`]).
    pub pollers: &'a policy::Pollers,
}

/// Which incident polls each source for a fix, per namespace ([`policy::Pollers`]). Each
/// failing invalid-manifests target is planned on its own (no pollers, with its record):
/// only one whose own plan is to poll the source, now or after a wait that is about the
/// polling itself (its backoff, the previous request not handled yet, the source fetching
/// as often by itself), is named; one its policy leaves alone or blocks for anything else
/// never is. Of those, one that has polled, else one with a record in line, else a new
/// failure (the oldest, so one failing later never takes over), the first by target in
/// each tier. Being named or not never changes a target's own plan, so the name is stable
/// from pass to pass. Only records fluxmedic's seal verifies and that are not frozen count:
/// a record a tenant wrote or edited cannot make another incident wait.
pub fn pollers<'r>(
    scene: &Scene<'_>,
    records: impl IntoIterator<Item = &'r Record>,
) -> policy::Pollers {
    let snap = scene.snap;
    // (namespace, source) → (tier, failing since, target), the least by that order
    type Rank = (u8, Option<jiff::Timestamp>, ObjectKey); // unknown age: last
    let mut best: BTreeMap<(String, ObjectKey), Rank> = BTreeMap::new();
    let mut covered = std::collections::HashSet::new();
    let mut ours = std::collections::HashMap::new();
    for r in records.into_iter().filter(|r| r.is_open()) {
        if r.trust != super::Trust::Foreign {
            covered.insert(r.target.clone());
        }
        if r.trust == super::Trust::Ours && r.status.frozen.is_none() {
            ours.insert(r.target.clone(), r);
        }
    }
    let none = policy::Pollers::new();
    let alone = Scene {
        pollers: &none,
        ..*scene
    };
    for d in &scene.report.diagnoses {
        let record = ours.get(&d.target).copied();
        if d.case != crate::diagnose::Case::InvalidManifests
            || (record.is_none() && covered.contains(&d.target))
        {
            continue;
        }
        let (Some(dec), Some(source)) = (
            plan_target(&alone, &d.target, Some(d), record).decision,
            snap.objects
                .get(&d.target)
                .and_then(|o| o.source_ref.clone()),
        ) else {
            continue;
        };
        if !polls_for_others(&dec) {
            continue;
        }
        let rank = match record {
            Some(r) if r.status.polls > 0 => (0, None, d.target.clone()),
            Some(_) => (1, None, d.target.clone()),
            None => {
                let since = snap.objects.get(&d.target).and_then(|o| o.failing_since());
                (
                    2,
                    Some(since.unwrap_or(jiff::Timestamp::MAX)),
                    d.target.clone(),
                )
            }
        };
        best.entry((d.target.namespace.clone(), source))
            .and_modify(|b| {
                if rank < *b {
                    *b = rank.clone();
                }
            })
            .or_insert(rank);
    }
    best.into_iter().map(|(k, (_, _, t))| (k, t)).collect()
}

/// A plan that polls its source, now or after a wait that is about the polling itself.
fn polls_for_others(dec: &policy::Decision) -> bool {
    use policy::Blocked;
    matches!(dec.planned, Some(policy::Action::ReconcileSource { .. }))
        && matches!(
            dec.blocked,
            None | Some(
                Blocked::Cooldown { .. } | Blocked::FluxRemediating(_) | Blocked::AwaitingFix(_)
            )
        )
}

/// One target's plan: the policy that governs it, the incident as the plan saw it, and the
/// decision (`None` when the target is not failing or gone).
pub struct Planned<'a> {
    pub policy: Option<&'a Policy>,
    pub view: IncidentView,
    pub decision: Option<Decision>,
    pub context: PlanContext<'a>,
}

/// Plan one target: its policy, its incident (a new one when `record` is absent or was for
/// another case), and today's decision.
pub fn plan_target<'a>(
    scene: &Scene<'a>,
    key: &ObjectKey,
    diagnosis: Option<&Diagnosis>,
    record: Option<&Record>,
) -> Planned<'a> {
    let snap = scene.snap;
    let now = snap.now;
    let obj = snap.objects.get(key).map(|o| &**o);
    let policy = obj.and_then(|o| policy::select(scene.policies, o, scene.operator_namespace).0);
    // A new case is a new incident (its record supersedes this one): plan it as one. The old
    // record's approval, attempts and cooldown were given for another case; an approval of a
    // retry must never become the approval of an unlock. A record that holds a suspension or
    // has a step to finish is still handled as itself.
    let superseded = record.is_some_and(|r| {
        diagnosis.is_some_and(|d| d.case != r.case)
            && r.status.hold.is_none()
            && r.status.frozen.is_none()
            && r.interrupted().is_none()
    });
    let view = record
        .filter(|_| !superseded)
        .map(|r| {
            let approved = r.approved_action(policy.map(|p| p.namespace.as_str()), &|id| {
                policy.and_then(|p| p.decided(id, &r.path()))
            });
            r.view(now, approved)
        })
        .unwrap_or_else(|| super::new_incident_view(now));
    let context = PlanContext {
        snapshot: snap,
        failing_targets: scene.breakers.failing(&key.namespace),
        circuit_breaker: scene.breakers.threshold(&key.namespace),
        shared_root: scene.report.shared_roots.iter().any(|(k, _)| k == key),
        operator_namespace: scene.operator_namespace,
        controllers_down: &scene.report.controllers_down,
        pollers: scene.pollers,
    };
    let decision = match (diagnosis, obj) {
        (Some(d), Some(o)) => Some(policy::plan(d, o, policy, &view, &context)),
        _ => None,
    };
    Planned {
        policy,
        view,
        decision,
        context,
    }
}

/// The transition of one target: [`plan_target`], then the incident's lifecycle
/// ([`super::next`]); an action carries what the pass after it would record while waiting
/// ([`Act::waiting`](super::Act)), so a successful one-step action costs one status write.
/// The property tests drive this with arbitrary objects, policies and records.
pub fn decide(
    scene: &Scene<'_>,
    key: &ObjectKey,
    diagnosis: Option<&Diagnosis>,
    record: Option<&Record>,
    token: &str,
    nonce: &str,
) -> Transition {
    let mut t = transition(scene, key, diagnosis, record, token, nonce);
    if let (Some(act), Some(d)) = (t.action.as_mut(), diagnosis) {
        act.waiting = waiting_after(scene, key, d, record, act, nonce).map(Box::new);
    }
    t
}

/// What the pass after `act` succeeded would do, on the same snapshot: a wait is folded
/// into the outcome. Not for a rollback or a resume (the snapshot does not show the
/// suspension they change yet).
fn waiting_after(
    scene: &Scene<'_>,
    key: &ObjectKey,
    d: &Diagnosis,
    record: Option<&Record>,
    act: &super::Act,
    nonce: &str,
) -> Option<super::Waiting> {
    if matches!(
        act.action,
        crate::policy::Action::Rollback { .. } | crate::policy::Action::Resume
    ) {
        return None;
    }
    let snap = scene.snap;
    let facts = snap
        .objects
        .get(key)
        .map(|o| super::Facts::of(snap, o))
        .unwrap_or_default();
    let done = super::Outcome::Done {
        message: String::new(),
        generation: None,
    };
    let after = super::settle((*act.status).clone(), &act.action, &done, &facts, snap.now);
    let status = after.into_iter().find_map(|e| match e {
        super::Effect::Write(s) => Some(*s),
        _ => None,
    })?;
    let rec = Record {
        name: record.map(|r| r.name.clone()).unwrap_or_default(),
        namespace: key.namespace.clone(),
        target: key.clone(),
        case: d.case,
        stored: Some(status.clone()),
        status,
        approval: None,
        rejection: None,
        trust: super::Trust::Ours,
        uid: record.map(|r| r.uid.clone()).unwrap_or_default(),
        sequence: 0,
        closed: false,
    };
    let next = transition(scene, key, Some(d), Some(&rec), "", nonce);
    super::Waiting::of(next)
}

fn transition(
    scene: &Scene<'_>,
    key: &ObjectKey,
    diagnosis: Option<&Diagnosis>,
    record: Option<&Record>,
    token: &str,
    nonce: &str,
) -> Transition {
    let snap = scene.snap;
    let now = snap.now;
    let obj = snap.objects.get(key).map(|o| &**o);
    let Planned {
        policy,
        view,
        decision,
        context,
    } = plan_target(scene, key, diagnosis, record);
    let seen = match (diagnosis, &decision, obj) {
        (Some(d), Some(dec), _) => Seen::Failing {
            diagnosis: d,
            decision: dec,
        },
        (_, _, None) => Seen::Gone,
        (_, _, Some(o)) if o.is_ready() => Seen::Ready,
        _ => Seen::Pending,
    };
    let recheck = match (record, diagnosis, obj) {
        (Some(r), None, Some(o)) => r.interrupted().and_then(|(a, _)| {
            a.and_then(|a| policy::recheck(&a, r.case, o, policy, &view, &context))
        }),
        _ => None,
    };
    super::next(&Input {
        record,
        target: obj,
        seen,
        source_revision: obj.and_then(|o| source_revision(snap, o)),
        secret: obj.and_then(|o| policy::observed_secret(snap, o)),
        recheck,
        escalate: policy.is_some_and(|p| policy::escalates(p, &view, now)),
        controller_down: obj.and_then(|o| {
            scene
                .report
                .controllers_down
                .get(crate::diagnose::controllers::controller_of(o.key.kind))
                .map(String::as_str)
        }),
        policy: policy.map(Policy::id),
        now,
        token,
        rejected: record.and_then(|r| {
            r.rejected_request(policy.map(|p| p.namespace.as_str()), &|id| {
                policy.and_then(|p| p.decided(id, &r.path()))
            })
        }),
        nonce,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{api::RemediationStatus, diagnose::Case, flux, incident::Trust};

    fn consumer(ns: &str, name: &str) -> flux::FluxObject {
        flux::from_value(&json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"sourceRef": {"kind": "GitRepository", "name": "repo"}},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "BuildFailed", "lastTransitionTime": "2026-01-01T00:00:00Z",
                "message": "kustomize build failed: yaml: line 3: mapping values are not allowed in this context"}]}}))
        .unwrap()
    }

    /// A record of `target`'s incident, as the lifecycle reads it, after `polls` polls (the
    /// last one just now, at the snapshots' time 0).
    fn record(target: &flux::FluxObject, polls: u32, trust: Trust) -> Record {
        let status = RemediationStatus {
            phase: crate::api::Phase::Detected,
            detected_at: Some(crate::incident::rfc3339(0)),
            last_action_at: (polls > 0).then(|| crate::incident::rfc3339(0)),
            polls,
            ..Default::default()
        };
        Record {
            name: format!("ks-{}", target.key.name),
            namespace: target.key.namespace.clone(),
            target: target.key.clone(),
            case: Case::InvalidManifests,
            stored: Some(status.clone()),
            status,
            approval: None,
            rejection: None,
            trust,
            uid: "uid".into(),
            sequence: 1,
            closed: false,
        }
    }

    /// [`pollers`] in a pass over `snap` under `policies`.
    fn in_scene(snap: &Snapshot, policies: &[Policy], records: &[Record]) -> policy::Pollers {
        let report = crate::diagnose::diagnose(snap);
        let breakers = policy::Breakers::new(
            report.diagnoses.iter().map(|d| d.target.namespace.as_str()),
            policies,
            "fluxmedic",
            1000,
        );
        let none = policy::Pollers::new();
        let scene = Scene {
            snap,
            report: &report,
            policies,
            operator_namespace: "fluxmedic",
            breakers: &breakers,
            pollers: &none,
        };
        pollers(&scene, records)
    }

    fn failing(name: &str) -> flux::FluxObject {
        failing_since(name, "2026-01-01T00:00:00Z")
    }

    fn failing_since(name: &str, since: &str) -> flux::FluxObject {
        flux::from_value(&json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"sourceRef": {"kind": "GitRepository", "name": "repo"}},
            "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "BuildFailed", "lastTransitionTime": since,
                "message": "kustomize build failed: yaml: line 3: mapping values are not allowed in this context"}]}}))
        .unwrap()
    }

    fn policy(name: &str, mode: &str, targets: &[&str]) -> Policy {
        let spec: crate::api::RemediationPolicySpec = serde_json::from_value(json!({
            "targets": {"names": targets},
            "rules": [{"case": "invalid-manifests", "mode": mode}]}))
        .unwrap();
        Policy::new("apps", name, spec).unwrap()
    }

    #[test]
    fn consumers_failing_in_one_pass_poll_once_through_one_that_will_poll() {
        let snap = Snapshot::new([failing("a"), failing("b"), failing("c")], 0);
        let source = snap
            .objects
            .values()
            .find_map(|o| o.source_ref.clone())
            .unwrap();
        let key = ("apps".to_string(), source);
        let name = |p: &policy::Pollers| p.get(&key).map(|t| t.name.clone());
        // Every one would poll: the first by name polls for all.
        let auto = [policy("all", "Auto", &[])];
        assert_eq!(name(&in_scene(&snap, &auto, &[])), Some("a".into()));
        // The first is left alone by its policy (it gets no record that polls): the next
        // that would poll is named instead, never one that will not.
        let a_off = [
            policy("a-off", "Off", &["a"]),
            policy("rest", "Auto", &["b", "c"]),
        ];
        assert_eq!(name(&in_scene(&snap, &a_off, &[])), Some("b".into()));
        // One that began failing later never takes over, whatever its name.
        let later = Snapshot::new(
            [
                failing_since("0-later", "2026-01-01T00:00:05Z"),
                failing("a"),
                failing("b"),
            ],
            0,
        );
        assert_eq!(name(&in_scene(&later, &auto, &[])), Some("a".into()));
        let approval = [policy("all", "RequireApproval", &[])];
        assert_eq!(name(&in_scene(&snap, &approval, &[])), None);
        assert_eq!(
            name(&in_scene(&snap, &[], &[])),
            None,
            "no policy: nobody polls"
        );
    }

    #[test]
    fn one_incident_polls_a_source_per_namespace_and_only_records_fluxmedic_wrote_count() {
        let (a, b, c, other) = (
            consumer("apps", "a"),
            consumer("apps", "b"),
            consumer("apps", "c"),
            consumer("tenant-2", "x"),
        );
        let source = a.source_ref.clone().unwrap();
        let snap = Snapshot::new([a.clone(), b.clone(), c.clone(), other.clone()], 0);
        let key = |ns: &str| (ns.to_string(), source.clone());
        let auto = [policy("all", "Auto", &[])];
        let named = |records: &[Record]| in_scene(&snap, &auto, records).get(&key("apps")).cloned();
        // One that has polled (in its backoff now) beats one in line, even with a smaller
        // name, and both beat a new failure.
        let records = [record(&a, 0, Trust::Ours), record(&b, 1, Trust::Ours)];
        assert_eq!(named(&records), Some(b.key.clone()));
        assert_eq!(named(&records[..1]), Some(a.key.clone()));
        // Another namespace's incidents are named for it alone (apps' policy does not
        // cover tenant-2's consumer, so no one is named there).
        let p = in_scene(&snap, &auto, &records);
        assert!(p.keys().all(|(ns, _)| ns == "apps"), "{p:?}");
        // A record a tenant edited, or a frozen one, names nobody and is not taken for new;
        // a forged one is nobody's: its target counts as a new failure.
        let mut frozen = record(&b, 1, Trust::Ours);
        frozen.status.frozen = Some("edited".into());
        for r in [record(&b, 1, Trust::Edited), frozen] {
            assert_eq!(
                named(std::slice::from_ref(&r)),
                Some(a.key.clone()),
                "{r:?}"
            );
        }
        assert_eq!(named(&[record(&b, 1, Trust::Foreign)]), Some(a.key.clone()));
        // A target that no longer fails is never named, whatever its record says.
        let recovered = Snapshot::new([c.clone()], 0);
        let p = in_scene(&recovered, &auto, &[record(&b, 1, Trust::Ours)]);
        assert_eq!(p.get(&key("apps")), Some(&c.key));
    }

    /// Whether a target is named never depends on what its own record last said, so a
    /// blocked consumer cannot be named, blocked, un-named and named again each pass (every
    /// waiting record rewritten each time).
    #[test]
    fn the_name_does_not_feed_back_into_itself() {
        let (a, b, c) = (
            consumer("apps", "a"),
            consumer("apps", "b"),
            consumer("apps", "c"),
        );
        let snap = Snapshot::new([a.clone(), b.clone(), c.clone()], 0);
        let records = [
            record(&a, 0, Trust::Ours),
            record(&b, 0, Trust::Ours),
            record(&c, 0, Trust::Ours),
        ];
        // Their policy now only observes: nobody polls, nobody is named, pass after pass.
        let observe = [policy("all", "Observe", &[])];
        for _ in 0..3 {
            assert!(in_scene(&snap, &observe, &records).is_empty());
        }
        // Everyone may poll again: one is named, and stays so.
        let auto = [policy("all", "Auto", &[])];
        let first = in_scene(&snap, &auto, &records);
        assert_eq!(first.len(), 1);
        assert_eq!(in_scene(&snap, &auto, &records), first);
    }
}
