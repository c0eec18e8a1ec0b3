//! Diagnosis: pure functions over a [`Snapshot`] of Flux objects, Helm release
//! storage metadata and source Secrets. No API calls.

mod classify;
pub mod controllers;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use classify::{Classification, HELM_LOCK_TEXT, classify_condition};

use crate::{
    flux::{FluxKind, FluxObject, ObjectKey, ReleaseStrategy},
    helm::{ReleaseHistory, StoredRelease},
};

/// The runbook case of a failure.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    FailedRelease,
    InvalidManifests,
    GitAuth,
    GitUnreachable,
    DependencyCascade,
    StaleLock,
    Other,
}

impl Case {
    pub const ALL: [Case; 7] = [
        Case::FailedRelease,
        Case::InvalidManifests,
        Case::GitAuth,
        Case::GitUnreachable,
        Case::DependencyCascade,
        Case::StaleLock,
        Case::Other,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Case::FailedRelease => "failed-release",
            Case::InvalidManifests => "invalid-manifests",
            Case::GitAuth => "git-auth",
            Case::GitUnreachable => "git-unreachable",
            Case::DependencyCascade => "dependency-cascade",
            Case::StaleLock => "stale-lock",
            Case::Other => "other",
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Flux itself is doing about the failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum NativeState {
    /// Flux will try again by itself (retries left, RetryOnFailure, interval-based retry).
    Retrying,
    /// helm-controller already rolled back or uninstalled; the cluster runs the last good release.
    Remediated,
    /// Flux has stopped trying (Stalled) and waits for a new input or a request.
    Exhausted,
    /// RetryOnFailure: helm-controller retries at an interval without a limit, even when a
    /// retry cannot help (helm-controller#1551). fluxmedic counts its attempts.
    RetryingForever,
}

/// Metadata of a Secret a source references: key names only, never values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SecretInfo {
    pub keys: BTreeSet<String>,
    pub resource_version: Option<String>,
}

/// Everything the diagnosis reads, captured at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Shared with the controller's index: taking a snapshot copies no object.
    pub objects: BTreeMap<ObjectKey, Arc<FluxObject>>,
    /// Helm storage per (storage namespace, release name).
    pub releases: HashMap<(String, String), ReleaseHistory>,
    /// Secrets referenced by sources, per (namespace, name). `None` in the map = known missing.
    pub secrets: HashMap<(String, String), SecretInfo>,
    /// Whether Secrets were observed at all (a dump without Secrets cannot say one is missing).
    pub secrets_observed: bool,
    /// Now, in unix seconds.
    pub now: i64,
    /// How long a reconcile request may stay unhandled before its controller counts as not
    /// working (`None`: not judged, as for a dump).
    pub request_bound: Option<Duration>,
    /// fluxmedic's own reachability check of a source URL (DNS, TCP, TLS), per URL.
    pub probes: HashMap<String, String>,
    /// Deployments of Flux controllers in the Flux namespace, and its pods (empty where
    /// the controllers are not run as Deployments there, or cannot be seen).
    pub flux_deployments: Vec<controllers::DeploymentState>,
    pub flux_pods: Vec<controllers::PodState>,
    /// The shard fluxmedic serves (its `--watch-label-selector`): only the Flux
    /// controllers of that shard count.
    pub shard_selector: Option<String>,
    /// How helm-controller picks its identity, as configured, for where its Deployment
    /// cannot be read ([`crate::flux::HelmControllerIdentity`]).
    pub helm_controller: Option<crate::flux::HelmControllerIdentity>,
    /// Whether this installation lets policies delete a stale pending release (off unless
    /// enabled: the RBAC and admission policy that allow it come with it).
    pub allow_delete_pending_release: bool,
}

impl Snapshot {
    pub fn new(objects: impl IntoIterator<Item = FluxObject>, now: i64) -> Self {
        Snapshot {
            objects: objects
                .into_iter()
                .map(|o| (o.key.clone(), Arc::new(o)))
                .collect(),
            now,
            ..Default::default()
        }
    }

