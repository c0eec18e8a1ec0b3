//! Acting on the cluster, the Flux-native way. Every operation is idempotent: running it
//! again after a crash, with the same token, has no further effect.

pub mod forge;
pub mod kubeconfig;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions},
    core::ApiResource,
};
use serde_json::json;
use tracing::info;

use crate::{
    api::{FIELD_MANAGER, HOLD_ANNOTATION, SUSPENDED_BY_ANNOTATION},
    diagnose::SecretInfo,
    error::{Error, Result},
    flux::{FluxKind, ObjectKey},
    helm::{self, StoredRelease},
    policy::{ReleaseRef, identity::ServiceAccountRef},
};

pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
pub const RESET_AT: &str = "reconcile.fluxcd.io/resetAt";
pub const FORCE_AT: &str = "reconcile.fluxcd.io/forceAt";

/// The ApiResource of a Flux kind, for dynamic API access.
pub fn api_resource(kind: FluxKind) -> ApiResource {
    ApiResource {
        group: kind.group().into(),
        version: kind.version().into(),
        api_version: format!("{}/{}", kind.group(), kind.version()),
        kind: kind.as_str().into(),
        plural: kind.plural().into(),
    }
}

/// A fresh reconcile token, as `flux reconcile` writes it (RFC 3339 with nanoseconds).
pub fn fresh_token() -> String {
    jiff::Timestamp::now().to_string()
}

fn pp() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

#[derive(Clone)]
pub struct Actuator {
    pub client: Client,
    /// The configuration `client` was made from: the base of the clients that act as another
    /// identity (Kubernetes impersonation). `None` (a read-only CLI): no Helm action can run.
    pub config: Option<kube::Config>,
    pub helm_bin: PathBuf,
    /// Paces every write (None: unlimited, for one-shot CLI reads).
    pub limiter: Option<std::sync::Arc<crate::limiter::WriteLimiter>>,
    /// The served version of each Flux kind (discovered); the default one when absent.
    pub apis: std::sync::Arc<std::collections::HashMap<FluxKind, ApiResource>>,
}

/// What an unlock found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum UnlockOutcome {
    Unlocked {
        previous: String,
    },
    Deleted,
    /// The release was no longer pending (someone, maybe helm-controller, got there first).
    AlreadyUnlocked {
        status: String,
    },
    Gone,
}

impl Actuator {
    async fn throttle(&self) -> Result<()> {
        if let Some(l) = &self.limiter {
            l.acquire().await?;
        }
        Ok(())
    }

    /// A client that acts as `who`: every request it makes is authorised for, and audited as,
    /// that ServiceAccount (fluxmedic's own rights only let it ask).
    fn client_as(&self, who: &ServiceAccountRef) -> Result<Client> {
        if !who.is_valid() {
            return Err(Error::NoIdentity(format!(
                "{:?}/{:?}",
                who.namespace, who.name
            )));
        }
        let mut config = self.config.clone().ok_or(Error::CannotImpersonate)?;
        config.auth_info.impersonate = Some(who.username());
        config.auth_info.impersonate_groups = None;
        config.auth_info.impersonate_uid = None;
        config.auth_info.impersonate_user_extra = None;
        Client::try_from(config).map_err(Error::from)
    }

    /// A private file (0600, removed when dropped) holding the kubeconfig helm runs with for
    /// `release`: fluxmedic's connection, acting as the release's identity.
    fn helm_kubeconfig(&self, release: &ReleaseRef) -> Result<tempfile::NamedTempFile> {
        // Checked again here, not only by the caller: this file is what helm acts as.
        self.client_as(&release.identity)?;
        let config = self.config.as_ref().ok_or(Error::CannotImpersonate)?;
        let kc = kubeconfig::impersonating(config, &release.identity, &release.storage_namespace);
        let failed =
            |e: &dyn std::fmt::Display| Error::Helm(format!("cannot write helm's kubeconfig: {e}"));
        // JSON, which client-go reads as YAML: no YAML 1.1 reading of a namespace named `no`.
        let text = serde_json::to_vec(&kc).map_err(|e| failed(&e))?;
        let mut file = tempfile::Builder::new()
            .prefix("helm-")
            .suffix(".kubeconfig")
            .tempfile_in(kubeconfig::private_dir().map_err(|e| failed(&e))?)
            .map_err(|e| failed(&e))?;
        std::io::Write::write_all(&mut file, &text).map_err(|e| failed(&e))?;
        Ok(file)
    }

