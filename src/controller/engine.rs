//! The evaluation pass: snapshot -> diagnose -> plan -> [`incident::next`] -> effects.
//!
//! Every decision is pure (diagnose, plan, the incident lifecycle); this module reads the
//! index and hands the effects the lifecycle returns to the [`executor`], which performs
//! them in order through the API. Helm runs off the pass, as a job per target with a hard
//! timeout.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use tracing::{debug, info, warn};

use super::Context;
use crate::{
    api::{FIELD_MANAGER, Remediation, RemediationPolicy, RemediationPolicyStatus},
    diagnose::{self, Diagnosis, Report, Snapshot},
    error::{Error, Result, Stage},
    executor::{self, Cur, Executor},
    flux::{FluxKind, FluxObject, ObjectKey},
    incident::{self, Record, Trust},
    policy::{self, Action, Policy},
    remedy::fresh_token,
};

pub use crate::incident::stable_hash;

/// A random id for an approval request (64 bits, hex): nobody can write an approval for a
/// request before it exists.
fn fresh_nonce() -> String {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        // No randomness: an id nobody can match rather than a guessable one.
        return String::new();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_s() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// One target to evaluate: its diagnosis (if failing) and its open record (if any).
/// One target's work in a pass, borrowed from the pass (its diagnosis) and the records read
/// for it: nothing is copied per target.
struct Work<'a> {
    key: &'a ObjectKey,
    diagnosis: Option<&'a Diagnosis>,
    record: Option<&'a Record>,
}

/// One evaluation pass over the whole index.
pub async fn pass(ctx: &Arc<Context>) {
    let started = Instant::now();
    let now = now_s();
    let (snap, raw_policies, remediations) = {
        let idx = ctx.index.read().await;
        (
            idx.snapshot(now),
            idx.policies.values().cloned().collect::<Vec<_>>(),
            idx.remediations.clone(),
        )
    };
    let snap = prepare(ctx, snap).await;
    let (policies, policy_updates) = check_policies(ctx, &raw_policies, &snap);
    let report = diagnose::diagnose(&snap);
    report_controllers(ctx, &report);
    // Objects outside the watched namespaces still count as roots, not as failures of ours.
    let breakers = policy::Breakers::new(
        report
            .diagnoses
            .iter()
            .map(|d| d.target.namespace.as_str())
            .filter(|ns| ctx.in_scope(ns)),
        &policies,
        &ctx.opts.namespace,
        ctx.opts.circuit_breaker,
    );
    let failing = report_breakers(ctx, &breakers);
    let records = read_records(ctx, &remediations, now).await;
    let busy = ctx.busy_targets();
    let mut pass = Pass {
        report,
        snap,
        policies,
        breakers,
        pollers: policy::Pollers::new(),
    };
    pass.pollers = incident::pollers(&pass.scene(ctx), records.values().map(|r| &**r));
    let pass = &pass;
    let work = work_of(ctx, &pass.report, &records, &busy);
    let orphans = orphans_of(ctx, &pass.snap, &records, &busy);
    let items = work.len() + orphans.len();
    futures::stream::iter(fair(work))
        .for_each_concurrent(ctx.opts.concurrency, |w| async move {
            if !ctx.backoff_ready(w.key, now) {
                return;
            }
            let key = w.key.clone();
            let res = handle(ctx, pass, w).await;
            settle_backoff(ctx, &key, now, res);
        })
        .await;
    for o in orphans {
        if !ctx.backoff_ready(&o.key, now) {
            continue;
        }
        let res = resume_orphan(ctx, &o).await;
        settle_backoff(ctx, &o.key, now, res);
    }
    gc_history(ctx, &records).await;
    write_policy_statuses(ctx, policy_updates).await;
    ctx.ledger
        .write()
        .await
        .flush(
            &ctx.client,
            &ctx.opts.namespace,
            &ctx.opts.ledger_prefix(),
            &ctx.limiter,
        )
        .await;
    debug!(
        failing,
        items,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "evaluation pass"
    );
    ctx.metrics.passes.inc();
    ctx.metrics
        .pass_duration
        .observe(started.elapsed().as_secs_f64());
}

