//! The lifecycle as a table: (record, what is seen, today's plan) -> effects. No cluster.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use super::*;
use crate::{
    api::{RemediationSpec, SEQUENCE_ANNOTATION, SUSPENDED_BY_ANNOTATION},
    diagnose::NativeState,
    flux::FluxKind,
    policy::ReleaseRef,
};

const NOW: i64 = 1_800_000_000;

fn sealer() -> Sealer {
    Sealer::from_key(b"a key only the operator holds, 32b")
}

fn target() -> ObjectKey {
    ObjectKey::new(FluxKind::HelmRelease, "apps", "web")
}

fn release() -> ReleaseRef {
    ReleaseRef {
        name: "web".into(),
        storage_namespace: "apps".into(),
        namespace: "apps".into(),
        identity: crate::policy::identity::ServiceAccountRef::new("apps", "deployer"),
    }
}

fn rollback() -> Action {
    Action::Rollback {
        to_version: 1,
        release: release(),
    }
}

fn unlock(ns: &str, delete: bool) -> Action {
    Action::UnlockRelease {
        namespace: ns.into(),
        secret: "sh.helm.release.v1.web.v2".into(),
        version: 2,
        delete,
        release: ReleaseRef {
            storage_namespace: ns.into(),
            ..release()
        },
    }
}

/// A Remediation as fluxmedic writes it: sealed identity (with `intent` if given) and a
/// sealed status (if given).
fn sealed(case: Case, status: Option<RemediationStatus>, intent: Option<&Step>) -> Remediation {
    let s = sealer();
    let key = target();
    let name = "hr-web-00000001";
    let id = RecordId {
        namespace: "apps",
        name,
        target: &key,
        case,
    };
    let intent_json = intent.map(intent_json).unwrap_or_default();
    let baseline = if intent.is_some() {
        baseline_json(&open_status(Phase::Detected))
    } else {
        String::new()
    };
    let mut annotations = BTreeMap::from([
        (
            SEAL_ANNOTATION.to_string(),
            s.seal_creation(id, &creation_payload(&intent_json, &baseline, 1)),
        ),
        (SEQUENCE_ANNOTATION.to_string(), "1".to_string()),
    ]);
    if intent.is_some() {
        annotations.insert(INTENT_ANNOTATION.into(), intent_json);
        annotations.insert(crate::api::BASELINE_ANNOTATION.into(), baseline);
    }
    let status = status.map(|mut st| {
        st.sequence = st.sequence.max(2);
        st.seal = Some(s.seal_status(id, UID, &st));
        st
    });
    Remediation {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("apps".into()),
            uid: Some(UID.into()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: RemediationSpec {
            target: TargetRef::from_key(&key),
            target_name: "HelmRelease/web".into(),
            case,
        },
        status,
    }
}

/// The uid of the record object [`sealed`] makes.
const UID: &str = "uid-record-1";

fn read(rem: &Remediation) -> Record {
    Record::read(rem, &sealer(), &Ledger::default()).expect("a record about a known kind")
}

fn open_status(phase: Phase) -> RemediationStatus {
    RemediationStatus {
        phase,
        detected_at: Some(rfc3339(NOW - 600)),
        ..Default::default()
    }
}

fn diag(case: Case) -> Diagnosis {
    Diagnosis {
        target: target(),
        case,
        retryable: true,
        root: target(),
        chain: vec![],
        native: NativeState::Exhausted,
        summary: format!("{case}: test"),
        evidence: vec![],
    }
}

fn acts(a: Action) -> Decision {
    Decision {
        mode: Mode::Auto,
        planned: Some(a),
        blocked: None,
        escalate: false,
    }
}

fn blocked(a: Option<Action>, b: Blocked) -> Decision {
    Decision {
        mode: Mode::Auto,
        planned: a,
        blocked: Some(b),
        escalate: false,
    }
}

fn hr(suspended_by: Option<&str>, generation: i64) -> FluxObject {
    let mut ann = serde_json::Map::new();
    if let Some(o) = suspended_by {
        ann.insert(SUSPENDED_BY_ANNOTATION.into(), o.into());
    }
    crate::flux::from_value(&serde_json::json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": "apps", "uid": "uid-1", "generation": generation,
                     "annotations": ann},
        "spec": {"suspend": suspended_by.is_some(),
                 "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "UpgradeFailed", "message": "x"}]}
    }))
    .unwrap()
}

fn input<'a>(
    record: Option<&'a Record>,
    target: Option<&'a FluxObject>,
    seen: Seen<'a>,
) -> Input<'a> {
    Input {
        record,
        target,
        seen,
        source_revision: Some("0.1.0".into()),
        secret: None,
        recheck: None,
        escalate: false,
        controller_down: None,
        policy: Some("apps/p".into()),
        now: NOW,
        token: "fresh-token",
        rejected: None,
        nonce: "fresh-id",
    }
}

fn performs(t: &Transition) -> Vec<(Action, String, IntentAt)> {
    t.action
        .iter()
        .map(|a| (a.action.clone(), a.token.clone(), a.intent))
        .collect()
}

fn written(t: &Transition) -> Option<&RemediationStatus> {
    match &t.action {
        Some(a) => Some(&a.status),
        None => written_by(&t.effects),
    }
}

/// The last status among `effects` (what `settle` returns).
fn written_by(effects: &[Effect]) -> Option<&RemediationStatus> {
    effects.iter().rev().find_map(|e| match e {
        Effect::Write(s) | Effect::Close(s) => Some(&**s),
        Effect::Open { status, .. } => Some(&**status),
        _ => None,
    })
}

fn has_release_hold(effects: &[Effect]) -> bool {
    effects.iter().any(|e| matches!(e, Effect::ReleaseHold))
}

// ------------------------------------------------------------------ records and seals

#[test]
fn records_without_fluxmedics_seal_are_foreign_and_edited_ones_are_known() {
    let running = {
        let mut st = open_status(Phase::Remediating);
        begin_step(&mut st, &rollback(), "t1", NOW - 60);
        st
    };
    assert_eq!((running.attempts, running.rollbacks), (1, 1));
    let view = read(&sealed(Case::FailedRelease, Some(running.clone()), None)).view(NOW, None);
    assert_eq!(view.rollbacks, 1, "the planner sees how many rollbacks ran");
    assert_eq!(
        read(&sealed(Case::FailedRelease, Some(running.clone()), None)).trust,
        Trust::Ours
    );

    // Created by someone else: no seal.
    let mut forged = sealed(Case::FailedRelease, Some(running.clone()), None);
    forged.metadata.annotations = None;
    forged.status.as_mut().unwrap().seal = None;
    assert_eq!(read(&forged).trust, Trust::Foreign);

    // fluxmedic's record, its status edited (attempts reset to get more retries).
    let mut edited = sealed(Case::FailedRelease, Some(running.clone()), None);
    edited.status.as_mut().unwrap().attempts = 0;
    assert_eq!(read(&edited).trust, Trust::Edited);

    // spec.target pointed at another object: the seals bind the target, so the record is
    // nobody's now; it neither speaks for nor freezes the object it names.
    let mut moved = sealed(Case::FailedRelease, Some(running.clone()), None);
    moved.spec.target.name = "db".into();
    assert_eq!(read(&moved).trust, Trust::Foreign);

    // A record in namespace A about a target in namespace B is never fluxmedic's.
    let mut elsewhere = sealed(Case::FailedRelease, Some(running), None);
    elsewhere.spec.target.namespace = "prod".into();
    assert_eq!(read(&elsewhere).trust, Trust::Foreign);
}

