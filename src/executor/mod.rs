//! The executor: performs an incident's transition, in order, through a [`Port`] — the
//! small part of the Kubernetes API fluxmedic writes through. It decides nothing: every
//! effect says what to write, and the action a transition ends with (last by its type) is
//! handed back as a [`Pending`] step for the caller to run now or off the pass.
//!
//! The port has two implementations: the operator's (kube, in `controller`) and
//! [`memory::Memory`], an in-memory API server the unit and property tests drive the same
//! code through.

pub mod memory;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use kube::api::ObjectMeta;

use crate::{
    api::{
        BASELINE_ANNOTATION, INTENT_ANNOTATION, OPEN_LABEL, Remediation, RemediationSpec,
        RemediationStatus, SEAL_ANNOTATION, SEQUENCE_ANNOTATION, Step, TARGET_LABEL, TargetRef,
    },
    diagnose::{Case, Snapshot},
    error::{Error, Result, Stage},
    flux::{FluxObject, ObjectKey},
    incident::{
        self, Act, Count, Effect, Facts, IntentAt, Outcome, Regarding, Transition,
        seal::{RecordId, Sealer},
    },
    policy::{Action, ReleaseRef},
    remedy::UnlockOutcome,
};

/// What the executor writes through. Each method is one API request (or one helm run);
/// the kube implementation adds the write budget and the Lease check.
pub trait Port: Sync {
    /// Whether a Remediation of that name is known (the index, or the store).
    fn record_exists(&self, ns: &str, name: &str) -> impl Future<Output = bool> + Send;
    /// A sequence number never handed out before.
    fn next_sequence(&self) -> impl Future<Output = u64> + Send;
    /// The executor sealed `sequence` on record `uid`.
    fn note(&self, uid: &str, sequence: u64, closed: bool) -> impl Future<Output = ()> + Send;
    fn create(&self, rem: Remediation) -> impl Future<Output = Result<Remediation>> + Send;
    /// Server-side apply of a record's status.
    fn apply_status(
        &self,
        ns: &str,
        name: &str,
        status: &RemediationStatus,
    ) -> impl Future<Output = Result<Remediation>> + Send;
    fn label_closed(&self, ns: &str, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn request_reconcile(
        &self,
        key: &ObjectKey,
        token: &str,
        reset: bool,
        force: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Suspend on behalf of record `owner` with the sealed `hold`; the generation after it.
    fn suspend(
        &self,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
        owner: &str,
        hold: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;
    /// Resume if it still carries `owner`'s suspension; false when it did not.
    fn release_hold(
        &self,
        key: &ObjectKey,
        uid: &str,
        owner: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    fn helm_rollback(
        &self,
        release: &ReleaseRef,
        to_version: i64,
        timeout: Duration,
    ) -> impl Future<Output = Result<String>> + Send;
    fn unlock(
        &self,
        ns: &str,
        secret: &str,
        delete: bool,
        release: &ReleaseRef,
    ) -> impl Future<Output = Result<UnlockOutcome>> + Send;
    /// Queue an Event (never awaited).
    fn announce(&self, a: Announcement<'_>);
    fn count(&self, ns: &str, c: Count);
    /// The clock (seconds), read when an action's outcome is recorded.
    fn now(&self) -> i64;
    /// A point between two effects where the crash tests stop the process.
    fn crash_point(&self, point: &str) -> Result<()>;
}

/// One Event: about the target (or the record once the target is gone), naming the record.
pub struct Announcement<'a> {
    pub key: &'a ObjectKey,
    pub target: Option<&'a FluxObject>,
    /// The record's name, when there is one.
    pub record: Option<&'a str>,
    pub regarding: Regarding,
    pub warning: bool,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
}

/// What the executor needs besides the port.
pub struct Executor<'a, P> {
    pub port: &'a P,
    pub sealer: &'a Sealer,
    /// The shard label value records carry, if sharded.
    pub shard: Option<&'a str>,
}

/// The record the effects are about: the target's open one, or the one an Open created.
#[derive(Clone, Debug)]
pub struct Cur {
    pub name: String,
    pub case: Case,
    /// The record object's uid: every status seal is bound to it.
    pub uid: String,
}

/// The target the effects are about, as the decision saw it.
pub struct Target {
    pub key: ObjectKey,
    pub obj: Option<Arc<FluxObject>>,
    /// When it started failing (names a new record).
    pub since: i64,
    /// What the snapshot says, folded into the record with the action's outcome.
    pub facts: Facts,
}

impl Target {
    /// `key` as `snap` shows it.
    pub fn of(snap: &Snapshot, key: &ObjectKey) -> Target {
        let obj = snap.objects.get(key).cloned();
        let facts = obj
            .as_deref()
            .map(|o| Facts::of(snap, o))
            .unwrap_or_default();
        let since = obj
            .as_deref()
            .and_then(|o| o.failing_since())
            .map(|t| t.as_second())
            .unwrap_or(snap.now);
        Target {
            key: key.clone(),
            obj,
            since,
            facts,
        }
    }
}

/// The action an effect list ends with, its intent already recorded: run it with
/// [`Executor::run`] (at once, or off the pass for a Helm rollback).
pub struct Pending {
    pub obj: Arc<FluxObject>,
    pub cur: Cur,
    pub action: Action,
    pub token: String,
    pub status: RemediationStatus,
    pub facts: Facts,
    /// Folded into a successful outcome ([`incident::Act::waiting`]).
    pub waiting: Option<incident::Waiting>,
}

fn need(cur: &Option<Cur>) -> Result<&Cur> {
    cur.as_ref().ok_or(Error::NoRecord)
}

impl<P: Port> Executor<'_, P> {
    /// Perform a transition's effects in order, then record its action's intent and hand
    /// the action back for the caller to [`run`](Self::run).
    pub async fn execute(
        &self,
        t: &Target,
        mut cur: Option<Cur>,
        transition: Transition,
    ) -> Result<Option<Pending>> {
        for effect in transition.effects {
            self.one(t, &mut cur, effect).await?;
        }
        match transition.action {
            Some(act) => self.begin(t, need(&cur)?.clone(), act).await.map(Some),
            None => Ok(None),
        }
    }

    async fn one(&self, t: &Target, cur: &mut Option<Cur>, effect: Effect) -> Result<()> {
        let key = &t.key;
        match effect {
            Effect::Open {
                case,
                status,
                intent,
            } => {
                let (name, uid) = self
                    .create_record(key, case, t.since, intent.as_ref(), &status)
                    .await
                    .map_err(Error::at(Stage::CreateRecord))?;
                tracing::info!(target = %key, case = %case, remediation = %name, "incident detected");
                *cur = Some(Cur { name, case, uid });
                if intent.is_none() {
                    self.write_status(key, need(cur)?, &status)
                        .await
                        .map_err(Error::at(Stage::WriteRecord))?;
                }
            }
            Effect::Write(status) => {
                self.write_status(key, need(cur)?, &status)
                    .await
                    .map_err(Error::at(Stage::WriteRecord))?;
            }
            Effect::Close(status) => {
                let c = need(cur)?;
                self.port
                    .label_closed(&key.namespace, &c.name)
                    .await
                    .map_err(Error::at(Stage::CloseRecord))?;
                self.write_status(key, c, &status)
                    .await
                    .map_err(Error::at(Stage::CloseRecord))?;
                tracing::info!(target = %key, phase = ?status.phase, "incident closed");
            }
            Effect::ReleaseHold => {
                let c = need(cur)?;
                if let Some(o) = &t.obj {
                    let uid = o.uid.clone().unwrap_or_default();
                    self.port
                        .release_hold(key, &uid, &c.name)
                        .await
                        .map_err(Error::at(Stage::ReleaseHold))?;
                }
            }
            Effect::Event {
                regarding,
                warning,
                reason,
                action,
                note,
            } => self.port.announce(Announcement {
                key,
                target: t.obj.as_deref(),
                record: cur.as_ref().map(|c| c.name.as_str()),
                regarding,
                warning,
                reason,
                action,
                note,
            }),
            Effect::Count(c) => self.port.count(&key.namespace, c),
        }
        Ok(())
    }

    /// Record the intent of an action (unless already recorded) and hand it back.
    async fn begin(&self, t: &Target, cur: Cur, act: Act) -> Result<Pending> {
        let Act {
            action,
            token,
            status,
            intent,
            waiting,
        } = act;
        if intent == IntentAt::Status {
            self.write_status(&t.key, &cur, &status)
                .await
                .map_err(Error::at(Stage::WriteRecord))?;
        }
        if intent != IntentAt::Recorded {
            self.port
                .crash_point(&format!("{}:after-intent", action.name()))?;
        } else {
            tracing::info!(target = %t.key, action = %action, "finishing a step interrupted by a restart");
        }
        let Some(obj) = t.obj.clone() else {
            return Err(Error::at(Stage::Act(action.name()))(Error::TargetGone(
                t.key.clone(),
            )));
        };
        Ok(Pending {
            obj,
            cur,
            action,
            token,
            status: *status,
            facts: t.facts.clone(),
            waiting: waiting.map(|w| *w),
        })
    }

    /// Perform a pending action, then record its outcome (one write) and announce it.
    pub async fn run(&self, p: Pending) -> Result<()> {
        let result = self.perform(&p).await;
        self.port
            .crash_point(&format!("{}:after-act", p.action.name()))?;
        self.record_outcome(p, result).await
    }

    async fn record_outcome(&self, p: Pending, result: Result<Done>) -> Result<()> {
        if let Err(Error::NotLeader(_)) = &result {
            // No longer the leader: the new one finishes the step from its recorded intent.
            return result.map(|_| ());
        }
        let outcome = match &result {
            Ok(done) => Outcome::Done {
                message: done.message.clone(),
                generation: done.generation,
            },
            Err(e) => Outcome::Failed {
                message: e.to_string(),
                category: e.category(),
            },
        };
        let key = &p.obj.key;
        let now = self.port.now();
        let settled =
            incident::settle_waiting(p.status, &p.action, &outcome, &p.facts, now, p.waiting);
        for effect in settled {
            match effect {
                Effect::Write(status) => {
                    if let Err(write) = self.write_status(key, &p.cur, &status).await {
                        // The outcome did not reach the status: the step stays Running there
                        // and is finished again with its token. An action error still counts.
                        if let Err(e) = &result {
                            self.port.count(&key.namespace, Count::Error(e.category()));
                        }
                        return Err(Error::at(Stage::RecordOutcome)(write));
                    }
                }
                Effect::Count(c) => self.port.count(&key.namespace, c),
                Effect::Event {
                    regarding,
                    warning,
                    reason,
                    action,
                    note,
                } => self.port.announce(Announcement {
                    key,
                    target: Some(&p.obj),
                    record: Some(&p.cur.name),
                    regarding,
                    warning,
                    reason,
                    action,
                    note,
                }),
                other => return Err(Error::UnexpectedEffect(effect_name(&other))),
            }
        }
        result
            .map(|_| ())
            .map_err(Error::at(Stage::Act(p.action.name())))
    }

    async fn perform(&self, p: &Pending) -> Result<Done> {
        let a = self.port;
        let key = &p.obj.key;
        let token = p.token.as_str();
        match &p.action {
            Action::Reconcile => {
                a.request_reconcile(key, token, false, false).await?;
                Ok(format!("requested reconcile of {key}").into())
            }
            Action::ReconcileSource { source } => {
                a.request_reconcile(source, token, false, false).await?;
                Ok(format!("requested reconcile of {source}").into())
            }
            Action::ReconcileSourceAndConsumers { source, consumers } => {
                a.request_reconcile(source, token, false, false).await?;
                a.crash_point("reconcile-source-and-consumers:after-source")?;
                for c in consumers {
                    a.request_reconcile(c, token, false, false).await?;
                }
                Ok(format!(
                    "requested reconcile of {source} and {} consumer(s)",
                    consumers.len()
                )
                .into())
            }
            Action::RetryRelease { with_source } => {
                if let Some(s) = with_source {
                    a.request_reconcile(s, token, false, false).await?;
                }
                a.request_reconcile(key, token, true, true).await?;
                Ok(
                    format!("requested retry of {key} (requestedAt+resetAt+forceAt={token})")
                        .into(),
                )
            }
            Action::Rollback {
                to_version,
                release,
            } => self.rollback(p, release, *to_version).await,
            Action::Resume => {
                let uid = p.obj.uid.clone().unwrap_or_default();
                let resumed = a.release_hold(key, &uid, &p.cur.name).await?;
                Ok(if resumed {
                    format!("resumed {key}: the fix landed")
                } else {
                    format!("{key} was already resumed by someone else")
                }
                .into())
            }
            Action::UnlockRelease {
                namespace,
                secret,
                delete,
                release,
                ..
            } => {
                let outcome = a.unlock(namespace, secret, *delete, release).await?;
                a.crash_point(&format!("{}:after-unlock", p.action.name()))?;
                a.request_reconcile(key, token, false, false).await?;
                Ok(Done::from(unlocked(namespace, secret, outcome)))
            }
        }
    }

    /// Suspend (unless this step already did, before a restart), roll back, keep suspended.
    /// A failed rollback never leaves the HelmRelease suspended.
    async fn rollback(&self, p: &Pending, release: &ReleaseRef, to_version: i64) -> Result<Done> {
        let (a, obj) = (self.port, &*p.obj);
        let key = &obj.key;
        let h = obj
            .helm
            .as_ref()
            .ok_or_else(|| Error::NotHelmRelease(key.clone()))?;
        let uid = obj.uid.clone().unwrap_or_default();
        let ours = obj.suspended
            && obj
                .reconcile_annotations
                .get(crate::api::SUSPENDED_BY_ANNOTATION)
                == Some(&p.cur.name);
        let generation = if ours {
            obj.generation
        } else {
            let next_gen = obj.generation.unwrap_or(0).saturating_add(1);
            let hold = self.sealer.seal_hold(key, &uid, &p.cur.name, next_gen);
            let rv = obj.resource_version.as_deref().unwrap_or_default();
            a.suspend(key, &uid, rv, &p.cur.name, &hold).await?
        };
        a.crash_point("rollback:after-suspend")?;
        match a.helm_rollback(release, to_version, h.timeout).await {
            Ok(msg) => Ok(Done {
                message: format!("suspended {key}; {msg}; stays suspended until the fix lands"),
                generation,
            }),
            Err(e) => {
                if let Err(undo) = a.release_hold(key, &uid, &p.cur.name).await {
                    tracing::warn!(target = %key, error = %undo, "cannot resume after a failed rollback; the next pass resumes it");
                }
                Err(e)
            }
        }
    }

    /// Seal and write a record's status.
    async fn write_status(
        &self,
        key: &ObjectKey,
        cur: &Cur,
        status: &RemediationStatus,
    ) -> Result<Remediation> {
        let mut status = status.clone();
        status.sequence = self.port.next_sequence().await;
        status.seal = Some(self.sealer.seal_status(
            RecordId {
                namespace: &key.namespace,
                name: &cur.name,
                target: key,
                case: cur.case,
            },
            &cur.uid,
            &status,
        ));
        let out = self
            .port
            .apply_status(&key.namespace, &cur.name, &status)
            .await?;
        self.port
            .note(&cur.uid, status.sequence, !status.phase.is_open())
            .await;
        Ok(out)
    }

    /// Create a new incident's record, sealed, under the first free deterministic name (a
    /// name held by a closed record, or by a record that is not fluxmedic's, is never
    /// reused, so a closed record is never reopened). `intent` is its first step when an
    /// action follows at once.
    async fn create_record(
        &self,
        key: &ObjectKey,
        case: Case,
        since: i64,
        intent: Option<&Step>,
        status: &RemediationStatus,
    ) -> Result<(String, String)> {
        let intent_json = intent.map(incident::intent_json).unwrap_or_default();
        let baseline = match intent {
            Some(_) => incident::baseline_json(status),
            None => String::new(),
        };
        for n in 0..16 {
            let name = incident::record_name(key, since, case, n);
            if self.port.record_exists(&key.namespace, &name).await {
                continue;
            }
            let sequence = self.port.next_sequence().await;
            let id = RecordId {
                namespace: &key.namespace,
                name: &name,
                target: key,
                case,
            };
            let payload = incident::creation_payload(&intent_json, &baseline, sequence);
            let mut annotations = BTreeMap::from([
                (
                    SEAL_ANNOTATION.to_string(),
                    self.sealer.seal_creation(id, &payload),
                ),
                (SEQUENCE_ANNOTATION.to_string(), sequence.to_string()),
            ]);
            if intent.is_some() {
                annotations.insert(INTENT_ANNOTATION.into(), intent_json.clone());
                annotations.insert(BASELINE_ANNOTATION.into(), baseline.clone());
            }
            let rem = self.new_record(key, &name, case, annotations);
            let created = self.port.create(rem).await?;
            let uid = created.metadata.uid.clone().unwrap_or_default();
            self.port.note(&uid, sequence, false).await;
            return Ok((name, uid));
        }
        Err(Error::NoFreeName(key.clone()))
    }

    fn new_record(
        &self,
        key: &ObjectKey,
        name: &str,
        case: Case,
        annotations: BTreeMap<String, String>,
    ) -> Remediation {
        let mut labels = BTreeMap::from([
            (TARGET_LABEL.to_string(), target_label(key)),
            (OPEN_LABEL.to_string(), "true".to_string()),
            ("fluxmedic.io/case".to_string(), case.to_string()),
        ]);
        if let Some(shard) = self.shard {
            labels.insert(crate::api::SHARD_LABEL.to_string(), shard.to_string());
        }
        Remediation {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(key.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: RemediationSpec {
                target: TargetRef::from_key(key),
                target_name: format!("{}/{}", key.kind, key.name),
                case,
            },
            status: None,
        }
    }
}

/// The label naming a record's target (a hash: any name fits a label value).
pub fn target_label(key: &ObjectKey) -> String {
    format!("{:016x}", incident::stable_hash(&key.to_string()))
}

fn unlocked(namespace: &str, secret: &str, outcome: UnlockOutcome) -> String {
    match outcome {
        UnlockOutcome::Unlocked { previous } => {
            format!("marked {namespace}/{secret} failed (was {previous}); requested reconcile")
        }
        UnlockOutcome::Deleted => {
            format!("deleted stale {namespace}/{secret}; requested reconcile")
        }
        UnlockOutcome::AlreadyUnlocked { status } => {
            format!("{namespace}/{secret} was already {status}; requested reconcile")
        }
        UnlockOutcome::Gone => format!("{namespace}/{secret} is gone; requested reconcile"),
    }
}

fn effect_name(e: &Effect) -> &'static str {
    match e {
        Effect::Open { .. } => "open",
        Effect::Write(_) => "write",
        Effect::ReleaseHold => "release-hold",
        Effect::Close(_) => "close",
        Effect::Event { .. } => "event",
        Effect::Count(_) => "count",
    }
}

/// What a performed action reports: the message for the record and, for a suspend, the
/// HelmRelease's generation after it (from the patch response, so no `get` is needed).
struct Done {
    message: String,
    generation: Option<i64>,
}

impl From<String> for Done {
    fn from(message: String) -> Self {
        Done {
            message,
            generation: None,
        }
    }
}
