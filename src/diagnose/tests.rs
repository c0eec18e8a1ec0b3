use serde_json::{Value, json};

use super::*;
use crate::{flux, helm::ReleaseStatus};

const CORPUS: &str = include_str!("../../tests/fixtures/flux-conditions.jsonl");

fn corpus() -> Vec<Value> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("corpus line"))
        .collect()
}

/// Git source failures are labelled "3" in the corpus; fluxmedic splits them into auth and
/// network. The split for each corpus line, by its index.
fn git_subcase(i: usize) -> Case {
    match i {
        44 | 45 => Case::GitUnreachable,
        _ => Case::GitAuth,
    }
}

#[test]
fn every_corpus_condition_gets_its_labelled_case() {
    let rows = corpus();
    assert_eq!(
        rows.len(),
        52,
        "the corpus fixture changed size; review the labels"
    );
    let mut failures = vec![];
    for (i, r) in rows.iter().enumerate() {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let kind = FluxKind::from_kind(&s("kind")).expect("corpus kinds are Flux kinds");
        let got = classify_condition(kind, &s("type"), &s("status"), &s("reason"), &s("message"));
        let want = match s("case").as_str() {
            "1" => Case::FailedRelease,
            "2" => Case::InvalidManifests,
            "3" => git_subcase(i),
            "4" => Case::DependencyCascade,
            "5" => Case::StaleLock,
            "other" => Case::Other,
            other => panic!("unknown label {other}"),
        };
        if got.case != want {
            failures.push(format!(
                "#{i} {} {}/{}: want {want}, got {} ({})",
                s("kind"),
                s("type"),
                s("reason"),
                got.case,
                s("message")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "misclassified corpus lines:\n{}",
        failures.join("\n")
    );
}

#[test]
fn corpus_retryability_of_failed_releases() {
    let rows = corpus();
    // index -> can a retry help (from the corpus notes)
    let expected = [
        (1, true),
        (2, true),
        (3, true),
        (4, false),
        (5, true),
        (6, false),
        (7, false),
    ];
    for (i, want) in expected {
        let r = &rows[i];
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        let got = classify_condition(
            FluxKind::HelmRelease,
            &s("type"),
            &s("status"),
            &s("reason"),
            &s("message"),
        );
        assert_eq!(got.retryable, want, "#{i}: {}", s("message"));
    }
}

#[test]
fn the_fixture_is_the_shared_corpus() {
    // When the shared corpus sits beside the checkout (as in CI), the copy must match it.
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/flux-conditions.jsonl");
    if let Ok(text) = std::fs::read_to_string(&shared) {
        assert_eq!(
            text,
            CORPUS,
            "tests/fixtures/flux-conditions.jsonl is stale; copy {}",
            shared.display()
        );
    }
}

// ---------- snapshot-level ----------

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn ks(name: &str, deps: &[&str], source: &str, conds: Vec<Value>) -> FluxObject {
    let deps: Vec<Value> = deps.iter().map(|d| json!({"name": d})).collect();
    flux::from_value(&json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": name, "namespace": "flux-system"},
        "spec": {"interval": "10m", "dependsOn": deps, "sourceRef": {"kind": "GitRepository", "name": source}},
        "status": {"conditions": conds}}))
    .unwrap()
}

fn git(name: &str, conds: Vec<Value>) -> FluxObject {
    flux::from_value(&json!({
        "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": name, "namespace": "flux-system"},
        "spec": {"url": "http://127.0.0.1:1/repo.git", "secretRef": {"name": "creds"}},
        "status": {"conditions": conds}}))
    .unwrap()
}

fn ready() -> Value {
    cond("Ready", "True", "Succeeded", "ok")
}

fn dep_not_ready(dep: &str) -> Value {
    cond(
        "Ready",
        "False",
        "DependencyNotReady",
        &format!("dependency 'flux-system/{dep}' is not ready"),
    )
}

fn key(kind: FluxKind, name: &str) -> ObjectKey {
    ObjectKey::new(kind, "flux-system", name)
}

