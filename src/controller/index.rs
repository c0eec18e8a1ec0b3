//! The index: what the watches have seen, kept as small normalised views (never whole
//! objects, never Secret data), from which each evaluation pass takes a snapshot.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Secret},
};
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
    diagnose::{
        SecretInfo, Snapshot,
        controllers::{DeploymentState, PodState},
    },
    flux::{self, FluxKind, FluxObject, ObjectKey},
    helm::StoredRelease,
};

/// The Flux kinds fluxmedic watches: every kind Flux reconciles from a source, every source.
pub const WATCHED_KINDS: [FluxKind; 7] = [
    FluxKind::Kustomization,
    FluxKind::HelmRelease,
    FluxKind::GitRepository,
    FluxKind::HelmChart,
    FluxKind::HelmRepository,
    FluxKind::OCIRepository,
    FluxKind::Bucket,
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
    /// Flux kinds the cluster does not serve in a readable version (not watched), with why.
    pub missing_kinds: BTreeMap<String, String>,
    /// Flux controllers' Deployments in the Flux namespace, and its pods (read-only).
    pub flux_deployments: BTreeMap<Key, DeploymentState>,
    pub flux_pods: BTreeMap<Key, PodState>,
    /// Per watch relisting now (by name): the objects its list showed so far, and for a
    /// Remediation watch also the records the engine wrote meanwhile. A list taken before
    /// such a write does not show it, and dropping the record until its watch event arrives
    /// would let a pass take the target for one without a record (and forget its ledger
    /// entry): one incident would get two records.
    relisting: BTreeMap<String, BTreeSet<Key>>,
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
        snap.flux_deployments = self.flux_deployments.values().cloned().collect();
        snap.flux_pods = self.flux_pods.values().cloned().collect();
        for (k, rv) in &self.secret_versions {
            let keys = self
                .secret_keys
                .get(k)
                .filter(|i| i.resource_version.as_ref() == Some(rv));
            snap.secrets.insert(
                k.clone(),
                SecretInfo {
                    keys: keys.map(|i| i.keys.clone()).unwrap_or_default(),
                    resource_version: Some(rv.clone()),
                },
            );
        }
        snap
    }

    pub fn all_synced(&self) -> bool {
        self.synced.len() >= self.expected_watches
    }

    /// The engine wrote (created or updated) record `key`: store it as written and keep it
    /// through a relist under way whose list predates the write.
    pub fn wrote_record(&mut self, r: Remediation, key: Key) {
        for (watch, seen) in self.relisting.iter_mut() {
            if watch.split('@').next() == Some(RECORDS_WATCH) {
                seen.insert(key.clone());
            }
        }
        put_remediation(self, Some(r), key);
    }
}

/// The name of the watch of fluxmedic's records (before `@scope`).
pub const RECORDS_WATCH: &str = "Remediation";

pub type SharedIndex = Arc<RwLock<Index>>;

/// Where the watches deliver: the index, and the engine's wake-up.
#[derive(Clone)]
pub struct Feed {
    pub index: SharedIndex,
    pub notify: Arc<Notify>,
}

fn watcher_config(labels: Option<&str>) -> watcher::Config {
    let c = watcher::Config::default().page_size(500);
    match labels {
        Some(l) => c.labels(l),
        None => c,
    }
}

/// How a watch retries after an error: 0.5 s doubling to 5 s, jittered, reset after two quiet
/// minutes. kube's default (client-go's: up to 30 s) can keep a watch away for half a minute
/// after the API server is back; a failed watch attempt costs one request, so retrying every
/// few seconds is cheap.
pub fn watch_backoff() -> kube::runtime::utils::ResetTimerBackoff<watcher::ExponentialBackoff> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(500))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .with_jitter();
    kube::runtime::utils::ResetTimerBackoff::new(
        builder.into(),
        std::time::Duration::from_secs(120),
    )
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

type Key = (String, String);

