//! `diagnose --policy FILE`: a RemediationPolicy read from a file is checked exactly as the
//! API server checks one on create: the CRD's schema (types, enums, bounds, and no field the
//! schema does not declare, as kubectl's strict field validation refuses them), then its CEL
//! rules (evaluated with kube-rs's client-side CEL validator, on the same generated schema the
//! chart installs), then fluxmedic's own reading of it.

use std::path::Path;

use serde_json::Value;

use crate::{api, policy};

/// The policy in `path` (the built-in default when none), judged as if it sat in the
/// operator's namespace covering every namespace it names (all if none).
pub fn load_policy(path: Option<&Path>) -> Result<policy::Policy, String> {
    let (ns, name, mut spec) = match path {
        None => (
            "fluxmedic".to_string(),
            "built-in-default".to_string(),
            policy::default_policy_spec(),
        ),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let doc: Value = serde_yaml_ng::from_str(&text)
                .map_err(|e| format!("{}: not YAML or JSON: {e}", p.display()))?;
            check_policy(&doc).map_err(|errs| {
                format!(
                    "{}: the API server would refuse this RemediationPolicy:\n  {}",
                    p.display(),
                    errs.join("\n  ")
                )
            })?;
            let rp: api::RemediationPolicy = serde_json::from_value(doc)
                .map_err(|e| format!("{}: not a RemediationPolicy: {e}", p.display()))?;
            let ns = rp.metadata.namespace.clone();
            let ns = ns.unwrap_or_else(|| "fluxmedic".into());
            (ns, rp.metadata.name.clone().unwrap_or_default(), rp.spec)
        }
    };
    if spec.targets.namespaces.is_empty() {
        spec.targets.namespaces = vec!["*".into()];
    }
    policy::Policy::new(&ns, &name, spec).map_err(|e| format!("invalid policy: {e}"))
}

/// Every reason the API server would refuse `doc` as a new RemediationPolicy.
pub fn check_policy(doc: &Value) -> Result<(), Vec<String>> {
    let crd = api::crds()
        .into_iter()
        .next()
        .expect("the policy CRD comes first");
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    let schema = serde_json::to_value(schema.expect("a generated schema")).expect("serialises");
    let mut errs = vec![];
    let want = format!("{}/{}", crd.spec.group, version.name);
    if doc["apiVersion"] != want.as_str() || doc["kind"] != crd.spec.names.kind.as_str() {
        errs.push(format!(
            "apiVersion/kind: must be {want}, {}",
            crd.spec.names.kind
        ));
    }
    if doc.get("metadata").is_some_and(|m| !m.is_object()) {
        errs.push("metadata: must be an object".into());
    }
    walk(&schema, doc, "", &mut errs);
    if errs.is_empty()
        && let Err(cel) = kube::core::cel::Validator::new().validate(&schema, doc, None)
    {
        errs.extend(cel.iter().map(|e| e.to_string()));
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// The OpenAPI v3 schema's structural checks, as the API server applies them.
fn walk(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let at = |p: &str| {
        if p.is_empty() {
            "<root>".to_string()
        } else {
            p.to_string()
        }
    };
    if v.is_null() {
        if schema["nullable"] != true && !path.is_empty() {
            errs.push(format!("{}: must not be null", at(path)));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        errs.push(format!(
            "{}: Unsupported value: {v}: supported values: {}",
            at(path),
            Value::Array(allowed.clone())
        ));
    }
    match (schema["type"].as_str(), v) {
        (Some("object") | None, Value::Object(m)) => walk_object(schema, m, path, errs),
        (Some("array"), Value::Array(items)) => {
            if let Some(max) = schema["maxItems"]
                .as_u64()
                .filter(|max| items.len() as u64 > *max)
            {
                errs.push(format!(
                    "{}: Too many: {}: must have at most {max} items",
                    at(path),
                    items.len()
                ));
            }
            for (i, item) in items.iter().enumerate() {
                walk(&schema["items"], item, &format!("{path}[{i}]"), errs);
            }
        }
        (Some("string"), Value::String(s)) => {
            if let Some(max) = schema["maxLength"]
                .as_u64()
                .filter(|max| s.chars().count() as u64 > *max)
            {
                errs.push(format!(
                    "{}: Too long: may not be more than {max} bytes",
                    at(path)
                ));
            }
        }
        (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => {
            let n = n.as_f64().unwrap_or_default();
            if schema["minimum"].as_f64().is_some_and(|min| n < min) {
                errs.push(format!(
                    "{}: Invalid value: {n}: should be greater than or equal to {}",
                    at(path),
                    schema["minimum"]
                ));
            }
            if schema["maximum"].as_f64().is_some_and(|max| n > max) {
                errs.push(format!(
                    "{}: Invalid value: {n}: should be less than or equal to {}",
                    at(path),
                    schema["maximum"]
                ));
            }
        }
        (Some("number"), Value::Number(_)) | (Some("boolean"), Value::Bool(_)) => {}
        (Some(t), _) => errs.push(format!(
            "{}: Invalid value: {v}: must be of type {t}",
            at(path)
        )),
        (None, _) => {}
    }
}

fn walk_object(
    schema: &Value,
    m: &serde_json::Map<String, Value>,
    path: &str,
    errs: &mut Vec<String>,
) {
    let props = schema["properties"].as_object();
    for key in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !m.contains_key(key) {
            errs.push(
                format!("{path}.{key}: Required value")
                    .trim_start_matches('.')
                    .to_string(),
            );
        }
    }
    for (k, child) in m {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match props.and_then(|ps| ps.get(k)) {
            Some(s) => walk(s, child, &p, errs),
            // The type and ObjectMeta are the API server's own, not the CRD's schema.
            None if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {
            }
            None if schema["additionalProperties"].is_object() => {
                walk(&schema["additionalProperties"], child, &p, errs)
            }
            None if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
            None => errs.push(format!("unknown field \"{p}\"")),
        }
    }
}
