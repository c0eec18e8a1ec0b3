//! The executor against the in-memory API: what it writes, in which order, and what a
//! failed write or a crash leaves behind. No cluster.

use std::sync::Arc;

use futures::executor::block_on;
use serde_json::json;

use super::{
    Cur, Executor, Target,
    memory::{Call, Faults, Memory, State},
};
use crate::{
    api::{INTENT_ANNOTATION, OPEN_LABEL, RemediationStatus, SUSPENDED_BY_ANNOTATION, StepOutcome},
    diagnose::Case,
    error::Error,
    flux::{self as views, FluxKind, FluxObject, ObjectKey},
    incident::{self, Act, Effect, Facts, IntentAt, Transition, seal::Sealer},
    policy::{Action, ReleaseRef},
};

const NOW: i64 = 1_800_000_000;
const TOKEN: &str = "token-1";

fn sealer() -> Sealer {
    Sealer::from_key(b"the operator's key, 32 bytes long")
}

/// A failed HelmRelease as the API server holds it.
fn helmrelease(name: &str) -> FluxObject {
    views::from_value(&json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"),
                     "generation": 2, "resourceVersion": "5"},
        "spec": {"interval": "1h", "chart": {"spec": {"chart": "web",
                 "sourceRef": {"kind": "HelmRepository", "name": "repo"}}}},
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "UpgradeFailed",
                   "message": "Helm upgrade failed", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    }))
    .unwrap()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new(FluxKind::HelmRelease, "apps", name)
}

/// An API server holding `objects`, failing as `faults` says.
fn server(objects: &[FluxObject], faults: Faults) -> Memory {
    Memory::new(State {
        objects: objects.iter().map(|o| (o.key.clone(), o.clone())).collect(),
        faults,
        now: NOW,
        ..Default::default()
    })
}

fn target(obj: &FluxObject) -> Target {
    Target {
        key: obj.key.clone(),
        obj: Some(Arc::new(obj.clone())),
        since: NOW - 60,
        facts: Facts::default(),
    }
}

/// A status holding `action`'s Running step.
fn running(action: &Action) -> RemediationStatus {
    let mut st = RemediationStatus::default();
    incident::begin_step(&mut st, action, TOKEN, NOW);
    st
}

/// A new incident acting at once: the create carries the intent.
fn open_and_act(action: Action) -> Transition {
    let st = running(&action);
    let open = Effect::Open {
        case: Case::FailedRelease,
        status: Box::new(st.clone()),
        intent: st.steps.last().cloned(),
    };
    Transition::acting(vec![open], act(action, st, IntentAt::Create))
}

fn act(action: Action, status: RemediationStatus, intent: IntentAt) -> Act {
    Act {
        action,
        token: TOKEN.into(),
        status: Box::new(status),
        intent,
        waiting: None,
    }
}

/// Only `act`.
fn only(act: Act) -> Transition {
    Transition::acting(vec![], act)
}

/// Execute `effects`, then run the action they end with, as the engine does.
fn drive(m: &Memory, t: &Target, cur: Option<Cur>, tr: Transition) -> Result<(), Error> {
    let sealer = sealer();
    let exec = Executor {
        port: m,
        sealer: &sealer,
        shard: None,
    };
    block_on(async {
        match exec.execute(t, cur, tr).await? {
            Some(p) => exec.run(p).await,
            None => Ok(()),
        }
    })
}

/// An open record for `obj`, written by the executor itself.
fn with_record(m: &Memory, obj: &FluxObject) -> Cur {
    let open = Effect::Open {
        case: Case::FailedRelease,
        status: Box::default(),
        intent: None,
    };
    drive(m, &target(obj), None, vec![open].into()).unwrap();
    let s = m.state();
    let (k, r) = s.records.iter().next().unwrap();
    Cur {
        name: k.1.clone(),
        case: Case::FailedRelease,
        uid: r.metadata.uid.clone().unwrap(),
    }
}

fn last_step(m: &Memory, name: &str) -> crate::api::Step {
    let s = m.state();
    let st = s.record("apps", name).unwrap().status.clone().unwrap();
    st.steps.last().cloned().unwrap()
}

