//! Trust boundaries, on the real control plane: what an approver editing a Remediation, a
//! tenant with rights in one namespace, or an odd value could try, and that it changes
//! nothing fluxmedic's policies do not allow. Each test has a tenant namespace, a production
//! namespace with a release worth protecting, and the operator in a namespace of its own.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::*;

/// The operator's namespace, a tenant's and production's, with the CRDs installed.
async fn layout(prefix: &str) -> (&'static Env, Client, String, String, String) {
    let (env, client, op) = setup(&format!("{prefix}-op")).await;
    let tenant = namespace(&client, &format!("{prefix}-tenant")).await;
    let prod = namespace(&client, &format!("{prefix}-prod")).await;
    (env, client, op, tenant, prod)
}

/// The release Secret `name` in `ns`: its `status` label, or None if it is gone.
async fn release_status(client: &Client, ns: &str, name: &str) -> Option<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .get_opt(name)
        .await
        .unwrap()
        .map(|s| s.metadata.labels.unwrap_or_default()["status"].clone())
}

/// Wait `secs` evaluation passes' worth of time and assert production's pending release is
/// still there, untouched.
async fn assert_prod_release_untouched(client: &Client, prod: &str, secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    assert_eq!(
        release_status(client, prod, "sh.helm.release.v1.web.v2")
            .await
            .as_deref(),
        Some("pending-upgrade"),
        "production's release Secret was not touched"
    );
}

fn step_json(action: &str, detail: Value, token: &str) -> Value {
    json!({"action": action, "detail": detail.to_string(), "outcome": "Running", "token": token,
           "startedAt": jiff::Timestamp::now().to_string(), "message": "edited in"})
}

fn delete_prod_release(prod: &str) -> Value {
    json!({"UnlockRelease": {"namespace": prod, "secret": "sh.helm.release.v1.web.v2", "version": 2,
           "delete": true, "release": {"name": "web", "storageNamespace": prod, "namespace": prod}}})
}

// ------------------------------------------------------------------ 1. records are evidence

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_record_is_frozen_and_a_forged_one_is_ignored() {
    let (env, client, op_ns, tenant, prod) = layout("edit").await;
    suspended_release_with_pending(env, &client, &tenant, false).await;
    suspended_release_with_pending(env, &client, &prod, false).await;
    // The tenant's incident is Observe: record only.
    apply(
        &client,
        policy(
            &tenant,
            "observe",
            json!({"rules": [{"case": "stale-lock", "mode": "Observe"}]}),
        ),
    )
    .await;
    let op = Operator::launch(
        env,
        &op_ns,
        &[&tenant, &prod, &op_ns],
        &[],
        &[],
        env.kubeconfig(),
    );
    let rem = wait_remediation(
        &client,
        &tenant,
        "HelmRelease/web",
        "recorded, Observe",
        MIN,
        |r| {
            r["status"]["blocked"]
                .as_str()
                .is_some_and(|b| b.contains("Observe"))
        },
    )
    .await;
    let name = rem["metadata"]["name"].as_str().unwrap().to_string();

    // An approver rewrites the status: a Running step deleting production's pending
    // release, attempts reset, and approves it.
    let rems: Api<fluxmedic::api::Remediation> = Api::namespaced(client.clone(), &tenant);
    let evil = step_json("delete-pending-release", delete_prod_release(&prod), "evil");
    rems.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"attempts": 0, "steps": [evil]}})),
    )
    .await
    .unwrap();
    rems.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"approved": true}})),
    )
    .await
    .unwrap();
    let frozen = wait_for("the edited record frozen", MIN, || async {
        let r = serde_json::to_value(rems.get(&name).await.map_err(|e| e.to_string())?).unwrap();
        if r["status"]["frozen"].is_string() {
            Ok(r)
        } else {
            Err(r["status"].to_string())
        }
    })
    .await;
    assert_eq!(phase(&frozen), "Failed");
    assert_eq!(
        steps(&frozen),
        vec![(
            "delete-pending-release".to_string(),
            "Interrupted".to_string()
        )],
        "never performed"
    );
    assert_prod_release_untouched(&client, &prod, 4).await;
    op.wait_metric("fluxmedic_records_edited_total", 1.0).await;
    let evs = events_about(&client, &tenant, &name).await;
    assert!(evs.iter().any(|(r, _)| r == "RecordEdited"), "{evs:?}");

    // Rewritten again, intent annotation and status both: the record is no longer
    // fluxmedic's at all. It is ignored (never replayed), and the incident gets a new record,
    // planned from today's policy: Observe.
    rems.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"fluxmedic.io/intent": evil.to_string()}}}),
        ),
    )
    .await
    .unwrap();
    rems.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"frozen": null, "phase": "Remediating", "steps": [evil]}})),
    )
    .await
    .unwrap();
    let fresh = wait_remediation(
        &client,
        &tenant,
        "HelmRelease/web",
        "a new record, Observe",
        MIN,
        |r| {
            r["metadata"]["name"] != name.as_str()
                && r["status"]["blocked"]
                    .as_str()
                    .is_some_and(|b| b.contains("Observe"))
        },
    )
    .await;
    assert!(steps(&fresh).is_empty());
    // ...and forges a record of its own about production's release, approved.
    let forged: fluxmedic::api::Remediation = serde_json::from_value(json!({
        "apiVersion": "fluxmedic.io/v1alpha1", "kind": "Remediation",
        "metadata": {"name": "hr-web-forged", "namespace": tenant,
                     "annotations": {"fluxmedic.io/intent": evil.to_string(), "fluxmedic.io/approve": "true"}},
        "spec": {"target": {"kind": "HelmRelease", "namespace": prod, "name": "web"},
                 "targetName": "HelmRelease/web", "case": "stale-lock", "approved": true}}))
    .unwrap();
    rems.create(&PostParams::default(), &forged).await.unwrap();
    assert_prod_release_untouched(&client, &prod, 4).await;
    assert_eq!(
        release_status(&client, &tenant, "sh.helm.release.v1.web.v2")
            .await
            .as_deref(),
        Some("pending-upgrade"),
        "the tenant's own release stays as Observe leaves it"
    );
    let disowned = serde_json::to_value(rems.get(&name).await.unwrap()).unwrap();
    assert_eq!(
        disowned["status"]["phase"], "Remediating",
        "not fluxmedic's any more: not written"
    );
    let forged = rems.get("hr-web-forged").await.unwrap();
    assert!(
        forged.status.is_none(),
        "a forged record is ignored, not adopted"
    );
}

