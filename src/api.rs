//! fluxmedic's own API: the `RemediationPolicy` and `Remediation` custom resources.
//! `crds/` is generated from these types (`fluxmedic crds`); a test fails if it is stale.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diagnose::{Case, Evidence, NativeState};

pub const GROUP: &str = "fluxmedic.io";
pub const FIELD_MANAGER: &str = "fluxmedic";
/// Approve the action a Remediation waits for, when the deciding policy is in the target's own
/// namespace: `kubectl annotate remediation X fluxmedic.io/approve=<id>`, the id its status
/// shows (`status.approval.id`). Any other value approves nothing.
pub const APPROVE_ANNOTATION: &str = "fluxmedic.io/approve";
/// Reject the action a Remediation waits for (a policy in the target's own namespace):
/// `fluxmedic.io/reject=<id>`. fluxmedic then does not ask for that action again in this
/// incident; the incident stays open (and escalates) until the target recovers.
pub const REJECT_ANNOTATION: &str = "fluxmedic.io/reject";
/// Approve an action a policy in the operator's namespace decided: an annotation on that
/// policy, `approve.fluxmedic.io/<id>: <namespace>/<name>` naming the Remediation it is given
/// for (tenants cannot write there; an approval a tenant writes on its own Remediation does
/// not count for such a policy).
pub const POLICY_APPROVAL_PREFIX: &str = "approve.fluxmedic.io/";
/// Reject such an action: `reject.fluxmedic.io/<id>: <namespace>/<name>` on the policy.
pub const POLICY_REJECTION_PREFIX: &str = "reject.fluxmedic.io/";
/// Label on Remediations: hash of the target's kind/namespace/name.
pub const TARGET_LABEL: &str = "fluxmedic.io/target";
/// Label on Remediations made by an instance serving a shard (`--watch-label-selector`): its
/// shard id. Each instance watches only the records of its own shard.
pub const SHARD_LABEL: &str = "fluxmedic.io/shard";
/// Label on Remediations: "true" while the incident is open.
pub const OPEN_LABEL: &str = "fluxmedic.io/open";
/// Annotation on a Remediation created with its first step's intent (a JSON `Step`): a new
/// incident whose action follows at once records the intent in the create, one write fewer
/// before the action. The status holds the step from its outcome on; until then (a crash
/// between the create and the outcome) this is the record the step is finished from.
pub const INTENT_ANNOTATION: &str = "fluxmedic.io/intent";
/// Annotation on a Remediation created with its first step's intent: what the incident was
/// detected with (time, observed generation, revision and Secret), so that a crash before the
/// first status write loses nothing. A JSON [`Baseline`].
pub const BASELINE_ANNOTATION: &str = "fluxmedic.io/baseline";

/// Annotation on a Remediation: the sequence number fluxmedic gave its creation (sealed with
/// it): with the ledger ([`crate::incident::Ledger`]) it tells a record fluxmedic made from a
/// copy of one re-created later.
pub const SEQUENCE_ANNOTATION: &str = "fluxmedic.io/sequence";

/// What a new incident was detected with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_secret: Option<ObservedSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
}

impl Baseline {
    pub fn of(s: &RemediationStatus) -> Self {
        Baseline {
            detected_at: s.detected_at.clone(),
            observed_generation: s.target_generation,
            observed_revision: s.observed_revision.clone(),
            observed_secret: s.observed_secret.clone(),
            policy: s.policy.clone(),
            mode: s.mode,
        }
    }

    pub fn apply(self, s: &mut RemediationStatus) {
        s.detected_at = s.detected_at.take().or(self.detected_at);
        s.target_generation = s.target_generation.or(self.observed_generation);
        s.observed_revision = s.observed_revision.take().or(self.observed_revision);
        s.observed_secret = s.observed_secret.take().or(self.observed_secret);
        s.policy = s.policy.take().or(self.policy);
        s.mode = s.mode.or(self.mode);
    }
}