/// The snapshot as the operator sees it: Secrets' keys fetched where needed, its own settings,
/// its reachability probes.
async fn prepare(ctx: &Arc<Context>, snap: Snapshot) -> Arc<Snapshot> {
    let mut snap = enrich_secrets(ctx, snap).await;
    snap.request_bound = Some(ctx.opts.controller_timeout);
    snap.shard_selector = ctx.opts.watch_label_selector.clone();
    snap.helm_controller = ctx.opts.helm_controller.clone();
    snap.allow_delete_pending_release = ctx.opts.allow_delete_pending_release;
    if ctx.opts.source_probes {
        snap.probes = probe_sources(ctx, &snap);
    }
    Arc::new(snap)
}

/// The Flux controllers' state: a gauge each, and a log line when it changes.
fn report_controllers(ctx: &Context, report: &Report) {
    for c in [
        "source-controller",
        "kustomize-controller",
        "helm-controller",
    ] {
        let down = report.controllers_down.get(c);
        let gauge =
            ctx.metrics
                .flux_controller_down
                .get_or_create(&crate::telemetry::ControllerLabels {
                    controller: c.to_string(),
                });
        if gauge.get() != down.is_some() as i64 {
            match down {
                Some(why) => {
                    warn!(controller = c, reason = %why, "a Flux controller is not working")
                }
                None => info!(controller = c, "the Flux controller handles requests again"),
            }
        }
        gauge.set(down.is_some() as i64);
    }
}

/// The failing targets and the open circuit breakers as metrics; returns how many fail.
fn report_breakers(ctx: &Context, breakers: &policy::Breakers) -> usize {
    let failing: usize = breakers.failing.values().sum();
    ctx.metrics.failing_targets.set(failing as i64);
    ctx.metrics.circuit_breaker_open.clear();
    for ns in breakers.open() {
        ctx.metrics
            .circuit_breaker_open
            .get_or_create(&crate::telemetry::NamespaceLabels {
                namespace: ns.to_string(),
            })
            .set(1);
    }
    failing
}

/// A pass's records by namespace and name, each boxed (a record is about 2 KB before its
/// strings; a table of a thousand is sized in buckets of pointers, not of records).
type Records = HashMap<(String, String), Box<Record>>;

/// Records, read through their seals and the ledger. Foreign ones are left out entirely.
async fn read_records(
    ctx: &Context,
    remediations: &BTreeMap<(String, String), Arc<Remediation>>,
    now: i64,
) -> Records {
    let mut store = ctx.ledger.write().await;
    let present: HashSet<&str> = remediations
        .values()
        .filter_map(|r| r.metadata.uid.as_deref())
        .collect();
    store.keep_only(&present, now);
    let read: Records = remediations
        .iter()
        .filter_map(|(k, r)| {
            Record::read(r, &ctx.sealer, &store.ledger).map(|rec| (k.clone(), Box::new(rec)))
        })
        .filter(|(_, r)| r.trust != Trust::Foreign)
        .collect();
    for r in read.values().filter(|r| r.trust == Trust::Ours) {
        store.seen(r.sequence);
        store.confirm(r);
    }
    read
}

