//! The incident lifecycle: what happens to one incident's record, decided without IO.
//!
//! The engine reads a [`Record`] from a Remediation (verifying fluxmedic's seal), plans the
//! target with [`crate::policy::plan`], and asks [`next`] what to do; [`next`] answers with
//! [`Effect`]s, data the engine performs in order. [`settle`] folds an action's outcome into
//! the record. Every rule of the lifecycle lives here and is table-tested without a cluster.
//!
//! ```text
//!                 failing, no record
//!   (none) ───────────────────────────▶ Detected ◀──────────────┐ planned action blocked
//!                                         │   AwaitingApproval ─┤ (approval, attempts,
//!                    the plan acts        ▼   Failed ───────────┘  cooldown, ...)
//!                                    Remediating ── rollback done ──▶ AwaitingFix (hold)
//!                                         ▲                               │
//!                                         └── resume: spec or chart changed
//!
//!   target Ready ──────────▶ Succeeded (fluxmedic acted) | Resolved (it did not)
//!   target gone ───────────▶ the same, "no longer exists"
//!   case changes ──────────▶ this record closes ("superseded"), a new record opens
//!   open > escalation.after ▶ Escalated (once; actions and holds go on)
//!   record edited ─────────▶ frozen: no further action; a hold stays for a person
//! ```
//!
//! Rules that hold in every path (each has a test in `tests.rs`):
//! - A record is evidence, not a command: a step is finished after a crash only if
//!   fluxmedic's seal verifies and today's plan derives the same action again.
//! - A hold (fluxmedic's suspension after a rollback) ends only when the fix lands (the
//!   HelmRelease's generation or chart revision moves) or a person resumes the HelmRelease;
//!   never on escalation, a policy change, a case change or a frozen record.
//! - One incident, one record; a new case is a new record; a closed record is never reopened.
//! - Nothing is written while nothing changes: waits carry a due time, not a countdown.

pub mod conditions;
mod decide;
pub mod seal;
#[cfg(test)]
mod tests;

pub use decide::{Planned, Scene, decide, plan_target, pollers};

use crate::{
    api::{
        APPROVE_ANNOTATION, BASELINE_ANNOTATION, Baseline, DiagnosisRecord, Hold,
        INTENT_ANNOTATION, Mode, ObservedSecret, Phase, REJECT_ANNOTATION, Remediation,
        RemediationStatus, SEAL_ANNOTATION, SEQUENCE_ANNOTATION, SUSPENDED_BY_ANNOTATION, Step,
        StepOutcome, TargetRef,
    },
    diagnose::{Case, Diagnosis},
    flux::{FluxObject, ObjectKey},
    policy::{Action, Blocked, Decision, IncidentView},
};
use seal::{RecordId, Sealer};

/// Steps kept per record: the first and the latest ones.
pub const MAX_STEPS: usize = 30;
/// Longest message a step keeps (an action's error can be as long as its source makes it; a
/// record must stay far below the API's object size limit, or its outcome is never written).
pub const MAX_MESSAGE: usize = 2048;

/// `s`, cut to [`MAX_MESSAGE`] characters (its start kept, the cut marked).
pub fn bounded_message(s: &str) -> String {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// How far a Remediation can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// fluxmedic's seal verifies: what it says, fluxmedic wrote.
    Ours,
    /// fluxmedic created it, but its status was changed since: frozen, never acted from.
    Edited,
    /// Not fluxmedic's (no valid seal, or outside its target's namespace): ignored entirely.
    Foreign,
}

/// A Remediation as the lifecycle reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub name: String,
    pub namespace: String,
    pub target: ObjectKey,
    pub case: Case,
    /// What fluxmedic recorded: the status, plus the first step's intent when the create
    /// carried it and no outcome has reached the status yet.
    pub status: RemediationStatus,
    /// The status as stored, to write only on change.
    pub stored: Option<RemediationStatus>,
    /// The record's `fluxmedic.io/approve` annotation (an approval when it names the id of
    /// the pending request, see [`Record::approved_action`]).
    pub approval: Option<String>,
    /// The record's `fluxmedic.io/reject` annotation (a rejection when it names the id of
    /// the pending request and the deciding policy is in the record's namespace).
    pub rejection: Option<String>,
    pub trust: Trust,
    /// The record object's uid (every seal on its status is bound to it).
    pub uid: String,
    /// The sequence number of the record as it stands (its status's, else its creation's).
    pub sequence: u64,
    /// fluxmedic closed this incident (its ledger says so, whatever the record says now).
    pub closed: bool,
}