/// Annotation fluxmedic sets on a HelmRelease it suspended, naming the Remediation that owns the suspension.
pub const SUSPENDED_BY_ANNOTATION: &str = "fluxmedic.io/suspended-by";
/// Annotation on a Remediation: fluxmedic's seal over its identity and its creation intent
/// (see `incident::seal`).
pub const SEAL_ANNOTATION: &str = "fluxmedic.io/seal";
/// Annotation on a HelmRelease fluxmedic suspended: `<generation>.<seal>`, the generation
/// the suspension produced, sealed with the HelmRelease's identity and the owning record.
pub const HOLD_ANNOTATION: &str = "fluxmedic.io/hold";

const DURATION_RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')";
const DURATION_MSG: &str = "must be a duration such as 30s, 5m or 1h30m";

/// How fluxmedic handles a case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    /// Act without asking.
    Auto,
    /// Plan, then wait until a person approves the Remediation.
    RequireApproval,
    /// Plan and record, change nothing.
    #[default]
    Observe,
    /// Ignore the case entirely: no Remediation is recorded.
    Off,
}

/// The actions a policy can allow.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum ActionKind {
    /// Request a reconcile (`reconcile.fluxcd.io/requestedAt`) of the target or its source.
    Reconcile,
    /// HelmRelease: request a retry with fresh requestedAt + resetAt + forceAt (`flux reconcile hr --force --reset`).
    Retry,
    /// HelmRelease: suspend, roll back to the last good revision, keep suspended until the fix lands.
    Rollback,
    /// Stale lock: mark the pending release failed, as helm-controller does.
    Unlock,
    /// Stale lock: delete the pending release Secret instead of marking it failed.
    DeletePendingRelease,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TargetKind {
    Kustomization,
    HelmRelease,
    GitRepository,
    OCIRepository,
    HelmRepository,
    HelmChart,
    Bucket,
}

/// Which Flux objects a policy covers. Every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    /// Kinds covered; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<TargetKind>,
    /// Label selector on the Flux objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Object names covered; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub names: Vec<String>,
    /// Other namespaces covered, or `*` for all. Honoured only for policies in the
    /// operator's namespace; elsewhere it is reported in the policy's status and ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
}

