use serde_json::json;

use super::*;
use crate::{
    api::{CaseRule, CircuitBreaker, Limits, StaleLockSettings, TargetSelector},
    diagnose::{self, Diagnosis, SecretInfo, Snapshot},
    flux::{self, ObjectKey},
    helm::{ReleaseStatus, StoredRelease},
};

const NOW: i64 = 1_000_000;
const NO_POLLERS: &Pollers = &Pollers::new();

fn cond(t: &str, s: &str, r: &str, m: &str) -> serde_json::Value {
    json!({"type": t, "status": s, "reason": r, "message": m})
}

fn policy_with(rules: Vec<CaseRule>) -> Policy {
    let spec = RemediationPolicySpec {
        targets: TargetSelector::default(),
        priority: 0,
        rules,
        limits: Limits::default(),
        stale_lock: StaleLockSettings::default(),
        escalation: Default::default(),
        circuit_breaker: None,
    };
    Policy::new("apps", "p", spec).unwrap()
}

fn all_cases(mode: Mode, actions: &[ActionKind]) -> Policy {
    policy_with(
        Case::ALL
            .iter()
            .map(|c| CaseRule {
                case: *c,
                mode,
                with_source: false,
                actions: actions
                    .iter()
                    .copied()
                    .filter(|a| {
                        crate::policy::default_actions(*c).contains(a)
                            || matches!((c, a), (Case::FailedRelease, ActionKind::Rollback))
                    })
                    .collect(),
            })
            .collect(),
    )
}

/// A snapshot where helm-controller is known to run unrestricted as
/// flux-system/helm-controller (the identity Helm actions then use).
fn unrestricted_helm_controller(mut snap: Snapshot) -> Snapshot {
    snap.helm_controller = Some(crate::flux::HelmControllerIdentity::Unrestricted {
        service_account: crate::flux::ServiceAccountRef::new("flux-system", "helm-controller"),
    });
    snap
}

/// One scenario per case that, under Auto, leads to an action.
struct Scenario {
    snap: Snapshot,
    target: ObjectKey,
    inc: IncidentView,
}

fn stored(v: i64, status: &str, t: i64) -> StoredRelease {
    StoredRelease {
        secret_name: format!("sh.helm.release.v1.web.v{v}"),
        namespace: "apps".into(),
        release: "web".into(),
        version: v,
        status: ReleaseStatus(status.into()),
        modified_at: Some(t),
    }
}

fn hr(conds: Vec<serde_json::Value>) -> flux::FluxObject {
    flux::from_value(&json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": "apps", "generation": 2},
        "spec": {"timeout": "1m", "serviceAccountName": "deployer",
                 "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}},
        "status": {"conditions": conds, "observedGeneration": 2, "upgradeFailures": 1, "lastAttemptedReleaseAction": "upgrade",
                   "history": [{"name": "web", "namespace": "apps", "version": 3, "status": "failed"}]}}))
    .unwrap()
}

fn ks(name: &str, conds: Vec<serde_json::Value>, deps: &[&str]) -> flux::FluxObject {
    let deps: Vec<_> = deps.iter().map(|d| json!({"name": d})).collect();
    flux::from_value(
        &json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"sourceRef": {"kind": "GitRepository", "name": "repo"}, "dependsOn": deps},
        "status": {"conditions": conds}}),
    )
    .unwrap()
}

fn git(conds: Vec<serde_json::Value>) -> flux::FluxObject {
    flux::from_value(
        &json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "repo", "namespace": "apps"},
        "spec": {"url": "http://127.0.0.1/repo.git", "secretRef": {"name": "creds"}},
        "status": {"conditions": conds, "artifact": {"revision": "main@sha1:aaa"}}}),
    )
    .unwrap()
}

fn ready() -> serde_json::Value {
    cond("Ready", "True", "Succeeded", "ok")
}

fn scenario(case: Case) -> Scenario {
    let inc = IncidentView {
        detected_at: NOW - 10,
        ..Default::default()
    };
    match case {
        Case::FailedRelease => {
            let o = hr(vec![
                cond(
                    "Ready",
                    "False",
                    "UpgradeFailed",
                    "Helm upgrade failed for release apps/web with chart web@2: context deadline exceeded",
                ),
                cond(
                    "Stalled",
                    "True",
                    "RetriesExceeded",
                    "Failed to upgrade after 1 attempt(s)",
                ),
            ]);
            let mut snap = Snapshot::new([o.clone()], NOW);
            snap.add_release(stored(2, "superseded", 0));
            snap.add_release(stored(3, "failed", 0));
            Scenario {
                snap,
                target: o.key,
                inc,
            }
        }
        Case::InvalidManifests => {
            let o = ks(
                "app",
                vec![cond(
                    "Ready",
                    "False",
                    "BuildFailed",
                    "kustomize build failed: yaml: line 2: bad",
                )],
                &[],
            );
            Scenario {
                snap: Snapshot::new([o.clone(), git(vec![ready()])], NOW),
                target: o.key,
                inc,
            }
        }
        Case::GitAuth => {
            let o = git(vec![cond(
                "Ready",
                "False",
                "GitOperationFailed",
                "failed to checkout and determine revision: unable to clone 'x': authentication required",
            )]);
            let mut snap = Snapshot::new([o.clone()], NOW);
            snap.secrets_observed = true;
            snap.secrets.insert(
                ("apps".into(), "creds".into()),
                SecretInfo {
                    keys: Default::default(),
                    resource_version: Some("2".into()),
                },
            );
            Scenario {
                snap,
                target: o.key,
                inc: IncidentView {
                    observed_secret: Some(crate::api::ObservedSecret {
                        name: "creds".into(),
                        resource_version: Some("1".into()),
                    }),
                    ..inc
                },
            }
        }
        Case::GitUnreachable => {
            let o = git(vec![cond(
                "Ready",
                "False",
                "GitOperationFailed",
                "failed to checkout and determine revision: unable to clone 'x': dial tcp 127.0.0.1:1: connect: connection refused",
            )]);
            Scenario {
                snap: Snapshot::new([o.clone()], NOW),
                target: o.key,
                inc,
            }
        }
        Case::DependencyCascade => {
            // dependency healthy again, dependent still says not ready
            let o = ks(
                "app",
                vec![cond(
                    "Ready",
                    "False",
                    "DependencyNotReady",
                    "dependency 'apps/infra' is not ready",
                )],
                &["infra"],
            );
            Scenario {
                snap: Snapshot::new(
                    [
                        o.clone(),
                        ks("infra", vec![ready()], &[]),
                        git(vec![ready()]),
                    ],
                    NOW,
                ),
                target: o.key,
                inc,
            }
        }
        Case::StaleLock => {
            let o = hr(vec![cond(
                "Ready",
                "False",
                "UpgradeFailed",
                "Helm upgrade failed for release apps/web with chart web@2: another operation (install/upgrade/rollback) is in progress",
            )]);
            let mut snap = Snapshot::new([o.clone()], NOW);
            snap.add_release(stored(2, "deployed", 0));
            snap.add_release(stored(3, "pending-upgrade", NOW - 3600));
            Scenario {
                snap,
                target: o.key,
                inc,
            }
        }
        Case::Other => {
            let o = ks(
                "app",
                vec![cond("Ready", "False", "PruneFailed", "delete failed")],
                &[],
            );
            Scenario {
                snap: Snapshot::new([o.clone()], NOW),
                target: o.key,
                inc,
            }
        }
    }
}

fn decide(s: &Scenario, p: Option<&Policy>) -> (Diagnosis, Decision) {
    let report = diagnose::diagnose(&s.snap);
    let d = report
        .get(&s.target)
        .cloned()
        .expect("scenario target is failing");
    let ctx = PlanContext {
        snapshot: &s.snap,
        failing_targets: report.diagnoses.len(),
        circuit_breaker: 20,
        shared_root: false,
        operator_namespace: "fluxmedic",
        controllers_down: &report.controllers_down,
        pollers: NO_POLLERS,
    };
    let dec = plan(&d, &s.snap.objects[&s.target], p, &s.inc, &ctx);
    (d, dec)
}

/// The plan context of a snapshot with one failing target, under the operator's namespace.
fn one_failing<'a>(
    snap: &'a Snapshot,
    down: &'a std::collections::BTreeMap<String, String>,
    pollers: &'a Pollers,
) -> PlanContext<'a> {
    PlanContext {
        snapshot: snap,
        failing_targets: 1,
        circuit_breaker: 20,
        shared_root: false,
        operator_namespace: "fluxmedic",
        controllers_down: down,
        pollers,
    }
}