    pub fn add_release(&mut self, r: StoredRelease) {
        let entry = self
            .releases
            .entry((r.namespace.clone(), r.release.clone()))
            .or_default();
        entry.releases.push(r);
        entry.releases.sort_by_key(|r| r.version);
    }

    /// URLs of sources failing because their server cannot be reached (the ones to probe for
    /// reachability).
    pub fn failing_source_urls(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .objects
            .values()
            .filter(|o| o.key.kind.is_source() && o.is_failing())
            .filter(|o| {
                o.conditions.iter().any(|c| {
                    !c.is_true()
                        && classify::classify_condition(
                            o.key.kind, &c.type_, &c.status, &c.reason, &c.message,
                        )
                        .case
                            == Case::GitUnreachable
                })
            })
            .filter_map(|o| o.url.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The credentials Secret a source fetches with: its own `spec.secretRef`, or for a
    /// HelmChart its HelmRepository's (source-controller pulls a chart with the credentials of
    /// the repository it comes from, an OCI one included, which has no status of its own).
    pub fn credentials_of<'a>(&'a self, obj: &'a FluxObject) -> Option<&'a String> {
        if obj.key.kind == FluxKind::HelmChart {
            return obj
                .source_ref
                .as_ref()
                .filter(|s| s.kind == FluxKind::HelmRepository && s.namespace == obj.key.namespace)
                .and_then(|s| self.objects.get(s))
                .and_then(|r| r.secret_ref.as_ref());
        }
        obj.secret_ref.as_ref()
    }

    /// Credentials Secrets of failing sources whose key names are not known yet: the ones
    /// whose keys become evidence for git-auth / git-unreachable (`(namespace, name)`).
    pub fn uninspected_source_secrets(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .objects
            .values()
            .filter(|o| o.key.kind.is_source() && o.is_failing())
            .filter_map(|o| {
                self.credentials_of(o)
                    .map(|s| (o.key.namespace.clone(), s.clone()))
            })
            // A Secret absent from the snapshot is known missing: nothing to fetch.
            .filter(|k| self.secrets.get(k).is_some_and(|s| s.keys.is_empty()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The Helm storage of a HelmRelease (never for a release in another cluster).
    pub fn history_of(&self, obj: &FluxObject) -> Option<&ReleaseHistory> {
        let h = obj.helm.as_ref().filter(|h| !h.remote)?;
        self.releases
            .get(&(h.storage_namespace.clone(), h.release_name.clone()))
    }

    fn failing(&self, key: &ObjectKey) -> bool {
        self.objects
            .get(key)
            .is_some_and(|o| o.is_failing() || self.stale_lock_of(o).is_some())
    }

    /// Flux is reconciling it and it is not Ready yet (Ready Unknown).
    fn in_progress(&self, key: &ObjectKey) -> bool {
        self.objects
            .get(key)
            .and_then(|o| o.condition("Ready"))
            .is_some_and(|c| c.status == "Unknown")
    }

    /// A pending latest release that helm-controller is not working on and that has gone
    /// unwritten longer than [`crate::helm::stale_after`] the release's timeout.
    pub fn stale_lock_of(&self, obj: &FluxObject) -> Option<&StoredRelease> {
        let h = obj.helm.as_ref()?;
        if obj.is_running_helm_action() {
            return None;
        }
        self.history_of(obj)?
            .stale_pending(self.now, crate::helm::stale_after(h.timeout))
    }
}

/// One piece of evidence for a diagnosis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// Where it was seen: `condition/Ready`, `helm-storage`, `secret`, `dependency`.
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub message: String,
}

/// Messages can be huge (multi-error Helm output); evidence keeps a bounded prefix.
pub const MAX_EVIDENCE_MESSAGE: usize = 2048;

fn bounded(s: &str) -> String {
    if s.len() <= MAX_EVIDENCE_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_EVIDENCE_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes truncated)", &s[..end], s.len() - end)
}

/// The diagnosis of one failing Flux object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    pub target: ObjectKey,
    pub case: Case,
    pub retryable: bool,
    /// First failing ancestor (dependsOn, source refs, health checks); the target itself when none.
    pub root: ObjectKey,
    /// Path from the target to the root, excluding the target.
    pub chain: Vec<ObjectKey>,
    pub native: NativeState,
    pub summary: String,
    pub evidence: Vec<Evidence>,
}

impl Diagnosis {
    pub fn is_root(&self) -> bool {
        self.root == self.target
    }
}

/// Result of diagnosing a whole snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One per failing object, ordered by key.
    pub diagnoses: Vec<Diagnosis>,
    /// Roots shared by several failures, most affected first.
    pub shared_roots: Vec<(ObjectKey, usize)>,
    /// Flux controllers not processing their objects, with why (see [`controllers`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub controllers_down: BTreeMap<String, String>,
}

impl Report {
    pub fn get(&self, key: &ObjectKey) -> Option<&Diagnosis> {
        self.diagnoses
            .binary_search_by(|d| d.target.cmp(key))
            .ok()
            .map(|i| &self.diagnoses[i])
    }
}

/// Pick the decisive condition of a failing object and classify it.
fn classify_object(snap: &Snapshot, obj: &FluxObject) -> Option<(Classification, Vec<Evidence>)> {
    let kind = obj.key.kind;
    let ev = |c: &crate::flux::Condition| Evidence {
        source: format!("condition/{}", c.type_),
        reason: c.reason.clone(),
        message: bounded(&c.message),
    };
    // A stale pending release is decisive whatever the conditions say (the HelmRelease may
    // be suspended, or gated before helm-controller's own unlock can run).
    if let Some(stale) = snap.stale_lock_of(obj) {
        let mut evidence = vec![Evidence {
            source: "helm-storage".into(),
            reason: stale.status.0.clone(),
            message: format!(
                "latest release {} (Secret {}/{}) is {} and not being worked on",
                stale.version, stale.namespace, stale.secret_name, stale.status.0
            ),
        }];
        evidence.extend(
            obj.conditions
                .iter()
                .filter(|c| c.type_ == "Ready" && !c.is_true())
                .map(ev),
        );
        return Some((
            Classification {
                case: Case::StaleLock,
                retryable: true,
                rule: "a stale pending release holds the Helm lock",
            },
            evidence,
        ));
    }
    if !obj.is_failing() || waiting_on_a_working_source(snap, obj) || health_check_canceled(obj) {
        return None;
    }
    // Order: a lock message anywhere, Stalled, Released/Remediated detail, then Ready.
    let lock = obj.conditions.iter().find(|c| {
        let cl = classify_condition(kind, &c.type_, &c.status, &c.reason, &c.message);
        cl.case == Case::StaleLock && !c.is_true()
    });
    if let Some(cond) = lock {
        return Some((
            classify_condition(kind, &cond.type_, &cond.status, &cond.reason, &cond.message),
            vec![ev(cond)],
        ));
    }
    let ready = obj.condition("Ready");
    let stalled = obj.condition("Stalled").filter(|c| c.is_true());
    match (stalled, ready) {
        (Some(s), Some(r)) if kind == FluxKind::HelmRelease => {
            // Stalled says retries are exhausted; Ready's tail says whether a retry can help.
            let sc = classify_condition(kind, &s.type_, &s.status, &s.reason, &s.message);
            let rc = classify_condition(kind, &r.type_, &r.status, &r.reason, &r.message);
            let cl = if rc.case == Case::FailedRelease
                || rc.case == Case::Other && sc.case == Case::FailedRelease
            {
                Classification {
                    case: Case::FailedRelease,
                    retryable: sc.retryable && rc.retryable,
                    rule: rc.rule,
                }
            } else {
                rc
            };
            Some((cl, vec![ev(s), ev(r)]))
        }
        (_, Some(r)) if r.is_false() => Some((
            classify_condition(kind, &r.type_, &r.status, &r.reason, &r.message),
            vec![ev(r)],
        )),
        (Some(s), _) => Some((
            classify_condition(kind, &s.type_, &s.status, &s.reason, &s.message),
            vec![ev(s)],
        )),
        _ => None,
    }
}

/// How long a target may wait on a source that is not failing (a HelmChart reconciling its
/// new generation, a source fetching) before the wait is an incident of its own.
pub const SOURCE_GRACE: Duration = Duration::from_secs(120);

/// `SourceNotReady` while the source exists and is not failing itself: Flux at work (a new
/// chart version being fetched takes a second), not an incident; unless it lasts beyond
/// [`SOURCE_GRACE`] (helm-controller#1252: a chart version that never appears).
fn waiting_on_a_working_source(snap: &Snapshot, obj: &FluxObject) -> bool {
    let Some(ready) = obj.condition("Ready").filter(|c| c.is_false()) else {
        return false;
    };
    if ready.reason != "SourceNotReady" || obj.condition("Stalled").is_some_and(|c| c.is_true()) {
        return false;
    }
    let source_working = obj
        .source_ref
        .as_ref()
        .and_then(|s| snap.objects.get(s))
        .is_some_and(|s| !s.is_failing());
    let recent = ready
        .last_transition_time
        .is_none_or(|t| snap.now.saturating_sub(t.as_second()) < SOURCE_GRACE.as_secs() as i64);
    source_working && recent
}

/// How many times Flux itself has attempted the failing release action (its failure counter
/// for the last action: install or upgrade).
pub fn flux_attempts(obj: &FluxObject) -> i64 {
    let Some(h) = obj.helm.as_ref() else { return 0 };
    let per_action = match h.last_attempted_release_action.as_deref() {
        Some("install") => h.install_failures,
        _ => h.upgrade_failures,
    };
    if per_action > 0 {
        per_action
    } else {
        h.failures.max(0)
    }
}

/// `Ready=False/HealthCheckCanceled` (helm-controller v1.6+, kustomize-controller v1.8+): a
/// new reconciliation was triggered and cancelled the running health checks; Flux is already
/// at work on the object, nothing has failed yet.
fn health_check_canceled(obj: &FluxObject) -> bool {
    obj.condition("Ready")
        .is_some_and(|c| c.is_false() && c.reason == "HealthCheckCanceled")
        && !obj.condition("Stalled").is_some_and(|c| c.is_true())
}

/// What Flux does by itself about this object's failure.
fn native_state(obj: &FluxObject) -> NativeState {
    let Some(h) = obj.helm.as_ref() else {
        return NativeState::Retrying;
    };
    let ready_reason = obj
        .condition("Ready")
        .map(|c| c.reason.as_str())
        .unwrap_or("");
    let stalled = obj.condition("Stalled").is_some_and(|c| c.is_true());
    let strategy = match h.last_attempted_release_action.as_deref() {
        Some("install") => h.install_strategy,
        _ => h.upgrade_strategy,
    };
    // The strategy as configured, or as helm-controller shows it (the DefaultToRetryOnFailure
    // feature gate makes it the default without a word in the spec).
    let retry_forever = strategy == Some(ReleaseStrategy::RetryOnFailure)
        || obj.condition("Reconciling").is_some_and(|c| {
            c.is_true()
                && c.reason == "ProgressingWithRetry"
                && c.message.starts_with("retrying after")
        });
    if matches!(ready_reason, "RollbackSucceeded" | "UninstallSucceeded") {
        NativeState::Remediated
    } else if stalled {
        NativeState::Exhausted
    } else if retry_forever {
        NativeState::RetryingForever
    } else {
        let (failures, retries) = match h.last_attempted_release_action.as_deref() {
            Some("install") => (h.install_failures, h.install_retries),
            _ => (h.upgrade_failures, h.upgrade_retries),
        };
        if retries >= 0 && failures > retries {
            NativeState::Exhausted
        } else {
            NativeState::Retrying
        }
    }
}

/// Keys of Flux objects named in a health-check message (`HelmRelease/ns/name status: ...`).
fn health_check_refs(message: &str) -> Vec<ObjectKey> {
    let mut out = vec![];
    for kind in [FluxKind::HelmRelease, FluxKind::Kustomization] {
        let needle = format!("{}/", kind.as_str());
        let mut rest = message;
        while let Some(i) = rest.find(&needle) {
            let tail = &rest[i + needle.len()..];
            let end = tail
                .find(|c: char| c.is_whitespace() || c == ',' || c == ']')
                .unwrap_or(tail.len());
            if let Some((ns, name)) = tail[..end].split_once('/') {
                out.push(ObjectKey::new(kind, ns, name));
            }
            rest = &tail[end..];
        }
    }
    out
}

/// `dependency 'ns/name' ...` in a DependencyNotReady message.
fn named_dependency(kind: FluxKind, message: &str) -> Option<ObjectKey> {
    let start = message.find("dependency '")? + "dependency '".len();
    let end = message[start..].find('\'')? + start;
    let (ns, name) = message[start..end].split_once('/')?;
    Some(ObjectKey::new(kind, ns, name))
}

/// The objects whose failure can cause `obj` to fail.
pub fn parents(obj: &FluxObject) -> Vec<ObjectKey> {
    let mut out: Vec<ObjectKey> = obj.depends_on.clone();
    out.extend(obj.source_ref.iter().cloned());
    for c in &obj.conditions {
        if c.is_true() {
            continue;
        }
        if c.reason == "HealthCheckFailed" {
            out.extend(health_check_refs(&c.message));
        }
        if c.reason == "DependencyNotReady" {
            out.extend(named_dependency(obj.key.kind, &c.message));
        }
    }
    let mut seen = BTreeSet::new();
    out.retain(|k| k != &obj.key && seen.insert(k.clone()));
    out
}

struct RootFinder<'a> {
    snap: &'a Snapshot,
    memo: HashMap<ObjectKey, Vec<ObjectKey>>,
}

