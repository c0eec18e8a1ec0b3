//! Policy: which RemediationPolicy governs a target (pure matching with deterministic
//! precedence) and what to do about a diagnosis (pure planning).

pub mod identity;
mod plan;

use std::{cmp::Ordering, time::Duration};

use kube::core::{Selector, SelectorExt};

pub use plan::{
    Action, Blocked, Decision, IncidentView, PlanContext, Pollers, ReleaseRef, consumers,
    escalates, observed_secret, plan, recheck, source_revision, verified_release,
};

use crate::{
    api::{ActionKind, CaseRule, Mode, RemediationPolicySpec, TargetKind},
    diagnose::Case,
    flux::{FluxKind, FluxObject, parse_go_duration},
};

/// Most approvals read from one policy's annotations.
pub const MAX_APPROVALS: usize = 256;

/// A policy, validated and ready to use.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub spec: RemediationPolicySpec,
    selector: Option<Selector>,
    pub cooldown: Duration,
    pub poll_interval: Duration,
    pub max_poll_interval: Duration,
    pub escalate_after: Duration,
    pub stale_threshold: Option<Duration>,
    /// Approvals given on this policy, for the actions it decides outside its own namespace:
    /// request id -> the record (`namespace/name`) it was given for
    /// (`approve.fluxmedic.io/<id>: <namespace>/<name>`).
    pub approvals: std::collections::BTreeMap<String, String>,
    /// Rejections given on this policy, the same way (`reject.fluxmedic.io/<id>`).
    pub rejections: std::collections::BTreeMap<String, String>,
}

/// Why a policy cannot be used. Shown in the policy's status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("spec.targets.selector is invalid: {0}")]
    Selector(String),
    #[error("{field} `{value}` is not a duration")]
    Duration { field: &'static str, value: String },
    #[error("case {0} appears in more than one rule")]
    DuplicateCase(Case),
    #[error("spec.limits.pollInterval must not exceed spec.limits.maxPollInterval")]
    PollOrder,
}

fn dur(field: &'static str, value: &str) -> Result<Duration, PolicyError> {
    parse_go_duration(value).ok_or_else(|| PolicyError::Duration {
        field,
        value: value.into(),
    })
}

impl Policy {
    /// Validate a spec (the CRD schema rejects most mistakes; this is the last line for
    /// what the schema cannot say).
    pub fn new(
        namespace: &str,
        name: &str,
        spec: RemediationPolicySpec,
    ) -> Result<Self, PolicyError> {
        let selector = match &spec.targets.selector {
            None => None,
            Some(s) => Some(
                Selector::try_from(s.clone()).map_err(|e| PolicyError::Selector(e.to_string()))?,
            ),
        };
        let mut seen = std::collections::BTreeSet::new();
        for r in &spec.rules {
            if !seen.insert(r.case) {
                return Err(PolicyError::DuplicateCase(r.case));
            }
        }
        let poll_interval = dur("spec.limits.pollInterval", &spec.limits.poll_interval)?;
        let max_poll_interval = dur(
            "spec.limits.maxPollInterval",
            &spec.limits.max_poll_interval,
        )?;
        if poll_interval > max_poll_interval {
            return Err(PolicyError::PollOrder);
        }
        Ok(Policy {
            namespace: namespace.into(),
            name: name.into(),
            selector,
            cooldown: dur("spec.limits.cooldown", &spec.limits.cooldown)?,
            poll_interval,
            max_poll_interval,
            escalate_after: dur("spec.escalation.after", &spec.escalation.after)?,
            stale_threshold: spec
                .stale_lock
                .threshold
                .as_deref()
                .map(|t| dur("spec.staleLock.threshold", t))
                .transpose()?,
            approvals: Default::default(),
            rejections: Default::default(),
            spec,
        })
    }