#[test]
fn dependency_chain_of_three_roots_at_the_first_failing_ancestor() {
    let snap = Snapshot::new(
        [
            git("repo", vec![ready()]),
            ks(
                "infra",
                &[],
                "repo",
                vec![cond(
                    "Ready",
                    "False",
                    "BuildFailed",
                    "kustomize build failed: yaml: line 3: bad",
                )],
            ),
            ks("platform", &["infra"], "repo", vec![dep_not_ready("infra")]),
            ks(
                "apps",
                &["platform"],
                "repo",
                vec![dep_not_ready("platform")],
            ),
            ks("healthy", &[], "repo", vec![ready()]),
        ],
        0,
    );
    let report = diagnose(&snap);
    assert_eq!(report.diagnoses.len(), 3);
    let apps = report.get(&key(FluxKind::Kustomization, "apps")).unwrap();
    assert_eq!(apps.case, Case::DependencyCascade);
    assert_eq!(apps.root, key(FluxKind::Kustomization, "infra"));
    assert_eq!(
        apps.chain,
        vec![
            key(FluxKind::Kustomization, "platform"),
            key(FluxKind::Kustomization, "infra")
        ]
    );
    let infra = report.get(&key(FluxKind::Kustomization, "infra")).unwrap();
    assert_eq!(infra.case, Case::InvalidManifests);
    assert!(infra.is_root() && !infra.retryable);
    assert_eq!(
        report.shared_roots,
        vec![(key(FluxKind::Kustomization, "infra"), 2)]
    );
    assert_eq!(
        dependents_in_order(&report, &infra.target),
        vec![
            key(FluxKind::Kustomization, "platform"),
            key(FluxKind::Kustomization, "apps")
        ]
    );
}

#[test]
fn a_shared_failing_source_is_the_root_of_its_consumers() {
    let auth = cond(
        "Ready",
        "False",
        "GitOperationFailed",
        "failed to checkout and determine revision: unable to clone 'http://127.0.0.1:1/repo.git': authentication required",
    );
    let mut objs = vec![git("repo", vec![auth])];
    for i in 0..5 {
        objs.push(ks(
            &format!("app{i}"),
            &[],
            "repo",
            vec![cond(
                "Ready",
                "False",
                "ArtifactFailed",
                "Source is not ready, artifact not found, retrying in 30s",
            )],
        ));
    }
    let mut snap = Snapshot::new(objs, 0);
    snap.secrets_observed = true;
    snap.secrets.insert(
        ("flux-system".into(), "creds".into()),
        SecretInfo {
            keys: ["username".to_string()].into(),
            resource_version: None,
        },
    );
    let report = diagnose(&snap);
    let src = report.get(&key(FluxKind::GitRepository, "repo")).unwrap();
    assert_eq!(src.case, Case::GitAuth);
    let secret_ev = src.evidence.iter().find(|e| e.source == "secret").unwrap();
    assert!(
        secret_ev
            .message
            .contains("has keys [username] but a http URL needs username+password or bearerToken"),
        "{}",
        secret_ev.message
    );
    for i in 0..5 {
        let d = report
            .get(&key(FluxKind::Kustomization, &format!("app{i}")))
            .unwrap();
        assert_eq!(
            d.case,
            Case::DependencyCascade,
            "consumers of a failing source cascade"
        );
        assert_eq!(d.root, src.target);
    }
    assert_eq!(report.shared_roots, vec![(src.target.clone(), 5)]);
}

#[test]
fn missing_secret_and_missing_dependency_are_named() {
    let mut snap = Snapshot::new(
        [
            git(
                "repo",
                vec![cond(
                    "Ready",
                    "False",
                    "AuthenticationFailed",
                    "failed to get secret 'flux-system/creds': secrets \"creds\" not found",
                )],
            ),
            ks("orphan", &["ghost"], "other", vec![dep_not_ready("ghost")]),
        ],
        0,
    );
    snap.secrets_observed = true;
    let report = diagnose(&snap);
    let src = report.get(&key(FluxKind::GitRepository, "repo")).unwrap();
    assert!(
        src.evidence
            .iter()
            .any(|e| e.message == "Secret flux-system/creds does not exist")
    );
    let orphan = report.get(&key(FluxKind::Kustomization, "orphan")).unwrap();
    assert_eq!(orphan.root, key(FluxKind::Kustomization, "ghost"));
    assert!(
        orphan
            .evidence
            .iter()
            .any(|e| e.message.contains("does not exist"))
    );
}