#[test]
fn an_edited_intent_is_never_replayed() {
    // A new incident recorded an Observe-time unlock intent... an approver rewrites it into
    // the deletion of a release Secret in another namespace.
    let mut st = RemediationStatus::default();
    begin_step(&mut st, &unlock("apps", false), "t1", NOW - 5);
    let intent = st.steps[0].clone();
    let genuine = sealed(Case::StaleLock, None, Some(&intent));
    let rec = read(&genuine);
    assert_eq!(rec.trust, Trust::Ours);
    assert_eq!(rec.interrupted().unwrap().0, Some(unlock("apps", false)));
    assert_eq!(
        rec.status.detected_at,
        Some(rfc3339(NOW - 600)),
        "the baseline rides on the create with the intent"
    );

    let mut evil = intent.clone();
    evil.detail = serde_json::to_string(&unlock("prod", true)).ok();
    let mut rem = genuine.clone();
    rem.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(INTENT_ANNOTATION.into(), intent_json(&evil));
    let rec = read(&rem);
    assert_eq!(
        rec.trust,
        Trust::Foreign,
        "an unsealed intent is not fluxmedic's"
    );
    assert!(rec.interrupted().is_none() || rec.trust == Trust::Foreign);
    let o = hr(None, 1);
    let d = diag(Case::StaleLock);
    let dec = acts(unlock("apps", false));
    assert!(
        next(&input(
            Some(&rec),
            Some(&o),
            Seen::Failing {
                diagnosis: &d,
                decision: &dec
            }
        ))
        .is_empty(),
        "a foreign record is ignored entirely"
    );
}

// ------------------------------------------------------------------ opening

