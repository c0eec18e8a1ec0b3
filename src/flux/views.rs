//! serde views of each Flux kind: only the fields fluxmedic reads, unknown fields ignored.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use super::{
    Condition, FluxKind, FluxObject, HelmReleaseInfo, ObjectKey, ReleaseSnapshot, ReleaseStrategy,
    parse_go_duration,
};

/// Why a document could not be read as a Flux object. Names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not an object")]
    NotAnObject,
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("kind `{0}` is not a Flux kind fluxmedic reads")]
    UnknownKind(String),
    #[error("apiVersion `{api_version}` is not a known version of {kind}")]
    UnknownVersion { kind: String, api_version: String },
    #[error("field `{path}`: {message}")]
    Field { path: String, message: String },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    generation: Option<i64>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct NamedRef {
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SecretRef {
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct KustomizationSpec {
    #[serde(default)]
    depends_on: Vec<NamedRef>,
    #[serde(default)]
    source_ref: Option<NamedRef>,
    #[serde(default)]
    suspend: bool,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    retry_interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CommonStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    observed_generation: Option<i64>,
    #[serde(default)]
    last_attempted_revision: Option<String>,
    #[serde(default)]
    last_applied_revision: Option<String>,
    #[serde(default)]
    artifact: Option<Artifact>,
    #[serde(default)]
    last_handled_reconcile_at: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Artifact {
    #[serde(default)]
    revision: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HelmChartTemplate {
    #[serde(default)]
    spec: HelmChartTemplateSpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HelmChartTemplateSpec {
    #[serde(default)]
    source_ref: Option<NamedRef>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Strategy {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Remediation {
    #[serde(default)]
    retries: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ReleaseAction {
    #[serde(default)]
    remediation: Option<Remediation>,
    #[serde(default)]
    strategy: Option<Strategy>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HelmReleaseSpec {
    #[serde(default)]
    depends_on: Vec<NamedRef>,
    #[serde(default)]
    chart: Option<HelmChartTemplate>,
    #[serde(default)]
    chart_ref: Option<NamedRef>,
    #[serde(default)]
    suspend: bool,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    release_name: Option<String>,
    #[serde(default)]
    target_namespace: Option<String>,
    #[serde(default)]
    storage_namespace: Option<String>,
    #[serde(default)]
    install: Option<ReleaseAction>,
    #[serde(default)]
    upgrade: Option<ReleaseAction>,
    /// Only its presence matters: the release lives in another cluster.
    #[serde(default)]
    kube_config: Option<Value>,
    #[serde(default)]
    service_account_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HelmReleaseStatus {
    #[serde(default)]
    conditions: Vec<Condition>,
    #[serde(default)]
    observed_generation: Option<i64>,
    #[serde(default)]
    history: Vec<ReleaseSnapshot>,
    #[serde(default)]
    failures: i64,
    #[serde(default)]
    install_failures: i64,
    #[serde(default)]
    upgrade_failures: i64,
    #[serde(default)]
    last_attempted_release_action: Option<String>,
    #[serde(default)]
    last_attempted_revision: Option<String>,
    #[serde(default)]
    last_attempted_config_digest: Option<String>,
    #[serde(default)]
    last_attempted_generation: Option<i64>,
    #[serde(default)]
    storage_namespace: Option<String>,
    #[serde(default)]
    helm_chart: Option<String>,
    #[serde(default)]
    last_handled_reconcile_at: Option<String>,
    #[serde(default)]
    last_handled_force_at: Option<String>,
    #[serde(default)]
    last_handled_reset_at: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SourceSpec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    secret_ref: Option<SecretRef>,
    #[serde(default)]
    suspend: bool,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    /// HelmChart only.
    #[serde(default)]
    source_ref: Option<NamedRef>,
    /// Bucket only: `host[:port]`, reached over HTTP when `insecure`.
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    insecure: Option<Value>,
}

fn field<T: DeserializeOwned + Default>(obj: &Value, name: &'static str) -> Result<T, ParseError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_path_to_error::deserialize(v).map_err(|e| ParseError::Field {
            path: if e.path().to_string() == "." {
                name.to_string()
            } else {
                format!("{name}.{}", e.path())
            },
            message: e.inner().to_string(),
        }),
    }
}

fn duration_field(raw: Option<String>, path: &str) -> Result<Option<Duration>, ParseError> {
    match raw {
        None => Ok(None),
        Some(s) => parse_go_duration(&s)
            .map(Some)
            .ok_or_else(|| ParseError::Field {
                path: path.to_string(),
                message: format!("`{s}` is not a duration"),
            }),
    }
}

fn known_version(kind: FluxKind, api_version: &str) -> bool {
    let Some((group, version)) = api_version.split_once('/') else {
        return false;
    };
    if group != kind.group() {
        return false;
    }
    match kind {
        // v2beta2 is still served by helm-controller v1.x and has the same status shape.
        FluxKind::HelmRelease => matches!(version, "v2" | "v2beta2"),
        FluxKind::Kustomization => matches!(version, "v1" | "v1beta2"),
        _ => matches!(version, "v1" | "v1beta2"),
    }
}

fn strategy(action: &Option<ReleaseAction>) -> Option<ReleaseStrategy> {
    match action.as_ref()?.strategy.as_ref()?.name.as_deref()? {
        "RetryOnFailure" => Some(ReleaseStrategy::RetryOnFailure),
        "RemediateOnFailure" => Some(ReleaseStrategy::RemediateOnFailure),
        _ => None,
    }
}

fn retries(action: &Option<ReleaseAction>) -> i64 {
    action
        .as_ref()
        .and_then(|a| a.remediation.as_ref())
        .and_then(|r| r.retries)
        .unwrap_or(0)
}

/// Read one Flux object from its JSON form (as the API server or `kubectl get -o json` returns it).
pub fn from_value(value: &Value) -> Result<FluxObject, ParseError> {
    let kind = read_kind(value)?;
    if value.get("metadata").and_then(|m| m.get("name")).is_none() {
        return Err(ParseError::Missing("metadata.name"));
    }
    let meta: Meta = field(value, "metadata")?;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let name = meta.name.clone();
    let mut out = base_object(kind, &namespace, meta);
    let mut refs = Refs {
        kind,
        namespace: &namespace,
        unknown_source: None,
    };
    match kind {
        FluxKind::Kustomization => read_kustomization(value, &mut out, &mut refs)?,
        FluxKind::HelmRelease => read_helmrelease(value, &name, &mut out, &mut refs)?,
        _ => read_source(value, kind, &mut out, &mut refs)?,
    }
    out.unknown_source = refs.unknown_source;
    bound(&mut out);
    Ok(out)
}

/// The object's kind, when it is a Flux kind in a version fluxmedic reads.
fn read_kind(value: &Value) -> Result<FluxKind, ParseError> {
    let obj = value.as_object().ok_or(ParseError::NotAnObject)?;
    let kind_str = obj
        .get("kind")
        .and_then(Value::as_str)
        .ok_or(ParseError::Missing("kind"))?;
    let kind = FluxKind::from_kind(kind_str)
        .ok_or_else(|| ParseError::UnknownKind(kind_str.to_string()))?;
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or(ParseError::Missing("apiVersion"))?;
    if !known_version(kind, api_version) {
        return Err(ParseError::UnknownVersion {
            kind: kind_str.to_string(),
            api_version: api_version.to_string(),
        });
    }
    Ok(kind)
}

/// What every kind has: identity, labels, the annotations fluxmedic reads.
fn base_object(kind: FluxKind, namespace: &str, meta: Meta) -> FluxObject {
    let reconcile_annotations = meta
        .annotations
        .into_iter()
        .filter(|(k, _)| k.starts_with("reconcile.fluxcd.io/") || k.starts_with("fluxmedic.io/"))
        .collect();
    FluxObject {
        key: ObjectKey::new(kind, namespace, meta.name),
        uid: meta.uid,
        generation: meta.generation,
        resource_version: meta.resource_version,
        observed_generation: None,
        labels: meta.labels,
        reconcile_annotations,
        suspended: false,
        conditions: vec![],
        depends_on: vec![],
        source_ref: None,
        unknown_source: None,
        secret_ref: None,
        url: None,
        artifact_revision: None,
        last_attempted_revision: None,
        last_handled_reconcile_at: None,
        path: None,
        last_applied_revision: None,
        interval: None,
        retry_interval: None,
        timeout: None,
        helm: None,
    }
}

/// References from one object, resolved in its namespace.
struct Refs<'a> {
    kind: FluxKind,
    namespace: &'a str,
    /// A sourceRef of a kind fluxmedic does not know, kept as text.
    unknown_source: Option<String>,
}

impl Refs<'_> {
    fn dependencies(&self, deps: Vec<NamedRef>) -> Vec<ObjectKey> {
        deps.into_iter()
            .map(|d| {
                ObjectKey::new(
                    self.kind,
                    d.namespace.unwrap_or_else(|| self.namespace.to_string()),
                    d.name,
                )
            })
            .collect()
    }

    /// A sourceRef of a kind fluxmedic does not know is kept as text, never guessed to be
    /// the default kind (an ExternalArtifact named like a GitRepository is not that repository).
    fn source(&mut self, r: NamedRef, default_kind: FluxKind) -> Option<ObjectKey> {
        let k = match r.kind.as_deref() {
            None | Some("") => default_kind,
            Some(other) => match FluxKind::from_kind(other) {
                Some(k) => k,
                None => {
                    self.unknown_source = Some(format!("{other}/{}", r.name));
                    return None;
                }
            },
        };
        Some(ObjectKey::new(
            k,
            r.namespace.unwrap_or_else(|| self.namespace.to_string()),
            r.name,
        ))
    }
}

fn read_kustomization(
    value: &Value,
    out: &mut FluxObject,
    refs: &mut Refs<'_>,
) -> Result<(), ParseError> {
    let spec: KustomizationSpec = field(value, "spec")?;
    let status: CommonStatus = field(value, "status")?;
    out.depends_on = refs.dependencies(spec.depends_on);
    out.source_ref = spec
        .source_ref
        .and_then(|r| refs.source(r, FluxKind::GitRepository));
    out.suspended = spec.suspend;
    out.interval = duration_field(spec.interval, "spec.interval")?;
    out.retry_interval = duration_field(spec.retry_interval, "spec.retryInterval")?;
    out.timeout = duration_field(spec.timeout, "spec.timeout")?;
    out.conditions = status.conditions;
    out.observed_generation = status.observed_generation;
    out.last_attempted_revision = status.last_attempted_revision;
    out.last_applied_revision = status.last_applied_revision;
    out.path = spec.path;
    out.last_handled_reconcile_at = status.last_handled_reconcile_at;
    Ok(())
}

fn read_helmrelease(
    value: &Value,
    name: &str,
    out: &mut FluxObject,
    refs: &mut Refs<'_>,
) -> Result<(), ParseError> {
    let mut spec: HelmReleaseSpec = field(value, "spec")?;
    let mut status: HelmReleaseStatus = field(value, "status")?;
    let namespace = refs.namespace.to_string();
    out.depends_on = refs.dependencies(std::mem::take(&mut spec.depends_on));
    out.source_ref = if let Some(r) = spec.chart_ref.take() {
        refs.source(r, FluxKind::OCIRepository)
    } else if let Some((ns, chart)) = status.helm_chart.as_deref().and_then(|s| s.split_once('/')) {
        Some(ObjectKey::new(FluxKind::HelmChart, ns, chart))
    } else {
        spec.chart
            .as_ref()
            .and_then(|c| c.spec.source_ref.as_ref())
            .map(|r| {
                let ns = r.namespace.clone().unwrap_or_else(|| namespace.clone());
                ObjectKey::new(FluxKind::HelmChart, ns, format!("{namespace}-{name}"))
            })
    };
    out.suspended = spec.suspend;
    out.interval = duration_field(spec.interval.clone(), "spec.interval")?;
    out.timeout = duration_field(spec.timeout.clone(), "spec.timeout")?;
    out.conditions = std::mem::take(&mut status.conditions);
    out.observed_generation = status.observed_generation;
    out.last_handled_reconcile_at = status.last_handled_reconcile_at.clone();
    out.last_attempted_revision = status.last_attempted_revision.clone();
    out.helm = Some(Box::new(helm_info(
        spec,
        status,
        &namespace,
        name,
        out.timeout,
    )?));
    Ok(())
}

/// Where a HelmRelease's release lives and how helm-controller retries it.
fn helm_info(
    spec: HelmReleaseSpec,
    status: HelmReleaseStatus,
    namespace: &str,
    name: &str,
    timeout: Option<Duration>,
) -> Result<HelmReleaseInfo, ParseError> {
    let action_timeout = |a: &Option<ReleaseAction>, path: &str| {
        duration_field(a.as_ref().and_then(|a| a.timeout.clone()), path)
    };
    let install_timeout = action_timeout(&spec.install, "spec.install.timeout")?;
    let upgrade_timeout = action_timeout(&spec.upgrade, "spec.upgrade.timeout")?;
    // Exactly as helm-controller derives them (GetReleaseName + ShortenName,
    // GetStorageNamespace, GetReleaseNamespace): from the spec, never from the status,
    // which only serves to cross-check.
    let release_name = super::shorten_release_name(&match (
        spec.release_name.as_deref().filter(|r| !r.is_empty()),
        spec.target_namespace.as_deref().filter(|t| !t.is_empty()),
    ) {
        (Some(r), _) => r.to_string(),
        (None, Some(t)) => format!("{t}-{name}"),
        (None, None) => name.to_string(),
    });
    let or_own = |s: &Option<String>| {
        s.clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| namespace.to_string())
    };
    let base = timeout.unwrap_or(Duration::from_secs(300));
    Ok(HelmReleaseInfo {
        release_name,
        storage_namespace: or_own(&spec.storage_namespace),
        release_namespace: or_own(&spec.target_namespace),
        status_storage_namespace: status.storage_namespace.filter(|s| !s.is_empty()),
        remote: spec.kube_config.is_some_and(|v| !v.is_null()),
        service_account: spec.service_account_name.filter(|s| !s.is_empty()),
        timeout: base
            .max(install_timeout.unwrap_or(base))
            .max(upgrade_timeout.unwrap_or(base)),
        install_retries: retries(&spec.install),
        upgrade_retries: retries(&spec.upgrade),
        install_strategy: strategy(&spec.install),
        upgrade_strategy: strategy(&spec.upgrade),
        failures: status.failures,
        install_failures: status.install_failures,
        upgrade_failures: status.upgrade_failures,
        last_attempted_release_action: status.last_attempted_release_action,
        last_attempted_revision: status.last_attempted_revision,
        last_attempted_config_digest: status.last_attempted_config_digest,
        last_attempted_generation: status.last_attempted_generation,
        history: status.history,
        last_handled_reconcile_at: status.last_handled_reconcile_at,
        last_handled_force_at: status.last_handled_force_at,
        last_handled_reset_at: status.last_handled_reset_at,
        helm_chart: status.helm_chart,
    })
}

fn read_source(
    value: &Value,
    kind: FluxKind,
    out: &mut FluxObject,
    refs: &mut Refs<'_>,
) -> Result<(), ParseError> {
    let spec: SourceSpec = field(value, "spec")?;
    let status: CommonStatus = field(value, "status")?;
    out.url = match (kind, spec.endpoint) {
        // A Bucket's address, as its client reaches it (what fluxmedic's own
        // reachability check needs).
        (FluxKind::Bucket, Some(e)) if !e.is_empty() && spec.url.is_none() => {
            let scheme = if spec.insecure == Some(Value::Bool(true)) {
                "http"
            } else {
                "https"
            };
            Some(format!("{scheme}://{e}"))
        }
        _ => spec.url,
    };
    out.secret_ref = spec.secret_ref.map(|s| s.name);
    out.suspended = spec.suspend;
    out.interval = duration_field(spec.interval, "spec.interval")?;
    out.timeout = duration_field(spec.timeout, "spec.timeout")?;
    if kind == FluxKind::HelmChart {
        out.source_ref = spec
            .source_ref
            .and_then(|r| refs.source(r, FluxKind::HelmRepository));
    }
    out.conditions = status.conditions;
    out.observed_generation = status.observed_generation;
    out.artifact_revision = status.artifact.and_then(|a| a.revision);
    out.last_handled_reconcile_at = status.last_handled_reconcile_at;
    Ok(())
}

/// Most of each list a Flux object carries that fluxmedic keeps: far above what Flux writes
/// or a person sets, far below what an object stuffed to the API's size limit would cost.
pub const MAX_LIST: usize = 64;
/// Longest condition message kept (Flux's own are a few hundred characters).
pub const MAX_MESSAGE: usize = 4096;

/// Keep at most [`MAX_LIST`] of each list (the first ones: dependencies in order, the
/// newest history, Flux's conditions) and of the labels, and bounded messages. An object with
/// more labels is matched by selectors on its first [`MAX_LIST`] (in name order).
fn bound(o: &mut FluxObject) {
    o.depends_on.truncate(MAX_LIST);
    o.conditions.truncate(MAX_LIST);
    for c in &mut o.conditions {
        if let Some((at, _)) = c.message.char_indices().nth(MAX_MESSAGE) {
            c.message.truncate(at);
        }
    }
    if o.labels.len() > MAX_LIST {
        o.labels = std::mem::take(&mut o.labels)
            .into_iter()
            .take(MAX_LIST)
            .collect();
    }
    if let Some(h) = o.helm.as_mut() {
        h.history.truncate(MAX_LIST);
    }
    // A path or revision no Flux controller or person writes: not kept rather than cut (a cut
    // one would name another path or commit).
    for s in [&mut o.path, &mut o.last_applied_revision] {
        if s.as_ref().is_some_and(|v| v.len() > MAX_REF) {
            *s = None;
        }
    }
}

/// Longest path or revision kept (a Flux revision is about 60 characters).
pub const MAX_REF: usize = 1024;

#[cfg(test)]
mod bound_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_list_an_object_carries_is_bounded() {
        let deps: Vec<_> = (0..10_000)
            .map(|i| json!({"name": format!("d{i}")}))
            .collect();
        let labels: serde_json::Map<String, Value> = (0..1000)
            .map(|i| (format!("l{i:04}"), json!("x")))
            .collect();
        let conds: Vec<_> = (0..500)
            .map(|i| json!({"type": format!("T{i}"), "status": "False", "reason": "R", "message": "m".repeat(100_000)}))
            .collect();
        let o = from_value(
            &json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "a", "namespace": "n", "labels": labels},
            "spec": {"dependsOn": deps, "sourceRef": {"kind": "GitRepository", "name": "r"}},
            "status": {"conditions": conds}}),
        )
        .unwrap();
        assert_eq!(o.depends_on.len(), MAX_LIST);
        assert_eq!(o.depends_on[0].name, "d0", "the first ones, in order");
        assert_eq!(o.labels.len(), MAX_LIST);
        assert_eq!(o.conditions.len(), MAX_LIST);
        assert!(o.conditions.iter().all(|c| c.message.len() <= MAX_MESSAGE));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn helmrelease_view_reads_what_it_needs_and_ignores_the_rest() {
        let hr = json!({
            "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": "podinfo", "namespace": "apps", "generation": 3,
                         "annotations": {"reconcile.fluxcd.io/requestedAt": "t1", "other": "x"}},
            "spec": {"interval": "10m", "timeout": "2m", "targetNamespace": "web",
                     "chart": {"spec": {"chart": "podinfo", "sourceRef": {"kind": "HelmRepository", "name": "repo", "namespace": "flux-system"}}},
                     "upgrade": {"remediation": {"retries": 2}, "timeout": "7m", "strategy": {"name": "RetryOnFailure"}},
                     "dependsOn": [{"name": "db"}, {"name": "cache", "namespace": "infra"}],
                     "someFutureField": {"a": 1}},
            "status": {"upgradeFailures": 3, "lastAttemptedReleaseAction": "upgrade",
                       "history": [{"name": "web-podinfo", "namespace": "web", "version": 4, "status": "failed", "chartVersion": "6.0.1"}],
                       "conditions": [{"type": "Ready", "status": "False", "reason": "UpgradeFailed", "message": "boom",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        });
        let o = from_value(&hr).unwrap();
        assert_eq!(
            o.key,
            ObjectKey::new(FluxKind::HelmRelease, "apps", "podinfo")
        );
        assert_eq!(
            o.depends_on,
            vec![
                ObjectKey::new(FluxKind::HelmRelease, "apps", "db"),
                ObjectKey::new(FluxKind::HelmRelease, "infra", "cache")
            ]
        );
        assert_eq!(
            o.source_ref,
            Some(ObjectKey::new(
                FluxKind::HelmChart,
                "flux-system",
                "apps-podinfo"
            ))
        );
        assert_eq!(o.reconcile_annotations.len(), 1);
        let h = o.helm.clone().unwrap();
        assert_eq!(h.release_name, "web-podinfo");
        assert_eq!(h.release_namespace, "web");
        assert_eq!(
            h.storage_namespace, "apps",
            "storage defaults to the HelmRelease's namespace, not the target namespace"
        );
        assert!(!h.remote);
        assert_eq!(h.service_account, None);
        assert_eq!(h.timeout, Duration::from_secs(420));
        assert_eq!(h.upgrade_retries, 2);
        assert_eq!(h.upgrade_strategy, Some(ReleaseStrategy::RetryOnFailure));
        assert_eq!(h.upgrade_failures, 3);
        assert!(o.is_failing());
    }

    #[test]
    fn release_identity_follows_helm_controller_and_flags_remote_and_impersonated_releases() {
        let long = "a-helm-release-with-a-name-long-enough-to-need-shortening";
        let hr = json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": long, "namespace": "team"},
            "spec": {"targetNamespace": "prod", "storageNamespace": "prod",
                     "kubeConfig": {"secretRef": {"name": "remote"}}, "serviceAccountName": "deployer",
                     "chartRef": {"kind": "ExternalArtifact", "name": "chart"}},
            "status": {"storageNamespace": "prod",
                       "history": [{"name": "some-other-release", "namespace": "x", "version": 1}]}});
        let o = from_value(&hr).unwrap();
        let h = o.helm.unwrap();
        let full = format!("prod-{long}");
        assert_eq!(h.release_name, crate::flux::shorten_release_name(&full));
        assert_eq!(h.release_name.len(), 53);
        assert_eq!(h.storage_namespace, "prod");
        assert_eq!(h.status_storage_namespace.as_deref(), Some("prod"));
        assert!(h.remote);
        assert_eq!(h.service_account.as_deref(), Some("deployer"));
        // An unknown sourceRef kind is kept as text, not mistaken for an OCIRepository.
        assert_eq!(o.source_ref, None);
        assert_eq!(o.unknown_source.as_deref(), Some("ExternalArtifact/chart"));
        let ks = json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"sourceRef": {"kind": "ExternalArtifact", "name": "repo"}}});
        let o = from_value(&ks).unwrap();
        assert_eq!(o.source_ref, None);
        assert_eq!(o.unknown_source.as_deref(), Some("ExternalArtifact/repo"));
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "a"}, "spec": {"dependsOn": [{"name": 5}]}});
        let err = from_value(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `spec.dependsOn[0].name`: invalid type: integer `5`, expected a string"
        );
        let bad = json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": "a"}, "spec": {"interval": "soon"}});
        assert_eq!(
            from_value(&bad).unwrap_err().to_string(),
            "field `spec.interval`: `soon` is not a duration"
        );
        let bad = json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v9", "kind": "Kustomization", "metadata": {"name": "a"}});
        assert!(matches!(
            from_value(&bad),
            Err(ParseError::UnknownVersion { .. })
        ));
        let bad = json!({"apiVersion": "v1", "kind": "Kustomization"});
        assert!(matches!(
            from_value(&bad),
            Err(ParseError::UnknownVersion { .. })
        ));
        let bad = json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "metadata": {}});
        assert_eq!(from_value(&bad), Err(ParseError::Missing("metadata.name")));
    }

    #[test]
    fn a_kustomization_names_its_path_and_the_revision_that_last_applied() {
        let ks = |path: &str| {
            json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
                "metadata": {"name": "apps", "namespace": "team"},
                "spec": {"path": path, "sourceRef": {"kind": "GitRepository", "name": "repo"}},
                "status": {"lastAppliedRevision": "main@sha1:1111111111111111111111111111111111111111",
                           "lastAttemptedRevision": "main@sha1:2222222222222222222222222222222222222222"}})
        };
        let o = from_value(&ks("./apps/web")).unwrap();
        assert_eq!(o.path.as_deref(), Some("./apps/web"));
        assert_eq!(
            o.last_applied_revision.as_deref(),
            Some("main@sha1:1111111111111111111111111111111111111111")
        );
        // One no person writes is dropped, not cut into another path.
        let o = from_value(&ks(&"a/".repeat(MAX_REF))).unwrap();
        assert_eq!(o.path, None);
    }

    #[test]
    fn sources_and_charts() {
        let gr = json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": "repo", "namespace": "flux-system"},
            "spec": {"url": "http://git/x.git", "secretRef": {"name": "creds"}, "interval": "1m"},
            "status": {"artifact": {"revision": "main@sha1:abc"}}});
        let o = from_value(&gr).unwrap();
        assert_eq!(o.secret_ref.as_deref(), Some("creds"));
        assert_eq!(o.artifact_revision.as_deref(), Some("main@sha1:abc"));
        let hc = json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmChart",
            "metadata": {"name": "apps-podinfo", "namespace": "flux-system"},
            "spec": {"sourceRef": {"kind": "HelmRepository", "name": "repo"}}});
        assert_eq!(
            from_value(&hc).unwrap().source_ref,
            Some(ObjectKey::new(
                FluxKind::HelmRepository,
                "flux-system",
                "repo"
            ))
        );
    }

    #[test]
    fn a_buckets_endpoint_is_its_address() {
        let bucket = |spec: Value| {
            from_value(
                &serde_json::json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "Bucket",
                "metadata": {"name": "b", "namespace": "ns"}, "spec": spec}),
            )
            .unwrap()
            .url
        };
        assert_eq!(
            bucket(serde_json::json!({"endpoint": "127.0.0.1:9000", "insecure": true})).as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            bucket(serde_json::json!({"endpoint": "s3.amazonaws.com"})).as_deref(),
            Some("https://s3.amazonaws.com")
        );
        // An odd `insecure` is not TLS-off; no endpoint, no address.
        assert_eq!(
            bucket(serde_json::json!({"endpoint": "minio:9000", "insecure": "yes"})).as_deref(),
            Some("https://minio:9000")
        );
        assert_eq!(bucket(serde_json::json!({"bucketName": "b"})), None);
    }
}