#[test]
fn every_case_under_every_mode() {
    let all_actions = [
        ActionKind::Reconcile,
        ActionKind::Retry,
        ActionKind::Rollback,
        ActionKind::Unlock,
    ];
    for case in Case::ALL {
        let s = scenario(case);
        let (d, _) = decide(&s, None);
        assert_eq!(d.case, case, "scenario for {case} diagnoses as {}", d.case);

        let (_, none) = decide(&s, None);
        assert_eq!(
            none.blocked,
            Some(Blocked::NoPolicy),
            "{case}: no policy = record only"
        );
        assert!(none.act().is_none());

        let auto = decide(&s, Some(&all_cases(Mode::Auto, &all_actions))).1;
        if case == Case::Other {
            assert_eq!(auto.blocked, Some(Blocked::NoRunbook));
            continue;
        }
        assert!(
            auto.act().is_some(),
            "{case}: Auto acts, got {:?}",
            auto.blocked
        );
        let planned = auto.planned.clone().unwrap();

        let observe = decide(&s, Some(&all_cases(Mode::Observe, &all_actions))).1;
        assert_eq!(
            observe.planned.as_ref(),
            Some(&planned),
            "{case}: Observe still plans"
        );
        assert_eq!(observe.blocked, Some(Blocked::Observe));

        let off = decide(&s, Some(&all_cases(Mode::Off, &all_actions))).1;
        assert_eq!(off.mode, Mode::Off);
        assert!(off.act().is_none());

        let approval = decide(&s, Some(&all_cases(Mode::RequireApproval, &all_actions))).1;
        assert_eq!(approval.blocked, Some(Blocked::AwaitingApproval), "{case}");
        let mut approved = scenario(case);
        approved.inc.approved = Some(planned.clone());
        let ok = decide(
            &approved,
            Some(&all_cases(Mode::RequireApproval, &all_actions)),
        )
        .1;
        assert_eq!(
            ok.act(),
            Some(&planned),
            "{case}: approval releases the plan"
        );
        // An approval of another action releases nothing.
        let mut other = scenario(case);
        other.inc.approved = Some(Action::Resume);
        let held = decide(
            &other,
            Some(&all_cases(Mode::RequireApproval, &all_actions)),
        )
        .1;
        assert_eq!(held.blocked, Some(Blocked::AwaitingApproval), "{case}");

        // A case without a rule is Observe.
        let unruled = decide(&s, Some(&policy_with(vec![]))).1;
        assert_eq!(unruled.mode, Mode::Observe);
        assert!(unruled.act().is_none());
    }
}

#[test]
fn runbook_actions_per_case() {
    let p = all_cases(
        Mode::Auto,
        &[
            ActionKind::Reconcile,
            ActionKind::Retry,
            ActionKind::Rollback,
            ActionKind::Unlock,
        ],
    );
    let act = |c| decide(&scenario(c), Some(&p)).1.planned.unwrap();
    assert_eq!(
        act(Case::FailedRelease),
        Action::RetryRelease { with_source: None }
    );
    assert_eq!(
        act(Case::InvalidManifests),
        Action::ReconcileSource {
            source: ObjectKey::new(flux::FluxKind::GitRepository, "apps", "repo")
        }
    );
    assert_eq!(
        act(Case::GitAuth),
        Action::ReconcileSourceAndConsumers {
            source: ObjectKey::new(flux::FluxKind::GitRepository, "apps", "repo"),
            consumers: vec![]
        }
    );
    assert_eq!(
        act(Case::GitUnreachable),
        Action::ReconcileSource {
            source: ObjectKey::new(flux::FluxKind::GitRepository, "apps", "repo")
        }
    );
    assert_eq!(act(Case::DependencyCascade), Action::Reconcile);
    assert_eq!(
        act(Case::StaleLock),
        Action::UnlockRelease {
            namespace: "apps".into(),
            secret: "sh.helm.release.v1.web.v3".into(),
            version: 3,
            delete: false,
            release: web_release(),
        }
    );
}

fn web_release() -> ReleaseRef {
    ReleaseRef {
        name: "web".into(),
        storage_namespace: "apps".into(),
        namespace: "apps".into(),
        identity: crate::policy::identity::ServiceAccountRef::new("apps", "deployer"),
    }
}

#[test]
fn retry_with_source_reconciles_the_chart_first() {
    let p = policy_with(vec![CaseRule {
        case: Case::FailedRelease,
        mode: Mode::Auto,
        actions: vec![ActionKind::Retry],
        with_source: true,
    }]);
    let s = scenario(Case::FailedRelease);
    assert_eq!(
        decide(&s, Some(&p)).1.act(),
        Some(&Action::RetryRelease {
            with_source: Some(ObjectKey::new(
                flux::FluxKind::HelmChart,
                "apps",
                "apps-web"
            ))
        })
    );
}

#[test]
fn failed_release_retries_then_rolls_back() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry, ActionKind::Rollback]);
    let mut s = scenario(Case::FailedRelease);
    s.inc.attempts = 3; // max attempts used by retries
    s.inc.last_action_at = Some(NOW - 3600);
    let dec = decide(&s, Some(&p)).1;
    assert_eq!(
        dec.act(),
        Some(&Action::Rollback {
            to_version: 2,
            release: web_release()
        })
    );

    // Without Rollback allowed: max attempts.
    let p2 = all_cases(Mode::Auto, &[ActionKind::Retry]);
    assert_eq!(decide(&s, Some(&p2)).1.blocked, Some(Blocked::MaxAttempts));
}

#[test]
fn failed_release_is_left_to_flux_while_it_retries_or_after_it_rolled_back() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry, ActionKind::Rollback]);
    let o = hr(vec![cond(
        "Ready",
        "False",
        "UpgradeFailed",
        "Helm upgrade failed for release apps/web with chart web@2: context deadline exceeded",
    )]);
    let mut v = serde_json::to_value(&o).unwrap();
    v["helm"]["upgradeRetries"] = json!(3);
    let o: flux::FluxObject = serde_json::from_value(v).unwrap();
    let s = Scenario {
        snap: Snapshot::new([o.clone()], NOW),
        target: o.key.clone(),
        inc: IncidentView::default(),
    };
    assert!(matches!(
        decide(&s, Some(&p)).1.blocked,
        Some(Blocked::FluxRemediating(_))
    ));

    let o = hr(vec![cond(
        "Ready",
        "False",
        "RollbackSucceeded",
        "Helm rollback to previous release apps/web.v2 with chart web@1 succeeded",
    )]);
    let s = Scenario {
        snap: Snapshot::new([o.clone()], NOW),
        target: o.key.clone(),
        inc: IncidentView::default(),
    };
    assert!(matches!(
        decide(&s, Some(&p)).1.blocked,
        Some(Blocked::RetryCannotHelp(_))
    ));
}

#[test]
fn non_retryable_release_is_not_retried() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry]);
    let o = hr(vec![
        cond(
            "Ready",
            "False",
            "UpgradeFailed",
            "Helm upgrade failed for release apps/web with chart web@2: values don't meet the specifications of the schema(s)",
        ),
        cond(
            "Stalled",
            "True",
            "RetriesExceeded",
            "Failed to upgrade after 1 attempt(s)",
        ),
    ]);
    let s = Scenario {
        snap: Snapshot::new([o.clone()], NOW),
        target: o.key.clone(),
        inc: IncidentView::default(),
    };
    assert!(matches!(
        decide(&s, Some(&p)).1.blocked,
        Some(Blocked::RetryCannotHelp(_))
    ));
}

#[test]
fn cooldown_and_max_attempts() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry]);
    let mut s = scenario(Case::FailedRelease);
    s.inc.last_action_at = Some(NOW - 30);
    assert_eq!(
        decide(&s, Some(&p)).1.blocked,
        Some(Blocked::Cooldown { until: NOW + 90 }),
        "the due time, not a countdown: stable while waiting"
    );
    s.inc.last_action_at = Some(NOW - 120);
    assert!(decide(&s, Some(&p)).1.act().is_some());
    s.inc.attempts = 3;
    assert_eq!(decide(&s, Some(&p)).1.blocked, Some(Blocked::MaxAttempts));
}