#[test]
fn a_new_failure_opens_one_record_and_acts_in_the_same_write() {
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let dec = acts(Action::RetryRelease { with_source: None });
    let fx = next(&input(
        None,
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    let Effect::Open { case, intent, .. } = &fx[0] else {
        panic!("opens first: {fx:?}")
    };
    assert_eq!(*case, Case::FailedRelease);
    let intent = intent.as_ref().expect("the intent rides on the create");
    assert_eq!(intent.outcome, StepOutcome::Running);
    assert_eq!(intent.token.as_deref(), Some("fresh-token"));
    assert_eq!(
        performs(&fx),
        vec![(
            Action::RetryRelease { with_source: None },
            "fresh-token".into(),
            IntentAt::Create
        )]
    );
    let st = written(&fx).unwrap();
    assert_eq!(st.attempts, 1);
    assert_eq!(st.rollbacks, 0, "a retry is no rollback");
    assert_eq!(st.target_generation, Some(3));
    assert!(fx.contains(&Effect::Count(Count::Incident(Case::FailedRelease))));
}

/// A failure due for escalation from the start (the policy's `escalateAfter: 0s`, Flux
/// retrying without end) is escalated at once and still gets its first action, as it would on
/// any later pass: escalating tells a person, it does not stop fluxmedic. (It used to skip the
/// action and record "no runbook action" for that first pass only.)
#[test]
fn a_new_failure_due_for_escalation_is_escalated_and_acted_on_at_once() {
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let dec = Decision {
        escalate: true,
        ..acts(Action::RetryRelease { with_source: None })
    };
    let fx = next(&input(
        None,
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert!(
        matches!(
            fx[0],
            Effect::Open {
                intent: Some(_),
                ..
            }
        ),
        "{fx:?}"
    );
    assert_eq!(performs(&fx).len(), 1, "the first action is taken");
    let st = written(&fx).unwrap();
    assert_eq!(st.phase, Phase::Escalated);
    assert!(fx.contains(&Effect::Count(Count::Escalation(Case::FailedRelease))));
    let escalated = fx
        .iter()
        .position(|e| matches!(e, Effect::Event { reason, .. } if *reason == "Escalated"))
        .expect("a person is told");
    assert!(
        escalated > 0,
        "told after the record exists, so the Event names it"
    );
    // Waiting instead: escalated, and the record says why it waits.
    let dec = Decision {
        escalate: true,
        ..blocked(
            Some(Action::RetryRelease { with_source: None }),
            Blocked::AwaitingApproval,
        )
    };
    let fx = next(&input(
        None,
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert!(performs(&fx).is_empty());
    let st = written(&fx).unwrap();
    assert_eq!(st.phase, Phase::Escalated);
    assert!(
        st.blocked.as_deref().unwrap().contains("approval"),
        "{:?}",
        st.blocked
    );
}

#[test]
fn a_new_failure_that_must_wait_records_why_and_off_records_nothing() {
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let dec = blocked(
        Some(Action::RetryRelease { with_source: None }),
        Blocked::AwaitingApproval,
    );
    let fx = next(&input(
        None,
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert!(performs(&fx).is_empty());
    let Effect::Open { status, intent, .. } = &fx[0] else {
        panic!()
    };
    assert!(intent.is_none());
    assert_eq!(status.phase, Phase::AwaitingApproval);
    assert!(
        status
            .blocked
            .as_deref()
            .unwrap()
            .contains("waiting for approval")
    );

    let off = Decision {
        mode: Mode::Off,
        ..dec.clone()
    };
    assert!(
        next(&input(
            None,
            Some(&o),
            Seen::Failing {
                diagnosis: &d,
                decision: &off
            }
        ))
        .is_empty()
    );
}

// ------------------------------------------------------------------ waiting costs nothing

#[test]
fn a_waiting_incident_is_not_rewritten_while_nothing_changes() {
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let retry = Action::RetryRelease { with_source: None };
    let dec = blocked(Some(retry.clone()), Blocked::Cooldown { until: NOW + 90 });
    let first = {
        let rec = read(&sealed(
            Case::FailedRelease,
            Some(open_status(Phase::Remediating)),
            None,
        ));
        next(&input(
            Some(&rec),
            Some(&o),
            Seen::Failing {
                diagnosis: &d,
                decision: &dec,
            },
        ))
    };
    let st = written(&first).unwrap().clone();
    assert_eq!(st.next_action_at, Some(rfc3339(NOW + 90)));
    // The next ticks, a second and a minute later, see the same plan: nothing to write.
    let rec = read(&sealed(Case::FailedRelease, Some(st), None));
    for later in [NOW + 1, NOW + 60] {
        let mut inp = input(
            Some(&rec),
            Some(&o),
            Seen::Failing {
                diagnosis: &d,
                decision: &dec,
            },
        );
        inp.now = later;
        assert_eq!(next(&inp), vec![], "no write at {later}");
    }
}

// ------------------------------------------------------------------ acting, closing, case changes

#[test]
fn an_open_incident_acts_with_its_intent_written_first() {
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let rec = read(&sealed(
        Case::FailedRelease,
        Some(RemediationStatus {
            attempts: 1,
            ..open_status(Phase::Remediating)
        }),
        None,
    ));
    let dec = acts(Action::RetryRelease { with_source: None });
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert_eq!(performs(&fx)[0].2, IntentAt::Status);
    assert_eq!(written(&fx).unwrap().attempts, 2);
}

#[test]
fn recovery_closes_succeeded_or_resolved_and_a_gone_target_closes_too() {
    let o = hr(None, 3);
    let mut acted = open_status(Phase::Remediating);
    begin_step(&mut acted, &Action::Reconcile, "t", NOW - 30);
    acted.steps[0].outcome = StepOutcome::Succeeded;
    let rec = read(&sealed(Case::FailedRelease, Some(acted), None));
    let fx = next(&input(Some(&rec), Some(&o), Seen::Ready));
    let Effect::Close(st) = &fx[0] else {
        panic!("{fx:?}")
    };
    assert_eq!(st.phase, Phase::Succeeded);
    assert_eq!(st.time_to_recovery_seconds, Some(600.0));

    let idle = read(&sealed(
        Case::FailedRelease,
        Some(open_status(Phase::Detected)),
        None,
    ));
    let fx = next(&input(Some(&idle), Some(&o), Seen::Ready));
    assert!(matches!(&fx[0], Effect::Close(st) if st.phase == Phase::Resolved));
    let fx = next(&input(Some(&idle), None, Seen::Gone));
    assert!(
        matches!(&fx[0], Effect::Close(st) if st.message.as_deref() == Some("the target no longer exists"))
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Event {
            regarding: Regarding::Record,
            ..
        }
    )));
    // Progressing: stays open, nothing written.
    assert!(next(&input(Some(&idle), Some(&o), Seen::Pending)).is_empty());
}

#[test]
fn a_new_case_closes_the_record_and_opens_another_under_its_own_name() {
    let o = hr(None, 3);
    let rec = read(&sealed(
        Case::FailedRelease,
        Some(open_status(Phase::Detected)),
        None,
    ));
    let d = diag(Case::StaleLock);
    let dec = acts(unlock("apps", false));
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert!(
        matches!(&fx[0], Effect::Close(st) if st.message.as_deref().unwrap().contains("changed"))
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Open {
            case: Case::StaleLock,
            ..
        }
    )));
    // A new case never reuses the closed record's name.
    let since = NOW - 600;
    let names: std::collections::BTreeSet<String> = Case::ALL
        .iter()
        .flat_map(|c| (0..3).map(move |n| record_name(&target(), since, *c, n)))
        .collect();
    assert_eq!(names.len(), Case::ALL.len() * 3);
    assert!(names.iter().all(|n| n.len() <= 63));
}

// ------------------------------------------------------------------ interrupted steps

#[test]
fn an_interrupted_step_is_finished_only_if_todays_plan_derives_it_again() {
    let o = hr(None, 3);
    let d = diag(Case::StaleLock);
    let mut st = open_status(Phase::Remediating);
    begin_step(&mut st, &unlock("apps", false), "recorded-token", NOW - 5);
    let rec = read(&sealed(Case::StaleLock, Some(st), None));

    // Same plan: finished with the recorded token, no new intent.
    let dec = acts(unlock("apps", false));
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert_eq!(
        performs(&fx),
        vec![(
            unlock("apps", false),
            "recorded-token".into(),
            IntentAt::Recorded
        )]
    );

    // Today's policy no longer allows it (Observe): not finished, marked Interrupted.
    let dec = blocked(Some(unlock("apps", false)), Blocked::Observe);
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert!(performs(&fx).is_empty());
    let st = written(&fx).unwrap();
    assert_eq!(st.steps.last().unwrap().outcome, StepOutcome::Interrupted);
    assert!(st.steps.last().unwrap().message.contains("Observe"));

    // Today's plan is another action: not the recorded one.
    let dec = acts(unlock("apps", true));
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert!(performs(&fx).is_empty());

    // The target recovered: finished if today's policy still allows it, else not.
    let fx = next(&input(Some(&rec), Some(&o), Seen::Ready));
    assert_eq!(performs(&fx).len(), 1);
    let mut inp = input(Some(&rec), Some(&o), Seen::Ready);
    inp.recheck = Some(Blocked::NoPolicy);
    assert!(performs(&next(&inp)).is_empty());
}

#[test]
fn a_half_done_rollback_that_is_not_finished_gives_the_release_back() {
    let mut st = open_status(Phase::Remediating);
    begin_step(&mut st, &rollback(), "t", NOW - 5);
    let rec = read(&sealed(Case::FailedRelease, Some(st), None));
    let suspended = hr(Some("hr-web-00000001"), 4);
    // Recovered meanwhile: not re-run; fluxmedic's partial suspension is released.
    let fx = next(&input(Some(&rec), Some(&suspended), Seen::Ready));
    assert!(performs(&fx).is_empty());
    assert!(has_release_hold(&fx));
    // A person suspended it under another name: not ours to release.
    let theirs = hr(Some("someone"), 4);
    assert!(!has_release_hold(&next(&input(
        Some(&rec),
        Some(&theirs),
        Seen::Ready
    ))));
}

// ------------------------------------------------------------------ holds

fn holding(phase: Phase) -> RemediationStatus {
    let mut st = open_status(phase);
    begin_step(&mut st, &rollback(), "t", NOW - 300);
    st.steps[0].outcome = StepOutcome::Succeeded;
    st.hold = Some(Hold {
        generation: 4,
        revision: Some("0.1.0".into()),
        since: rfc3339(NOW - 300),
    });
    st
}

#[test]
fn a_hold_ends_only_when_the_fix_lands_or_a_person_resumes() {
    let d = diag(Case::FailedRelease);
    let rec = read(&sealed(
        Case::FailedRelease,
        Some(holding(Phase::AwaitingFix)),
        None,
    ));
    let held = hr(Some("hr-web-00000001"), 4);

    // Every plan, policy and phase that is not the fix keeps the hold: escalation, the
    // policy gone or relaxed, Off, another case.
    for dec in [
        blocked(None, Blocked::NoPolicy),
        blocked(None, Blocked::Observe),
        blocked(None, Blocked::AwaitingApproval),
        Decision {
            mode: Mode::Off,
            ..blocked(None, Blocked::Observe)
        },
        Decision {
            escalate: true,
            ..acts(Action::RetryRelease { with_source: None })
        },
    ] {
        for case in [Case::FailedRelease, Case::Other] {
            let d = diag(case);
            let mut inp = input(
                Some(&rec),
                Some(&held),
                Seen::Failing {
                    diagnosis: &d,
                    decision: &dec,
                },
            );
            inp.escalate = dec.escalate;
            let fx = next(&inp);
            assert!(performs(&fx).is_empty(), "{dec:?} {case}: {fx:?}");
            assert!(!has_release_hold(&fx), "{dec:?}");
            assert!(!fx.iter().any(|e| matches!(e, Effect::Close(_))), "{case}");
            if let Some(st) = written(&fx) {
                assert!(st.hold.is_some(), "the hold stays recorded: {dec:?}");
            }
        }
    }
    // Escalation marks the phase once, and keeps the hold.
    let dec = blocked(None, Blocked::NoPolicy);
    let mut inp = input(
        Some(&rec),
        Some(&held),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    );
    inp.escalate = true;
    let fx = next(&inp);
    let st = written(&fx).unwrap();
    assert_eq!(st.phase, Phase::Escalated);
    assert!(st.hold.is_some());

    // The fix lands: a new generation, or a new chart revision.
    let fixed = hr(Some("hr-web-00000001"), 5);
    let fx = next(&input(Some(&rec), Some(&fixed), Seen::Ready));
    assert_eq!(performs(&fx)[0].0, Action::Resume);
    let mut inp = input(Some(&rec), Some(&held), Seen::Ready);
    inp.source_revision = Some("0.1.1".into());
    assert_eq!(performs(&next(&inp))[0].0, Action::Resume);

    // A person resumed it: the hold is over, nothing to release.
    let resumed = hr(None, 5);
    let fx = next(&input(Some(&rec), Some(&resumed), Seen::Ready));
    assert!(performs(&fx).is_empty() && !has_release_hold(&fx));
    assert!(written(&fx).unwrap().hold.is_none());
}

/// A pass confirms in the ledger a word of fluxmedic's it reads that is newer than the noted
/// one (a note a crash lost), and never changes a word at the same sequence: after a crash two
/// sealed statuses can share one, and writing back the other must not reopen a closed incident
/// (or close an open one).
#[test]
fn the_ledger_confirms_only_a_newer_word() {
    let mut st = open_status(Phase::Remediating);
    st.sequence = 101;
    let rem = sealed(Case::FailedRelease, Some(st), None);
    let mut ledger = Ledger::default();
    ledger.note(UID, 90, false);
    let rec = Record::read(&rem, &sealer(), &ledger).unwrap();
    assert_eq!(rec.trust, Trust::Ours);
    assert!(ledger.confirm(&rec), "a lost note is noted again");
    assert_eq!(ledger.records[UID].sequence, 101);
    // fluxmedic closed it at the same sequence 101 (its counter restarted below it).
    ledger.records.insert(
        UID.into(),
        LedgerEntry {
            sequence: 101,
            closed: true,
        },
    );
    let replayed = Record::read(&rem, &sealer(), &ledger).unwrap();
    assert!(
        !ledger.confirm(&replayed),
        "the same sequence changes nothing"
    );
    assert!(ledger.records[UID].closed, "still closed");
    assert!(!Record::read(&rem, &sealer(), &ledger).unwrap().is_open());
}

/// A wait that asks a person for approval is not folded into an outcome: the request (its id,
/// its Event) is the next pass's own, so the id a person is told is the one the record holds.
#[test]
fn a_request_for_approval_is_never_folded_into_an_outcome() {
    let mut st = open_status(Phase::AwaitingApproval);
    st.blocked_reason = Some("awaiting-approval".into());
    st.approval = Some(crate::api::ApprovalRequest {
        action: "retry".into(),
        planned: None,
        detail: String::new(),
        id: "n1".into(),
        how: "fluxmedic approve".into(),
        rejected: false,
    });
    let next = Transition::from(vec![Effect::Write(Box::new(st.clone()))]);
    assert_eq!(super::Waiting::of(next), None);
    st.approval = None;
    let next = Transition::from(vec![Effect::Write(Box::new(st))]);
    assert!(super::Waiting::of(next).is_some());
}

/// The wait the pass after a successful action would record rides on its outcome; a failed
/// action's outcome carries none of it (the next pass decides anew).
#[test]
fn the_wait_after_an_action_is_folded_into_a_successful_outcome_only() {
    let mut st = open_status(Phase::Remediating);
    begin_step(&mut st, &Action::Reconcile, "t", NOW);
    let waiting = || super::Waiting {
        phase: Phase::Remediating,
        blocked: Some("planned reconcile; cooldown".into()),
        blocked_reason: Some("cooldown".into()),
        planned: Some("reconcile".into()),
        next_action_at: Some(rfc3339(NOW + 600)),
        effects: vec![Effect::Count(Count::Blocked("cooldown"))],
    };
    let done = Outcome::Done {
        message: "ok".into(),
        generation: None,
    };
    let fx = super::settle_waiting(
        st.clone(),
        &Action::Reconcile,
        &done,
        &Facts::default(),
        NOW + 1,
        Some(waiting()),
    );
    let after = written_by(&fx).unwrap();
    assert_eq!(after.blocked_reason.as_deref(), Some("cooldown"));
    assert_eq!(after.next_action_at, Some(rfc3339(NOW + 600)));
    assert_eq!(after.steps.last().unwrap().outcome, StepOutcome::Succeeded);
    assert!(fx.contains(&Effect::Count(Count::Blocked("cooldown"))));
    let failed = Outcome::Failed {
        message: "boom".into(),
        category: "Conflict",
    };
    let fx = super::settle_waiting(
        st.clone(),
        &Action::Reconcile,
        &failed,
        &Facts::default(),
        NOW + 1,
        Some(waiting()),
    );
    assert_eq!(
        fx,
        settle(st, &Action::Reconcile, &failed, &Facts::default(), NOW + 1)
    );
}

#[test]
fn settling_a_rollback_records_the_hold_and_a_resume_ends_it() {
    let mut st = open_status(Phase::Remediating);
    begin_step(&mut st, &rollback(), "t", NOW);
    let facts = Facts {
        source_revision: Some("0.1.0".into()),
        secret: None,
        generation: Some(3),
    };
    let fx = settle(
        st.clone(),
        &rollback(),
        &Outcome::Done {
            message: "rolled back".into(),
            generation: Some(4),
        },
        &facts,
        NOW + 5,
    );
    let after = written_by(&fx).unwrap();
    assert_eq!(after.phase, Phase::AwaitingFix);
    assert_eq!(after.hold.as_ref().unwrap().generation, 4);
    assert_eq!(after.steps.last().unwrap().outcome, StepOutcome::Succeeded);

    let fx = settle(
        st,
        &rollback(),
        &Outcome::Failed {
            message: "helm: boom".into(),
            category: "HelmFailed",
        },
        &facts,
        NOW + 5,
    );
    let after = written_by(&fx).unwrap();
    assert!(after.hold.is_none(), "a failed rollback holds nothing");
    assert_eq!(after.steps.last().unwrap().outcome, StepOutcome::Failed);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Event {
            warning: true,
            reason: "HelmFailed",
            ..
        }
    )));

    let mut held = holding(Phase::AwaitingFix);
    begin_step(&mut held, &Action::Resume, "t2", NOW);
    let fx = settle(
        held,
        &Action::Resume,
        &Outcome::Done {
            message: "resumed".into(),
            generation: None,
        },
        &facts,
        NOW + 1,
    );
    let after = written_by(&fx).unwrap();
    assert!(after.hold.is_none());
    assert_eq!(after.phase, Phase::Remediating);
}

// ------------------------------------------------------------------ frozen records

#[test]
fn an_edited_record_is_frozen_and_never_acted_from() {
    let mut st = open_status(Phase::Remediating);
    begin_step(
        &mut st,
        &Action::RetryRelease { with_source: None },
        "t",
        NOW - 5,
    );
    let mut rem = sealed(Case::FailedRelease, Some(st), None);
    rem.status.as_mut().unwrap().attempts = 0; // the edit
    let rec = read(&rem);
    assert_eq!(rec.trust, Trust::Edited);
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let dec = acts(Action::RetryRelease { with_source: None });
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &dec,
        },
    ));
    assert!(performs(&fx).is_empty(), "no replay, no new action");
    assert!(fx.contains(&Effect::Count(Count::RecordEdited)));
    let st = written(&fx).unwrap().clone();
    assert_eq!(st.frozen.as_deref(), Some(FROZEN));
    assert_eq!(st.steps.last().unwrap().outcome, StepOutcome::Interrupted);

    // Re-sealed by fluxmedic, frozen: still no action; closes when Ready.
    let frozen = read(&sealed(Case::FailedRelease, Some(st), None));
    assert_eq!(frozen.trust, Trust::Ours);
    assert!(
        next(&input(
            Some(&frozen),
            Some(&o),
            Seen::Failing {
                diagnosis: &d,
                decision: &dec
            }
        ))
        .is_empty()
    );
    assert!(matches!(
        next(&input(Some(&frozen), Some(&o), Seen::Ready))[0],
        Effect::Close(_)
    ));
}