impl RootFinder<'_> {
    /// Chain from `key` (exclusive) to its root: the first failing ancestor with no failing
    /// ancestor of its own. Deterministic (parents in declared order), cycle-safe.
    fn chain(&mut self, key: &ObjectKey, visiting: &mut BTreeSet<ObjectKey>) -> Vec<ObjectKey> {
        if let Some(c) = self.memo.get(key) {
            return c.clone();
        }
        let Some(obj) = self.snap.objects.get(key) else {
            return vec![];
        };
        visiting.insert(key.clone());
        // Blocked on its sources or dependencies: one of them between two failed attempts
        // (Ready Unknown while Flux reconciles it) is still what blocks it, so a root's passing
        // state does not move its dependents' root (nor rewrite their records).
        let gated = matches!(
            obj.condition("Ready").filter(|c| c.is_false()).map(|c| c.reason.as_str()),
            Some(r) if SOURCE_GATES.contains(&r)
        );
        let mut result = vec![];
        for p in parents(obj) {
            if visiting.contains(&p) {
                continue;
            }
            let missing = !self.snap.objects.contains_key(&p);
            let named_missing = missing
                && obj
                    .conditions
                    .iter()
                    .any(|c| c.reason == "DependencyNotReady");
            if named_missing {
                // A dependency that does not exist is the root of the cascade.
                result = vec![p];
                break;
            }
            if self.snap.failing(&p) || gated && self.snap.in_progress(&p) {
                let mut c = vec![p.clone()];
                c.extend(self.chain(&p, visiting));
                result = c;
                break;
            }
        }
        visiting.remove(key);
        self.memo.insert(key.clone(), result.clone());
        result
    }
}