/// What to do for one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.actions) || self.actions.all(a, !(a in ['Rollback', 'Retry']) || self.case == 'failed-release')"
).message("actions Retry and Rollback apply only to case failed-release"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.actions) || self.actions.all(a, !(a in ['Unlock', 'DeletePendingRelease']) || self.case == 'stale-lock')"
).message("actions Unlock and DeletePendingRelease apply only to case stale-lock"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.actions) || !('Unlock' in self.actions && 'DeletePendingRelease' in self.actions)"
).message("choose one of Unlock or DeletePendingRelease"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.withSource) || !self.withSource || self.case == 'failed-release'"
).message("withSource applies only to case failed-release"))]
pub struct CaseRule {
    pub case: Case,
    pub mode: Mode,
    /// Allowed actions. Empty = the case's safe defaults (Reconcile; Retry for failed-release; Unlock for stale-lock).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub actions: Vec<ActionKind>,
    /// failed-release: reconcile the release's chart source before retrying (`flux reconcile hr --with-source`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_source: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Actions per incident before fluxmedic stops and escalates.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: u32,
    /// Minimum time between two actions on the same target.
    #[serde(default = "default_cooldown")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(DURATION_MSG))]
    #[schemars(length(max = 32))]
    pub cooldown: String,
    /// Polling interval for a source while a fix is awaited (doubles up to `maxPollInterval`).
    #[serde(default = "default_poll")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(DURATION_MSG))]
    #[schemars(length(max = 32))]
    pub poll_interval: String,
    #[serde(default = "default_max_poll")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(DURATION_MSG))]
    #[schemars(length(max = 32))]
    pub max_poll_interval: String,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_cooldown() -> String {
    "2m".into()
}
fn default_poll() -> String {
    "10s".into()
}
fn default_max_poll() -> String {
    "2m".into()
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_attempts: default_max_attempts(),
            cooldown: default_cooldown(),
            poll_interval: default_poll(),
            max_poll_interval: default_max_poll(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaleLockSettings {
    /// A pending release older than this is stale. Default: the HelmRelease's action timeout plus 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(DURATION_MSG))]
    #[schemars(length(max = 32))]
    pub threshold: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    /// An incident still open after this is Escalated (phase, Event, metric).
    #[serde(default = "default_escalate")]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(DURATION_MSG))]
    #[schemars(length(max = 32))]
    pub after: String,
}

fn default_escalate() -> String {
    "30m".into()
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            after: default_escalate(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// When more Flux objects than this fail at once, act only on shared roots.
    /// In a namespace's own policy it can only lower the operator's threshold for that
    /// namespace. (Bounded so that no value overflows what fluxmedic reads.)
    #[schemars(range(min = 1, max = 1000000))]
    pub max_failing_targets: u32,
}

/// RemediationPolicy: which failures fluxmedic may fix, how, and how often.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "fluxmedic.io",
    version = "v1alpha1",
    kind = "RemediationPolicy",
    namespaced,
    status = "RemediationPolicyStatus",
    shortname = "rempol",
    category = "fluxmedic",
    doc = "RemediationPolicy says which Flux failures fluxmedic may fix in its namespace (or, in the operator's namespace, in the namespaces it names), how (automatically, after approval, or recorded only), and how often.",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.rules) || self.rules.all(r, self.rules.exists_one(s, s.case == r.case))"
).message("each case may appear in at most one rule"))]
pub struct RemediationPolicySpec {
    #[serde(default)]
    pub targets: TargetSelector,
    /// Higher wins when several policies cover a target. Ties: the policy in the target's
    /// namespace wins over one in the operator's namespace, then the lower name.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// One rule per case; a case without a rule is recorded only (Observe).
    #[serde(default)]
    #[schemars(length(max = 7))]
    pub rules: Vec<CaseRule>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub stale_lock: StaleLockSettings,
    #[serde(default)]
    pub escalation: Escalation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: whether fluxmedic can use the policy (reason `Valid`, `PartiallyIgnored` or
    /// `Invalid`), and why not.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Targets this policy covers but another policy wins for (first few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridden: Vec<String>,
}

/// The phase of an incident.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Seen and diagnosed; nothing done (yet), see `status.blocked`.
    #[default]
    Detected,
    AwaitingApproval,
    Remediating,
    /// Rolled back and suspended; resumes when the HelmRelease or its chart/values change.
    AwaitingFix,
    /// fluxmedic acted and the target is Ready.
    Succeeded,
    /// Attempts used up; the target still fails.
    Failed,
    /// Open longer than the policy allows; a person is needed.
    Escalated,
    /// The target became Ready without an action of fluxmedic.
    Resolved,
}