/// This pass's work: every failing target in scope with its open record, then every open
/// record whose target no longer fails (closed when Ready or gone, holds kept). Busy targets
/// (a rollback running) wait for the next pass.
fn work_of<'a>(
    ctx: &Context,
    report: &'a Report,
    records: &'a Records,
    busy: &HashSet<ObjectKey>,
) -> Vec<Work<'a>> {
    let mut open: HashMap<&ObjectKey, &Record> = HashMap::new();
    for r in records.values().filter(|r| r.is_open()) {
        // Two open records for one target cannot come from fluxmedic; keep the newest.
        let newer = open
            .get(&r.target)
            .is_none_or(|o| o.status.detected_at < r.status.detected_at);
        if newer {
            open.insert(&r.target, &**r);
        }
    }
    ctx.metrics.open_incidents.clear();
    for r in open.values() {
        let labels = crate::telemetry::CaseNamespaceLabels {
            case: r.case.to_string(),
            namespace: r.target.namespace.clone(),
        };
        ctx.metrics.open_incidents.get_or_create(&labels).inc();
    }
    let mut work = Vec::with_capacity(report.diagnoses.len() + open.len());
    for d in &report.diagnoses {
        if !ctx.in_scope(&d.target.namespace) || busy.contains(&d.target) {
            continue;
        }
        let record = open.remove(&d.target);
        work.push(Work {
            key: &d.target,
            diagnosis: Some(d),
            record,
        });
    }
    for (key, rec) in open {
        if !busy.contains(key) {
            work.push(Work {
                key,
                diagnosis: None,
                record: Some(rec),
            });
        }
    }
    work
}

/// Suspensions fluxmedic made that no open record holds any more.
fn orphans_of(
    ctx: &Context,
    snap: &Snapshot,
    records: &Records,
    busy: &HashSet<ObjectKey>,
) -> Vec<Arc<FluxObject>> {
    snap.objects
        .values()
        .filter(|o| o.key.kind == FluxKind::HelmRelease && ctx.in_scope(&o.key.namespace))
        .filter(|o| {
            let owner = o
                .reconcile_annotations
                .get(crate::api::SUSPENDED_BY_ANNOTATION)
                .and_then(|n| records.get(&(o.key.namespace.clone(), n.clone())))
                .map(|r| &**r);
            !busy.contains(&o.key) && incident::orphaned_hold(o, owner, &ctx.sealer)
        })
        .cloned()
        .collect()
}

/// The pass's work in turns: each namespace's first target, then each one's second, and so
/// on, so that one namespace with many failures does not hold the others back.
fn fair(work: Vec<Work<'_>>) -> Vec<Work<'_>> {
    in_turns(work, |w| w.key.namespace.clone())
}

/// `items` in turns by `group`: each group's first, then each one's second, and so on (groups
/// in name order, each group's items in their order).
fn in_turns<T>(items: Vec<T>, group: impl Fn(&T) -> String) -> Vec<T> {
    let mut by: BTreeMap<String, std::collections::VecDeque<T>> = BTreeMap::new();
    for item in items {
        by.entry(group(&item)).or_default().push_back(item);
    }
    let mut out = Vec::new();
    while !by.is_empty() {
        by.retain(|_, q| {
            if let Some(item) = q.pop_front() {
                out.push(item);
            }
            !q.is_empty()
        });
    }
    out
}

fn settle_backoff(ctx: &Context, key: &ObjectKey, now: i64, res: Result<()>) {
    match res {
        Ok(()) => ctx.backoff_reset(key),
        Err(e) if matches!(e.cause(), Error::NotLeader(_)) => {}
        Err(e) => {
            ctx.metrics.error(e.category());
            let delay = ctx.backoff_fail(key, now, e.category());
            let step = e.step().map(|s| s.to_string()).unwrap_or_default();
            warn!(target = %key, step, category = e.category(), error = %e, retry_in_s = delay, "remediation step failed");
        }
    }
}

/// Plan one target and have the executor perform what its incident's lifecycle says.
/// What every target of a pass is decided against (see [`incident::Scene`]).
struct Pass {
    report: Report,
    snap: Arc<Snapshot>,
    policies: Vec<Policy>,
    breakers: policy::Breakers,
    pollers: policy::Pollers,
}

impl Pass {
    /// The pass as every target is decided against it ([`incident::pollers`] ignores the
    /// pollers it is given: it names them).
    fn scene<'a>(&'a self, ctx: &'a Context) -> incident::Scene<'a> {
        incident::Scene {
            snap: &self.snap,
            report: &self.report,
            policies: &self.policies,
            operator_namespace: &ctx.opts.namespace,
            breakers: &self.breakers,
            pollers: &self.pollers,
        }
    }
}

async fn handle(ctx: &Arc<Context>, pass: &Pass, w: Work<'_>) -> Result<()> {
    let token = fresh_token();
    let nonce = fresh_nonce();
    let snap = &pass.snap;
    let effects = incident::decide(
        &pass.scene(ctx),
        w.key,
        w.diagnosis,
        w.record,
        &token,
        &nonce,
    );
    if effects.is_empty() {
        return Ok(());
    }
    log_rewrites(&w, &effects);
    let target = executor::Target::of(snap, w.key);
    let cur = w.record.map(|r| Cur {
        name: r.name.clone(),
        case: r.case,
        uid: r.uid.clone(),
    });
    let shard = ctx.opts.shard();
    let exec = Executor {
        port: &**ctx,
        sealer: &ctx.sealer,
        shard: shard.as_deref(),
    };
    let Some(pending) = exec.execute(&target, cur, effects).await? else {
        return Ok(());
    };
    if matches!(pending.action, Action::Rollback { .. }) {
        spawn_rollback(ctx, pending);
        return Ok(());
    }
    exec.run(pending).await
}

/// At debug level: which fields of a stored status a write changes (where write budget goes).
fn log_rewrites(w: &Work<'_>, t: &incident::Transition) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let Some(stored) = w.record.and_then(|r| r.stored.as_ref()) else {
        return;
    };
    let old = serde_json::to_value(stored).unwrap_or_default();
    for e in t.iter() {
        if let incident::Effect::Write(st) = e {
            let new = serde_json::to_value(st).unwrap_or_default();
            let changed: Vec<&str> = new
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| old.get(k.as_str()) != Some(v) && *k != "seal" && *k != "sequence")
                .map(|(k, _)| k.as_str())
                .collect();
            debug!(target = %w.key, ?changed, "status rewritten");
        }
    }
}