    fn flux_api(&self, key: &ObjectKey) -> Api<DynamicObject> {
        let ar = self
            .apis
            .get(&key.kind)
            .cloned()
            .unwrap_or_else(|| api_resource(key.kind));
        Api::namespaced_with(self.client.clone(), &key.namespace, &ar)
    }

    /// Patch only the reconcile annotations, all with the same token, in one merge patch:
    /// requestedAt always, plus resetAt / forceAt when asked (`flux reconcile hr --reset --force`).
    pub async fn request_reconcile(
        &self,
        key: &ObjectKey,
        token: &str,
        reset: bool,
        force: bool,
    ) -> Result<()> {
        let mut ann = serde_json::Map::new();
        ann.insert(REQUESTED_AT.into(), json!(token));
        if reset {
            ann.insert(RESET_AT.into(), json!(token));
        }
        if force {
            ann.insert(FORCE_AT.into(), json!(token));
        }
        self.throttle().await?;
        self.flux_api(key)
            .patch(
                &key.name,
                &pp(),
                &Patch::Merge(json!({"metadata": {"annotations": ann}})),
            )
            .await?;
        info!(target = %key, token, reset, force, "requested reconcile");
        Ok(())
    }

    /// Suspend `key` on behalf of Remediation `owner`: `spec.suspend`, the owner's name and the
    /// sealed `hold` value, in one merge patch preconditioned on the object's uid and on the
    /// resourceVersion the decision was taken on (a recreated object, or one changed since —
    /// a fix pushed meanwhile — is not suspended: the API server answers 409 and the next pass
    /// decides on the new view). Returns the generation after the patch.
    pub async fn suspend(
        &self,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
        owner: &str,
        hold: &str,
    ) -> Result<Option<i64>> {
        if resource_version.is_empty() {
            return Err(Error::Unversioned(key.clone()));
        }
        let patch = json!({"metadata": {"uid": uid, "resourceVersion": resource_version,
                                        "annotations": {SUSPENDED_BY_ANNOTATION: owner, HOLD_ANNOTATION: hold}},
                           "spec": {"suspend": true}});
        self.throttle().await?;
        let o = self
            .flux_api(key)
            .patch(&key.name, &pp(), &Patch::Merge(patch))
            .await?;
        info!(target = %key, owner, "suspended");
        Ok(o.metadata.generation)
    }

