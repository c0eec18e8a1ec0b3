//! Reliability on the real control plane: the operator killed at each step of a multi-step
//! remediation finishes the job after a restart without doing anything twice, and with two
//! replicas only the Lease holder acts, with fail-over when it dies.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde_json::{Value, json};
use support::*;

const CM_TEMPLATE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-{{ .Values.suffix }}\ndata:\n  v: \"{{ .Values.suffix }}\"\n";

async fn release(env: &Env, client: &Client, ns: &str) {
    let charts = ChartRepo::new(env, ns);
    charts.publish(env, "web", "0.1.0", &[("cm.yaml", CM_TEMPLATE)], "suffix: one\n");
    apply(client, json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "charts", "namespace": ns}, "spec": {"url": charts.url, "interval": "1h"}})).await;
    set_values(client, ns, "one").await;
    wait_ready(client, ns, "HelmRelease", "web", Duration::from_secs(90)).await;
}

async fn set_values(client: &Client, ns: &str, suffix: &str) {
    apply(client, json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "metadata": {"name": "web", "namespace": ns},
        "spec": {"interval": "1h", "timeout": "30s", "values": {"suffix": suffix},
                 "chart": {"spec": {"chart": "web", "version": "0.1.0", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})).await;
}

async fn remediation(client: &Client, ns: &str, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
    wait_for(what, Duration::from_secs(120), || async {
        match remediation_for(client, ns, "HelmRelease/web").await {
            Some(r) if pred(&r) => Ok(r),
            Some(r) => Err(r["status"].to_string()),
            None => Err("none".into()),
        }
    })
    .await
}

/// Kill the operator at `point` of the rollback path, restart it, and check the job is
/// finished exactly once.
async fn crash_during_rollback(point: &str) {
    let env = env();
    let client = env.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, &format!("crash-{}", point.replace([':', '_'], "-"))).await;
    release(env, &client, &ns).await;
    apply(&client, policy(&ns, "auto", json!({"rules": [{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}]}))).await;
    let mut op = Operator::start_with(env, &ns, &[], &[("FLUXMEDIC_CRASH_AT", point)]);
    set_values(&client, &ns, "Not_Valid").await;
    assert!(op.wait_exit(Duration::from_secs(120)), "the operator reached {point} and died");
    let r = remediation_for(&client, &ns, "HelmRelease/web").await.unwrap();
    let last = r["status"]["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "rollback");
    assert_eq!(last["outcome"], "Running", "the intent was recorded before acting");

    let _op = Operator::start(env, &ns, &[]);
    let r = remediation(&client, &ns, |r| r["status"]["phase"] == "AwaitingFix", "the restarted operator finishes the rollback").await;
    let rollbacks: Vec<&Value> = r["status"]["steps"].as_array().unwrap().iter().filter(|s| s["action"] == "rollback").collect();
    assert_eq!(rollbacks.len(), 1, "one rollback step, finished: {rollbacks:?}");
    assert_eq!(rollbacks[0]["outcome"], "Succeeded");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("sh.helm.release.v1.web.v3").await.unwrap().is_some(), "rolled back once (revision 3)");
    assert!(secrets.get_opt("sh.helm.release.v1.web.v4").await.unwrap().is_none(), "and not twice");
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_eq!(hr["spec"]["suspend"], true);
    assert_eq!(hr["metadata"]["annotations"]["fluxmedic.io/suspended-by"], r["metadata"]["name"], "the suspension has an owner");

    set_values(&client, &ns, "two").await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    remediation(&client, &ns, |r| r["status"]["phase"] == "Succeeded", "resumed and recovered").await;
    assert_ne!(get(&client, &ns, "HelmRelease", "web").await.unwrap()["spec"]["suspend"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_recording_the_rollback_intent() {
    crash_during_rollback("rollback:after-intent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_suspending_before_helm_rollback() {
    crash_during_rollback("rollback:after-suspend").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_helm_rollback_before_recording_it() {
    crash_during_rollback("rollback:after-act").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leader_acts_and_a_standby_takes_over_when_it_dies() {
    let env = env();
    let client = env.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "ha").await;
    let repo = Repo::new(env, &ns, false);
    repo.commit(&[("app/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
                  ("app/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  v: one\n"))], "initial");
    apply(&client, json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "metadata": {"name": "repo", "namespace": ns},
        "spec": {"url": repo.url, "interval": "1h", "ref": {"branch": "main"}}})).await;
    apply(&client, json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "metadata": {"name": "app", "namespace": ns},
        "spec": {"interval": "1h", "path": "./app", "prune": true, "targetNamespace": ns, "sourceRef": {"kind": "GitRepository", "name": "repo"}}})).await;
    wait_ready(&client, &ns, "Kustomization", "app", Duration::from_secs(60)).await;
    apply(&client, policy(&ns, "auto", json!({"rules": [{"case": "invalid-manifests", "mode": "Auto"}],
        "limits": {"pollInterval": "2s", "maxPollInterval": "4s"}}))).await;

    let mut a = Operator::start(env, &ns, &["--leader-elect"]);
    let mut b = Operator::start(env, &ns, &["--leader-elect"]);
    let leaders = wait_for("one leader", Duration::from_secs(60), || async {
        let (la, lb) = (a.metric("fluxmedic_leader").await, b.metric("fluxmedic_leader").await);
        if la + lb == 1.0 { Ok((la, lb)) } else { Err(format!("{la} {lb}")) }
    })
    .await;
    repo.commit(&[("app/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  v: [broken\n"))], "broken");
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    wait_failing(&client, &ns, "Kustomization", "app", "BuildFailed", Duration::from_secs(60)).await;
    wait_for("the leader polls the source", Duration::from_secs(60), || async {
        match remediation_for(&client, &ns, "Kustomization/app").await {
            Some(r) if r["status"]["polls"].as_u64().unwrap_or(0) >= 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The standby wrote nothing: one Remediation, and its evaluation counter stays at zero.
    assert_eq!(remediations(&client, &ns).await.len(), 1);
    let (leader, standby) = if leaders.0 == 1.0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert_eq!(standby.metric("fluxmedic_evaluations_total").await, 0.0, "the standby never evaluated");

    let killed = Instant::now();
    leader.kill();
    wait_for("the standby takes over", Duration::from_secs(60), || async {
        if standby.metric("fluxmedic_leader").await == 1.0 { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    let failover = killed.elapsed();
    repo.commit(&[("app/cm.yaml", Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  v: two\n"))], "fix");
    wait_ready(&client, &ns, "Kustomization", "app", Duration::from_secs(60)).await;
    wait_for("the new leader closes the incident", Duration::from_secs(60), || async {
        match remediation_for(&client, &ns, "Kustomization/app").await {
            Some(r) if r["status"]["phase"] == "Succeeded" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!("leader fail-over after SIGKILL: {failover:?}");
    assert!(failover < Duration::from_secs(30), "fail-over took {failover:?}");
}