    /// The approvals given on the policy object, from its annotations (at most
    /// [`MAX_APPROVALS`], the newest ids last in name order: an id is random, so the bound
    /// only keeps a flood of annotations from costing memory).
    pub fn with_approvals(
        mut self,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Self {
        let given = |prefix: &str| {
            annotations
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?, v)))
                .filter(|(id, record)| id.len() <= 64 && record.len() <= 320)
                .take(MAX_APPROVALS)
                .map(|(id, record)| (id.to_string(), record.clone()))
                .collect()
        };
        self.approvals = given(crate::api::POLICY_APPROVAL_PREFIX);
        self.rejections = given(crate::api::POLICY_REJECTION_PREFIX);
        self
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// What was decided on this policy about request `id` of the record `record`
    /// (`namespace/name`): rejected (`Some(false)`, which wins), approved, or nothing. A
    /// decision names the record it was given for: the same id on another record (a copy in a
    /// forged status) counts for nothing.
    pub fn decided(&self, id: &str, record: &str) -> Option<bool> {
        let given =
            |m: &std::collections::BTreeMap<String, String>| m.get(id).is_some_and(|r| r == record);
        match (given(&self.rejections), given(&self.approvals)) {
            (true, _) => Some(false),
            (false, true) => Some(true),
            (false, false) => None,
        }
    }

    /// Whether this policy covers `obj`. Cross-namespace selection only for policies in
    /// `operator_ns`.
    pub fn covers(&self, obj: &FluxObject, operator_ns: &str) -> bool {
        let t = &self.spec.targets;
        let ns_ok = obj.key.namespace == self.namespace
            || self.namespace == operator_ns
                && t.namespaces
                    .iter()
                    .any(|n| n == "*" || n == &obj.key.namespace);
        if !ns_ok {
            return false;
        }
        let kind_ok = t.kinds.is_empty()
            || t.kinds.iter().any(|k| {
                matches!(
                    (k, obj.key.kind),
                    (TargetKind::Kustomization, FluxKind::Kustomization)
                        | (TargetKind::HelmRelease, FluxKind::HelmRelease)
                        | (TargetKind::GitRepository, FluxKind::GitRepository)
                        | (TargetKind::OCIRepository, FluxKind::OCIRepository)
                        | (TargetKind::HelmRepository, FluxKind::HelmRepository)
                        | (TargetKind::HelmChart, FluxKind::HelmChart)
                        | (TargetKind::Bucket, FluxKind::Bucket)
                )
            });
        let name_ok = t.names.is_empty() || t.names.iter().any(|n| n == &obj.key.name);
        let labels_ok = self
            .selector
            .as_ref()
            .is_none_or(|s| s.matches(&obj.labels));
        kind_ok && name_ok && labels_ok
    }

    /// Whether actions decided by this policy may write in namespace `ns`: its own, and for
    /// a policy in the operator's namespace the namespaces it covers.
    pub fn may_write(&self, ns: &str, operator_ns: &str) -> bool {
        ns == self.namespace
            || self.namespace == operator_ns
                && self
                    .spec
                    .targets
                    .namespaces
                    .iter()
                    .any(|n| n == "*" || n == ns)
    }

    pub fn rule(&self, case: Case) -> Option<&CaseRule> {
        self.spec.rules.iter().find(|r| r.case == case)
    }

    /// The mode for a case: its rule's, else Observe.
    pub fn mode(&self, case: Case) -> Mode {
        self.rule(case).map(|r| r.mode).unwrap_or(Mode::Observe)
    }

    /// Whether `action` is allowed for `case` (explicit list, else the case's safe defaults).
    pub fn allows(&self, case: Case, action: ActionKind) -> bool {
        match self.rule(case) {
            Some(r) if !r.actions.is_empty() => r.actions.contains(&action),
            _ => default_actions(case).contains(&action),
        }
    }
}

/// Actions a rule allows when it lists none: the ones that cannot make things worse.
pub fn default_actions(case: Case) -> &'static [ActionKind] {
    match case {
        Case::FailedRelease => &[ActionKind::Reconcile, ActionKind::Retry],
        Case::StaleLock => &[ActionKind::Reconcile, ActionKind::Unlock],
        _ => &[ActionKind::Reconcile],
    }
}