/// A rollback runs off the pass: the target is busy until it ends; its outcome is recorded
/// by the job. Shutdown (and a lost Lease) stop it; helm's lock is cleared on the way out.
fn spawn_rollback(ctx: &Arc<Context>, pending: executor::Pending) {
    let key = pending.obj.key.clone();
    let job_ctx = ctx.clone();
    let job_key = key.clone();
    let handle = tokio::spawn(async move {
        let ctx = job_ctx;
        let shard = ctx.opts.shard();
        let exec = Executor {
            port: &*ctx,
            sealer: &ctx.sealer,
            shard: shard.as_deref(),
        };
        let res = exec.run(pending).await;
        settle_backoff(&ctx, &job_key, now_s(), res);
        ctx.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job_key);
        ctx.notify.notify_one();
    });
    // Registered before the pass ends: the next pass sees the target busy. (A job that
    // already ended is dropped by `busy_targets`.)
    ctx.jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, handle);
}

async fn resume_orphan(ctx: &Arc<Context>, o: &FluxObject) -> Result<()> {
    let owner = o
        .reconcile_annotations
        .get(crate::api::SUSPENDED_BY_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    warn!(target = %o.key, owner, "resuming a HelmRelease fluxmedic suspended and no record holds");
    let uid = o.uid.clone().unwrap_or_default();
    if ctx
        .actuator
        .release_hold(&o.key, &uid, &owner)
        .await
        .map_err(Error::at(Stage::ResumeOrphanedHold))?
    {
        ctx.metrics.action("resume-orphan", "succeeded");
    }
    Ok(())
}

/// Most overridden targets listed in a policy's status.
const MAX_OVERRIDDEN: usize = 10;

/// For each policy, the targets it covers where another policy wins (first few, sorted).
fn overridden(ctx: &Context, policies: &[Policy], snap: &Snapshot) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if policies.len() < 2 {
        return out;
    }
    for obj in snap
        .objects
        .values()
        .filter(|o| ctx.in_scope(&o.key.namespace))
    {
        let (winner, losers) = policy::select(policies, obj, &ctx.opts.namespace);
        let Some(winner) = winner else { continue };
        for l in losers {
            let list = out.entry(l.id()).or_default();
            if list.len() < MAX_OVERRIDDEN {
                list.push(format!("{} (policy {} wins)", obj.key, winner.id()));
            }
        }
    }
    out
}