#[test]
fn a_frozen_record_keeps_its_hold_for_a_person() {
    let mut rem = sealed(Case::FailedRelease, Some(holding(Phase::AwaitingFix)), None);
    rem.status
        .as_mut()
        .unwrap()
        .hold
        .as_mut()
        .unwrap()
        .generation = 99; // "fix landed"
    let rec = read(&rem);
    let fx = next(&input(
        Some(&rec),
        Some(&hr(Some("hr-web-00000001"), 5)),
        Seen::Ready,
    ));
    assert!(performs(&fx).is_empty() && !has_release_hold(&fx));
    assert!(
        written(&fx)
            .unwrap()
            .blocked
            .as_deref()
            .unwrap()
            .contains("stays suspended")
    );
}

// ------------------------------------------------------------------ orphaned suspensions

#[test]
fn only_fluxmedics_own_untouched_suspension_is_resumed_when_nobody_holds_it() {
    let s = sealer();
    let owner = "hr-web-00000001";
    let with_hold = |gen_: i64, hold_gen: i64, who: &str| {
        let mut o = hr(Some(who), gen_);
        o.reconcile_annotations.insert(
            crate::api::HOLD_ANNOTATION.into(),
            s.seal_hold(&o.key, "uid-1", who, hold_gen),
        );
        o
    };
    // The owner record is gone (deleted): fluxmedic's suspension, untouched since -> resumed.
    assert!(orphaned_hold(&with_hold(4, 4, owner), None, &s));
    // Touched since (a person edited, resumed and re-suspended): not fluxmedic's alone.
    assert!(!orphaned_hold(&with_hold(6, 4, owner), None, &s));
    // A suspension fluxmedic did not make: no hold seal, or a forged one.
    assert!(!orphaned_hold(&hr(Some(owner), 4), None, &s));
    let mut forged = hr(Some(owner), 4);
    forged
        .reconcile_annotations
        .insert(crate::api::HOLD_ANNOTATION.into(), "4.deadbeef".into());
    assert!(!orphaned_hold(&forged, None, &s));
    // An open record still holds it, or is in the middle of the rollback: not an orphan.
    let holder = read(&sealed(
        Case::FailedRelease,
        Some(holding(Phase::Escalated)),
        None,
    ));
    assert!(!orphaned_hold(&with_hold(4, 4, owner), Some(&holder), &s));
    let mut mid = open_status(Phase::Remediating);
    begin_step(&mut mid, &rollback(), "t", NOW);
    let mid = read(&sealed(Case::FailedRelease, Some(mid), None));
    assert!(!orphaned_hold(&with_hold(4, 4, owner), Some(&mid), &s));
    // A failed rollback whose undo did not get through: the record holds nothing -> resumed.
    let failed = read(&sealed(
        Case::FailedRelease,
        Some(open_status(Phase::Detected)),
        None,
    ));
    assert!(orphaned_hold(&with_hold(4, 4, owner), Some(&failed), &s));
}

