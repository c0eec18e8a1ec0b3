//! The whole pure pipeline under arbitrary input, as the operator runs it: watch events
//! (Flux objects, Helm storage, policies, records, forged or edited ones among them) go into
//! the index, each round takes a snapshot, diagnoses it, and decides every target
//! (`incident::decide`: policy selection, plan, incident lifecycle); the effects are performed on
//! an in-memory record store the way the engine does (sealed), action outcomes drawn at random.
//!
//! For every input: no panic, and every effect stays inside what today's policy allows:
//! an action runs only under a policy whose mode allows it (approved if needed), writes only
//! in namespaces that policy may change, touches Helm storage only of the release verified to
//! be the target's, and never comes from a record fluxmedic did not seal. `PROPTEST_CASES`
//! sets the number of cases (`task fuzz` runs a long campaign).

use std::collections::BTreeMap;

use fluxmedic::{
    api::{
        APPROVE_ANNOTATION, BASELINE_ANNOTATION, INTENT_ANNOTATION, Mode, POLICY_APPROVAL_PREFIX,
        Remediation, RemediationPolicy, RemediationSpec, RemediationStatus, SEAL_ANNOTATION,
        SEQUENCE_ANNOTATION, SUSPENDED_BY_ANNOTATION, TargetRef,
    },
    controller::index::{self, Index},
    diagnose::{self, Case},
    flux::{FluxKind, ObjectKey},
    incident::{
        self, Effect, Outcome, Record, Scene, Trust, decide,
        seal::{RecordId, Sealer},
    },
    policy::{self, Action, Policy},
};
use kube::api::ObjectMeta;
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
    /// Records as the API server holds them.
    records: BTreeMap<(String, String), Remediation>,
    next_name: u32,
    /// Approval ids handed out so far (each pass's are fresh).
    nonces: u64,
    /// What the executor keeps where only it writes, and the first status it wrote per record.
    ledger: incident::Ledger,
    sequence: u64,
    first_status: BTreeMap<(String, String), RemediationStatus>,
}

