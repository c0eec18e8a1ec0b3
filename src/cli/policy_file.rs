//! `diagnose --policy FILE`: a RemediationPolicy read from a file is checked as `kubectl
//! create` and the API server check one: the file read as kubectl reads YAML (YAML 1.1:
//! unquoted `Off`, `yes`, `on` are booleans), nulls pruned, whole numbers taken as integers,
//! metadata checked, then the CRD's schema (types, enums, bounds, and no field the schema does
//! not declare, as kubectl's strict field validation refuses them), then its CEL rules
//! (evaluated with kube-rs's client-side CEL validator, on the same generated schema the chart
//! installs), then fluxmedic's own reading of it.

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
            let mut doc: Value = serde_yaml_ng::from_str(&text)
                .map_err(|e| format!("{}: not YAML or JSON: {e}", p.display()))?;
            as_kubectl_reads(&text, &mut doc);
            // A create ignores the status (the status subresource writes it).
            if let Some(m) = doc.as_object_mut() {
                m.remove("status");
            }
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

/// YAML 1.1's booleans, which kubectl's YAML reader (go-yaml v2) still resolves.
const YAML11_BOOLS: [(&str, bool); 16] = [
    ("y", true),
    ("Y", true),
    ("yes", true),
    ("Yes", true),
    ("YES", true),
    ("on", true),
    ("On", true),
    ("ON", true),
    ("n", false),
    ("N", false),
    ("no", false),
    ("No", false),
    ("NO", false),
    ("off", false),
    ("Off", false),
    ("OFF", false),
];

/// `doc` as kubectl hands it to the API server: a YAML 1.1 boolean word written unquoted is a
/// boolean (serde's YAML 1.2 reader keeps it a string; a word also written quoted somewhere in
/// the file is left alone, as which occurrence is which is not known here); nulls are pruned
/// as the API server prunes them; whole numbers written with a fraction are integers.
pub fn as_kubectl_reads(text: &str, doc: &mut Value) {
    let unquoted: Vec<(&str, bool)> = YAML11_BOOLS
        .into_iter()
        .filter(|(w, _)| {
            let code = text.lines().map(|l| l.split(" #").next().unwrap_or(""));
            let tokens: Vec<String> = code
                .flat_map(|l| {
                    l.split(|c: char| c.is_whitespace() || ":,[]{}-".contains(c))
                        .map(String::from)
                        .collect::<Vec<_>>()
                })
                .collect();
            tokens.iter().any(|t| t == w)
                && !text.contains(&format!("\"{w}\""))
                && !text.contains(&format!("'{w}'"))
        })
        .collect();
    normalize(doc, &unquoted);
}

fn normalize(v: &mut Value, bools: &[(&str, bool)]) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(|x| normalize(x, bools));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalize(x, bools)),
        Value::String(s) => {
            if let Some((_, b)) = bools.iter().find(|(w, _)| w == s) {
                *v = Value::Bool(*b);
            }
        }
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                && !(n.is_i64() || n.is_u64())
            {
                *v = Value::from(f as i64);
            }
        }
        _ => {}
    }
}

/// ObjectMeta's fields: kubectl's strict validation refuses any other.
const OBJECT_META: [&str; 15] = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

fn check_metadata(meta: &Value, errs: &mut Vec<String>) {
    let Some(m) = meta.as_object() else {
        errs.push("metadata: must be an object".into());
        return;
    };
    for k in m.keys().filter(|k| !OBJECT_META.contains(&k.as_str())) {
        errs.push(format!("unknown field \"metadata.{k}\""));
    }
    match (m.get("name").and_then(Value::as_str), m.get("generateName")) {
        (Some(n), _) if !super::records::is_object_name(n) => errs.push(format!(
            "metadata.name: Invalid value: {n:?}: a lowercase RFC 1123 subdomain"
        )),
        (None, None) => {
            errs.push("metadata.name: Required value: name or generateName is required".into())
        }
        _ => {}
    }
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
    check_metadata(&doc["metadata"], &mut errs);
    // A create ignores the status (the status subresource writes it).
    let mut doc = doc.clone();
    if let Some(m) = doc.as_object_mut() {
        m.remove("status");
    }
    let doc = &doc;
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