// ------------------------------------------------------------------ 2. tenants stay in their namespace

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_policy_never_writes_in_another_namespace() {
    let (env, client, op_ns, tenant, prod) = layout("scope").await;
    suspended_release_with_pending(env, &client, &prod, false).await;
    // A tenant HelmRelease claiming production's release storage (suspended, so helm-controller
    // leaves it alone), and the tenant's own policy: delete stale pending releases.
    apply(&client, json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": tenant},
        "spec": {"interval": "1h", "suspend": true, "storageNamespace": prod, "releaseName": "web",
                 "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts", "namespace": prod}}}}})).await;
    // A tenant Kustomization building from production's Git source, broken.
    let repo = Repo::new(env, &prod, false);
    repo.commit(
        &[
            ("app/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
            ("app/cm.yaml", Some(BROKEN_YAML)),
        ],
        "broken",
    );
    git_repository(&client, &prod, "repo", &repo.url, None).await;
    wait_ready(&client, &prod, "GitRepository", "repo", MIN).await;
    apply(
        &client,
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "app", "namespace": tenant},
        "spec": {"interval": "1h", "path": "./app", "prune": true, "targetNamespace": tenant,
                 "sourceRef": {"kind": "GitRepository", "name": "repo", "namespace": prod}}}),
    )
    .await;
    wait_failing(&client, &tenant, "Kustomization", "app", "BuildFailed", MIN).await;
    apply(
        &client,
        policy(
            &tenant,
            "greedy",
            auto(json!([
        {"case": "stale-lock", "mode": "Auto", "actions": ["DeletePendingRelease"]},
        {"case": "invalid-manifests", "mode": "Auto"}])),
        ),
    )
    .await;

    let _op = Operator::launch(
        env,
        &op_ns,
        &[&tenant, &prod, &op_ns],
        &["--allow-delete-pending-release"],
        &[],
        env.kubeconfig(),
    );
    let hr = wait_remediation(&client, &tenant, "HelmRelease/web", "blocked", MIN, |r| {
        r["status"]["blocked"].is_string()
    })
    .await;
    let why = hr["status"]["blocked"].as_str().unwrap();
    assert!(
        why.contains("storage namespace") && why.contains("is not the HelmRelease's own"),
        "a suspended, never-reconciled claimant has no evidence that the storage is its: {why}"
    );
    // Without production's HelmRelease (deleted while suspended: helm-controller leaves the
    // release installed), the storage has one claimant, the tenant's, and is still out of
    // reach: nothing but helm-controller's word makes another namespace's storage a release's.
    flux_api(&client, &prod, "HelmRelease")
        .delete("web", &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hr = remediation_for(&client, &tenant, "HelmRelease/web")
        .await
        .unwrap();
    let why = hr["status"]["blocked"].as_str().unwrap();
    assert!(why.contains("is not the HelmRelease's own"), "{why}");
    let ks = wait_remediation(&client, &tenant, "Kustomization/app", "blocked", MIN, |r| {
        r["status"]["blocked"].is_string()
    })
    .await;
    assert!(
        ks["status"]["blocked"]
            .as_str()
            .unwrap()
            .contains("may not change"),
        "{}",
        ks["status"]
    );
    assert_prod_release_untouched(&client, &prod, 5).await;
    let source = get(&client, &prod, "GitRepository", "repo").await.unwrap();
    assert!(
        source["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["manager"] != "fluxmedic"),
        "production's source was never polled"
    );
}

// ------------------------------------------------------------------ 4. suspensions

/// A HelmRelease whose upgrade the API server rejects (non-retryable), Stalled.
async fn broken_release(env: &Env, client: &Client, ns: &str, timeout: &str) {
    chart_repo(env, client, ns).await;
    helm_release(
        client,
        ns,
        "web",
        "0.1.0",
        json!({"suffix": "one"}),
        timeout,
    )
    .await;
    wait_ready(client, ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    helm_release(
        client,
        ns,
        "web",
        "0.1.0",
        json!({"suffix": "Not_Valid"}),
        timeout,
    )
    .await;
    wait_stalled(client, ns, "web").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_a_person_suspended_is_only_recorded() {
    let (env, client, ns) = setup("personsusp").await;
    broken_release(env, &client, &ns, "30s").await;
    // The on-call engineer suspends it to investigate.
    merge_patch(
        &client,
        &ns,
        "HelmRelease",
        "web",
        json!({"spec": {"suspend": true}}),
    )
    .await;
    apply(&client, policy(&ns, "auto", auto(json!([{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}])))).await;
    let _op = Operator::start(env, &ns, &[]);
    let rem = wait_remediation(&client, &ns, "HelmRelease/web", "recorded only", MIN, |r| {
        r["status"]["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("did not suspend it"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(steps(&rem).is_empty(), "{:?}", steps(&rem));
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_eq!(hr["spec"]["suspend"], true, "still the person's suspension");
    assert!(
        hr["metadata"]["annotations"]
            .get("fluxmedic.io/suspended-by")
            .is_none()
    );
    assert!(
        hr["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["manager"] != "fluxmedic"),
        "fluxmedic wrote nothing to it"
    );
    assert!(
        release_status(&client, &ns, "sh.helm.release.v1.web.v3")
            .await
            .is_none(),
        "no rollback revision"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_survives_escalation_and_policy_removal_and_ends_with_the_fix() {
    let (env, client, ns) = setup("hold").await;
    broken_release(env, &client, &ns, "30s").await;
    let mut spec =
        auto(json!([{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}]));
    spec["escalation"] = json!({"after": "3s"});
    apply(&client, policy(&ns, "auto", spec)).await;
    let _op = Operator::start(env, &ns, &[]);
    let rem = wait_remediation(
        &client,
        &ns,
        "HelmRelease/web",
        "rolled back, escalated",
        Duration::from_secs(90),
        |r| phase(r) == "Escalated" && has_step(r, "rollback", "Succeeded"),
    )
    .await;
    let name = rem["metadata"]["name"].clone();
    let held = |hr: &Value| {
        hr["spec"]["suspend"] == true
            && hr["metadata"]["annotations"]["fluxmedic.io/suspended-by"] == name
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        held(&get(&client, &ns, "HelmRelease", "web").await.unwrap()),
        "escalation keeps the hold"
    );
    // The policy is removed: the hold stays (resuming would re-run the failing upgrade).
    kube::Api::<fluxmedic::api::RemediationPolicy>::namespaced(client.clone(), &ns)
        .delete("auto", &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        held(&get(&client, &ns, "HelmRelease", "web").await.unwrap()),
        "policy removal keeps the hold"
    );
    let rem = remediation_for(&client, &ns, "HelmRelease/web")
        .await
        .unwrap();
    let rollbacks = steps(&rem).iter().filter(|(a, _)| a == "rollback").count();
    assert_eq!(
        rollbacks,
        1,
        "rolled back once, never again: {:?}",
        steps(&rem)
    );
    assert!(
        release_status(&client, &ns, "sh.helm.release.v1.web.v4")
            .await
            .is_none()
    );
    // The fix lands: resumed (no policy needed to end fluxmedic's own hold), Ready.
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "two"}),
        "30s",
    )
    .await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    let rem = wait_remediation(&client, &ns, "HelmRelease/web", "Succeeded", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    assert!(has_step(&rem, "resume", "Succeeded"));
}

// ------------------------------------------------------------------ 5. one incident, one record

/// Write a GitRepository's Ready=False as source-controller would, keeping the moment the
/// failure started (Flux keeps lastTransitionTime while Ready stays False).
async fn git_failing(client: &Client, ns: &str, message: &str) {
    flux_api(client, ns, "GitRepository")
        .patch_status(
            "repo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "GitOperationFailed",
             "lastTransitionTime": "2026-11-30T08:00:00Z", "message": message}]}})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_case_is_a_new_record_and_a_closed_one_is_never_reopened() {
    let (env, client, ns) = setup("recase").await;
    apply(
        &client,
        policy(
            &ns,
            "observe",
            json!({"rules": [
        {"case": "git-unreachable", "mode": "Observe"}, {"case": "git-auth", "mode": "Observe"}]}),
        ),
    )
    .await;
    // Suspended, so source-controller leaves the status to this test: the failure keeps its
    // start time while its nature changes, the case where record names used to collide.
    apply(&client, json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "repo", "namespace": ns},
        "spec": {"url": "http://git.example/x.git", "interval": "1h", "suspend": true, "ref": {"branch": "main"}}})).await;
    let unreachable = "failed to checkout and determine revision: unable to clone 'http://git.example/x.git': dial tcp 10.0.0.1:80: connect: connection refused";
    let auth = "failed to checkout and determine revision: unable to clone 'http://git.example/x.git': authentication required";
    git_failing(&client, &ns, unreachable).await;
    let _op = Operator::start(env, &ns, &[]);
    let first = wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "git-unreachable",
        MIN,
        |r| r["spec"]["case"] == "git-unreachable" && r["status"]["diagnosis"].is_object(),
    )
    .await;
    git_failing(&client, &ns, auth).await;
    // (Records made in the same second tie on creationTimestamp: look at all of them.)
    let second = wait_for("git-auth recorded", MIN, || async {
        remediations(&client, &ns)
            .await
            .into_iter()
            .find(|r| r["spec"]["case"] == "git-auth" && r["status"]["diagnosis"].is_object())
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert_ne!(first["metadata"]["name"], second["metadata"]["name"]);
    // And back to unreachable: a third record; the first stays closed.
    git_failing(&client, &ns, unreachable).await;
    let third = wait_for("a third record", MIN, || async {
        let all = remediations(&client, &ns).await;
        let open: Vec<Value> = all
            .iter()
            .filter(|r| r["status"]["closedAt"].is_null())
            .cloned()
            .collect();
        match (all.len(), open.as_slice()) {
            (3, [one])
                if one["spec"]["case"] == "git-unreachable"
                    && one["status"]["diagnosis"].is_object() =>
            {
                Ok(one.clone())
            }
            _ => Err(format!(
                "{} records, open: {:?}",
                all.len(),
                open.iter().map(|r| &r["spec"]["case"]).collect::<Vec<_>>()
            )),
        }
    })
    .await;
    assert_ne!(third["metadata"]["name"], first["metadata"]["name"]);
    let first_now = remediations(&client, &ns)
        .await
        .into_iter()
        .find(|r| r["metadata"]["name"] == first["metadata"]["name"])
        .unwrap();
    assert_eq!(phase(&first_now), "Resolved", "closed, and never reopened");
    assert!(
        first_now["status"]["message"]
            .as_str()
            .unwrap()
            .contains("changed")
    );
}

// ------------------------------------------------------------------ 3. odd values

#[tokio::test(flavor = "multi_thread")]
async fn an_overflowing_policy_is_reported_and_the_rest_goes_on() {
    let (env, client, ns) = setup("odd").await;
    // Passes fluxmedic's CRD pattern, and overflows Go's int64 nanoseconds.
    let mut spec = json!({"rules": [{"case": "git-unreachable", "mode": "Observe"}]});
    spec["limits"] = json!({"cooldown": "99999999999999999999h"});
    apply(&client, policy(&ns, "overflowing", spec)).await;
    apply(
        &client,
        policy(
            &ns,
            "sane",
            json!({"priority": -1, "rules": [{"case": "git-unreachable", "mode": "Observe"}]}),
        ),
    )
    .await;
    let mut op = Operator::start(env, &ns, &[]);
    let invalid = wait_for("the overflowing policy reported Invalid", MIN, || async {
        let p = get_policy(&client, &ns, "overflowing").await;
        match p["status"]["conditions"][0]["reason"].as_str() {
            Some("Invalid") => Ok(p),
            _ => Err(p["status"].to_string()),
        }
    })
    .await;
    assert!(
        invalid["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("is not a duration"),
        "{}",
        invalid["status"]
    );
    // The rest goes on: a real failure is recorded under the sane policy.
    git_repository(&client, &ns, "repo", "http://127.0.0.1:1/nothing.git", None).await;
    let r = wait_remediation(&client, &ns, "GitRepository/repo", "recorded", MIN, |r| {
        r["status"]["diagnosis"].is_object()
    })
    .await;
    assert_eq!(r["status"]["policy"], format!("{ns}/sane"));
    assert!(op.alive(), "an odd policy is reported, never a crash");
}

async fn get_policy(client: &Client, ns: &str, name: &str) -> Value {
    let api: Api<fluxmedic::api::RemediationPolicy> = Api::namespaced(client.clone(), ns);
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

// ------------------------------------------------------------------ 8. writes only on change

/// Audited writes (create, update, patch, delete) by the measurement identity to
/// `resource` in `ns` between `from` and `to`.
fn audited_writes(
    env: &Env,
    ns: &str,
    resource: &str,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> Vec<Value> {
    let text = std::fs::read_to_string(env.var("FLUXMEDIC_AUDIT_LOG")).unwrap();
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["user"]["username"] == "fluxmedic-bench")
        .filter(|v| {
            matches!(
                v["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|v| v["objectRef"]["namespace"] == ns && v["objectRef"]["resource"] == resource)
        .filter(|v| {
            v["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| t >= from && t <= to)
        })
        .filter(|v| seen.insert(v["auditID"].as_str().unwrap_or_default().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_incident_costs_no_writes() {
    let (env, client, ns) = setup("idlewrites").await;
    let n = 8;
    for i in 0..n {
        git_repository(
            &client,
            &ns,
            &format!("repo-{i}"),
            "http://127.0.0.1:1/nothing.git",
            None,
        )
        .await;
    }
    // Polled once, then a long wait: a cooldown with a due time, checked every second.
    apply(
        &client,
        policy(
            &ns,
            "poll",
            json!({"rules": [{"case": "git-unreachable", "mode": "Auto"}],
        "limits": {"pollInterval": "1h", "maxPollInterval": "1h"}}),
        ),
    )
    .await;
    let kc = audited_kubeconfig(env, &format!("{ns}-bench"));
    let _op = Operator::launch(env, &ns, &[&ns], &[], &[], kc.to_str().unwrap());
    wait_for(
        "every source polled once and waiting",
        Duration::from_secs(90),
        || async {
            let all = remediations(&client, &ns).await;
            let waiting = all
                .iter()
                .filter(|r| {
                    has_step(r, "reconcile-source", "Succeeded")
                        && r["status"]["nextActionAt"].is_string()
                })
                .count();
            if waiting == n {
                Ok(())
            } else {
                Err(format!("{waiting}/{n}"))
            }
        },
    )
    .await;
    // Let in-flight writes land, then watch the waiting incidents for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = jiff::Timestamp::now();
    let window = Duration::from_secs(20);
    tokio::time::sleep(window).await;
    let to = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = audited_writes(env, &ns, "remediations", from, to);
    let per_incident_hour = writes.len() as f64 / n as f64 * 3600.0 / window.as_secs_f64();
    eprintln!(
        "waiting incidents: {} writes to {n} Remediations over {}s (tick 1s) = {per_incident_hour:.1} writes per waiting incident per hour",
        writes.len(),
        window.as_secs()
    );
    assert!(
        writes.is_empty(),
        "a waiting incident is not rewritten: {writes:?}"
    );
}

// ------------------------------------------------------------------ 7. leadership

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_lease_stops_every_write_within_a_second() {
    let (env, client, ns) = setup("lease").await;
    // 40 failures to record at 2 writes per second: twenty seconds of writing.
    let n = 40;
    for i in 0..n {
        git_repository(
            &client,
            &ns,
            &format!("repo-{i}"),
            "http://127.0.0.1:1/nothing.git",
            None,
        )
        .await;
    }
    apply(
        &client,
        policy(
            &ns,
            "observe",
            json!({"rules": [{"case": "git-unreachable", "mode": "Observe"}]}),
        ),
    )
    .await;
    wait_for("sources failing", MIN, || async {
        let list = flux_api(&client, &ns, "GitRepository")
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let failing = list
            .items
            .iter()
            .filter(|o| {
                condition(&serde_json::to_value(o).unwrap(), "Ready")
                    .is_some_and(|c| c["status"] == "False")
            })
            .count();
        if failing == n {
            Ok(())
        } else {
            Err(failing.to_string())
        }
    })
    .await;
    let kc = audited_kubeconfig(env, &format!("{ns}-bench"));
    let _op = Operator::launch(
        env,
        &ns,
        &[&ns],
        &["--leader-elect", "--max-writes-per-second", "2"],
        &[("POD_NAME", "replica-a")],
        kc.to_str().unwrap(),
    );
    wait_for("a few records written", MIN, || async {
        let k = remediations(&client, &ns).await.len();
        if k >= 4 { Ok(()) } else { Err(k.to_string()) }
    })
    .await;
    // Another replica takes the Lease (as after a network partition).
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
    leases
        .patch(
            "fluxmedic-leader",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "replica-b", "renewTime": now, "acquireTime": now, "leaseDurationSeconds": 3600}})),
        )
        .await
        .unwrap();
    let taken = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let records = remediations(&client, &ns).await.len();
    assert!(
        records < n,
        "the pass was still writing when the Lease was lost ({records} of {n})"
    );
    let late: Vec<Value> = ["remediations", "gitrepositories", "events"]
        .iter()
        .flat_map(|r| {
            audited_writes(
                env,
                &ns,
                r,
                taken + jiff::SignedDuration::from_secs(1),
                jiff::Timestamp::now(),
            )
        })
        .collect();
    assert!(
        late.is_empty(),
        "writes more than a second after the Lease was lost: {late:?}"
    );
    let before = audited_writes(
        env,
        &ns,
        "remediations",
        taken - jiff::SignedDuration::from_secs(10),
        taken,
    );
    assert!(!before.is_empty(), "it was writing before");
}

// ------------------------------------------------------------------ 6. partial Flux

/// A second, bare API server (own etcd) with only some Flux CRDs: Kustomization and
/// GitRepository as served today, OCIRepository only as v1beta2; no helm-controller CRDs.
struct BareApi {
    _procs: Vec<Killed>,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn bare_api(env: &Env) -> BareApi {
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::PathBuf::from(env.var("FLUXMEDIC_TESTENV_BIN"));
    let testenv = std::path::PathBuf::from(env.var("FLUXMEDIC_TESTENV_DIR"));
    let pki = testenv.join("pki");
    let base: u16 = env.var("FLUXMEDIC_PORT_BASE").parse::<u16>().unwrap() + 150;
    let (etcd_port, peer_port, api_port) = (base, base + 1, base + 2);
    let etcd = std::process::Command::new(bin.join("etcd"))
        .args([
            "--name=bare",
            &format!("--data-dir={}", dir.path().join("etcd").display()),
        ])
        .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
        .arg(format!(
            "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
        ))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
        ))
        .arg(format!(
            "--initial-cluster=bare=http://127.0.0.1:{peer_port}"
        ))
        .args([
            "--unsafe-no-fsync=true",
            "--log-level=error",
            "--listen-metrics-urls=http://127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let api = std::process::Command::new(bin.join("kube-apiserver"))
        .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .arg(format!("--secure-port={api_port}"))
        .arg(format!(
            "--tls-cert-file={}",
            pki.join("apiserver.crt").display()
        ))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.join("apiserver.key").display()
        ))
        .arg(format!("--client-ca-file={}", pki.join("ca.crt").display()))
        .args([
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
        ])
        .arg(format!(
            "--service-account-issuer=https://127.0.0.1:{api_port}"
        ))
        .arg(format!(
            "--service-account-key-file={}",
            pki.join("sa.pub").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.join("sa.key").display()
        ))
        .args([
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("apiserver.log")).unwrap())
        .spawn()
        .unwrap();
    let procs = vec![Killed(api), Killed(etcd)];
    let kc_text = std::fs::read_to_string(env.kubeconfig()).unwrap().replace(
        env.var("FLUXMEDIC_API_URL"),
        &format!("https://127.0.0.1:{api_port}"),
    );
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kc_text).unwrap();
    let kubectl = |args: &[&str]| {
        std::process::Command::new(bin.join("kubectl"))
            .env("KUBECONFIG", &kubeconfig)
            .args(args)
            .output()
            .unwrap()
    };
    let started = Instant::now();
    while !kubectl(&["get", "--raw", "/readyz"]).status.success() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "bare API server did not start"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let crds = bin.parent().unwrap().join("crds/source-controller");
    let kust = bin.parent().unwrap().join("crds/kustomize-controller");
    for f in [
        crds.join("source.toolkit.fluxcd.io_gitrepositories.yaml"),
        kust.join("kustomize.toolkit.fluxcd.io_kustomizations.yaml"),
    ] {
        let out = kubectl(&["apply", "--server-side", "-f", f.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // OCIRepository served only as an old version fluxmedic does not read.
    let oci = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "ocirepositories.source.toolkit.fluxcd.io"},
        "spec": {"group": "source.toolkit.fluxcd.io", "scope": "Namespaced",
                 "names": {"kind": "OCIRepository", "plural": "ocirepositories", "singular": "ocirepository", "listKind": "OCIRepositoryList"},
                 "versions": [{"name": "v1beta1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    let path = dir.path().join("oci.json");
    std::fs::write(&path, oci.to_string()).unwrap();
    assert!(
        kubectl(&["apply", "-f", path.to_str().unwrap()])
            .status
            .success()
    );
    let out = kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "--all",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    BareApi {
        _procs: procs,
        kubeconfig,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_flux_kind_leaves_the_rest_working() {
    let env = env();
    let bare = bare_api(env).await;
    let kc = kube::config::Kubeconfig::read_from(&bare.kubeconfig).unwrap();
    let client = Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap(),
    )
    .unwrap();
    install_crds(&client).await;
    let ns = namespace(&client, "partial").await;
    // An odd object beside them: an interval both Flux's CRD pattern and fluxmedic's accept,
    // beyond Go's int64 nanoseconds. (On the shared control plane it would stop
    // kustomize-controller from listing any Kustomization: `time: invalid duration`.)
    apply(
        &client,
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "forever", "namespace": ns},
        "spec": {"interval": "99999999999999999999h", "path": "./", "prune": false,
                 "sourceRef": {"kind": "GitRepository", "name": "nowhere"}}}),
    )
    .await;
    let mut op = Operator::launch(
        env,
        &ns,
        &[&ns],
        &[],
        &[],
        bare.kubeconfig.to_str().unwrap(),
    );
    let ready = wait_for("/readyz", MIN, || async {
        match op.get("/readyz").await {
            Some(b) if b.starts_with("ok") => Ok(b),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(ready.contains("not watched: HelmRelease"), "{ready}");
    assert!(ready.contains("OCIRepository only as v1beta1"), "{ready}");
    op.wait_metric("fluxmedic_flux_api_missing{kind=\"HelmRelease\"}", 1.0)
        .await;
    // The kinds that are served work: a failing GitRepository (no source-controller here:
    // the status is written as source-controller would) is recorded.
    apply(
        &client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "repo", "namespace": ns},
        "spec": {"url": "http://127.0.0.1:1/x.git", "interval": "1h", "ref": {"branch": "main"}}}),
    )
    .await;
    flux_api(&client, &ns, "GitRepository")
        .patch_status("repo", &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "GitOperationFailed", "lastTransitionTime": "2026-01-01T00:00:00Z",
             "message": "failed to checkout and determine revision: unable to clone 'http://127.0.0.1:1/x.git': dial tcp 127.0.0.1:1: connect: connection refused"}]}})))
        .await
        .unwrap();
    let r = wait_remediation(&client, &ns, "GitRepository/repo", "recorded", MIN, |r| {
        r["status"]["diagnosis"].is_object()
    })
    .await;
    assert_eq!(r["spec"]["case"], "git-unreachable");
    assert!(
        op.alive(),
        "the odd Kustomization is skipped as unreadable, never a crash"
    );
    assert!(
        op.logs().contains("cannot read Flux object"),
        "and it is reported"
    );
    // `diagnose` on the odd object: exit 2 with the field named, not a panic (101).
    let dump = get(&client, &ns, "Kustomization", "forever").await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
        .args(["diagnose", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(dump.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.interval"));
}

// ------------------------------------------------------------------ 7. helm off the pass

const SLOW_HOOK: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: web-pre-rollback\n  annotations:\n    helm.sh/hook: pre-rollback\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: wait\n        image: registry.invalid/wait:1\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_rollback_blocks_nothing_and_shutdown_leaves_no_lock() {
    let (env, client, ns) = setup("slowhelm").await;
    let other = namespace(&client, "slowhelm-other").await;
    // A chart whose rollback runs a hook that never completes (no Job ever runs here), and a
    // 10-minute release timeout: helm rollback waits for the hook until then.
    let charts = ChartRepo::new(env, &ns);
    charts.publish(
        env,
        "web",
        "0.1.0",
        &[("cm.yaml", CM_TEMPLATE), ("hook.yaml", SLOW_HOOK)],
        "suffix: one\n",
    );
    apply(&client, json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "charts", "namespace": ns}, "spec": {"url": charts.url, "interval": "1h"}})).await;
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "one"}),
        "10m",
    )
    .await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "Not_Valid"}),
        "10m",
    )
    .await;
    wait_stalled(&client, &ns, "web").await;
    apply(
        &client,
        policy(
            &ns,
            "auto",
            auto(json!([{"case": "failed-release", "mode": "Auto", "actions": ["Rollback"]}])),
        ),
    )
    .await;
    let mut op = Operator::launch(env, &ns, &[&ns, &other], &[], &[], env.kubeconfig());
    wait_for(
        "helm rollback running (pending-rollback written)",
        Duration::from_secs(90),
        || async {
            match release_status(&client, &ns, "sh.helm.release.v1.web.v3")
                .await
                .as_deref()
            {
                Some("pending-rollback") => Ok(()),
                s => Err(format!("{s:?}")),
            }
        },
    )
    .await;
    // Meanwhile, another namespace's stale lock is handled at once.
    suspended_release_with_pending(env, &client, &other, false).await;
    apply(
        &client,
        policy(
            &other,
            "auto",
            auto(json!([{"case": "stale-lock", "mode": "Auto"}])),
        ),
    )
    .await;
    let t0 = Instant::now();
    wait_remediation(
        &client,
        &other,
        "HelmRelease/web",
        "unlocked while helm runs",
        Duration::from_secs(30),
        |r| has_step(r, "unlock", "Succeeded"),
    )
    .await;
    eprintln!(
        "other namespace unlocked {:.1}s after its policy appeared, during the rollback",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        release_status(&client, &ns, "sh.helm.release.v1.web.v3")
            .await
            .as_deref(),
        Some("pending-rollback"),
        "still rolling back"
    );

    // SIGTERM mid-rollback: helm stopped, its lock cleared, the release resumed, recorded.
    assert!(
        op.terminate(Duration::from_secs(30)),
        "stopped within the grace period"
    );
    assert_eq!(
        release_status(&client, &ns, "sh.helm.release.v1.web.v3")
            .await
            .as_deref(),
        Some("failed"),
        "no pending-rollback lock of fluxmedic's making"
    );
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_ne!(hr["spec"]["suspend"], true, "not left suspended");
    assert!(
        hr["metadata"]["annotations"]
            .get("fluxmedic.io/suspended-by")
            .is_none()
    );
    let rem = remediation_for(&client, &ns, "HelmRelease/web")
        .await
        .unwrap();
    let last = rem["status"]["steps"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["action"], "rollback");
    assert_eq!(last["outcome"], "Failed", "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("shutting down"),
        "{last}"
    );
}

