//! `fluxmedic run`: watches feed the index; a debounced evaluation pass diagnoses the
//! snapshot, plans under the policies and acts with bounded concurrency.

pub mod discovery;
pub mod engine;
pub mod events;
pub mod index;
pub mod leader;
pub mod ledger;
use crate::limiter;
pub mod notify;
mod port;
pub mod probe;
pub mod uninstall;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use kube::{
    Api, Client,
    runtime::events::{Recorder, Reporter},
};
use tokio::sync::{Mutex, Notify, RwLock};
use tracing::{info, warn};

use crate::{
    api::{Remediation, RemediationPolicy},
    flux::ObjectKey,
    incident::seal::Sealer,
    remedy::Actuator,
    telemetry::Metrics,
};

/// Settings of the operator (flags of `fluxmedic run`).
#[derive(Clone, Debug)]
pub struct Options {
    /// The operator's namespace: policies here may cover other namespaces and set the circuit breaker.
    pub namespace: String,
    /// Only these namespaces (empty = all).
    pub watch_namespaces: Vec<String>,
    pub metrics_addr: SocketAddr,
    /// Targets remediated at the same time.
    pub concurrency: usize,
    /// Circuit breaker threshold when no policy in the operator's namespace sets one.
    pub circuit_breaker: u32,
    /// Closed Remediations kept per target.
    pub history_limit: usize,
    /// Debounce between a change and the evaluation pass.
    pub debounce: Duration,
    /// Re-evaluate at least this often (cooldowns, staleness and escalation are time-based).
    pub tick: Duration,
    pub helm_bin: PathBuf,
    /// Hold a Lease in `namespace` and act only while holding it (watches run on every replica).
    pub leader_elect: bool,
    /// Identity in the Lease (the pod name).
    pub identity: String,
    /// Client-side limit on API writes per second (burst: twice that).
    pub max_writes_per_second: u32,
    /// Serve one shard of a sharded Flux: only Flux objects matching this label selector
    /// (`sharding.fluxcd.io/key=<shard>`, or `!sharding.fluxcd.io/key` for the main one).
    pub watch_label_selector: Option<String>,
    /// notification-controller's event server: occurrences are posted there as Flux events.
    pub events_addr: Option<String>,
    /// How long a reconcile request may stay unhandled before its controller counts as not
    /// working (escalated at once, nothing done through it meanwhile).
    pub controller_timeout: Duration,
    /// Check the hosts of sources that cannot be reached (evidence for git-unreachable).
    pub source_probes: bool,
    /// Where Flux's controllers run as Deployments: their pods are watched (read-only) to
    /// tell a crash-looping or unavailable controller at once. `None`: not watched.
    pub flux_namespace: Option<String>,
    /// How helm-controller picks its identity, where its Deployment cannot be read.
    pub helm_controller: Option<crate::flux::HelmControllerIdentity>,
    /// Whether policies may delete a stale pending release (instead of marking it failed).
    pub allow_delete_pending_release: bool,
}

impl Options {
    /// The shard id of this instance (None without a selector).
    pub fn shard(&self) -> Option<String> {
        crate::incident::seal::shard_id(self.watch_label_selector.as_deref())
    }

    /// The label selector of this instance's own records.
    fn own_records(&self) -> String {
        match self.shard() {
            Some(id) => format!("{}={id}", crate::api::SHARD_LABEL),
            None => format!("!{}", crate::api::SHARD_LABEL),
        }
    }

    /// The name prefix of this instance's ledger ConfigMaps (one ledger per shard).
    pub fn ledger_prefix(&self) -> String {
        match self.shard() {
            Some(id) => format!("fluxmedic-ledger-{id}"),
            None => "fluxmedic-ledger".to_string(),
        }
    }