#[test]
fn a_new_reason_under_the_same_planned_action_is_counted() {
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let retry = Action::RetryRelease { with_source: None };
    let rec = read(&sealed(
        Case::FailedRelease,
        Some(open_status(Phase::Remediating)),
        None,
    ));
    let waiting = blocked(
        Some(retry.clone()),
        Blocked::FluxRemediating(
            "helm-controller has not handled the previous reconcile request yet".into(),
        ),
    );
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &waiting,
        },
    ));
    assert!(fx.contains(&Effect::Count(Count::Blocked("flux-remediating"))));
    let rec = read(&sealed(
        Case::FailedRelease,
        Some(written(&fx).unwrap().clone()),
        None,
    ));
    // Same planned retry, another reason: counted.
    let cooling = blocked(Some(retry.clone()), Blocked::Cooldown { until: NOW + 60 });
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &cooling,
        },
    ));
    assert!(
        fx.contains(&Effect::Count(Count::Blocked("cooldown"))),
        "{fx:?}"
    );
    // The same reason again: not counted twice.
    let rec = read(&sealed(
        Case::FailedRelease,
        Some(written(&fx).unwrap().clone()),
        None,
    ));
    let fx = next(&input(
        Some(&rec),
        Some(&o),
        Seen::Failing {
            diagnosis: &d,
            decision: &cooling,
        },
    ));
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Count(Count::Blocked(_)))),
        "{fx:?}"
    );
}

/// The reason is kept as a word beside the text (`blockedReason`), and the planned action
/// apart from the last one taken (`planned`, where the action column used to say `retry?`): a
/// cooldown whose due time moved is the same reason, not counted again. A record written
/// before those fields is judged by its text, so an upgrade does not announce anything anew.
#[test]
fn the_reason_and_the_planned_action_are_fields_not_text() {
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let retry = Action::RetryRelease { with_source: None };
    let cooling = |until| blocked(Some(retry.clone()), Blocked::Cooldown { until });
    let pass = |rec: &Record, dec: &Decision| {
        next(&input(
            Some(rec),
            Some(&o),
            Seen::Failing {
                diagnosis: &d,
                decision: dec,
            },
        ))
    };
    let first = cooling(NOW + 60);
    let rec = read(&sealed(
        Case::FailedRelease,
        Some(open_status(Phase::Remediating)),
        None,
    ));
    let fx = pass(&rec, &first);
    let st = written(&fx).unwrap().clone();
    assert_eq!(st.blocked_reason.as_deref(), Some("cooldown"));
    assert_eq!(st.planned.as_deref(), Some("retry"));
    assert_eq!(st.action, None, "nothing was taken yet");
    let rec = read(&sealed(Case::FailedRelease, Some(st), None));
    let fx = pass(&rec, &cooling(NOW + 120));
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Count(Count::Blocked(_)))),
        "the same reason with another due time: {fx:?}"
    );
    // Written by an earlier version: its text only.
    let mut legacy = open_status(Phase::Remediating);
    legacy.blocked = Some(format!(
        "planned {retry}; {}",
        Blocked::Cooldown { until: NOW + 60 }
    ));
    let rec = read(&sealed(Case::FailedRelease, Some(legacy), None));
    let fx = pass(&rec, &first);
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Count(Count::Blocked(_)))),
        "{fx:?}"
    );
    // Acting clears both.
    let fx = pass(&rec, &acts(retry.clone()));
    let st = written(&fx).unwrap();
    assert_eq!(
        (st.blocked_reason.as_deref(), st.planned.as_deref()),
        (None, None)
    );
    assert_eq!(st.action.as_deref(), Some("retry"));
}

#[test]
fn a_target_frozen_mid_reconcile_by_a_controller_that_stopped_is_escalated() {
    let o = hr(None, 3);
    let mut st = open_status(Phase::Remediating);
    st.diagnosis = Some(diagnosis_record(&diag(Case::FailedRelease)));
    let rec = read(&sealed(Case::FailedRelease, Some(st), None));
    // Flux shows it working on the target: without a controller down, nothing to do.
    assert!(next(&input(Some(&rec), Some(&o), Seen::Pending)).is_empty());
    // Its controller is not processing objects: escalated at once, with the reason.
    let why = "helm-controller has not handled the reconcile request on HelmRelease/apps/web made 200s ago: it is not processing its objects";
    let mut inp = input(Some(&rec), Some(&o), Seen::Pending);
    inp.controller_down = Some(why);
    let fx = next(&inp);
    assert!(fx.iter().any(|e| matches!(e, Effect::Write(_))), "{fx:?}");
    let written = written(&fx).expect("the record is written").clone();
    assert_eq!(written.phase, Phase::Escalated);
    assert!(
        written
            .blocked
            .as_deref()
            .unwrap()
            .contains("a person is needed")
    );
    assert!(written.blocked.as_deref().unwrap().contains(why));
    assert!(
        written
            .diagnosis
            .as_ref()
            .unwrap()
            .evidence
            .iter()
            .any(|e| e.source == "controller"),
        "{written:?}"
    );
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Count(Count::Escalation(Case::FailedRelease))))
    );
    assert!(
        performs(&fx).is_empty(),
        "nothing is requested through a stopped controller"
    );
    // Once recorded, the same state writes nothing again.
    let mut stored = written;
    stored.seal = None;
    let rec2 = read(&sealed(Case::FailedRelease, Some(stored), None));
    let mut inp = input(Some(&rec2), Some(&o), Seen::Pending);
    inp.controller_down = Some(why);
    assert!(next(&inp).is_empty(), "{:?}", next(&inp));
}

// ------------------------------------------------------------------ approvals

fn awaiting(a: Action) -> Decision {
    Decision {
        mode: Mode::RequireApproval,
        planned: Some(a),
        blocked: Some(Blocked::AwaitingApproval),
        escalate: false,
    }
}