fn parse_ts(s: Option<&str>) -> Option<i64> {
    s.and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

/// RFC 3339 for a unix second, clamped to 1970..9999: the schema holds every timestamp to
/// `format: date-time`, so an odd value (a cooldown of a million hours) must still be one.
pub fn rfc3339(t: i64) -> String {
    let max = jiff::Timestamp::MAX.as_second();
    jiff::Timestamp::from_second(t.clamp(0, max))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Whether an action that failed with `category` may succeed when done again with the same
/// input: not when its input was refused as invalid (`Invalid`) or cannot be read
/// (`CorruptRelease`, an oversized or malformed Helm release); those are a person's.
pub fn retry_can_help(category: &str) -> bool {
    !matches!(category, "Invalid" | "CorruptRelease")
}

/// The action a step recorded (machine-readable in `detail`), when readable.
pub fn planned_action(step: &Step) -> Option<Action> {
    Action::from_record(step.planned.as_ref(), step.detail.as_deref())
}

/// What fluxmedic knows of the records it wrote, kept where only it writes (a ConfigMap of the
/// operator's namespace, see `controller::ledger`): per record object (uid), the sequence
/// number of the last status (or creation) it sealed there and whether that closed the
/// incident; and the sequence below which everything it handed out was persisted. Read with
/// it, a status written back, removed, or a record re-created from a saved copy is told from
/// fluxmedic's own latest word and never replayed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub records: std::collections::HashMap<String, LedgerEntry>,
    /// Every sequence number up to this one was handed out before the ledger was persisted.
    pub persisted: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerEntry {
    pub sequence: u64,
    pub closed: bool,
}

impl Ledger {
    /// fluxmedic sealed `sequence` on record `uid` (closing the incident if `closed`); an
    /// older word than the one noted is ignored. Whether the entry changed.
    pub fn note(&mut self, uid: &str, sequence: u64, closed: bool) -> bool {
        if uid.is_empty() {
            return false;
        }
        let e = self.records.entry(uid.to_string()).or_default();
        let new = LedgerEntry { sequence, closed };
        if sequence < e.sequence || *e == new {
            return false;
        }
        *e = new;
        true
    }

    /// Note what a pass read as fluxmedic's own latest word on `record`: a status sealed
    /// after the ledger was last persisted, whose note a crash lost, is known again before
    /// the ledger is persisted next (else it would then read as an earlier word, edited).
    /// Only a word newer than the one noted: never a change at the same sequence (after a
    /// crash two sealed statuses can share one, and a tenant could write back the other to
    /// reopen a closed incident or close an open one).
    pub fn confirm(&mut self, record: &Record) -> bool {
        let newer = self
            .records
            .get(&record.uid)
            .is_none_or(|e| record.sequence > e.sequence);
        record.trust == Trust::Ours
            && newer
            && self.note(&record.uid, record.sequence, !record.status.phase.is_open())
    }
}

/// Why a record fluxmedic made is not read as it stands.
pub const REPLAYED: &str = "this Remediation holds an earlier state than the one fluxmedic last wrote (a status written back, removed, or the record re-created from a copy)";

impl Record {
    /// Read a Remediation. `None` when it cannot be about a Flux object fluxmedic knows, or
    /// sits outside its target's namespace (fluxmedic creates records only there).
    pub fn read(rem: &Remediation, sealer: &Sealer, ledger: &Ledger) -> Option<Record> {
        let target = rem.spec.target.to_key()?;
        let namespace = rem.metadata.namespace.clone()?;
        let name = rem.metadata.name.clone()?;
        let uid = rem.metadata.uid.clone().unwrap_or_default();
        let id = RecordId {
            namespace: &namespace,
            name: &name,
            target: &target,
            case: rem.spec.case,
        };
        let annotations = rem.metadata.annotations.clone().unwrap_or_default();
        let text = |k: &str| annotations.get(k).map(String::as_str).unwrap_or("");
        let (intent, baseline) = (text(INTENT_ANNOTATION), text(BASELINE_ANNOTATION));
        let created_at: u64 = text(SEQUENCE_ANNOTATION).parse().unwrap_or(0);
        let created_by_us = sealer.verify_creation(
            id,
            &creation_payload(intent, baseline, created_at),
            annotations.get(SEAL_ANNOTATION).map(String::as_str),
        );
        let stored = rem.status.clone();
        let entry = ledger.records.get(&uid).copied();
        // fluxmedic's latest word on this object is `entry`; anything older, or anything it
        // should know of and does not, is not its latest word.
        let latest = |seq: u64| match entry {
            Some(e) => seq >= e.sequence,
            None => seq > ledger.persisted,
        };
        // Made by fluxmedic as a record it no longer knows, from before the ledger was last
        // persisted: a copy re-created from a saved one (its own was deleted).
        let copy = created_by_us && entry.is_none() && created_at <= ledger.persisted;
        let status_ours = |s: &RemediationStatus| sealer.verify_status(id, &uid, s);
        let trust = match &stored {
            _ if namespace != target.namespace || uid.is_empty() || copy => Trust::Foreign,
            None if created_by_us && latest(created_at) => Trust::Ours,
            // Made by fluxmedic, but not as it stands: a status removed.
            None if created_by_us => Trust::Edited,
            None => Trust::Foreign,
            Some(s) if status_ours(s) && latest(s.sequence) => Trust::Ours,
            // fluxmedic's status, but an earlier one than it last wrote: written back.
            Some(s) if status_ours(s) => Trust::Edited,
            Some(_) if created_by_us => Trust::Edited,
            Some(_) => Trust::Foreign,
        };
        let mut status = stored.clone().unwrap_or_default();
        // Written before the status had conditions: `observedGeneration` held the target's.
        if status.conditions.is_empty() && status.target_generation.is_none() {
            status.target_generation = status.observed_generation.take();
        }
        status.observed_generation = Some(rem.metadata.generation.unwrap_or(1));
        if stored.is_none()
            && created_by_us
            && let Ok(b) = serde_json::from_str::<Baseline>(baseline)
        {
            b.apply(&mut status);
        }
        if status.steps.is_empty()
            && created_by_us
            && trust == Trust::Ours
            && let Ok(step) = serde_json::from_str::<Step>(intent)
        {
            let at = parse_ts(Some(&step.started_at)).unwrap_or(0);
            match planned_action(&step) {
                Some(a) => begin_step(&mut status, &a, step.token.as_deref().unwrap_or(""), at),
                None => status.steps.push(step),
            }
        }
        let approval = annotations.get(APPROVE_ANNOTATION).cloned();
        let rejection = annotations.get(REJECT_ANNOTATION).cloned();
        Some(Record {
            name,
            namespace,
            target,
            case: rem.spec.case,
            status,
            stored,
            approval,
            rejection,
            trust,
            uid,
            sequence: rem.status.as_ref().map_or(created_at, |s| s.sequence),
            closed: entry.is_some_and(|e| e.closed),
        })
    }

    /// `namespace/name`: what a decision on a policy names.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn id(&self) -> RecordId<'_> {
        RecordId {
            namespace: &self.namespace,
            name: &self.name,
            target: &self.target,
            case: self.case,
        }
    }

    pub fn is_open(&self) -> bool {
        !self.closed && self.status.phase.is_open()
    }

    /// The last step, if a crash interrupted it: its recorded action (when readable) and token.
    pub fn interrupted(&self) -> Option<(Option<Action>, String)> {
        let step = self
            .status
            .steps
            .last()
            .filter(|s| s.outcome == StepOutcome::Running)?;
        Some((planned_action(step), step.token.clone().unwrap_or_default()))
    }

    /// What a person decided on the record's pending request: `Some(true)` approved,
    /// `Some(false)` rejected, `None` nothing yet. It counts only where the deciding policy
    /// lets it: on this record (`fluxmedic.io/approve` or `fluxmedic.io/reject` naming the
    /// request's id) for a policy in the record's own namespace, on the policy itself
    /// (`on_policy`: its `approve.fluxmedic.io/<id>` annotations) for one elsewhere. A
    /// rejection wins over an approval, and a rejected request stays rejected.
    pub fn decision(
        &self,
        policy_namespace: Option<&str>,
        on_policy: &dyn Fn(&str) -> Option<bool>,
    ) -> Option<bool> {
        let req = self.status.approval.as_ref()?;
        let names = |a: &Option<String>| a.as_deref() == Some(req.id.as_str());
        match policy_namespace {
            _ if req.rejected => Some(false),
            Some(ns) if ns == self.namespace && names(&self.rejection) => Some(false),
            Some(ns) if ns == self.namespace => names(&self.approval).then_some(true),
            Some(_) => on_policy(&req.id),
            None => None,
        }
    }

    /// The action a person has approved (see [`Record::decision`]).
    pub fn approved_action(
        &self,
        policy_namespace: Option<&str>,
        on_policy: &dyn Fn(&str) -> Option<bool>,
    ) -> Option<Action> {
        let req = self.status.approval.as_ref()?;
        let approved = self.decision(policy_namespace, on_policy) == Some(true);
        approved.then(|| Action::from_record(req.planned.as_ref(), Some(&req.detail)))?
    }

    /// The id of the pending request a person has rejected, if they have.
    pub fn rejected_request(
        &self,
        policy_namespace: Option<&str>,
        on_policy: &dyn Fn(&str) -> Option<bool>,
    ) -> Option<String> {
        let req = self.status.approval.as_ref()?;
        let rejected = self.decision(policy_namespace, on_policy) == Some(false);
        rejected.then(|| req.id.clone())
    }

    /// The incident as the planner sees it; `approved` is [`Record::approved_action`].
    pub fn view(&self, now: i64, approved: Option<Action>) -> IncidentView {
        let s = &self.status;
        let interrupted = self.interrupted().and_then(|(a, _)| a);
        IncidentView {
            phase: s.phase,
            attempts: s.attempts,
            rollbacks: s.rollbacks,
            polls: s.polls,
            approved,
            detected_at: parse_ts(s.detected_at.as_deref()).unwrap_or(now),
            last_action_at: parse_ts(s.last_action_at.as_deref()),
            holds: s.hold.is_some() || matches!(interrupted, Some(Action::Rollback { .. })),
            interrupted,
            gave_up: s
                .steps
                .last()
                .filter(|st| st.outcome == StepOutcome::Failed)
                .filter(|st| st.category.as_deref().is_some_and(|c| !retry_can_help(c)))
                .and_then(|st| Some((planned_action(st)?, st.message.clone()))),
            observed_generation: s.target_generation,
            observed_revision: s.observed_revision.clone(),
            observed_secret: s.observed_secret.clone(),
        }
    }
}

/// What the snapshot says about the target now.
#[derive(Clone, Copy, Debug)]
pub enum Seen<'a> {
    /// Failing, with its diagnosis and today's plan for it.
    Failing {
        diagnosis: &'a Diagnosis,
        decision: &'a Decision,
    },
    Ready,
    /// Neither failing nor Ready (Flux is working on it).
    Pending,
    Gone,
}