#[test]
fn polling_stops_once_flux_fetches_as_often() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let mut s = scenario(Case::InvalidManifests);
    let source = s.snap.objects[&s.target].source_ref.clone().unwrap();
    std::sync::Arc::make_mut(s.snap.objects.get_mut(&source).unwrap()).interval =
        Some(Duration::from_secs(60));
    // 10 s, 20 s, 40 s: more often than the source's 1m, so fluxmedic polls.
    s.inc.last_action_at = Some(NOW - 45);
    s.inc.polls = 2;
    assert!(matches!(
        decide(&s, Some(&p)).1.act(),
        Some(Action::ReconcileSource { .. })
    ));
    // The next poll would wait 80 s: source-controller fetches sooner by itself.
    s.inc.polls = 3;
    s.inc.last_action_at = Some(NOW - 200);
    let blocked = decide(&s, Some(&p)).1.blocked.unwrap();
    assert!(matches!(blocked, Blocked::AwaitingFix(_)), "{blocked}");
    assert!(blocked.to_string().contains("every 1m"), "{blocked}");
    // A suspended source fetches nothing, whoever asks (source-controller skips suspended
    // objects): polling it would be writes for nothing.
    std::sync::Arc::make_mut(s.snap.objects.get_mut(&source).unwrap()).suspended = true;
    let blocked = decide(&s, Some(&p)).1.blocked.unwrap();
    assert!(blocked.to_string().contains("is suspended"), "{blocked}");
    std::sync::Arc::make_mut(s.snap.objects.get_mut(&source).unwrap()).suspended = false;
    // A fetched fix is still acted upon at once.
    s.inc.observed_revision = Some("main@sha1:old".into());
    assert_eq!(decide(&s, Some(&p)).1.act(), Some(&Action::Reconcile));
}

#[test]
fn a_consumer_waits_on_the_incident_that_polls_its_source() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let s = scenario(Case::InvalidManifests);
    let source = s.snap.objects[&s.target].source_ref.clone().unwrap();
    let report = diagnose::diagnose(&s.snap);
    let d = report.get(&s.target).unwrap();
    let with = |poller: ObjectKey, inc: &IncidentView| {
        let pollers = Pollers::from([(("apps".to_string(), source.clone()), poller)]);
        let ctx = one_failing(&s.snap, &report.controllers_down, &pollers);
        plan(d, &s.snap.objects[&s.target], Some(&p), inc, &ctx)
    };
    let other = ObjectKey::new(flux::FluxKind::Kustomization, "apps", "other");
    let dec = with(other.clone(), &s.inc);
    // The poll stays planned (the record says what it waits to do) and the reason names who
    // polls, without a time: stable while the other incident polls on.
    assert!(
        matches!(dec.planned, Some(Action::ReconcileSource { .. })),
        "{dec:?}"
    );
    let why = dec.blocked.unwrap().to_string();
    assert!(
        why.contains("polled for a fix by the incident of Kustomization/apps/other"),
        "{why}"
    );
    // The poller itself polls.
    assert!(with(s.target.clone(), &s.inc).blocked.is_none());
    // A poll a crash interrupted is finished as recorded.
    let mut interrupted = s.inc.clone();
    interrupted.interrupted = Some(Action::ReconcileSource {
        source: source.clone(),
    });
    assert!(with(other.clone(), &interrupted).blocked.is_none());
    // A fetched fix is acted upon at once, whoever polled for it.
    let mut fetched = s.inc.clone();
    fetched.observed_revision = Some("main@sha1:old".into());
    assert_eq!(with(other, &fetched).act(), Some(&Action::Reconcile));
}

#[test]
fn polling_backs_off() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let mut s = scenario(Case::InvalidManifests);
    s.inc.last_action_at = Some(NOW - 15);
    s.inc.polls = 0; // 10s
    assert!(decide(&s, Some(&p)).1.act().is_some());
    s.inc.polls = 1; // 20s
    assert!(matches!(
        decide(&s, Some(&p)).1.blocked,
        Some(Blocked::Cooldown { .. })
    ));
    s.inc.polls = 30; // capped at 2m
    s.inc.last_action_at = Some(NOW - 121);
    assert!(decide(&s, Some(&p)).1.act().is_some());
    // A new source revision: reconcile the Kustomization at once.
    s.inc.observed_revision = Some("main@sha1:old".into());
    s.inc.last_action_at = Some(NOW - 5);
    assert_eq!(decide(&s, Some(&p)).1.act(), Some(&Action::Reconcile));
}

#[test]
fn circuit_breaker_limits_action_to_shared_roots() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry]);
    let s = scenario(Case::FailedRelease);
    let report = diagnose::diagnose(&s.snap);
    let d = report.get(&s.target).unwrap();
    let ctx = |shared| PlanContext {
        snapshot: &s.snap,
        failing_targets: 50,
        circuit_breaker: 20,
        shared_root: shared,
        operator_namespace: "fluxmedic",
        controllers_down: &report.controllers_down,
        pollers: NO_POLLERS,
    };
    let blocked = plan(d, &s.snap.objects[&s.target], Some(&p), &s.inc, &ctx(false));
    assert_eq!(
        blocked.blocked,
        Some(Blocked::CircuitBreakerOpen { threshold: 20 })
    );
    let ok = plan(d, &s.snap.objects[&s.target], Some(&p), &s.inc, &ctx(true));
    assert!(ok.act().is_some());
}

#[test]
fn dependents_wait_for_their_root() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let snap = Snapshot::new(
        [
            ks(
                "infra",
                vec![cond(
                    "Ready",
                    "False",
                    "BuildFailed",
                    "kustomize build failed: x",
                )],
                &[],
            ),
            app_waiting_on_infra("dependency 'apps/infra' is not ready"),
            git(vec![ready()]),
        ],
        NOW,
    );
    let s = app_scenario(snap);
    let dec = decide(&s, Some(&p)).1;
    assert_eq!(
        dec.blocked,
        Some(Blocked::BlockedByRoot(ObjectKey::new(
            flux::FluxKind::Kustomization,
            "apps",
            "infra"
        )))
    );
}

/// Kustomization `app` depending on `infra`, failing with kustomize-controller's `message`.
fn app_waiting_on_infra(message: &str) -> FluxObject {
    ks(
        "app",
        vec![cond("Ready", "False", "DependencyNotReady", message)],
        &["infra"],
    )
}

/// The incident on Kustomization `app` in `snap`, seen for the first time.
fn app_scenario(snap: Snapshot) -> Scenario {
    Scenario {
        snap,
        target: ObjectKey::new(flux::FluxKind::Kustomization, "apps", "app"),
        inc: IncidentView::default(),
    }
}

/// fluxmedic leaves `app` to Flux while its dependency `infra` is not caught up.
fn assert_waits_for_infra(s: &Scenario, p: &Policy) {
    let dec = decide(s, Some(p)).1;
    assert!(
        matches!(dec.blocked, Some(Blocked::FluxRemediating(ref m)) if m.contains("infra")),
        "{dec:?}"
    );
}

#[test]
fn a_dependent_waits_while_its_dependency_is_only_progressing() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let progressing = cond(
        "Ready",
        "Unknown",
        "Progressing",
        "Reconciliation in progress",
    );
    let snap = Snapshot::new(
        [
            ks("infra", vec![progressing], &[]),
            app_waiting_on_infra("dependency 'apps/infra' is not ready"),
            git(vec![ready()]),
        ],
        NOW,
    );
    let s = app_scenario(snap);
    // Waiting on it as on a failing one (its root while it is in progress: the same record
    // whether it is between two failed attempts or on its way to Ready).
    let dec = decide(&s, Some(&p)).1;
    assert!(dec.act().is_none());
    assert!(
        matches!(&dec.blocked, Some(Blocked::BlockedByRoot(k)) if k.name == "infra"),
        "{dec:?}"
    );
}

#[test]
fn a_dependent_waits_while_its_dependency_is_ready_on_an_older_revision() {
    // The source moved to aaa; the dependency is still Ready on its previous revision, which
    // kustomize-controller reports as "revision is not up to date" to the dependent.
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let mut infra = ks("infra", vec![ready()], &[]);
    infra.last_attempted_revision = Some("main@sha1:old".into());
    let app = app_waiting_on_infra("dependency 'apps/infra' revision is not up to date");
    let mut s = app_scenario(Snapshot::new([infra.clone(), app, git(vec![ready()])], NOW));
    assert_waits_for_infra(&s, &p);
    // Once it applied the current revision, the dependent is reconciled at once.
    infra.last_attempted_revision = Some("main@sha1:aaa".into());
    s.snap = Snapshot::new(
        [
            infra,
            s.snap.objects[&s.target].as_ref().clone(),
            git(vec![ready()]),
        ],
        NOW,
    );
    assert_eq!(decide(&s, Some(&p)).1.act(), Some(&Action::Reconcile));
}