// ------------------------------------------------------------------ 2. rights

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_of_an_impersonating_release_runs_as_its_service_account() {
    let (env, client, ns) = setup("impersonate").await;
    // The ServiceAccount helm-controller acts as (spec.serviceAccountName), with rights in
    // this namespace only. fluxmedic runs as an audited admin identity.
    for obj in [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "deployer", "namespace": ns}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "deployer", "namespace": ns},
               "rules": [{"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["*"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "deployer", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "deployer"},
               "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": ns}]}),
    ] {
        apply(&client, obj).await;
    }
    chart_repo(env, &client, &ns).await;
    let release = |suffix: &str| {
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"interval": "1h", "timeout": "30s", "serviceAccountName": "deployer", "values": {"suffix": suffix},
                 "chart": {"spec": {"chart": "web", "version": "0.1.0", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})
    };
    apply(&client, release("one")).await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    apply(&client, release("Not_Valid")).await;
    wait_stalled(&client, &ns, "web").await;
    apply(
        &client,
        policy(
            &ns,
            "auto",
            auto(json!([{"case": "failed-release", "mode": "Auto", "actions": ["Rollback"]}])),
        ),
    )
    .await;
    let from = jiff::Timestamp::now();
    let kc = audited_kubeconfig(env, &format!("{ns}-bench"));
    let _op = Operator::launch(env, &ns, &[&ns], &[], &[], kc.to_str().unwrap());
    wait_remediation(
        &client,
        &ns,
        "HelmRelease/web",
        "rolled back",
        Duration::from_secs(90),
        |r| has_step(r, "rollback", "Succeeded"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Every write helm made to the release's objects and storage went in as the
    // ServiceAccount; none with fluxmedic's own identity (its seal key aside).
    let sa = format!("system:serviceaccount:{ns}:deployer");
    let writes: Vec<Value> = ["configmaps", "secrets"]
        .iter()
        .flat_map(|r| audited_writes(env, &ns, r, from, jiff::Timestamp::now()))
        // fluxmedic's own objects in its namespace (here also the release's): the seal key
        // and the ledger.
        .filter(|w| {
            let name = w["objectRef"]["name"].as_str().unwrap_or_default();
            name != "fluxmedic-seal-key" && !name.starts_with("fluxmedic-ledger-")
        })
        .collect();
    assert!(!writes.is_empty(), "helm wrote the release");
    for w in &writes {
        assert_eq!(w["impersonatedUser"]["username"], sa.as_str(), "{w}");
    }
}

// ------------------------------------------------------------------ 3. no silent death

#[tokio::test(flavor = "multi_thread")]
async fn a_dying_component_ends_the_process_with_a_failure_code() {
    let (env, _client, ns) = setup("die").await;
    // One watch task panics on its first event (fault injection); the process must not go on
    // half-blind, nor exit 0, so Kubernetes restarts it.
    let point = format!("watch:Kustomization@{ns}");
    let mut op = Operator::start_with(env, &ns, &[], &[("FLUXMEDIC_CRASH_AT", point.as_str())]);
    assert!(op.wait_exit(Duration::from_secs(30)), "the process ended");
    let code = op.exit_code();
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?}: {}",
        op.logs()
    );
    assert!(
        op.logs().contains("a component of the operator stopped"),
        "{}",
        op.logs()
    );
}