/// Everything [`next`] decides from.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The open record of this target, if any (never a Foreign one).
    pub record: Option<&'a Record>,
    pub target: Option<&'a FluxObject>,
    pub seen: Seen<'a>,
    /// The target's source revision now (a HelmRelease's chart).
    pub source_revision: Option<String>,
    /// The target's credentials Secret now (sources).
    pub secret: Option<ObservedSecret>,
    /// For an interrupted step when the target no longer fails: today's policy re-checked
    /// ([`crate::policy::recheck`]); `None` = it may be finished.
    pub recheck: Option<Blocked>,
    /// The governing policy says the incident is due for escalation.
    pub escalate: bool,
    /// The Flux controller of the target is not processing its objects: why.
    pub controller_down: Option<&'a str>,
    /// The deciding policy and mode, for the record.
    pub policy: Option<String>,
    pub now: i64,
    /// The token for a new action.
    pub token: &'a str,
    /// The id of the pending approval request a person rejected ([`Record::rejected_request`]).
    pub rejected: Option<String>,
    /// A fresh random id, for an approval request made now.
    pub nonce: &'a str,
}

/// Where a step's intent is (or goes) before its action runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntentAt {
    /// Write the status (holding the Running step) first.
    Status,
    /// The record's create carried it ([`INTENT_ANNOTATION`]).
    Create,
    /// Already recorded: a step a restart interrupted.
    Recorded,
}

/// What an Event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regarding {
    /// The target (where `flux events` and `kubectl describe` look), the record related;
    /// the record itself when the target is gone.
    Target,
    Record,
}

/// Something to count.
#[derive(Clone, Debug, PartialEq)]
pub enum Count {
    Incident(Case),
    /// Seconds from the target going not-ready to its record.
    Detected(i64),
    Escalation(Case),
    Blocked(&'static str),
    Recovered {
        case: Case,
        seconds: i64,
    },
    Action {
        name: &'static str,
        ok: bool,
    },
    RecordEdited,
    /// An action failed with this category (counted where its outcome could not be written).
    Error(&'static str),
}

/// One thing the engine does, in order. Effects after [`Effect::Open`] are about the record
/// it opened.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Create a record for `case` with `status`; `intent` is the first step's intent, recorded
    /// by the create itself when an action follows at once (then the status is written with
    /// the outcome), else the status is written right after the create.
    Open {
        case: Case,
        status: Box<RemediationStatus>,
        intent: Option<Step>,
    },
    /// Write the status (the engine seals it).
    Write(Box<RemediationStatus>),
    /// Resume the HelmRelease this record suspended (only if it still carries this record's
    /// suspension).
    ReleaseHold,
    /// Close the record: label it closed, then write `status`.
    Close(Box<RemediationStatus>),
    Event {
        regarding: Regarding,
        warning: bool,
        reason: &'static str,
        action: &'static str,
        note: String,
    },
    Count(Count),
}

/// What to do about one target: effects in order, then at most one action. The action is
/// last by construction: nothing can be listed after it, so nothing after it is dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transition {
    pub effects: Vec<Effect>,
    pub action: Option<Act>,
}

/// Perform `action` with `token`, its intent recorded as `intent` says; `status` holds the
/// Running step. The executor folds the outcome with [`settle`].
#[derive(Clone, Debug, PartialEq)]
pub struct Act {
    pub action: Action,
    pub token: String,
    pub status: Box<RemediationStatus>,
    pub intent: IntentAt,
    /// What the next pass would record once the action succeeded (its cooldown, the next
    /// step planned), folded into the outcome's write so that pass has nothing to write.
    pub waiting: Option<Box<Waiting>>,
}

/// The part of a status the pass after a successful action works out (see [`Act::waiting`]),
/// and what that pass would count and announce on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub phase: Phase,
    pub blocked: Option<String>,
    pub blocked_reason: Option<String>,
    pub planned: Option<String>,
    pub next_action_at: Option<String>,
    pub effects: Vec<Effect>,
}

impl Waiting {
    /// From the transition the pass after the action would make: only a wait (one status
    /// write, no action, no record opened or closed, no hold released) is folded.
    pub fn of(next: Transition) -> Option<Waiting> {
        if next.action.is_some() {
            return None;
        }
        let mut status = None;
        let mut effects = vec![];
        for e in next.effects {
            match e {
                Effect::Write(s) if status.is_none() => status = Some(s),
                e @ (Effect::Count(_) | Effect::Event { .. }) => effects.push(e),
                _ => return None,
            }
        }
        let s = status?;
        // A request for approval is the next pass's own (a fresh id, its Event): not folded.
        if s.approval.is_some() {
            return None;
        }
        Some(Waiting {
            phase: s.phase,
            blocked: s.blocked,
            blocked_reason: s.blocked_reason,
            planned: s.planned,
            next_action_at: s.next_action_at,
            effects,
        })
    }

