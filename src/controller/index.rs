//! The index: what the watches have seen, kept as small normalised views (never whole
//! objects, never Secret data), from which each evaluation pass takes a snapshot.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::DynamicObject,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{Notify, RwLock};
use tracing::{debug, warn};

use crate::{
    api::{Remediation, RemediationPolicy},
    diagnose::{SecretInfo, Snapshot},
    flux::{self, FluxKind, FluxObject, ObjectKey},
    helm::StoredRelease,
    remedy::api_resource,
};

/// The Flux kinds fluxmedic watches (Bucket is rare and only ever a source: not watched).
pub const WATCHED_KINDS: [FluxKind; 6] = [
    FluxKind::Kustomization,
    FluxKind::HelmRelease,
    FluxKind::GitRepository,
    FluxKind::HelmChart,
    FluxKind::HelmRepository,
    FluxKind::OCIRepository,
];

#[derive(Default)]
pub struct Index {
    pub objects: BTreeMap<ObjectKey, Arc<FluxObject>>,
    /// Helm release storage metadata, per (namespace, Secret name).
    pub releases: HashMap<(String, String), StoredRelease>,
    /// resourceVersion of every Secret, per (namespace, name).
    pub secret_versions: HashMap<(String, String), String>,
    /// Key names of Secrets referenced by sources, fetched on demand, per (namespace, name).
    pub secret_keys: HashMap<(String, String), SecretInfo>,
    pub policies: BTreeMap<(String, String), Arc<RemediationPolicy>>,
    pub remediations: BTreeMap<(String, String), Arc<Remediation>>,
    /// Watches that have completed their initial list, and how many there are.
    pub synced: BTreeSet<String>,
    pub expected_watches: usize,
    /// Objects that could not be read, with the reason (reported, never acted upon).
    pub unreadable: BTreeMap<String, String>,
}

impl Index {
    pub fn snapshot(&self, now: i64) -> Snapshot {
        let mut snap = Snapshot {
            objects: self.objects.clone(),
            now,
            secrets_observed: true,
            ..Default::default()
        };
        for r in self.releases.values() {
            snap.add_release(r.clone());
        }
        for (k, rv) in &self.secret_versions {
            let keys = self.secret_keys.get(k).filter(|i| i.resource_version.as_ref() == Some(rv));
            snap.secrets.insert(
                k.clone(),
                SecretInfo { keys: keys.map(|i| i.keys.clone()).unwrap_or_default(), resource_version: Some(rv.clone()) },
            );
        }
        snap
    }

    pub fn all_synced(&self) -> bool {
        self.synced.len() >= self.expected_watches
    }
}

pub type SharedIndex = Arc<RwLock<Index>>;

fn watcher_config() -> watcher::Config {
    watcher::Config::default().page_size(500)
}

/// A watch scope: the whole cluster (`None`) or one namespace (the namespace mode of the
/// chart grants only Roles, where a cluster-wide list would be forbidden).
pub type Scope = Option<String>;

fn in_scope(scope: &Scope, ns: &str) -> bool {
    scope.as_deref().is_none_or(|s| s == ns)
}

fn api_for<K>(client: Client, scope: &Scope) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

fn scope_name(what: &str, scope: &Scope) -> String {
    format!("{what}@{}", scope.as_deref().unwrap_or("*"))
}

/// Watch one Flux kind into the index.
pub async fn watch_flux(client: Client, scope: Scope, kind: FluxKind, index: SharedIndex, notify: Arc<Notify>) {
    let api: Api<DynamicObject> = match &scope {
        Some(ns) => Api::namespaced_with(client, ns, &api_resource(kind)),
        None => Api::all_with(client, &api_resource(kind)),
    };
    let mut seen: Option<BTreeSet<ObjectKey>> = None;
    let mut stream = watcher(api, watcher_config()).default_backoff().boxed();
    loop {
        let ev = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(e) => {
                warn!(kind = %kind, error = %e, "watch error (retrying with backoff)");
                continue;
            }
        };
        let mut idx = index.write().await;
        match ev {
            watcher::Event::Init => seen = Some(BTreeSet::new()),
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let id = format!("{kind}/{}/{}", o.namespace().unwrap_or_default(), o.name_any());
                match serde_json::to_value(&o).map_err(|e| e.to_string()).and_then(|v| flux::from_value(&v).map_err(|e| e.to_string())) {
                    Ok(obj) => {
                        if let Some(s) = seen.as_mut() {
                            s.insert(obj.key.clone());
                        }
                        idx.unreadable.remove(&id);
                        idx.objects.insert(obj.key.clone(), Arc::new(obj));
                    }
                    Err(e) => {
                        warn!(object = %id, error = %e, "cannot read Flux object; ignoring it");
                        idx.unreadable.insert(id, e);
                    }
                }
            }
            watcher::Event::Delete(o) => {
                let key = ObjectKey::new(kind, o.namespace().unwrap_or_default(), o.name_any());
                idx.objects.remove(&key);
            }
            watcher::Event::InitDone => {
                if let Some(s) = seen.take() {
                    idx.objects.retain(|k, _| k.kind != kind || !in_scope(&scope, &k.namespace) || s.contains(k));
                }
                idx.synced.insert(scope_name(kind.as_str(), &scope));
                debug!(kind = %kind, "initial list done");
            }
        }
        drop(idx);
        notify.notify_one();
    }
}

