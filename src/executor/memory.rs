//! An in-memory API server for the executor: records, the Flux objects actions write, the
//! ledger, and every call made, so a test asserts what was written and in which order.
//! Writes can be made to fail (one kind, or everything from the n-th write on: a crash).

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use super::{Announcement, Port};
use crate::{
    api::{HOLD_ANNOTATION, OPEN_LABEL, Remediation, RemediationStatus, SUSPENDED_BY_ANNOTATION},
    error::{Error, Result},
    flux::{FluxObject, ObjectKey},
    incident::{Count, Ledger},
    limiter::NotLeader,
    policy::ReleaseRef,
    remedy::{FORCE_AT, REQUESTED_AT, RESET_AT, UnlockOutcome},
};

/// One request the executor made (writes only; reads are not recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Create(String),
    Status(String),
    LabelClosed(String),
    Reconcile {
        key: ObjectKey,
        token: String,
        force: bool,
    },
    Suspend {
        key: ObjectKey,
        owner: String,
    },
    ReleaseHold {
        key: ObjectKey,
        owner: String,
    },
    Rollback {
        release: String,
        to: i64,
    },
    Unlock {
        secret: String,
        delete: bool,
    },
}

/// Which calls fail: by kind, or every write from the `crash_after`-th on.
#[derive(Default)]
pub struct Faults {
    /// Calls matching this fail with a 500 (the API server refusing).
    pub fail: Option<fn(&Call) -> bool>,
    /// After this many writes every request fails as a process that stopped would: nothing
    /// more is written (the error is the lost Lease's, which writes nothing either).
    pub crash_after: Option<usize>,
}

#[derive(Default)]
pub struct State {
    /// Records as the API server holds them, by (namespace, name).
    pub records: BTreeMap<(String, String), Remediation>,
    /// The Flux objects actions write to.
    pub objects: BTreeMap<ObjectKey, FluxObject>,
    pub ledger: Ledger,
    pub sequence: u64,
    /// Every write request, in order, including refused ones (`refused` tells).
    pub calls: Vec<(Call, bool)>,
    /// Event reasons, in order, with the record they named.
    pub events: Vec<(String, Option<String>)>,
    pub counts: Vec<(String, Count)>,
    pub faults: Faults,
    /// The clock (seconds).
    pub now: i64,
    pub next_uid: u64,
    /// Writes admitted so far.
    pub writes: usize,
}

impl State {
    /// The write requests that went through, in order.
    pub fn done(&self) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(c, _)| c)
            .collect()
    }

    pub fn record(&self, ns: &str, name: &str) -> Option<&Remediation> {
        self.records.get(&(ns.to_string(), name.to_string()))
    }
}

#[derive(Default)]
pub struct Memory(Mutex<State>);

impl Memory {
    pub fn new(state: State) -> Self {
        Memory(Mutex::new(state))
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit one write: refused when crashed or when its kind is made to fail.
    fn admit(&self, call: Call) -> Result<MutexGuard<'_, State>> {
        let mut s = self.state();
        let crashed = s.faults.crash_after.is_some_and(|n| s.writes >= n);
        if crashed {
            s.calls.push((call, false));
            return Err(Error::NotLeader(NotLeader));
        }
        if s.faults.fail.is_some_and(|f| f(&call)) {
            s.calls.push((call, false));
            return Err(api_error(500, "InternalError"));
        }
        s.writes += 1;
        s.calls.push((call, true));
        Ok(s)
    }
}

/// The last admitted request failed a precondition: it did not go through.
fn refused(s: &mut State, code: u16, reason: &str) -> Error {
    if let Some(last) = s.calls.last_mut() {
        last.1 = false;
    }
    api_error(code, reason)
}

fn api_error(code: u16, reason: &str) -> Error {
    Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
        code,
        reason: reason.into(),
        message: format!("injected: {reason}"),
        ..Default::default()
    })))
}

fn bump(o: &mut FluxObject) {
    o.generation = Some(o.generation.unwrap_or(0) + 1);
    let rv: u64 = o
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    o.resource_version = Some((rv + 1).to_string());
}

impl Port for Memory {
    async fn record_exists(&self, ns: &str, name: &str) -> bool {
        self.state().record(ns, name).is_some()
    }

    async fn next_sequence(&self) -> u64 {
        let mut s = self.state();
        s.sequence += 1;
        s.sequence
    }

    async fn note(&self, uid: &str, sequence: u64, closed: bool) {
        self.state().ledger.note(uid, sequence, closed);
    }

    async fn create(&self, mut rem: Remediation) -> Result<Remediation> {
        let name = rem.metadata.name.clone().unwrap_or_default();
        let ns = rem.metadata.namespace.clone().unwrap_or_default();
        let mut s = self.admit(Call::Create(name.clone()))?;
        if s.record(&ns, &name).is_some() {
            return Err(refused(&mut s, 409, "AlreadyExists"));
        }
        s.next_uid += 1;
        rem.metadata.uid = Some(format!("uid-{name}-{}", s.next_uid));
        s.records.insert((ns, name), rem.clone());
        Ok(rem)
    }

