//! Planning: (diagnosis, policy, incident history) -> the action to take, or why none is.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::Policy;
use crate::{
    api::{ActionKind, Mode, ObservedSecret, Phase},
    diagnose::{Case, Diagnosis, NativeState, Snapshot},
    flux::{FluxKind, FluxObject, ObjectKey},
};

/// What fluxmedic does to a target. Every parameter is derived from the snapshot and the
/// policy at planning time and recorded with the step, so a step finished after a crash can
/// be compared with what today's plan calls for.
///
/// Recorded as an object whose keys read as words in `kubectl describe`
/// (`{"type": "RetryRelease", "withSource": ...}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Action {
    /// requestedAt on the target.
    Reconcile,
    /// requestedAt on a source (polling while a fix is awaited, or an unreachable source).
    ReconcileSource { source: ObjectKey },
    /// The source's Secret changed: reconcile the source, then those of its consumers the
    /// deciding policy may change.
    ReconcileSourceAndConsumers {
        source: ObjectKey,
        #[serde(default)]
        consumers: Vec<ObjectKey>,
    },
    /// requestedAt + resetAt + forceAt, one fresh token; the source first when given.
    RetryRelease { with_source: Option<ObjectKey> },
    /// Suspend, `helm rollback` to `to_version`, keep suspended (AwaitingFix).
    Rollback {
        to_version: i64,
        #[serde(default)]
        release: ReleaseRef,
    },
    /// Resume a HelmRelease fluxmedic suspended, now that the fix landed.
    Resume,
    /// Mark the stale pending release failed (or delete its Secret), then reconcile.
    UnlockRelease {
        namespace: String,
        secret: String,
        version: i64,
        delete: bool,
        /// The release the Secret must belong to (checked against its payload).
        #[serde(default)]
        release: ReleaseRef,
    },
}

/// A Helm release as helm-controller manages it for one HelmRelease, verified to belong to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRef {
    pub name: String,
    /// Where the release's storage Secrets are.
    pub storage_namespace: String,
    /// Where its objects go (targetNamespace).
    pub namespace: String,
    /// The identity helm-controller uses for the HelmRelease ([`super::identity`]): every
    /// Helm action on this release runs as it, never with fluxmedic's own rights.
    #[serde(default)]
    pub identity: super::identity::ServiceAccountRef,
}

impl Action {
    /// The action as a record holds it.
    pub fn to_record(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// An action read back from a record: its object, or (`legacy`) the JSON text earlier
    /// versions wrote, externally tagged with snake_case fields
    /// (`{"RetryRelease":{"with_source":null}}`, `"Reconcile"`). `None` when it is neither.
    pub fn from_record(
        planned: Option<&serde_json::Value>,
        legacy: Option<&str>,
    ) -> Option<Action> {
        if let Some(v) = planned {
            return serde_json::from_value(v.clone()).ok();
        }
        let v: serde_json::Value = serde_json::from_str(legacy?).ok()?;
        serde_json::from_value(from_external_tagging(v)?).ok()
    }

    /// The JSON text earlier versions wrote and read (externally tagged, snake_case fields).
    pub fn to_legacy_text(&self) -> String {
        let serde_json::Value::Object(mut fields) = self.to_record() else {
            return String::new();
        };
        let Some(serde_json::Value::String(name)) = fields.remove("type") else {
            return String::new();
        };
        let snake = |k: &str| {
            k.chars().fold(String::new(), |mut out, c| {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
                out
            })
        };
        let fields: serde_json::Map<_, _> =
            fields.into_iter().map(|(k, v)| (snake(&k), v)).collect();
        let v = match fields.is_empty() {
            true => serde_json::Value::String(name),
            false => serde_json::json!({ name: fields }),
        };
        v.to_string()
    }

    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Reconcile
            | Action::ReconcileSource { .. }
            | Action::ReconcileSourceAndConsumers { .. } => ActionKind::Reconcile,
            Action::RetryRelease { .. } => ActionKind::Retry,
            Action::Rollback { .. } | Action::Resume => ActionKind::Rollback,
            Action::UnlockRelease { delete: false, .. } => ActionKind::Unlock,
            Action::UnlockRelease { delete: true, .. } => ActionKind::DeletePendingRelease,
        }
    }

    /// Short name for metrics, Events and the printer column.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Reconcile => "reconcile",
            Action::ReconcileSource { .. } => "reconcile-source",
            Action::ReconcileSourceAndConsumers { .. } => "reconcile-source-and-consumers",
            Action::RetryRelease { .. } => "retry",
            Action::Rollback { .. } => "rollback",
            Action::Resume => "resume",
            Action::UnlockRelease { delete: false, .. } => "unlock",
            Action::UnlockRelease { delete: true, .. } => "delete-pending-release",
        }
    }

    /// Whether the action counts against `limits.maxAttempts` (polling and follow-up
    /// reconciles do not: they only ask Flux to look again).
    pub fn is_attempt(&self) -> bool {
        matches!(
            self,
            Action::RetryRelease { .. } | Action::Rollback { .. } | Action::UnlockRelease { .. }
        )
    }

    fn is_poll(&self) -> bool {
        matches!(self, Action::ReconcileSource { .. })
    }

    /// The Flux objects whose controllers carry this action out, for `target`.
    pub fn acts_through<'a>(&'a self, target: &'a ObjectKey) -> Vec<&'a ObjectKey> {
        let mut v = vec![target];
        match self {
            Action::ReconcileSource { source } => v.push(source),
            Action::ReconcileSourceAndConsumers { source, consumers } => {
                v.push(source);
                v.extend(consumers);
            }
            Action::RetryRelease {
                with_source: Some(s),
            } => v.push(s),
            _ => {}
        }
        v
    }

    /// The namespaces this action writes in, for `target`.
    pub fn writes<'a>(&'a self, target: &'a ObjectKey) -> Vec<&'a str> {
        match self {
            Action::Reconcile | Action::Resume => vec![&target.namespace],
            Action::ReconcileSource { source } => vec![&source.namespace],
            Action::ReconcileSourceAndConsumers { source, consumers } => {
                let mut v: Vec<&str> = vec![&source.namespace];
                v.extend(consumers.iter().map(|c| c.namespace.as_str()));
                v
            }
            Action::RetryRelease { with_source } => {
                let mut v: Vec<&str> = vec![&target.namespace];
                v.extend(with_source.iter().map(|s| s.namespace.as_str()));
                v
            }
            // Suspend/resume the target; helm writes storage and the release's objects.
            Action::Rollback { release, .. } => vec![
                &target.namespace,
                &release.storage_namespace,
                &release.namespace,
            ],
            Action::UnlockRelease { namespace, .. } => vec![&target.namespace, namespace],
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ReconcileSource { source }
            | Action::ReconcileSourceAndConsumers { source, .. } => {
                write!(f, "{} {}", self.name(), source)
            }
            Action::RetryRelease {
                with_source: Some(s),
            } => write!(f, "retry (with source {s})"),
            Action::Rollback { to_version, .. } => write!(f, "rollback to revision {to_version}"),
            Action::UnlockRelease {
                namespace, secret, ..
            } => write!(f, "{} {namespace}/{secret}", self.name()),
            _ => f.write_str(self.name()),
        }
    }
}

