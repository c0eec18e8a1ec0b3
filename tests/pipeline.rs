//! The whole pure pipeline under arbitrary input, as the operator runs it: watch events
//! (Flux objects, Helm storage, policies, records, forged or edited ones among them) go into
//! the index, each round takes a snapshot, diagnoses it, and decides every target
//! (`incident::decide`: policy selection, plan, incident lifecycle); the operator's executor
//! performs the effects against the in-memory API server (`executor::memory`), action outcomes
//! drawn at random.
//!
//! For every input: no panic, and every effect stays inside what today's policy allows:
//! an action runs only under a policy whose mode allows it (approved if needed), writes only
//! in namespaces that policy may change, touches Helm storage only of the release verified to
//! be the target's, and never comes from a record fluxmedic did not seal. `PROPTEST_CASES`
//! sets the number of cases (`task fuzz` runs a long campaign).

use std::collections::BTreeMap;

use fluxmedic::remedy::REQUESTED_AT;
use fluxmedic::{
    api::{
        APPROVE_ANNOTATION, INTENT_ANNOTATION, Mode, POLICY_APPROVAL_PREFIX, Remediation,
        RemediationPolicy, RemediationStatus, SEAL_ANNOTATION, SUSPENDED_BY_ANNOTATION,
    },
    controller::index::{self, Index},
    diagnose::{self, Case},
    executor::{
        Cur, Executor, Target,
        memory::{Call, Memory, State},
    },
    flux::{FluxKind, ObjectKey},
    incident::{self, Effect, Record, Scene, Transition, Trust, decide, seal::Sealer},
    policy::{self, Action, Policy},
};
use futures::executor::block_on;
use proptest::{prelude::*, strategy::ValueTree};
use serde_json::{Value, json};

const OPERATOR_NS: &str = "flux-system";
const NAMESPACES: [&str; 3] = ["apps", "prod", "flux-system"];
const NAMES: [&str; 3] = ["web", "app", "repo"];

fn corpus() -> Vec<Value> {
    let text = include_str!("fixtures/flux-conditions.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Conditions Flux writes for `kind`: the labelled corpus, mostly, and odd ones.
fn arb_condition(kind: &'static str) -> impl Strategy<Value = Value> {
    let mut real: Vec<Value> = corpus().into_iter().filter(|c| c["kind"] == kind).collect();
    if real.is_empty() {
        real = corpus();
    }
    prop_oneof![
        6 => prop::sample::select(real).prop_map(|c| json!({"type": c["type"], "status": c["status"],
            "reason": c["reason"], "message": c["message"], "lastTransitionTime": "2026-01-01T00:00:00Z"})),
        1 => (prop::sample::select(vec!["Ready", "Stalled", "Reconciling"]),
              prop::sample::select(vec!["True", "False", "Unknown"]), ".{0,20}", ".{0,80}")
            .prop_map(|(t, s, r, m)| json!({"type": t, "status": s, "reason": r, "message": m})),
    ]
}

fn arb_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["1s", "30s", "5m", "1h", "0", "500ms", "1.5h"]),
        1 => prop::sample::select(vec!["99999999999999999999h", "2562047h47m16s854775807ns", "bogus", ""]),
    ]
    .prop_map(String::from)
}

fn arb_ref() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "GitRepository",
            "HelmRepository",
            "OCIRepository",
            "HelmChart",
            "Bucket",
            "ExternalArtifact",
            "",
        ]),
        prop::sample::select(NAMES.to_vec()),
        prop::option::of(prop::sample::select(NAMESPACES.to_vec())),
    )
        .prop_map(|(k, n, ns)| {
            let mut r = json!({"name": n});
            if !k.is_empty() {
                r["kind"] = json!(k);
            }
            if let Some(ns) = ns {
                r["namespace"] = json!(ns);
            }
            r
        })
}