    fn apply(self, status: &mut RemediationStatus, out: &mut Vec<Effect>) {
        status.phase = self.phase;
        status.blocked = self.blocked;
        status.blocked_reason = self.blocked_reason;
        status.planned = self.planned;
        status.next_action_at = self.next_action_at;
        out.extend(self.effects);
    }
}

impl Transition {
    /// `effects`, then `act`.
    pub fn acting(effects: Vec<Effect>, act: Act) -> Transition {
        Transition {
            effects,
            action: Some(act),
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.effects.is_empty() && self.action.is_none()
    }

    /// `first`'s effects (which cannot act), then this transition.
    fn after(mut self, mut first: Vec<Effect>) -> Transition {
        first.append(&mut self.effects);
        self.effects = first;
        self
    }
}

impl From<Vec<Effect>> for Transition {
    fn from(effects: Vec<Effect>) -> Self {
        Transition {
            effects,
            action: None,
        }
    }
}

/// The effects before the action.
impl std::ops::Deref for Transition {
    type Target = [Effect];
    fn deref(&self) -> &[Effect] {
        &self.effects
    }
}

impl PartialEq<Vec<Effect>> for Transition {
    fn eq(&self, other: &Vec<Effect>) -> bool {
        self.action.is_none() && &self.effects == other
    }
}

fn event(
    regarding: Regarding,
    warning: bool,
    reason: &'static str,
    action: &'static str,
    note: String,
) -> Effect {
    Effect::Event {
        regarding,
        warning,
        reason,
        action,
        note,
    }
}

fn diagnosis_record(d: &Diagnosis) -> DiagnosisRecord {
    DiagnosisRecord {
        summary: d.summary.clone(),
        retryable: d.retryable,
        native: d.native,
        evidence: d.evidence.clone(),
    }
}

/// Add a Running step for `action` to `status`, with the bookkeeping that goes with it.
pub fn begin_step(status: &mut RemediationStatus, action: &Action, token: &str, now: i64) {
    status.steps.push(Step {
        action: action.name().into(),
        planned: Some(action.to_record()),
        detail: None,
        outcome: StepOutcome::Running,
        token: Some(token.into()),
        started_at: rfc3339(now),
        finished_at: None,
        message: action.to_string(),
        category: None,
    });
    if status.steps.len() > MAX_STEPS {
        status.steps.drain(1..status.steps.len() - (MAX_STEPS - 1));
    }
    if action.is_attempt() {
        status.attempts = status.attempts.saturating_add(1);
    }
    if matches!(action, Action::ReconcileSource { .. }) {
        status.polls = status.polls.saturating_add(1);
    }
    if matches!(action, Action::Rollback { .. }) {
        status.rollbacks = status.rollbacks.saturating_add(1);
    }
    status.last_action_at = Some(rfc3339(now));
    status.action = Some(action.name().into());
    status.blocked = None;
    status.blocked_reason = None;
    status.planned = None;
    // An approval approves one action: the next one needs its own.
    status.approval = None;
    status.next_action_at = None;
    if status.phase != Phase::Escalated {
        status.phase = Phase::Remediating;
    }
}

/// What to do about one target now.
pub fn next(inp: &Input<'_>) -> Transition {
    let mut out = lifecycle(inp);
    conditions::present_all(&mut out.effects, inp.now);
    if let Some(act) = out.action.as_mut() {
        conditions::present(&mut act.status, inp.now);
    }
    out
}

/// An incident's state, derived once from its record: which of the lifecycle's rules apply.
/// The rules are the table in [`lifecycle`]: state × what is seen → effects.
#[derive(Clone, Debug, PartialEq)]
pub enum State<'a> {
    /// No record: a failure seen now opens one.
    New,
    /// Not fluxmedic's record: ignored entirely.
    Foreign,
    /// fluxmedic's record, changed since by someone else: frozen now, never acted from.
    Edited,
    /// Frozen: closed when the target recovers or is gone, nothing else.
    Frozen,
    /// A step a crash interrupted (its action when readable, its token): finished first.
    Interrupted {
        action: Option<Action>,
        token: String,
    },
    /// A release held suspended after a rollback: kept until the fix lands.
    Held(&'a Hold),
    /// Open with nothing pending: follows what is seen.
    Open,
}

impl<'a> State<'a> {
    pub fn of(record: Option<&'a Record>) -> State<'a> {
        let Some(rec) = record else {
            return State::New;
        };
        match rec.trust {
            Trust::Foreign => State::Foreign,
            _ if rec.status.frozen.is_some() => State::Frozen,
            Trust::Edited => State::Edited,
            Trust::Ours => match (rec.interrupted(), &rec.status.hold) {
                (Some((action, token)), _) => State::Interrupted { action, token },
                (None, Some(hold)) => State::Held(hold),
                (None, None) => State::Open,
            },
        }
    }
}

fn lifecycle(inp: &Input<'_>) -> Transition {
    let state = State::of(inp.record);
    let (Some(rec), seen) = (inp.record, inp.seen) else {
        // No record.
        return match inp.seen {
            Seen::Failing {
                diagnosis,
                decision,
            } => open(inp, diagnosis, decision),
            _ => Transition::default(),
        };
    };
    match (state, seen) {
        (State::New, _) | (State::Foreign, _) => Transition::default(),
        (State::Edited, _) => freeze(rec).into(),
        (State::Frozen, Seen::Ready | Seen::Gone) => close(rec, inp, Closing::Recovered).into(),
        (State::Frozen, _) => Transition::default(),
        (State::Interrupted { action, token }, _) => finish_interrupted(rec, inp, action, token),
        (State::Held(hold), _) => held(rec, inp, hold),
        (State::Open, Seen::Ready | Seen::Gone) => close(rec, inp, Closing::Recovered).into(),
        (State::Open, Seen::Pending) => stuck(rec, inp).into(),
        (
            State::Open,
            Seen::Failing {
                diagnosis,
                decision,
            },
        ) if diagnosis.case != rec.case => {
            open(inp, diagnosis, decision).after(close(rec, inp, Closing::Superseded))
        }
        (
            State::Open,
            Seen::Failing {
                diagnosis,
                decision,
            },
        ) => failing(rec, inp, diagnosis, decision),
    }
}

/// A new incident: its record, and the first action when the plan acts at once.
fn open(inp: &Input<'_>, d: &Diagnosis, dec: &Decision) -> Transition {
    if dec.mode == Mode::Off {
        return Transition::default();
    }
    let since = inp
        .target
        .and_then(|t| t.failing_since())
        .map(|t| t.as_second())
        .unwrap_or(inp.now);
    let mut status = RemediationStatus {
        detected_at: Some(rfc3339(inp.now)),
        observed_generation: Some(1),
        target_generation: inp.target.and_then(|t| t.generation),
        observed_revision: inp
            .source_revision
            .clone()
            .or_else(|| inp.target.and_then(|t| t.artifact_revision.clone())),
        observed_secret: inp.secret.clone(),
        diagnosis: Some(diagnosis_record(d)),
        root: (!d.is_root()).then(|| TargetRef::from_key(&d.root)),
        policy: inp.policy.clone(),
        mode: Some(dec.mode),
        ..Default::default()
    };
    let note = format!(
        "{} ({}): {}",
        d.case,
        if d.retryable {
            "retry can help"
        } else {
            "retry cannot help"
        },
        d.summary
    );
    let mut out = vec![];
    // Escalated at once when due (as on any later pass): a person is told; the first action
    // is taken all the same, within the policy's limits.
    let mut escalation = vec![];
    escalate(
        d.case,
        &d.target,
        &mut status,
        dec.escalate,
        &d.summary,
        &mut escalation,
    );
    match dec.act().cloned() {
        Some(action) => {
            begin_step(&mut status, &action, inp.token, inp.now);
            let intent = status.steps.last().cloned();
            out.push(Effect::Open {
                case: d.case,
                status: Box::new(status.clone()),
                intent,
            });
            push_detected(&mut out, d, inp.now, since, note);
            out.extend(escalation);
            Transition::acting(
                out,
                Act {
                    action,
                    token: inp.token.to_string(),
                    status: Box::new(status),
                    intent: IntentAt::Create,
                    waiting: None,
                },
            )
        }
        None => {
            let mut waits = vec![];
            wait(&mut status, Waited::Not, dec, inp, &mut waits);
            out.push(Effect::Open {
                case: d.case,
                status: Box::new(status),
                intent: None,
            });
            push_detected(&mut out, d, inp.now, since, note);
            out.extend(escalation);
            out.extend(waits);
            out.into()
        }
    }
}

fn push_detected(out: &mut Vec<Effect>, d: &Diagnosis, now: i64, since: i64, note: String) {
    out.push(Effect::Count(Count::Incident(d.case)));
    out.push(Effect::Count(Count::Detected(
        now.saturating_sub(since).max(0),
    )));
    out.push(event(
        Regarding::Target,
        true,
        "FailureDetected",
        "Diagnose",
        note,
    ));
}

/// A planned action that is not taken: the phase, the reason and when the next action is due.
/// Counts and announces the reason when it changes.
/// What an incident was waiting for before this pass.
#[derive(Clone, Copy)]
enum Waited<'a> {
    Not,
    Reason(&'a str),
    /// A record written before `blockedReason` existed: only its text.
    Text(&'a str),
}

impl<'a> Waited<'a> {
    fn of(status: &'a RemediationStatus) -> Self {
        match (&status.blocked_reason, &status.blocked) {
            (Some(r), _) => Waited::Reason(r),
            (None, Some(t)) => Waited::Text(t),
            (None, None) => Waited::Not,
        }
    }
}

fn wait(
    status: &mut RemediationStatus,
    prev: Waited<'_>,
    dec: &Decision,
    inp: &Input<'_>,
    out: &mut Vec<Effect>,
) {
    let blocked = dec.blocked.clone().unwrap_or(Blocked::NoRunbook);
    request_approval(status, dec, inp);
    let rejected = reject_request(status, inp, out);
    let mut text = match &dec.planned {
        Some(a) => format!("planned {a}; {blocked}"),
        None => blocked.to_string(),
    };
    match (&blocked, &status.approval) {
        (Blocked::AwaitingApproval, Some(req)) if req.rejected => {
            text = format!("planned {}; {REJECTED} (request {})", req.action, req.id)
        }
        (Blocked::AwaitingApproval, Some(req)) => text = format!("{text}: {}", req.how),
        _ => {}
    }
    if status.phase != Phase::Escalated {
        status.phase = match &blocked {
            Blocked::AwaitingApproval if rejected => Phase::Detected,
            Blocked::AwaitingApproval => Phase::AwaitingApproval,
            Blocked::MaxAttempts => Phase::Failed,
            Blocked::AwaitingFix(_) => Phase::AwaitingFix,
            _ if matches!(status.phase, Phase::AwaitingApproval | Phase::AwaitingFix) => {
                Phase::Detected
            }
            _ => status.phase,
        };
    }
    status.planned = dec.planned.as_ref().map(|a| a.name().to_string());
    status.next_action_at = blocked.until().map(rfc3339);
    // A new reason (not merely the same one again) is counted and, for some, announced.
    let label = blocked.label();
    let reason_changed = match prev {
        Waited::Reason(before) => before != label,
        // Written before the reason had its own field: read from the text, which is
        // "planned <action>; <reason>[: how to approve]".
        Waited::Text(before) => !before.contains(&blocked.to_string()) && before != text,
        Waited::Not => true,
    };
    status.blocked_reason = Some(label.to_string());
    if reason_changed {
        out.push(Effect::Count(Count::Blocked(blocked.label())));
        if matches!(
            blocked,
            Blocked::AwaitingApproval
                | Blocked::MaxAttempts
                | Blocked::CircuitBreakerOpen { .. }
                | Blocked::OutsidePolicyNamespace { .. }
                | Blocked::SuspendedByPerson
                | Blocked::ReleaseNotVerified(_)
        ) {
            out.push(event(
                Regarding::Record,
                false,
                "ActionBlocked",
                "Plan",
                text.clone(),
            ));
        }
    }
    status.blocked = Some(text);
}

/// What a rejected request's record says.
pub const REJECTED: &str = "a person rejected it: fluxmedic does not ask for it again in this incident, which stays open until the target recovers";

/// Mark the pending request rejected when a person rejected exactly it (announced once);
/// whether it is rejected now.
fn reject_request(status: &mut RemediationStatus, inp: &Input<'_>, out: &mut Vec<Effect>) -> bool {
    let Some(req) = status.approval.as_mut() else {
        return false;
    };
    if !req.rejected && inp.rejected.as_deref() == Some(req.id.as_str()) {
        req.rejected = true;
        if let Some(planned) = req.planned.clone() {
            status.rejections.retain(|r| r != &planned);
            status.rejections.push(planned);
            let excess = status.rejections.len().saturating_sub(MAX_REJECTIONS);
            status.rejections.drain(..excess);
        }
        let Some(req) = status.approval.as_ref() else {
            return false;
        };
        let note = format!("{}: {REJECTED}", req.action);
        out.push(event(
            Regarding::Record,
            false,
            "ActionRejected",
            "Plan",
            note,
        ));
    }
    status.approval.as_ref().is_some_and(|r| r.rejected)
}

/// Actions a person rejected that an incident remembers (the latest ones).
pub const MAX_REJECTIONS: usize = 8;

/// Under RequireApproval, the planned action's approval request: kept while the plan asks
/// for exactly that action (whatever else holds it back meanwhile), made anew with a fresh id
/// when it asks for another, gone when it asks for none.
fn request_approval(status: &mut RemediationStatus, dec: &Decision, inp: &Input<'_>) {
    let Some(a) = dec
        .planned
        .as_ref()
        .filter(|_| dec.mode == Mode::RequireApproval)
    else {
        status.approval = None;
        return;
    };
    let asked = |r: &crate::api::ApprovalRequest| {
        Action::from_record(r.planned.as_ref(), Some(&r.detail)).as_ref() == Some(a)
    };
    if status.approval.as_ref().is_some_and(asked) {
        return;
    }
    // Rejected earlier in this incident (the plan went elsewhere and came back): still no.
    let rejected = status
        .rejections
        .iter()
        .any(|r| Action::from_record(Some(r), None).as_ref() == Some(a));
    let id = inp.nonce.to_string();
    let target_ns = inp.target.map(|t| t.key.namespace.as_str()).unwrap_or("");
    let how = match inp.policy.as_deref().and_then(|p| p.split_once('/')) {
        Some((ns, name)) if ns != target_ns => format!(
            "a policy of the operator's namespace decided, so only there: annotate RemediationPolicy {ns}/{name} with {}{id}=<this Remediation's namespace/name> (`fluxmedic approve` writes it)",
            crate::api::POLICY_APPROVAL_PREFIX
        ),
        _ => format!("annotate this Remediation with {APPROVE_ANNOTATION}={id}"),
    };
    status.approval = Some(crate::api::ApprovalRequest {
        action: a.to_string(),
        planned: Some(a.to_record()),
        // Also the text earlier versions read (they require it): a downgraded operator can
        // still list the records, though it will not trust ones this version sealed.
        detail: a.to_legacy_text(),
        id,
        how,
        rejected,
    });
}

/// Escalate once, when due; holds and actions are not affected.
fn escalate(
    case: Case,
    target: &ObjectKey,
    status: &mut RemediationStatus,
    due: bool,
    summary: &str,
    out: &mut Vec<Effect>,
) {
    if !due || status.phase == Phase::Escalated || !status.phase.is_open() {
        return;
    }
    status.phase = Phase::Escalated;
    out.push(Effect::Count(Count::Escalation(case)));
    out.push(event(
        Regarding::Target,
        true,
        "Escalated",
        "Escalate",
        format!(
            "{} has been failing since {} ({summary}); a person is needed",
            target,
            status.detected_at.clone().unwrap_or_default()
        ),
    ));
}

/// An open incident whose target shows Flux working on it (Ready Unknown, reconciling) while
/// its controller is not processing objects: frozen mid-reconcile, the target will not move
/// until the controller does. A person's problem at once, as for a failing target.
fn stuck(rec: &Record, inp: &Input<'_>) -> Vec<Effect> {
    let Some(why) = inp.controller_down else {
        return vec![];
    };
    let mut status = rec.status.clone();
    let mut out = vec![];
    escalate(rec.case, &rec.target, &mut status, true, why, &mut out);
    let blocked = Blocked::ControllerDown(why.to_string());
    status.blocked = Some(blocked.to_string());
    status.blocked_reason = Some(blocked.label().to_string());
    status.next_action_at = None;
    if let Some(d) = status.diagnosis.as_mut()
        && !d.evidence.iter().any(|e| e.source == "controller")
    {
        d.evidence.push(crate::diagnose::Evidence {
            source: "controller".into(),
            reason: "ControllerNotWorking".into(),
            message: why.to_string(),
        });
    }
    write_if_changed(rec, status, &mut out);
    out
}

/// Write `status` if it differs from what is stored.
fn write_if_changed(rec: &Record, status: RemediationStatus, out: &mut Vec<Effect>) {
    if rec.stored.as_ref() != Some(&status) {
        out.push(Effect::Write(Box::new(status)));
    }
}

fn failing(rec: &Record, inp: &Input<'_>, d: &Diagnosis, dec: &Decision) -> Transition {
    let mut status = rec.status.clone();
    status.diagnosis = Some(diagnosis_record(d));
    status.root = (!d.is_root()).then(|| TargetRef::from_key(&d.root));
    status.policy = inp.policy.clone();
    status.mode = Some(dec.mode);
    let mut out = vec![];
    escalate(
        rec.case,
        &rec.target,
        &mut status,
        dec.escalate,
        &d.summary,
        &mut out,
    );
    if let Some(action) = dec.act().cloned() {
        begin_step(&mut status, &action, inp.token, inp.now);
        let act = Act {
            action,
            token: inp.token.to_string(),
            status: Box::new(status),
            intent: IntentAt::Status,
            waiting: None,
        };
        return Transition::acting(out, act);
    }
    wait(&mut status, Waited::of(&rec.status), dec, inp, &mut out);
    write_if_changed(rec, status, &mut out);
    out.into()
}

/// A step a crash interrupted: finished with its recorded token if today's plan derives the
/// same action again (or, the target no longer failing, today's policy still allows it);
/// else marked Interrupted, undoing a suspension a half-done rollback left.
fn finish_interrupted(
    rec: &Record,
    inp: &Input<'_>,
    action: Option<Action>,
    token: String,
) -> Transition {
    let ours_suspended = inp.target.is_some_and(|t| {
        t.suspended && t.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION) == Some(&rec.name)
    });
    let verdict: Result<Action, String> = match (action, inp.seen) {
        (None, _) => Err("its recorded action is unreadable".into()),
        (Some(_), Seen::Gone) => Err("the target no longer exists".into()),
        // Releasing fluxmedic's own hold is always allowed.
        (Some(Action::Resume), _) => Ok(Action::Resume),
        (Some(Action::Rollback { .. }), Seen::Ready | Seen::Pending) => {
            Err("not re-run on a target that no longer fails".into())
        }
        (Some(a), Seen::Ready | Seen::Pending) => match &inp.recheck {
            None => Ok(a),
            Some(b) => Err(format!("not finished: {b}")),
        },
        (Some(a), Seen::Failing { diagnosis, .. }) if diagnosis.case != rec.case => {
            let _ = a;
            Err(format!("the failure is now {}", diagnosis.case))
        }
        (Some(a), Seen::Failing { decision, .. }) => match decision.act() {
            Some(planned) if planned == &a => Ok(a),
            Some(planned) => Err(format!("today's plan is {planned} instead")),
            None => Err(format!(
                "not finished: {}",
                decision.blocked.clone().unwrap_or(Blocked::NoRunbook)
            )),
        },
    };
    match verdict {
        Ok(action) => Transition::acting(
            vec![],
            Act {
                action,
                token,
                status: Box::new(rec.status.clone()),
                intent: IntentAt::Recorded,
                waiting: None,
            },
        ),
        Err(why) => {
            let mut status = rec.status.clone();
            let was_rollback = status
                .steps
                .last()
                .and_then(planned_action)
                .is_some_and(|a| matches!(a, Action::Rollback { .. }));
            if let Some(step) = status.steps.last_mut() {
                step.outcome = StepOutcome::Interrupted;
                step.finished_at = Some(rfc3339(inp.now));
                step.message = format!("interrupted by a restart; {why}");
            }
            let mut out = vec![];
            // A half-done rollback's suspension is not a hold: give the HelmRelease back.
            if was_rollback && ours_suspended {
                out.push(Effect::ReleaseHold);
            }
            out.push(Effect::Count(Count::Action {
                name: "interrupted",
                ok: false,
            }));
            out.push(Effect::Write(Box::new(status)));
            out.into()
        }
    }
}

/// fluxmedic holds the HelmRelease suspended after a rollback.
fn held(rec: &Record, inp: &Input<'_>, hold: &Hold) -> Transition {
    let Some(t) = inp.target else {
        return close(rec, inp, Closing::Recovered).into();
    };
    let ours =
        t.suspended && t.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION) == Some(&rec.name);
    let mut status = rec.status.clone();
    if !ours {
        // A person resumed it (or suspended it anew under their own name): the hold is over.
        status.hold = None;
        status.blocked = None;
        status.blocked_reason = None;
        status.planned = None;
        status.message = Some(format!(
            "{} was resumed or re-suspended by someone else; fluxmedic no longer holds it",
            rec.target
        ));
        if status.phase == Phase::AwaitingFix {
            status.phase = Phase::Remediating;
        }
        return vec![
            event(
                Regarding::Target,
                false,
                "HoldReleased",
                "Resume",
                format!("{} is no longer held by {}", rec.target, rec.name),
            ),
            Effect::Write(Box::new(status)),
        ]
        .into();
    }
    let new_generation = t.generation.is_some_and(|g| g > hold.generation);
    let new_revision = hold.revision.is_some() && inp.source_revision != hold.revision;
    let mut out = vec![];
    let summary = status
        .diagnosis
        .as_ref()
        .map(|d| d.summary.clone())
        .unwrap_or_default();
    escalate(
        rec.case,
        &rec.target,
        &mut status,
        inp.escalate,
        &summary,
        &mut out,
    );
    if new_generation || new_revision {
        begin_step(&mut status, &Action::Resume, inp.token, inp.now);
        let act = Act {
            action: Action::Resume,
            token: inp.token.to_string(),
            status: Box::new(status),
            intent: IntentAt::Status,
            waiting: None,
        };
        return Transition::acting(out, act);
    }
    if status.phase != Phase::Escalated {
        status.phase = Phase::AwaitingFix;
    }
    status.next_action_at = None;
    status.blocked = Some(
        "awaiting a fix: rolled back and suspended; resumes when the HelmRelease spec or its chart changes"
            .into(),
    );
    status.blocked_reason = Some(Blocked::AwaitingFix(String::new()).label().to_string());
    status.planned = None;
    write_if_changed(rec, status, &mut out);
    out.into()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Closing {
    Recovered,
    Superseded,
}

fn close(rec: &Record, inp: &Input<'_>, why: Closing) -> Vec<Effect> {
    let mut status = rec.status.clone();
    let acted = status
        .steps
        .iter()
        .any(|s| s.outcome == StepOutcome::Succeeded);
    status.phase = if acted {
        Phase::Succeeded
    } else {
        Phase::Resolved
    };
    status.closed_at = Some(rfc3339(inp.now));
    status.blocked = None;
    status.blocked_reason = None;
    status.planned = None;
    status.next_action_at = None;
    let detected = parse_ts(status.detected_at.as_deref()).unwrap_or(inp.now);
    let ttr = inp.now.saturating_sub(detected).max(0);
    status.time_to_recovery_seconds = Some(ttr as f64);
    let gone = matches!(inp.seen, Seen::Gone) || inp.target.is_none();
    status.message = Some(match (why, gone) {
        (Closing::Superseded, _) => "the failure changed; a new Remediation records it".into(),
        (_, true) => "the target no longer exists".into(),
        _ => "the target is Ready".into(),
    });
    if why == Closing::Superseded {
        // Not a recovery: the target still fails, as another case (the next record's). No
        // time to recovery is counted for it.
        let note = match inp.seen {
            Seen::Failing { diagnosis, .. } => format!(
                "{}: the failure is now {}; a new Remediation records it",
                rec.target, diagnosis.case
            ),
            _ => format!("{}: the failure changed", rec.target),
        };
        status.time_to_recovery_seconds = None;
        return vec![
            Effect::Close(Box::new(status)),
            event(Regarding::Record, false, "Superseded", "Close", note),
        ];
    }
    let note = format!("{} recovered after {ttr}s ({:?})", rec.target, status.phase);
    vec![
        Effect::Close(Box::new(status)),
        Effect::Count(Count::Recovered {
            case: rec.case,
            seconds: ttr,
        }),
        event(
            if gone {
                Regarding::Record
            } else {
                Regarding::Target
            },
            false,
            "Recovered",
            "Close",
            note,
        ),
    ]
}

/// The text a frozen record carries.
pub const FROZEN: &str = "this Remediation was changed outside fluxmedic (its status no longer carries fluxmedic's seal): fluxmedic takes no further action on this incident; delete the Remediation to let it open a new one";

/// A record whose status was changed outside fluxmedic: nothing in it is acted upon again.
fn freeze(rec: &Record) -> Vec<Effect> {
    let mut status = rec.status.clone();
    status.frozen = Some(FROZEN.into());
    if let Some(step) = status
        .steps
        .last_mut()
        .filter(|s| s.outcome == StepOutcome::Running)
    {
        step.outcome = StepOutcome::Interrupted;
        step.message = "abandoned: the record was changed outside fluxmedic".into();
    }
    status.phase = Phase::Failed;
    status.next_action_at = None;
    status.blocked = Some(match &status.hold {
        Some(_) => format!(
            "{FROZEN}; {} stays suspended until a person resumes it (flux resume helmrelease)",
            rec.target
        ),
        None => FROZEN.into(),
    });
    vec![
        Effect::Count(Count::RecordEdited),
        event(
            Regarding::Record,
            true,
            "RecordEdited",
            "Verify",
            FROZEN.to_string(),
        ),
        Effect::Write(Box::new(status)),
    ]
}

/// An action's outcome, as the engine reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done {
        message: String,
        /// For a suspend: the HelmRelease's generation after it.
        generation: Option<i64>,
    },
    Failed {
        message: String,
        category: &'static str,
    },
}