#[test]
fn stale_lock_respects_threshold_and_running_actions() {
    let mut p = all_cases(Mode::Auto, &[ActionKind::Unlock]);
    let s = scenario(Case::StaleLock);
    p.stale_threshold = Some(std::time::Duration::from_secs(7200));
    assert!(matches!(
        decide(&s, Some(&p)).1.blocked,
        Some(Blocked::NotStale(_))
    ));
    // delete instead of unlock when the policy says so
    let del = policy_with(vec![CaseRule {
        case: Case::StaleLock,
        mode: Mode::Auto,
        actions: vec![ActionKind::DeletePendingRelease],
        with_source: false,
    }]);
    // ... only where the installation enables it (its RBAC and admission policy with it).
    assert_eq!(
        decide(&s, Some(&del)).1.blocked,
        Some(Blocked::ActionNotEnabled(ActionKind::DeletePendingRelease))
    );
    let mut s = s;
    s.snap.allow_delete_pending_release = true;
    assert!(matches!(
        decide(&s, Some(&del)).1.act(),
        Some(Action::UnlockRelease { delete: true, .. })
    ));
}

#[test]
fn escalation_after_the_policy_duration() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let mut s = scenario(Case::GitAuth);
    s.inc.detected_at = NOW - 29 * 60;
    assert!(!decide(&s, Some(&p)).1.escalate);
    s.inc.detected_at = NOW - 31 * 60;
    assert!(decide(&s, Some(&p)).1.escalate);
}

// ---------- matching ----------

fn named(ns: &str, name: &str, priority: i32, targets: TargetSelector) -> Policy {
    let mut p = policy_with(vec![]);
    p.spec.priority = priority;
    p.spec.targets = targets.clone();
    Policy::new(ns, name, p.spec).unwrap()
}

#[test]
fn selection_is_deterministic_and_tenant_scoped() {
    let target = ks("app", vec![], &[]);
    let mut labelled = target.clone();
    labelled.labels.insert("tier".into(), "web".into());
    let sel = TargetSelector {
        selector: Some(serde_json::from_value(json!({"matchLabels": {"tier": "web"}})).unwrap()),
        ..Default::default()
    };
    let ps = vec![
        named("apps", "b", 0, TargetSelector::default()),
        named("apps", "a", 0, TargetSelector::default()),
        named(
            "flux-system",
            "global",
            0,
            TargetSelector {
                namespaces: vec!["*".into()],
                ..Default::default()
            },
        ),
        named(
            "other",
            "tenant",
            100,
            TargetSelector {
                namespaces: vec!["*".into()],
                ..Default::default()
            },
        ),
        named("apps", "labelled", 5, sel),
    ];
    let (w, losers) = select(&ps, &target, "flux-system");
    assert_eq!(
        w.unwrap().id(),
        "apps/a",
        "same priority: own namespace, then name"
    );
    assert_eq!(
        losers.iter().map(|p| p.id()).collect::<Vec<_>>(),
        vec!["apps/b", "flux-system/global"]
    );
    assert!(
        !ps[3].covers(&target, "flux-system"),
        "a tenant policy never reaches another namespace"
    );
    assert_eq!(
        select(&ps, &labelled, "flux-system").0.unwrap().id(),
        "apps/labelled"
    );
    let kinds = TargetSelector {
        kinds: vec![crate::api::TargetKind::HelmRelease],
        ..Default::default()
    };
    assert!(!named("apps", "k", 0, kinds).covers(&target, "flux-system"));
}

#[test]
fn circuit_breaker_threshold_comes_from_the_operator_namespace() {
    let mut a = named("flux-system", "a", 0, TargetSelector::default());
    a.spec.circuit_breaker = Some(CircuitBreaker {
        max_failing_targets: 7,
    });
    let mut t = named("apps", "t", 0, TargetSelector::default());
    t.spec.circuit_breaker = Some(CircuitBreaker {
        max_failing_targets: 1,
    });
    assert_eq!(
        circuit_breaker_threshold(&[a, t.clone()], "flux-system", 20),
        7
    );
    assert_eq!(circuit_breaker_threshold(&[t], "flux-system", 20), 20);
}

#[test]
fn invalid_specs_are_explained() {
    let mut p = policy_with(vec![]);
    p.spec.limits.cooldown = "soon".into();
    assert_eq!(
        Policy::new("a", "b", p.spec.clone())
            .unwrap_err()
            .to_string(),
        "spec.limits.cooldown `soon` is not a duration"
    );
    let dup = vec![
        CaseRule {
            case: Case::GitAuth,
            mode: Mode::Auto,
            actions: vec![],
            with_source: false,
        },
        CaseRule {
            case: Case::GitAuth,
            mode: Mode::Observe,
            actions: vec![],
            with_source: false,
        },
    ];
    assert_eq!(
        Policy::new(
            "a",
            "b",
            policy_with(vec![]).spec.clone().tap(|s| s.rules = dup)
        )
        .unwrap_err(),
        PolicyError::DuplicateCase(Case::GitAuth)
    );
}

trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl<T> Tap for T {}

// ---------------------------------------------------------------- trust boundaries

/// The tenant policy `apps/p` (not in the operator's namespace) and a decision on `s`.
fn decide_as(s: &Scenario, p: &Policy, operator_ns: &str) -> Decision {
    let report = diagnose::diagnose(&s.snap);
    let d = report.get(&s.target).cloned().expect("failing");
    let ctx = PlanContext {
        snapshot: &s.snap,
        failing_targets: report.diagnoses.len(),
        circuit_breaker: 20,
        shared_root: false,
        operator_namespace: operator_ns,
        controllers_down: &report.controllers_down,
        pollers: NO_POLLERS,
    };
    plan(&d, &s.snap.objects[&s.target], Some(p), &s.inc, &ctx)
}

#[test]
fn a_tenant_policy_never_writes_outside_its_namespace() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    // The tenant's Kustomization consumes a GitRepository shared from flux-system.
    let app = flux::from_value(&json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "app", "namespace": "apps"},
        "spec": {"sourceRef": {"kind": "GitRepository", "name": "shared", "namespace": "flux-system"}},
        "status": {"conditions": [cond("Ready", "False", "BuildFailed", "kustomize build failed: bad")]}}))
    .unwrap();
    let shared = flux::from_value(&json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "shared", "namespace": "flux-system"}, "spec": {"url": "http://x/y.git"},
        "status": {"conditions": [ready()], "artifact": {"revision": "main@sha1:aaa"}}}))
    .unwrap();
    let s = app_scenario(Snapshot::new([app, shared], NOW));
    let dec = decide_as(&s, &p, "fluxmedic");
    assert_eq!(
        dec.blocked,
        Some(Blocked::OutsidePolicyNamespace {
            namespace: "flux-system".into(),
            policy: "apps/p".into()
        }),
        "polling a shared source is for the operator's policies"
    );
    // The same policy in the operator's namespace, covering apps, may poll it only if it
    // covers flux-system too.
    let mut spec = p.spec.clone();
    spec.targets.namespaces = vec!["apps".into()];
    let op = Policy::new("fluxmedic", "p", spec.clone()).unwrap();
    assert!(matches!(
        decide_as(&s, &op, "fluxmedic").blocked,
        Some(Blocked::OutsidePolicyNamespace { .. })
    ));
    spec.targets.namespaces = vec!["*".into()];
    let op = Policy::new("fluxmedic", "p", spec).unwrap();
    assert!(decide_as(&s, &op, "fluxmedic").act().is_some());
}

#[test]
fn credentials_fix_reconciles_only_consumers_the_policy_may_change() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let mut s = scenario(Case::GitAuth);
    let mine = ks("app", vec![ready()], &[]);
    let theirs = flux::from_value(
        &json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "other", "namespace": "prod"},
        "spec": {"sourceRef": {"kind": "GitRepository", "name": "repo", "namespace": "apps"}},
        "status": {"conditions": [ready()]}}),
    )
    .unwrap();
    for o in [mine.clone(), theirs] {
        s.snap.objects.insert(o.key.clone(), std::sync::Arc::new(o));
    }
    assert_eq!(
        decide_as(&s, &p, "fluxmedic").act(),
        Some(&Action::ReconcileSourceAndConsumers {
            source: s.target.clone(),
            consumers: vec![mine.key.clone()]
        })
    );
}

#[test]
fn git_auth_reacts_when_a_missing_secret_is_created() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let mut s = scenario(Case::GitAuth);
    // Detected while the Secret did not exist.
    s.inc.observed_secret = Some(crate::api::ObservedSecret {
        name: "creds".into(),
        resource_version: None,
    });
    s.snap.secrets.clear();
    assert!(matches!(
        decide_as(&s, &p, "fluxmedic").blocked,
        Some(Blocked::RetryCannotHelp(_))
    ));
    s.snap.secrets.insert(
        ("apps".into(), "creds".into()),
        SecretInfo {
            keys: Default::default(),
            resource_version: Some("7".into()),
        },
    );
    assert!(matches!(
        decide_as(&s, &p, "fluxmedic").act(),
        Some(Action::ReconcileSourceAndConsumers { .. })
    ));
}

