//! Acting on the cluster, the Flux-native way. Every operation is idempotent: running it
//! again after a crash, with the same token, has no further effect.

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
    api::{FIELD_MANAGER, SUSPENDED_BY_ANNOTATION},
    diagnose::SecretInfo,
    error::{Error, Result},
    flux::{FluxKind, ObjectKey},
    helm::{self, StoredRelease},
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
    pub helm_bin: PathBuf,
    /// Paces every write (None: unlimited, for one-shot CLI reads).
    pub limiter: Option<std::sync::Arc<crate::controller::limiter::WriteLimiter>>,
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
    async fn throttle(&self) {
        if let Some(l) = &self.limiter {
            l.acquire().await;
        }
    }

    fn flux_api(&self, key: &ObjectKey) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &key.namespace, &api_resource(key.kind))
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
        self.throttle().await;
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

    /// Suspend or resume, marking who suspended it so a suspension is never orphaned.
    /// Returns the object's generation after the patch (from the response, no `get`).
    pub async fn set_suspend(
        &self,
        key: &ObjectKey,
        suspend: bool,
        owner: &str,
    ) -> Result<Option<i64>> {
        let patch = if suspend {
            json!({"metadata": {"annotations": {SUSPENDED_BY_ANNOTATION: owner}}, "spec": {"suspend": true}})
        } else {
            json!({"metadata": {"annotations": {SUSPENDED_BY_ANNOTATION: null}}, "spec": {"suspend": false}})
        };
        self.throttle().await;
        let o = self
            .flux_api(key)
            .patch(&key.name, &pp(), &Patch::Merge(patch))
            .await?;
        info!(target = %key, suspend, "set suspend");
        Ok(o.metadata.generation)
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

    /// Roll a release back to `to_version` with the helm binary. Skipped if the latest
    /// revision already is that rollback (a crash after helm ran).
    pub async fn helm_rollback(
        &self,
        ns: &str,
        release: &str,
        to_version: i64,
        timeout: Duration,
    ) -> Result<String> {
        let history = self.release_history(ns, release).await?;
        if let Some((latest, secret)) = history.last() {
            let data: BTreeMap<String, Vec<u8>> = secret
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, ByteString(v))| (k, v))
                .collect();
            let rel = helm::decode_secret(&latest.secret_name, &data)?;
            if rel.description() == Some(&format!("Rollback to {to_version}"))
                && latest.status.is_good()
            {
                return Ok(format!(
                    "revision {} already is the rollback to {to_version}",
                    latest.version
                ));
            }
        }
        if !history.iter().any(|(r, _)| r.version == to_version) {
            return Err(Error::Precondition(format!(
                "revision {to_version} of {ns}/{release} is gone from Helm storage"
            )));
        }
        self.throttle().await;
        let out = tokio::process::Command::new(&self.helm_bin)
            .args([
                "rollback",
                release,
                &to_version.to_string(),
                "--namespace",
                ns,
                "--timeout",
            ])
            .arg(format!("{}s", timeout.as_secs().max(30)))
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Error::Helm(format!("cannot run {}: {e}", self.helm_bin.display())))?;
        if !out.status.success() {
            return Err(Error::Helm(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(format!(
            "rolled back {ns}/{release} to revision {to_version}"
        ))
    }

    /// Unlock a stale pending release: mark it failed as helm-controller does (default), or
    /// delete its Secret. Preconditioned on the resourceVersion that was checked; a corrupt
    /// Secret is reported and left alone.
    pub async fn unlock(&self, ns: &str, secret_name: &str, delete: bool) -> Result<UnlockOutcome> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let Some(mut secret) = api.get_opt(secret_name).await? else {
            return Ok(UnlockOutcome::Gone);
        };
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let stored = StoredRelease::from_metadata(secret_name, ns, &labels).ok_or_else(|| {
            Error::Precondition(format!("{ns}/{secret_name} is not a Helm release Secret"))
        })?;
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, ByteString(v))| (k, v))
            .collect();
        let mut rel = helm::decode_secret(secret_name, &data)?;
        let status = rel.status().unwrap_or("unknown").to_string();
        if !stored.status.is_pending() || !helm::ReleaseStatus(status.clone()).is_pending() {
            return Ok(UnlockOutcome::AlreadyUnlocked { status });
        }
        if delete {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: secret.metadata.resource_version.clone(),
                    uid: secret.metadata.uid.clone(),
                }),
                ..Default::default()
            };
            self.throttle().await;
            api.delete(secret_name, &dp).await?;
            info!(secret = secret_name, ns, "deleted stale pending release");
            return Ok(UnlockOutcome::Deleted);
        }
        let previous = rel.mark_unlocked().map_err(Error::Precondition)?;
        let mut d = secret.data.take().unwrap_or_default();
        d.insert("release".into(), ByteString(rel.encode()));
        secret.data = Some(d);
        let l = secret.metadata.labels.get_or_insert_with(Default::default);
        l.insert("status".into(), "failed".into());
        l.insert(
            "modifiedAt".into(),
            jiff::Timestamp::now().as_second().to_string(),
        );
        // replace carries metadata.resourceVersion: a concurrent writer makes this a 409.
        self.throttle().await;
        api.replace(
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