    /// The Lease this instance's replicas elect a leader with (one per shard).
    pub fn lease_name(&self) -> String {
        match self.shard() {
            Some(id) => format!("{}-{id}", leader::LEASE_NAME),
            None => leader::LEASE_NAME.to_string(),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub opts: Options,
    pub index: index::SharedIndex,
    pub notify: Arc<Notify>,
    pub metrics: Metrics,
    /// Events, published off the remediation path.
    pub events: events::EventQueue,
    /// Flux events for notification-controller (`--events-addr`).
    pub notifier: Option<notify::Notifier>,
    pub actuator: Actuator,
    pub limiter: Arc<limiter::WriteLimiter>,
    /// Policy status writes: a budget of their own (a tenant churning policies takes nothing
    /// from incidents), gated by the Lease like every write.
    pub policy_limiter: Arc<limiter::WriteLimiter>,
    /// Seals records, intents and holds; the key lives in the operator's namespace.
    pub sealer: Sealer,
    /// What fluxmedic last sealed on each record, and the sequence counter ([`ledger`]).
    pub ledger: tokio::sync::RwLock<ledger::LedgerStore>,
    /// Helm jobs running off the pass, per target.
    pub jobs: std::sync::Mutex<HashMap<ObjectKey, tokio::task::JoinHandle<()>>>,
    /// Fires (true) when Helm jobs must stop: shutdown, or the Lease lost.
    pub stop: tokio::sync::watch::Sender<bool>,
    /// Reachability probes of unreachable sources, per URL, with when they ran.
    pub probes: std::sync::Mutex<probe::ProbeCache>,
    backoff: Mutex<HashMap<crate::flux::ObjectKey, (u32, i64)>>,
}

impl Context {
    /// Targets with a Helm job running: no pass touches them until it ends.
    pub fn busy_targets(&self) -> HashSet<ObjectKey> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.retain(|_, h| !h.is_finished());
        jobs.keys().cloned().collect()
    }

    pub fn in_scope(&self, ns: &str) -> bool {
        self.opts.watch_namespaces.is_empty() || self.opts.watch_namespaces.iter().any(|n| n == ns)
    }

    fn backoff_ready(&self, key: &crate::flux::ObjectKey, now: i64) -> bool {
        self.backoff
            .try_lock()
            .map(|b| b.get(key).is_none_or(|(_, next)| *next <= now))
            .unwrap_or(true)
    }

    fn backoff_reset(&self, key: &crate::flux::ObjectKey) {
        if let Ok(mut b) = self.backoff.try_lock() {
            b.remove(key);
        }
    }

    /// Per-target backoff after an error of `category` ([`retry_delay`]). Returns the delay.
    fn backoff_fail(&self, key: &crate::flux::ObjectKey, now: i64, category: &str) -> i64 {
        let Ok(mut b) = self.backoff.try_lock() else {
            return 0;
        };
        let e = b.entry(key.clone()).or_insert((0, now));
        e.0 = (e.0 + 1).min(16);
        let delay = retry_delay(e.0, category);
        e.1 = now + delay;
        delay
    }
}

/// Seconds before a target is tried again after its `failures`-th error in a row: 1, 2, 4 …
/// up to 5 minutes; but at most 5 s when the API server itself was unreachable or unavailable
/// (the target is not at fault, and the watches tell when the API is back: retrying every few
/// seconds costs nothing, waiting minutes after a restart delays every incident).
pub fn retry_delay(failures: u32, category: &str) -> i64 {
    let exp = 1i64 << failures.clamp(1, 16).saturating_sub(1);
    let cap = match category {
        "ApiUnreachable" | "ApiUnavailable" | "Timeout" => 5,
        _ => 300,
    };
    exp.min(cap)
}

async fn metrics_handler(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.render(),
    )
}

async fn ready_handler(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    let idx = ctx.index.read().await;
    let mut body = if idx.all_synced() {
        "ok\n"
    } else {
        "syncing\n"
    }
    .to_string();
    // A Flux kind the cluster does not serve leaves the rest working: shown, not fatal.
    for (kind, why) in &idx.missing_kinds {
        body.push_str(&format!("not watched: {kind}: {why}\n"));
    }
    let code = if idx.all_synced() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// The seal key: read from its Secret in the operator's namespace, created on first start.
async fn load_sealer(client: &Client, ns: &str) -> anyhow::Result<Sealer> {
    use crate::incident::seal::KEY_SECRET;
    use k8s_openapi::{ByteString, api::core::v1::Secret};
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        if let Some(s) = api.get_opt(KEY_SECRET).await? {
            let key = s
                .data
                .and_then(|d| d.get("key").cloned())
                .map(|ByteString(k)| k)
                .filter(|k| k.len() >= 32)
                .ok_or_else(|| {
                    anyhow::anyhow!("Secret {ns}/{KEY_SECRET} has no 32-byte data.key; delete it to have a new key made")
                })?;
            return Ok(Sealer::from_key(&key));
        }
        let key = Sealer::generate_key().map_err(anyhow::Error::msg)?;
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": KEY_SECRET, "namespace": ns,
                         "labels": {"app.kubernetes.io/managed-by": "fluxmedic"}},
            "type": "Opaque",
        }))?;
        let mut secret = secret;
        secret.data = Some([("key".to_string(), ByteString(key.to_vec()))].into());
        match api.create(&Default::default(), &secret).await {
            Ok(_) => {
                info!(secret = %format!("{ns}/{KEY_SECRET}"), "created the record seal key");
                return Ok(Sealer::from_key(&key));
            }
            // Another replica made it first: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("cannot read or create Secret {ns}/{KEY_SECRET}")
}