/// A Flux object of any kind, with fields that matter to the pipeline drawn from odd and
/// real values (corpus conditions, cross-namespace refs, storage namespaces, suspensions).
fn arb_flux() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
        ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
        ("helm.toolkit.fluxcd.io/v2beta2", "HelmRelease"),
        ("source.toolkit.fluxcd.io/v1", "GitRepository"),
        ("source.toolkit.fluxcd.io/v1", "HelmChart"),
        ("source.toolkit.fluxcd.io/v1", "OCIRepository"),
    ])
    .prop_flat_map(|(api, kind)| (
        Just((api, kind)),
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(NAMES.to_vec()),
        (prop::bool::weighted(0.2), prop::option::of(prop::sample::select(vec!["hr-web-1", "someone"])), 1i64..6),
        prop::collection::vec(arb_condition(kind), 1..3),
        (arb_ref(), prop::collection::vec(arb_ref(), 0..2), arb_duration()),
        (prop::option::of(prop::sample::select(NAMESPACES.to_vec())), any::<bool>(), any::<bool>(),
         prop::option::of(prop::sample::select(vec!["web", "app", "a-release-name-that-is-much-longer-than-fifty-three-chars"]))),
    ))
        .prop_map(|((api, kind), ns, name, (suspend, by, generation), conds, (src, deps, interval), (storage, remote, sa, release))| {
            let mut ann = serde_json::Map::new();
            if let Some(b) = by {
                ann.insert(SUSPENDED_BY_ANNOTATION.into(), json!(b));
            }
            let mut spec = json!({"suspend": suspend, "interval": interval, "dependsOn": deps, "sourceRef": src,
                "url": "http://127.0.0.1/x.git", "secretRef": {"name": "creds"},
                "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "repo"}}}});
            if let Some(s) = storage {
                spec["storageNamespace"] = json!(s);
                spec["targetNamespace"] = json!(s);
            }
            if let Some(r) = release {
                spec["releaseName"] = json!(r);
            }
            if remote {
                spec["kubeConfig"] = json!({"secretRef": {"name": "kc"}});
            }
            if sa {
                spec["serviceAccountName"] = json!("deployer");
            }
            json!({"apiVersion": api, "kind": kind,
                   "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "generation": generation, "annotations": ann},
                   "spec": spec,
                   "status": {"conditions": conds, "upgradeFailures": 2, "lastAttemptedReleaseAction": "upgrade",
                              "artifact": {"revision": "main@sha1:abc"},
                              "history": [{"name": name, "namespace": ns, "version": 2, "status": "failed"}]}})
        })
}

fn arb_policy() -> impl Strategy<Value = Value> {
    let cases: Vec<&str> = Case::ALL.iter().map(|c| c.as_str()).collect();
    (
        prop_oneof![2 => Just("flux-system"), 1 => Just("apps"), 1 => Just("prod")],
        prop::collection::vec(
            (
                prop::sample::select(cases),
                prop_oneof![4 => Just("Auto"), 1 => Just("RequireApproval"), 1 => Just("Observe"), 1 => Just("Off")],
                prop::collection::vec(prop::sample::select(vec!["Reconcile", "Retry", "Rollback", "Unlock", "DeletePendingRelease"]), 0..3),
            ),
            1..7,
        ),
        prop::collection::vec(prop_oneof![3 => Just("*"), 1 => Just("apps"), 1 => Just("prod"), 1 => Just("flux-system")], 0..2),
        (arb_duration(), arb_duration(), prop_oneof![1 => Just(0u32), 6 => 1u32..5], -5i32..5),
        prop_oneof![4 => Just(1000u32), 1 => 1u32..30],
    )
        .prop_map(|(ns, rules, namespaces, (cooldown, escalate, attempts, priority), breaker)| {
            // One rule per case (the CRD's rule): the first of each wins.
            let mut seen = std::collections::BTreeSet::new();
            let rules: Vec<Value> = rules
                .into_iter()
                .filter(|(c, _, _)| seen.insert(*c))
                .map(|(c, m, a)| json!({"case": c, "mode": m, "actions": a}))
                .collect();
            json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "RemediationPolicy",
                   "metadata": {"name": format!("p{priority}"), "namespace": ns},
                   "spec": {"rules": rules, "priority": priority, "targets": {"namespaces": namespaces},
                            "limits": {"cooldown": cooldown, "maxAttempts": attempts, "pollInterval": "1s", "maxPollInterval": "5m"},
                            "escalation": {"after": escalate}, "circuitBreaker": {"maxFailingTargets": breaker}}})
        })
}

/// A record nobody should trust: forged, or a real one's shape with an edited step.
fn arb_forged_record() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(NAMES.to_vec()),
        prop::sample::select(vec!["HelmRelease", "Kustomization", "GitRepository"]),
        any::<bool>(),
    )
        .prop_map(|(ns, target_ns, name, kind, approval)| {
            let evil = json!({"UnlockRelease": {"namespace": "prod", "secret": "sh.helm.release.v1.web.v2", "version": 2, "delete": true,
                "release": {"name": "web", "storageNamespace": "prod", "namespace": "prod"}}});
            let step = json!({"action": "delete-pending-release", "detail": evil.to_string(), "outcome": "Running", "token": "evil", "startedAt": "2026-01-01T00:00:00Z"});
            json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "Remediation",
                   "metadata": {"name": format!("forged-{name}"), "namespace": ns,
                                "annotations": {INTENT_ANNOTATION: step.to_string(), SEAL_ANNOTATION: "00", "fluxmedic.io/approve": "forged"}},
                   "spec": {"target": {"kind": kind, "namespace": target_ns, "name": name}, "targetName": "x", "case": "stale-lock"},
                   "status": {"phase": "Remediating", "steps": [step], "seal": "deadbeef",
                              "approval": if approval { json!({"action": "delete", "detail": evil.to_string(), "id": "forged", "how": "-"}) } else { Value::Null }}})
        })
}

#[derive(Clone, Debug)]
enum Ev {
    Flux(Value),
    DeleteFlux(usize),
    Release {
        ns: &'static str,
        release: &'static str,
        version: i64,
        status: &'static str,
        age: i64,
    },
    Policy(Value),
    Forged(Value),
    /// An approver edits the n-th record fluxmedic wrote (its status, attempts reset).
    Edit(usize),
    /// Someone writes back the first status fluxmedic wrote in the n-th record, or removes
    /// its status, or deletes it and re-creates it from a saved copy.
    WriteBack(usize),
    RemoveStatus(usize),
    Recreate(usize),
    /// A person approves what the n-th record asks for: on the record (`Approve`), or on the
    /// policy of the operator's namespace that decided (`ApproveOnPolicy`); or writes an
    /// approval before anything was asked (`ApproveEarly`).
    Approve(usize),
    ApproveOnPolicy(usize),
    ApproveEarly(usize),
    /// A HelmRelease whose upgrade failed for good, with its Helm history (1 deployed, 2
    /// failed): the rollback path.
    BrokenRelease {
        ns: &'static str,
        name: &'static str,
        retryable: bool,
    },
}

fn arb_event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        5 => arb_flux().prop_map(Ev::Flux),
        1 => any::<usize>().prop_map(Ev::DeleteFlux),
        3 => (prop::sample::select(NAMESPACES.to_vec()), prop::sample::select(vec!["web", "app"]), 1i64..4,
              prop::sample::select(vec!["deployed", "failed", "superseded", "pending-upgrade", "pending-rollback"]), 0i64..7200)
            .prop_map(|(ns, release, version, status, age)| Ev::Release { ns, release, version, status, age }),
        3 => arb_policy().prop_map(Ev::Policy),
        1 => arb_forged_record().prop_map(Ev::Forged),
        2 => any::<usize>().prop_map(Ev::Edit),
        1 => any::<usize>().prop_map(Ev::WriteBack),
        1 => any::<usize>().prop_map(Ev::RemoveStatus),
        1 => any::<usize>().prop_map(Ev::Recreate),
        1 => any::<usize>().prop_map(Ev::Approve),
        1 => any::<usize>().prop_map(Ev::ApproveOnPolicy),
        1 => any::<usize>().prop_map(Ev::ApproveEarly),
        2 => (prop::sample::select(NAMESPACES.to_vec()), prop::sample::select(vec!["web", "app"]), any::<bool>())
            .prop_map(|(ns, name, retryable)| Ev::BrokenRelease { ns, name, retryable }),
    ]
}