/// `"Name"` or `{"Name": {"snake_field": v}}` as `{"type": "Name", "snakeField": v}`.
fn from_external_tagging(v: serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::{Map, Value};
    let (name, fields) = match v {
        Value::String(name) => (name, Map::new()),
        Value::Object(m) if m.len() == 1 => match m.into_iter().next()? {
            (name, Value::Object(fields)) => (name, fields),
            _ => return None,
        },
        _ => return None,
    };
    let camel = |f: &str| {
        let mut out = String::with_capacity(f.len());
        let mut up = false;
        for c in f.chars() {
            match c {
                '_' => up = true,
                c if up => {
                    out.extend(c.to_uppercase());
                    up = false;
                }
                c => out.push(c),
            }
        }
        out
    };
    let mut out: Map<String, Value> = fields.into_iter().map(|(k, v)| (camel(&k), v)).collect();
    out.insert("type".into(), Value::String(name));
    Some(Value::Object(out))
}

/// Why nothing is done now. Every text is stable while the situation is (no countdowns, no
/// counts that drift), so a waiting incident is written only when something changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Blocked {
    NoPolicy,
    Observe,
    AwaitingApproval,
    ActionNotAllowed(ActionKind),
    /// The next action may come at this unix second.
    Cooldown {
        until: i64,
    },
    MaxAttempts,
    CircuitBreakerOpen {
        threshold: u32,
    },
    RetryCannotHelp(String),
    FluxRemediating(String),
    BlockedByRoot(ObjectKey),
    AwaitingFix(String),
    NotStale(String),
    NoRunbook,
    /// The action would write in a namespace the deciding policy may not change.
    OutsidePolicyNamespace {
        namespace: String,
        policy: String,
    },
    /// The target is suspended and fluxmedic did not suspend it: a person is working on it.
    SuspendedByPerson,
    /// Helm storage that cannot be shown to belong to this HelmRelease, or a release
    /// fluxmedic cannot act on with its own rights (another cluster).
    ReleaseNotVerified(String),
    /// The identity helm-controller uses for the HelmRelease cannot be told: no Helm action
    /// runs (fluxmedic never lends its own rights).
    IdentityUnknown(String),
    /// The policy asks for an action this installation does not enable.
    ActionNotEnabled(ActionKind),
    /// The Flux controller that would carry the action out is not working.
    ControllerDown(String),
    /// The same action failed in a way a retry cannot change: a person is needed.
    GaveUp(String),
}

