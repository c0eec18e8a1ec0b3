//! `fluxmedic get` and `fluxmedic approve`/`reject`: the records as a person reads them, and
//! a decision on the action one waits for, written exactly where that approval counts.

use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde::Serialize;
use serde_json::json;

use crate::api::{
    APPROVE_ANNOTATION, POLICY_APPROVAL_PREFIX, POLICY_REJECTION_PREFIX, REJECT_ANNOTATION,
    Remediation, RemediationPolicy,
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

/// One line of at most 80 characters, without control characters (a record's text comes
/// from Flux's messages and may have been edited: it must not break the table, nor reach the
/// terminal as escape sequences).
fn cell(s: &str) -> String {
    let one_line = printable(s)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
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
/// for a policy of its own namespace, on the policy for one of the operator's namespace
/// (naming this record, so the id copied into another record's status counts for nothing).
/// `id`, when given, must be the pending request's (so a person decides what they read).
/// What the status says is not trusted: names are checked, text is printed without control
/// characters, and the operator counts the decision only for its own sealed request.
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
        let why = st
            .blocked
            .map(|b| format!(": {}", printable(&b)))
            .unwrap_or_default();
        anyhow::bail!(
            "Remediation {namespace}/{name} waits for no approval (phase {:?}{why})",
            st.phase
        );
    };
    if let Some(want) = id.filter(|want| *want != req.id) {
        anyhow::bail!(
            "Remediation {namespace}/{name} now waits for request {}, not {want}: read it again",
            printable(&req.id)
        );
    }
    let id = &req.id;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        anyhow::bail!(
            "Remediation {namespace}/{name}: its request id {:?} is not one fluxmedic makes",
            printable(id)
        );
    }
    if req.rejected {
        anyhow::bail!(
            "Remediation {namespace}/{name}: request {id} was rejected; fluxmedic does not ask for that action again in this incident"
        );
    }
    let action = printable(&req.action);
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
            if !is_object_name(pns) || !is_object_name(pname) {
                let named = printable(&format!("{pns}/{pname}"));
                anyhow::bail!("Remediation {namespace}/{name}: {named:?} does not name a policy");
            }
            let prefix = match decision {
                Decision::Approve => POLICY_APPROVAL_PREFIX,
                Decision::Reject => POLICY_REJECTION_PREFIX,
            };
            let record = format!("{namespace}/{name}");
            let patch = json!({"metadata": {"annotations": {format!("{prefix}{id}"): record}}});
            let policies: Api<RemediationPolicy> = Api::namespaced(client, pns);
            policies
                .patch(pname, &params, &Patch::Merge(&patch))
                .await?;
            Ok(format!(
                "{verb} {action} for Remediation {namespace}/{name} (request {id}) on RemediationPolicy {pns}/{pname}, which decided it"
            ))
        }
        _ => {
            let key = match decision {
                Decision::Approve => APPROVE_ANNOTATION,
                Decision::Reject => REJECT_ANNOTATION,
            };
            let patch = json!({"metadata": {"annotations": {key: id}}});
            api.patch(name, &params, &Patch::Merge(&patch)).await?;
            Ok(format!(
                "{verb} {action} for Remediation {namespace}/{name} (request {id})"
            ))
        }
    }
}

/// `s` with every control character (escape sequences included) shown as `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// A DNS-1123 subdomain, as Kubernetes object names are.
pub(super) fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
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
    fn names_and_text_from_a_record_are_checked_before_use() {
        assert!(is_object_name("platform") && is_object_name("a.b-c"));
        for bad in [
            "",
            "Platform",
            "platform?dryRun=All",
            "a/b",
            "-a",
            "a..b",
            "a_b",
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
        assert_eq!(printable("ok\u{1b}[31mred"), "ok?[31mred");
        assert_eq!(cell("a\u{7}b"), "a?b");
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