const NOW: i64 = 1_800_000_000;

/// What the campaign exercised (printed at the end), so a generator that stops reaching the
/// actions shows.
static STATS: std::sync::Mutex<BTreeMap<&'static str, u64>> =
    std::sync::Mutex::new(BTreeMap::new());

struct World {
    idx: Index,
    sealer: Sealer,
    /// The API server: records, the Flux objects actions write, the executor's ledger.
    api: Memory,
    /// Approval ids handed out so far (each pass's are fresh).
    nonces: u64,
    /// The first status the executor wrote per record (what a replay writes back).
    first_status: BTreeMap<(String, String), RemediationStatus>,
    /// The ledger as last persisted: what a restarted operator starts from.
    persisted: incident::Ledger,
    /// Crash points still to use: each execution takes one (`Some(n)`: the process stops
    /// after n more writes and restarts).
    crashes: Vec<Option<usize>>,
}

impl World {
    fn new() -> Self {
        World {
            idx: Index::default(),
            sealer: Sealer::from_key(b"the operator's key, 32 bytes long"),
            api: Memory::new(State {
                now: NOW,
                ..Default::default()
            }),
            nonces: 0,
            first_status: BTreeMap::new(),
            persisted: incident::Ledger::default(),
            crashes: vec![],
        }
    }