fn hr_with(spec: serde_json::Value, status_extra: serde_json::Value) -> flux::FluxObject {
    let mut status = json!({"observedGeneration": 2, "conditions": [cond("Ready", "False", "UpgradeFailed",
        "Helm upgrade failed for release apps/web with chart web@2: another operation (install/upgrade/rollback) is in progress")]});
    if let (Some(s), Some(e)) = (status.as_object_mut(), status_extra.as_object()) {
        s.extend(e.clone());
    }
    let mut spec_v = json!({"timeout": "1m", "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}});
    if let (Some(s), Some(e)) = (spec_v.as_object_mut(), spec.as_object()) {
        s.extend(e.clone());
    }
    flux::from_value(&json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": "apps", "generation": 2}, "spec": spec_v, "status": status}))
    .unwrap()
}

fn stale_in(ns: &str, release: &str) -> Vec<StoredRelease> {
    vec![
        StoredRelease {
            namespace: ns.into(),
            release: release.into(),
            secret_name: format!("sh.helm.release.v1.{release}.v1"),
            ..stored(1, "deployed", 0)
        },
        StoredRelease {
            namespace: ns.into(),
            release: release.into(),
            secret_name: format!("sh.helm.release.v1.{release}.v2"),
            ..stored(2, "pending-upgrade", NOW - 3600)
        },
    ]
}

fn stale_lock_decision(
    o: flux::FluxObject,
    releases: Vec<StoredRelease>,
    others: Vec<flux::FluxObject>,
) -> Decision {
    let p = all_cases(Mode::Auto, &[ActionKind::Unlock]);
    let mut objects = vec![o.clone()];
    objects.extend(others);
    let mut snap = unrestricted_helm_controller(Snapshot::new(objects, NOW));
    for r in releases {
        snap.add_release(r);
    }
    let s = Scenario {
        snap,
        target: o.key,
        inc: IncidentView::default(),
    };
    let report = diagnose::diagnose(&s.snap);
    match report.get(&s.target) {
        Some(_) => decide_as(&s, &p, "fluxmedic"),
        None => Decision {
            mode: Mode::Observe,
            planned: None,
            blocked: Some(Blocked::NoRunbook),
            escalate: false,
        },
    }
}

#[test]
fn helm_storage_is_touched_only_when_it_verifiably_belongs_to_the_helmrelease() {
    // Its own release: unlocked.
    let own = stale_lock_decision(
        hr_with(json!({}), json!({})),
        stale_in("apps", "web"),
        vec![],
    );
    assert!(
        matches!(own.act(), Some(Action::UnlockRelease { .. })),
        "{own:?}"
    );

    // storageNamespace pointing at another namespace's release, never reconciled there (no
    // status naming it, no history): not this HelmRelease's to touch, whatever the policy.
    let elsewhere = stale_lock_decision(
        hr_with(json!({"storageNamespace": "prod"}), json!({})),
        stale_in("prod", "web"),
        vec![],
    );
    assert!(
        matches!(elsewhere.blocked, Some(Blocked::ReleaseNotVerified(ref m)) if m.contains("never reconciled")),
        "{elsewhere:?}"
    );
    // With helm-controller's word for it (status and history), still a namespace a tenant
    // policy may not write in.
    let vouched = json!({"observedGeneration": 2, "storageNamespace": "prod",
        "history": [{"name": "web", "namespace": "apps", "version": 1, "status": "deployed"}]});
    let elsewhere = stale_lock_decision(
        hr_with(json!({"storageNamespace": "prod"}), vouched.clone()),
        stale_in("prod", "web"),
        vec![],
    );
    assert!(
        matches!(elsewhere.blocked, Some(Blocked::OutsidePolicyNamespace { ref namespace, .. }) if namespace == "prod"),
        "{elsewhere:?}"
    );

    // Two HelmReleases claiming the same storage: neither is acted on.
    let twin = flux::from_value(&json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "impostor", "namespace": "apps"},
        "spec": {"releaseName": "web", "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}}))
    .unwrap();
    let ambiguous = stale_lock_decision(
        hr_with(json!({}), json!({})),
        stale_in("apps", "web"),
        vec![twin],
    );
    assert!(
        matches!(ambiguous.blocked, Some(Blocked::ReleaseNotVerified(ref m)) if m.contains("also claimed")),
        "{ambiguous:?}"
    );

    // The history names another release than the spec derives.
    let mismatch = stale_lock_decision(
        hr_with(
            json!({}),
            json!({"history": [{"name": "db", "namespace": "apps", "version": 2, "status": "pending-upgrade"}]}),
        ),
        stale_in("apps", "web"),
        vec![],
    );
    assert!(
        matches!(mismatch.blocked, Some(Blocked::ReleaseNotVerified(_))),
        "{mismatch:?}"
    );

    // A release in another cluster never matches local storage.
    let remote = stale_lock_decision(
        hr_with(
            json!({"kubeConfig": {"secretRef": {"name": "kc"}}}),
            json!({}),
        ),
        stale_in("apps", "web"),
        vec![],
    );
    assert!(remote.act().is_none(), "{remote:?}");
}

#[test]
fn a_long_release_name_finds_its_shortened_storage() {
    let long = "a-release-name-that-is-much-longer-than-fifty-three-characters";
    let o = hr_with(json!({"releaseName": long}), json!({}));
    let short = crate::flux::shorten_release_name(long);
    let dec = stale_lock_decision(o, stale_in("apps", &short), vec![]);
    assert!(
        matches!(dec.act(), Some(Action::UnlockRelease { release, .. }) if release.name == short),
        "{dec:?}"
    );
}

#[test]
fn rollback_refuses_what_helm_cannot_do_right() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry, ActionKind::Rollback]);
    let mut s = scenario(Case::FailedRelease);
    s.inc.attempts = 3;
    // targetNamespace differs from the storage namespace: helm rollback --namespace would
    // apply namespace-less objects into the storage namespace.
    let mut v = serde_json::to_value(&*s.snap.objects[&s.target]).unwrap();
    v["helm"]["releaseNamespace"] = json!("web");
    v["helm"]["history"][0]["namespace"] = json!("web");
    let o: flux::FluxObject = serde_json::from_value(v).unwrap();
    s.snap.objects.insert(o.key.clone(), std::sync::Arc::new(o));
    let dec = decide(&s, Some(&p)).1;
    assert!(
        matches!(dec.blocked, Some(Blocked::ReleaseNotVerified(ref m)) if m.contains("roll back by hand")),
        "{dec:?}"
    );
}

#[test]
fn a_person_suspended_target_is_only_recorded_except_for_a_stale_lock() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry, ActionKind::Unlock]);
    let mut s = scenario(Case::FailedRelease);
    std::sync::Arc::make_mut(s.snap.objects.get_mut(&s.target).unwrap()).suspended = true;
    assert_eq!(
        decide(&s, Some(&p)).1.blocked,
        Some(Blocked::SuspendedByPerson)
    );
    // fluxmedic's own hold is not a person's suspension.
    s.inc.holds = true;
    assert!(decide(&s, Some(&p)).1.act().is_some());

    let mut s = scenario(Case::StaleLock);
    std::sync::Arc::make_mut(s.snap.objects.get_mut(&s.target).unwrap()).suspended = true;
    assert!(matches!(
        decide(&s, Some(&p)).1.act(),
        Some(Action::UnlockRelease { .. })
    ));
}

#[test]
fn an_interrupted_step_skips_its_own_cooldown_but_no_other_gate() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry]);
    let mut s = scenario(Case::FailedRelease);
    s.inc.attempts = 3;
    s.inc.last_action_at = Some(NOW - 1);
    let retry = Action::RetryRelease { with_source: None };
    s.inc.interrupted = Some(retry.clone());
    assert_eq!(decide(&s, Some(&p)).1.act(), Some(&retry));
    // ...but the mode is re-checked: Observe today means it is not finished.
    let observe = all_cases(Mode::Observe, &[ActionKind::Retry]);
    assert_eq!(decide(&s, Some(&observe)).1.blocked, Some(Blocked::Observe));
}