/// A policy status to write: (namespace, name, status).
type PolicyUpdate = (String, String, RemediationPolicyStatus);

/// Validate every policy: the usable ones, and the statuses (its `Valid` condition and the
/// targets another policy wins for) that changed, to be written after the pass's actions.
fn check_policies(
    ctx: &Context,
    raw: &[Arc<RemediationPolicy>],
    snap: &Snapshot,
) -> (Vec<Policy>, Vec<PolicyUpdate>) {
    let checked: Vec<_> = raw
        .iter()
        .map(|p| {
            let policy = Policy::new(
                &p.namespace().unwrap_or_default(),
                &p.name_any(),
                p.spec.clone(),
            )
            .map(|pol| pol.with_approvals(p.annotations()));
            (p, policy)
        })
        .collect();
    let usable: Vec<Policy> = checked
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().cloned())
        .collect();
    let overrides = overridden(ctx, &usable, snap);
    let mut updates = vec![];
    for (p, checked) in checked {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let (valid, reason, message) = match checked {
            Ok(pol) if !pol.spec.targets.namespaces.is_empty() && ns != ctx.opts.namespace => (
                "True",
                "PartiallyIgnored",
                format!(
                    "valid; spec.targets.namespaces is honoured only in the operator's namespace {}",
                    ctx.opts.namespace
                ),
            ),
            Ok(_) => ("True", "Valid", "the policy is in use".to_string()),
            Err(e) => ("False", "Invalid", e.to_string()),
        };
        let current = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        let gen_ = p.metadata.generation;
        let overridden = overrides
            .get(&format!("{ns}/{name}"))
            .cloned()
            .unwrap_or_default();
        let same_overrides = p.status.as_ref().map(|s| &s.overridden) == Some(&overridden);
        if same_overrides
            && current.is_some_and(|c| {
                c.status == valid && c.message == message && c.observed_generation == gen_
            })
        {
            continue;
        }
        let status = RemediationPolicyStatus {
            observed_generation: gen_,
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: valid.into(),
                reason: reason.into(),
                message,
                observed_generation: gen_,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::from_second(snap.now).unwrap_or_default(),
                ),
            }],
            overridden,
        };
        updates.push((ns, name, status));
    }
    (usable, updates)
}

/// Most policy statuses written in one pass: the rest wait for the next one.
const POLICY_STATUSES_PER_PASS: usize = 20;

/// Write changed policy statuses after the pass's actions, on a write budget of their own,
/// in turns across namespaces: a tenant churning policies delays no incident, and takes no
/// other namespace's turn.
async fn write_policy_statuses(ctx: &Context, updates: Vec<PolicyUpdate>) {
    let mut turns = in_turns(updates, |u| u.0.clone());
    turns.truncate(POLICY_STATUSES_PER_PASS);
    for (ns, name, status) in turns {
        if ctx.policy_limiter.acquire().await.is_err() {
            return;
        }
        let api: Api<RemediationPolicy> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "RemediationPolicy", "status": status});
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            warn!(policy = %format!("{ns}/{name}"), error = %e, "cannot write policy status");
        }
    }
}

/// How long a reachability probe of a URL stays valid.
const PROBE_TTL: Duration = Duration::from_secs(60);
/// Most probes running at once.
const PROBES_IN_FLIGHT: usize = 16;