    fn apply(&mut self, ev: &Ev) {
        match ev {
            Ev::Flux(v) => {
                let key = (
                    v["metadata"]["namespace"].as_str().unwrap().to_string(),
                    v["metadata"]["name"].as_str().unwrap().to_string(),
                );
                let kind = FluxKind::from_kind(v["kind"].as_str().unwrap()).unwrap();
                index::apply_flux(&mut self.idx, kind, &key, v);
            }
            Ev::DeleteFlux(i) => {
                if let Some(k) = self
                    .idx
                    .objects
                    .keys()
                    .nth(i % self.idx.objects.len().max(1))
                    .cloned()
                {
                    index::delete_flux(&mut self.idx, k.kind, &(k.namespace, k.name));
                }
            }
            Ev::Release {
                ns,
                release,
                version,
                status,
                age,
            } => {
                let labels = BTreeMap::from([
                    ("owner".to_string(), "helm".to_string()),
                    ("name".to_string(), release.to_string()),
                    ("status".to_string(), status.to_string()),
                    ("version".to_string(), version.to_string()),
                    ("modifiedAt".to_string(), (NOW - age).to_string()),
                ]);
                let key = (
                    ns.to_string(),
                    format!("sh.helm.release.v1.{release}.v{version}"),
                );
                index::apply_secret(&mut self.idx, &key, &labels, "1".into());
            }
            Ev::Policy(v) => {
                if let Ok(p) = serde_json::from_value::<RemediationPolicy>(v.clone()) {
                    let key = (
                        v["metadata"]["namespace"].as_str().unwrap().into(),
                        v["metadata"]["name"].as_str().unwrap().into(),
                    );
                    index::put_policy(&mut self.idx, Some(p), key);
                }
            }
            Ev::Forged(v) => {
                if let Ok(r) = serde_json::from_value::<Remediation>(v.clone()) {
                    let key = (
                        v["metadata"]["namespace"].as_str().unwrap().into(),
                        v["metadata"]["name"].as_str().unwrap().into(),
                    );
                    self.api.state().records.insert(key, r);
                }
            }
            Ev::Edit(i) => {
                let mut st = self.api.state();
                let n = st.records.len();
                if let Some(r) = st.records.values_mut().nth(i % n.max(1))
                    && let Some(s) = r.status.as_mut()
                {
                    s.attempts = 0;
                    if let Some(step) = s.steps.last_mut() {
                        step.outcome = fluxmedic::api::StepOutcome::Running;
                        step.detail = Some(json!({"UnlockRelease": {"namespace": "prod", "secret": "sh.helm.release.v1.web.v2",
                            "version": 2, "delete": true, "release": {"name": "web", "storageNamespace": "prod", "namespace": "prod"}}}).to_string());
                    }
                }
            }
            Ev::WriteBack(i) | Ev::RemoveStatus(i) | Ev::Recreate(i) => {
                let mut st = self.api.state();
                let n = st.records.len();
                let Some(k) = st.records.keys().nth(i % n.max(1)).cloned() else {
                    return;
                };
                let first = self.first_status.get(&k).cloned();
                st.next_uid += 1;
                let copy = format!("uid-copy-{}", st.next_uid);
                let r = st.records.get_mut(&k).unwrap();
                match ev {
                    Ev::WriteBack(_) => r.status = first,
                    Ev::RemoveStatus(_) => r.status = None,
                    _ => r.metadata.uid = Some(copy),
                }
            }
            Ev::BrokenRelease {
                ns,
                name,
                retryable,
            } => {
                let cause = if *retryable {
                    "context deadline exceeded"
                } else {
                    "values don't meet the specifications of the schema(s)"
                };
                let hr = json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
                    "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "generation": 2},
                    "spec": {"interval": "1h", "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "repo"}}}},
                    "status": {"observedGeneration": 2, "upgradeFailures": 1, "lastAttemptedReleaseAction": "upgrade",
                               "history": [{"name": name, "namespace": ns, "version": 2, "status": "failed"}],
                               "conditions": [
                                   {"type": "Ready", "status": "False", "reason": "UpgradeFailed", "lastTransitionTime": "2026-01-01T00:00:00Z",
                                    "message": format!("Helm upgrade failed for release {ns}/{name} with chart web@2: {cause}")},
                                   {"type": "Stalled", "status": "True", "reason": "RetriesExceeded", "message": "Failed to upgrade after 1 attempt(s)"}]}});
                index::apply_flux(
                    &mut self.idx,
                    FluxKind::HelmRelease,
                    &(ns.to_string(), name.to_string()),
                    &hr,
                );
                for (v, st) in [(1, "deployed"), (2, "failed")] {
                    let labels = BTreeMap::from([
                        ("owner".to_string(), "helm".to_string()),
                        ("name".to_string(), name.to_string()),
                        ("status".to_string(), st.to_string()),
                        ("version".to_string(), v.to_string()),
                        ("modifiedAt".to_string(), (NOW - 600).to_string()),
                    ]);
                    index::apply_secret(
                        &mut self.idx,
                        &(ns.to_string(), format!("sh.helm.release.v1.{name}.v{v}")),
                        &labels,
                        "1".into(),
                    );
                }
            }
            Ev::Approve(i) | Ev::ApproveEarly(i) => {
                let mut st = self.api.state();
                let n = st.records.len();
                if let Some(r) = st.records.values_mut().nth(i % n.max(1)) {
                    let id = match ev {
                        Ev::Approve(_) => r
                            .status
                            .as_ref()
                            .and_then(|s| s.approval.as_ref())
                            .map(|a| a.id.clone())
                            .unwrap_or_default(),
                        // Before the plan asks: whatever a person could guess.
                        _ => "0000000000000000".into(),
                    };
                    r.metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(APPROVE_ANNOTATION.into(), id);
                }
            }
            Ev::ApproveOnPolicy(i) => {
                let st = self.api.state();
                let n = st.records.len();
                let given = st.records.values().nth(i % n.max(1)).and_then(|r| {
                    let id = r.status.as_ref()?.approval.as_ref()?.id.clone();
                    let path = format!(
                        "{}/{}",
                        kube::ResourceExt::namespace(r).unwrap_or_default(),
                        kube::ResourceExt::name_any(r)
                    );
                    Some((id, path))
                });
                if let Some((id, path)) = given {
                    for p in self.idx.policies.values_mut() {
                        let mut p2 = (**p).clone();
                        p2.metadata
                            .annotations
                            .get_or_insert_default()
                            .insert(format!("{POLICY_APPROVAL_PREFIX}{id}"), path.clone());
                        *p = std::sync::Arc::new(p2);
                    }
                }
            }
        }
    }

    /// The snapshot and the policies as the operator sees them.
    fn inputs(&self) -> (fluxmedic::diagnose::Snapshot, Vec<Policy>) {
        let mut snap = self.idx.snapshot(NOW);
        // As the operator is told where helm-controller's Deployment cannot be read.
        snap.helm_controller = Some(fluxmedic::flux::HelmControllerIdentity::Unrestricted {
            service_account: fluxmedic::flux::ServiceAccountRef::new(
                "flux-system",
                "helm-controller",
            ),
        });
        let policies: Vec<Policy> = self
            .idx
            .policies
            .values()
            .filter_map(|p| {
                Policy::new(
                    p.metadata.namespace.as_deref().unwrap(),
                    p.metadata.name.as_deref().unwrap(),
                    p.spec.clone(),
                )
                .ok()
                .map(|pol| pol.with_approvals(&p.metadata.annotations.clone().unwrap_or_default()))
            })
            .collect();
        (snap, policies)
    }

    /// One evaluation pass: decide every target, check every effect, have the executor
    /// perform them against the in-memory API server. Returns how many effects changed
    /// something (a record created, written or closed, an action, a hold released).
    fn pass(&mut self, outcomes: &mut impl Iterator<Item = bool>) -> Result<usize, TestCaseError> {
        let mut changes = 0;
        let records = self.read_records();
        let (snap, policies) = self.inputs();
        let report = diagnose::diagnose(&snap);
        let breakers = policy::Breakers::new(
            report.diagnoses.iter().map(|d| d.target.namespace.as_str()),
            &policies,
            OPERATOR_NS,
            1000,
        );
        let none = policy::Pollers::new();
        let bare = Scene {
            snap: &snap,
            report: &report,
            policies: &policies,
            operator_namespace: OPERATOR_NS,
            breakers: &breakers,
            pollers: &none,
        };
        let pollers = fluxmedic::incident::pollers(&bare, &records);
        let mut open: BTreeMap<ObjectKey, Record> = BTreeMap::new();
        for r in records.into_iter().filter(|r| r.is_open()) {
            open.insert(r.target.clone(), r);
        }
        let mut work: Vec<(ObjectKey, Option<diagnose::Diagnosis>, Option<Record>)> = report
            .diagnoses
            .iter()
            .map(|d| (d.target.clone(), Some(d.clone()), open.remove(&d.target)))
            .collect();
        work.extend(open.into_iter().map(|(k, r)| (k, None, Some(r))));
        let scene = Scene {
            pollers: &pollers,
            ..bare
        };
        self.api.state().objects = snap
            .objects
            .iter()
            .map(|(k, o)| (k.clone(), (**o).clone()))
            .collect();
        for (key, d, rec) in work {
            let nonce = format!("{:016x}", self.nonces);
            self.nonces += 1;
            // A timestamp, as the engine's tokens are (Flux's controllers and fluxmedic read them so).
            let token = incident::rfc3339(NOW);
            let effects = decide(&scene, &key, d.as_ref(), rec.as_ref(), &token, &nonce);
            check(&scene, &key, rec.as_ref(), &effects)?;
            count_kinds(&effects);
            changes += usize::from(effects.action.is_some());
            changes += effects
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        Effect::Open { .. }
                            | Effect::Write(_)
                            | Effect::Close(_)
                            | Effect::ReleaseHold
                    )
                })
                .count();
            self.execute(&snap, &key, rec.as_ref(), effects, outcomes);
        }
        self.after_pass();
        Ok(changes)
    }

    /// The records as the engine reads them at the start of a pass (the ledger forgets a
    /// record that is gone at once here), put into the index.
    fn read_records(&mut self) -> Vec<Record> {
        let mut st = self.api.state();
        let present: std::collections::HashSet<String> = st
            .records
            .values()
            .filter_map(|r| r.metadata.uid.clone())
            .collect();
        st.ledger.records.retain(|uid, _| present.contains(uid));
        for (k, r) in &st.records {
            self.idx
                .remediations
                .insert(k.clone(), std::sync::Arc::new(r.clone()));
        }
        let read: Vec<Record> = st
            .records
            .values()
            .filter_map(|r| Record::read(r, &self.sealer, &st.ledger))
            .filter(|r| r.trust != Trust::Foreign)
            .collect();
        // As the engine does: fluxmedic's latest word noted again.
        for r in &read {
            st.ledger.confirm(r);
        }
        read
    }

    /// The operator's executor performs `effects`; each target's action succeeds or fails
    /// as the next outcome says.
    fn execute(
        &mut self,
        snap: &diagnose::Snapshot,
        key: &ObjectKey,
        rec: Option<&Record>,
        effects: Transition,
        outcomes: &mut impl Iterator<Item = bool>,
    ) {
        let ok = outcomes.next().unwrap_or(true);
        let crash = self.crashes.pop().flatten();
        {
            let mut st = self.api.state();
            st.faults.fail = (!ok).then_some(is_action as fn(&Call) -> bool);
            st.faults.crash_after = crash.map(|n| st.writes + n);
        }
        let exec = Executor {
            port: &self.api,
            sealer: &self.sealer,
            shard: None,
        };
        let cur = rec.map(|r| Cur {
            name: r.name.clone(),
            case: r.case,
            uid: r.uid.clone(),
        });
        let target = Target::of(snap, key);
        // Errors are the engine's to log: the next pass decides again from the records.
        let _ = block_on(async {
            match exec.execute(&target, cur, effects).await? {
                Some(p) => exec.run(p).await,
                None => Ok(()),
            }
        });
        let mut st = self.api.state();
        if st.faults.crash_after.take().is_some_and(|n| st.writes >= n) {
            // Crashed: the restarted operator has only the ledger it last persisted.
            st.ledger = self.persisted.clone();
            *STATS.lock().unwrap().entry("crash").or_default() += 1;
        }
    }

    /// At most one open record of fluxmedic's per target.
    fn one_open_record_per_target(&self) -> Result<(), TestCaseError> {
        let st = self.api.state();
        let mut open = BTreeMap::new();
        for r in st.records.values() {
            if let Some(rec) = Record::read(r, &self.sealer, &st.ledger)
                && rec.trust == Trust::Ours
                && rec.is_open()
                && let Some(other) = open.insert(rec.target.clone(), rec.name.clone())
            {
                let show = |n: &str| {
                    format!(
                        "{:#?}",
                        st.records
                            .values()
                            .find(|r| r.metadata.name.as_deref() == Some(n))
                    )
                };
                prop_assert!(
                    false,
                    "{} has two open records: {} and {}\n{}\n{}\nledger {:?}",
                    rec.target,
                    other,
                    rec.name,
                    show(&other),
                    show(&rec.name),
                    st.ledger
                );
            }
        }
        Ok(())
    }

    /// What the actions wrote on Flux objects goes back into the index; the ledger is
    /// persisted as the engine does at the end of a pass.
    fn after_pass(&mut self) {
        let mut st = self.api.state();
        for (k, o) in &st.objects {
            if self.idx.objects.get(k).is_some_and(|old| **old != *o) {
                self.idx
                    .objects
                    .insert(k.clone(), std::sync::Arc::new(o.clone()));
            }
        }
        for (k, r) in &st.records {
            if let Some(status) = &r.status {
                self.first_status
                    .entry(k.clone())
                    .or_insert_with(|| status.clone());
            }
        }
        st.ledger.persisted = st.sequence;
        self.persisted = st.ledger.clone();
    }
}