#[test]
fn dependency_cycles_terminate() {
    let snap = Snapshot::new(
        [
            ks("a", &["b"], "repo", vec![dep_not_ready("b")]),
            ks("b", &["a"], "repo", vec![dep_not_ready("a")]),
        ],
        0,
    );
    let report = diagnose(&snap);
    assert_eq!(report.diagnoses.len(), 2);
    assert!(
        report
            .diagnoses
            .iter()
            .all(|d| d.case == Case::DependencyCascade)
    );
}

fn hr(name: &str, conds: Vec<Value>, extra_status: Value, suspend: bool) -> FluxObject {
    let mut status = json!({"conditions": conds, "lastAttemptedReleaseAction": "upgrade",
                            "history": [{"name": name, "namespace": "apps", "version": 2, "status": "deployed"}]});
    status
        .as_object_mut()
        .unwrap()
        .extend(extra_status.as_object().unwrap().clone());
    flux::from_value(&json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"interval": "5m", "timeout": "1m", "suspend": suspend, "chart": {"spec": {"chart": name, "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}},
        "status": status}))
    .unwrap()
}

fn stored(release: &str, version: i64, status: &str, modified: i64) -> StoredRelease {
    StoredRelease {
        secret_name: format!("sh.helm.release.v1.{release}.v{version}"),
        namespace: "apps".into(),
        release: release.into(),
        version,
        status: ReleaseStatus(status.into()),
        modified_at: Some(modified),
    }
}

#[test]
fn stale_pending_release_is_a_stale_lock_even_when_suspended() {
    let obj = hr("web", vec![ready()], json!({}), true);
    let mut snap = Snapshot::new([obj], 10_000);
    snap.add_release(stored("web", 1, "superseded", 100));
    snap.add_release(stored("web", 2, "pending-upgrade", 10_000 - 361));
    let d = diagnose(&snap);
    assert_eq!(d.diagnoses.len(), 1);
    assert_eq!(d.diagnoses[0].case, Case::StaleLock);
    assert_eq!(d.diagnoses[0].evidence[0].source, "helm-storage");

    // Younger than Helm's default timeout (5m) + 1m: helm may still be working, whatever
    // shorter timeout (1m here) the HelmRelease claims.
    let mut snap = Snapshot::new([hr("web", vec![ready()], json!({}), true)], 10_000);
    snap.add_release(stored("web", 2, "pending-upgrade", 10_000 - 300));
    assert!(diagnose(&snap).diagnoses.is_empty());
}

#[test]
fn a_running_helm_action_is_never_a_stale_lock() {
    let running = cond(
        "Reconciling",
        "True",
        "Progressing",
        "Running 'upgrade' action with timeout of 1m0s",
    );
    let obj = hr(
        "web",
        vec![
            running,
            cond(
                "Ready",
                "Unknown",
                "Progressing",
                "Running 'upgrade' action with timeout of 1m0s",
            ),
        ],
        json!({}),
        false,
    );
    let mut snap = Snapshot::new([obj], 10_000);
    snap.add_release(stored("web", 2, "pending-upgrade", 0));
    assert!(diagnose(&snap).diagnoses.is_empty());
}

#[test]
fn failed_release_native_state() {
    let upgrade_failed = || {
        cond(
            "Ready",
            "False",
            "UpgradeFailed",
            "Helm upgrade failed for release apps/web with chart web@1.0.1: context deadline exceeded",
        )
    };
    // retries left -> Flux is still retrying
    let o = hr(
        "web",
        vec![upgrade_failed()],
        json!({"upgradeFailures": 1}),
        false,
    );
    let d = diagnose_object(&Snapshot::new([o.clone()], 0), &o).unwrap();
    assert_eq!(
        (d.case, d.native, d.retryable),
        (Case::FailedRelease, NativeState::Exhausted, true)
    );
    // stalled -> exhausted
    let o = hr(
        "web",
        vec![
            upgrade_failed(),
            cond(
                "Stalled",
                "True",
                "RetriesExceeded",
                "Failed to upgrade after 1 attempt(s)",
            ),
        ],
        json!({"upgradeFailures": 1}),
        false,
    );
    let d = diagnose_object(&Snapshot::new([o.clone()], 0), &o).unwrap();
    assert_eq!(d.native, NativeState::Exhausted);
    assert!(d.retryable);
    // native rollback done
    let o = hr(
        "web",
        vec![cond(
            "Ready",
            "False",
            "RollbackSucceeded",
            "Helm rollback to previous release apps/web.v2 with chart web@1.0.0 succeeded",
        )],
        json!({}),
        false,
    );
    let d = diagnose_object(&Snapshot::new([o.clone()], 0), &o).unwrap();
    assert_eq!(d.native, NativeState::Remediated);
    assert!(!d.retryable);
}