/// What the snapshot says after an action, for the record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub source_revision: Option<String>,
    pub secret: Option<ObservedSecret>,
    /// The target's generation before the action.
    pub generation: Option<i64>,
}

impl Facts {
    /// What `snap` says of `obj`.
    pub fn of(snap: &crate::diagnose::Snapshot, obj: &FluxObject) -> Facts {
        Facts {
            source_revision: crate::policy::source_revision(snap, obj),
            secret: crate::policy::observed_secret(snap, obj),
            generation: obj.generation,
        }
    }
}

/// Fold an action's outcome into `status` (which holds its Running step): the record to
/// write and what to announce.
pub fn settle(
    status: RemediationStatus,
    action: &Action,
    outcome: &Outcome,
    facts: &Facts,
    now: i64,
) -> Vec<Effect> {
    settle_waiting(status, action, outcome, facts, now, None)
}

/// [`settle`], and on success what the next pass would record meanwhile ([`Act::waiting`]).
pub fn settle_waiting(
    status: RemediationStatus,
    action: &Action,
    outcome: &Outcome,
    facts: &Facts,
    now: i64,
    waiting: Option<Waiting>,
) -> Vec<Effect> {
    let mut out = fold_outcome(status, action, outcome, facts, now);
    if let (Outcome::Done { .. }, Some(w), Some(Effect::Write(st))) =
        (outcome, waiting, out.first_mut())
    {
        let mut extra = vec![];
        w.apply(st, &mut extra);
        out.extend(extra);
    }
    conditions::present_all(&mut out, now);
    out
}