impl Blocked {
    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Blocked::NoPolicy => "no-policy",
            Blocked::Observe => "observe",
            Blocked::AwaitingApproval => "awaiting-approval",
            Blocked::ActionNotAllowed(_) => "action-not-allowed",
            Blocked::Cooldown { .. } => "cooldown",
            Blocked::MaxAttempts => "max-attempts",
            Blocked::CircuitBreakerOpen { .. } => "circuit-breaker-open",
            Blocked::RetryCannotHelp(_) => "retry-cannot-help",
            Blocked::FluxRemediating(_) => "flux-remediating",
            Blocked::BlockedByRoot(_) => "blocked-by-root",
            Blocked::AwaitingFix(_) => "awaiting-fix",
            Blocked::NotStale(_) => "not-stale",
            Blocked::NoRunbook => "no-runbook",
            Blocked::OutsidePolicyNamespace { .. } => "outside-policy-namespace",
            Blocked::SuspendedByPerson => "suspended-by-person",
            Blocked::ReleaseNotVerified(_) => "release-not-verified",
            Blocked::IdentityUnknown(_) => "identity-unknown",
            Blocked::ActionNotEnabled(_) => "action-not-enabled",
            Blocked::ControllerDown(_) => "controller-down",
            Blocked::GaveUp(_) => "gave-up",
        }
    }

    /// When the next action may come, if this is a wait with a known end.
    pub fn until(&self) -> Option<i64> {
        match self {
            Blocked::Cooldown { until } => Some(*until),
            _ => None,
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::NoPolicy => f.write_str("no RemediationPolicy covers this object: record only"),
            Blocked::Observe => f.write_str("policy mode is Observe: record only"),
            Blocked::AwaitingApproval => {
                f.write_str("waiting for approval")
            }
            Blocked::ActionNotAllowed(a) => write!(f, "the policy does not allow action {a:?} for this case"),
            Blocked::Cooldown { until } => write!(
                f,
                "cooldown: next action at {}",
                jiff::Timestamp::from_second(*until).map(|t| t.to_string()).unwrap_or_default()
            ),
            Blocked::MaxAttempts => f.write_str("maximum attempts for this incident reached"),
            Blocked::CircuitBreakerOpen { threshold } => write!(
                f,
                "circuit breaker open: more than {threshold} Flux objects failing; acting on shared roots only"
            ),
            Blocked::RetryCannotHelp(why) => write!(f, "a retry cannot help: {why}"),
            Blocked::FluxRemediating(why) => write!(f, "Flux is handling it: {why}"),
            Blocked::BlockedByRoot(root) => write!(f, "blocked by {root}; acting on the root only"),
            Blocked::AwaitingFix(why) => write!(f, "awaiting a fix: {why}"),
            Blocked::NotStale(why) => write!(f, "not a stale lock: {why}"),
            Blocked::NoRunbook => f.write_str("no runbook action for this failure: record only"),
            Blocked::OutsidePolicyNamespace { namespace, policy } => write!(
                f,
                "the action would change namespace {namespace}, which policy {policy} may not change: record only"
            ),
            Blocked::SuspendedByPerson => f.write_str(
                "the target is suspended and fluxmedic did not suspend it: record only until it is resumed",
            ),
            Blocked::ReleaseNotVerified(why) => write!(f, "record only: {why}"),
            Blocked::IdentityUnknown(why) => write!(f, "record only: {why}"),
            Blocked::ActionNotEnabled(a) => write!(
                f,
                "the policy asks for {a:?}, which this installation does not enable (chart value deletePendingRelease.enabled, flag --allow-delete-pending-release): record only"
            ),
            Blocked::ControllerDown(why) => write!(f, "a person is needed: {why}"),
            Blocked::GaveUp(why) => write!(
                f,
                "a person is needed: the last attempt failed in a way doing it again cannot change, and fluxmedic does not repeat it: {why}"
            ),
        }
    }
}

/// What is known about the open incident (from its sealed record).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IncidentView {
    pub phase: Phase,
    pub attempts: u32,
    /// Rollbacks started in this incident (also counted in `attempts`).
    pub rollbacks: u32,
    pub polls: u32,
    /// The action a person approved (bound to exactly that action, see
    /// [`crate::incident::Record::approved_action`]).
    pub approved: Option<Action>,
    pub detected_at: i64,
    pub last_action_at: Option<i64>,
    /// fluxmedic holds a suspension of the target (after a rollback), or is in the middle of
    /// the rollback that makes one.
    pub holds: bool,
    /// The step a crash interrupted, being re-derived: planned again it is finished without a
    /// new cooldown or attempt, and only if today's plan still calls for exactly it.
    pub interrupted: Option<Action>,
    /// The last step failed in a way doing it again cannot change (its input is invalid or
    /// unreadable): that action and why. It is not done again in this incident.
    pub gave_up: Option<(Action, String)>,
    pub observed_generation: Option<i64>,
    pub observed_revision: Option<String>,
    pub observed_secret: Option<ObservedSecret>,
}

/// Cluster-wide facts the plan needs.
#[derive(Clone, Copy, Debug)]
pub struct PlanContext<'a> {
    pub snapshot: &'a Snapshot,
    pub failing_targets: usize,
    pub circuit_breaker: u32,
    /// Whether the target is the root of other failures.
    pub shared_root: bool,
    /// The operator's namespace: only policies there may change other namespaces.
    pub operator_namespace: &'a str,
    /// Flux controllers not processing their objects ([`crate::diagnose::Report`]).
    pub controllers_down: &'a std::collections::BTreeMap<String, String>,
    /// The sources an open incident of fluxmedic's polls for a fix, each with that
    /// incident's target ([`crate::incident::pollers`]).
    pub pollers: &'a Pollers,
}

/// (Namespace, source) → the target in that namespace whose incident polls the source for a
/// fix for all of that namespace's incidents on it.
pub type Pollers = std::collections::BTreeMap<(String, ObjectKey), ObjectKey>;

/// The outcome of planning.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub mode: Mode,
    /// What the runbook says to do, whether or not it may be done now.
    pub planned: Option<Action>,
    /// Why the planned action (or any action) is not taken now. `None` = act now.
    pub blocked: Option<Blocked>,
    /// The incident has been open longer than the policy's escalation threshold.
    pub escalate: bool,
}

impl Decision {
    pub fn act(&self) -> Option<&Action> {
        if self.blocked.is_none() {
            self.planned.as_ref()
        } else {
            None
        }
    }
}

/// The current source revision a target consumes (its source's artifact revision).
pub fn source_revision(snap: &Snapshot, target: &FluxObject) -> Option<String> {
    target
        .source_ref
        .as_ref()
        .and_then(|s| snap.objects.get(s))
        .and_then(|s| s.artifact_revision.clone())
}