#[test]
fn an_approval_approves_one_action_named_by_an_id_made_with_the_plan() {
    let d = diag(Case::FailedRelease);
    let retry = Action::RetryRelease { with_source: None };
    let o = hr(None, 2);
    // The plan asks: a request with a fresh id, and how to approve it, in the record.
    let rec = read(&sealed(
        Case::FailedRelease,
        Some(open_status(Phase::Detected)),
        None,
    ));
    let dec = awaiting(retry.clone());
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &dec,
    };
    let out = next(&input(Some(&rec), Some(&o), seen));
    let st = written(&out).expect("the request is written").clone();
    let req = st.approval.clone().expect("an approval request");
    assert_eq!(req.id, "fresh-id");
    assert_eq!(st.phase, Phase::AwaitingApproval);
    assert!(
        st.blocked
            .as_deref()
            .unwrap()
            .contains("fluxmedic.io/approve=fresh-id"),
        "{:?}",
        st.blocked
    );

    // The record with that request: only an approval naming its id, where the policy lets
    // it be given, approves it, and only for that action.
    let mut asked = sealed(Case::FailedRelease, Some(st.clone()), None);
    let with = |rem: &mut Remediation, v: &str| {
        rem.metadata
            .annotations
            .get_or_insert_default()
            .insert(crate::api::APPROVE_ANNOTATION.into(), v.into());
    };
    let none = |_: &str| None;
    with(&mut asked, "true");
    assert_eq!(
        read(&asked).approved_action(Some("apps"), &none),
        None,
        "no id, no approval"
    );
    with(&mut asked, "fresh-id");
    let rec = read(&asked);
    assert_eq!(
        rec.approved_action(Some("apps"), &none),
        Some(retry.clone())
    );
    // A policy of the operator's namespace decided: an approval the tenant wrote on its own
    // record counts for nothing; one on the policy does.
    assert_eq!(rec.approved_action(Some("fluxmedic"), &none), None);
    assert_eq!(
        rec.approved_action(Some("fluxmedic"), &|id| (id == "fresh-id").then_some(true)),
        Some(retry.clone())
    );
    // No policy now: nothing is approved.
    assert_eq!(rec.approved_action(None, &|_| Some(true)), None);

    // The plan moves on to another action: a new request, a new id; the old approval is
    // worth nothing for it.
    let rollback_plan = awaiting(rollback());
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &rollback_plan,
    };
    let mut later = input(Some(&rec), Some(&o), seen);
    later.nonce = "another-id";
    let out = next(&later);
    let req2 = written(&out).unwrap().approval.clone().unwrap();
    assert_eq!(req2.id, "another-id");
    assert_eq!(req2.planned.as_ref().unwrap()["type"], "Rollback");
    // The text earlier versions read is written too, and reads back as the same action.
    assert_eq!(
        Action::from_record(None, Some(&req2.detail)),
        Some(rollback())
    );

    // Approved and performed: the request is gone, the next action needs its own.
    let go = acts(retry.clone());
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &go,
    };
    let out = next(&input(Some(&rec), Some(&o), seen));
    assert_eq!(performs(&out).len(), 1);
    assert_eq!(written(&out).unwrap().approval, None);

    // Held back by something else meanwhile (a cooldown): the request, and its id, stay.
    let cooling = Decision {
        mode: Mode::RequireApproval,
        planned: Some(retry),
        blocked: Some(Blocked::Cooldown { until: NOW + 60 }),
        escalate: false,
    };
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &cooling,
    };
    let out = next(&input(Some(&rec), Some(&o), seen));
    let kept = written(&out)
        .map(|s| s.approval.clone())
        .unwrap_or(st.approval.clone());
    assert_eq!(kept.map(|r| r.id), Some("fresh-id".to_string()));
}

// ------------------------------------------------------------------ replays

fn ledger_with(sequence: u64, closed: bool, persisted: u64) -> Ledger {
    Ledger {
        records: [(UID.to_string(), LedgerEntry { sequence, closed })].into(),
        persisted,
    }
}

#[test]
fn a_record_is_fluxmedics_only_as_fluxmedic_last_wrote_it() {
    let read_with = |rem: &Remediation, l: &Ledger| Record::read(rem, &sealer(), l).unwrap();
    let status = |seq: u64, phase: Phase| RemediationStatus {
        sequence: seq,
        ..open_status(phase)
    };
    // The latest status fluxmedic wrote (sequence 7): its own.
    let latest = sealed(Case::StaleLock, Some(status(7, Phase::Remediating)), None);
    assert_eq!(
        read_with(&latest, &ledger_with(7, false, 7)).trust,
        Trust::Ours
    );
    // An earlier status of its own written back (sequence 5): not as fluxmedic left it.
    let earlier = sealed(Case::StaleLock, Some(status(5, Phase::Remediating)), None);
    let rec = read_with(&earlier, &ledger_with(7, false, 7));
    assert_eq!(rec.trust, Trust::Edited);
    assert!(rec.is_open());
    // ... of a closed incident: the incident stays closed, whatever the status says.
    let rec = read_with(&earlier, &ledger_with(7, true, 7));
    assert_eq!(rec.trust, Trust::Edited);
    assert!(!rec.is_open(), "a closed incident is never reopened");
    // The status removed (the intent on the create stays): not replayed.
    let mut st = RemediationStatus::default();
    begin_step(&mut st, &unlock("apps", false), "t1", NOW - 5);
    let removed = sealed(Case::StaleLock, None, Some(&st.steps[0]));
    let rec = read_with(&removed, &ledger_with(7, false, 7));
    assert_eq!(rec.trust, Trust::Edited);
    let out = next(&input(Some(&rec), None, Seen::Gone));
    assert!(performs(&out).is_empty(), "the step is not run again");
    // The same record, fresh from its create (nothing written since): its own, step and all.
    let rec = read_with(&removed, &ledger_with(1, false, 0));
    assert_eq!(rec.trust, Trust::Ours);
    assert!(rec.interrupted().is_some());
    // A copy re-created from saved JSON: another uid, unknown to the ledger, older than what
    // it persisted. Nobody's, with or without its status.
    for copy in [latest.clone(), removed.clone()] {
        let mut copy = copy;
        copy.metadata.uid = Some("uid-of-the-copy".into());
        assert_eq!(
            read_with(&copy, &ledger_with(7, false, 7)).trust,
            Trust::Foreign
        );
    }
    // A record made after the ledger was last persisted (a crash before it was written):
    // unknown to it, but newer than anything it persisted: fluxmedic's.
    assert_eq!(read_with(&latest, &Ledger::default()).trust, Trust::Ours);
}

// ------------------------------------------------------------------ conditions, earlier records

/// The conditions every phase shows: (phase, frozen) -> (Ready, its reason, Stalled).
#[test]
fn conditions_follow_the_phase_as_kubernetes_tools_read_them() {
    use super::conditions::{READY, STALLED, present};
    let table = [
        (Phase::Detected, false, "False", "Detected", false),
        (
            Phase::AwaitingApproval,
            false,
            "False",
            "AwaitingApproval",
            false,
        ),
        (Phase::Remediating, false, "False", "Remediating", false),
        (Phase::AwaitingFix, false, "False", "AwaitingFix", false),
        (Phase::Failed, false, "False", "Failed", true),
        (Phase::Escalated, false, "False", "Escalated", true),
        (Phase::Remediating, true, "False", "Frozen", true),
        (Phase::Succeeded, false, "True", "Succeeded", false),
        (Phase::Resolved, false, "True", "Resolved", false),
        (Phase::Resolved, true, "True", "Resolved", false),
    ];
    for (phase, frozen, ready, reason, stalled) in table {
        let mut st = open_status(phase);
        st.observed_generation = Some(1);
        st.blocked = Some("cooldown".into());
        st.frozen = frozen.then(|| FROZEN.to_string());
        present(&mut st, NOW);
        let c = |t: &str| st.conditions.iter().find(|c| c.type_ == t);
        let r = c(READY).expect("Ready is always there");
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            (ready, reason),
            "{phase:?} {frozen}"
        );
        assert_eq!(r.observed_generation, Some(1));
        assert!(!r.message.is_empty());
        assert_eq!(
            c(STALLED).is_some_and(|s| s.status == "True"),
            stalled,
            "{phase:?} {frozen}"
        );
    }
    // An open incident says what holds it; a transition time moves only with the status.
    let mut st = open_status(Phase::Detected);
    st.blocked = Some("waiting for approval".into());
    present(&mut st, NOW);
    assert_eq!(st.conditions[0].message, "waiting for approval");
    st.phase = Phase::Remediating;
    st.blocked = None;
    present(&mut st, NOW + 60);
    assert_eq!(st.conditions[0].reason, "Remediating");
    assert_eq!(st.conditions[0].last_transition_time.0.as_second(), NOW);
    st.phase = Phase::Succeeded;
    st.message = Some("the target is Ready".into());
    present(&mut st, NOW + 120);
    assert_eq!(st.conditions[0].status, "True");
    assert_eq!(
        st.conditions[0].last_transition_time.0.as_second(),
        NOW + 120
    );
}