fn fold_outcome(
    mut status: RemediationStatus,
    action: &Action,
    outcome: &Outcome,
    facts: &Facts,
    now: i64,
) -> Vec<Effect> {
    let Some(last) = status
        .steps
        .last_mut()
        .filter(|s| s.outcome == StepOutcome::Running)
    else {
        return vec![];
    };
    last.finished_at = Some(rfc3339(now));
    let (warning, reason, ok) = match outcome {
        Outcome::Done { message, .. } => {
            last.outcome = StepOutcome::Succeeded;
            last.message = bounded_message(message);
            (false, "ActionSucceeded", true)
        }
        Outcome::Failed { message, category } => {
            last.outcome = StepOutcome::Failed;
            last.message = bounded_message(message);
            last.category = Some(category.to_string());
            (true, *category, false)
        }
    };
    let note = format!("{action}: {}", last.message);
    if let Outcome::Done { generation, .. } = outcome {
        match action {
            Action::Rollback { .. } => {
                // The generation after fluxmedic's own suspend, and the chart revision now:
                // a change of either means the fix landed.
                let generation = generation
                    .or(facts.generation.map(|g| g.saturating_add(1)))
                    .unwrap_or(0);
                status.hold = Some(Hold {
                    generation,
                    revision: facts.source_revision.clone(),
                    since: rfc3339(now),
                });
                status.target_generation = Some(generation);
                status.observed_revision = facts.source_revision.clone();
                if status.phase != Phase::Escalated {
                    status.phase = Phase::AwaitingFix;
                }
            }
            Action::Reconcile if status.diagnosis.is_some() => {
                status.observed_revision = facts
                    .source_revision
                    .clone()
                    .or(status.observed_revision.clone());
            }
            Action::ReconcileSourceAndConsumers { .. } => {
                status.observed_secret = facts.secret.clone();
            }
            Action::Resume => {
                status.hold = None;
                if status.phase != Phase::Escalated {
                    status.phase = Phase::Remediating;
                }
            }
            _ => {}
        }
    }
    vec![
        Effect::Write(Box::new(status)),
        Effect::Count(Count::Action {
            name: action.name(),
            ok,
        }),
        event(Regarding::Target, warning, reason, action.name(), note),
    ]
}