/// What is known about the reachability of the unreachable sources' hosts; probes of the ones
/// not known (or stale) start in the background and wake a pass when they find something new.
fn probe_sources(ctx: &Arc<Context>, snap: &Snapshot) -> HashMap<String, String> {
    let urls = snap.failing_source_urls();
    let (known, start) = ctx.probes.lock().unwrap_or_else(|e| e.into_inner()).plan(
        &urls,
        Instant::now(),
        PROBE_TTL,
        PROBES_IN_FLIGHT,
    );
    for url in start {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let found = super::probe::probe(&url).await;
            let changed = ctx.probes.lock().unwrap_or_else(|e| e.into_inner()).done(
                url,
                found,
                Instant::now(),
            );
            if changed {
                ctx.notify.notify_one();
            }
        });
    }
    known
}

/// Fetch key names of Secrets referenced by failing Git sources (values are not kept).
async fn enrich_secrets(ctx: &Arc<Context>, mut snap: Snapshot) -> Snapshot {
    for (ns, name) in snap.uninspected_source_secrets() {
        if !ctx.in_scope(&ns) {
            continue;
        }
        match ctx.actuator.secret_info(&ns, &name).await {
            Ok(Some(info)) => {
                snap.secrets
                    .insert((ns.clone(), name.clone()), info.clone());
                ctx.index.write().await.secret_keys.insert((ns, name), info);
            }
            Ok(None) => {
                snap.secrets.remove(&(ns, name));
            }
            Err(e) => {
                warn!(secret = %format!("{ns}/{name}"), error = %e, "cannot read Secret key names")
            }
        }
    }
    snap
}

/// Keep at most `history_limit` closed records per target (fluxmedic's own only).
async fn gc_history(ctx: &Arc<Context>, records: &Records) {
    let mut by_target: HashMap<&ObjectKey, Vec<&Record>> = HashMap::new();
    for r in records.values() {
        if r.trust == Trust::Ours && !r.is_open() {
            by_target.entry(&r.target).or_default().push(r);
        }
    }
    let busy: HashSet<ObjectKey> = ctx.busy_targets();
    for (target, mut closed) in by_target {
        if closed.len() <= ctx.opts.history_limit || busy.contains(target) {
            continue;
        }
        closed.sort_by_key(|r| std::cmp::Reverse(r.status.closed_at.clone()));
        for r in closed.into_iter().skip(ctx.opts.history_limit) {
            let api: Api<Remediation> = Api::namespaced(ctx.client.clone(), &r.namespace);
            if ctx.limiter.acquire().await.is_err() {
                return;
            }
            match api.delete(&r.name, &DeleteParams::default()).await {
                Ok(_) => info!(remediation = %r.name, "garbage-collected old Remediation"),
                Err(e) => {
                    warn!(remediation = %r.name, error = %e, "cannot garbage-collect Remediation")
                }
            }
        }
    }
}

/// How long shutdown waits for running Helm jobs before stopping them.
pub const JOB_GRACE: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(FluxKind::Kustomization, ns, name)
    }

    fn work(key: &ObjectKey) -> Work<'_> {
        Work {
            key,
            diagnosis: None,
            record: None,
        }
    }

    #[test]
    fn a_pass_takes_targets_in_turns_across_namespaces() {
        let mut keys: Vec<ObjectKey> = (0..5).map(|i| key("busy", &format!("a{i}"))).collect();
        keys.push(key("quiet", "b0"));
        keys.push(key("other", "c0"));
        let w: Vec<Work> = keys.iter().map(work).collect();
        let order: Vec<String> = fair(w).into_iter().map(|w| w.key.to_string()).collect();
        // Each namespace's first target comes before any namespace's second.
        assert_eq!(
            &order[..3],
            &[
                "Kustomization/busy/a0",
                "Kustomization/other/c0",
                "Kustomization/quiet/b0"
            ]
        );
        assert_eq!(order.len(), 7, "nothing dropped");
        assert_eq!(
            order[3..],
            [
                "Kustomization/busy/a1",
                "Kustomization/busy/a2",
                "Kustomization/busy/a3",
                "Kustomization/busy/a4"
            ]
        );
    }
}