impl Phase {
    pub fn is_open(self) -> bool {
        !matches!(self, Phase::Succeeded | Phase::Resolved)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl TargetRef {
    pub fn from_key(k: &crate::flux::ObjectKey) -> Self {
        TargetRef {
            kind: k.kind.as_str().into(),
            namespace: k.namespace.clone(),
            name: k.name.clone(),
        }
    }
    pub fn to_key(&self) -> Option<crate::flux::ObjectKey> {
        Some(crate::flux::ObjectKey::new(
            crate::flux::FluxKind::from_kind(&self.kind)?,
            self.namespace.clone(),
            self.name.clone(),
        ))
    }
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// Remediation: one incident on one Flux object.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "fluxmedic.io",
    version = "v1alpha1",
    kind = "Remediation",
    namespaced,
    status = "RemediationStatus",
    shortname = "rem",
    category = "fluxmedic",
    doc = "Remediation records one incident of one Flux object: what failed and why (the diagnosis and its root cause), what the deciding policy allows, every step fluxmedic took and how it ended. fluxmedic writes it; a person approves a waiting action with an annotation. Condition Ready turns True when the incident is closed.",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetName"}"#,
    printcolumn = r#"{"name":"Case","type":"string","jsonPath":".spec.case"}"#,
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".status.action"}"#,
    printcolumn = r#"{"name":"Planned","type":"string","priority":1,"jsonPath":".status.planned"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Attempts","type":"integer","priority":1,"jsonPath":".status.attempts"}"#,
    printcolumn = r#"{"name":"Blocked","type":"string","priority":1,"jsonPath":".status.blocked"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemediationSpec {
    /// The Flux object the incident is about. Immutable.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message(IMMUTABLE))]
    pub target: TargetRef,
    /// `Kind/name`, for `kubectl get remediations`. Immutable.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message(IMMUTABLE))]
    pub target_name: String,
    /// The case diagnosed when the incident opened (a new case opens a new record). Immutable.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message(IMMUTABLE))]
    pub case: Case,
}

const IMMUTABLE: &str = "is immutable: a Remediation records one incident of one target";

/// How a step ended (or that it has not yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum StepOutcome {
    /// Intent recorded, outcome not yet: a crash here is finished after the restart, with
    /// the recorded token, if today's plan still calls for it.
    #[default]
    Running,
    Succeeded,
    Failed,
    /// A crash or a change cut it short and it was not finished (the message says why).
    Interrupted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub action: String,
    /// The planned action with every parameter (its `type` and fields), so a step interrupted
    /// by a crash can be compared with what today's plan calls for before it is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub planned: Option<serde_json::Value>,
    /// The planned action as JSON text, as earlier versions recorded it (read, never written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub outcome: StepOutcome,
    /// The reconcile token written (for annotation actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Why a failed step failed, as a category (`Forbidden`, `Conflict`, `CorruptRelease`,
    /// ...): one a retry cannot change (`Invalid`, `CorruptRelease`) is not retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// An action waiting for approval, and what approves it (that action, once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    /// The action, as planned.
    pub action: String,
    /// The action with every parameter: an approval counts only while the plan is exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub planned: Option<serde_json::Value>,
    /// The action as JSON text, the form earlier versions read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// A random id made when the plan asked for approval: an approval must name it, so one
    /// written earlier, or for another action, approves nothing.
    pub id: String,
    /// How to approve it.
    pub how: String,
    /// A person rejected it: fluxmedic does not ask for this action again in this incident.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
}

/// A suspension fluxmedic holds on the target (after a rollback), until the fix lands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    /// The HelmRelease's generation after fluxmedic suspended it: a later one means its spec
    /// changed (the fix, or a person's edit) and the hold ends.
    pub generation: i64,
    /// The chart revision when suspended: a new one means the fix landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub since: String,
}