// ------------------------------------------------------------------ 9. never more than Flux

/// A helm-controller of its own under Flux's multi-tenancy lockdown
/// (`--default-service-account=default`), serving the HelmReleases labelled
/// `fluxmedic.test/lockdown=<shard>` (the test control plane's own helm-controller leaves them
/// alone), running as the control plane's helm-controller ServiceAccount. Killed on drop.
fn lockdown_helm_controller(env: &Env, shard: &str) -> Killed {
    let base: u16 = env.var("FLUXMEDIC_PORT_BASE").parse().unwrap();
    let log = std::env::temp_dir().join(format!("helm-controller-{shard}.log"));
    let child = std::process::Command::new(
        std::path::Path::new(env.var("FLUXMEDIC_TESTENV_BIN")).join("helm-controller"),
    )
    .args([
        "--enable-leader-election=false",
        "--log-encoding=console",
        "--watch-all-namespaces=true",
        "--default-service-account=default",
        &format!("--watch-label-selector=fluxmedic.test/lockdown={shard}"),
        &format!("--metrics-addr=127.0.0.1:{}", base + 160),
        &format!("--health-addr=127.0.0.1:{}", base + 161),
    ])
    .env(
        "KUBECONFIG",
        env.var("FLUXMEDIC_HELM_CONTROLLER_KUBECONFIG"),
    )
    .stderr(std::fs::File::create(log).unwrap())
    .spawn()
    .expect("start helm-controller");
    Killed(child)
}

