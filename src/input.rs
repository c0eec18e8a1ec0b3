//! Reading a dump of Flux objects: a Kubernetes List, multi-document YAML, or JSON, as
//! written by `kubectl get kustomizations,helmreleases,gitrepositories,helmcharts -A -o yaml`
//! (Secrets optional). Pure: text in, snapshot out.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::{
    diagnose::{SecretInfo, Snapshot},
    flux::{self, FluxKind},
    helm::{self, StoredRelease},
};

/// A dump could not be read. Names the document (1-based) and, within a List, the item.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("document {document}{item}: {message}", item = item.map(|i| format!(", item {i}")).unwrap_or_default())]
pub struct InputError {
    pub document: usize,
    pub item: Option<usize>,
    pub message: String,
}

/// What was read besides the snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InputSummary {
    pub flux_objects: usize,
    pub secrets: usize,
    pub ignored: usize,
    /// Problems that do not stop the diagnosis (a corrupt Helm release Secret).
    pub warnings: Vec<String>,
}

fn documents(text: &str) -> Result<Vec<Value>, InputError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = vec![];
        let stream = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        for (i, v) in stream.enumerate() {
            let v = v.map_err(|e| InputError {
                document: i + 1,
                item: None,
                message: format!("invalid JSON: {e}"),
            })?;
            match v {
                Value::Array(items) => {
                    out.push(serde_json::json!({"kind": "List", "items": items}))
                }
                other => out.push(other),
            }
        }
        return Ok(out);
    }
    let mut out = vec![];
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| InputError {
            document: i + 1,
            item: None,
            message: format!("invalid YAML: {e}"),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn str_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn read_secret(snap: &mut Snapshot, summary: &mut InputSummary, v: &Value) -> Result<(), String> {
    let meta = v.get("metadata").ok_or("Secret has no metadata")?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .ok_or("Secret has no metadata.name")?;
    let ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let labels = str_map(meta.get("labels"));
    summary.secrets += 1;
    snap.secrets_observed = true;
    if let Some(stored) = StoredRelease::from_metadata(name, ns, &labels) {
        // Check the payload when present; a corrupt release is reported and not used.
        if let Some(payload) = v.pointer("/data/release").and_then(Value::as_str) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .map_err(|e| format!("Secret {ns}/{name}: data.release is not base64: {e}"));
            let checked = bytes.and_then(|b| {
                let data = BTreeMap::from([("release".to_string(), b)]);
                helm::decode_secret(name, &data).map_err(|e| e.to_string())
            });
            if let Err(e) = checked {
                summary
                    .warnings
                    .push(format!("{e} (ignored; fluxmedic never deletes it)"));
                return Ok(());
            }
        }
        snap.add_release(stored);
        return Ok(());
    }
    let keys = v
        .get("data")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let resource_version = meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .map(String::from);
    snap.secrets.insert(
        (ns.to_string(), name.to_string()),
        SecretInfo {
            keys,
            resource_version,
        },
    );
    Ok(())
}