/// Whether a HelmRelease's suspension is fluxmedic's leftover that nobody holds: it carries
/// a hold fluxmedic sealed for exactly this object and generation (nothing changed its spec
/// since), and no open record of fluxmedic's holds it (or is in the middle of the rollback
/// that makes it). A suspension fluxmedic did not make, or one a person touched since, is
/// never resumed.
pub fn orphaned_hold(hr: &FluxObject, owner: Option<&Record>, sealer: &Sealer) -> bool {
    let Some(owner_name) = hr.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION) else {
        return false;
    };
    if !hr.suspended {
        return false;
    }
    let sealed = match (
        hr.reconcile_annotations.get(seal::HOLD_ANNOTATION),
        hr.uid.as_deref(),
        hr.generation,
    ) {
        (Some(v), Some(uid), Some(g)) => sealer.verify_hold(&hr.key, uid, owner_name, g, v),
        _ => false,
    };
    if !sealed {
        return false;
    }
    match owner {
        Some(r) if r.trust != Trust::Ours => false,
        Some(r) if r.status.frozen.is_some() => false,
        Some(r) if r.is_open() => {
            let running_rollback = r
                .interrupted()
                .is_some_and(|(a, _)| matches!(a, Some(Action::Rollback { .. })));
            r.status.hold.is_none() && !running_rollback
        }
        _ => true,
    }
}

