//! The command line: `fluxmedic diagnose` (the pure pipeline, diagnose -> plan, over a
//! snapshot, rendered as a table or JSON), `get` and `approve`/`reject` on records, and how
//! each live command reaches the cluster.

mod connect;
mod policy_file;
mod records;

pub use connect::{Connection, config, connect};
pub use policy_file::{check_policy, load_policy};
pub use records::{Decision, Listing, Output, decide, get, render};

use serde::Serialize;

use crate::{
    diagnose::{self, Case, Evidence, NativeState, Report, Snapshot},
    incident,
    policy::{self, Policy},
};

/// One line of the report: what is wrong and what fluxmedic would do.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub case: Case,
    pub root: String,
    pub retryable: bool,
    pub native: NativeState,
    pub summary: String,
    /// The action fluxmedic would take now, if any.
    pub action: Option<String>,
    /// Why it would not act now.
    pub blocked: Option<String>,
    pub policy: Option<String>,
    pub evidence: Vec<Evidence>,
}

/// Diagnose and plan every failing object. `policies` as the operator would see them.
pub fn evaluate(
    snap: &Snapshot,
    policies: &[Policy],
    operator_ns: &str,
    breaker_default: u32,
) -> (Report, Vec<Row>) {
    let report = diagnose::diagnose(snap);
    let breakers = policy::Breakers::new(
        report.diagnoses.iter().map(|d| d.target.namespace.as_str()),
        policies,
        operator_ns,
        breaker_default,
    );
    let bare = incident::Scene {
        snap,
        report: &report,
        policies,
        operator_namespace: operator_ns,
        breakers: &breakers,
        pollers: &policy::Pollers::new(),
    };
    // As the operator decides a pass in which every failure is new.
    let pollers = incident::pollers(&bare, []);
    let scene = incident::Scene {
        pollers: &pollers,
        ..bare
    };
    let rows = report
        .diagnoses
        .iter()
        .filter_map(|d| {
            // The operator's own planning, for a new incident of this failure.
            let planned = incident::plan_target(&scene, &d.target, Some(d), None);
            let p = planned.policy;
            let dec = planned.decision?;
            let action = match (&dec.planned, &dec.blocked) {
                (Some(a), None) => Some(a.to_string()),
                (Some(a), Some(_)) => Some(format!("({a})")),
                _ => None,
            };
            Some(Row {
                kind: d.target.kind.to_string(),
                namespace: d.target.namespace.clone(),
                name: d.target.name.clone(),
                case: d.case,
                root: if d.is_root() {
                    "-".into()
                } else {
                    d.root.to_string()
                },
                retryable: d.retryable,
                native: d.native,
                summary: d.summary.clone(),
                action,
                blocked: dec.blocked.map(|b| b.to_string()),
                policy: p.map(Policy::id),
                evidence: d.evidence.clone(),
            })
        })
        .collect();
    (report, rows)
}

/// A table readable in a terminal.
pub fn render_table(report: &Report, rows: &[Row], total_objects: usize) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str(&format!("All {total_objects} Flux objects are healthy.\n"));
        return out;
    }
    let header = [
        "KIND",
        "NAMESPACE/NAME",
        "CASE",
        "ROOT CAUSE",
        "RETRY",
        "FLUXMEDIC WOULD",
    ];
    let lines: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let would = match (&r.action, &r.blocked) {
                (Some(a), None) => a.clone(),
                (_, Some(b)) => format!("wait: {b}"),
                (None, None) => "-".into(),
            };
            [
                r.kind.clone(),
                format!("{}/{}", r.namespace, r.name),
                r.case.to_string(),
                r.root.clone(),
                if r.retryable {
                    "yes".into()
                } else {
                    "no".into()
                },
                would,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for l in &lines {
        for (i, c) in l.iter().enumerate().take(5) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let fmt_line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i < 5 {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            } else {
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&fmt_line(header));
    for l in &lines {
        out.push_str(&fmt_line([&l[0], &l[1], &l[2], &l[3], &l[4], &l[5]]));
    }
    out.push_str(&format!(
        "\n{} of {} Flux objects failing.",
        rows.len(),
        total_objects
    ));
    if !report.shared_roots.is_empty() {
        out.push_str(" Shared roots:");
        for (k, n) in &report.shared_roots {
            out.push_str(&format!(" {k} ({n} blocked)"));
        }
    }
    out.push('\n');
    out
}

/// Read the live cluster into a snapshot (what `diagnose` does without `--file`).
/// The live cluster as a snapshot (all namespaces, or one). What these credentials may not
/// read is skipped with a warning, never an abort: a read-only person sees what they can.
pub async fn live_snapshot(
    client: kube::Client,
    now: i64,
    namespace: Option<&str>,
) -> anyhow::Result<(Snapshot, Vec<String>)> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::{
        Api, ResourceExt,
        api::{DynamicObject, ListParams},
    };
    let mut snap = Snapshot {
        now,
        secrets_observed: true,
        ..Default::default()
    };
    let mut warnings = vec![];
    let served = crate::controller::discovery::discover(&client).await;
    for kind in crate::controller::index::WATCHED_KINDS {
        let Some(ar) = served.resources.get(&kind) else {
            if let Some(why) = served.missing.get(&kind) {
                warnings.push(format!("{kind}: not read: {why}"));
            }
            continue;
        };
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
            None => Api::all_with(client.clone(), ar),
        };
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                warnings.push(format!("{kind}: CRD not installed"));
                continue;
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                warnings.push(format!(
                    "{kind}: not readable with these credentials, skipped ({})",
                    s.message
                ));
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("listing {}: {e}", kind.plural())),
        };
        for o in list.items {
            let mut v = serde_json::to_value(&o)?;
            v["apiVersion"] = ar.api_version.clone().into();
            v["kind"] = kind.as_str().into();
            match crate::flux::from_value(&v) {
                Ok(obj) => {
                    snap.objects
                        .insert(obj.key.clone(), std::sync::Arc::new(obj));
                }
                Err(e) => warnings.push(format!(
                    "{kind} {}/{}: {e}",
                    o.namespace().unwrap_or_default(),
                    o.name_any()
                )),
            }
        }
    }
    let secrets: Api<Secret> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let secret_list = match secrets.list_metadata(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            warnings.push(format!(
                "Secrets: not readable with these credentials: Helm release locks and credential keys not checked ({})",
                s.message
            ));
            snap.secrets_observed = false;
            vec![]
        }
        Err(e) => return Err(e.into()),
    };
    for m in secret_list {
        let (ns, name) = (m.namespace().unwrap_or_default(), m.name_any());
        if let Some(r) = crate::helm::StoredRelease::from_metadata(&name, &ns, m.labels()) {
            snap.add_release(r);
        } else {
            snap.secrets.insert(
                (ns, name),
                diagnose::SecretInfo {
                    keys: Default::default(),
                    resource_version: m.resource_version(),
                },
            );
        }
    }
    // Key names of Secrets referenced by failing Git sources.
    let actuator = crate::remedy::Actuator {
        client,
        config: None,
        helm_bin: "helm".into(),
        limiter: None,
        apis: Default::default(),
    };
    for (ns, name) in snap.uninspected_source_secrets() {
        match actuator.secret_info(&ns, &name).await {
            Ok(Some(info)) => {
                snap.secrets.insert((ns, name), info);
            }
            Ok(None) => {
                snap.secrets.remove(&(ns, name));
            }
            Err(e) => warnings.push(format!("Secret {ns}/{name}: not inspected: {e}")),
        }
    }
    Ok((snap, warnings))
}