/// Watch Secret metadata: Helm release storage (labels) and resourceVersions (to see a
/// source's credentials change). Secret data is never fetched here.
pub async fn watch_secrets(client: Client, scope: Scope, index: SharedIndex, notify: Arc<Notify>) {
    let api: Api<PartialObjectMeta<Secret>> = match &scope {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut seen: Option<BTreeSet<(String, String)>> = None;
    let mut stream = watcher(api, watcher_config()).default_backoff().boxed();
    loop {
        let ev = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "Secret watch error (retrying with backoff)");
                continue;
            }
        };
        let mut idx = index.write().await;
        match ev {
            watcher::Event::Init => seen = Some(BTreeSet::new()),
            watcher::Event::InitApply(m) | watcher::Event::Apply(m) => {
                let key = (m.namespace().unwrap_or_default(), m.name_any());
                if let Some(s) = seen.as_mut() {
                    s.insert(key.clone());
                }
                if let Some(r) = StoredRelease::from_metadata(&key.1, &key.0, m.labels()) {
                    idx.releases.insert(key.clone(), r);
                } else {
                    idx.releases.remove(&key);
                }
                idx.secret_versions.insert(key, m.resource_version().unwrap_or_default());
            }
            watcher::Event::Delete(m) => {
                let key = (m.namespace().unwrap_or_default(), m.name_any());
                idx.releases.remove(&key);
                idx.secret_versions.remove(&key);
                idx.secret_keys.remove(&key);
            }
            watcher::Event::InitDone => {
                if let Some(s) = seen.take() {
                    idx.releases.retain(|k, _| !in_scope(&scope, &k.0) || s.contains(k));
                    idx.secret_versions.retain(|k, _| !in_scope(&scope, &k.0) || s.contains(k));
                }
                idx.synced.insert(scope_name("Secret", &scope));
            }
        }
        drop(idx);
        notify.notify_one();
    }
}

/// Watch fluxmedic's own resources.
pub async fn watch_own<K>(
    client: Client,
    scope: Scope,
    index: SharedIndex,
    notify: Arc<Notify>,
    name: &'static str,
    put: fn(&mut Index, Option<K>, (String, String)),
) where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = api_for(client, &scope);
    let mut stream = watcher(api, watcher_config()).default_backoff().boxed();
    let mut seen: Option<BTreeSet<(String, String)>> = None;
    loop {
        let ev = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(e) => {
                warn!(resource = name, error = %e, "watch error (retrying with backoff)");
                continue;
            }
        };
        let mut idx = index.write().await;
        match ev {
            watcher::Event::Init => seen = Some(BTreeSet::new()),
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let key = (o.namespace().unwrap_or_default(), o.name_any());
                if let Some(s) = seen.as_mut() {
                    s.insert(key.clone());
                }
                put(&mut idx, Some(o), key);
            }
            watcher::Event::Delete(o) => {
                let key = (o.namespace().unwrap_or_default(), o.name_any());
                put(&mut idx, None, key);
            }
            watcher::Event::InitDone => {
                if let Some(s) = seen.take() {
                    if name == "RemediationPolicy" {
                        idx.policies.retain(|k, _| !in_scope(&scope, &k.0) || s.contains(k));
                    } else {
                        idx.remediations.retain(|k, _| !in_scope(&scope, &k.0) || s.contains(k));
                    }
                }
                idx.synced.insert(scope_name(name, &scope));
            }
        }
        drop(idx);
        notify.notify_one();
    }
}

pub fn put_policy(idx: &mut Index, p: Option<RemediationPolicy>, key: (String, String)) {
    match p {
        Some(p) => {
            idx.policies.insert(key, Arc::new(p));
        }
        None => {
            idx.policies.remove(&key);
        }
    }
}

pub fn put_remediation(idx: &mut Index, r: Option<Remediation>, key: (String, String)) {
    match r {
        Some(r) => {
            // Never go back to an older copy than one the engine itself just wrote.
            let newer = idx.remediations.get(&key).is_some_and(|old| rv_num(old.as_ref()) > rv_num(&r));
            if !newer {
                idx.remediations.insert(key, Arc::new(r));
            }
        }
        None => {
            idx.remediations.remove(&key);
        }
    }
}

fn rv_num(r: &Remediation) -> u64 {
    r.metadata.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}