fn is_action(c: &Call) -> bool {
    !matches!(c, Call::Create(_) | Call::Status(_) | Call::LabelClosed(_))
}

/// What the campaign exercised.
fn count_kinds(t: &Transition) {
    if let Some(a) = &t.action {
        *STATS.lock().unwrap().entry(a.action.name()).or_default() += 1;
    }
    for e in &t.effects {
        let kind = match e {
            Effect::Open { .. } => "open",
            Effect::Close(_) => "close",
            Effect::ReleaseHold => "release-hold",
            Effect::Write(s) if s.frozen.is_some() => "freeze",
            Effect::Count(incident::Count::Blocked(l)) => l,
            _ => continue,
        };
        *STATS.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// Every effect is within what today's policy allows for this target.
fn check(
    scene: &Scene<'_>,
    key: &ObjectKey,
    rec: Option<&Record>,
    t: &Transition,
) -> Result<(), TestCaseError> {
    let obj = scene.snap.objects.get(key);
    let policy = obj.and_then(|o| policy::select(scene.policies, o, scene.operator_namespace).0);
    let mut case = rec.map(|r| r.case);
    // What a person approved, by the library's own reading of the record and the policy.
    let mut approved = rec.and_then(|r| {
        r.approved_action(policy.map(|p| p.namespace.as_str()), &|id| {
            policy.and_then(|p| p.decided(id, &r.path()))
        })
    });
    for e in &t.effects {
        match e {
            Effect::Open { case: c, .. } => {
                case = Some(*c);
                approved = None;
            }
            Effect::ReleaseHold => {
                let o = obj.expect("a target to release");
                let r = rec.expect("a record that holds");
                prop_assert_eq!(
                    o.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION),
                    Some(&r.name)
                );
            }
            _ => {}
        }
    }
    let Some(act) = &t.action else {
        return Ok(());
    };
    let action = &act.action;
    let effects = &t.effects;
    prop_assert!(
        rec.is_none_or(|r| r.trust == Trust::Ours && r.status.frozen.is_none()),
        "acted from an untrusted record"
    );
    if matches!(action, Action::Resume) {
        // Releasing fluxmedic's own hold needs no policy; only its own suspension.
        let o = obj.expect("a target to resume");
        prop_assert!(
            rec.is_some_and(
                |r| o.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION) == Some(&r.name)
            )
        );
        return Ok(());
    }
    let p = policy.ok_or_else(|| TestCaseError::fail(format!("{action} without a policy")))?;
    let c = case.expect("a case");
    let mode = p.mode(c);
    prop_assert!(
        mode == Mode::Auto || mode == Mode::RequireApproval && approved.as_ref() == Some(action),
        "{action} in mode {mode:?} under {}\nrecord {:#?}\neffects {:#?}",
        p.id(),
        rec,
        effects
    );
    prop_assert!(p.allows(c, action.kind()), "{action} not allowed for {c}");
    for ns in action.writes(key) {
        prop_assert!(
            p.may_write(ns, scene.operator_namespace),
            "{action} writes {ns} under {}",
            p.id()
        );
    }
    if let Action::UnlockRelease { release, .. } | Action::Rollback { release, .. } = action
        && let Some(o) = obj
    {
        let revision = match action {
            Action::UnlockRelease { version, .. } => Some(*version),
            Action::Rollback { to_version, .. } => Some(*to_version),
            _ => None,
        };
        prop_assert_eq!(
            Ok(release.clone()),
            policy::verified_release(scene.snap, o, revision)
        );
        // Never as fluxmedic: always as the identity helm-controller uses.
        prop_assert!(
            !release.identity.name.is_empty(),
            "{action} without an identity"
        );
        if let Action::UnlockRelease { namespace, .. } = action {
            prop_assert_eq!(namespace, &release.storage_namespace);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pipeline.proptest-regressions"),
        ))),
        ..ProptestConfig::default()
    })]

    /// The first pass of each round may crash after any write (`crashes`); the passes after
    /// it run on the restarted operator and finish what the crash cut short.
    #[test]
    fn the_pipeline_never_panics_and_never_exceeds_the_policy(
        rounds in prop::collection::vec(prop::collection::vec(arb_event(), 1..16), 1..6),
        outcomes in prop::collection::vec(any::<bool>(), 64),
        crashes in prop::collection::vec(prop::option::weighted(0.3, 0usize..4), 8),
    ) {
        let mut world = World::new();
        let mut outcomes = outcomes.into_iter().cycle();
        for events in rounds {
            for ev in &events {
                world.apply(ev);
            }
            world.crashes = crashes.clone();
            world.pass(&mut outcomes)?;
            world.crashes.clear();
            // Passes on a world where nothing else happens (the clock stands still) settle:
            // one changes nothing, and every pass after it changes nothing either. Nothing is
            // written or done while nothing changes (no flapping writes). A cooldown of 0 acts
            // once a pass until the attempts (at most 4 here) and rollbacks run out, hence
            // the bound of 40 passes.
            let mut changes = world.pass(&mut outcomes)?;
            let mut passes = 1;
            while changes > 0 && passes < 40 {
                changes = world.pass(&mut outcomes)?;
                passes += 1;
            }
            prop_assert_eq!(changes, 0, "still changing after {} passes", passes);
            prop_assert_eq!(world.pass(&mut outcomes)?, 0, "a settled world stays settled");
            world.one_open_record_per_target()?;
        }
    }

    /// `fluxmedic diagnose` says what the operator would do: for every failing object of an
    /// arbitrary snapshot and set of policies, the action it names is the one the operator's
    /// first pass performs, and the reason it gives for waiting is the one the operator records.
    #[test]
    fn diagnose_answers_what_the_operator_would_do(events in prop::collection::vec(arb_event(), 1..24)) {
        let mut world = World::new();
        for ev in &events {
            world.apply(ev);
        }
        let (snap, policies) = world.inputs();
        let (report, rows) = fluxmedic::cli::evaluate(&snap, &policies, OPERATOR_NS, 1000);
        prop_assert_eq!(rows.len(), report.diagnoses.len());
        let breakers = policy::Breakers::new(
            report.diagnoses.iter().map(|d| d.target.namespace.as_str()),
            &policies,
            OPERATOR_NS,
            1000,
        );
        let none = policy::Pollers::new();
        let bare = Scene {
            snap: &snap,
            report: &report,
            policies: &policies,
            operator_namespace: OPERATOR_NS,
            breakers: &breakers,
            pollers: &none,
        };
        // The operator's pass: every failure new, the pollers named from them.
        let pollers = fluxmedic::incident::pollers(&bare, []);
        let scene = Scene {
            pollers: &pollers,
            ..bare
        };
        for (d, row) in report.diagnoses.iter().zip(&rows) {
            prop_assert_eq!(&row.name, &d.target.name);
            let effects = decide(&scene, &d.target, Some(d), None, "token", "nonce");
            let performed = effects.action.as_ref().map(|a| a.action.to_string());
            let recorded = effects.iter().find_map(|e| match e {
                Effect::Open { status, .. } => Some(status.blocked.clone().unwrap_or_default()),
                _ => None,
            });
            match (&row.action, &row.blocked) {
                (Some(a), None) => prop_assert_eq!(performed.as_ref(), Some(a), "{:?}", effects),
                (_, Some(why)) => {
                    prop_assert_eq!(performed, None, "{}: {}", d.target, why);
                    // Off records nothing; otherwise the record says the same reason.
                    if let Some(text) = recorded {
                        prop_assert!(text.contains(why.as_str()), "{} recorded {:?}, diagnose says {:?}", d.target, text, why);
                    }
                }
                (None, None) => prop_assert_eq!(performed, None),
            }
        }
    }
}