/// Whether the Deployments and pods of the Flux namespace may be listed (one small list each).
/// Only a refusal (no rights, nothing served) counts: any other error is the watch's to retry.
async fn flux_workloads_visible(client: &Client, ns: &str) -> Result<(), String> {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
    let lp = kube::api::ListParams::default().limit(1);
    let refused = |what: &str, e: kube::Error| match e {
        kube::Error::Api(ae) if matches!(ae.code, 401 | 403 | 404) => {
            Err(format!("listing {what}: {}", ae.message))
        }
        _ => Ok(()),
    };
    if let Err(e) = Api::<Deployment>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
    {
        refused("Deployments", e)?;
    }
    if let Err(e) = Api::<Pod>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
    {
        refused("pods", e)?;
    }
    Ok(())
}

/// Run the operator until SIGTERM/SIGINT.
pub async fn run(config: kube::Config, opts: Options) -> anyhow::Result<()> {
    let client = Client::try_from(config.clone())?;
    // Fail early and clearly if fluxmedic's CRDs are not installed.
    let rems: Api<Remediation> = match opts.watch_namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = rems.list(&kube::api::ListParams::default().limit(1)).await {
        anyhow::bail!(
            "cannot list Remediations ({e}); install the CRDs: fluxmedic crds | kubectl apply -f -"
        );
    }
    // Which Flux kinds the cluster serves, in which version: a missing one is not watched.
    let served = discovery::discover(&client).await;
    let ctx = context(client.clone(), config, opts, &served).await?;
    let mut tasks = tokio::task::JoinSet::new();
    spawn_watches(&ctx, &served, &mut tasks).await;
    serve_metrics(&ctx, &mut tasks).await?;
    let leading = elect(&ctx, &mut tasks).await?;
    let outcome: anyhow::Result<()> = tokio::select! {
        _ = engine_loop(ctx.clone(), leading) => Ok(()),
        _ = shutdown_signal() => {
            info!("shutting down");
            Ok(())
        }
        Some(r) = tasks.join_next() => {
            // A watch, the leader election or the metrics server died: exit non-zero so
            // Kubernetes restarts the process rather than leaving it half-blind.
            Err(anyhow::anyhow!("a component of the operator stopped: {r:?}"))
        }
    };
    shut_down(&ctx).await;
    outcome
}