/// Precedence: higher priority, then the target's own namespace, then the lower name.
fn precedence(a: &Policy, b: &Policy, target_ns: &str) -> Ordering {
    b.spec
        .priority
        .cmp(&a.spec.priority)
        .then_with(|| (b.namespace == target_ns).cmp(&(a.namespace == target_ns)))
        .then_with(|| a.namespace.cmp(&b.namespace))
        .then_with(|| a.name.cmp(&b.name))
}

/// The policy governing `obj`, and the ones it overrode.
pub fn select<'a>(
    policies: &'a [Policy],
    obj: &FluxObject,
    operator_ns: &str,
) -> (Option<&'a Policy>, Vec<&'a Policy>) {
    let mut matching: Vec<&Policy> = policies
        .iter()
        .filter(|p| p.covers(obj, operator_ns))
        .collect();
    matching.sort_by(|a, b| precedence(a, b, &obj.key.namespace));
    let mut it = matching.into_iter();
    let winner = it.next();
    (winner, it.collect())
}

/// The circuit breaker threshold of the operator's namespace: the smallest one set by a
/// policy there, else `default`. It applies in every namespace; a namespace's own policies may
/// only lower it for themselves ([`Breakers`]).
pub fn circuit_breaker_threshold(policies: &[Policy], operator_ns: &str, default: u32) -> u32 {
    policies
        .iter()
        .filter(|p| p.namespace == operator_ns)
        .filter_map(|p| {
            p.spec
                .circuit_breaker
                .as_ref()
                .map(|c| c.max_failing_targets)
        })
        .min()
        .unwrap_or(default)
}

/// The circuit breaker, per namespace: one tenant's storm of failures holds back actions in
/// its own namespace only, never in another's.
#[derive(Clone, Debug, Default)]
pub struct Breakers {
    /// Flux objects failing now, per namespace.
    pub failing: std::collections::HashMap<String, usize>,
    thresholds: std::collections::HashMap<String, u32>,
    default: u32,
}

impl Breakers {
    /// `failing`: the namespaces of the failing objects fluxmedic serves (one entry each).
    pub fn new<'a>(
        failing: impl IntoIterator<Item = &'a str>,
        policies: &[Policy],
        operator_ns: &str,
        default: u32,
    ) -> Self {
        let mut counts = std::collections::HashMap::new();
        for ns in failing {
            *counts.entry(ns.to_string()).or_insert(0usize) += 1;
        }
        let default = circuit_breaker_threshold(policies, operator_ns, default);
        let mut thresholds = std::collections::HashMap::new();
        for p in policies.iter().filter(|p| p.namespace != operator_ns) {
            if let Some(c) = &p.spec.circuit_breaker {
                let t = thresholds.entry(p.namespace.clone()).or_insert(default);
                *t = (*t).min(c.max_failing_targets);
            }
        }
        Breakers {
            failing: counts,
            thresholds,
            default,
        }
    }

    pub fn failing(&self, ns: &str) -> usize {
        self.failing.get(ns).copied().unwrap_or(0)
    }

    pub fn threshold(&self, ns: &str) -> u32 {
        self.thresholds.get(ns).copied().unwrap_or(self.default)
    }

    /// The namespaces whose breaker is open now, sorted.
    pub fn open(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .failing
            .iter()
            .filter(|(ns, n)| **n > self.threshold(ns) as usize)
            .map(|(ns, _)| ns.as_str())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests;

/// The built-in default policy (used by `fluxmedic diagnose` when no `--policy` is given,
/// and shipped as the chart's optional default policy): every runbook case Auto with its
/// safe default actions, `other` recorded only.
pub fn default_policy_spec() -> RemediationPolicySpec {
    use crate::api::{CaseRule, Limits, StaleLockSettings, TargetSelector};
    RemediationPolicySpec {
        targets: TargetSelector {
            namespaces: vec!["*".into()],
            ..Default::default()
        },
        priority: -100,
        rules: Case::ALL
            .iter()
            .filter(|c| **c != Case::Other)
            .map(|c| CaseRule {
                case: *c,
                mode: Mode::Auto,
                actions: vec![],
                with_source: false,
            })
            .collect(),
        limits: Limits::default(),
        stale_lock: StaleLockSettings::default(),
        escalation: Default::default(),
        circuit_breaker: None,
    }
}
