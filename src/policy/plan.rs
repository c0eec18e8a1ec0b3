//! Planning: (diagnosis, policy, incident history) -> the action to take, or why none is.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::Policy;
use crate::{
    api::{ActionKind, Mode, Phase},
    diagnose::{Case, Diagnosis, NativeState, Snapshot},
    flux::{FluxObject, ObjectKey},
};

/// What fluxmedic does to a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// requestedAt on the target.
    Reconcile,
    /// requestedAt on a source (polling while a fix is awaited, or an unreachable source).
    ReconcileSource { source: ObjectKey },
    /// The source's Secret changed: reconcile the source, then its consumers.
    ReconcileSourceAndConsumers { source: ObjectKey },
    /// requestedAt + resetAt + forceAt, one fresh token; the source first when given.
    RetryRelease { with_source: Option<ObjectKey> },
    /// Suspend, `helm rollback` to `to_version`, keep suspended (AwaitingFix).
    Rollback { to_version: i64 },
    /// Resume a HelmRelease fluxmedic suspended, now that the fix landed.
    Resume,
    /// Mark the stale pending release failed (or delete its Secret), then reconcile.
    UnlockRelease {
        namespace: String,
        secret: String,
        version: i64,
        delete: bool,
    },
}

impl Action {
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
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::ReconcileSource { source } | Action::ReconcileSourceAndConsumers { source } => {
                write!(f, "{} {}", self.name(), source)
            }
            Action::RetryRelease {
                with_source: Some(s),
            } => write!(f, "retry (with source {s})"),
            Action::Rollback { to_version } => write!(f, "rollback to revision {to_version}"),
            Action::UnlockRelease {
                namespace, secret, ..
            } => write!(f, "{} {namespace}/{secret}", self.name()),
            _ => f.write_str(self.name()),
        }
    }
}

/// Why nothing is done now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Blocked {
    NoPolicy,
    Observe,
    AwaitingApproval,
    ActionNotAllowed(ActionKind),
    Cooldown { remaining: Duration },
    MaxAttempts,
    CircuitBreakerOpen { failing: usize, threshold: u32 },
    RetryCannotHelp(String),
    FluxRemediating(String),
    BlockedByRoot(ObjectKey),
    AwaitingFix(String),
    NotStale(String),
    NoRunbook,
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
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::NoPolicy => f.write_str("no RemediationPolicy covers this object: record only"),
            Blocked::Observe => f.write_str("policy mode is Observe: record only"),
            Blocked::AwaitingApproval => {
                f.write_str("waiting for approval (kubectl annotate remediation <name> fluxmedic.io/approve=true)")
            }
            Blocked::ActionNotAllowed(a) => write!(f, "the policy does not allow action {a:?} for this case"),
            Blocked::Cooldown { remaining } => write!(f, "cooldown: next action in {}s", remaining.as_secs()),
            Blocked::MaxAttempts => f.write_str("maximum attempts for this incident reached"),
            Blocked::CircuitBreakerOpen { failing, threshold } => write!(
                f,
                "circuit breaker open: {failing} Flux objects failing (threshold {threshold}); acting on shared roots only"
            ),
            Blocked::RetryCannotHelp(why) => write!(f, "a retry cannot help: {why}"),
            Blocked::FluxRemediating(why) => write!(f, "Flux is handling it: {why}"),
            Blocked::BlockedByRoot(root) => write!(f, "blocked by {root}; acting on the root only"),
            Blocked::AwaitingFix(why) => write!(f, "awaiting a fix: {why}"),
            Blocked::NotStale(why) => write!(f, "not a stale lock: {why}"),
            Blocked::NoRunbook => f.write_str("no runbook action for this failure: record only"),
        }
    }
}

/// What is known about the open incident (from the Remediation's status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IncidentView {
    pub phase: Phase,
    pub attempts: u32,
    pub polls: u32,
    pub approved: bool,
    pub detected_at: i64,
    pub last_action_at: Option<i64>,
    /// Whether fluxmedic rolled this HelmRelease back in this incident.
    pub rolled_back: bool,
    pub observed_generation: Option<i64>,
    pub observed_revision: Option<String>,
    pub observed_secret_version: Option<String>,
}