#[test]
fn a_new_incident_records_its_intent_in_the_create_then_acts_then_writes_the_outcome() {
    let hr = helmrelease("web");
    let m = server(std::slice::from_ref(&hr), Faults::default());
    let effects = open_and_act(Action::RetryRelease { with_source: None });
    drive(&m, &target(&hr), None, effects).unwrap();
    let s = m.state();
    let (name, rem) = s
        .records
        .iter()
        .map(|(k, r)| (k.1.clone(), r))
        .next()
        .unwrap();
    let reconcile = Call::Reconcile {
        key: key("web"),
        token: TOKEN.into(),
        force: true,
    };
    assert_eq!(
        s.done(),
        [
            &Call::Create(name.clone()),
            &reconcile,
            &Call::Status(name.clone())
        ],
        "three writes: the create (with the intent), the action, the outcome"
    );
    let ann = rem.metadata.annotations.as_ref().unwrap();
    assert!(ann[INTENT_ANNOTATION].contains(TOKEN), "{ann:?}");
    let st = rem.status.as_ref().unwrap();
    assert_eq!(st.steps.last().unwrap().outcome, StepOutcome::Succeeded);
    assert!(st.seal.is_some() && st.sequence > 0, "the status is sealed");
    assert_eq!(
        s.ledger.records[rem.metadata.uid.as_deref().unwrap()].sequence,
        st.sequence,
        "the ledger holds what was last sealed"
    );
}

#[test]
fn an_open_record_writes_its_intent_to_the_status_before_the_action() {
    let hr = helmrelease("web");
    let m = server(std::slice::from_ref(&hr), Faults::default());
    let cur = with_record(&m, &hr);
    m.state().calls.clear();
    let st = running(&Action::Reconcile);
    let tr = only(act(Action::Reconcile, st, IntentAt::Status));
    drive(&m, &target(&hr), Some(cur.clone()), tr).unwrap();
    let reconcile = Call::Reconcile {
        key: key("web"),
        token: TOKEN.into(),
        force: false,
    };
    let status = Call::Status(cur.name.clone());
    assert_eq!(m.state().done(), [&status, &reconcile, &status]);
}

#[test]
fn a_failed_intent_write_performs_no_action() {
    let hr = helmrelease("web");
    let m = server(std::slice::from_ref(&hr), Faults::default());
    let cur = with_record(&m, &hr);
    m.state().faults.fail = Some(|c| matches!(c, Call::Status(_)));
    let st = running(&Action::Reconcile);
    let tr = only(act(Action::Reconcile, st, IntentAt::Status));
    let err = drive(&m, &target(&hr), Some(cur), tr).unwrap_err();
    assert_eq!(err.step(), Some(crate::error::Stage::WriteRecord));
    let s = m.state();
    assert!(
        !s.calls
            .iter()
            .any(|(c, _)| matches!(c, Call::Reconcile { .. })),
        "no action without its intent recorded: {:?}",
        s.calls
    );
    assert!(s.objects[&key("web")].reconcile_annotations.is_empty());
}

#[test]
fn a_failed_create_performs_no_action_and_leaves_no_record() {
    let hr = helmrelease("web");
    let m = server(
        std::slice::from_ref(&hr),
        Faults {
            fail: Some(|c| matches!(c, Call::Create(_))),
            ..Default::default()
        },
    );
    let effects = open_and_act(Action::RetryRelease { with_source: None });
    let err = drive(&m, &target(&hr), None, effects).unwrap_err();
    assert_eq!(err.step(), Some(crate::error::Stage::CreateRecord));
    let s = m.state();
    assert!(s.records.is_empty() && s.done().is_empty(), "{:?}", s.calls);
}

#[test]
fn a_failed_action_is_recorded_as_failed_with_its_category() {
    let hr = helmrelease("web");
    let m = server(
        std::slice::from_ref(&hr),
        Faults {
            fail: Some(|c| matches!(c, Call::Reconcile { .. })),
            ..Default::default()
        },
    );
    let effects = open_and_act(Action::RetryRelease { with_source: None });
    let err = drive(&m, &target(&hr), None, effects).unwrap_err();
    assert_eq!(err.step(), Some(crate::error::Stage::Act("retry")));
    let name = m.state().records.keys().next().unwrap().1.clone();
    let step = last_step(&m, &name);
    assert_eq!(step.outcome, StepOutcome::Failed);
    assert_eq!(step.category.as_deref(), Some("ApiUnavailable"));
}