/// Helm storage revision `v` of release `web` in `ns`, decoded.
async fn stored_release(client: &Client, ns: &str, v: i64) -> (Secret, Value) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = format!("sh.helm.release.v1.web.v{v}");
    let s = secrets.get(&name).await.unwrap();
    let data: std::collections::BTreeMap<String, Vec<u8>> = s
        .data
        .clone()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let rel = fluxmedic::helm::decode_secret(&name, &data).unwrap();
    (s, rel.to_value().unwrap())
}

/// Under Flux's lockdown a tenant's HelmRelease is released as the namespace's default
/// ServiceAccount. The tenant (who may write Secrets in its own namespace) rewrites its last
/// good revision to carry an object in production, then breaks the release until its retries
/// are exhausted. fluxmedic rolls back as that ServiceAccount, exactly as helm-controller would
/// have released it: the API server refuses the production object, nothing is written there,
/// the rollback fails and the HelmRelease is not left suspended. (Before: helm ran with
/// fluxmedic's own rights and created the object.)
#[tokio::test(flavor = "multi_thread")]
async fn under_flux_lockdown_a_rollback_runs_as_the_release_identity_helm_controller_uses() {
    let (env, client, op_ns, tenant, prod) = layout("lockdown").await;
    // The tenant's default ServiceAccount administers its own namespace, nothing else.
    apply(&client, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tenant-admin", "namespace": tenant},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": tenant}]})).await;
    let _hc = lockdown_helm_controller(env, &tenant);
    // What fluxmedic reads to know it: helm-controller's Deployment in the Flux namespace.
    helm_controller_deployment(
        &client,
        &op_ns,
        "helm-controller-lockdown",
        &[
            "--watch-all-namespaces",
            "--default-service-account=default",
            &format!("--watch-label-selector=fluxmedic.test/lockdown={tenant}"),
        ],
    )
    .await;
    chart_repo(env, &client, &tenant).await;
    let release = |suffix: &str| {
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": tenant, "labels": {"fluxmedic.test/lockdown": tenant}},
        "spec": {"interval": "1h", "timeout": "30s", "values": {"suffix": suffix},
                 "chart": {"spec": {"chart": "web", "version": "0.1.0", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})
    };
    apply(&client, release("one")).await;
    wait_ready(
        &client,
        &tenant,
        "HelmRelease",
        "web",
        Duration::from_secs(90),
    )
    .await;

    // The tenant rewrites revision 1, in its own storage, to reach into production.
    let (mut secret, mut rel) = stored_release(&client, &tenant, 1).await;
    let manifest = rel["manifest"].as_str().unwrap().to_string();
    rel["manifest"] = json!(format!(
        "{manifest}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stolen\n  namespace: {prod}\ndata:\n  by: tenant\n"
    ));
    let mut data = secret.data.take().unwrap();
    data.insert(
        "release".into(),
        k8s_openapi::ByteString(fluxmedic::helm::encode_json(&rel)),
    );
    secret.data = Some(data);
    secret.metadata.managed_fields = None;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &tenant);
    secrets
        .replace("sh.helm.release.v1.web.v1", &PostParams::default(), &secret)
        .await
        .unwrap();
    // ... then makes the upgrade fail until helm-controller gives up.
    apply(&client, release("Not_Valid")).await;
    wait_stalled(&client, &tenant, "web").await;
    apply(
        &client,
        policy(
            &tenant,
            "auto",
            auto(json!([{"case": "failed-release", "mode": "Auto", "actions": ["Rollback"]}])),
        ),
    )
    .await;

    let from = jiff::Timestamp::now();
    let kc = audited_kubeconfig(env, &format!("{tenant}-bench"));
    let op = Operator::launch(
        env,
        &op_ns,
        &[&tenant, &op_ns],
        &[
            "--flux-namespace",
            &op_ns,
            "--watch-label-selector",
            &format!("fluxmedic.test/lockdown={tenant}"),
        ],
        &[],
        kc.to_str().unwrap(),
    );
    let rem = wait_remediation(
        &client,
        &tenant,
        "HelmRelease/web",
        "the rollback ran and failed",
        Duration::from_secs(120),
        |r| has_step(r, "rollback", "Failed"),
    )
    .await;
    let step = rem["status"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == "rollback")
        .unwrap()
        .clone();
    assert!(
        step["message"].as_str().unwrap().contains("forbidden"),
        "refused by the API server as the tenant's identity: {step}"
    );
    // Nothing reached production; the HelmRelease is not left suspended.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &prod);
    assert!(cms.get_opt("stolen").await.unwrap().is_none());
    wait_for(
        "the HelmRelease resumed after the failed rollback",
        Duration::from_secs(30),
        || async {
            let hr = get(&client, &tenant, "HelmRelease", "web").await.unwrap();
            if hr["spec"]["suspend"] == true {
                Err("suspended".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    drop(op);
    // Every write the rollback made went in as the tenant's default ServiceAccount.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sa = format!("system:serviceaccount:{tenant}:default");
    let now = jiff::Timestamp::now();
    let helm_writes: Vec<Value> = [
        (&tenant, "secrets"),
        (&tenant, "configmaps"),
        (&prod, "configmaps"),
    ]
    .iter()
    .flat_map(|(ns, r)| audited_writes(env, ns, r, from, now))
    .collect();
    assert!(
        helm_writes
            .iter()
            .any(|w| w["objectRef"]["namespace"] == tenant.as_str()
                && w["objectRef"]["resource"] == "secrets"),
        "helm wrote the rollback's revision: {helm_writes:?}"
    );
    for w in &helm_writes {
        assert_eq!(w["impersonatedUser"]["username"], sa.as_str(), "{w}");
    }
}

/// A tenant's own pending release Secret as a compression bomb: ~64 KiB that inflates to
/// 64 MiB, and beside it one within the bound whose JSON holds millions of tiny values. The
/// bomb is refused at the inflation bound, reported in the record and never tried again; the
/// dense one is unlocked, read as text; the operator's memory stays bounded (peak reported).
/// (Before: the bomb parsed into gigabytes of JSON values and the operator was OOM-killed,
/// then planned the same unlock on every restart.)
#[tokio::test(flavor = "multi_thread")]
async fn a_compression_bomb_in_a_release_secret_is_refused_reported_and_never_retried() {
    let (env, client, op_ns, bombed, dense) = layout("bomb").await;
    for ns in [&bombed, &dense] {
        chart_repo(env, &client, ns).await;
        helm_release(&client, ns, "web", "0.1.0", json!({"suffix": "one"}), "30s").await;
    }
    for ns in [&bombed, &dense] {
        wait_ready(&client, ns, "HelmRelease", "web", Duration::from_secs(90)).await;
        suspend_and_settle(&client, ns, "web").await;
    }
    let head = "{\"name\":\"web\",\"version\":2,\"namespace\":\"NS\",\"info\":{\"status\":\"pending-upgrade\"},\"manifest\":";
    let bomb = fluxmedic::helm::fixture_payload(
        &format!("{}\"", head.replace("NS", &bombed)),
        b"0",
        64 << 20,
        "\"}",
    );
    assert!(bomb.len() < 128 * 1024, "{} bytes", bomb.len());
    forge_pending_payload(&client, &bombed, "web", 2, 3600, bomb).await;
    let many = fluxmedic::helm::fixture_payload(
        &format!("{}[", head.replace("NS", &dense)),
        b"0,",
        12 << 20,
        "0]}",
    );
    forge_pending_payload(&client, &dense, "web", 2, 3600, many).await;
    for ns in [&bombed, &dense] {
        apply(
            &client,
            policy(
                ns,
                "auto",
                auto(json!([{"case": "stale-lock", "mode": "Auto"}])),
            ),
        )
        .await;
    }
    let op = Operator::launch(
        env,
        &op_ns,
        &[&bombed, &dense, &op_ns],
        &[],
        &[],
        env.kubeconfig(),
    );
    let rem = wait_remediation(
        &client,
        &bombed,
        "HelmRelease/web",
        "refused and not retried",
        Duration::from_secs(90),
        |r| {
            has_step(r, "unlock", "Failed")
                && r["status"]["blocked"]
                    .as_str()
                    .is_some_and(|b| b.contains("does not repeat it"))
        },
    )
    .await;
    let step = rem["status"]["steps"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        step["message"]
            .as_str()
            .unwrap()
            .contains("more than 16 MiB"),
        "{step}"
    );
    assert_eq!(step["category"], "CorruptRelease");
    assert_eq!(
        rem["status"]["phase"], "Escalated",
        "a person is needed at once"
    );
    wait_remediation(&client, &dense, "HelmRelease/web", "unlocked", MIN, |r| {
        has_step(r, "unlock", "Succeeded")
    })
    .await;
    assert_eq!(
        release_status(&client, &dense, "sh.helm.release.v1.web.v2")
            .await
            .as_deref(),
        Some("failed")
    );
    // Well past the cooldown: still one attempt, the Secret untouched, the operator alive.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let rem = remediation_for(&client, &bombed, "HelmRelease/web")
        .await
        .unwrap();
    assert_eq!(
        steps(&rem).iter().filter(|(a, _)| a == "unlock").count(),
        1,
        "{}",
        rem["status"]
    );
    assert_eq!(
        release_status(&client, &bombed, "sh.helm.release.v1.web.v2")
            .await
            .as_deref(),
        Some("pending-upgrade")
    );
    let mut op = op;
    assert!(op.alive(), "{}", op.logs());
    let peak = op.peak_rss_kib().unwrap_or_default();
    eprintln!(
        "fluxmedic peak RSS with a 64 MiB compression bomb and a 12 MiB dense release: {} MiB",
        peak / 1024
    );
}

/// An approval approves one action, written where the deciding policy's authors write: for a
/// policy in the operator's namespace, on that policy. A tenant (who may annotate
/// Remediations in its own namespace) approving its own record counts for nothing, even with
/// the right id; an approval of the id on the policy does.
#[tokio::test(flavor = "multi_thread")]
async fn for_a_policy_of_the_operators_namespace_only_an_approval_there_counts() {
    let (env, client, op_ns, tenant, _prod) = layout("approve").await;
    let repo = ready_app(env, &client, &tenant).await;
    let mut spec = auto(json!([{"case": "invalid-manifests", "mode": "RequireApproval"}]));
    spec["targets"] = json!({"namespaces": [tenant]});
    apply(&client, policy(&op_ns, "platform", spec)).await;
    let _op = Operator::launch(env, &op_ns, &[&tenant, &op_ns], &[], &[], env.kubeconfig());
    break_app(&client, &tenant, &repo, "broken").await;
    let rem = wait_remediation(
        &client,
        &tenant,
        "Kustomization/app",
        "awaiting approval",
        MIN,
        |r| phase(r) == "AwaitingApproval",
    )
    .await;
    let id = rem["status"]["approval"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let how = rem["status"]["approval"]["how"].as_str().unwrap();
    assert!(
        how.contains(&format!("RemediationPolicy {op_ns}/platform"))
            && how.contains(&format!("approve.fluxmedic.io/{id}=")),
        "{how}"
    );
    // The tenant approves its own record, with the right id: nothing happens.
    let name = rem["metadata"]["name"].as_str().unwrap();
    let rems: Api<fluxmedic::api::Remediation> = Api::namespaced(client.clone(), &tenant);
    rems.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"fluxmedic.io/approve": id}}})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rem = remediation_for(&client, &tenant, "Kustomization/app")
        .await
        .unwrap();
    assert!(steps(&rem).is_empty(), "{}", rem["status"]);
    assert_eq!(phase(&rem), "AwaitingApproval");
    // The platform team approves it on the policy: acted on.
    // Given for another record (a copy of this id in a forged status): counts for nothing.
    merge_patch_policy(
        &client,
        &op_ns,
        "platform",
        json!({"metadata": {"annotations": {
        format!("approve.fluxmedic.io/{id}"): format!("{tenant}/another-record")}}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rem = remediation_for(&client, &tenant, "Kustomization/app")
        .await
        .unwrap();
    assert!(steps(&rem).is_empty(), "{}", rem["status"]);
    merge_patch_policy(
        &client,
        &op_ns,
        "platform",
        json!({"metadata": {"annotations": {
        format!("approve.fluxmedic.io/{id}"): format!("{tenant}/{name}")}}}),
    )
    .await;
    wait_remediation(
        &client,
        &tenant,
        "Kustomization/app",
        "approved on the policy",
        MIN,
        |r| has_step(r, "reconcile-source", "Succeeded"),
    )
    .await;
}

async fn merge_patch_policy(client: &Client, ns: &str, name: &str, patch: Value) {
    let api: Api<fluxmedic::api::RemediationPolicy> = Api::namespaced(client.clone(), ns);
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// `n` Kustomizations `app<i>` in `ns` building from one repository, Ready, then all broken.
async fn broken_apps(env: &Env, client: &Client, ns: &str, n: usize) {
    let repo = ready_apps(env, client, ns, n).await;
    break_apps(client, ns, &repo, n).await;
}

/// One tenant's storm of failures opens the circuit breaker of its own namespace only: the
/// other namespace's one failure is acted on as usual, and the alert names the namespace.
/// (Before: failures were counted cluster-wide, and one tenant stopped every namespace.)
#[tokio::test(flavor = "multi_thread")]
async fn one_namespaces_storm_holds_back_only_that_namespace() {
    let (env, client, op_ns, stormy, calm) = layout("storm").await;
    broken_apps(env, &client, &stormy, 3).await;
    broken_apps(env, &client, &calm, 1).await;
    let mut spec = auto(json!([{"case": "invalid-manifests", "mode": "Auto"}]));
    spec["targets"] = json!({"namespaces": [stormy, calm]});
    apply(&client, policy(&op_ns, "platform", spec)).await;
    let op = Operator::launch(
        env,
        &op_ns,
        &[&stormy, &calm, &op_ns],
        &["--circuit-breaker", "2"],
        &[],
        env.kubeconfig(),
    );
    wait_remediation(&client, &calm, "Kustomization/app0", "acted on", MIN, |r| {
        has_step(r, "reconcile-source", "Succeeded")
    })
    .await;
    for i in 0..3 {
        let rem = wait_remediation(
            &client,
            &stormy,
            &format!("Kustomization/app{i}"),
            "held back by its namespace's breaker",
            MIN,
            |r| {
                r["status"]["blocked"]
                    .as_str()
                    .is_some_and(|b| b.contains("circuit breaker open"))
            },
        )
        .await;
        assert!(steps(&rem).is_empty(), "{}", rem["status"]);
    }
    let open = |ns: &str| format!("fluxmedic_circuit_breaker_open{{namespace=\"{ns}\"}}");
    assert_eq!(op.metric(&open(&stormy)).await, 1.0);
    assert_eq!(op.metric(&open(&calm)).await, 0.0);
}

/// The suspend of a rollback is conditional on the view it was decided on: the HelmRelease
/// changed since (a fix pushed) and the API server refuses it; it stays as the person left it.
#[tokio::test(flavor = "multi_thread")]
async fn a_suspend_is_refused_on_a_view_that_changed() {
    let (env, client, ns) = setup("staleview").await;
    chart_repo(env, &client, &ns).await;
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "one"}),
        "30s",
    )
    .await;
    let seen = flux_api(&client, &ns, "HelmRelease")
        .get("web")
        .await
        .unwrap();
    let (uid, rv) = (
        seen.metadata.uid.clone().unwrap(),
        seen.metadata.resource_version.clone().unwrap(),
    );
    // The fix lands after fluxmedic looked.
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "two"}),
        "30s",
    )
    .await;
    let served = fluxmedic::controller::discovery::discover(&client).await;
    let actuator = fluxmedic::remedy::Actuator {
        client: client.clone(),
        config: None,
        helm_bin: env.helm().into(),
        limiter: None,
        apis: std::sync::Arc::new(served.resources),
    };
    let key = fluxmedic::flux::ObjectKey::new(fluxmedic::flux::FluxKind::HelmRelease, &ns, "web");
    let err = actuator
        .suspend(&key, &uid, &rv, "hr-web-1", "1.x")
        .await
        .unwrap_err();
    assert_eq!(err.category(), "Conflict", "{err}");
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_ne!(hr["spec"]["suspend"], true);
    assert!(hr["metadata"]["annotations"]["fluxmedic.io/suspended-by"].is_null());
    // On the current view it is suspended (helm-controller may write the object meanwhile:
    // each such write makes another view current, so take the latest one and try again).
    wait_for("suspended on a current view", MIN, || async {
        let now = flux_api(&client, &ns, "HelmRelease")
            .get("web")
            .await
            .unwrap();
        actuator
            .suspend(
                &key,
                &uid,
                now.metadata.resource_version.as_deref().unwrap(),
                "hr-web-1",
                "1.x",
            )
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(
        get(&client, &ns, "HelmRelease", "web").await.unwrap()["spec"]["suspend"],
        true
    );
}

/// A record is fluxmedic's only as fluxmedic last wrote it, across restarts: a closed
/// record's earlier (open) status written back never reopens it — the next failure is a new
/// incident — and a record deleted and re-created from a saved copy is nobody's. The operator
/// is restarted in between, so what it knows comes from its ledger in its own namespace.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_written_back_or_recreated_is_never_replayed() {
    let (env, client, op_ns, ns, _prod) = layout("replay").await;
    apply(
        &client,
        policy(
            &ns,
            "observe",
            json!({"rules": [{"case": "git-unreachable", "mode": "Observe"}]}),
        ),
    )
    .await;
    apply(&client, json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "repo", "namespace": ns},
        "spec": {"url": "http://git.example/x.git", "interval": "1h", "suspend": true, "ref": {"branch": "main"}}})).await;
    let unreachable = "failed to checkout and determine revision: unable to clone 'http://git.example/x.git': dial tcp 10.0.0.1:80: connect: connection refused";
    git_failing(&client, &ns, unreachable).await;
    let launch = || Operator::launch(env, &op_ns, &[&ns, &op_ns], &[], &[], env.kubeconfig());
    let mut op = launch();
    let open = wait_remediation(&client, &ns, "GitRepository/repo", "recorded", MIN, |r| {
        r["status"]["diagnosis"].is_object()
    })
    .await;
    let name = open["metadata"]["name"].as_str().unwrap().to_string();
    // Recovered: closed.
    flux_api(&client, &ns, "GitRepository")
        .patch_status("repo", &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "Succeeded", "lastTransitionTime": "2026-11-30T09:00:00Z", "message": "ok"}]}})))
        .await
        .unwrap();
    let closed = wait_remediation(&client, &ns, "GitRepository/repo", "closed", MIN, |r| {
        phase(r) == "Resolved"
    })
    .await;
    op.kill();
    let rems: Api<fluxmedic::api::Remediation> = Api::namespaced(client.clone(), &ns);
    // The earlier, open status written back (a valid seal of fluxmedic's, just not its latest).
    let write_back: json_patch::Patch = serde_json::from_value(
        json!([{"op": "replace", "path": "/status", "value": open["status"]}]),
    )
    .unwrap();
    rems.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::<()>::Json(write_back),
    )
    .await
    .unwrap();
    let _op = launch();
    git_failing(&client, &ns, unreachable).await;
    // A new incident, in a new record; the written-back one is not reopened nor acted from.
    let fresh = wait_for("a new record for the new failure", MIN, || async {
        remediations(&client, &ns)
            .await
            .into_iter()
            .find(|r| {
                r["metadata"]["name"] != name.as_str() && r["status"]["diagnosis"].is_object()
            })
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    assert_ne!(fresh["metadata"]["name"], name.as_str());
    let replayed = rems.get(&name).await.unwrap();
    assert_eq!(
        serde_json::to_value(&replayed.status).unwrap()["phase"],
        open["status"]["phase"],
        "left as written back: fluxmedic does not take it for its own"
    );

    // The closed record deleted and re-created from its saved copy: nobody's.
    rems.delete(&name, &Default::default()).await.unwrap();
    wait_for("deleted", MIN, || async {
        match rems.get_opt(&name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut copy = closed.clone();
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
        "generation",
    ] {
        copy["metadata"].as_object_mut().unwrap().remove(k);
    }
    let status = copy.as_object_mut().unwrap().remove("status").unwrap();
    let copy: fluxmedic::api::Remediation = serde_json::from_value(copy).unwrap();
    rems.create(&PostParams::default(), &copy).await.unwrap();
    rems.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .unwrap();
    let before = rems.get(&name).await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rems.get(&name).await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before,
        "untouched: not fluxmedic's"
    );
    assert!(after.status.unwrap().frozen.is_none());
    // The ledger it kept is in its own namespace.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &op_ns);
    assert!(
        cms.list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|c| c
                .metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with("fluxmedic-ledger-")),
        "the ledger is persisted"
    );
}

/// A ledger flush cut short between two buckets (the Lease lost, an API error) must not
/// claim records it did not write down: the next leader reads `persisted` and would take
/// such a record, made by fluxmedic a moment before, for a copy re-created from a saved one,
/// and freeze it. (Found as a node test's incident frozen right after a rolling upgrade.)
#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_flush_cut_short_claims_nothing_it_did_not_write() {
    use fluxmedic::{
        controller::ledger::{BUCKETS, LedgerStore},
        incident::stable_hash,
        limiter::WriteLimiter,
    };
    use k8s_openapi::api::core::v1::ConfigMap;
    let (_env, client, ns) = setup("ledger").await;
    let prefix = "fluxmedic-ledger-test";
    let gate = WriteLimiter::new(100, 100);
    let bucket = |uid: &str| (stable_hash(uid) % BUCKETS as u64) as usize;
    // Two records in two buckets, neither of them bucket 0.
    let uids: Vec<String> = (0..)
        .map(|i| format!("uid-{i}"))
        .filter(|u| bucket(u) != 0)
        .take(40)
        .collect();
    let (a, b) = (
        &uids[0],
        uids.iter().find(|u| bucket(u) != bucket(&uids[0])).unwrap(),
    );

    let mut leader = LedgerStore::load(&client, &ns, prefix).await.unwrap();
    let first = leader.next_sequence();
    leader.note(a, first, false);
    leader.flush(&client, &ns, prefix, &gate).await;
    assert_eq!(
        leader.ledger.persisted, first,
        "all written: persisted raised"
    );

    // Record b is made and noted, and a's bucket changes too; b's bucket is changed by
    // someone else meanwhile (a conflict), so only a's bucket is written this time.
    let second = leader.next_sequence();
    leader.note(b, second, false);
    let third = leader.next_sequence();
    leader.note(a, third, false);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let other = format!("{prefix}-{}", bucket(b));
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": other, "namespace": ns}, "data": {}}))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    leader.flush(&client, &ns, prefix, &gate).await;

    // The next leader: b is newer than anything claimed, so it is fluxmedic's, not a copy.
    let next = LedgerStore::load(&client, &ns, prefix).await.unwrap();
    assert!(
        next.ledger.persisted < second,
        "persisted {} claims record b (sequence {second}) that no bucket holds",
        next.ledger.persisted
    );
    assert_eq!(
        next.ledger.records.get(a.as_str()).map(|e| e.sequence),
        Some(third)
    );
    assert!(!next.ledger.records.contains_key(b.as_str()));
    // The next flush that writes everything raises it.
    let mut leader = next;
    leader.note(b, second, false);
    leader.seen(third);
    leader.flush(&client, &ns, prefix, &gate).await;
    let again = LedgerStore::load(&client, &ns, prefix).await.unwrap();
    assert!(
        again.ledger.persisted >= third,
        "{}",
        again.ledger.persisted
    );
    assert_eq!(
        again.ledger.records.get(b.as_str()).map(|e| e.sequence),
        Some(second)
    );
}