#[test]
fn odd_durations_never_panic_and_escalation_is_bounded() {
    // The longest duration Go accepts: escalation never overflows into "now".
    let mut p = all_cases(Mode::Auto, &[ActionKind::Retry]);
    p.escalate_after = crate::flux::MAX_GO_DURATION;
    p.cooldown = crate::flux::MAX_GO_DURATION;
    let mut s = scenario(Case::FailedRelease);
    s.inc.detected_at = i64::MIN;
    s.inc.last_action_at = Some(i64::MAX);
    let dec = decide(&s, Some(&p)).1;
    assert!(matches!(dec.blocked, Some(Blocked::Cooldown { .. })));
    s.inc.detected_at = NOW;
    assert!(!decide(&s, Some(&p)).1.escalate);
    // A policy whose durations overflow is invalid, reported, not a panic.
    let mut spec = p.spec.clone();
    spec.limits.cooldown = "99999999999999999999h".into();
    assert!(matches!(
        Policy::new("apps", "p", spec),
        Err(PolicyError::Duration { .. })
    ));
}

/// A HelmRelease under RetryOnFailure: helm-controller never stalls, it retries at an interval.
fn retrying_forever(cause: &str, failures: i64, strategy_in_spec: bool) -> Scenario {
    let mut spec = json!({"timeout": "1m", "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}});
    if strategy_in_spec {
        spec["upgrade"] = json!({"strategy": {"name": "RetryOnFailure", "retryInterval": "1m"}});
    }
    let o = flux::from_value(&json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": "apps", "generation": 2}, "spec": spec,
        "status": {"observedGeneration": 2, "upgradeFailures": failures, "failures": failures, "lastAttemptedReleaseAction": "upgrade",
                   "history": [{"name": "web", "namespace": "apps", "version": 3, "status": "failed"}],
                   "conditions": [
                       cond("Ready", "False", "UpgradeFailed", &format!("Helm upgrade failed for release apps/web with chart web@2: {cause}")),
                       cond("Reconciling", "True", "ProgressingWithRetry", "retrying after 1m0s")]}}))
    .unwrap();
    let mut snap = unrestricted_helm_controller(Snapshot::new([o.clone()], NOW));
    snap.add_release(stored(2, "superseded", 0));
    snap.add_release(stored(3, "failed", 0));
    Scenario {
        snap,
        target: o.key,
        inc: IncidentView {
            detected_at: NOW - 10,
            ..Default::default()
        },
    }
}

#[test]
fn retry_on_failure_is_counted_and_escalated_instead_of_waited_on_forever() {
    let timeout = "context deadline exceeded";
    let invalid = "values don't meet the specifications of the schema(s)";
    let retry_only = all_cases(Mode::Auto, &[ActionKind::Retry]);
    for in_spec in [true, false] {
        // Retryable and within the policy's attempts: Flux's own retries may work; wait.
        let (d, dec) = decide(&retrying_forever(timeout, 1, in_spec), Some(&retry_only));
        assert_eq!(
            d.native,
            crate::diagnose::NativeState::RetryingForever,
            "spec strategy: {in_spec}"
        );
        assert!(
            matches!(dec.blocked, Some(Blocked::FluxRemediating(ref m)) if m.contains("1 failed attempt")),
            "{dec:?}"
        );
        assert!(!dec.escalate);
        // As often as the policy allows: escalate (a retry of ours would add nothing).
        let (_, dec) = decide(&retrying_forever(timeout, 3, in_spec), Some(&retry_only));
        assert_eq!(dec.blocked, Some(Blocked::MaxAttempts));
        assert!(dec.escalate);
    }
    // A retry cannot help: escalate at once, and roll back (which stops the loop) if allowed.
    let (_, dec) = decide(&retrying_forever(invalid, 1, true), Some(&retry_only));
    assert!(
        matches!(dec.blocked, Some(Blocked::RetryCannotHelp(ref m)) if m.contains("RetryOnFailure")),
        "{dec:?}"
    );
    assert!(dec.escalate);
    let rollback = all_cases(Mode::Auto, &[ActionKind::Retry, ActionKind::Rollback]);
    let (_, dec) = decide(&retrying_forever(invalid, 1, true), Some(&rollback));
    assert!(
        matches!(dec.act(), Some(Action::Rollback { to_version: 2, .. })),
        "{dec:?}"
    );
    assert!(dec.escalate);
}

#[test]
fn nothing_goes_through_a_controller_that_is_not_working_and_it_escalates_at_once() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    let s = scenario(Case::GitUnreachable);
    let report = diagnose::diagnose(&s.snap);
    let d = report.get(&s.target).unwrap();
    let down = std::collections::BTreeMap::from([(
        "source-controller".to_string(),
        "source-controller has not handled the reconcile request on GitRepository/apps/repo made 300s ago: it is not processing its objects".to_string(),
    )]);
    let ctx = one_failing(&s.snap, &down, NO_POLLERS);
    let dec = plan(d, &s.snap.objects[&s.target], Some(&p), &s.inc, &ctx);
    assert!(
        matches!(dec.blocked, Some(Blocked::ControllerDown(ref m)) if m.contains("source-controller")),
        "{dec:?}"
    );
    assert!(dec.escalate, "escalated at once");
    // A Kustomization whose action goes through its source: blocked too.
    let s = scenario(Case::InvalidManifests);
    let report = diagnose::diagnose(&s.snap);
    let dec = plan(
        report.get(&s.target).unwrap(),
        &s.snap.objects[&s.target],
        Some(&p),
        &s.inc,
        &PlanContext {
            snapshot: &s.snap,
            ..ctx
        },
    );
    assert!(
        matches!(dec.blocked, Some(Blocked::ControllerDown(_))),
        "{dec:?}"
    );
}

#[test]
fn missing_rollback_target_says_what_a_person_must_do() {
    let p = all_cases(Mode::Auto, &[ActionKind::Retry]);
    let o = hr(vec![
        cond(
            "Ready",
            "False",
            "UpgradeFailed",
            "Helm upgrade failed for release apps/web with chart web@2: context deadline exceeded",
        ),
        cond(
            "Stalled",
            "True",
            "MissingRollbackTarget",
            "Failed to perform remediation: missing target release for rollback: cannot remediate failed release",
        ),
    ]);
    let s = Scenario {
        snap: Snapshot::new([o.clone()], NOW),
        target: o.key,
        inc: IncidentView::default(),
    };
    let dec = decide(&s, Some(&p)).1;
    assert!(
        matches!(dec.blocked, Some(Blocked::RetryCannotHelp(ref m)) if m.contains("no revision left to roll back to")),
        "{dec:?}"
    );
}

/// OCI, Helm repository and Bucket sources are diagnosed like Git (credentials vs
/// reachability) and named as the root of what they feed.
#[test]
fn an_artifact_source_is_the_root_of_what_it_feeds() {
    let oci = flux::from_value(&json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "OCIRepository",
        "metadata": {"name": "app", "namespace": "apps"},
        "spec": {"url": "oci://registry.example/app", "secretRef": {"name": "regcred"}, "interval": "5m"},
        "status": {"conditions": [cond("Ready", "False", "OCIArtifactPullFailed",
            "failed to determine artifact digest: GET https://registry.example/v2/app/manifests/latest: UNAUTHORIZED: authentication required; [map[Action:pull Class: Name:app Type:repository]]")]}}))
    .unwrap();
    let consumer = flux::from_value(
        &json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "app", "namespace": "apps"},
        "spec": {"interval": "10m", "path": "./", "prune": true,
                 "sourceRef": {"kind": "OCIRepository", "name": "app"}},
        "status": {"conditions": [cond("Ready", "False", "ArtifactFailed",
            "Source artifact not found, retrying in 30s")]}}),
    )
    .unwrap();
    let mut snap = Snapshot::new([oci.clone(), consumer.clone()], NOW);
    snap.secrets_observed = true;
    snap.secrets.insert(
        ("apps".into(), "regcred".into()),
        SecretInfo {
            keys: Default::default(),
            resource_version: Some("2".into()),
        },
    );
    let s = Scenario {
        snap,
        target: oci.key.clone(),
        inc: IncidentView {
            observed_secret: Some(crate::api::ObservedSecret {
                name: "regcred".into(),
                resource_version: Some("1".into()),
            }),
            ..Default::default()
        },
    };
    let (d, _) = decide(&s, None);
    assert_eq!(d.case, Case::GitAuth);
    assert!(!d.retryable);
    // The consumer names the OCIRepository as its root and waits on it.
    let report = diagnose::diagnose(&s.snap);
    let c = report.get(&consumer.key).unwrap();
    assert_eq!(c.case, Case::DependencyCascade);
    assert_eq!(c.root, oci.key);
}

fn obj(v: serde_json::Value) -> flux::FluxObject {
    flux::from_value(&v).unwrap()
}

