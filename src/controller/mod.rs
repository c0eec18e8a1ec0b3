//! `fluxmedic run`: watches feed the index; a debounced evaluation pass diagnoses the
//! snapshot, plans under the policies and acts with bounded concurrency.

pub mod engine;
pub mod events;
pub mod index;
pub mod limiter;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use kube::{
    Api, Client,
    runtime::events::{Recorder, Reporter},
};
use tokio::sync::{Mutex, Notify, RwLock};
use tracing::{info, warn};

use crate::{
    api::{Remediation, RemediationPolicy},
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
}

pub struct Context {
    pub client: Client,
    pub opts: Options,
    pub index: index::SharedIndex,
    pub notify: Arc<Notify>,
    pub metrics: Metrics,
    /// Events, published off the remediation path.
    pub events: events::EventQueue,
    pub actuator: Actuator,
    pub limiter: Arc<limiter::WriteLimiter>,
    backoff: Mutex<HashMap<crate::flux::ObjectKey, (u32, i64)>>,
}

impl Context {
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

    /// Exponential per-target backoff after an error: 1s, 2s, 4s … 5m. Returns the delay.
    fn backoff_fail(&self, key: &crate::flux::ObjectKey, now: i64) -> i64 {
        let Ok(mut b) = self.backoff.try_lock() else {
            return 0;
        };
        let e = b.entry(key.clone()).or_insert((0, now));
        e.0 = (e.0 + 1).min(16);
        let delay = (1i64 << (e.0 - 1)).min(300);
        e.1 = now + delay;
        delay
    }
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
    if ctx.index.read().await.all_synced() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "syncing")
    }
}

/// Run the operator until SIGTERM/SIGINT.
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
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
    let reporter = Reporter {
        controller: "fluxmedic".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let write_limiter = Arc::new(limiter::WriteLimiter::new(
        opts.max_writes_per_second,
        opts.max_writes_per_second * 2,
    ));
    let metrics = Metrics::default();
    let events = events::EventQueue::start(
        Recorder::new(client.clone(), reporter),
        write_limiter.clone(),
        metrics.events_dropped.clone(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        index: Arc::new(RwLock::new(index::Index::default())),
        notify: Arc::new(Notify::new()),
        metrics,
        events,
        actuator: Actuator {
            client: client.clone(),
            helm_bin: opts.helm_bin.clone(),
            limiter: Some(write_limiter.clone()),
        },
        limiter: write_limiter,
        backoff: Mutex::new(HashMap::new()),
        opts,
    });

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
    ctx.index.write().await.expected_watches =
        scopes.len() * (index::WATCHED_KINDS.len() + 2) + policy_scopes.len();
    let mut tasks = tokio::task::JoinSet::new();
    for scope in &scopes {
        for kind in index::WATCHED_KINDS {
            tasks.spawn(index::watch_flux(
                client.clone(),
                scope.clone(),
                kind,
                ctx.index.clone(),
                ctx.notify.clone(),
            ));
        }
        tasks.spawn(index::watch_secrets(
            client.clone(),
            scope.clone(),
            ctx.index.clone(),
            ctx.notify.clone(),
        ));
        tasks.spawn(index::watch_own::<Remediation>(
            client.clone(),
            scope.clone(),
            ctx.index.clone(),
            ctx.notify.clone(),
            "Remediation",
            index::put_remediation,
            |i| &mut i.remediations,
        ));
    }
    for scope in policy_scopes {
        tasks.spawn(index::watch_own::<RemediationPolicy>(
            client.clone(),
            scope,
            ctx.index.clone(),
            ctx.notify.clone(),
            "RemediationPolicy",
            index::put_policy,
            |i| &mut i.policies,
        ));
    }

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

    // Leader election: every replica watches (a warm standby), only the Lease holder acts.
    let leader = if ctx.opts.leader_elect {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "fluxmedic-leader")
                .with_namespace(&ctx.opts.namespace)
                .with_identity(&ctx.opts.identity)
                .with_duration(15)
                .with_grace(5)
                .with_field_manager(crate::api::FIELD_MANAGER)
                .build()
                .await?;
        let (rx, task) = manager.watch().await;
        tasks.spawn(async move {
            if let Ok(Err(e)) = task.await {
                warn!(error = %e, "leader election stopped");
            }
        });
        Some(rx)
    } else {
        None
    };
    let engine_ctx = ctx.clone();
    let engine = async move {
        let mut was_leader = false;
        loop {
            tokio::select! {
                _ = engine_ctx.notify.notified() => {}
                _ = tokio::time::sleep(engine_ctx.opts.tick) => {}
            }
            let is_leader = leader.as_ref().is_none_or(|rx| *rx.borrow());
            if is_leader != was_leader {
                info!(identity = %engine_ctx.opts.identity, leader = is_leader, "leadership changed");
                engine_ctx.metrics.leader.set(is_leader as i64);
                was_leader = is_leader;
            }
            if !is_leader || !engine_ctx.index.read().await.all_synced() {
                continue;
            }
            tokio::time::sleep(engine_ctx.opts.debounce).await;
            engine::pass(&engine_ctx).await;
        }
    };
    tokio::select! {
        _ = engine => {}
        _ = shutdown_signal() => info!("shutting down"),
        Some(r) = tasks.join_next() => warn!(?r, "a watch task ended"),
    }
    if !ctx.events.flush(Duration::from_secs(5)).await {
        warn!(
            pending = ctx.events.pending(),
            "Events not written before shutdown"
        );
    }
    Ok(())
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