/// A dependency as kustomize-controller's dependency check sees it: Ready for its current
/// generation and, when it shares the dependent's source, applied at that source's revision.
fn caught_up(snap: &Snapshot, dep: &FluxObject, dependent: &FluxObject) -> bool {
    if !dep.is_ready() {
        return false;
    }
    if let (Some(g), Some(o)) = (dep.generation, dep.observed_generation)
        && g != o
    {
        return false;
    }
    if dep.source_ref.is_some() && dep.source_ref == dependent.source_ref {
        return match (source_revision(snap, dep), &dep.last_attempted_revision) {
            (Some(current), Some(applied)) => &current == applied,
            _ => true,
        };
    }
    true
}

/// The credentials Secret a source references, as the snapshot sees it now.
pub fn observed_secret(snap: &Snapshot, source: &FluxObject) -> Option<ObservedSecret> {
    let name = snap.credentials_of(source)?;
    Some(ObservedSecret {
        name: name.clone(),
        resource_version: snap
            .secrets
            .get(&(source.key.namespace.clone(), name.clone()))
            .and_then(|s| s.resource_version.clone()),
    })
}

/// Kustomizations, HelmReleases and HelmCharts that consume `source` (directly or via a
/// HelmChart), sorted: charts first.
pub fn consumers(snap: &Snapshot, source: &ObjectKey) -> Vec<ObjectKey> {
    let charts: Vec<&ObjectKey> = snap
        .objects
        .values()
        .filter(|o| o.key.kind == FluxKind::HelmChart && o.source_ref.as_ref() == Some(source))
        .map(|o| &o.key)
        .collect();
    let mut out: Vec<ObjectKey> = snap
        .objects
        .values()
        .filter(|o| !o.key.kind.is_source() || o.key.kind == FluxKind::HelmChart)
        .filter(|o| {
            o.source_ref
                .as_ref()
                .is_some_and(|s| s == source || charts.contains(&s))
        })
        .map(|o| o.key.clone())
        .collect();
    out.sort_by_key(|k| (k.kind != FluxKind::HelmChart, k.clone()));
    out
}

/// The Helm release of a HelmRelease, when its storage verifiably belongs to it: the name
/// and namespaces helm-controller derives, agreeing with what helm-controller last recorded
/// in the status, and no other HelmRelease mapping to the same storage. Releases in another
/// cluster (`spec.kubeConfig`) never match local storage. Storage outside the HelmRelease's
/// own namespace needs positive evidence that helm-controller put it there
/// ([`foreign_storage_evidence`]); `revision` is the one the action is about.
pub fn verified_release(
    snap: &Snapshot,
    target: &FluxObject,
    revision: Option<i64>,
) -> Result<ReleaseRef, Blocked> {
    let h = target.helm.as_ref().ok_or(Blocked::NoRunbook)?;
    if h.remote {
        return Err(Blocked::ReleaseNotVerified(
            "the release lives in another cluster (spec.kubeConfig); fluxmedic acts on Helm storage of this cluster only".into(),
        ));
    }
    if let Some(recorded) = &h.status_storage_namespace
        && recorded != &h.storage_namespace
    {
        return Err(Blocked::ReleaseNotVerified(format!(
            "helm-controller last used storage namespace {recorded}, the spec now says {}; waiting until it has reconciled the change",
            h.storage_namespace
        )));
    }
    if let Some(last) = h.history.first()
        && !last.name.is_empty()
        && (last.name != h.release_name
            || !last.namespace.is_empty() && last.namespace != h.release_namespace)
    {
        return Err(Blocked::ReleaseNotVerified(format!(
            "the HelmRelease's history names release {}/{}, not {}/{}",
            last.namespace, last.name, h.release_namespace, h.release_name
        )));
    }
    if h.storage_namespace != target.key.namespace {
        foreign_storage_evidence(target, h, revision)?;
    }
    let others: Vec<&ObjectKey> = snap
        .objects
        .values()
        .filter(|o| o.key != target.key)
        .filter(|o| {
            o.helm.as_ref().is_some_and(|oh| {
                !oh.remote
                    && oh.release_name == h.release_name
                    && oh.storage_namespace == h.storage_namespace
            })
        })
        .map(|o| &o.key)
        .collect();
    if let Some(other) = others.first() {
        return Err(Blocked::ReleaseNotVerified(format!(
            "release {}/{} is also claimed by {other}; fluxmedic does not touch storage two HelmReleases claim",
            h.storage_namespace, h.release_name
        )));
    }
    Ok(ReleaseRef {
        name: h.release_name.clone(),
        storage_namespace: h.storage_namespace.clone(),
        namespace: h.release_namespace.clone(),
        identity: super::identity::helm_identity(snap, target)?,
    })
}

/// Positive evidence that helm-controller keeps this HelmRelease's release in a namespace
/// other than the HelmRelease's own (nothing contradicting it is not enough there: the
/// storage may be another team's): the HelmRelease is reconciled and not suspended by a
/// person, its status (which only helm-controller writes) names that storage namespace, and
/// its history holds the revision acted on (for a pending one a crashed action left, the
/// revision just before it).
fn foreign_storage_evidence(
    target: &FluxObject,
    h: &crate::flux::HelmReleaseInfo,
    revision: Option<i64>,
) -> Result<(), Blocked> {
    let refuse = |why: String| {
        Err(Blocked::ReleaseNotVerified(format!(
            "storage namespace {} is not the HelmRelease's own: {why}",
            h.storage_namespace
        )))
    };
    let held_by_fluxmedic = target
        .reconcile_annotations
        .contains_key(crate::api::SUSPENDED_BY_ANNOTATION);
    if target.suspended && !held_by_fluxmedic {
        return refuse("it is suspended, so helm-controller vouches for nothing there now".into());
    }
    if target.observed_generation.unwrap_or(0) <= 0 || h.history.is_empty() {
        return refuse("helm-controller has never reconciled it".into());
    }
    if h.status_storage_namespace.as_deref() != Some(h.storage_namespace.as_str()) {
        return refuse("helm-controller's status does not name it".into());
    }
    let ours = |s: &&crate::flux::ReleaseSnapshot| {
        s.name == h.release_name && (s.namespace.is_empty() || s.namespace == h.release_namespace)
    };
    if let Some(v) = revision {
        let recorded = h.history.iter().filter(ours).any(|s| s.version == v)
            || h.history
                .first()
                .filter(ours)
                .is_some_and(|s| s.version == v - 1);
        if !recorded {
            return refuse(format!(
                "helm-controller's history does not hold revision {v} (or the one before it)"
            ));
        }
    }
    Ok(())
}