#[test]
fn health_check_on_a_failing_helmrelease_cascades_across_kinds() {
    let failing_hr = hr(
        "crossplane",
        vec![cond(
            "Ready",
            "False",
            "UpgradeFailed",
            "Helm upgrade failed for release apps/crossplane with chart c@1: context deadline exceeded",
        )],
        json!({}),
        false,
    );
    let k = ks(
        "infra",
        &[],
        "repo",
        vec![cond(
            "Ready",
            "False",
            "HealthCheckFailed",
            "health check failed after 43ms: failed early due to stalled resources: [HelmRelease/apps/crossplane status: 'Failed']",
        )],
    );
    let snap = Snapshot::new([failing_hr.clone(), k, git("repo", vec![ready()])], 0);
    let report = diagnose(&snap);
    let d = report.get(&key(FluxKind::Kustomization, "infra")).unwrap();
    assert_eq!(d.case, Case::DependencyCascade);
    assert_eq!(d.root, failing_hr.key);
}

#[test]
fn huge_messages_are_bounded_in_evidence() {
    let msg = format!("kustomize build failed: {}", "é".repeat(10_000));
    let o = ks(
        "big",
        &[],
        "repo",
        vec![cond("Ready", "False", "BuildFailed", &msg)],
    );
    let d = diagnose_object(&Snapshot::new([o.clone()], 0), &o).unwrap();
    assert!(d.evidence[0].message.len() < MAX_EVIDENCE_MESSAGE + 64);
    assert!(d.evidence[0].message.ends_with("bytes truncated)"));
}

#[test]
fn only_failing_git_sources_with_unknown_secret_keys_are_inspected() {
    let failing = cond(
        "Ready",
        "False",
        "GitOperationFailed",
        "unable to clone 'x': authentication required",
    );
    let mut snap = Snapshot::new([git("repo", vec![failing]), git("ok", vec![ready()])], 0);
    // Known but not yet inspected: listed. Both sources reference "creds"; listed once.
    snap.secrets.insert(
        ("flux-system".into(), "creds".into()),
        SecretInfo::default(),
    );
    assert_eq!(
        snap.uninspected_source_secrets(),
        vec![("flux-system".to_string(), "creds".to_string())]
    );
    // Inspected already: not again.
    snap.secrets
        .get_mut(&("flux-system".to_string(), "creds".to_string()))
        .unwrap()
        .keys
        .insert("username".into());
    assert!(snap.uninspected_source_secrets().is_empty());
    // Absent from the snapshot: known missing, nothing to fetch.
    snap.secrets.clear();
    assert!(snap.uninspected_source_secrets().is_empty());
}