#[test]
fn the_campaign_reaches_every_kind_of_effect() {
    // Run after (or beside) the property: a fixed-seed campaign of its own, so the check does
    // not depend on test order.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (
        prop::collection::vec(prop::collection::vec(arb_event(), 4..16), 2..6),
        prop::collection::vec(any::<bool>(), 64),
    );
    let mut seen: BTreeMap<&'static str, u64> = BTreeMap::new();
    for _ in 0..250 {
        let (rounds, outcomes) = strategy.new_tree(&mut runner).unwrap().current();
        let before = STATS.lock().unwrap().clone();
        let mut world = World::new();
        let mut outcomes = outcomes.into_iter().cycle();
        for events in rounds {
            for ev in &events {
                world.apply(ev);
            }
            world.crashes = vec![Some(2), None, Some(0), Some(1)];
            world.pass(&mut outcomes).unwrap();
            world.crashes.clear();
            world.pass(&mut outcomes).unwrap();
        }
        let after = STATS.lock().unwrap().clone();
        for (k, v) in after {
            *seen.entry(k).or_default() += v - before.get(k).copied().unwrap_or(0);
        }
    }
    eprintln!("effects exercised: {seen:?}");
    for kind in [
        "open",
        "close",
        "freeze",
        "reconcile-source",
        "retry",
        "unlock",
        "rollback",
        "awaiting-fix",
        "outside-policy-namespace",
        "suspended-by-person",
        "crash",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 0,
            "the campaign never reached {kind}: {seen:?}"
        );
    }
}