/// A rollback to the last good revision, when the policy allows one and the history has one
/// to go back to (`None`): the action, or why it is refused.
fn plan_rollback(
    snap: &Snapshot,
    target: &FluxObject,
    policy: &Policy,
    case: Case,
) -> Option<Result<Action, Blocked>> {
    if !policy.allows(case, ActionKind::Rollback) {
        return None;
    }
    let history = snap.history_of(target)?;
    let good = history.last_good()?;
    if history.latest().is_none_or(|l| l.status.is_good()) {
        return None;
    }
    // Only on a current view: a spec changed since helm-controller last reconciled it (a fix
    // pushed after retries ran out) is helm-controller's to act on, not to roll back and hold.
    if !target.status_is_current() {
        return Some(Err(not_current(target)));
    }
    Some(match verified_release(snap, target, Some(good.version)) {
        Ok(release) if release.storage_namespace == release.namespace => Ok(Action::Rollback {
            to_version: good.version,
            release,
        }),
        // The helm CLI has one --namespace for storage and objects alike: a rollback would
        // apply namespace-less objects into the storage namespace.
        Ok(release) => Err(Blocked::ReleaseNotVerified(format!(
            "release {} keeps its storage in {} but its objects in {}; helm rollback cannot keep them apart, roll back by hand",
            release.name, release.storage_namespace, release.namespace
        ))),
        Err(b) => Err(b),
    })
}

/// A view current but for fluxmedic's own suspend (one generation, made by the rollback a
/// crash interrupted): nothing else changed the HelmRelease since it was planned.
fn suspended_at_most_by_us(target: &FluxObject) -> bool {
    target.status_is_current()
        || target.suspended
            && target
                .reconcile_annotations
                .contains_key(crate::api::SUSPENDED_BY_ANNOTATION)
            && matches!((target.generation, target.observed_generation), (Some(g), Some(o)) if g == o + 1)
}

/// How long fluxmedic waits between polls: the policy's interval, doubled per poll so far,
/// up to its maximum.
fn poll_wait(policy: &Policy, inc: &IncidentView) -> Duration {
    let factor = 1u32.checked_shl(inc.polls.min(16)).unwrap_or(u32::MAX);
    policy
        .poll_interval
        .saturating_mul(factor)
        .min(policy.max_poll_interval)
}

/// When this incident's cooldown after its last action ends (none for the step a crash
/// interrupted: it was already counted and waited for).
fn cooldown_until(a: &Action, inc: &IncidentView, policy: &Policy, resuming: bool) -> Option<i64> {
    let last = inc.last_action_at.filter(|_| !resuming)?;
    let wait = if a.is_poll() {
        poll_wait(policy, inc)
    } else if matches!(a, Action::Resume | Action::Reconcile) {
        // follow-ups after a fix landed or a root recovered: no cooldown beyond a beat
        Duration::from_secs(2)
    } else {
        policy.cooldown
    };
    Some(last.saturating_add(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX)))
}

