//! `fluxmedic get` and `fluxmedic approve`/`reject`: the records as a person reads them, and
//! a decision on the action one waits for, written exactly where that approval counts.

use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde::Serialize;
use serde_json::json;

use crate::api::{
    APPROVE_ANNOTATION, POLICY_APPROVAL_PREFIX, REJECT_ANNOTATION, Remediation, RemediationPolicy,
};

/// Field manager of the writes a person makes through the CLI.
pub const CLI_FIELD_MANAGER: &str = "fluxmedic-cli";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    Remediations,
    Policies,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

/// Approve or reject the action a Remediation waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

/// The records in `namespace` (all namespaces when `None`), rendered.
pub async fn get(
    client: Client,
    listing: Listing,
    namespace: Option<&str>,
    output: Output,
    now: i64,
) -> anyhow::Result<String> {
    let lp = ListParams::default();
    match listing {
        Listing::Remediations => {
            let api: Api<Remediation> = scoped(client, namespace);
            let mut items = api.list(&lp).await?.items;
            items.sort_by_key(|r| (r.namespace(), r.name_any()));
            let rows = items.iter().map(|r| remediation_row(r, now)).collect();
            let header = [
                "NAME", "TARGET", "CASE", "PHASE", "ACTION", "ATTEMPTS", "APPROVAL", "MESSAGE",
                "AGE",
            ];
            render(&items, &header, rows, namespace.is_none(), output)
        }
        Listing::Policies => {
            let api: Api<RemediationPolicy> = scoped(client, namespace);
            let mut items = api.list(&lp).await?.items;
            items.sort_by_key(|p| (p.namespace(), p.name_any()));
            let rows = items.iter().map(|p| policy_row(p, now)).collect();
            let header = ["NAME", "PRIORITY", "READY", "MESSAGE", "AGE"];
            render(&items, &header, rows, namespace.is_none(), output)
        }
    }
}

fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// `items` as a table (with a NAMESPACE column across namespaces), or as a `List` in YAML or
/// JSON, the shape `kubectl get -o yaml|json` prints.
pub fn render<T: Serialize + ResourceExt>(
    items: &[T],
    header: &[&str],
    rows: Vec<Vec<String>>,
    all_namespaces: bool,
    output: Output,
) -> anyhow::Result<String> {
    let list = || json!({"apiVersion": "v1", "kind": "List", "items": items});
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&list())? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(&list())?,
        Output::Table if items.is_empty() => "No resources found.\n".into(),
        Output::Table => {
            let mut header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
            let mut rows = rows;
            if all_namespaces {
                header.insert(0, "NAMESPACE".into());
                for (row, item) in rows.iter_mut().zip(items) {
                    row.insert(0, item.namespace().unwrap_or_default());
                }
            }
            table(&header, &rows)
        }
    })
}

/// Columns padded to their widest cell, three spaces apart, as kubectl prints them.
fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("   ").trim_end().to_string() + "\n"
    };
    std::iter::once(line(header))
        .chain(rows.iter().map(|r| line(r)))
        .collect()
}

fn remediation_row(r: &Remediation, now: i64) -> Vec<String> {
    let st = r.status.clone().unwrap_or_default();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
    let message = ready.map(|c| c.message.clone()).or(st.blocked.clone());
    let approval = st.approval.as_ref().map(|a| match a.rejected {
        true => format!("rejected {}", a.id),
        false => a.id.clone(),
    });
    vec![
        r.name_any(),
        r.spec.target_name.clone(),
        r.spec.case.to_string(),
        format!("{:?}", st.phase),
        st.action.unwrap_or_else(|| "-".into()),
        st.attempts.to_string(),
        approval.unwrap_or_else(|| "-".into()),
        cell(message.as_deref().unwrap_or("-")),
        age(r.creation_timestamp(), now),
    ]
}

fn policy_row(p: &RemediationPolicy, now: i64) -> Vec<String> {
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    vec![
        p.name_any(),
        p.spec.priority.to_string(),
        ready.map_or("Unknown".into(), |c| c.status.clone()),
        cell(ready.map_or("-", |c| c.message.as_str())),
        age(p.creation_timestamp(), now),
    ]
}