/// A failing source of `kind` with credentials `creds` (resource version 2 now, 1 when the
/// incident was detected: the Secret was fixed since) and what else the snapshot holds.
fn source_scenario(failing: flux::FluxObject, others: Vec<flux::FluxObject>) -> Scenario {
    let target = failing.key.clone();
    let mut snap = Snapshot::new(std::iter::once(failing).chain(others), NOW);
    snap.secrets_observed = true;
    snap.secrets.insert(
        ("apps".into(), "creds".into()),
        SecretInfo {
            keys: Default::default(),
            resource_version: Some("2".into()),
        },
    );
    Scenario {
        snap,
        target,
        inc: IncidentView {
            detected_at: NOW - 10,
            observed_secret: Some(crate::api::ObservedSecret {
                name: "creds".into(),
                resource_version: Some("1".into()),
            }),
            ..Default::default()
        },
    }
}

#[test]
fn every_source_kind_is_reconciled_with_its_consumers_after_a_credentials_fix() {
    let p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    // An OCI artifact a Kustomization applies.
    let oci = obj(
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "OCIRepository",
        "metadata": {"name": "app", "namespace": "apps"},
        "spec": {"url": "oci://127.0.0.1:5000/apps/app", "secretRef": {"name": "creds"}},
        "status": {"conditions": [cond("Ready", "False", "OCIArtifactPullFailed",
            "failed to determine artifact digest: GET http://127.0.0.1:5000/v2/apps/app/manifests/latest: UNAUTHORIZED: authentication required; [map[Action:pull Class: Name:apps/app Type:repository]]")]}}),
    );
    let ks_oci = obj(
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "app", "namespace": "apps"},
        "spec": {"sourceRef": {"kind": "OCIRepository", "name": "app"}},
        "status": {"conditions": [ready()]}}),
    );
    let mut s = source_scenario(oci, vec![ks_oci.clone()]);
    let (d, dec) = decide(&s, Some(&p));
    assert_eq!(d.case, Case::GitAuth);
    assert_eq!(
        dec.act(),
        Some(&Action::ReconcileSourceAndConsumers {
            source: s.target.clone(),
            consumers: vec![ks_oci.key.clone()],
        }),
        "{dec:?}"
    );
    // Unchanged since detection: a person must fix the Secret; nothing is written.
    s.inc.observed_secret.as_mut().unwrap().resource_version = Some("2".into());
    let dec = decide(&s, Some(&p)).1;
    assert!(
        matches!(&dec.blocked, Some(Blocked::RetryCannotHelp(m)) if m.contains("Secret apps/creds")),
        "{dec:?}"
    );

    // A chart from an OCI chart repository (which has no status of its own: the HelmChart
    // fails, with the repository's credentials), used through spec.chart and through chartRef.
    let repo = obj(
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "charts", "namespace": "apps"},
        "spec": {"type": "oci", "url": "oci://127.0.0.1:5000/charts", "secretRef": {"name": "creds"}}}),
    );
    let chart = obj(
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmChart",
        "metadata": {"name": "apps-web", "namespace": "apps"},
        "spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}},
        "status": {"conditions": [cond("Ready", "False", "ChartPullFailed",
            "chart pull error: failed to download chart for remote reference: GET http://127.0.0.1:5000/v2/charts/web/tags/list: UNAUTHORIZED: authentication required")]}}),
    );
    let by_spec = obj(
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}},
        "status": {"conditions": [ready()]}}),
    );
    let by_ref = obj(
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "by-ref", "namespace": "apps"},
        "spec": {"chartRef": {"kind": "HelmChart", "name": "apps-web"}},
        "status": {"conditions": [ready()]}}),
    );
    let s = source_scenario(chart, vec![repo, by_spec.clone(), by_ref.clone()]);
    let (d, dec) = decide(&s, Some(&p));
    assert_eq!((d.case, &d.root), (Case::GitAuth, &s.target));
    let ev = format!("{:?}", d.evidence);
    assert!(ev.contains("Secret apps/creds"), "{ev}");
    assert_eq!(
        dec.act(),
        Some(&Action::ReconcileSourceAndConsumers {
            source: s.target.clone(),
            consumers: vec![by_ref.key.clone(), by_spec.key.clone()],
        }),
        "{dec:?}"
    );

    // A chart whose (default, HTTP) repository refuses the same credentials waits for the
    // repository's incident, which reconciles the chart as one of its consumers.
    let http_repo = obj(
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "charts", "namespace": "apps"},
        "spec": {"url": "http://127.0.0.1/charts/", "secretRef": {"name": "creds"}},
        "status": {"conditions": [cond("Ready", "False", "Failed",
            "failed to fetch Helm repository index: failed to cache index to temporary file: failed to fetch http://127.0.0.1/charts/index.yaml : 401 Unauthorized")]}}),
    );
    let chart = obj(
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmChart",
        "metadata": {"name": "apps-web", "namespace": "apps"},
        "spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}},
        "status": {"conditions": [cond("Ready", "False", "ChartPullError",
            "chart pull error: failed to download chart for remote reference: failed to fetch http://127.0.0.1/charts/web-0.3.0.tgz : 401 Unauthorized")]}}),
    );
    let s = source_scenario(chart.clone(), vec![http_repo.clone(), by_spec.clone()]);
    let (d, dec) = decide(&s, Some(&p));
    assert_eq!(d.root, http_repo.key);
    assert_eq!(dec.act(), None, "{dec:?}");
    assert!(
        matches!(&dec.blocked, Some(Blocked::BlockedByRoot(r)) if r == &http_repo.key),
        "{dec:?}"
    );
    let s = source_scenario(http_repo.clone(), vec![chart.clone(), by_spec.clone()]);
    assert_eq!(
        decide(&s, Some(&p)).1.act(),
        Some(&Action::ReconcileSourceAndConsumers {
            source: http_repo.key.clone(),
            consumers: vec![chart.key.clone(), by_spec.key.clone()],
        })
    );

    // A Bucket that cannot be reached is polled like a Git server.
    let bucket = obj(
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "Bucket",
        "metadata": {"name": "files", "namespace": "apps"},
        "spec": {"bucketName": "files", "endpoint": "127.0.0.1:1", "secretRef": {"name": "creds"}},
        "status": {"conditions": [cond("Ready", "False", "BucketOperationFailed",
            "failed to confirm existence of 'files' bucket: dial tcp 127.0.0.1:1: connect: connection refused")]}}),
    );
    let mut s = source_scenario(bucket, vec![]);
    s.inc.observed_secret.as_mut().unwrap().resource_version = Some("2".into());
    let (d, dec) = decide(&s, Some(&p));
    assert_eq!(d.case, Case::GitUnreachable);
    assert_eq!(
        dec.act(),
        Some(&Action::ReconcileSource {
            source: s.target.clone()
        }),
        "{dec:?}"
    );
}

#[test]
fn a_policy_names_source_kinds_it_covers() {
    let mut p = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    p.spec.targets.kinds = vec![crate::api::TargetKind::OCIRepository];
    let oci = obj(
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "OCIRepository",
        "metadata": {"name": "app", "namespace": "apps"}, "spec": {"url": "oci://r/app"}}),
    );
    assert!(p.covers(&oci, "fluxmedic"));
    assert!(!p.covers(&git(vec![]), "fluxmedic"));
}

#[test]
fn a_helm_action_whose_identity_cannot_be_told_is_blocked_never_run_as_fluxmedic() {
    // A HelmRelease without serviceAccountName, nothing known about helm-controller: the
    // unlock and the rollback are recorded only, with the reason.
    let o = hr_with(json!({}), json!({}));
    let mut snap = Snapshot::new([o.clone()], NOW);
    for r in stale_in("apps", "web") {
        snap.add_release(r);
    }
    let s = Scenario {
        snap,
        target: o.key,
        inc: IncidentView::default(),
    };
    let dec = decide_as(
        &s,
        &all_cases(Mode::Auto, &[ActionKind::Unlock]),
        "fluxmedic",
    );
    assert!(
        matches!(&dec.blocked, Some(Blocked::IdentityUnknown(why)) if why.contains("helm-controller")),
        "{dec:?}"
    );
    let rollback = retrying_forever(
        "values don't meet the specifications of the schema(s)",
        1,
        true,
    );
    let mut rollback = rollback;
    rollback.snap.helm_controller = None;
    let policy = all_cases(Mode::Auto, &[ActionKind::Retry, ActionKind::Rollback]);
    let (_, dec) = decide(&rollback, Some(&policy));
    assert!(
        matches!(dec.blocked, Some(Blocked::IdentityUnknown(_))),
        "{dec:?}"
    );
    // Told: the action runs as that identity, recorded in the step.
    rollback.snap.helm_controller = Some(crate::flux::HelmControllerIdentity::Lockdown {
        default_service_account: "default".into(),
    });
    let (_, dec) = decide(&rollback, Some(&policy));
    assert!(
        matches!(dec.act(), Some(Action::Rollback { release, .. })
            if release.identity == crate::flux::ServiceAccountRef::new("apps", "default")),
        "{dec:?}"
    );
}