/// A record fluxmedic would create: a deterministic name per (target, failure start, case,
/// attempt `n`), so a retried create after a lost response meets its own record.
pub fn record_name(key: &ObjectKey, since: i64, case: Case, n: u32) -> String {
    let mut base: String = key.name.chars().take(40).collect();
    base = base.trim_end_matches(['-', '.']).to_string();
    let seed = if n == 0 {
        format!("{key}@{since}#{case}")
    } else {
        format!("{key}@{since}#{case}#{n}")
    };
    format!(
        "{}-{}-{:08x}",
        key.kind.abbrev(),
        base,
        stable_hash(&seed) as u32
    )
}

/// FNV-1a: a stable hash for Remediation names and labels (stable across restarts and builds).
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// What the planner needs of a record that does not exist yet.
pub fn new_incident_view(now: i64) -> IncidentView {
    IncidentView {
        detected_at: now,
        ..Default::default()
    }
}

/// The serialised form of a step's intent, as the create carries it.
pub fn intent_json(step: &Step) -> String {
    serde_json::to_string(step).unwrap_or_default()
}

/// The serialised baseline a create carries with an intent.
pub fn baseline_json(status: &RemediationStatus) -> String {
    serde_json::to_string(&Baseline::of(status)).unwrap_or_default()
}

/// What a record's creation seal covers: its intent and baseline annotations and the sequence
/// number of its creation.
pub fn creation_payload(intent: &str, baseline: &str, sequence: u64) -> String {
    format!("{intent}\n{baseline}\n{sequence}")
}