/// One line of at most 80 characters (a record's text is written by fluxmedic, but a table
/// cell must not break the table).
fn cell(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(79) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}

/// kubectl's age: the largest unit, `45s`, `12m`, `5h`, `3d`.
fn age(created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, now: i64) -> String {
    let Some(t) = created else { return "-".into() };
    let s = (now - t.0.as_second()).max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Approve or reject the action the Remediation `name` waits for, with exactly the one
/// annotation that decides it where the deciding policy lets it count: on the Remediation
/// for a policy of its own namespace, on the policy for one of the operator's namespace.
/// `id`, when given, must be the pending request's (so a person decides what they read).
pub async fn decide(
    client: Client,
    namespace: &str,
    name: &str,
    decision: Decision,
    id: Option<&str>,
) -> anyhow::Result<String> {
    let api: Api<Remediation> = Api::namespaced(client.clone(), namespace);
    let rem = api.get(name).await?;
    let st = rem.status.clone().unwrap_or_default();
    let Some(req) = st.approval.filter(|_| st.phase.is_open()) else {
        anyhow::bail!(
            "Remediation {namespace}/{name} waits for no approval (phase {:?}{})",
            st.phase,
            st.blocked.map(|b| format!(": {b}")).unwrap_or_default()
        );
    };
    if let Some(want) = id.filter(|want| *want != req.id) {
        anyhow::bail!(
            "Remediation {namespace}/{name} now waits for request {} ({}), not {want}: read it again",
            req.id,
            req.action
        );
    }
    if req.id.is_empty() || req.id.len() > 64 || !req.id.chars().all(|c| c.is_ascii_alphanumeric())
    {
        anyhow::bail!(
            "Remediation {namespace}/{name}: its request id {:?} is not one fluxmedic makes",
            req.id
        );
    }
    let params = PatchParams {
        field_manager: Some(CLI_FIELD_MANAGER.into()),
        ..Default::default()
    };
    let verb = match decision {
        Decision::Approve => "approved",
        Decision::Reject => "rejected",
    };
    match st.policy.as_deref().and_then(|p| p.split_once('/')) {
        Some((pns, pname)) if pns != namespace => {
            let value = (decision == Decision::Approve).to_string();
            let key = format!("{POLICY_APPROVAL_PREFIX}{}", req.id);
            let patch = json!({"metadata": {"annotations": {key: value}}});
            let policies: Api<RemediationPolicy> = Api::namespaced(client, pns);
            policies
                .patch(pname, &params, &Patch::Merge(&patch))
                .await?;
            Ok(format!(
                "{verb} {} for Remediation {namespace}/{name} (request {}) on RemediationPolicy {pns}/{pname}, which decided it",
                req.action, req.id
            ))
        }
        _ => {
            let key = match decision {
                Decision::Approve => APPROVE_ANNOTATION,
                Decision::Reject => REJECT_ANNOTATION,
            };
            let patch = json!({"metadata": {"annotations": {key: req.id}}});
            api.patch(name, &params, &Patch::Merge(&patch)).await?;
            Ok(format!(
                "{verb} {} for Remediation {namespace}/{name} (request {})",
                req.action, req.id
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_aligned_and_cells_stay_on_one_line() {
        let header = ["NAME".to_string(), "MESSAGE".to_string()];
        let rows = vec![
            vec!["a".to_string(), cell("two\nlines")],
            vec!["longer-name".to_string(), cell(&"x".repeat(200))],
        ];
        let out = table(&header, &rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "NAME          MESSAGE");
        assert_eq!(lines[1], "a             two lines");
        assert_eq!(lines[2].chars().count(), "longer-name   ".len() + 80);
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let at = |s| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(s).unwrap(),
            ))
        };
        let now = 1_800_000_000;
        assert_eq!(age(at(now - 45), now), "45s");
        assert_eq!(age(at(now - 600), now), "10m");
        assert_eq!(age(at(now - 5 * 3600), now), "5h");
        assert_eq!(age(at(now - 3 * 86400), now), "3d");
        assert_eq!(age(at(now + 10), now), "0s");
        assert_eq!(age(None, now), "-");
    }
}