#[test]
fn every_status_the_lifecycle_writes_carries_its_conditions() {
    let o = hr(None, 3);
    let d = diag(Case::FailedRelease);
    let retry = Action::RetryRelease { with_source: None };
    let dec = acts(retry.clone());
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &dec,
    };
    let opened = next(&input(None, Some(&o), seen));
    let st = written(&opened).unwrap();
    assert_eq!(st.conditions[0].reason, "Remediating");
    assert_eq!(
        st.observed_generation,
        Some(1),
        "a new record's own generation"
    );
    let settled = settle(
        st.clone(),
        &retry,
        &Outcome::Done {
            message: "requested".into(),
            generation: None,
        },
        &Facts::default(),
        NOW,
    );
    let st = written_by(&settled).unwrap();
    assert!(st.conditions[0].status == "False");
    let rec = read(&sealed(Case::FailedRelease, Some(st.clone()), None));
    let closed = next(&input(Some(&rec), Some(&o), Seen::Ready));
    let st = written(&closed).unwrap();
    assert_eq!(
        (
            st.conditions[0].status.as_str(),
            st.conditions[0].reason.as_str()
        ),
        ("True", "Succeeded")
    );
}

/// A status as an earlier version wrote it: `observedGeneration` was the target's, a step's
/// action was JSON text. Its seal still verifies, it reads as the same incident, its
/// interrupted step and approval are still understood, and the first write moves it over.
#[test]
fn a_record_an_earlier_version_wrote_is_read_as_it_meant() {
    let legacy = serde_json::json!({
        "phase": "AwaitingApproval",
        "observedGeneration": 3,
        "steps": [{"action": "retry", "detail": "{\"RetryRelease\":{\"with_source\":null}}",
                   "outcome": "Running", "token": "old-token", "startedAt": rfc3339(NOW - 60)}],
        "approval": {"action": "rollback to revision 1",
                     "detail": serde_json::to_string(&serde_json::json!({"Rollback": {
                         "to_version": 1, "release": serde_json::to_value(release()).unwrap()}})).unwrap(),
                     "id": "old-id", "how": "annotate"},
        "attempts": 1, "polls": 0, "sequence": 2,
        "detectedAt": rfc3339(NOW - 600)
    });
    let st: RemediationStatus = serde_json::from_value(legacy.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&st).unwrap(),
        legacy,
        "read and written back byte for byte: the seal an earlier version made still verifies"
    );
    let mut rem = sealed(Case::FailedRelease, Some(st), None);
    rem.metadata.generation = Some(1);
    let rec = read(&rem);
    assert_eq!(rec.trust, Trust::Ours);
    assert_eq!(rec.status.target_generation, Some(3));
    assert_eq!(rec.status.observed_generation, Some(1));
    assert_eq!(
        rec.interrupted(),
        Some((
            Some(Action::RetryRelease { with_source: None }),
            "old-token".to_string()
        ))
    );
    let approved = Record {
        approval: Some("old-id".into()),
        ..rec.clone()
    };
    assert_eq!(
        approved.approved_action(Some("apps"), &|_| None),
        Some(rollback())
    );
    // Still awaiting the same approval: the request stands (same id), the status moves over.
    let mut done = rec.clone();
    done.status.steps[0].outcome = StepOutcome::Succeeded;
    let dec = awaiting(rollback());
    let d = diag(Case::FailedRelease);
    let o = hr(None, 3);
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &dec,
    };
    let st = written(&next(&input(Some(&done), Some(&o), seen)))
        .unwrap()
        .clone();
    assert_eq!(st.approval.as_ref().unwrap().id, "old-id");
    assert_eq!(st.target_generation, Some(3));
    assert_eq!(st.conditions[0].reason, "AwaitingApproval");
}

#[test]
fn an_action_reads_back_from_its_record_and_from_the_text_earlier_versions_wrote() {
    let key = |k, n: &str| ObjectKey::new(k, "apps", n);
    let actions = [
        Action::Reconcile,
        Action::Resume,
        Action::ReconcileSource {
            source: key(FluxKind::GitRepository, "repo"),
        },
        Action::ReconcileSourceAndConsumers {
            source: key(FluxKind::GitRepository, "repo"),
            consumers: vec![key(FluxKind::Kustomization, "apps")],
        },
        Action::RetryRelease {
            with_source: Some(key(FluxKind::HelmChart, "apps-web")),
        },
        rollback(),
        unlock("apps", true),
    ];
    for a in actions {
        let rec = a.to_record();
        assert!(rec["type"].is_string(), "{rec}");
        assert!(!rec.to_string().contains('_'), "keys read as words: {rec}");
        assert_eq!(Action::from_record(Some(&rec), None), Some(a.clone()));
        // The earlier form: externally tagged, snake_case fields.
        let mut fields = rec.as_object().unwrap().clone();
        let name = fields.remove("type").unwrap();
        let snake = |k: &str| {
            k.chars()
                .flat_map(|c| match c.is_uppercase() {
                    true => vec!['_', c.to_ascii_lowercase()],
                    false => vec![c],
                })
                .collect::<String>()
        };
        let fields: serde_json::Map<_, _> =
            fields.into_iter().map(|(k, v)| (snake(&k), v)).collect();
        let old = match fields.is_empty() {
            true => name.clone(),
            false => serde_json::json!({ name.as_str().unwrap(): fields }),
        };
        assert_eq!(
            Action::from_record(None, Some(&old.to_string())),
            Some(a.clone()),
            "{old}"
        );
        assert_eq!(
            a.to_legacy_text(),
            old.to_string(),
            "the text earlier versions read"
        );
    }
    for odd in [
        "",
        "null",
        "[]",
        "{\"a\":1,\"b\":2}",
        "{\"Rollback\":3}",
        "\"Nope\"",
    ] {
        assert_eq!(Action::from_record(None, Some(odd)), None, "{odd}");
    }
    assert_eq!(
        Action::from_record(Some(&serde_json::json!({"type": 1})), None),
        None
    );
}

