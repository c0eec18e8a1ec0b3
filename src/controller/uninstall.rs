//! `fluxmedic release-holds`: what the chart's pre-delete hook runs before `helm uninstall`
//! removes the operator. A HelmRelease fluxmedic suspended (a rollback waiting for a fix) is
//! resumed only by fluxmedic; once it is uninstalled nobody would, and Flux would never
//! reconcile that release again. So, while the chart's RBAC still exists:
//!
//! 1. stop the operator's replicas (scale its Deployment to 0 and wait for them to go), so
//!    none suspends anything after the holds are released;
//! 2. resume every HelmRelease that carries a hold fluxmedic sealed for exactly that object and
//!    generation — the same test as for an orphaned hold, so a suspension a person made, or
//!    one whose annotations someone wrote or whose spec changed since, is left alone.
//!
//! The Remediation records stay (the CRDs outlive the chart); a reinstalled fluxmedic sees
//! their targets resumed.

use std::time::Duration;

use k8s_openapi::{
    ByteString,
    api::{apps::v1::Deployment, core::v1::Secret},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams},
};
use tracing::{info, warn};

use crate::{
    flux::FluxKind,
    incident::{
        orphaned_hold,
        seal::{KEY_SECRET, Sealer, shard_id},
    },
    remedy::Actuator,
};

/// What to release and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The operator's namespace (its seal key and Deployment).
    pub namespace: String,
    /// Only these namespaces (empty: all), as the operator was run.
    pub watch_namespaces: Vec<String>,
    /// The operator's shard, as it was run (its holds are sealed per shard).
    pub watch_label_selector: Option<String>,
    /// The operator's Deployment, scaled to 0 first (None: the caller stopped it).
    pub deployment: Option<String>,
    /// How long to wait for the replicas to stop.
    pub stop_timeout: Duration,
}

/// What was done: each resumed HelmRelease (`namespace/name`), and each that could not be.
#[derive(Debug, Default)]
pub struct Released {
    pub resumed: Vec<String>,
    pub failed: Vec<String>,
}

/// Stop the operator, then resume the HelmReleases it holds suspended.
pub async fn release_holds(client: Client, opts: &Options) -> anyhow::Result<Released> {
    if let Some(name) = &opts.deployment {
        stop_operator(&client, &opts.namespace, name, opts.stop_timeout).await?;
    }
    let Some(sealer) = read_sealer(&client, &opts.namespace).await? else {
        info!(
            secret = %format!("{}/{KEY_SECRET}", opts.namespace),
            "no seal key: fluxmedic never held anything here"
        );
        return Ok(Released::default());
    };
    let sealer = sealer.in_shard(shard_id(opts.watch_label_selector.as_deref()));
    let served = super::discovery::discover(&client).await;
    let Some(ar) = served.resources.get(&FluxKind::HelmRelease).cloned() else {
        info!("HelmReleases are not served: nothing to release");
        return Ok(Released::default());
    };
    let mut lp = ListParams::default();
    if let Some(sel) = opts.watch_label_selector.as_deref() {
        lp = lp.labels(sel);
    }
    let lists: Vec<Api<DynamicObject>> = if opts.watch_namespaces.is_empty() {
        vec![Api::all_with(client.clone(), &ar)]
    } else {
        opts.watch_namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &ar))
            .collect()
    };
    let actuator = Actuator {
        client: client.clone(),
        config: None,
        helm_bin: "helm".into(),
        limiter: None,
        apis: std::sync::Arc::new(served.resources.clone()),
    };
    let mut out = Released::default();
    for api in lists {
        for o in api.list(&lp).await?.items {
            let mut v = serde_json::to_value(&o)?;
            v["apiVersion"] = ar.api_version.clone().into();
            v["kind"] = "HelmRelease".into();
            let id = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
            let obj = match crate::flux::from_value(&v) {
                Ok(obj) => obj,
                Err(e) => {
                    warn!(helmrelease = id, error = %e, "unreadable HelmRelease left alone");
                    continue;
                }
            };
            // With no record to consult (the operator is going away), a sealed hold of ours is
            // released; anything else is not ours to touch.
            if !orphaned_hold(&obj, None, &sealer) {
                continue;
            }
            let owner = obj
                .reconcile_annotations
                .get(crate::api::SUSPENDED_BY_ANNOTATION)
                .cloned()
                .unwrap_or_default();
            let uid = obj.uid.clone().unwrap_or_default();
            match actuator.release_hold(&obj.key, &uid, &owner).await {
                Ok(_) => {
                    info!(
                        helmrelease = id,
                        remediation = owner,
                        "resumed: fluxmedic is being uninstalled"
                    );
                    out.resumed.push(id);
                }
                Err(e) => {
                    warn!(helmrelease = id, error = %e, "could not resume");
                    out.failed.push(format!("{id}: {e}"));
                }
            }
        }
    }
    Ok(out)
}

/// The seal key, read only: without it no hold of fluxmedic's can be verified.
async fn read_sealer(client: &Client, ns: &str) -> anyhow::Result<Option<Sealer>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(KEY_SECRET)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get("key").cloned())
        .map(|ByteString(k)| k)
        .filter(|k| k.len() >= 32)
        .map(|k| Sealer::from_key(&k)))
}

/// Scale the operator's Deployment to 0 and wait until no replica runs (a missing Deployment
/// is already stopped).
async fn stop_operator(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    if api.get_opt(name).await?.is_none() {
        return Ok(());
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let running = match api.get_opt(name).await? {
            None => 0,
            Some(d) => d.status.and_then(|s| s.replicas).unwrap_or(0),
        };
        if running == 0 {
            info!(deployment = %format!("{ns}/{name}"), "operator stopped");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "Deployment {ns}/{name} still has {running} replica(s) after {}s; not releasing holds while it may still act",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