/// A source the consumers of one namespace share is polled for a fix by one incident for
/// all of them ([`Pollers`]): the others wait on its polling. The reason names no time, so a
/// waiting record is not rewritten at each of the other's polls; once that incident stops
/// polling, the next in line polls. (Not across namespaces: another tenant's policy, its
/// backoff or mode, never slows this one's polls.)
fn polled_by_another(
    a: &Action,
    case: Case,
    target: &FluxObject,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Option<Blocked> {
    let (Action::ReconcileSource { source }, Case::InvalidManifests) = (a, case) else {
        return None;
    };
    let poller = ctx
        .pollers
        .get(&(target.key.namespace.clone(), source.clone()))?;
    (*poller != target.key && inc.interrupted.is_none()).then(|| {
        Blocked::AwaitingFix(format!(
            "{source} is polled for a fix by the incident of {poller}; fluxmedic reconciles {} once the fix is fetched",
            target.key
        ))
    })
}

fn not_current(target: &FluxObject) -> Blocked {
    Blocked::FluxRemediating(format!(
        "{} changed (generation {}) since helm-controller last reconciled it (generation {}): it acts on the change first",
        target.key,
        target.generation.unwrap_or_default(),
        target.observed_generation.unwrap_or_default()
    ))
}

/// The runbook, before mode and limits.
fn runbook(
    d: &Diagnosis,
    target: &FluxObject,
    policy: &Policy,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Result<Action, Blocked> {
    let plan = match d.case {
        Case::FailedRelease => failed_release,
        Case::InvalidManifests => invalid_manifests,
        Case::GitAuth | Case::GitUnreachable => git_source,
        Case::DependencyCascade => dependency_cascade,
        Case::StaleLock => stale_lock,
        Case::Other => return Err(Blocked::NoRunbook),
    };
    plan(d, target, policy, inc, ctx)
}

/// A failed release: finish an interrupted rollback, leave Flux's own retries to it, retry
/// within the policy's attempts, then roll back (when allowed) or say why not.
fn failed_release(
    d: &Diagnosis,
    target: &FluxObject,
    policy: &Policy,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Result<Action, Blocked> {
    let snap = ctx.snapshot;
    // A rollback a crash interrupted is finished as recorded while the release it
    // names is still this HelmRelease's, nothing but its own suspend changed the
    // HelmRelease, and it goes to the last good revision (the rollback itself may have
    // landed, which makes the latest revision good again).
    if let Some(Action::Rollback {
        to_version,
        release,
    }) = &inc.interrupted
        && policy.allows(d.case, ActionKind::Rollback)
        && suspended_at_most_by_us(target)
        && verified_release(snap, target, Some(*to_version)).as_ref() == Ok(release)
        // Only to the last good revision (the one before it, if the rollback landed):
        // a record restored from an older incident names an older one.
        && snap
            .history_of(target)
            .and_then(|h| h.last_good())
            .is_some_and(|g| g.version == *to_version)
    {
        return Ok(inc.interrupted.clone().unwrap_or(Action::Resume));
    }
    let max = i64::from(policy.spec.limits.max_attempts);
    match d.native {
        NativeState::Retrying => {
            return Err(Blocked::FluxRemediating(
                "helm-controller will retry the release by itself".into(),
            ));
        }
        NativeState::RetryingForever => {
            let attempts = crate::diagnose::flux_attempts(target);
            if d.retryable && attempts < max {
                return Err(Blocked::FluxRemediating(format!(
                    "helm-controller retries it without a limit (RetryOnFailure): {attempts} failed attempt(s) of the {max} the policy allows before escalating"
                )));
            }
            // Flux would go on forever: a retry cannot help, or it has tried as often
            // as the policy allows. A retry of ours adds nothing; a rollback (with its
            // hold, which also stops the loop) may, and a person is called.
            return match plan_rollback(snap, target, policy, d.case) {
                Some(Ok(a)) => Ok(a),
                Some(Err(b)) => Err(b),
                None if !d.retryable => Err(Blocked::RetryCannotHelp(format!(
                    "helm-controller retries it without a limit (RetryOnFailure), {attempts} time(s) so far, and a retry cannot help: fix the release input in Git, or allow Rollback"
                ))),
                None => Err(Blocked::MaxAttempts),
            };
        }
        NativeState::Remediated => {
            return Err(Blocked::RetryCannotHelp(
                "helm-controller rolled back to the last good release; the failing upgrade needs a fix in Git".into(),
            ));
        }
        NativeState::Exhausted => {}
    }
    // An interrupted retry already counted its attempt.
    let retry_left = inc.attempts < policy.spec.limits.max_attempts
        || matches!(inc.interrupted, Some(Action::RetryRelease { .. }));
    if d.retryable && retry_left && policy.allows(d.case, ActionKind::Retry) {
        let with_source = policy.rule(d.case).is_some_and(|r| r.with_source);
        return Ok(Action::RetryRelease {
            with_source: target.source_ref.clone().filter(|_| with_source),
        });
    }
    let rollback = plan_rollback(snap, target, policy, d.case);
    if let Some(Ok(a)) = rollback {
        return Ok(a);
    }
    let rollback_refused = rollback.and_then(Result::err);
    let no_rollback_target = d
        .evidence
        .iter()
        .any(|e| e.reason == "MissingRollbackTarget");
    if !d.retryable {
        Err(rollback_refused.unwrap_or_else(|| {
            Blocked::RetryCannotHelp(if no_rollback_target {
                "helm-controller has no revision left to roll back to (MissingRollbackTarget: the history was pruned, or no release ever succeeded); fix the release in Git, or roll back or reinstall by hand".into()
            } else {
                "the release input is invalid; fix it in Git".into()
            })
        }))
    } else if !retry_left {
        Err(rollback_refused.unwrap_or(Blocked::MaxAttempts))
    } else {
        Err(Blocked::ActionNotAllowed(ActionKind::Retry))
    }
}

/// Invalid manifests: the fix comes from Git; poll the source, reconcile once it moved.
fn invalid_manifests(
    _d: &Diagnosis,
    target: &FluxObject,
    _policy: &Policy,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Result<Action, Blocked> {
    let snap = ctx.snapshot;
    let Some(source) = target.source_ref.clone() else {
        return Err(Blocked::RetryCannotHelp(
            "the manifests are invalid and there is no source to poll".into(),
        ));
    };
    let rev = source_revision(snap, target);
    if inc.observed_revision.is_some() && rev != inc.observed_revision {
        return Ok(Action::Reconcile);
    }
    if snap.objects.get(&source).is_some_and(|s| s.suspended) {
        return Err(Blocked::AwaitingFix(format!(
            "{source} is suspended: Flux fetches nothing from it until it is resumed"
        )));
    }
    Ok(Action::ReconcileSource { source })
}

/// A source that cannot fetch: act once its credentials Secret changed (the source and its
/// consumers), poll an unreachable one, otherwise say what to fix.
fn git_source(
    d: &Diagnosis,
    target: &FluxObject,
    policy: &Policy,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Result<Action, Blocked> {
    let snap = ctx.snapshot;
    // A chart whose repository fails the same way: the repository's incident acts
    // (and reconciles the chart with it); a second request from here adds nothing.
    if !d.is_root() && snap.objects.contains_key(&d.root) {
        return Err(Blocked::BlockedByRoot(d.root.clone()));
    }
    let now = observed_secret(snap, target);
    let changed = inc.observed_secret.is_some() && now != inc.observed_secret;
    if changed {
        let consumers = consumers(snap, &target.key)
            .into_iter()
            .filter(|c| policy.may_write(&c.namespace, ctx.operator_namespace))
            .filter(|c| snap.objects.get(c).is_none_or(|o| !o.suspended))
            .collect();
        Ok(Action::ReconcileSourceAndConsumers {
            source: target.key.clone(),
            consumers,
        })
    } else if d.case == Case::GitUnreachable {
        Ok(Action::ReconcileSource {
            source: target.key.clone(),
        })
    } else {
        Err(Blocked::RetryCannotHelp(
            match (snap.credentials_of(target), target.key.kind) {
                (Some(secret), _) => format!(
                    "fix the credentials in Secret {}/{secret}; fluxmedic reconciles as soon as it changes",
                    target.key.namespace
                ),
                (None, FluxKind::HelmChart) => "the chart's HelmRepository references no credentials Secret; add one (spec.secretRef)".into(),
                (None, _) => {
                    "the source references no credentials Secret; add one (spec.secretRef)"
                        .into()
                }
            },
        ))
    }
}

/// A dependent: wait for its root, then reconcile once every parent has caught up.
fn dependency_cascade(
    d: &Diagnosis,
    target: &FluxObject,
    _policy: &Policy,
    _inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Result<Action, Blocked> {
    let snap = ctx.snapshot;
    if !d.is_root() {
        if snap.objects.contains_key(&d.root) {
            return Err(Blocked::BlockedByRoot(d.root.clone()));
        }
        return Err(Blocked::RetryCannotHelp(format!(
            "dependency {} does not exist",
            d.root
        )));
    }
    // No ancestor is failing; act only once every one of them is caught up the way
    // kustomize-controller checks it (one merely progressing, or Ready on an older
    // revision of the shared source, would make the reconcile fail again).
    if let Some(p) = crate::diagnose::parents(target).into_iter().find(|p| {
        snap.objects
            .get(p)
            .is_some_and(|o| !caught_up(snap, o, target))
    }) {
        return Err(Blocked::FluxRemediating(format!(
            "waiting for {p} to become Ready on its source's current revision"
        )));
    }
    // Every ancestor is Ready again: ask Flux to look now instead of in 30s.
    Ok(Action::Reconcile)
}

/// A stale Helm lock: unlock (or delete) the pending release once it is older than the
/// threshold and verifiably this HelmRelease's.
fn stale_lock(
    d: &Diagnosis,
    target: &FluxObject,
    policy: &Policy,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Result<Action, Blocked> {
    let snap = ctx.snapshot;
    if target.is_running_helm_action() {
        return Err(Blocked::FluxRemediating(
            "helm-controller is running a release action".into(),
        ));
    }
    let h = target.helm.as_ref().ok_or(Blocked::NoRunbook)?;
    let Some(history) = snap.history_of(target) else {
        return Err(Blocked::NotStale("no release in Helm storage".into()));
    };
    let release = verified_release(snap, target, history.latest().map(|l| l.version))?;
    // An unlock a crash interrupted is finished as recorded (the release may already
    // be unlocked; the unlock re-checks, and the reconcile is still owed).
    if let Some(
        a @ Action::UnlockRelease {
            release: recorded, ..
        },
    ) = &inc.interrupted
        && recorded == &release
    {
        return Ok(a.clone());
    }
    // The policy's threshold, else the release's timeout, never below Helm's default.
    let threshold = policy
        .stale_threshold
        .unwrap_or(crate::helm::stale_after(h.timeout));
    let delete = policy.allows(d.case, ActionKind::DeletePendingRelease);
    if delete && !snap.allow_delete_pending_release {
        return Err(Blocked::ActionNotEnabled(ActionKind::DeletePendingRelease));
    }
    match history.stale_pending(snap.now, threshold) {
        Some(p) => Ok(Action::UnlockRelease {
            namespace: p.namespace.clone(),
            secret: p.secret_name.clone(),
            version: p.version,
            delete,
            release,
        }),
        None => Err(Blocked::NotStale(format!(
            "the latest release is not pending, or was written less than {} ago",
            crate::flux::format_duration(threshold)
        ))),
    }
}

/// Plan what to do about `d` on `target` under `policy`.
pub fn plan(
    d: &Diagnosis,
    target: &FluxObject,
    policy: Option<&Policy>,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Decision {
    let now = ctx.snapshot.now;
    let Some(policy) = policy else {
        return Decision {
            mode: Mode::Observe,
            planned: None,
            blocked: Some(Blocked::NoPolicy),
            escalate: false,
        };
    };
    let mode = policy.mode(d.case);
    // Flux retrying without a limit a release that will not recover is a person's problem at
    // once: after the policy's attempts, or at once when a retry cannot help.
    let endless = d.native == NativeState::RetryingForever
        && (!d.retryable
            || crate::diagnose::flux_attempts(target)
                >= i64::from(policy.spec.limits.max_attempts));
    // A Flux controller that is not working is a person's problem at once.
    let controller_down = ctx
        .controllers_down
        .contains_key(crate::diagnose::controllers::controller_of(d.target.kind));
    let planned = runbook(d, target, policy, inc, ctx);
    let gave_up = matches!(&planned, Ok(a) if inc.gave_up.as_ref().is_some_and(|(f, _)| f == a));
    let escalate = escalates(policy, inc, now) || endless || controller_down || gave_up;
    let (planned, blocked) = match planned {
        Err(b) => (None, Some(b)),
        Ok(a) => {
            let blocked = gate(&a, d.case, target, policy, inc, ctx, mode);
            (Some(a), blocked)
        }
    };
    Decision {
        mode,
        planned,
        blocked,
        escalate,
    }
}

/// Whether an incident detected at `inc.detected_at` is due for escalation under `policy`.
pub fn escalates(policy: &Policy, inc: &IncidentView, now: i64) -> bool {
    let after = i64::try_from(policy.escalate_after.as_secs()).unwrap_or(i64::MAX);
    now.saturating_sub(inc.detected_at) >= after
}

/// Re-check an action a crash interrupted when its target no longer fails (so there is no
/// diagnosis to plan from): today's policy must still allow it, in today's mode, in the
/// namespaces it writes. `None` = it may be finished.
pub fn recheck(
    action: &Action,
    case: Case,
    target: &FluxObject,
    policy: Option<&Policy>,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Option<Blocked> {
    let Some(policy) = policy else {
        return Some(Blocked::NoPolicy);
    };
    gate(action, case, target, policy, inc, ctx, policy.mode(case))
}

/// Mode, scope and limits, applied to a planned action.
fn gate(
    a: &Action,
    case: Case,
    target: &FluxObject,
    policy: &Policy,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
    mode: Mode,
) -> Option<Blocked> {
    let now = ctx.snapshot.now;
    if !policy.allows(case, a.kind()) && !matches!(a, Action::Resume) {
        return Some(Blocked::ActionNotAllowed(a.kind()));
    }
    // Never the same action again after it failed for good (a corrupt or oversized release,
    // an input the API server refuses as invalid): reported, never retried in a loop.
    if let Some((failed, why)) = &inc.gave_up
        && failed == a
    {
        return Some(Blocked::GaveUp(why.clone()));
    }
    // Nothing a policy says reaches a namespace it may not change.
    if let Some(ns) = a
        .writes(&target.key)
        .into_iter()
        .find(|ns| !policy.may_write(ns, ctx.operator_namespace))
    {
        return Some(Blocked::OutsidePolicyNamespace {
            namespace: ns.to_string(),
            policy: policy.id(),
        });
    }
    // Nothing goes through a controller that is not processing its objects.
    if let Some(why) = a.acts_through(&target.key).into_iter().find_map(|k| {
        ctx.controllers_down
            .get(crate::diagnose::controllers::controller_of(k.kind))
    }) {
        return Some(Blocked::ControllerDown(why.clone()));
    }
    if let Some(b) = polled_by_another(a, case, target, inc, ctx) {
        return Some(b);
    }
    // The previous request on an object this goes through is not handled yet: a new token
    // adds nothing (Flux takes the latest anyway) and would hide how long it has waited.
    // While this incident's own cooldown runs, that is the reason it waits: its own request
    // being handled meanwhile must not flip the record's reason (and cost a write) twice.
    let resuming = inc.interrupted.as_ref() == Some(a);
    let cooling = cooldown_until(a, inc, policy, resuming).is_some_and(|until| now < until);
    if !resuming
        && !cooling
        && let Some(k) = a.acts_through(&target.key).into_iter().find(|k| {
            ctx.snapshot
                .objects
                .get(*k)
                .is_some_and(|o| crate::diagnose::controllers::pending_request(o, now).is_some())
        })
    {
        // (No count of seconds here: a waiting incident's record does not change each tick.)
        return Some(Blocked::FluxRemediating(format!(
            "{} has not handled the previous reconcile request on {k} yet",
            crate::diagnose::controllers::controller_of(k.kind)
        )));
    }
    // A person suspended it: hands off (a stale lock is still released: helm-controller
    // cannot do it while suspended, and the unlock does not resume anything).
    if target.suspended && !inc.holds && !matches!(a, Action::UnlockRelease { .. }) {
        return Some(Blocked::SuspendedByPerson);
    }
    if ctx.failing_targets > ctx.circuit_breaker as usize
        && !ctx.shared_root
        && !matches!(a, Action::Resume)
    {
        return Some(Blocked::CircuitBreakerOpen {
            threshold: ctx.circuit_breaker,
        });
    }
    // Polling a source for a fixing commit only helps while fluxmedic would poll more often
    // than source-controller fetches by itself; after that, leave it to Flux.
    if let (Action::ReconcileSource { source }, Case::InvalidManifests) = (a, case)
        && let Some(every) = ctx.snapshot.objects.get(source).and_then(|s| s.interval)
        && every <= poll_wait(policy, inc)
    {
        return Some(Blocked::AwaitingFix(format!(
            "{source} fetches every {} by itself, as often as fluxmedic would poll; fluxmedic reconciles {} once the fix is fetched",
            crate::flux::format_duration(every),
            target.key
        )));
    }
    if let Some(until) = cooldown_until(a, inc, policy, resuming)
        && now < until
    {
        return Some(Blocked::Cooldown { until });
    }
    // A rollback is what comes after the retries ran out, so it has its own count: as many
    // rollbacks as the policy allows attempts, and no more (one that keeps failing is not run
    // again every cooldown).
    let max = policy.spec.limits.max_attempts;
    let used = match a {
        Action::Rollback { .. } => inc.rollbacks,
        _ => inc.attempts,
    };
    if a.is_attempt() && !resuming && used >= max {
        return Some(Blocked::MaxAttempts);
    }
    match mode {
        Mode::Auto => None,
        Mode::RequireApproval if inc.approved.as_ref() == Some(a) => None,
        Mode::RequireApproval => Some(Blocked::AwaitingApproval),
        Mode::Observe | Mode::Off => Some(Blocked::Observe),
    }
}