/// A rejection names the request like an approval does, counts only where an approval would,
/// wins over one, and is final for that request: the incident stays open, asks no more.
#[test]
fn a_rejection_ends_one_request_and_the_incident_asks_no_more() {
    let d = diag(Case::FailedRelease);
    let retry = Action::RetryRelease { with_source: None };
    let o = hr(None, 2);
    let dec = awaiting(retry.clone());
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &dec,
    };
    let fresh = read(&sealed(
        Case::FailedRelease,
        Some(open_status(Phase::Detected)),
        None,
    ));
    let st = written(&next(&input(Some(&fresh), Some(&o), seen)))
        .unwrap()
        .clone();
    let mut asked = sealed(Case::FailedRelease, Some(st), None);
    let annotate = |rem: &mut Remediation, k: &str, v: &str| {
        rem.metadata
            .annotations
            .get_or_insert_default()
            .insert(k.into(), v.into());
    };
    annotate(&mut asked, crate::api::APPROVE_ANNOTATION, "fresh-id");
    annotate(&mut asked, crate::api::REJECT_ANNOTATION, "another-id");
    let rec = read(&asked);
    let none = |_: &str| None;
    assert_eq!(
        rec.decision(Some("apps"), &none),
        Some(true),
        "a rejection of another request"
    );
    annotate(&mut asked, crate::api::REJECT_ANNOTATION, "fresh-id");
    let rec = read(&asked);
    assert_eq!(
        rec.decision(Some("apps"), &none),
        Some(false),
        "a rejection wins"
    );
    assert_eq!(rec.approved_action(Some("apps"), &none), None);
    // For a policy of the operator's namespace only the policy's word counts.
    assert_eq!(rec.decision(Some("fluxmedic"), &none), None);
    assert_eq!(
        rec.decision(Some("fluxmedic"), &|_| Some(false)),
        Some(false)
    );

    let mut inp = input(Some(&rec), Some(&o), seen);
    inp.rejected = rec.rejected_request(Some("apps"), &none);
    let out = next(&inp);
    let st = written(&out).unwrap().clone();
    let req = st.approval.clone().unwrap();
    assert!(req.rejected && req.id == "fresh-id");
    assert_eq!(st.phase, Phase::Detected);
    assert!(
        st.blocked.as_deref().unwrap().contains(REJECTED),
        "{:?}",
        st.blocked
    );
    assert_eq!(st.conditions[0].reason, "Rejected");
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Event {
            reason: "ActionRejected",
            ..
        }
    )));
    assert!(performs(&out).is_empty());

    // Sealed as rejected: the annotations no longer matter, nothing more is written or asked.
    let mut later = sealed(Case::FailedRelease, Some(st), None);
    annotate(&mut later, crate::api::APPROVE_ANNOTATION, "fresh-id");
    let rec = read(&later);
    assert_eq!(rec.approved_action(Some("apps"), &|_| Some(true)), None);
    let mut inp = input(Some(&rec), Some(&o), seen);
    inp.rejected = rec.rejected_request(Some("apps"), &none);
    inp.nonce = "yet-another-id";
    assert_eq!(next(&inp), vec![], "nothing changes, nothing is written");

    // The plan moves on to another action: a new request, which may be approved.
    let other = awaiting(rollback());
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &other,
    };
    let mut inp = input(Some(&rec), Some(&o), seen);
    inp.nonce = "yet-another-id";
    let st = written(&next(&inp)).unwrap().clone();
    let req = st.approval.clone().unwrap();
    assert!(!req.rejected && req.id == "yet-another-id");
    assert_eq!(st.phase, Phase::AwaitingApproval);

    // ... and back to the rejected one (a tenant flipping its HelmRelease between two
    // identities, say): still rejected, under a new id, without asking anyone.
    let rec = read(&sealed(Case::FailedRelease, Some(st), None));
    let seen = Seen::Failing {
        diagnosis: &d,
        decision: &dec,
    };
    let mut inp = input(Some(&rec), Some(&o), seen);
    inp.nonce = "third-id";
    let out = next(&inp);
    let st = written(&out).unwrap();
    let req = st.approval.clone().unwrap();
    assert!(req.rejected && req.id == "third-id", "{req:?}");
    assert_eq!(st.phase, Phase::Detected);
    let announced = |e: &Effect| {
        matches!(
            e,
            Effect::Event {
                reason: "ActionBlocked" | "ActionRejected",
                ..
            }
        )
    };
    assert!(!out.iter().any(announced), "{out:?}");
}

// ------------------------------------------------------------------ the state table

/// A record in each state the lifecycle knows (`None`: no record yet).
fn in_state(state: &str) -> Option<Record> {
    let case = Case::FailedRelease;
    let rem = match state {
        "new" => return None,
        "foreign" => {
            let mut r = sealed(case, Some(open_status(Phase::Detected)), None);
            r.metadata.annotations = None;
            r.status.as_mut().unwrap().seal = None;
            r
        }
        "edited" => {
            let mut r = sealed(case, Some(open_status(Phase::Detected)), None);
            r.status.as_mut().unwrap().attempts = 7;
            r
        }
        "frozen" => {
            let mut st = open_status(Phase::Detected);
            st.frozen = Some(FROZEN.into());
            sealed(case, Some(st), None)
        }
        "interrupted" => {
            let mut st = open_status(Phase::Remediating);
            begin_step(
                &mut st,
                &Action::RetryRelease { with_source: None },
                "recorded-token",
                NOW - 60,
            );
            sealed(case, Some(st), None)
        }
        "held" => sealed(case, Some(holding(Phase::Remediating)), None),
        "open" => sealed(case, Some(open_status(Phase::Detected)), None),
        other => panic!("no state {other}"),
    };
    Some(read(&rem))
}

/// What a list of effects does, in short: `open`, `write`, `close`, `freeze`, `release-hold`,
/// `perform:<action>`, `event:<reason>` (counts left out).
fn shape(t: &Transition) -> String {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Open { .. } => Some("open".to_string()),
            Effect::Write(s) if s.frozen.is_some() => Some("freeze".into()),
            Effect::Write(_) => Some("write".into()),
            Effect::Close(_) => Some("close".into()),
            Effect::ReleaseHold => Some("release-hold".into()),
            Effect::Event { reason, .. } => Some(format!("event:{reason}")),
            Effect::Count(_) => None,
        })
        .chain(
            t.action
                .iter()
                .map(|a| format!("perform:{}", a.action.name())),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lifecycle's rules as one table, state × what is seen → effects, in the manner of
/// helm-controller's `TestAtomicRelease_actionForState`. Today's plan for the failing columns
/// is a retry that may go ahead; the target is the held release's own suspended HelmRelease
/// for `held`, a plain failing one otherwise.
#[test]
fn the_lifecycle_table() {
    let retry = Action::RetryRelease { with_source: None };
    let same = diag(Case::FailedRelease);
    let other = diag(Case::StaleLock);
    let dec = acts(retry.clone());
    let plain = hr(None, 3);
    let suspended = hr(Some("hr-web-00000001"), 4);
    #[rustfmt::skip]
    let table: &[(&str, &str, &str)] = &[
        // state        seen              effects
        ("new",         "failing",        "open event:FailureDetected perform:retry"),
        ("new",         "failing-other",  "open event:FailureDetected perform:retry"),
        ("new",         "pending",        ""),
        ("new",         "ready",          ""),
        ("new",         "gone",           ""),
        ("foreign",     "failing",        ""),
        ("foreign",     "ready",          ""),
        ("edited",      "failing",        "event:RecordEdited freeze"),
        ("edited",      "ready",          "event:RecordEdited freeze"),
        ("frozen",      "failing",        ""),
        ("frozen",      "pending",        ""),
        ("frozen",      "ready",          "close event:Recovered"),
        ("frozen",      "gone",           "close event:Recovered"),
        ("interrupted", "failing",        "perform:retry"),
        ("interrupted", "ready",          "perform:retry"),
        ("interrupted", "gone",           "write"),
        ("held",        "failing",        "write"),
        ("held",        "failing-other",  "write"),
        ("held",        "gone",           "close event:Recovered"),
        ("open",        "failing",        "perform:retry"),
        ("open",        "failing-other",  "close event:Superseded open event:FailureDetected perform:retry"),
        ("open",        "pending",        ""),
        ("open",        "ready",          "close event:Recovered"),
        ("open",        "gone",           "close event:Recovered"),
    ];
    let mut wrong = vec![];
    for (state, seen, want) in table {
        let rec = in_state(state);
        let target = match (*state, *seen) {
            (_, "gone") => None,
            ("held", _) => Some(&suspended),
            _ => Some(&plain),
        };
        let seen = match *seen {
            "failing" => Seen::Failing {
                diagnosis: &same,
                decision: &dec,
            },
            "failing-other" => Seen::Failing {
                diagnosis: &other,
                decision: &dec,
            },
            "pending" => Seen::Pending,
            "ready" => Seen::Ready,
            "gone" => Seen::Gone,
            s => panic!("no column {s}"),
        };
        let got = shape(&next(&input(rec.as_ref(), target, seen)));
        if got != *want {
            wrong.push(format!("{state} × {seen:?}: want {want:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "rows that differ:\n{}", wrong.join("\n"));
}

#[test]
fn each_record_is_read_into_exactly_one_state() {
    let kind = |s: &str| match State::of(in_state(s).as_ref()) {
        State::New => "new",
        State::Foreign => "foreign",
        State::Edited => "edited",
        State::Frozen => "frozen",
        State::Interrupted { .. } => "interrupted",
        State::Held(_) => "held",
        State::Open => "open",
    };
    for s in [
        "new",
        "foreign",
        "edited",
        "frozen",
        "interrupted",
        "held",
        "open",
    ] {
        assert_eq!(kind(s), s);
    }
}