    /// Resume `key` if, and only if, it still carries `owner`'s suspension: a JSON patch whose
    /// `test` operations make the API server refuse it if a person resumed, re-suspended or
    /// recreated the object meanwhile. Returns false (and changes nothing) in that case.
    pub async fn release_hold(&self, key: &ObjectKey, uid: &str, owner: &str) -> Result<bool> {
        let by = format!(
            "/metadata/annotations/{}",
            SUSPENDED_BY_ANNOTATION.replace('/', "~1")
        );
        let hold = format!(
            "/metadata/annotations/{}",
            HOLD_ANNOTATION.replace('/', "~1")
        );
        let ops = json!([
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "test", "path": by, "value": owner},
            {"op": "test", "path": "/spec/suspend", "value": true},
            {"op": "replace", "path": "/spec/suspend", "value": false},
            {"op": "remove", "path": by},
        ]);
        let mut ops: Vec<serde_json::Value> = serde_json::from_value(ops).unwrap_or_default();
        self.throttle().await?;
        let api = self.flux_api(key);
        // The hold annotation may be absent (a suspension from before seals): remove it only
        // if present, which a second attempt without it covers.
        let with_hold = {
            let mut v = ops.clone();
            v.push(json!({"op": "remove", "path": hold}));
            v
        };
        let attempt = |ops: Vec<serde_json::Value>| {
            let api = api.clone();
            async move {
                let patch: json_patch::Patch =
                    serde_json::from_value(serde_json::Value::Array(ops))
                        .map_err(|e| Error::BadPatch(e.to_string()))?;
                api.patch(&key.name, &pp(), &Patch::<()>::Json(patch))
                    .await
                    .map_err(Error::from)
            }
        };
        match attempt(with_hold).await {
            Ok(_) => {}
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 422 || s.code == 409 => {
                ops.truncate(5);
                match attempt(ops).await {
                    Ok(_) => {}
                    Err(Error::Kube(kube::Error::Api(s))) if s.code == 422 || s.code == 409 => {
                        info!(target = %key, owner, "not resumed: the suspension is no longer fluxmedic's");
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        info!(target = %key, owner, "resumed");
        Ok(true)
    }

    async fn release_history(
        &self,
        ns: &str,
        release: &str,
    ) -> Result<Vec<(StoredRelease, Secret)>> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().labels(&format!("owner=helm,name={release}"));
        let mut out = vec![];
        for s in secrets.list(&lp).await?.items {
            let name = s.metadata.name.clone().unwrap_or_default();
            let labels = s.metadata.labels.clone().unwrap_or_default();
            if let Some(r) = StoredRelease::from_metadata(&name, ns, &labels) {
                out.push((r, s));
            }
        }
        out.sort_by_key(|(r, _)| r.version);
        Ok(out)
    }

    async fn latest_decoded(
        &self,
        release: &ReleaseRef,
    ) -> Result<(
        Vec<StoredRelease>,
        Option<(StoredRelease, Secret, helm::Release)>,
    )> {
        let history = self
            .release_history(&release.storage_namespace, &release.name)
            .await?;
        let stored: Vec<StoredRelease> = history.iter().map(|(r, _)| r.clone()).collect();
        let latest = match history.into_iter().last() {
            Some((r, secret)) => {
                let rel = decode(&r.secret_name, secret_data(&secret)).await?;
                Some((r, secret, rel))
            }
            None => None,
        };
        Ok((stored, latest))
    }

    /// A pending-rollback to `to_version` left by a helm fluxmedic ran and stopped (killed at
    /// its timeout, at shutdown, or with the process): marked failed so the lock it holds is
    /// gone. Returns whether there was one.
    pub async fn clear_own_rollback_lock(
        &self,
        release: &ReleaseRef,
        to_version: i64,
        why: &str,
    ) -> Result<bool> {
        let (_, latest) = self.latest_decoded(release).await?;
        let Some((stored, mut secret, mut rel)) = latest else {
            return Ok(false);
        };
        let ours = rel.status() == Some("pending-rollback")
            && rel.description() == Some(&format!("Rollback to {to_version}"));
        if !ours {
            return Ok(false);
        }
        rel.mark_failed(format!(
            "Rollback to {to_version} stopped by fluxmedic: {why}"
        ))
        .map_err(Error::Codec)?;
        let mut d = secret.data.take().unwrap_or_default();
        d.insert("release".into(), ByteString(encode(rel).await?));
        secret.data = Some(d);
        let l = secret.metadata.labels.get_or_insert_with(Default::default);
        l.insert("status".into(), "failed".into());
        l.insert(
            "modifiedAt".into(),
            jiff::Timestamp::now().as_second().to_string(),
        );
        self.throttle().await?;
        Api::<Secret>::namespaced(
            self.client_as(&release.identity)?,
            &release.storage_namespace,
        )
        .replace(
            &stored.secret_name,
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &secret,
        )
        .await?;
        info!(secret = %stored.secret_name, "cleared the lock of an interrupted rollback");
        Ok(true)
    }

    /// Roll a release back to `to_version` with the helm binary, as the identity
    /// helm-controller uses for the release (`release.identity`), never as fluxmedic.
    /// Skipped if the latest revision already is that rollback (a crash after helm ran); a
    /// pending-rollback an earlier run of fluxmedic left is cleared first. helm is killed if
    /// it outlives `timeout` plus a minute or `stop` fires, and the lock it leaves is cleared.
    pub async fn helm_rollback(
        &self,
        release: &ReleaseRef,
        to_version: i64,
        timeout: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<String> {
        // Refused before anything is read or written when there is no identity to act as.
        self.client_as(&release.identity)?;
        let (stored, latest) = self.latest_decoded(release).await?;
        if let Some((latest, _, rel)) = &latest {
            if rel.description() == Some(&format!("Rollback to {to_version}"))
                && latest.status.is_good()
            {
                return Ok(format!(
                    "revision {} already is the rollback to {to_version}",
                    latest.version
                ));
            }
            if rel.status() == Some("pending-rollback") {
                self.clear_own_rollback_lock(release, to_version, "a previous run was interrupted")
                    .await?;
            }
        }
        if !stored.iter().any(|r| r.version == to_version) {
            return Err(Error::RevisionGone {
                release: format!("{}/{}", release.storage_namespace, release.name),
                revision: to_version,
            });
        }
        self.throttle().await?;
        let helm_timeout = timeout.max(Duration::from_secs(30));
        // As the identity helm-controller uses for this release, always (an invalid one is
        // refused above): never with fluxmedic's own rights. Written into the kubeconfig helm
        // runs with (in a pod, helm drops `--kube-as-user` along with its in-cluster config),
        // and given as the flag too; no environment variable of helm's can add to or replace
        // either (HELM_KUBEASGROUPS would add groups, HELM_KUBETOKEN another credential).
        let kubeconfig = self.helm_kubeconfig(release)?;
        let mut cmd = tokio::process::Command::new(&self.helm_bin);
        for (var, _) in std::env::vars_os() {
            let v = var.to_string_lossy();
            if v.starts_with("HELM_KUBE") || v == "HELM_NAMESPACE" || v == "KUBECONFIG" {
                cmd.env_remove(&var);
            }
        }
        cmd.arg("rollback")
            .arg("--kubeconfig")
            .arg(kubeconfig.path())
            .arg("--kube-as-user")
            .arg(release.identity.username())
            .args(["--namespace", &release.storage_namespace, "--timeout"])
            .arg(format!("{}s", helm_timeout.as_secs()))
            // Names after `--`: never read as flags.
            .args(["--", &release.name, &to_version.to_string()])
            .kill_on_drop(true);
        let hard = helm_timeout.saturating_add(Duration::from_secs(60));
        let stopped = async {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let why = tokio::select! {
            out = cmd.output() => {
                let out = out.map_err(|e| Error::Helm(format!("cannot run {}: {e}", self.helm_bin.display())))?;
                if out.status.success() {
                    return Ok(format!(
                        "rolled back {}/{} to revision {to_version}",
                        release.storage_namespace, release.name
                    ));
                }
                // helm's own words, but only their end: a chart can make them as long as it
                // likes, and a record must stay far below the API's object size limit.
                let err = tail(String::from_utf8_lossy(&out.stderr).trim(), 2048);
                self.clear_own_rollback_lock(release, to_version, "helm failed").await.ok();
                return Err(Error::Helm(err));
            }
            _ = tokio::time::sleep(hard) => format!("helm ran longer than {}s", hard.as_secs()),
            _ = stopped => "fluxmedic is shutting down".to_string(),
        };
        // helm was killed (kill_on_drop): leave no lock of fluxmedic's making.
        self.clear_own_rollback_lock(release, to_version, &why)
            .await?;
        Err(Error::Timeout(format!(
            "rollback to {to_version} stopped: {why}"
        )))
    }

    /// Unlock a stale pending release: mark it failed as helm-controller does (default), or
    /// delete its Secret. Preconditioned on the resourceVersion that was checked; a corrupt
    /// Secret is reported and left alone.
    ///
    /// The Secret must verifiably be `expected`'s: in its storage namespace, and a payload
    /// naming that release and its namespace. Anything else is refused, never written.
    pub async fn unlock(
        &self,
        ns: &str,
        secret_name: &str,
        delete: bool,
        expected: &ReleaseRef,
    ) -> Result<UnlockOutcome> {
        if ns != expected.storage_namespace {
            return Err(Error::NotReleaseStorage {
                secret: format!("{ns}/{secret_name}"),
                release: expected.name.clone(),
                why: format!("its storage namespace is {}", expected.storage_namespace),
            });
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let Some(mut secret) = api.get_opt(secret_name).await? else {
            return Ok(UnlockOutcome::Gone);
        };
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let stored = StoredRelease::from_metadata(secret_name, ns, &labels).ok_or_else(|| {
            Error::NotReleaseStorage {
                secret: format!("{ns}/{secret_name}"),
                release: expected.name.clone(),
                why: "not a Helm release Secret".into(),
            }
        })?;
        let data = secret_data(&secret);
        let mut rel = decode(secret_name, data).await?;
        let payload_ns = rel.namespace();
        if stored.release != expected.name || payload_ns.is_some_and(|n| n != expected.namespace) {
            return Err(Error::NotReleaseStorage {
                secret: format!("{ns}/{secret_name}"),
                release: format!("{}/{}", expected.namespace, expected.name),
                why: format!(
                    "it holds release {}/{}",
                    payload_ns.unwrap_or("?"),
                    stored.release
                ),
            });
        }
        let status = rel.status().unwrap_or("unknown").to_string();
        if !stored.status.is_pending() || !helm::ReleaseStatus(status.clone()).is_pending() {
            return Ok(UnlockOutcome::AlreadyUnlocked { status });
        }
        // The write goes in as the release's identity: what that identity may not do,
        // fluxmedic does not do for it.
        let api_as: Api<Secret> = Api::namespaced(self.client_as(&expected.identity)?, ns);
        if delete {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: secret.metadata.resource_version.clone(),
                    uid: secret.metadata.uid.clone(),
                }),
                ..Default::default()
            };
            self.throttle().await?;
            api_as.delete(secret_name, &dp).await?;
            info!(secret = secret_name, ns, "deleted stale pending release");
            return Ok(UnlockOutcome::Deleted);
        }
        let previous = rel.mark_unlocked().map_err(Error::Codec)?;
        let mut d = secret.data.take().unwrap_or_default();
        d.insert("release".into(), ByteString(encode(rel).await?));
        secret.data = Some(d);
        let l = secret.metadata.labels.get_or_insert_with(Default::default);
        l.insert("status".into(), "failed".into());
        l.insert(
            "modifiedAt".into(),
            jiff::Timestamp::now().as_second().to_string(),
        );
        // replace carries metadata.resourceVersion: a concurrent writer makes this a 409.
        self.throttle().await?;
        api_as
            .replace(
                secret_name,
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &secret,
            )
            .await?;
        info!(
            secret = secret_name,
            ns, previous, "unlocked stale pending release"
        );
        Ok(UnlockOutcome::Unlocked { previous })
    }

    /// Key names and resourceVersion of a Secret (values are never read into memory
    /// beyond this call, and never logged).
    pub async fn secret_info(&self, ns: &str, name: &str) -> Result<Option<SecretInfo>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.map(|s| SecretInfo {
            keys: s
                .data
                .unwrap_or_default()
                .into_keys()
                .chain(s.string_data.unwrap_or_default().into_keys())
                .collect(),
            resource_version: s.metadata.resource_version,
        }))
    }
}