/// A Flux object as a watch delivers it (its JSON): stored normalised, or recorded as
/// unreadable with the reason (reported, never acted upon). Pure: the property tests drive it.
pub fn apply_flux(idx: &mut Index, kind: FluxKind, key: &Key, value: &serde_json::Value) {
    let id = format!("{kind}/{}/{}", key.0, key.1);
    match flux::from_value(value) {
        Ok(obj) if obj.key.kind == kind => {
            idx.unreadable.remove(&id);
            idx.objects.insert(obj.key.clone(), Arc::new(obj));
        }
        Ok(obj) => {
            idx.unreadable.insert(
                id,
                format!("delivered by the {kind} watch as a {}", obj.key.kind),
            );
        }
        Err(e) => {
            warn!(object = %id, error = %e, "cannot read Flux object; ignoring it");
            idx.objects
                .remove(&ObjectKey::new(kind, key.0.clone(), key.1.clone()));
            idx.unreadable.insert(id, e.to_string());
        }
    }
}

pub fn delete_flux(idx: &mut Index, kind: FluxKind, key: &Key) {
    idx.objects
        .remove(&ObjectKey::new(kind, key.0.clone(), key.1.clone()));
}

/// A Secret's metadata as the watch delivers it: Helm release storage (labels) and its
/// resourceVersion. Never its data.
pub fn apply_secret(idx: &mut Index, key: &Key, labels: &BTreeMap<String, String>, rv: String) {
    match StoredRelease::from_metadata(&key.1, &key.0, labels) {
        Some(r) => idx.releases.insert(key.clone(), r),
        None => idx.releases.remove(key),
    };
    idx.secret_versions.insert(key.clone(), rv);
}

/// Drive one watch into the index: errors are logged and retried with backoff (by the
/// stream), a re-list drops what was not seen again in this watch's scope, every event wakes
/// the engine. The three closures say what an object means for the index.
async fn drive<K, S>(
    stream: S,
    name: String,
    feed: Feed,
    mut apply: impl FnMut(&mut Index, K, &Key),
    mut delete: impl FnMut(&mut Index, &Key),
    mut relisted: impl FnMut(&mut Index, &BTreeSet<Key>),
) where
    K: kube::Resource,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        let ev = match stream.try_next().await {
            Ok(Some(ev)) => ev,
            Ok(None) => return,
            Err(e) => {
                warn!(watch = %name, error = %e, "watch error (retrying with backoff)");
                continue;
            }
        };
        // Fault injection for the tests (unset in production): a watch task that dies.
        if std::env::var("FLUXMEDIC_CRASH_AT").is_ok_and(|p| p == format!("watch:{name}")) {
            panic!("FLUXMEDIC_CRASH_AT=watch:{name}");
        }
        let mut idx = feed.index.write().await;
        match ev {
            watcher::Event::Init => {
                idx.relisting.insert(name.clone(), BTreeSet::new());
            }
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let key = (o.namespace().unwrap_or_default(), o.name_any());
                if let Some(s) = idx.relisting.get_mut(&name) {
                    s.insert(key.clone());
                }
                apply(&mut idx, o, &key);
            }
            watcher::Event::Delete(o) => {
                delete(&mut idx, &(o.namespace().unwrap_or_default(), o.name_any()))
            }
            watcher::Event::InitDone => {
                if let Some(s) = idx.relisting.remove(&name) {
                    relisted(&mut idx, &s);
                }
                debug!(watch = %name, "initial list done");
                idx.synced.insert(name.clone());
            }
        }
        drop(idx);
        feed.notify.notify_one();
    }
}