/// Found by the property above: a person approves a failed-release record (a retry), then a
/// stale pending release turns the incident into a stale-lock one. The new case is a new
/// record, planned as a new incident: the unlock waits for its own approval.
#[test]
fn an_approval_never_carries_over_to_a_new_case() {
    let mut world = World::new();
    world.apply(&Ev::Policy(json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "p", "namespace": "prod"},
        "spec": {"rules": [{"case": "failed-release", "mode": "RequireApproval", "actions": ["Retry"]},
                           {"case": "stale-lock", "mode": "RequireApproval"}]}})));
    world.apply(&Ev::BrokenRelease {
        ns: "prod",
        name: "web",
        retryable: true,
    });
    let mut outcomes = std::iter::repeat(true);
    world.pass(&mut outcomes).unwrap();
    assert_eq!(
        world.api.state().records.len(),
        1,
        "one failed-release record"
    );
    world.apply(&Ev::Approve(0));
    world.apply(&Ev::Release {
        ns: "prod",
        release: "web",
        version: 3,
        status: "pending-upgrade",
        age: 3600,
    });
    // `pass` checks every effect against the policy: an unlock here fails it.
    world.pass(&mut outcomes).unwrap();
    world.pass(&mut outcomes).unwrap();
    let state = world.api.state();
    let stale: Vec<_> = state
        .records
        .values()
        .filter(|r| r.spec.case == fluxmedic::diagnose::Case::StaleLock)
        .collect();
    assert_eq!(stale.len(), 1, "the new case has its own record");
    let st = stale[0].status.as_ref().unwrap();
    assert!(
        st.steps.is_empty(),
        "nothing done before its own approval: {st:?}"
    );
    assert_eq!(st.phase, fluxmedic::api::Phase::AwaitingApproval, "{st:?}");
}

/// Found by the property above: a crash lost the ledger's notes of one pass (a record
/// closed as its case changed, and the new case's record). After the restart the operator
/// read both as its own latest word but noted neither: once it persisted its ledger again,
/// the new record read as edited (frozen), and a copy of the old record's first status
/// written back read as fluxmedic's latest word, the old incident open beside the new one.
/// The operator now notes what it reads as its own latest word.
#[test]
fn a_status_written_back_after_a_crash_lost_the_ledger_is_still_a_replay() {
    let mut world = World::new();
    let mut outcomes = std::iter::repeat(true);
    world.apply(&Ev::BrokenRelease {
        ns: "prod",
        name: "web",
        retryable: false,
    });
    world.pass(&mut outcomes).unwrap();
    let first = world.api.state().records.keys().next().unwrap().clone();
    let before = world.persisted.clone();
    world.apply(&Ev::Release {
        ns: "prod",
        release: "web",
        version: 3,
        status: "pending-upgrade",
        age: 3600,
    });
    world.pass(&mut outcomes).unwrap();
    assert_eq!(
        world.api.state().records.len(),
        2,
        "closed, and a new record for the new case"
    );
    // The crash: what was noted in that pass is lost.
    world.api.state().ledger = before;
    world.pass(&mut outcomes).unwrap();
    let at = world
        .api
        .state()
        .records
        .keys()
        .position(|k| *k == first)
        .unwrap();
    world.apply(&Ev::WriteBack(at));
    world.pass(&mut outcomes).unwrap();
    world.pass(&mut outcomes).unwrap();
    world.one_open_record_per_target().unwrap();
    let st = world.api.state();
    let read: Vec<Record> = st
        .records
        .values()
        .map(|r| Record::read(r, &world.sealer, &st.ledger).unwrap())
        .collect();
    let (old, new): (Vec<_>, Vec<_>) = read.iter().partition(|r| r.name == first.1);
    assert!(
        !old[0].is_open(),
        "the first incident stays closed: {:?}",
        old[0]
    );
    // The record created in the pass the crash cut short is still fluxmedic's own, not
    // taken for an edited one once the restarted operator persists its ledger.
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].trust, Trust::Ours, "{:?}", new[0]);
    assert!(
        new[0].is_open() && new[0].status.frozen.is_none(),
        "{:?}",
        new[0]
    );
}

/// What a one-step incident writes, counted on the in-memory API server as the load
/// harness's incidents run: a Kustomization whose manifests do not build, under a policy that
/// polls its source at once, the poll acknowledged by Flux, then the fix landing. A guard on
/// the write budget: an added write fails it. The create (carrying the intent), the poll,
/// its outcome (carrying the wait the next pass would have written: the cooldown and the
/// next poll); nothing while Flux handles the request; the close (label, then status).
/// Events: detected, acted, recovered.
/// A GitRepository `repo` in `apps`, with `handled` as the last request it handled.
fn shared_repo(handled: Option<&str>) -> serde_json::Value {
    json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
    "metadata": {"name": "repo", "namespace": "apps", "uid": "uid-repo", "generation": 1, "resourceVersion": "1",
                 "annotations": handled.map(|t| json!({REQUESTED_AT: t})).unwrap_or(json!({}))},
    "spec": {"interval": "1h", "url": "http://127.0.0.1/x.git"},
    "status": {"observedGeneration": 1, "lastHandledReconcileAt": handled,
               "artifact": {"revision": "main@sha1:0"},
               "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "stored artifact",
                               "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
}

/// A Kustomization `name` of `repo`, Ready or failing its build.
fn repo_consumer(name: &str, ready: bool) -> serde_json::Value {
    json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
    "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": "1"},
    "spec": {"interval": "1h", "path": "./", "prune": true, "sourceRef": {"kind": "GitRepository", "name": "repo"}},
    "status": {"observedGeneration": 1, "lastAttemptedRevision": "main@sha1:0",
               "conditions": [if ready {
                   json!({"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": "Applied revision: main@sha1:1", "lastTransitionTime": "2026-01-01T00:00:00Z"})
               } else {
                   json!({"type": "Ready", "status": "False", "reason": "BuildFailed", "lastTransitionTime": "2026-01-01T00:00:00Z",
                          "message": "kustomize build failed: yaml: line 3: mapping values are not allowed in this context"})
               }]}})
}