/// The last `max` characters of `s` (whole characters), marked as cut when cut.
fn tail(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    format!("…{}", s.chars().skip(n - max).collect::<String>())
}

/// One release payload decoded at a time, off the async threads: whatever a payload holds,
/// fluxmedic's memory grows by one bounded decode ([`helm::MAX_INFLATED`]), never by one
/// per target.
static DECODING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

async fn decode(name: &str, data: BTreeMap<String, Vec<u8>>) -> Result<helm::Release> {
    let _one = DECODING
        .acquire()
        .await
        .map_err(|e| Error::Codec(e.to_string()))?;
    let name = name.to_string();
    tokio::task::spawn_blocking(move || helm::decode_secret(&name, &data))
        .await
        .map_err(|e| Error::Codec(format!("decoding stopped: {e}")))?
        .map_err(Error::from)
}

/// Re-encode an edited release (gzip at best compression), as bounded as [`decode`].
async fn encode(rel: helm::Release) -> Result<Vec<u8>> {
    let _one = DECODING
        .acquire()
        .await
        .map_err(|e| Error::Codec(e.to_string()))?;
    tokio::task::spawn_blocking(move || rel.encode())
        .await
        .map_err(|e| Error::Codec(format!("encoding stopped: {e}")))?
        .map_err(Error::Codec)
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, ByteString(v))| (k, v))
        .collect()
}