impl World {
    fn new() -> Self {
        World {
            idx: Index::default(),
            sealer: Sealer::from_key(b"the operator's key, 32 bytes long"),
            records: BTreeMap::new(),
            next_name: 0,
            nonces: 0,
            ledger: incident::Ledger::default(),
            sequence: 0,
            first_status: BTreeMap::new(),
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
                    self.records.insert(key, r);
                }
            }
            Ev::Edit(i) => {
                let n = self.records.len();
                if let Some(r) = self.records.values_mut().nth(i % n.max(1))
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
                let n = self.records.len();
                let Some(k) = self.records.keys().nth(i % n.max(1)).cloned() else {
                    return;
                };
                let first = self.first_status.get(&k).cloned();
                let r = self.records.get_mut(&k).unwrap();
                match ev {
                    Ev::WriteBack(_) => r.status = first,
                    Ev::RemoveStatus(_) => r.status = None,
                    _ => {
                        self.next_name += 1;
                        r.metadata.uid = Some(format!("uid-copy-{}", self.next_name));
                    }
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
                let n = self.records.len();
                if let Some(r) = self.records.values_mut().nth(i % n.max(1)) {
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
                let n = self.records.len();
                let given = self.records.values().nth(i % n.max(1)).and_then(|r| {
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

    /// Seal a status as the executor does: a new sequence number, bound to the record's uid,
    /// noted in the ledger.
    fn seal_status(
        &mut self,
        ns: &str,
        name: &str,
        target: &ObjectKey,
        case: Case,
        st: &RemediationStatus,
    ) -> RemediationStatus {
        let key = (ns.to_string(), name.to_string());
        let uid = self
            .records
            .get(&key)
            .and_then(|r| r.metadata.uid.clone())
            .unwrap_or_else(|| format!("uid-{name}"));
        let mut st = st.clone();
        self.sequence += 1;
        st.sequence = self.sequence;
        st.seal = Some(self.sealer.seal_status(
            RecordId {
                namespace: ns,
                name,
                target,
                case,
            },
            &uid,
            &st,
        ));
        self.ledger.records.insert(
            uid,
            incident::LedgerEntry {
                sequence: st.sequence,
                closed: !st.phase.is_open(),
            },
        );
        self.first_status.entry(key).or_insert_with(|| st.clone());
        st
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

    /// One evaluation pass: decide every target, check every effect, perform them. Returns how
    /// many effects changed something (a record created, written or closed, an action, a hold
    /// released).
    fn pass(&mut self, outcomes: &mut impl Iterator<Item = bool>) -> Result<usize, TestCaseError> {
        let mut changes = 0;
        // As the executor does: forget records that no longer exist.
        let present: std::collections::HashSet<String> = self
            .records
            .values()
            .filter_map(|r| r.metadata.uid.clone())
            .collect();
        self.ledger.records.retain(|uid, _| present.contains(uid));
        for (k, r) in &self.records {
            self.idx
                .remediations
                .insert(k.clone(), std::sync::Arc::new(r.clone()));
        }
        let (snap, policies) = self.inputs();
        let report = diagnose::diagnose(&snap);
        let breakers = policy::Breakers::new(
            report.diagnoses.iter().map(|d| d.target.namespace.as_str()),
            &policies,
            OPERATOR_NS,
            1000,
        );
        let records: Vec<Record> = self
            .records
            .values()
            .filter_map(|r| Record::read(r, &self.sealer, &self.ledger))
            .filter(|r| r.trust != Trust::Foreign)
            .collect();
        let mut open: BTreeMap<ObjectKey, Record> = BTreeMap::new();
        for r in records.iter().filter(|r| r.is_open()) {
            open.insert(r.target.clone(), r.clone());
        }
        let mut work: Vec<(ObjectKey, Option<diagnose::Diagnosis>, Option<Record>)> = report
            .diagnoses
            .iter()
            .map(|d| (d.target.clone(), Some(d.clone()), open.remove(&d.target)))
            .collect();
        work.extend(open.into_iter().map(|(k, r)| (k, None, Some(r))));
        let scene = Scene {
            snap: &snap,
            report: &report,
            policies: &policies,
            operator_namespace: OPERATOR_NS,
            breakers: &breakers,
        };
        for (key, d, rec) in work {
            let nonce = format!("{:016x}", self.nonces);
            self.nonces += 1;
            let effects = decide(&scene, &key, d.as_ref(), rec.as_ref(), "token", &nonce);
            check(&scene, &key, rec.as_ref(), &effects)?;
            for e in &effects {
                let kind = match e {
                    Effect::Perform { action, .. } => action.name(),
                    Effect::Open { .. } => "open",
                    Effect::Close(_) => "close",
                    Effect::ReleaseHold => "release-hold",
                    Effect::Write(s) if s.frozen.is_some() => "freeze",
                    Effect::Count(incident::Count::Blocked(l)) => l,
                    _ => continue,
                };
                *STATS.lock().unwrap().entry(kind).or_default() += 1;
            }
            changes += effects
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        Effect::Open { .. }
                            | Effect::Write(_)
                            | Effect::Close(_)
                            | Effect::Perform { .. }
                            | Effect::ReleaseHold
                    )
                })
                .count();
            self.perform(&key, rec.as_ref(), effects, &snap, outcomes);
        }
        // As the executor does at the end of a pass: the ledger persisted.
        self.ledger.persisted = self.sequence;
        Ok(changes)
    }

    fn perform(
        &mut self,
        key: &ObjectKey,
        rec: Option<&Record>,
        effects: Vec<Effect>,
        snap: &diagnose::Snapshot,
        outcomes: &mut impl Iterator<Item = bool>,
    ) {
        let mut cur = rec.map(|r| (r.name.clone(), r.case));
        for e in effects {
            match e {
                Effect::Open {
                    case,
                    status,
                    intent,
                } => {
                    self.next_name += 1;
                    let name = format!("rec-{}", self.next_name);
                    let intent_json = intent
                        .as_ref()
                        .map(incident::intent_json)
                        .unwrap_or_default();
                    let baseline = if intent.is_some() {
                        incident::baseline_json(&status)
                    } else {
                        String::new()
                    };
                    let id = RecordId {
                        namespace: &key.namespace,
                        name: &name,
                        target: key,
                        case,
                    };
                    self.sequence += 1;
                    let created = self.sequence;
                    let mut ann = BTreeMap::from([
                        (
                            SEAL_ANNOTATION.to_string(),
                            self.sealer.seal_creation(
                                id,
                                &incident::creation_payload(&intent_json, &baseline, created),
                            ),
                        ),
                        (SEQUENCE_ANNOTATION.to_string(), created.to_string()),
                    ]);
                    self.ledger.records.insert(
                        format!("uid-{name}"),
                        incident::LedgerEntry {
                            sequence: created,
                            closed: false,
                        },
                    );
                    if intent.is_some() {
                        ann.insert(INTENT_ANNOTATION.into(), intent_json);
                        ann.insert(BASELINE_ANNOTATION.into(), baseline);
                    }
                    self.records.insert(
                        (key.namespace.clone(), name.clone()),
                        Remediation {
                            metadata: ObjectMeta {
                                name: Some(name.clone()),
                                namespace: Some(key.namespace.clone()),
                                uid: Some(format!("uid-{name}")),
                                annotations: Some(ann),
                                ..Default::default()
                            },
                            spec: RemediationSpec {
                                target: TargetRef::from_key(key),
                                target_name: String::new(),
                                case,
                            },
                            status: None,
                        },
                    );
                    if intent.is_none() {
                        let sealed = self.seal_status(&key.namespace, &name, key, case, &status);
                        if let Some(r) =
                            self.records.get_mut(&(key.namespace.clone(), name.clone()))
                        {
                            r.status = Some(sealed);
                        }
                    }
                    cur = Some((name, case));
                }
                Effect::Write(status) | Effect::Close(status) => {
                    if let Some((name, case)) = &cur {
                        let sealed = self.seal_status(&key.namespace, name, key, *case, &status);
                        if let Some(r) =
                            self.records.get_mut(&(key.namespace.clone(), name.clone()))
                        {
                            r.status = Some(sealed);
                        }
                    }
                }
                Effect::Perform { action, status, .. } => {
                    let Some((name, case)) = cur.clone() else {
                        continue;
                    };
                    let outcome = if outcomes.next().unwrap_or(true) {
                        Outcome::Done {
                            message: "ok".into(),
                            generation: Some(9),
                        }
                    } else {
                        Outcome::Failed {
                            message: "injected".into(),
                            category: "Conflict",
                        }
                    };
                    let facts = incident::Facts {
                        source_revision: snap
                            .objects
                            .get(key)
                            .and_then(|o| policy::source_revision(snap, o)),
                        ..Default::default()
                    };
                    if let (Outcome::Done { .. }, Some(o)) =
                        (&outcome, self.idx.objects.get_mut(key))
                    {
                        let o = std::sync::Arc::make_mut(o);
                        match &action {
                            Action::Rollback { .. } => {
                                o.suspended = true;
                                o.generation = Some(9);
                                o.reconcile_annotations
                                    .insert(SUSPENDED_BY_ANNOTATION.into(), name.clone());
                            }
                            Action::Resume => {
                                o.suspended = false;
                                o.generation = Some(10);
                                o.reconcile_annotations.remove(SUSPENDED_BY_ANNOTATION);
                            }
                            _ => {}
                        }
                    }
                    for e in incident::settle(*status, &action, &outcome, &facts, NOW) {
                        if let Effect::Write(st) = e {
                            let sealed = self.seal_status(&key.namespace, &name, key, case, &st);
                            if let Some(r) =
                                self.records.get_mut(&(key.namespace.clone(), name.clone()))
                            {
                                r.status = Some(sealed);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Every effect is within what today's policy allows for this target.
fn check(
    scene: &Scene<'_>,
    key: &ObjectKey,
    rec: Option<&Record>,
    effects: &[Effect],
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
    for e in effects {
        match e {
            Effect::Open { case: c, .. } => {
                case = Some(*c);
                approved = None;
            }
            Effect::Perform { action, .. } => {
                prop_assert!(
                    rec.is_none_or(|r| r.trust == Trust::Ours && r.status.frozen.is_none()),
                    "acted from an untrusted record"
                );
                if matches!(action, Action::Resume) {
                    // Releasing fluxmedic's own hold needs no policy; only its own suspension.
                    let o = obj.expect("a target to resume");
                    prop_assert!(
                        rec.is_some_and(|r| o.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION)
                            == Some(&r.name))
                    );
                    continue;
                }
                let p = policy
                    .ok_or_else(|| TestCaseError::fail(format!("{action} without a policy")))?;
                let c = case.expect("a case");
                let mode = p.mode(c);
                prop_assert!(
                    mode == Mode::Auto
                        || mode == Mode::RequireApproval && approved.as_ref() == Some(action),
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
                if let Action::UnlockRelease { release, .. } | Action::Rollback { release, .. } =
                    action
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

    #[test]
    fn the_pipeline_never_panics_and_never_exceeds_the_policy(
        rounds in prop::collection::vec(prop::collection::vec(arb_event(), 1..16), 1..6),
        outcomes in prop::collection::vec(any::<bool>(), 64),
    ) {
        let mut world = World::new();
        let mut outcomes = outcomes.into_iter().cycle();
        for events in rounds {
            for ev in &events {
                world.apply(ev);
            }
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
        let scene = Scene {
            snap: &snap,
            report: &report,
            policies: &policies,
            operator_namespace: OPERATOR_NS,
            breakers: &breakers,
        };
        for (d, row) in report.diagnoses.iter().zip(&rows) {
            prop_assert_eq!(&row.name, &d.target.name);
            let effects = decide(&scene, &d.target, Some(d), None, "token", "nonce");
            let performed = effects.iter().find_map(|e| match e {
                Effect::Perform { action, .. } => Some(action.to_string()),
                _ => None,
            });
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
    assert_eq!(world.records.len(), 1, "one failed-release record");
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
    let stale: Vec<_> = world
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