/// Everything the engine and the watches share: the client, limits, the seal key, the ledger.
async fn context(
    client: Client,
    config: kube::Config,
    opts: Options,
    served: &discovery::Served,
) -> anyhow::Result<Arc<Context>> {
    let reporter = Reporter {
        controller: "fluxmedic".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let write_limiter = Arc::new(limiter::WriteLimiter::new(
        opts.max_writes_per_second,
        opts.max_writes_per_second * 2,
    ));
    let policy_limiter = Arc::new(limiter::WriteLimiter::new(
        (opts.max_writes_per_second / 4).max(1),
        (opts.max_writes_per_second / 2).max(1),
    ));
    let metrics = Metrics::default();
    let events = events::EventQueue::start(
        Recorder::new(client.clone(), reporter),
        write_limiter.clone(),
        metrics.events_dropped.clone(),
    );
    let sealer = load_sealer(&client, &opts.namespace)
        .await?
        .in_shard(opts.shard());
    let ledger = ledger::LedgerStore::load(&client, &opts.namespace, &opts.ledger_prefix())
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the ledger in {}: {e}", opts.namespace))?;
    let (stop, _) = tokio::sync::watch::channel(false);
    let notifier = opts
        .events_addr
        .clone()
        .map(|addr| notify::Notifier::start(addr, metrics.notifications.clone()));
    let ctx = Arc::new(Context {
        client: client.clone(),
        index: Arc::new(RwLock::new(index::Index::default())),
        notify: Arc::new(Notify::new()),
        metrics,
        events,
        notifier,
        actuator: Actuator {
            client: client.clone(),
            config: Some(config),
            helm_bin: opts.helm_bin.clone(),
            limiter: Some(write_limiter.clone()),
            apis: Arc::new(served.resources.clone()),
        },
        limiter: write_limiter,
        policy_limiter,
        sealer,
        ledger: tokio::sync::RwLock::new(ledger),
        jobs: std::sync::Mutex::new(HashMap::new()),
        stop,
        probes: std::sync::Mutex::new(probe::ProbeCache::default()),
        backoff: Mutex::new(HashMap::new()),
        opts,
    });
    for (kind, why) in &served.missing {
        warn!(kind = %kind, reason = %why, "Flux kind not served in a version fluxmedic reads: not watched");
        ctx.metrics
            .flux_api_missing
            .get_or_create(&crate::telemetry::KindLabels {
                kind: kind.to_string(),
            })
            .set(1);
    }
    ctx.index.write().await.missing_kinds = served
        .missing
        .iter()
        .map(|(k, why)| (k.to_string(), why.clone()))
        .collect();

    Ok(ctx)
}

/// The watches feeding the index: Flux kinds, Secrets' metadata, fluxmedic's own records and
/// policies, and the Flux controllers' workloads where visible.
async fn spawn_watches(
    ctx: &Arc<Context>,
    served: &discovery::Served,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let client = ctx.client.clone();
    // Watch the whole cluster, or only the watched namespaces (plus, for policies, the
    // operator's namespace): the chart's namespace mode grants Roles only.
    let scopes: Vec<index::Scope> = if ctx.opts.watch_namespaces.is_empty() {
        vec![None]
    } else {
        ctx.opts
            .watch_namespaces
            .iter()
            .cloned()
            .map(Some)
            .collect()
    };
    let mut policy_scopes = scopes.clone();
    if !policy_scopes
        .iter()
        .any(|s| s.is_none() || s.as_deref() == Some(ctx.opts.namespace.as_str()))
    {
        policy_scopes.push(Some(ctx.opts.namespace.clone()));
    }
    let kinds: Vec<_> = index::WATCHED_KINDS
        .into_iter()
        .filter_map(|k| served.resources.get(&k).map(|r| (k, r.clone())))
        .collect();
    // The Flux controllers' own pods, where fluxmedic may see them.
    let flux_ns = match &ctx.opts.flux_namespace {
        Some(ns) => match flux_workloads_visible(&client, ns).await {
            Ok(()) => Some(ns.clone()),
            Err(why) => {
                warn!(namespace = %ns, reason = %why, "cannot watch the Flux controllers' pods: a crash-looping controller is noticed only by the reconcile requests it leaves unhandled");
                ctx.index
                    .write()
                    .await
                    .missing_kinds
                    .insert(format!("Flux controller pods in {ns}"), why);
                None
            }
        },
        None => None,
    };
    ctx.index.write().await.expected_watches = scopes.len() * (kinds.len() + 2)
        + policy_scopes.len()
        + if flux_ns.is_some() { 2 } else { 0 };
    let feed = index::Feed {
        index: ctx.index.clone(),
        notify: ctx.notify.clone(),
    };
    for scope in &scopes {
        for (kind, resource) in &kinds {
            tasks.spawn(index::watch_flux(
                client.clone(),
                scope.clone(),
                *kind,
                resource.clone(),
                ctx.opts.watch_label_selector.clone(),
                feed.clone(),
            ));
        }
        tasks.spawn(index::watch_secrets(
            client.clone(),
            scope.clone(),
            feed.clone(),
        ));
        tasks.spawn(index::watch_own::<Remediation>(
            client.clone(),
            scope.clone(),
            feed.clone(),
            index::RECORDS_WATCH,
            Some(ctx.opts.own_records()),
            index::put_remediation,
            |i| &mut i.remediations,
        ));
    }
    if let Some(ns) = flux_ns {
        tasks.spawn(index::watch_flux_deployments(
            client.clone(),
            ns.clone(),
            feed.clone(),
        ));
        tasks.spawn(index::watch_flux_pods(client.clone(), ns, feed.clone()));
    }
    for scope in policy_scopes {
        tasks.spawn(index::watch_own::<RemediationPolicy>(
            client.clone(),
            scope,
            feed.clone(),
            "RemediationPolicy",
            None,
            index::put_policy,
            |i| &mut i.policies,
        ));
    }
}

async fn serve_metrics(
    ctx: &Arc<Context>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(ctx.clone());
    let listener = tokio::net::TcpListener::bind(ctx.opts.metrics_addr).await?;
    info!(addr = %ctx.opts.metrics_addr, "serving /metrics, /healthz, /readyz");
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });

    Ok(())
}

