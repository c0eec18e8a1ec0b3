//! Reliability on the real control plane: the operator killed at each step of a multi-step
//! remediation finishes the job after a restart without doing anything twice, and with two
//! replicas only the Lease holder acts, with fail-over when it dies.
//! Every multi-step action is killed at each of its steps: rollback (suspend, helm rollback),
//! unlock (mark failed, reconcile) and a source's credentials fix (source, then consumers).

mod support;

use std::time::{Duration, Instant};

#[allow(unused_imports)]
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use serde_json::{Value, json};
use support::*;

async fn release(env: &Env, client: &Client, ns: &str) {
    let charts = ChartRepo::new(env, ns);
    charts.publish(
        env,
        "web",
        "0.1.0",
        &[("cm.yaml", CM_TEMPLATE)],
        "suffix: one\n",
    );
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

async fn remediation(
    client: &Client,
    ns: &str,
    pred: impl Fn(&Value) -> bool,
    what: &str,
) -> Value {
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
    let (env, client, ns) = setup(&format!("crash-{}", point.replace([':', '_'], "-"))).await;
    release(env, &client, &ns).await;
    apply(&client, policy(&ns, "auto", json!({"rules": [{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}]}))).await;
    let mut op = Operator::start_with(env, &ns, &[], &[("FLUXMEDIC_CRASH_AT", point)]);
    set_values(&client, &ns, "Not_Valid").await;
    assert!(
        op.wait_exit(Duration::from_secs(120)),
        "the operator reached {point} and died"
    );
    let r = remediation_for(&client, &ns, "HelmRelease/web")
        .await
        .unwrap();
    interrupted_token(&r, "rollback");

    let _op = Operator::start(env, &ns, &[]);
    let r = remediation(
        &client,
        &ns,
        |r| r["status"]["phase"] == "AwaitingFix",
        "the restarted operator finishes the rollback",
    )
    .await;
    let rollbacks: Vec<&Value> = r["status"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == "rollback")
        .collect();
    assert_eq!(
        rollbacks.len(),
        1,
        "one rollback step, finished: {rollbacks:?}"
    );
    assert_eq!(rollbacks[0]["outcome"], "Succeeded");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets
            .get_opt("sh.helm.release.v1.web.v3")
            .await
            .unwrap()
            .is_some(),
        "rolled back once (revision 3)"
    );
    assert!(
        secrets
            .get_opt("sh.helm.release.v1.web.v4")
            .await
            .unwrap()
            .is_none(),
        "and not twice"
    );
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_eq!(hr["spec"]["suspend"], true);
    assert_eq!(
        hr["metadata"]["annotations"]["fluxmedic.io/suspended-by"], r["metadata"]["name"],
        "the suspension has an owner"
    );

    set_values(&client, &ns, "two").await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    remediation(
        &client,
        &ns,
        |r| r["status"]["phase"] == "Succeeded",
        "resumed and recovered",
    )
    .await;
    assert_ne!(
        get(&client, &ns, "HelmRelease", "web").await.unwrap()["spec"]["suspend"],
        true
    );
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

/// The last step recorded: in the status, or, for a new incident whose create carried its
/// first step's intent and whose outcome a crash kept from the status, in the annotation.
fn last_step(r: &Value) -> Value {
    match r["status"]["steps"].as_array().and_then(|s| s.last()) {
        Some(step) => step.clone(),
        None => recorded_intent(r).expect("a step in the status or an intent recorded at creation"),
    }
}

/// The token of the last step, asserted to be `action` left Running by the crash (the intent
/// was recorded before acting).
fn interrupted_token(r: &Value, action: &str) -> String {
    let interrupted = last_step(r);
    assert_eq!(interrupted["action"], action);
    assert_eq!(interrupted["outcome"], "Running", "the intent was recorded");
    interrupted["token"].as_str().unwrap().to_string()
}

fn steps_of<'a>(r: &'a Value, action: &str) -> Vec<&'a Value> {
    r["status"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == action)
        .collect()
}