/// The Ready reasons with which a Flux object says it waits on its sources or dependencies.
const SOURCE_GATES: [&str; 4] = [
    "SourceNotReady",
    "ArtifactFailed",
    "DependencyNotReady",
    "HealthCheckFailed",
];

/// Diagnose one object within its snapshot; `None` if it is not failing.
pub fn diagnose_object(snap: &Snapshot, obj: &FluxObject) -> Option<Diagnosis> {
    let mut finder = RootFinder {
        snap,
        memo: HashMap::new(),
    };
    diagnose_with(snap, obj, &mut finder)
}

fn diagnose_with(
    snap: &Snapshot,
    obj: &FluxObject,
    finder: &mut RootFinder<'_>,
) -> Option<Diagnosis> {
    let (cl, mut evidence) = classify_object(snap, obj)?;
    let chain = finder.chain(&obj.key, &mut BTreeSet::new());
    let root = chain.last().cloned().unwrap_or_else(|| obj.key.clone());
    let source_gate = matches!(
        obj.condition("Ready").map(|c| c.reason.as_str()),
        Some(r) if SOURCE_GATES.contains(&r)
    );
    // Blocked on a parent that is working (Ready Unknown: Flux reconciling it, e.g. between
    // two failed attempts) is the same incident as blocked on it failing: a root's passing
    // state never turns its dependents' incidents into new ones.
    let waits_on_parent = || {
        parents(obj)
            .iter()
            .any(|p| snap.objects.get(p).is_some_and(|o| !o.is_ready()))
    };
    let (case, retryable) = if cl.case == Case::DependencyCascade && root != obj.key
        || cl.case == Case::Other && source_gate && (root != obj.key || waits_on_parent())
    {
        (Case::DependencyCascade, true)
    } else {
        (cl.case, cl.retryable)
    };
    if root != obj.key {
        let state = if snap.objects.contains_key(&root) {
            "is not ready"
        } else {
            "does not exist"
        };
        evidence.push(Evidence {
            source: "dependency".into(),
            reason: String::new(),
            message: format!(
                "root cause {root} {state} (via {})",
                chain
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        });
    }
    if let (Some(secret), true) = (
        snap.credentials_of(obj),
        matches!(case, Case::GitAuth | Case::GitUnreachable),
    ) {
        evidence.push(secret_evidence(snap, obj, secret));
    }
    if case == Case::GitUnreachable
        && let Some(found) = obj.url.as_ref().and_then(|u| snap.probes.get(u))
    {
        evidence.push(Evidence {
            source: "probe".into(),
            reason: "Reachability".into(),
            message: format!("fluxmedic's own check, no credentials sent: {found}"),
        });
    }
    let summary = if root == obj.key {
        format!("{}: {}", case, cl.rule)
    } else {
        format!("{}: blocked by {}", case, root)
    };
    Some(Diagnosis {
        target: obj.key.clone(),
        case,
        retryable,
        root,
        chain,
        native: native_state(obj),
        summary,
        evidence,
    })
}

/// Keys a credentials Secret needs (source-controller's auth options for the kind and URL):
/// groups of keys, and whether every group is needed (SSH) or any one will do.
fn wanted_keys(obj: &FluxObject) -> (&'static [&'static [&'static str]], bool) {
    let url = obj.url.as_deref().unwrap_or("");
    match obj.key.kind {
        FluxKind::GitRepository if url.starts_with("ssh://") => {
            (&[&["identity"], &["known_hosts"]], true)
        }
        FluxKind::OCIRepository => (&[&[".dockerconfigjson"]], false),
        FluxKind::HelmRepository | FluxKind::HelmChart => {
            (&[&["username", "password"], &[".dockerconfigjson"]], false)
        }
        FluxKind::Bucket => (
            &[
                &["accesskey", "secretkey"],
                &["serviceaccount"],
                &["accountKey"],
                &["sasKey"],
                &["clientSecret"],
            ],
            false,
        ),
        _ => (&[&["username", "password"], &["bearerToken"]], false),
    }
}

/// What the credentials Secret of a failing source holds, by key name only.
fn secret_evidence(snap: &Snapshot, obj: &FluxObject, secret: &str) -> Evidence {
    let url = obj.url.as_deref().unwrap_or("");
    let (wanted, all) = wanted_keys(obj);
    let key = (obj.key.namespace.clone(), secret.to_string());
    let message = match snap.secrets.get(&key) {
        None if !snap.secrets_observed => {
            format!("Secret {}/{} referenced (not inspected)", key.0, key.1)
        }
        None => format!("Secret {}/{} does not exist", key.0, key.1),
        Some(info) => {
            let keys: Vec<&str> = info.keys.iter().map(String::as_str).collect();
            let has = |g: &&[&str]| g.iter().all(|k| info.keys.contains(*k));
            let ok = if all {
                wanted.iter().all(has)
            } else {
                wanted.iter().any(has)
            };
            let need = wanted
                .iter()
                .map(|g| g.join("+"))
                .collect::<Vec<_>>()
                .join(if all { " and " } else { " or " });
            let what = if obj.key.kind == FluxKind::GitRepository {
                format!("a {} URL", url.split("://").next().unwrap_or("?"))
            } else {
                format!("a {}", obj.key.kind.as_str())
            };
            if ok {
                format!(
                    "Secret {}/{} has keys [{}]; the server rejects them or is unreachable",
                    key.0,
                    key.1,
                    keys.join(", ")
                )
            } else {
                format!(
                    "Secret {}/{} has keys [{}] but {what} needs {need}",
                    key.0,
                    key.1,
                    keys.join(", "),
                )
            }
        }
    };
    Evidence {
        source: "secret".into(),
        reason: String::new(),
        message,
    }
}

/// Diagnose every failing object of the snapshot.
pub fn diagnose(snap: &Snapshot) -> Report {
    let mut finder = RootFinder {
        snap,
        memo: HashMap::new(),
    };
    let mut controllers_down: BTreeMap<String, String> = snap
        .request_bound
        .map(|b| controllers::unresponsive(snap, b))
        .unwrap_or_default()
        .into_iter()
        .map(|(c, u)| (c.to_string(), u.to_string()))
        .collect();
    // What its pods say is more telling than a request left waiting: it comes first.
    if let Some(bound) = snap.request_bound {
        let down = controllers::workloads_down(
            &snap.flux_deployments,
            &snap.flux_pods,
            snap.shard_selector.as_deref(),
            snap.now,
            bound,
        );
        for (c, why) in down {
            let why = match controllers_down.get(c) {
                Some(also) => format!("{why}; {also}"),
                None => why,
            };
            controllers_down.insert(c.to_string(), why);
        }
    }
    let diagnoses: Vec<Diagnosis> = snap
        .objects
        .values()
        .filter_map(|o| diagnose_with(snap, o, &mut finder))
        .map(|mut d| {
            if let Some(why) = controllers_down.get(controllers::controller_of(d.target.kind)) {
                d.evidence.push(Evidence {
                    source: "controller".into(),
                    reason: "ControllerNotWorking".into(),
                    message: why.clone(),
                });
            }
            d
        })
        .collect();
    let mut counts: BTreeMap<ObjectKey, usize> = BTreeMap::new();
    for d in diagnoses.iter().filter(|d| !d.is_root()) {
        *counts.entry(d.root.clone()).or_default() += 1;
    }
    let mut shared_roots: Vec<(ObjectKey, usize)> = counts.into_iter().collect();
    shared_roots.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Report {
        diagnoses,
        shared_roots,
        controllers_down,
    }
}

/// Dependents of `root` among `report`'s diagnoses, in topological order (closest first).
pub fn dependents_in_order(report: &Report, root: &ObjectKey) -> Vec<ObjectKey> {
    let mut v: Vec<&Diagnosis> = report
        .diagnoses
        .iter()
        .filter(|d| &d.root == root && !d.is_root())
        .collect();
    v.sort_by(|a, b| {
        a.chain
            .len()
            .cmp(&b.chain.len())
            .then_with(|| a.target.cmp(&b.target))
    });
    v.into_iter().map(|d| d.target.clone()).collect()
}

#[cfg(test)]
mod tests;