/// A source between two failed attempts (Ready Unknown while Flux reconciles it) does not
/// change what its consumers' failure is: their incidents stay the same ones (a changed case
/// would close each consumer's record and open another, for every retry of the root).
#[test]
fn consumers_keep_their_case_while_their_failing_source_is_between_attempts() {
    let waiting = cond(
        "Ready",
        "False",
        "ArtifactFailed",
        "Source artifact not found, retrying in 30s",
    );
    let case_of_app = |source: Value| {
        let snap = Snapshot::new(
            [
                git("repo", vec![source]),
                ks("app", &[], "repo", vec![waiting.clone()]),
            ],
            0,
        );
        diagnose(&snap)
            .get(&key(FluxKind::Kustomization, "app"))
            .map(|d| d.case)
    };
    let failing = cond(
        "Ready",
        "False",
        "GitOperationFailed",
        "failed to checkout and determine revision: unable to clone 'http://127.0.0.1:1/repo.git': authentication required",
    );
    let between = cond(
        "Ready",
        "Unknown",
        "Progressing",
        "reconciliation in progress",
    );
    assert_eq!(case_of_app(failing.clone()), Some(Case::DependencyCascade));
    assert_eq!(case_of_app(between.clone()), Some(Case::DependencyCascade));
    // And the same root: the record is not rewritten for the moment in between.
    let root_of_app = |source: Value| {
        let snap = Snapshot::new(
            [
                git("repo", vec![source]),
                ks("app", &[], "repo", vec![waiting.clone()]),
            ],
            0,
        );
        let d = diagnose(&snap);
        let d = d.get(&key(FluxKind::Kustomization, "app")).unwrap();
        (d.root.clone(), d.evidence.clone())
    };
    assert_eq!(root_of_app(failing), root_of_app(between));
    assert_eq!(root_of_app(ready()).0, key(FluxKind::Kustomization, "app"));
    // The source is Ready and the consumer still says it waits: its own problem now.
    assert_eq!(case_of_app(ready()), Some(Case::Other));
}

#[test]
fn waiting_on_a_source_that_is_working_is_not_an_incident_until_it_lasts() {
    let now = 1_800_000_000;
    let not_ready = |age: i64| {
        let t = jiff::Timestamp::from_second(now - age).unwrap().to_string();
        vec![
            json!({"type": "Ready", "status": "False", "reason": "SourceNotReady", "lastTransitionTime": t,
            "message": "HelmChart 'apps/apps-web' is not ready: latest generation of object has not been reconciled"}),
        ]
    };
    let chart = |conds: Vec<Value>| {
        flux::from_value(
            &json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmChart",
            "metadata": {"name": "apps-web", "namespace": "apps"},
            "spec": {"sourceRef": {"kind": "HelmRepository", "name": "charts"}},
            "status": {"conditions": conds}}),
        )
        .unwrap()
    };
    let reconciling = chart(vec![
        json!({"type": "Ready", "status": "Unknown", "reason": "Progressing", "message": "reconciling"}),
    ]);
    // A second into a chart version change: Flux at work.
    let snap = Snapshot::new(
        [
            hr("web", not_ready(1), json!({}), false),
            reconciling.clone(),
        ],
        now,
    );
    assert!(diagnose(&snap).diagnoses.is_empty());
    // Still waiting after the grace: recorded.
    let snap = Snapshot::new(
        [hr("web", not_ready(600), json!({}), false), reconciling],
        now,
    );
    assert_eq!(diagnose(&snap).diagnoses.len(), 1);
    // The chart fails: the HelmRelease is part of the chart's cascade at once.
    let failing = chart(vec![
        json!({"type": "Ready", "status": "False", "reason": "ChartPullError",
        "message": "invalid chart reference: failed to get chart version for remote reference: no 'web' chart with version matching '9.9.9' found"}),
    ]);
    let snap = Snapshot::new([hr("web", not_ready(1), json!({}), false), failing], now);
    let report = diagnose(&snap);
    let d = report
        .diagnoses
        .iter()
        .find(|d| d.target.kind == FluxKind::HelmRelease)
        .unwrap();
    assert_eq!(d.case, Case::DependencyCascade);
    assert_eq!(d.root.kind, FluxKind::HelmChart);
}