    async fn apply_status(
        &self,
        ns: &str,
        name: &str,
        status: &RemediationStatus,
    ) -> Result<Remediation> {
        let mut s = self.admit(Call::Status(name.to_string()))?;
        let Some(r) = s.records.get_mut(&(ns.to_string(), name.to_string())) else {
            return Err(refused(&mut s, 404, "NotFound"));
        };
        r.status = Some(status.clone());
        Ok(r.clone())
    }

    async fn label_closed(&self, ns: &str, name: &str) -> Result<()> {
        let mut s = self.admit(Call::LabelClosed(name.to_string()))?;
        let Some(r) = s.records.get_mut(&(ns.to_string(), name.to_string())) else {
            return Err(refused(&mut s, 404, "NotFound"));
        };
        r.metadata
            .labels
            .get_or_insert_default()
            .insert(OPEN_LABEL.into(), "false".into());
        Ok(())
    }

    async fn request_reconcile(
        &self,
        key: &ObjectKey,
        token: &str,
        reset: bool,
        force: bool,
    ) -> Result<()> {
        let call = Call::Reconcile {
            key: key.clone(),
            token: token.into(),
            force,
        };
        let mut s = self.admit(call)?;
        let Some(o) = s.objects.get_mut(key) else {
            return Err(refused(&mut s, 404, "NotFound"));
        };
        let a = &mut o.reconcile_annotations;
        a.insert(REQUESTED_AT.into(), token.into());
        if reset {
            a.insert(RESET_AT.into(), token.into());
        }
        if force {
            a.insert(FORCE_AT.into(), token.into());
        }
        Ok(())
    }

    async fn suspend(
        &self,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
        owner: &str,
        hold: &str,
    ) -> Result<Option<i64>> {
        if resource_version.is_empty() {
            // Refused before any request, as the operator's port does.
            return Err(Error::Unversioned(key.clone()));
        }
        let call = Call::Suspend {
            key: key.clone(),
            owner: owner.into(),
        };
        let mut s = self.admit(call)?;
        let Some(o) = s.objects.get_mut(key) else {
            return Err(refused(&mut s, 404, "NotFound"));
        };
        // The patch's preconditions, as the API server checks them.
        if o.uid.as_deref() != Some(uid) || o.resource_version.as_deref() != Some(resource_version)
        {
            return Err(refused(&mut s, 409, "Conflict"));
        }
        o.suspended = true;
        let a = &mut o.reconcile_annotations;
        a.insert(SUSPENDED_BY_ANNOTATION.into(), owner.into());
        a.insert(HOLD_ANNOTATION.into(), hold.into());
        bump(o);
        Ok(o.generation)
    }

    async fn release_hold(&self, key: &ObjectKey, uid: &str, owner: &str) -> Result<bool> {
        let call = Call::ReleaseHold {
            key: key.clone(),
            owner: owner.into(),
        };
        let mut s = self.admit(call)?;
        // The JSON patch of a gone object: 404, as the API server answers.
        let Some(o) = s.objects.get_mut(key) else {
            return Err(refused(&mut s, 404, "NotFound"));
        };
        let ours = o.uid.as_deref() == Some(uid)
            && o.suspended
            && o.reconcile_annotations.get(SUSPENDED_BY_ANNOTATION) == Some(&owner.to_string());
        if ours {
            o.suspended = false;
            o.reconcile_annotations.remove(SUSPENDED_BY_ANNOTATION);
            o.reconcile_annotations.remove(HOLD_ANNOTATION);
            bump(o);
        }
        Ok(ours)
    }

    async fn helm_rollback(
        &self,
        release: &ReleaseRef,
        to_version: i64,
        _timeout: Duration,
    ) -> Result<String> {
        let call = Call::Rollback {
            release: release.name.clone(),
            to: to_version,
        };
        drop(self.admit(call)?);
        Ok(format!("rolled {} back to {to_version}", release.name))
    }

    async fn unlock(
        &self,
        _ns: &str,
        secret: &str,
        delete: bool,
        _release: &ReleaseRef,
    ) -> Result<UnlockOutcome> {
        let call = Call::Unlock {
            secret: secret.into(),
            delete,
        };
        drop(self.admit(call)?);
        Ok(if delete {
            UnlockOutcome::Deleted
        } else {
            UnlockOutcome::Unlocked {
                previous: "pending-upgrade".into(),
            }
        })
    }

    fn now(&self) -> i64 {
        self.state().now
    }

    fn announce(&self, a: Announcement<'_>) {
        let mut s = self.state();
        s.events
            .push((a.reason.to_string(), a.record.map(String::from)));
    }

    fn count(&self, ns: &str, c: Count) {
        self.state().counts.push((ns.to_string(), c));
    }

    fn crash_point(&self, _point: &str) -> Result<()> {
        Ok(())
    }
}