/// Kill the operator at `point` of an unlock (mark the stale pending release failed, then
/// request a reconcile), restart it: the release is unlocked once, the reconcile carries the
/// recorded token, and the step ends Succeeded exactly once.
async fn crash_during_unlock(point: &str) {
    let (env, client, ns) = setup(&format!("crash-{}", point.replace([':', '_'], "-"))).await;
    suspended_release_with_pending(env, &client, &ns, false).await;
    apply(
        &client,
        policy(
            &ns,
            "auto",
            auto(json!([{"case": "stale-lock", "mode": "Auto"}])),
        ),
    )
    .await;
    let mut op = Operator::start_with(env, &ns, &[], &[("FLUXMEDIC_CRASH_AT", point)]);
    assert!(
        op.wait_exit(Duration::from_secs(120)),
        "the operator reached {point} and died"
    );
    let r = remediation_for(&client, &ns, "HelmRelease/web")
        .await
        .unwrap();
    let token = interrupted_token(&r, "unlock");
    assert!(
        r["status"]["steps"].as_array().is_none_or(|s| s.is_empty()),
        "the unlock was the new incident's first action: its intent rode on the create, \
         and the crash kept the outcome from the status: {}",
        r["status"]
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let before = secrets.get("sh.helm.release.v1.web.v2").await.unwrap();
    let unlocked_before = before.metadata.labels.as_ref().unwrap()["status"] == "failed";
    assert_eq!(
        unlocked_before,
        point != "unlock:after-intent",
        "the crash came where it was injected"
    );

    let _op = Operator::start(env, &ns, &[]);
    let r = wait_remediation(
        &client,
        &ns,
        "HelmRelease/web",
        "the restarted operator finishes the unlock",
        Duration::from_secs(120),
        |r| phase(r) == "Succeeded",
    )
    .await;
    let unlocks = steps_of(&r, "unlock");
    assert_eq!(unlocks.len(), 1, "one unlock step: {unlocks:?}");
    assert_eq!(unlocks[0]["outcome"], "Succeeded", "{}", unlocks[0]);
    assert_eq!(
        unlocks[0]["token"],
        token.as_str(),
        "finished with its own token"
    );
    let after = secrets.get("sh.helm.release.v1.web.v2").await.unwrap();
    assert_eq!(after.metadata.labels.as_ref().unwrap()["status"], "failed");
    if unlocked_before {
        assert_eq!(
            after.metadata.resource_version, before.metadata.resource_version,
            "the release Secret was not written a second time"
        );
    }
    let data: std::collections::BTreeMap<String, Vec<u8>> = after
        .data
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let rel = fluxmedic::helm::decode_secret("sh.helm.release.v1.web.v2", &data).unwrap();
    assert_eq!(rel.status(), Some("failed"));
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_eq!(
        hr["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"],
        token.as_str(),
        "the follow-up reconcile was requested with the recorded token"
    );
    assert_eq!(
        hr["spec"]["suspend"], true,
        "a suspension fluxmedic did not make is left alone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_recording_the_unlock_intent() {
    crash_during_unlock("unlock:after-intent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_unlocking_before_the_reconcile_request() {
    crash_during_unlock("unlock:after-unlock").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_unlock_and_reconcile_before_recording_it() {
    crash_during_unlock("unlock:after-act").await;
}

/// Kill the operator at `point` of "reconcile the source, then its consumers" (a fixed Git
/// credentials Secret), restart it: source and consumer carry the one recorded token, and the
/// step ends Succeeded exactly once.
async fn crash_during_source_and_consumers(point: &str) {
    let (env, client, ns) = setup(&format!("crash-{}", point.rsplit(':').next().unwrap())).await;
    let repo = private_app_repo(env, &client, &ns).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    git_repository(&client, &ns, "repo", &repo.url, Some("creds")).await;
    kustomization(&client, &ns, "app", "./app", &[]).await;
    wait_ready(&client, &ns, "Kustomization", "app", MIN).await;
    apply(
        &client,
        policy(
            &ns,
            "auto",
            auto(json!([{"case": "git-auth", "mode": "Auto"}])),
        ),
    )
    .await;
    repo.set_server_credentials(env, "bot", "second-password");
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    wait_failing(
        &client,
        &ns,
        "GitRepository",
        "repo",
        "GitOperationFailed",
        MIN,
    )
    .await;
    let mut op = Operator::start_with(env, &ns, &[], &[("FLUXMEDIC_CRASH_AT", point)]);
    wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "an open incident",
        MIN,
        |r| r["status"]["blocked"].is_string(),
    )
    .await;
    // The Secret changes but still holds the old password, so source-controller's own retries
    // keep failing: only fluxmedic's reaction to the change can happen (and be cut short).
    secrets
        .patch(
            "creds",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"rotated": "pending"}})),
        )
        .await
        .unwrap();
    assert!(
        op.wait_exit(Duration::from_secs(120)),
        "the operator reached {point} and died"
    );
    let r = remediation_for(&client, &ns, "GitRepository/repo")
        .await
        .unwrap();
    let token = interrupted_token(&r, "reconcile-source-and-consumers");
    let requested = |o: &Value| {
        o["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"]
            .as_str()
            .map(str::to_string)
    };
    let ks = get(&client, &ns, "Kustomization", "app").await.unwrap();
    assert_eq!(
        requested(&ks).as_deref() == Some(token.as_str()),
        point == "reconcile-source-and-consumers:after-act",
        "the crash came where it was injected"
    );

    let _op = Operator::start(env, &ns, &[]);
    let r = wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "the restarted operator finishes the step",
        Duration::from_secs(120),
        |r| {
            r["status"]["steps"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["outcome"] != "Running"))
        },
    )
    .await;
    let done = steps_of(&r, "reconcile-source-and-consumers");
    assert_eq!(done.len(), 1, "one step: {done:?}");
    assert_eq!(done[0]["outcome"], "Succeeded", "{}", done[0]);
    assert_eq!(done[0]["token"], token.as_str());
    for kind_name in [("GitRepository", "repo"), ("Kustomization", "app")] {
        let o = get(&client, &ns, kind_name.0, kind_name.1).await.unwrap();
        assert_eq!(
            requested(&o).as_deref(),
            Some(token.as_str()),
            "{kind_name:?} carries the recorded token"
        );
    }
    // The server accepts the Secret's password again: recovered, and the record closes.
    repo.set_server_credentials(env, "bot", "first-password");
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    wait_remediation(&client, &ns, "GitRepository/repo", "closed", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_recording_the_source_and_consumers_intent() {
    crash_during_source_and_consumers("reconcile-source-and-consumers:after-intent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_reconciling_the_source_before_its_consumers() {
    crash_during_source_and_consumers("reconcile-source-and-consumers:after-source").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_source_and_consumers_before_recording_it() {
    crash_during_source_and_consumers("reconcile-source-and-consumers:after-act").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leader_acts_and_a_standby_takes_over_when_it_dies() {
    let (env, client, ns) = setup("ha").await;
    let repo = ready_app(env, &client, &ns).await;
    apply(
        &client,
        policy(
            &ns,
            "auto",
            json!({"rules": [{"case": "invalid-manifests", "mode": "Auto"}],
        "limits": {"pollInterval": "2s", "maxPollInterval": "4s"}}),
        ),
    )
    .await;

    let mut a = Operator::start(env, &ns, &["--leader-elect"]);
    let mut b = Operator::start(env, &ns, &["--leader-elect"]);
    let leaders = wait_for("one leader", Duration::from_secs(60), || async {
        let (la, lb) = (
            a.metric("fluxmedic_leader").await,
            b.metric("fluxmedic_leader").await,
        );
        if la + lb == 1.0 {
            Ok((la, lb))
        } else {
            Err(format!("{la} {lb}"))
        }
    })
    .await;
    repo.commit(
        &[(
            "app/cm.yaml",
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  v: [broken\n"),
        )],
        "broken",
    );
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    wait_failing(
        &client,
        &ns,
        "Kustomization",
        "app",
        "BuildFailed",
        Duration::from_secs(60),
    )
    .await;
    wait_for(
        "the leader polls the source",
        Duration::from_secs(60),
        || async {
            match remediation_for(&client, &ns, "Kustomization/app").await {
                Some(r) if r["status"]["polls"].as_u64().unwrap_or(0) >= 1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // The standby wrote nothing: one Remediation, and its evaluation counter stays at zero.
    assert_eq!(remediations(&client, &ns).await.len(), 1);
    let (leader, standby) = if leaders.0 == 1.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(
        standby.metric("fluxmedic_evaluations_total").await,
        0.0,
        "the standby never evaluated"
    );

    let killed = Instant::now();
    leader.kill();
    wait_for(
        "the standby takes over",
        Duration::from_secs(60),
        || async {
            if standby.metric("fluxmedic_leader").await == 1.0 {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    let failover = killed.elapsed();
    repo.commit(
        &[(
            "app/cm.yaml",
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  v: two\n"),
        )],
        "fix",
    );
    wait_ready(
        &client,
        &ns,
        "Kustomization",
        "app",
        Duration::from_secs(60),
    )
    .await;
    wait_for(
        "the new leader closes the incident",
        Duration::from_secs(60),
        || async {
            match remediation_for(&client, &ns, "Kustomization/app").await {
                Some(r) if r["status"]["phase"] == "Succeeded" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!("leader fail-over after SIGKILL: {failover:?}");
    assert!(
        failover < Duration::from_secs(30),
        "fail-over took {failover:?}"
    );
}

/// GitRepository `repo` with an `app/` path, whose credentials (Secret `creds`) the Git server
/// rejects: a shared source failing with git-auth for as long as the test lasts.
async fn rejected_source(env: &'static Env, client: &Client, ns: &str) -> Repo {
    let repo = Repo::new(env, ns, true);
    repo.set_server_credentials(env, "bot", "right");
    repo.commit(
        &[("app/kustomization.yaml", Some("resources: []\n"))],
        "initial",
    );
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "creds"}, "stringData": {"username": "bot", "password": "wrong"}})).unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&Default::default(), &s)
        .await
        .unwrap();
    git_repository(client, ns, "repo", &repo.url, Some("creds")).await;
    repo
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_200_failures_acts_on_the_root_only_with_bounded_writes() {
    let (env, client, ns) = setup("storm").await;
    // One shared source whose credentials the server rejects, and 200 consumers.
    let _repo = rejected_source(env, &client, &ns).await;
    let n = 200;
    futures::future::join_all((0..n).map(|i| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            kustomization(&client, &ns, &format!("app{i}"), "./app", &[]).await;
        }
    }))
    .await;
    wait_failing(
        &client,
        &ns,
        "GitRepository",
        "repo",
        "GitOperationFailed",
        Duration::from_secs(60),
    )
    .await;
    wait_for(
        "200 consumers failing",
        Duration::from_secs(120),
        || async {
            let list = flux_api(&client, &ns, "Kustomization")
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let failing = list
                .items
                .iter()
                .filter(|o| {
                    let v = serde_json::to_value(o).unwrap();
                    condition(&v, "Ready").is_some_and(|c| c["status"] == "False")
                })
                .count();
            if failing == n {
                Ok(())
            } else {
                Err(format!("{failing}"))
            }
        },
    )
    .await;
    apply(&client, policy(&ns, "auto", json!({"rules": [{"case": "git-auth", "mode": "Auto"}, {"case": "dependency-cascade", "mode": "Auto"}],
        "circuitBreaker": {"maxFailingTargets": 20}}))).await;

    // As the audited measurement identity (the audit log records only it).
    let kc = audited_kubeconfig(env, &ns);
    let limit = 30u32;
    let from = jiff::Timestamp::now();
    let port = env.var("FLUXMEDIC_PORT_BASE").parse::<u16>().unwrap() + 170;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
        .args([
            "run",
            "--namespace",
            &ns,
            "--watch-namespaces",
            &ns,
            "--tick-seconds",
            "1",
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--max-writes-per-second",
            &limit.to_string(),
        ])
        .args(HELM_CONTROLLER_IDENTITY)
        .env("KUBECONFIG", &kc)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    let rems = wait_for(
        "a Remediation per failing target",
        Duration::from_secs(180),
        || async {
            let r = remediations(&client, &ns).await;
            let recorded = r
                .iter()
                .filter(|r| r["status"]["diagnosis"].is_object())
                .count();
            assert_one_record_per_target(&r);
            if recorded == n + 1 {
                Ok(r)
            } else {
                Err(format!("{recorded}"))
            }
        },
    )
    .await;
    drop(child);
    let to = jiff::Timestamp::now();
    // The root is the shared source; every consumer names it and waits; no consumer was touched.
    for r in &rems {
        if r["spec"]["target"]["kind"] == "Kustomization" {
            assert_eq!(r["spec"]["case"], "dependency-cascade");
            assert_eq!(r["status"]["root"]["name"], "repo");
            assert!(r["status"]["steps"].as_array().is_none_or(|s| s.is_empty()));
        } else {
            assert_eq!(r["spec"]["case"], "git-auth");
        }
    }
    let list = flux_api(&client, &ns, "Kustomization")
        .list(&Default::default())
        .await
        .unwrap();
    for o in list.items {
        assert!(
            o.metadata
                .managed_fields
                .unwrap_or_default()
                .iter()
                .all(|f| f.manager.as_deref() != Some("fluxmedic"))
        );
    }
    // Writes per second, from the API server's audit log: never above the limit plus its burst.
    std::thread::sleep(Duration::from_secs(2));
    let text = std::fs::read_to_string(env.var("FLUXMEDIC_AUDIT_LOG")).unwrap();
    let mut per_second: std::collections::BTreeMap<i64, u32> = Default::default();
    let mut writes = std::collections::HashSet::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(ts) = v["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        if ts < from
            || ts > to
            || !matches!(
                v["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        {
            continue;
        }
        if v["objectRef"]["namespace"] != ns.as_str() && v["objectRef"]["resource"] != "events" {
            continue;
        }
        if writes.insert(v["auditID"].as_str().unwrap().to_string()) {
            *per_second.entry(ts.as_second()).or_default() += 1;
        }
    }
    let max = per_second.values().copied().max().unwrap_or(0);
    let secs = per_second.len();
    eprintln!(
        "storm: {} writes over {secs} s, at most {max} in one second (limit {limit}/s, burst {})",
        writes.len(),
        2 * limit
    );
    assert!(
        writes.len() as u32 >= 2 * (n as u32 + 1),
        "every incident was recorded (create + status)"
    );
    assert!(
        max <= 3 * limit,
        "at most the limit plus its burst in any second: {max}"
    );
}

/// Fails at once, naming them, if a target has more than one Remediation: one incident, one
/// record (a second one means an incident was closed and reopened, or its record lost).
fn assert_one_record_per_target(records: &[Value]) {
    let mut per: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for r in records {
        let t = &r["spec"]["target"];
        per.entry(format!(
            "{}/{}",
            t["kind"].as_str().unwrap_or(""),
            t["name"].as_str().unwrap_or("")
        ))
        .or_default()
        .push(r["metadata"]["name"].as_str().unwrap_or(""));
    }
    let twice: Vec<_> = per.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "targets with more than one record: {twice:?}"
    );
}

/// A root held in retry must not churn its dependents' records, nor must a watch that relists
/// (the operator's record watch is made to relist every 200 ms, as one that falls behind the
/// API server's history does) or an operator restart: a source whose credentials the server
/// rejects is asked to retry every second for the whole test while 30 consumers wait on it,
/// and every target keeps exactly one Remediation, open, with the same root.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_held_in_retry_keeps_one_record_per_target_through_relists_and_restarts() {
    let (env, client, ns) = setup("retryhold").await;
    let _repo = rejected_source(env, &client, &ns).await;
    let n = 30;
    for i in 0..n {
        kustomization(&client, &ns, &format!("app{i}"), "./app", &[]).await;
    }
    wait_failing(
        &client,
        &ns,
        "GitRepository",
        "repo",
        "GitOperationFailed",
        Duration::from_secs(60),
    )
    .await;
    apply(&client, policy(&ns, "auto", json!({"rules": [{"case": "git-auth", "mode": "Auto"}, {"case": "dependency-cascade", "mode": "Auto"}]}))).await;
    // The source in retry: a fresh reconcile request every second, for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retries = {
        let (client, ns, stop) = (client.clone(), ns.clone(), stop.clone());
        tokio::spawn(async move {
            let mut asked = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let at = jiff::Timestamp::now().to_string();
                let _ = flux_api(&client, &ns, "GitRepository")
                    .patch("repo", &Default::default(), &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": at}}})))
                    .await;
                asked += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            asked
        })
    };
    let relisting = [("FLUXMEDIC_RELIST_EVERY", "Remediation:200")];
    let every_target_recorded = |what: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            wait_for(what, Duration::from_secs(120), || async {
                let r = remediations(&client, &ns).await;
                assert_one_record_per_target(&r);
                let recorded = r
                    .iter()
                    .filter(|r| r["status"]["diagnosis"].is_object())
                    .count();
                if recorded == n + 1 {
                    Ok(r)
                } else {
                    Err(format!("{recorded}"))
                }
            })
            .await
        }
    };
    let mut op = Operator::start_with(env, &ns, &HELM_CONTROLLER_IDENTITY, &relisting);
    let first = every_target_recorded("a Remediation per failing target").await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    op.kill();
    let _op = Operator::start_with(env, &ns, &HELM_CONTROLLER_IDENTITY, &relisting);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let last = every_target_recorded("still one Remediation per target").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let asked = retries.await.unwrap();
    assert!(
        asked >= 30,
        "the source was asked to retry throughout ({asked} times)"
    );
    let names = |rs: &[Value]| {
        let mut v: Vec<(String, String)> = rs
            .iter()
            .map(|r| {
                (
                    r["metadata"]["name"].as_str().unwrap().to_string(),
                    r["status"]["root"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&first),
        names(&last),
        "the same records, with the same roots, throughout"
    );
    for r in &last {
        assert!(
            r["metadata"]["labels"]["fluxmedic.io/open"] == "true",
            "still open: {}",
            r["metadata"]["name"]
        );
    }
}

/// Remediations stay within a cap: a target that fails and recovers four times keeps only
/// `--history-limit` closed records (the newest), plus nothing open once it is Ready.
#[tokio::test(flavor = "multi_thread")]
async fn closed_remediations_are_garbage_collected_beyond_the_history_limit() {
    let (env, client, ns) = setup("gc").await;
    let repo = ready_app(env, &client, &ns).await;
    let good = cm("greeting", "v1");
    apply(
        &client,
        policy(
            &ns,
            "auto",
            auto(json!([{"case": "invalid-manifests", "mode": "Auto"}])),
        ),
    )
    .await;
    let _op = Operator::start(env, &ns, &["--history-limit", "2"]);
    let mut closed_names = vec![];
    for round in 0..4 {
        repo.commit(
            &[("app/cm.yaml", Some(BROKEN_YAML))],
            &format!("broken {round}"),
        );
        request_reconcile(&client, &ns, "GitRepository", "repo").await;
        let open = wait_remediation(
            &client,
            &ns,
            "Kustomization/app",
            "an open incident",
            MIN,
            |r| r["metadata"]["labels"]["fluxmedic.io/open"] == "true",
        )
        .await;
        repo.commit(&[("app/cm.yaml", Some(&good))], &format!("fixed {round}"));
        let name = open["metadata"]["name"].as_str().unwrap().to_string();
        wait_for("the incident closes", MIN, || async {
            let all = remediations(&client, &ns).await;
            match all.iter().find(|r| r["metadata"]["name"] == name.as_str()) {
                Some(r) if phase(r) == "Succeeded" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        closed_names.push(name);
    }
    // The two newest closed records remain; the older ones were deleted.
    let kept = wait_for("garbage collection", MIN, || async {
        let names: Vec<String> = remediations(&client, &ns)
            .await
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        if names.len() == 2 {
            Ok(names)
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    let mut newest = closed_names[2..].to_vec();
    newest.sort();
    let mut kept = kept;
    kept.sort();
    assert_eq!(kept, newest, "the newest records are kept");
}