/// A source's credentials Secret as seen when the incident was detected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedSecret {
    pub name: String,
    /// Its resourceVersion; absent when the Secret did not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosisRecord {
    pub summary: String,
    pub retryable: bool,
    pub native: NativeState,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationStatus {
    #[serde(default)]
    pub phase: Phase,
    /// `Ready`: True once the incident is closed (the target recovered), else False with the
    /// phase as reason and what holds it as message. `Stalled`: True while a person is needed
    /// (attempts used up, escalated, or the record frozen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<DiagnosisRecord>,
    /// First failing ancestor, when it is not the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<TargetRef>,
    /// `namespace/name` of the policy that decided, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The current or last action, for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Why nothing is being done right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// Why, as a stable word (`awaiting-approval`, `cooldown`, `blocked-by-root`, ...): the
    /// `reason` label of `fluxmedic_actions_blocked_total`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_reason: Option<String>,
    /// The action fluxmedic would take while it waits (see `blocked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<String>,
    /// The action waiting for approval, with the id an approval must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRequest>,
    /// Actions a person rejected in this incident (the latest few): never asked for again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_objects")]
    pub rejections: Vec<serde_json::Value>,
    /// When the next action may come (a cooldown or poll backoff), rather than a countdown:
    /// a waiting incident costs no writes until something changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub next_action_at: Option<String>,
    /// The suspension fluxmedic holds on the target, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// Set when the record was changed outside fluxmedic: it takes no further action on
    /// this incident (a hold it owns stays until a person resumes the HelmRelease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<String>,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub detected_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_action_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub closed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_recovery_seconds: Option<f64>,
    /// The Remediation's own generation this status was written for (the Kubernetes
    /// convention; earlier versions kept the target's generation here, see
    /// `targetGeneration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the fix is awaited on: the target's generation and source revision seen when acting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_revision: Option<String>,
    /// The source's credentials Secret when detected (git cases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_secret: Option<ObservedSecret>,
    /// Number of source polls while awaiting a fix.
    #[serde(default)]
    pub polls: u32,
    /// Number of rollbacks started (each also counts as an attempt): at most `maxAttempts`
    /// of them, so a rollback that keeps failing is not run again every cooldown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rollbacks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The sequence number fluxmedic gave this status when it wrote it (it only grows): an
    /// earlier status written back has a lower one than fluxmedic last wrote.
    #[serde(default)]
    pub sequence: u64,
    /// fluxmedic's seal over this status (HMAC with a key only the operator holds): a status
    /// that does not carry a valid one was changed outside fluxmedic and is never acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// Both CRDs, as fluxmedic installs them: generated from the types, with every schema
/// `format` the API server does not know replaced by one it does (schemars writes `uint32`
/// for a `u32`; the API server warns `unrecognized format "uint32"` on every apply).
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    [RemediationPolicy::crd(), Remediation::crd()]
        .into_iter()
        .map(|crd| {
            let mut v = serde_json::to_value(&crd).expect("a CRD serialises");
            known_formats(&mut v);
            serde_json::from_value(v).expect("a CRD with known formats deserialises")
        })
        .collect()
}

/// Unsigned integer formats become the signed ones Kubernetes knows, with `minimum: 0`.
fn known_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let replacement = match m.get("format").and_then(|f| f.as_str()) {
                Some("uint8" | "uint16" | "uint32") => Some("int32"),
                Some("uint" | "uint64") => Some("int64"),
                _ => None,
            };
            if let Some(f) = replacement {
                m.insert("format".into(), serde_json::json!(f));
                m.entry("minimum").or_insert(serde_json::json!(0));
            }
            m.values_mut().for_each(known_formats);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(known_formats),
        _ => {}
    }
}

/// Both CRDs as YAML documents, in a stable order: what `fluxmedic crds` prints and
/// what `crds/` holds.
pub fn crd_documents() -> Vec<(&'static str, String)> {
    let names = [
        "remediationpolicies.fluxmedic.io.yaml",
        "remediations.fluxmedic.io.yaml",
    ];
    names
        .into_iter()
        .zip(crds())
        .map(|(n, crd)| (n, serde_yaml_ng::to_string(&crd).expect("CRD serialises")))
        .collect()
}

/// An object of any shape (the API server keeps its fields): what fluxmedic reads from one
/// is checked by its own types.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn any_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "array", "maxItems": 8,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}})
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_schemas_use_only_formats_kubernetes_knows() {
        let known = [
            "int32",
            "int64",
            "float",
            "double",
            "byte",
            "date",
            "date-time",
            "password",
        ];
        for crd in super::crds() {
            let text = serde_json::to_string(&crd).unwrap();
            for part in text.split("\"format\":\"").skip(1) {
                let format = part.split('"').next().unwrap();
                assert!(known.contains(&format), "unknown format {format}");
            }
            assert!(!text.contains("uint"), "no unsigned format left");
        }
    }
}
