//! A record's conditions, as Kubernetes tools read them (kstatus, `kubectl wait`, Flux health
//! checks, UIs): derived from the rest of the status every time fluxmedic writes it.
//!
//! - `Ready`: True once the incident is closed (the target recovered, with or without an
//!   action); False while it is open, with the phase as reason and what holds it as message.
//! - `Stalled`: True while an open incident needs a person (attempts used up, escalated, or
//!   the record frozen); absent otherwise. kstatus reads it as Failed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{Effect, bounded_message};
use crate::api::{Phase, RemediationStatus};

pub const READY: &str = "Ready";
pub const STALLED: &str = "Stalled";

/// Set the conditions of every status among `effects` for the moment `now`.
pub fn present_all(effects: &mut [Effect], now: i64) {
    for e in effects {
        match e {
            Effect::Open { status, .. } | Effect::Write(status) | Effect::Close(status) => {
                present(status, now)
            }
            Effect::ReleaseHold | Effect::Event { .. } | Effect::Count(_) => {}
        }
    }
}

/// Set `status.conditions` from the rest of the status. A condition's transition time moves
/// only when its status does, so a status that did not change stays byte for byte the same.
pub fn present(status: &mut RemediationStatus, now: i64) {
    let generation = status.observed_generation;
    let (ready, reason, message) = ready(status);
    set(
        &mut status.conditions,
        READY,
        ready,
        reason,
        message,
        generation,
        now,
    );
    match stalled(status) {
        Some(message) => set(
            &mut status.conditions,
            STALLED,
            true,
            reason,
            message,
            generation,
            now,
        ),
        None => status.conditions.retain(|c| c.type_ != STALLED),
    }
}

fn ready(s: &RemediationStatus) -> (bool, &'static str, String) {
    let closed = !s.phase.is_open();
    let reason = match s.phase {
        _ if s.frozen.is_some() && !closed => "Frozen",
        _ if s.approval.as_ref().is_some_and(|a| a.rejected) && !closed => "Rejected",
        Phase::Detected => "Detected",
        Phase::AwaitingApproval => "AwaitingApproval",
        Phase::Remediating => "Remediating",
        Phase::AwaitingFix => "AwaitingFix",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
        Phase::Escalated => "Escalated",
        Phase::Resolved => "Resolved",
    };
    let summary = s.diagnosis.as_ref().map(|d| d.summary.clone());
    let message = match closed {
        true => s.message.clone(),
        false => s.frozen.clone().or(s.blocked.clone()).or(s.message.clone()),
    };
    let message = message.or(summary).unwrap_or_else(|| reason.to_string());
    (closed, reason, bounded_message(&message))
}

fn stalled(s: &RemediationStatus) -> Option<String> {
    if !s.phase.is_open() {
        return None;
    }
    let why = match s.phase {
        _ if s.frozen.is_some() => "the record was changed outside fluxmedic; a person decides",
        Phase::Failed => "attempts used up; a person is needed",
        Phase::Escalated => "open longer than the policy allows; a person is needed",
        _ => return None,
    };
    Some(why.to_string())
}

fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: i64,
) {
    let status = if status { "True" } else { "False" };
    let since = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone());
    let at = || Time(jiff::Timestamp::from_second(now.max(0)).unwrap_or_default());
    let c = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since.unwrap_or_else(at),
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(old) => *old = c,
        None => conditions.push(c),
    }
}