/// Conditions of Flux releases after the ones built here (2.8: helm-controller v1.5,
/// kustomize-controller v1.8; and the controllers' main branches, the road to 2.10), read from
/// their sources: understood, or ignored, never misread as a failure.
#[test]
fn newer_flux_conditions_are_understood_or_ignored() {
    let now = 1_800_000_000;
    let one = |o: FluxObject| diagnose(&Snapshot::new([o], now)).diagnoses;
    // kustomize-controller v1.8.0+ internal/controller/kustomization_controller.go and
    // helm-controller v1.6.0+ internal/controller/helmrelease_controller.go: a new
    // reconciliation cancels the running health checks. Flux is at work: no incident.
    let canceled = json!({"type": "Ready", "status": "False", "reason": "HealthCheckCanceled",
        "message": "New reconciliation triggered by GitRepository/apps/repo"});
    assert!(one(ks("app", &[], "repo", vec![canceled.clone()])).is_empty());
    assert!(one(hr("web", vec![canceled], json!({}), false)).is_empty());
    // helm-controller v1.6.0+ internal/reconcile/atomic_release.go: the Drifted condition
    // (spec.driftDetection mode warn/enabled) beside a Ready release: not a failure.
    let drifted = vec![
        json!({"type": "Ready", "status": "True", "reason": "UpgradeSucceeded", "message": "Helm upgrade succeeded"}),
        json!({"type": "Drifted", "status": "True", "reason": "DriftDetected",
               "message": "Cluster state of release apps/web.v3 has drifted from the desired state:\nDeployment/apps/web changed (0 additions, 1 changes, 0 removals)"}),
    ];
    assert!(one(hr("web", drifted, json!({}), false)).is_empty());
    let no_drift = vec![
        json!({"type": "Ready", "status": "True", "reason": "UpgradeSucceeded", "message": "ok"}),
        json!({"type": "Drifted", "status": "False", "reason": "NoDriftDetected", "message": "No drift detected against the cluster state"}),
    ];
    assert!(one(hr("web", no_drift, json!({}), false)).is_empty());
    // helm-controller (unchanged since v0.37): Stalled/MissingRollbackTarget is a failed
    // release a retry cannot fix; the plan says what a person must do (see policy tests).
    let missing = vec![
        json!({"type": "Ready", "status": "False", "reason": "UpgradeFailed", "message": "Helm upgrade failed for release apps/web with chart web@2: context deadline exceeded"}),
        json!({"type": "Stalled", "status": "True", "reason": "MissingRollbackTarget",
               "message": "Failed to perform remediation: missing target release for rollback: cannot remediate failed release"}),
    ];
    let d = one(hr("web", missing, json!({}), false));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].case, Case::FailedRelease);
    assert!(!d[0].retryable);
    assert!(
        d[0].evidence
            .iter()
            .any(|e| e.reason == "MissingRollbackTarget")
    );
}

/// The credentials evidence knows what each source kind reads from its Secret.
#[test]
fn secret_evidence_names_the_keys_each_source_kind_needs() {
    let failing = |kind: &str, spec: Value| {
        flux::from_value(
            &json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": kind,
            "metadata": {"name": "src", "namespace": "apps"}, "spec": spec,
            "status": {"conditions": [cond("Ready", "False", "Failed", "401 Unauthorized")]}}),
        )
        .unwrap()
    };
    let secret_message = |o: flux::FluxObject, keys: &[&str]| {
        let mut snap = Snapshot::new([o.clone()], 0);
        snap.secrets_observed = true;
        snap.secrets.insert(
            ("apps".into(), "creds".into()),
            SecretInfo {
                keys: keys.iter().map(|k| k.to_string()).collect(),
                resource_version: None,
            },
        );
        assert_eq!(snap.uninspected_source_secrets(), vec![]);
        let report = diagnose(&snap);
        let d = report.get(&o.key).unwrap();
        assert_eq!(d.case, Case::GitAuth, "{d:?}");
        d.evidence
            .iter()
            .find(|e| e.source == "secret")
            .map(|e| e.message.clone())
            .unwrap()
    };
    let oci = failing(
        "OCIRepository",
        json!({"url": "oci://r/app", "secretRef": {"name": "creds"}}),
    );
    let m = secret_message(oci.clone(), &["username", "password"]);
    assert!(
        m.contains("but a OCIRepository needs .dockerconfigjson"),
        "{m}"
    );
    let m = secret_message(oci, &[".dockerconfigjson"]);
    assert!(m.contains("the server rejects them"), "{m}");
    let repo = failing(
        "HelmRepository",
        json!({"url": "https://charts/", "secretRef": {"name": "creds"}}),
    );
    let m = secret_message(repo, &["token"]);
    assert!(
        m.contains("but a HelmRepository needs username+password or .dockerconfigjson"),
        "{m}"
    );
    let bucket = failing(
        "Bucket",
        json!({"bucketName": "b", "endpoint": "s3", "secretRef": {"name": "creds"}}),
    );
    let m = secret_message(bucket, &["accesskey", "secretkey"]);
    assert!(m.contains("the server rejects them"), "{m}");
}