/// Watch one Flux kind into the index.
pub async fn watch_flux(
    client: Client,
    scope: Scope,
    kind: FluxKind,
    resource: kube::core::ApiResource,
    labels: Option<String>,
    feed: Feed,
) {
    let api: Api<DynamicObject> = match &scope {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    let stream = watcher(api, watcher_config(labels.as_deref())).backoff(watch_backoff());
    let apply = |idx: &mut Index, o: DynamicObject, key: &Key| match serde_json::to_value(&o) {
        Ok(v) => apply_flux(idx, kind, key, &v),
        Err(e) => warn!(error = %e, "cannot serialise a watched object"),
    };
    let delete = |idx: &mut Index, key: &Key| delete_flux(idx, kind, key);
    let sc = scope.clone();
    let relisted = move |idx: &mut Index, seen: &BTreeSet<Key>| {
        idx.objects.retain(|k, _| {
            k.kind != kind
                || !in_scope(&sc, &k.namespace)
                || seen.contains(&(k.namespace.clone(), k.name.clone()))
        });
    };
    drive(
        stream,
        scope_name(kind.as_str(), &scope),
        feed,
        apply,
        delete,
        relisted,
    )
    .await
}

/// Watch Secret metadata: Helm release storage (labels) and resourceVersions (to see a
/// source's credentials change). Secret data is never fetched here.
pub async fn watch_secrets(client: Client, scope: Scope, feed: Feed) {
    let api: Api<PartialObjectMeta<Secret>> = api_for(client, &scope);
    let stream = watcher(api, watcher_config(None)).backoff(watch_backoff());
    let apply = |idx: &mut Index, m: PartialObjectMeta<Secret>, key: &Key| {
        apply_secret(
            idx,
            key,
            m.labels(),
            m.resource_version().unwrap_or_default(),
        )
    };
    let delete = |idx: &mut Index, key: &Key| {
        idx.releases.remove(key);
        idx.secret_versions.remove(key);
        idx.secret_keys.remove(key);
    };
    let sc = scope.clone();
    let relisted = move |idx: &mut Index, seen: &BTreeSet<Key>| {
        idx.releases
            .retain(|k, _| !in_scope(&sc, &k.0) || seen.contains(k));
        idx.secret_versions
            .retain(|k, _| !in_scope(&sc, &k.0) || seen.contains(k));
    };
    drive(
        stream,
        scope_name("Secret", &scope),
        feed,
        apply,
        delete,
        relisted,
    )
    .await
}

/// Watch the Flux controllers' Deployments in the Flux namespace (read-only), kept as the
/// little [`DeploymentState`] says; other Deployments there are not kept.
pub async fn watch_flux_deployments(client: Client, ns: String, feed: Feed) {
    let api: Api<Deployment> = Api::namespaced(client, &ns);
    let stream = watcher(api, watcher_config(None)).backoff(watch_backoff());
    drive(
        stream,
        scope_name("Deployment", &Some(ns)),
        feed,
        |idx: &mut Index, d: Deployment, key: &Key| {
            match DeploymentState::from_deployment(&d) {
                Some(s) => idx.flux_deployments.insert(key.clone(), s),
                None => idx.flux_deployments.remove(key),
            };
        },
        |idx, key| {
            idx.flux_deployments.remove(key);
        },
        |idx, seen| idx.flux_deployments.retain(|k, _| seen.contains(k)),
    )
    .await
}

/// Watch the pods of the Flux namespace (read-only): readiness and why containers wait or
/// restart, nothing else.
pub async fn watch_flux_pods(client: Client, ns: String, feed: Feed) {
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let stream = watcher(api, watcher_config(None)).backoff(watch_backoff());
    drive(
        stream,
        scope_name("Pod", &Some(ns)),
        feed,
        |idx: &mut Index, p: Pod, key: &Key| {
            idx.flux_pods.insert(key.clone(), PodState::from_pod(&p));
        },
        |idx, key| {
            idx.flux_pods.remove(key);
        },
        |idx, seen| idx.flux_pods.retain(|k, _| seen.contains(k)),
    )
    .await
}

/// Watch fluxmedic's own resources (`put` stores or removes one; `field` picks its map).
pub async fn watch_own<K>(
    client: Client,
    scope: Scope,
    feed: Feed,
    name: &'static str,
    labels: Option<String>,
    put: fn(&mut Index, Option<K>, (String, String)),
    field: fn(&mut Index) -> &mut BTreeMap<Key, Arc<K>>,
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
    let sc = scope.clone();
    let relisted = move |idx: &mut Index, seen: &BTreeSet<Key>| {
        field(idx).retain(|k, _| !in_scope(&sc, &k.0) || seen.contains(k));
    };
    let relist_every = forced_relist(name);
    loop {
        let stream =
            watcher(api.clone(), watcher_config(labels.as_deref())).backoff(watch_backoff());
        let stream = match relist_every {
            Some(d) => stream.take_until(tokio::time::sleep(d)).left_stream(),
            None => stream.right_stream(),
        };
        drive(
            stream,
            scope_name(name, &scope),
            feed.clone(),
            |idx, o, key| put(idx, Some(o), key.clone()),
            |idx, key| put(idx, None, key.clone()),
            relisted.clone(),
        )
        .await;
        if relist_every.is_none() {
            return;
        }
    }
}

/// Fault injection for the tests (unset in production): `FLUXMEDIC_RELIST_EVERY=<watch>:<ms>`
/// restarts that watch every so often, each time with a fresh list, as a watch that falls
/// behind the API server's history does.
fn forced_relist(watch: &str) -> Option<std::time::Duration> {
    let v = std::env::var("FLUXMEDIC_RELIST_EVERY").ok()?;
    let (w, ms) = v.split_once(':')?;
    (w == watch)
        .then(|| ms.parse().ok())
        .flatten()
        .map(std::time::Duration::from_millis)
}

pub fn put_policy(idx: &mut Index, p: Option<RemediationPolicy>, key: (String, String)) {
    match p {
        Some(mut p) => {
            p.metadata.managed_fields = None;
            idx.policies.insert(key, Arc::new(p));
        }
        None => {
            idx.policies.remove(&key);
        }
    }
}

pub fn put_remediation(idx: &mut Index, r: Option<Remediation>, key: (String, String)) {
    match r {
        Some(mut r) => {
            // Server-side apply bookkeeping is never read; it is most of a record's size.
            r.metadata.managed_fields = None;
            bound_record(&mut r);
            // Never go back to an older copy than one the engine itself just wrote.
            let newer = idx
                .remediations
                .get(&key)
                .is_some_and(|old| rv_num(old.as_ref()) > rv_num(&r));
            if !newer {
                idx.remediations.insert(key, Arc::new(r));
            }
        }
        None => {
            idx.remediations.remove(&key);
        }
    }
}

/// What a record may cost in memory, whoever wrote it: fluxmedic never writes more than
/// [`MAX_STEPS`] steps, [`MAX_EVIDENCE`] pieces of evidence or texts longer than
/// [`MAX_TEXT`]; a record past that was not written by fluxmedic as it stands, is cut to
/// those bounds (which breaks its seal) and read as such.
fn bound_record(r: &mut Remediation) {
    let cut = |s: &mut String| {
        if let Some((at, _)) = s.char_indices().nth(MAX_TEXT) {
            s.truncate(at);
        }
    };
    if let Some(st) = r.status.as_mut() {
        if st.steps.len() > crate::incident::MAX_STEPS {
            st.steps.truncate(crate::incident::MAX_STEPS + 1);
        }
        for step in &mut st.steps {
            cut(&mut step.message);
            step.detail.as_mut().map(cut);
            // An object too large to be fluxmedic's: dropped (the seal no longer verifies).
            if step
                .planned
                .as_ref()
                .is_some_and(|p| p.to_string().len() > MAX_TEXT)
            {
                step.planned = None;
            }
        }
        if let Some(d) = st.diagnosis.as_mut() {
            d.evidence.truncate(MAX_EVIDENCE + 1);
            cut(&mut d.summary);
            for e in &mut d.evidence {
                cut(&mut e.message);
            }
        }
        for s in [&mut st.message, &mut st.blocked, &mut st.frozen]
            .into_iter()
            .flatten()
        {
            cut(s);
        }
        if let Some(a) = st.approval.as_mut() {
            for s in [&mut a.action, &mut a.detail, &mut a.id, &mut a.how] {
                cut(s);
            }
            if a.planned
                .as_ref()
                .is_some_and(|p| p.to_string().len() > MAX_TEXT)
            {
                a.planned = None;
            }
        }
        st.conditions.truncate(MAX_EVIDENCE);
        st.rejections.truncate(crate::incident::MAX_REJECTIONS + 1);
        st.rejections.retain(|r| r.to_string().len() <= MAX_TEXT);
        for c in &mut st.conditions {
            cut(&mut c.message);
        }
    }
    if let Some(a) = r.metadata.annotations.as_mut() {
        a.retain(|k, _| k.starts_with("fluxmedic.io/"));
        for v in a.values_mut() {
            cut(v);
        }
    }
    r.metadata.labels = None;
}

/// Bounds of [`bound_record`]: far above what fluxmedic writes, far below what costs memory.
const MAX_TEXT: usize = 16 * 1024;
const MAX_EVIDENCE: usize = 64;

fn rv_num(r: &Remediation) -> u64 {
    r.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rem(rv: &str) -> Remediation {
        named("r", rv)
    }

    fn named(name: &str, rv: &str) -> Remediation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fluxmedic.io/v1alpha1", "kind": "Remediation",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                "managedFields": [{"manager": "fluxmedic", "operation": "Apply", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:status": {"f:phase": {}}}}]},
            "spec": {"target": {"kind": "Kustomization", "name": "app", "namespace": "ns"},
                     "targetName": "Kustomization/app", "case": "invalid-manifests"}}))
        .unwrap()
    }

    #[test]
    fn remediations_are_stored_without_managed_fields_and_never_go_back_in_time() {
        let mut idx = Index::default();
        let key = ("ns".to_string(), "r".to_string());
        put_remediation(&mut idx, Some(rem("20")), key.clone());
        let stored = &idx.remediations[&key];
        assert!(stored.metadata.managed_fields.is_none());
        assert_eq!(stored.metadata.resource_version.as_deref(), Some("20"));
        // A watch event older than what the engine itself wrote is ignored.
        put_remediation(&mut idx, Some(rem("10")), key.clone());
        assert_eq!(
            idx.remediations[&key].metadata.resource_version.as_deref(),
            Some("20")
        );
        put_remediation(&mut idx, None, key.clone());
        assert!(idx.remediations.is_empty());
    }

    /// A relist's list is taken right after it starts; a record the engine creates while the
    /// list's objects are being delivered is not in it, and its watch event comes only after
    /// the relist ends. Dropping it meanwhile let a pass see the target without its record
    /// and open a second one (a storm recorded every consumer twice).
    #[tokio::test]
    async fn a_relist_keeps_what_the_engine_wrote_during_it_and_drops_what_is_gone() {
        let feed = Feed {
            index: Arc::new(RwLock::new(Index::default())),
            notify: Arc::new(Notify::new()),
        };
        let key = |n: &str| ("ns".to_string(), n.to_string());
        {
            let mut idx = feed.index.write().await;
            put_remediation(&mut idx, Some(named("listed", "1")), key("listed"));
            put_remediation(&mut idx, Some(named("deleted", "2")), key("deleted"));
        }
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let task = tokio::spawn(watch_records_from(rx, feed.clone()));
        let send = |ev: watcher::Event<Remediation>| tx.unbounded_send(Ok(ev)).unwrap();
        send(watcher::Event::Init);
        feed.notify.notified().await;
        send(watcher::Event::InitApply(named("listed", "1")));
        feed.notify.notified().await;
        // Created by the engine after the list was taken, before the relist ends.
        feed.index
            .write()
            .await
            .wrote_record(named("created", "5"), key("created"));
        send(watcher::Event::InitDone);
        feed.notify.notified().await;
        let idx = feed.index.read().await;
        let names: Vec<&str> = idx.remediations.keys().map(|k| k.1.as_str()).collect();
        assert_eq!(
            names,
            ["created", "listed"],
            "the deleted one dropped, the new one kept"
        );
        assert!(
            idx.relisting.is_empty(),
            "nothing left over for the next relist"
        );
        drop(idx);
        // Outside a relist the engine's writes leave nothing behind either.
        feed.index
            .write()
            .await
            .wrote_record(named("later", "6"), key("later"));
        assert!(feed.index.read().await.relisting.is_empty());
        drop(tx);
        task.await.unwrap();
    }

    async fn watch_records_from(
        rx: futures::channel::mpsc::UnboundedReceiver<
            Result<watcher::Event<Remediation>, watcher::Error>,
        >,
        feed: Feed,
    ) {
        let sc: Scope = Some("ns".into());
        drive(
            rx,
            scope_name(RECORDS_WATCH, &sc),
            feed,
            |idx, o, key| put_remediation(idx, Some(o), key.clone()),
            |idx, key| put_remediation(idx, None, key.clone()),
            |idx, seen| idx.remediations.retain(|k, _| seen.contains(k)),
        )
        .await
    }
}