#[test]
fn storage_in_another_namespace_needs_helm_controllers_word_for_it() {
    // The operator's namespace policy covers every namespace: only evidence keeps it off
    // another team's storage.
    let mut p = all_cases(Mode::Auto, &[ActionKind::Unlock]);
    p.namespace = "fluxmedic".into();
    p.spec.targets.namespaces = vec!["*".into()];
    let decide_for = |spec: serde_json::Value, status: serde_json::Value| {
        let o = hr_with(spec, status);
        let mut snap = unrestricted_helm_controller(Snapshot::new([o.clone()], NOW));
        for r in stale_in("prod", "web") {
            snap.add_release(r);
        }
        let s = Scenario {
            snap,
            target: o.key,
            inc: IncidentView::default(),
        };
        decide_as(&s, &p, "fluxmedic")
    };
    let spec = json!({"storageNamespace": "prod"});
    let vouched = json!({"observedGeneration": 2, "storageNamespace": "prod",
        "history": [{"name": "web", "namespace": "apps", "version": 1, "status": "deployed"}]});
    // Reconciled there, the pending revision right after the one helm-controller recorded.
    let dec = decide_for(spec.clone(), vouched.clone());
    assert!(
        matches!(dec.act(), Some(Action::UnlockRelease { namespace, .. }) if namespace == "prod"),
        "{dec:?}"
    );
    let refused = |status: serde_json::Value, why: &str| {
        let dec = decide_for(spec.clone(), status);
        assert!(
            matches!(&dec.blocked, Some(Blocked::ReleaseNotVerified(m)) if m.contains(why)),
            "{why}: {dec:?}"
        );
    };
    // Never reconciled; reconciled but the status names no storage namespace; a history
    // that does not reach the pending revision (another release's, or an older one).
    refused(json!({}), "never reconciled");
    let mut no_storage = vouched.clone();
    no_storage
        .as_object_mut()
        .unwrap()
        .remove("storageNamespace");
    refused(no_storage, "does not name it");
    let mut old = vouched.clone();
    old["history"][0]["version"] = json!(0);
    refused(old, "does not hold revision 2");
    let mut other = vouched.clone();
    other["history"][0]["name"] = json!("db");
    refused(other, "names release");
    // Suspended by a person: helm-controller vouches for nothing there now, unlike its own
    // namespace, where a suspended release's stale lock is still released.
    let dec = decide_for(
        json!({"storageNamespace": "prod", "suspend": true}),
        vouched,
    );
    assert!(
        matches!(&dec.blocked, Some(Blocked::ReleaseNotVerified(m)) if m.contains("suspended")),
        "{dec:?}"
    );
}

#[test]
fn a_rollback_needs_a_current_view_and_goes_only_to_the_last_good_revision() {
    let invalid = "values don't meet the specifications of the schema(s)";
    let policy = all_cases(Mode::Auto, &[ActionKind::Retry, ActionKind::Rollback]);
    let s = retrying_forever(invalid, 1, true);
    let (_, dec) = decide(&s, Some(&policy));
    let release = match dec.act() {
        Some(Action::Rollback {
            to_version: 2,
            release,
        }) => release.clone(),
        other => panic!("{other:?}"),
    };
    // A fix pushed after retries ran out: the spec moved on, the status has not yet.
    let mut fixed = retrying_forever(invalid, 1, true);
    let o = fixed.snap.objects.get_mut(&fixed.target).unwrap();
    std::sync::Arc::make_mut(o).generation = Some(3);
    let (_, dec) = decide(&fixed, Some(&policy));
    assert!(
        matches!(&dec.blocked, Some(Blocked::FluxRemediating(m)) if m.contains("changed (generation 3)")),
        "{dec:?}"
    );
    // A rollback a crash interrupted, as a restored record would name it: to revision 1, not
    // the last good one (2). Not finished; today's plan is the rollback to 2.
    let mut restored = retrying_forever(invalid, 1, true);
    restored.inc.interrupted = Some(Action::Rollback {
        to_version: 1,
        release: release.clone(),
    });
    restored.snap.add_release(stored(1, "superseded", 0));
    let (_, dec) = decide(&restored, Some(&policy));
    assert!(
        matches!(dec.planned, Some(Action::Rollback { to_version: 2, .. })),
        "{dec:?}"
    );
    // The genuine one, to 2, after fluxmedic's own suspend (one generation on): finished.
    let mut genuine = retrying_forever(invalid, 1, true);
    genuine.inc.interrupted = Some(Action::Rollback {
        to_version: 2,
        release,
    });
    interrupted_after_our_suspend(&mut genuine);
    let (_, dec) = decide(&genuine, Some(&policy));
    assert!(
        matches!(dec.act(), Some(Action::Rollback { to_version: 2, .. })),
        "{dec:?}"
    );
}

/// The state a crash between fluxmedic's suspend and its rollback leaves: the hold, and the
/// HelmRelease suspended by record `hr-web-1` (one generation on).
fn interrupted_after_our_suspend(s: &mut Scenario) {
    s.inc.holds = true;
    let o = s.snap.objects.get_mut(&s.target).unwrap();
    let o = std::sync::Arc::make_mut(o);
    o.generation = Some(3);
    o.suspended = true;
    o.reconcile_annotations.insert(
        crate::api::SUSPENDED_BY_ANNOTATION.into(),
        "hr-web-1".into(),
    );
}

#[test]
fn a_rollback_that_keeps_failing_is_not_run_again_every_cooldown() {
    let invalid = "values don't meet the specifications of the schema(s)";
    let policy = all_cases(Mode::Auto, &[ActionKind::Retry, ActionKind::Rollback]);
    let max = policy.spec.limits.max_attempts;
    // The retries ran out long ago (attempts well past the limit): a rollback is still next.
    let mut s = retrying_forever(invalid, 1, true);
    s.inc.attempts = max + 2;
    s.inc.rollbacks = max - 1;
    s.inc.last_action_at = Some(NOW - 3600);
    let (_, dec) = decide(&s, Some(&policy));
    assert!(
        matches!(dec.act(), Some(Action::Rollback { .. })),
        "{dec:?}"
    );
    // As many rollbacks as the policy allows attempts, each failed: no more, a person is called.
    s.inc.rollbacks = max;
    let (_, dec) = decide(&s, Some(&policy));
    assert_eq!(dec.blocked, Some(Blocked::MaxAttempts), "{dec:?}");
    assert!(dec.escalate);
    // One a crash interrupted is still finished (it was counted when it started).
    s.inc.interrupted = dec.planned.clone();
    interrupted_after_our_suspend(&mut s);
    let (_, dec) = decide(&s, Some(&policy));
    assert!(
        matches!(dec.act(), Some(Action::Rollback { .. })),
        "{dec:?}"
    );
}

#[test]
fn a_circuit_breaker_opens_for_one_namespace_only() {
    let mut tenant = all_cases(Mode::Auto, &[ActionKind::Reconcile]);
    tenant.namespace = "team-b".into();
    tenant.spec.circuit_breaker = Some(crate::api::CircuitBreaker {
        max_failing_targets: 1,
    });
    let mut lax = tenant.clone();
    lax.namespace = "team-c".into();
    lax.spec.circuit_breaker = Some(crate::api::CircuitBreaker {
        max_failing_targets: 500,
    });
    let failing = std::iter::repeat_n("team-a", 21)
        .chain(std::iter::repeat_n("team-b", 2))
        .chain(std::iter::repeat_n("team-c", 21))
        .chain(["team-d"]);
    let b = crate::policy::Breakers::new(failing, &[tenant, lax], "fluxmedic", 20);
    // team-a's storm opens team-a's breaker; team-d's one failure is acted on as usual.
    assert_eq!(b.failing("team-a"), 21);
    assert_eq!(b.threshold("team-d"), 20);
    // A tenant may lower its own threshold, never raise it above the operator's.
    assert_eq!(b.threshold("team-b"), 1);
    assert_eq!(b.threshold("team-c"), 20);
    assert_eq!(b.open(), vec!["team-a", "team-b", "team-c"]);
}