/// A world with an Auto policy for invalid manifests (polls 10m apart: the clock does not
/// move here) and `repo`.
fn polling_world() -> World {
    let mut world = World::new();
    world.apply(&Ev::Policy(
        json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "RemediationPolicy",
        "metadata": {"name": "p", "namespace": "apps"},
        "spec": {"rules": [{"case": "invalid-manifests", "mode": "Auto"}],
                 "limits": {"pollInterval": "10m", "maxPollInterval": "30m"}}}),
    ));
    world.apply(&Ev::Flux(shared_repo(None)));
    world
}

impl World {
    /// Three passes; how many calls the API took so far.
    fn passes(&mut self) -> usize {
        for _ in 0..3 {
            self.pass(&mut std::iter::repeat(true)).unwrap();
        }
        self.api.state().done().len()
    }

    /// The kinds of the calls the API took, in order.
    fn call_kinds(&self) -> Vec<String> {
        self.api
            .state()
            .done()
            .iter()
            .map(|c| {
                format!("{c:?}")
                    .split([' ', '('])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// Flux handles the latest reconcile request on `repo`.
    fn handle_repo_request(&mut self) {
        let token = self.api.state().objects
            [&ObjectKey::new(FluxKind::GitRepository, "apps", "repo")]
            .reconcile_annotations
            .get(REQUESTED_AT)
            .cloned();
        self.apply(&Ev::Flux(shared_repo(token.as_deref())));
    }
}

#[test]
fn the_writes_of_a_one_step_incident() {
    let mut world = polling_world();
    world.apply(&Ev::Flux(repo_consumer("app", false)));
    let opened = world.passes();
    assert_eq!(world.call_kinds(), ["Create", "Reconcile", "Status"]);
    // Flux handles the request: nothing to write.
    world.handle_repo_request();
    assert_eq!(world.passes(), opened, "{:?}", world.call_kinds());
    world.apply(&Ev::Flux(repo_consumer("app", true)));
    world.passes();
    assert_eq!(world.call_kinds()[opened..], ["LabelClosed", "Status"]);
    let events: Vec<String> = world
        .api
        .state()
        .events
        .iter()
        .map(|e| e.0.clone())
        .collect();
    assert_eq!(events, ["FailureDetected", "ActionSucceeded", "Recovered"]);
}

/// Consumers of one source that fail one after another: the first incident polls the source,
/// the others wait on its polling (a record, no poll, nothing rewritten at its next polls),
/// and poll themselves once it ends.
#[test]
fn a_source_its_consumers_share_is_polled_once() {
    let mut world = polling_world();
    world.apply(&Ev::Flux(repo_consumer("app", false)));
    let opened = world.passes();
    world.handle_repo_request();
    world.apply(&Ev::Flux(repo_consumer("web", false)));
    let waiting = world.passes();
    assert_eq!(world.call_kinds()[opened..], ["Create", "Status"]);
    let web = world
        .read_records()
        .into_iter()
        .find(|r| r.target.name == "web")
        .unwrap();
    let blocked = web.status.blocked.clone().unwrap_or_default();
    assert!(
        blocked.contains("polled for a fix by the incident of Kustomization/apps/app"),
        "{blocked}"
    );
    // Another consumer, same source: waits the same way; nothing else is written.
    world.apply(&Ev::Flux(repo_consumer("api", false)));
    let third = world.passes();
    assert_eq!(world.call_kinds()[waiting..], ["Create", "Status"]);
    // The polling incident ends (its target recovered by another route): the next consumer
    // in line polls by itself.
    world.apply(&Ev::Flux(repo_consumer("app", true)));
    world.passes();
    let after: Vec<String> = world.call_kinds()[third..].to_vec();
    assert_eq!(
        after.iter().filter(|k| *k == "Reconcile").count(),
        1,
        "one poll of the shared source, not one per waiting consumer: {after:?}"
    );
}

/// Consumers of one source failing in the same pass: one of them polls it.
#[test]
fn consumers_failing_together_poll_their_source_once() {
    let mut world = polling_world();
    for name in ["app", "web", "api"] {
        world.apply(&Ev::Flux(repo_consumer(name, false)));
    }
    world.passes();
    let mut kinds = world.call_kinds();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "Create",
            "Create",
            "Create",
            "Reconcile",
            "Status",
            "Status",
            "Status"
        ],
        "three records, one poll (its outcome and the two waits are the status writes)"
    );
}

/// Consumers waiting on the incident polling their source, which a person then suspends (a
/// block that comes before any wait about polling): their records settle; nobody is named,
/// blocked and named again pass after pass, rewriting every waiting record each time.
#[test]
fn waiting_consumers_settle_when_a_person_suspends_them() {
    let mut world = polling_world();
    world.apply(&Ev::Flux(repo_consumer("app", false)));
    world.passes();
    world.handle_repo_request();
    for name in ["web", "api"] {
        world.apply(&Ev::Flux(repo_consumer(name, false)));
    }
    world.passes();
    for name in ["app", "web", "api"] {
        let mut o = repo_consumer(name, false);
        o["spec"]["suspend"] = json!(true);
        world.apply(&Ev::Flux(o));
    }
    let changed = world.passes();
    assert_eq!(
        world.passes(),
        changed,
        "{:?}",
        &world.call_kinds()[changed..]
    );
}