#[test]
fn a_failed_rollback_never_leaves_the_release_suspended() {
    let mut hr = helmrelease("web");
    hr.helm.get_or_insert_default();
    let m = server(
        std::slice::from_ref(&hr),
        Faults {
            fail: Some(|c| matches!(c, Call::Rollback { .. })),
            ..Default::default()
        },
    );
    let rollback = Action::Rollback {
        to_version: 1,
        release: ReleaseRef::default(),
    };
    let err = drive(&m, &target(&hr), None, open_and_act(rollback)).unwrap_err();
    assert_eq!(err.step(), Some(crate::error::Stage::Act("rollback")));
    let s = m.state();
    let o = &s.objects[&key("web")];
    assert!(!o.suspended, "resumed after the failed rollback");
    assert!(
        !o.reconcile_annotations
            .contains_key(SUSPENDED_BY_ANNOTATION)
    );
    let kinds: Vec<_> = s
        .done()
        .into_iter()
        .map(|c| {
            format!("{c:?}")
                .split([' ', '('])
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["Create", "Suspend", "ReleaseHold", "Status"]);
}

#[test]
fn a_rollback_resumed_after_a_restart_does_not_suspend_again() {
    let mut hr = helmrelease("web");
    hr.helm.get_or_insert_default();
    let m = server(std::slice::from_ref(&hr), Faults::default());
    let cur = with_record(&m, &hr);
    // The restart found it suspended by this very record.
    hr.suspended = true;
    hr.reconcile_annotations
        .insert(SUSPENDED_BY_ANNOTATION.into(), cur.name.clone());
    m.state().objects.insert(hr.key.clone(), hr.clone());
    m.state().calls.clear();
    let rollback = Action::Rollback {
        to_version: 1,
        release: ReleaseRef::default(),
    };
    let st = running(&rollback);
    let tr = only(act(rollback, st, IntentAt::Recorded));
    drive(&m, &target(&hr), Some(cur), tr).unwrap();
    let s = m.state();
    assert!(
        !s.calls
            .iter()
            .any(|(c, _)| matches!(c, Call::Suspend { .. })),
        "{:?}",
        s.calls
    );
    assert!(
        s.objects[&key("web")].suspended,
        "kept suspended: the fix has not landed"
    );
}

#[test]
fn closing_labels_the_record_before_writing_its_closed_status() {
    let hr = helmrelease("web");
    let m = server(std::slice::from_ref(&hr), Faults::default());
    let cur = with_record(&m, &hr);
    m.state().faults.fail = Some(|c| matches!(c, Call::Status(_)));
    let closed = RemediationStatus {
        phase: crate::api::Phase::Succeeded,
        ..Default::default()
    };
    let close = Effect::Close(Box::new(closed));
    assert!(drive(&m, &target(&hr), Some(cur.clone()), vec![close].into()).is_err());
    // The status write failed: the record reads closed by its label, and the next pass
    // writes the status again (it is still open by its phase).
    let s = m.state();
    let labels = s.record("apps", &cur.name).unwrap().metadata.labels.clone();
    assert_eq!(labels.unwrap()[OPEN_LABEL], "false");
}

/// A crash after any number of writes, then a fresh executor finishing the interrupted
/// step from the record: the action is performed with the recorded token, never twice
/// with two tokens, and the record ends with the outcome.
#[test]
fn a_crash_after_any_write_is_finished_from_the_record() {
    let action = Action::RetryRelease { with_source: None };
    for crash_after in 0..3 {
        let hr = helmrelease("web");
        let m = server(
            std::slice::from_ref(&hr),
            Faults {
                crash_after: Some(crash_after),
                ..Default::default()
            },
        );
        let res = drive(&m, &target(&hr), None, open_and_act(action.clone()));
        assert!(res.is_err(), "crashed after {crash_after} write(s)");
        m.state().faults.crash_after = None;
        let Some((k, rem)) = m
            .state()
            .records
            .iter()
            .next()
            .map(|(k, r)| (k.clone(), r.clone()))
        else {
            assert_eq!(
                crash_after, 0,
                "only a crash before the create leaves no record"
            );
            continue;
        };
        // What the next pass reads from the record: the interrupted step and its token.
        let rec = incident::Record::read(&rem, &sealer(), &m.state().ledger).unwrap();
        let (planned, token) = rec.interrupted().expect("the step reads as interrupted");
        assert_eq!(token, TOKEN);
        assert_eq!(planned.as_ref(), Some(&action));
        let cur = Cur {
            name: k.1.clone(),
            case: rec.case,
            uid: rec.uid.clone(),
        };
        let finish = Act {
            action: action.clone(),
            token,
            status: Box::new(rec.status.clone()),
            intent: IntentAt::Recorded,
            waiting: None,
        };
        drive(&m, &target(&hr), Some(cur), only(finish)).unwrap();
        let s = m.state();
        let tokens: std::collections::BTreeSet<_> = s
            .done()
            .into_iter()
            .filter_map(|c| match c {
                Call::Reconcile { token, .. } => Some(token.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(tokens.len(), 1, "one token across the crash: {:?}", s.calls);
        drop(s);
        assert_eq!(last_step(&m, &k.1).outcome, StepOutcome::Succeeded);
    }
}