/// Cluster-wide facts the plan needs.
#[derive(Clone, Copy, Debug)]
pub struct PlanContext<'a> {
    pub snapshot: &'a Snapshot,
    pub failing_targets: usize,
    pub circuit_breaker: u32,
    /// Whether the target is the root of other failures.
    pub shared_root: bool,
}

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

fn secret_version(snap: &Snapshot, source: &FluxObject) -> Option<String> {
    let name = source.secret_ref.as_ref()?;
    snap.secrets
        .get(&(source.key.namespace.clone(), name.clone()))
        .and_then(|s| s.resource_version.clone())
}

/// The runbook, before mode and limits.
fn runbook(
    d: &Diagnosis,
    target: &FluxObject,
    policy: &Policy,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
) -> Result<Action, Blocked> {
    let snap = ctx.snapshot;
    match d.case {
        Case::FailedRelease => {
            if inc.rolled_back || inc.phase == Phase::AwaitingFix {
                // Generations only grow: an older one is a stale view of our own suspend.
                let new_generation = matches!((target.generation, inc.observed_generation), (Some(g), Some(o)) if g > o);
                let new_revision = inc.observed_revision.is_some()
                    && source_revision(snap, target) != inc.observed_revision;
                return if new_generation || new_revision {
                    Ok(Action::Resume)
                } else {
                    Err(Blocked::AwaitingFix(
                        "rolled back and suspended; resumes when the HelmRelease spec or its chart changes".into(),
                    ))
                };
            }
            match d.native {
                NativeState::Retrying => {
                    return Err(Blocked::FluxRemediating(
                        "helm-controller will retry the release by itself".into(),
                    ));
                }
                NativeState::Remediated => {
                    return Err(Blocked::RetryCannotHelp(
                        "helm-controller rolled back to the last good release; the failing upgrade needs a fix in Git".into(),
                    ));
                }
                NativeState::Exhausted => {}
            }
            let retry_left = inc.attempts < policy.spec.limits.max_attempts;
            if d.retryable && retry_left && policy.allows(d.case, ActionKind::Retry) {
                let with_source = policy.rule(d.case).is_some_and(|r| r.with_source);
                return Ok(Action::RetryRelease {
                    with_source: target.source_ref.clone().filter(|_| with_source),
                });
            }
            if policy.allows(d.case, ActionKind::Rollback)
                && let Some(good) = snap.history_of(target).and_then(|h| h.last_good())
                && snap
                    .history_of(target)
                    .and_then(|h| h.latest())
                    .is_some_and(|l| !l.status.is_good())
            {
                return Ok(Action::Rollback {
                    to_version: good.version,
                });
            }
            if !d.retryable {
                Err(Blocked::RetryCannotHelp(
                    "the release input is invalid; fix it in Git".into(),
                ))
            } else if !retry_left {
                Err(Blocked::MaxAttempts)
            } else {
                Err(Blocked::ActionNotAllowed(ActionKind::Retry))
            }
        }
        Case::InvalidManifests => {
            let Some(source) = target.source_ref.clone() else {
                return Err(Blocked::RetryCannotHelp(
                    "the manifests are invalid and there is no source to poll".into(),
                ));
            };
            let rev = source_revision(snap, target);
            if inc.observed_revision.is_some() && rev != inc.observed_revision {
                Ok(Action::Reconcile)
            } else {
                Ok(Action::ReconcileSource { source })
            }
        }
        Case::GitAuth => {
            let changed = inc.observed_secret_version.is_some()
                && secret_version(snap, target) != inc.observed_secret_version;
            if changed {
                Ok(Action::ReconcileSourceAndConsumers {
                    source: target.key.clone(),
                })
            } else {
                let secret = target.secret_ref.as_deref().unwrap_or("<none>");
                Err(Blocked::RetryCannotHelp(format!(
                    "fix the credentials in Secret {}/{secret}; fluxmedic reconciles as soon as it changes",
                    target.key.namespace
                )))
            }
        }
        Case::GitUnreachable => {
            let changed = inc.observed_secret_version.is_some()
                && secret_version(snap, target) != inc.observed_secret_version;
            if changed {
                Ok(Action::ReconcileSourceAndConsumers {
                    source: target.key.clone(),
                })
            } else {
                Ok(Action::ReconcileSource {
                    source: target.key.clone(),
                })
            }
        }
        Case::DependencyCascade => {
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
        Case::StaleLock => {
            if target.is_running_helm_action() {
                return Err(Blocked::FluxRemediating(
                    "helm-controller is running a release action".into(),
                ));
            }
            let h = target.helm.as_ref().ok_or(Blocked::NoRunbook)?;
            let threshold = policy
                .stale_threshold
                .unwrap_or(h.timeout + Duration::from_secs(60));
            let Some(history) = snap.history_of(target) else {
                return Err(Blocked::NotStale("no release in Helm storage".into()));
            };
            match history.stale_pending(snap.now, threshold) {
                Some(p) => Ok(Action::UnlockRelease {
                    namespace: p.namespace.clone(),
                    secret: p.secret_name.clone(),
                    version: p.version,
                    delete: policy.allows(d.case, ActionKind::DeletePendingRelease),
                }),
                None => Err(Blocked::NotStale(format!(
                    "the latest release is not pending, or was written less than {}s ago",
                    threshold.as_secs()
                ))),
            }
        }
        Case::Other => Err(Blocked::NoRunbook),
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
    let escalate = now.saturating_sub(inc.detected_at) >= policy.escalate_after.as_secs() as i64;
    let planned = runbook(d, target, policy, inc, ctx);
    let (planned, blocked) = match planned {
        Err(b) => (None, Some(b)),
        Ok(a) => {
            let blocked = gate(&a, d, policy, inc, ctx, mode, now);
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

/// Mode and limits, applied to a planned action.
fn gate(
    a: &Action,
    d: &Diagnosis,
    policy: &Policy,
    inc: &IncidentView,
    ctx: &PlanContext<'_>,
    mode: Mode,
    now: i64,
) -> Option<Blocked> {
    if !policy.allows(d.case, a.kind()) && !matches!(a, Action::Resume) {
        return Some(Blocked::ActionNotAllowed(a.kind()));
    }
    if ctx.failing_targets > ctx.circuit_breaker as usize
        && !ctx.shared_root
        && !matches!(a, Action::Resume)
    {
        return Some(Blocked::CircuitBreakerOpen {
            failing: ctx.failing_targets,
            threshold: ctx.circuit_breaker,
        });
    }
    let poll_wait = || {
        let factor = 1u32.checked_shl(inc.polls.min(16)).unwrap_or(u32::MAX);
        policy
            .poll_interval
            .saturating_mul(factor)
            .min(policy.max_poll_interval)
    };
    // Polling a source for a fixing commit only helps while fluxmedic would poll more often
    // than source-controller fetches by itself (a suspended source never does); after that,
    // leave it to Flux.
    if let (Action::ReconcileSource { source }, Case::InvalidManifests) = (a, d.case)
        && let Some(every) = ctx
            .snapshot
            .objects
            .get(source)
            .filter(|s| !s.suspended)
            .and_then(|s| s.interval)
        && every <= poll_wait()
    {
        return Some(Blocked::AwaitingFix(format!(
            "{source} fetches every {} by itself, as often as fluxmedic would poll; fluxmedic reconciles {} once the fix is fetched",
            crate::flux::format_duration(every),
            d.target
        )));
    }
    if let Some(last) = inc.last_action_at {
        let wait = if a.is_poll() {
            poll_wait()
        } else if matches!(a, Action::Resume | Action::Reconcile) {
            // follow-ups after a fix landed or a root recovered: no cooldown beyond a beat
            Duration::from_secs(2)
        } else {
            policy.cooldown
        };
        let elapsed = Duration::from_secs(now.saturating_sub(last).max(0) as u64);
        if elapsed < wait {
            return Some(Blocked::Cooldown {
                remaining: wait - elapsed,
            });
        }
    }
    if a.is_attempt()
        && !matches!(a, Action::Rollback { .. })
        && inc.attempts >= policy.spec.limits.max_attempts
    {
        return Some(Blocked::MaxAttempts);
    }
    match mode {
        Mode::Auto => None,
        Mode::RequireApproval if inc.approved => None,
        Mode::RequireApproval => Some(Blocked::AwaitingApproval),
        Mode::Observe | Mode::Off => Some(Blocked::Observe),
    }
}