/// Read a dump into a snapshot taken at `now` (unix seconds).
pub fn parse_dump(text: &str, now: i64) -> Result<(Snapshot, InputSummary), InputError> {
    let mut snap = Snapshot {
        now,
        ..Default::default()
    };
    let mut summary = InputSummary::default();
    for (di, doc) in documents(text)?.into_iter().enumerate() {
        let document = di + 1;
        let err = |item: Option<usize>, message: String| InputError {
            document,
            item,
            message,
        };
        if !doc.is_object() {
            return Err(err(None, "not a Kubernetes object".into()));
        }
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        let (items, in_list): (Vec<&Value>, bool) = if kind == "List" || kind.ends_with("List") {
            let items = doc
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| err(None, "List has no items".into()))?;
            (items.iter().collect(), true)
        } else {
            (vec![&doc], false)
        };
        for (ii, item) in items.into_iter().enumerate() {
            let item_no = in_list.then_some(ii + 1);
            let kind = item.get("kind").and_then(Value::as_str).unwrap_or_default();
            let describe = || {
                let m = item.get("metadata");
                let ns = m
                    .and_then(|m| m.get("namespace"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                let name = m
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("<unnamed>");
                format!("{kind} {ns}/{name}")
            };
            if kind.is_empty() {
                return Err(err(item_no, "missing field `kind`".into()));
            }
            if FluxKind::from_kind(kind).is_some() {
                let obj = flux::from_value(item)
                    .map_err(|e| err(item_no, format!("{}: {e}", describe())))?;
                summary.flux_objects += 1;
                snap.objects
                    .insert(obj.key.clone(), std::sync::Arc::new(obj));
            } else if kind == "Secret" {
                read_secret(&mut snap, &mut summary, item).map_err(|e| err(item_no, e))?;
            } else {
                summary.ignored += 1;
            }
        }
    }
    Ok((snap, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_multi_document_yaml() {
        let yaml = r#"
apiVersion: v1
kind: List
items:
- apiVersion: kustomize.toolkit.fluxcd.io/v1
  kind: Kustomization
  metadata: {name: a, namespace: flux-system}
  spec: {interval: 1m, sourceRef: {kind: GitRepository, name: repo}}
---
apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata: {name: repo, namespace: flux-system}
spec: {url: "http://x/y.git", secretRef: {name: creds}}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: flux-system, resourceVersion: "7"}
data: {username: YQ==, password: Yg==}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
"#;
        let (snap, summary) = parse_dump(yaml, 0).unwrap();
        assert_eq!(summary.flux_objects, 2);
        assert_eq!(summary.secrets, 1);
        assert_eq!(summary.ignored, 1);
        let s = &snap.secrets[&("flux-system".to_string(), "creds".to_string())];
        assert_eq!(
            s.keys.iter().cloned().collect::<Vec<_>>(),
            vec!["password", "username"]
        );
        assert_eq!(s.resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn errors_name_document_item_and_field() {
        let yaml = "kind: ConfigMap\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: kustomize.toolkit.fluxcd.io/v1\n  kind: Kustomization\n  metadata: {name: a, namespace: ns}\n  spec: {timeout: forever}\n";
        let e = parse_dump(yaml, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "document 2, item 1: Kustomization ns/a: field `spec.timeout`: `forever` is not a duration"
        );
        assert!(
            parse_dump("a: [b", 0)
                .unwrap_err()
                .to_string()
                .starts_with("document 1: invalid YAML")
        );
        assert!(
            parse_dump("{\"kind\": ", 0)
                .unwrap_err()
                .to_string()
                .starts_with("document 1: invalid JSON")
        );
        assert_eq!(
            parse_dump("- 1\n", 0).unwrap_err().message,
            "not a Kubernetes object"
        );
        assert_eq!(
            parse_dump("metadata: {}\n", 0).unwrap_err().message,
            "missing field `kind`"
        );
    }

    #[test]
    fn corrupt_helm_release_secret_is_a_warning_and_unused() {
        let yaml = r#"
apiVersion: v1
kind: Secret
type: helm.sh/release.v1
metadata: {name: sh.helm.release.v1.web.v1, namespace: apps, labels: {owner: helm, name: web, status: pending-install, version: "1"}}
data: {release: bm90LWd6aXA=}
"#;
        let (snap, summary) = parse_dump(yaml, 0).unwrap();
        assert!(snap.releases.is_empty());
        assert_eq!(summary.warnings.len(), 1);
        assert!(
            summary.warnings[0].contains("sh.helm.release.v1.web.v1"),
            "{}",
            summary.warnings[0]
        );
    }

    #[test]
    fn json_array_and_object() {
        let json = r#"[{"apiVersion":"source.toolkit.fluxcd.io/v1","kind":"GitRepository","metadata":{"name":"r","namespace":"n"}}]"#;
        assert_eq!(parse_dump(json, 0).unwrap().1.flux_objects, 1);
        let json = r#"{"apiVersion":"v1","kind":"List","items":[]}"#;
        assert_eq!(parse_dump(json, 0).unwrap().1.flux_objects, 0);
    }
}