/// Leader election: every replica watches (a warm standby), only the Lease holder acts.
/// The gate closes the moment the Lease is seen held by another replica or expires
/// unrenewed, so a pass in progress stops writing at once. `None`: no election, always acts.
async fn elect(
    ctx: &Arc<Context>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<Option<tokio::sync::watch::Receiver<bool>>> {
    if !ctx.opts.leader_elect {
        return Ok(None);
    }
    let (rx, task) = leader::elect(
        ctx.client.clone(),
        &ctx.opts.namespace,
        &ctx.opts.identity,
        &ctx.opts.lease_name(),
    )
    .await?;
    tasks.spawn(task);
    // The gate follows the election directly, not between passes: a pass in progress
    // is cut off at its next write.
    let (gate_ctx, mut gate_rx) = (ctx.clone(), rx.clone());
    gate_ctx.limiter.set_allowed(false);
    gate_ctx.policy_limiter.set_allowed(false);
    tasks.spawn(async move {
        loop {
            let lead = *gate_rx.borrow_and_update();
            gate_ctx.limiter.set_allowed(lead);
            gate_ctx.policy_limiter.set_allowed(lead);
            // Helm jobs stop when the Lease is lost (a standby takes over from the record).
            gate_ctx.stop.send_replace(!lead);
            if gate_rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Some(rx))
}

/// A pass on every change (debounced), at least every tick, while leading.
async fn engine_loop(
    engine_ctx: Arc<Context>,
    leading: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let mut was_leader = false;
    loop {
        let is_leader = leading.as_ref().is_none_or(|rx| *rx.borrow());
        if is_leader != was_leader {
            info!(identity = %engine_ctx.opts.identity, leader = is_leader, "leadership changed");
            engine_ctx.metrics.leader.set(is_leader as i64);
            was_leader = is_leader;
            // The replica that led until now wrote the ledger: take up its latest word.
            if is_leader {
                match ledger::LedgerStore::load(
                    &engine_ctx.client,
                    &engine_ctx.opts.namespace,
                    &engine_ctx.opts.ledger_prefix(),
                )
                .await
                {
                    Ok(l) => *engine_ctx.ledger.write().await = l,
                    Err(e) => {
                        warn!(error = %e, "cannot read the ledger; keeping what this replica knows")
                    }
                }
            }
        }
        if is_leader && engine_ctx.index.read().await.all_synced() {
            tokio::time::sleep(engine_ctx.opts.debounce).await;
            engine::pass(&engine_ctx).await;
        }
        let mut lead_rx = leading.clone();
        tokio::select! {
            _ = engine_ctx.notify.notified() => {}
            _ = tokio::time::sleep(engine_ctx.opts.tick) => {}
            _ = async {
                match lead_rx.as_mut() {
                    Some(rx) => { let _ = rx.changed().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
}

/// Stop the Helm jobs (they clear their locks and record the outcome) and flush the Events.
async fn shut_down(ctx: &Context) {
    // Helm jobs: stop them, and wait for them to clear their locks and record the outcome.
    ctx.stop.send_replace(true);
    let jobs: Vec<_> = ctx
        .jobs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, h)| h)
        .collect();
    if !jobs.is_empty() {
        info!(jobs = jobs.len(), "waiting for Helm jobs to stop");
        let all = futures::future::join_all(jobs);
        if tokio::time::timeout(engine::JOB_GRACE, all).await.is_err() {
            warn!("Helm jobs did not stop within the grace period");
        }
    }
    if !ctx.events.flush(Duration::from_secs(5)).await {
        warn!(
            pending = ctx.events.pending(),
            "Events not written before shutdown"
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unreachable_api_server_does_not_push_targets_minutes_away() {
        use super::retry_delay;
        assert_eq!(
            (1..=6)
                .map(|n| retry_delay(n, "Conflict"))
                .collect::<Vec<_>>(),
            vec![1, 2, 4, 8, 16, 32]
        );
        assert_eq!(retry_delay(16, "Forbidden"), 300);
        assert_eq!(
            (1..=6)
                .map(|n| retry_delay(n, "ApiUnreachable"))
                .collect::<Vec<_>>(),
            vec![1, 2, 4, 5, 5, 5]
        );
        assert_eq!(retry_delay(0, "Timeout"), 1);
    }
}
