//! Fitting Flux as people run it, on the real control plane: sharded Flux (one fluxmedic per
//! shard, each on its own objects, records and Lease), Flux alerts, a source that cannot be
//! reached checked by fluxmedic itself, a Flux controller scaled to zero.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn each_shard_instance_acts_on_its_own_objects_only() {
    let (env, client, ns) = setup("shards").await;
    let repo = Repo::new(env, &ns, false);
    let files = [
        ("a/kustomization.yaml", "resources:\n- cm.yaml\n"),
        ("a/cm.yaml", BROKEN_YAML),
        ("b/kustomization.yaml", "resources:\n- cm.yaml\n"),
        ("b/cm.yaml", BROKEN_YAML),
    ];
    repo.commit(
        &files
            .iter()
            .map(|(p, c)| (*p, Some(*c)))
            .collect::<Vec<_>>(),
        "both broken",
    );
    git_repository(&client, &ns, "repo", &repo.url, None).await;
    // `a` belongs to shard1 (its controllers run with sharding.fluxcd.io/key=shard1), `b` to
    // the main controllers (!sharding.fluxcd.io/key).
    for (name, shard) in [("a", Some("shard1")), ("b", None)] {
        let mut meta = json!({"name": name, "namespace": ns});
        if let Some(s) = shard {
            meta["labels"] = json!({"sharding.fluxcd.io/key": s});
        }
        apply(&client, json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": meta,
            "spec": {"interval": "1h", "path": format!("./{name}"), "prune": true, "targetNamespace": ns,
                     "sourceRef": {"kind": "GitRepository", "name": "repo"}}})).await;
        wait_failing(&client, &ns, "Kustomization", name, "BuildFailed", MIN).await;
    }
    apply(
        &client,
        policy(
            &ns,
            "observe",
            json!({"rules": [{"case": "invalid-manifests", "mode": "Observe"}]}),
        ),
    )
    .await;
    let one = Operator::start_with(
        env,
        &ns,
        &[
            "--leader-elect",
            "--watch-label-selector",
            "sharding.fluxcd.io/key=shard1",
        ],
        &[("POD_NAME", "shard1")],
    );
    let main = Operator::start_with(
        env,
        &ns,
        &[
            "--leader-elect",
            "--watch-label-selector",
            "!sharding.fluxcd.io/key",
        ],
        &[("POD_NAME", "main")],
    );
    let a = wait_remediation(
        &client,
        &ns,
        "Kustomization/a",
        "recorded by shard1",
        MIN,
        |r| r["status"]["diagnosis"].is_object(),
    )
    .await;
    let b = wait_remediation(
        &client,
        &ns,
        "Kustomization/b",
        "recorded by main",
        MIN,
        |r| r["status"]["diagnosis"].is_object(),
    )
    .await;
    let shard = |sel: &str| fluxmedic::incident::seal::shard_id(Some(sel)).unwrap();
    assert_eq!(
        a["metadata"]["labels"]["fluxmedic.io/shard"],
        shard("sharding.fluxcd.io/key=shard1")
    );
    assert_eq!(
        b["metadata"]["labels"]["fluxmedic.io/shard"],
        shard("!sharding.fluxcd.io/key")
    );
    // Each instance counted exactly its own incident, and neither closed the other's record
    // as "gone" (each sees only its own shard's objects and records).
    tokio::time::sleep(Duration::from_secs(4)).await;
    one.wait_metric("fluxmedic_incidents_total{case=\"invalid-manifests\"}", 1.0)
        .await;
    main.wait_metric("fluxmedic_incidents_total{case=\"invalid-manifests\"}", 1.0)
        .await;
    assert_eq!(
        one.metric("fluxmedic_incidents_total{case=\"invalid-manifests\"}")
            .await,
        1.0
    );
    assert_eq!(
        main.metric("fluxmedic_incidents_total{case=\"invalid-manifests\"}")
            .await,
        1.0
    );
    let all = remediations(&client, &ns).await;
    assert_eq!(all.len(), 2, "one record per object");
    assert!(
        all.iter().all(|r| r["status"]["closedAt"].is_null()),
        "nobody closed the other shard's record"
    );
    // One Lease per shard, both held.
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client.clone(), &ns);
    for (sel, holder) in [
        ("sharding.fluxcd.io/key=shard1", "shard1"),
        ("!sharding.fluxcd.io/key", "main"),
    ] {
        let l = leases
            .get(&format!("fluxmedic-leader-{}", shard(sel)))
            .await
            .unwrap();
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some(holder));
    }
}

/// A tiny HTTP receiver on loopback: every POSTed JSON body, as a generic-webhook Provider
/// delivers Flux's alerts.
async fn receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let store = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let mut buf = vec![];
                let mut chunk = [0u8; 16384];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            if let Ok(v) = serde_json::from_str(body) {
                                store.lock().unwrap().push(v);
                            }
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, got)
}

#[tokio::test(flavor = "multi_thread")]
async fn occurrences_reach_flux_alerts_through_notification_controller() {
    let (env, client, ns) = setup("alerts").await;
    let events_url = env.var("FLUXMEDIC_EVENTS_URL").to_string();
    assert!(
        !events_url.is_empty(),
        "this control plane runs notification-controller"
    );
    let (hook, got) = receiver().await;
    // What a user already has: a generic-webhook Provider and an Alert on their Flux objects.
    apply(&client, json!({"apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Provider",
        "metadata": {"name": "webhook", "namespace": ns}, "spec": {"type": "generic", "address": hook}})).await;
    apply(&client, json!({"apiVersion": "notification.toolkit.fluxcd.io/v1beta3", "kind": "Alert",
        "metadata": {"name": "everything", "namespace": ns},
        "spec": {"providerRef": {"name": "webhook"}, "eventSeverity": "info",
                 "eventSources": [{"kind": "GitRepository", "name": "*"}, {"kind": "Kustomization", "name": "*"}]}})).await;
    // A private repository whose password rotates; the Secret is fixed later.
    let repo = private_app_repo(env, &client, &ns).await;
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
    let _op = Operator::start(env, &ns, &["--events-addr", &events_url]);
    repo.set_server_credentials(env, "bot", "second-password");
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    wait_remediation(&client, &ns, "GitRepository/repo", "detected", MIN, |r| {
        r["status"]["diagnosis"].is_object()
    })
    .await;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), &ns);
    secrets
        .patch(
            "creds",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"password": "second-password"}})),
        )
        .await
        .unwrap();
    let rem = wait_remediation(&client, &ns, "GitRepository/repo", "recovered", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    let name = rem["metadata"]["name"].as_str().unwrap().to_string();
    let payloads = wait_for("fluxmedic's occurrences delivered", MIN, || async {
        let all = got.lock().unwrap().clone();
        let ours: Vec<&serde_json::Value> = all
            .iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("fluxmedic: "))
            })
            .collect();
        let reasons: Vec<&str> = ours.iter().filter_map(|e| e["reason"].as_str()).collect();
        if ["FailureDetected", "ActionSucceeded", "Recovered"]
            .iter()
            .all(|r| reasons.contains(r))
        {
            Ok(all)
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;
    for e in payloads.iter().filter(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("fluxmedic: "))
    }) {
        assert_eq!(e["involvedObject"]["kind"], "GitRepository", "{e}");
        assert_eq!(e["involvedObject"]["name"], "repo");
        assert_eq!(e["reportingController"], "fluxmedic");
        // The event group's prefix is stripped by notification-controller.
        assert_eq!(e["metadata"]["remediation"], name.as_str(), "{e}");
    }
    let detected = payloads
        .iter()
        .find(|e| e["reason"] == "FailureDetected")
        .unwrap();
    assert_eq!(detected["severity"], "error");
    // Flux's own events still arrive beside them.
    assert!(
        payloads
            .iter()
            .any(|e| e["reportingController"] == "source-controller"),
        "Flux's own events: {payloads:?}"
    );
    // Nothing secret leaves the cluster.
    let text = serde_json::to_string(&payloads).unwrap();
    assert!(!text.contains("first-password") && !text.contains("second-password"));
}

/// What fluxmedic's own reachability check recorded in a Remediation's evidence.
fn probe_finding(record: &serde_json::Value) -> Option<&str> {
    record["status"]["diagnosis"]["evidence"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == "probe")?["message"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_source_is_checked_by_fluxmedic_and_the_finding_is_evidence() {
    let (env, client, ns) = setup("probe").await;
    // Port 1 on loopback: source-controller's clone is refused, and so is fluxmedic's probe.
    git_repository(&client, &ns, "repo", "http://127.0.0.1:1/nothing.git", None).await;
    wait_failing(
        &client,
        &ns,
        "GitRepository",
        "repo",
        "GitOperationFailed",
        MIN,
    )
    .await;
    apply(
        &client,
        policy(
            &ns,
            "observe",
            json!({"rules": [{"case": "git-unreachable", "mode": "Observe"}]}),
        ),
    )
    .await;
    let _op = Operator::start(env, &ns, &[]);
    let record = wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "probe evidence",
        MIN,
        |r| probe_finding(r).is_some(),
    )
    .await;
    assert_eq!(record["spec"]["case"], "git-unreachable");
    let text = probe_finding(&record).unwrap();
    assert!(
        text.contains("127.0.0.1") && text.contains("TCP connection to port 1 failed"),
        "{text}"
    );
    // The Git service's own words stay first; the probe adds to them.
    let evidence = &record["status"]["diagnosis"]["evidence"];
    assert!(
        evidence[0]["source"]
            .as_str()
            .unwrap()
            .starts_with("condition/"),
        "{evidence:?}"
    );
}

/// A chart repository that refuses the credentials and an OCI registry that cannot be reached,
/// failing for real in source-controller: told apart like Git's, the unreachable one checked
/// by fluxmedic itself and polled, the refused one left alone until its Secret changes.
#[tokio::test(flavor = "multi_thread")]
async fn oci_and_helm_repository_failures_are_told_apart_and_handled_like_git() {
    let (env, client, ns) = setup("artifacts").await;
    // The fixture server answers 401 under /private/ for a repository it has no password for.
    apply(
        &client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "locked", "namespace": ns},
        "spec": {"url": format!("{}/private/locked", env.fixture_url()), "interval": "1h"}}),
    )
    .await;
    apply(
        &client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "OCIRepository",
        "metadata": {"name": "gone", "namespace": ns},
        "spec": {"url": "oci://127.0.0.1:1/apps/web", "insecure": true, "interval": "1h",
                 "ref": {"tag": "latest"}}}),
    )
    .await;
    // A bucket endpoint where nothing listens.
    apply(
        &client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "Bucket",
        "metadata": {"name": "files", "namespace": ns},
        "spec": {"bucketName": "files", "endpoint": "127.0.0.1:1", "insecure": true,
                 "provider": "generic", "interval": "1h", "timeout": "5s"}}),
    )
    .await;
    let locked = wait_failing(&client, &ns, "HelmRepository", "locked", "Failed", MIN).await;
    wait_failing(
        &client,
        &ns,
        "OCIRepository",
        "gone",
        "OCIArtifactPullFailed",
        MIN,
    )
    .await;
    apply(
        &client,
        policy(
            &ns,
            "auto",
            json!({"rules": [
            {"case": "git-auth", "mode": "Auto"}, {"case": "git-unreachable", "mode": "Auto"}]}),
        ),
    )
    .await;
    let _op = Operator::start(env, &ns, &[]);
    let auth = wait_remediation(
        &client,
        &ns,
        "HelmRepository/locked",
        "git-auth",
        MIN,
        |r| r["status"]["blocked"].is_string(),
    )
    .await;
    assert_eq!(auth["spec"]["case"], "git-auth", "{auth}");
    let blocked = auth["status"]["blocked"].as_str().unwrap();
    assert!(
        blocked.contains("references no credentials Secret"),
        "{blocked}"
    );
    let unreachable = wait_remediation(
        &client,
        &ns,
        "OCIRepository/gone",
        "probe evidence and a poll",
        MIN,
        |r| probe_finding(r).is_some() && has_step(r, "reconcile-source", "Succeeded"),
    )
    .await;
    assert_eq!(
        unreachable["spec"]["case"], "git-unreachable",
        "{unreachable}"
    );
    let probe = probe_finding(&unreachable).unwrap();
    assert!(probe.contains("TCP connection to port 1 failed"), "{probe}");
    // Buckets are watched, diagnosed, their endpoint checked, and polled too.
    let bucket = wait_remediation(&client, &ns, "Bucket/files", "bucket polled", MIN, |r| {
        has_step(r, "reconcile-source", "Succeeded") && probe_finding(r).is_some()
    })
    .await;
    assert_eq!(bucket["spec"]["case"], "git-unreachable", "{bucket}");
    let probe = probe_finding(&bucket).unwrap();
    assert!(probe.contains("TCP connection to port 1 failed"), "{probe}");
    // Nothing is asked of the refused repository until its credentials change.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = get(&client, &ns, "HelmRepository", "locked").await.unwrap();
    assert!(
        now["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].is_null(),
        "HelmRepository/locked was asked to reconcile: {now}"
    );
    assert_eq!(
        now["metadata"]["generation"],
        locked["metadata"]["generation"]
    );
    let auth = remediation_for(&client, &ns, "HelmRepository/locked")
        .await
        .unwrap();
    assert!(steps(&auth).is_empty(), "a step was taken: {auth}");
}

/// Someone scales source-controller to zero (as `flux suspend` cannot, and an incident
/// response sometimes does): fluxmedic sees it in the Flux namespace at once, escalates the
/// incidents that need that controller without a single request through it, and goes back to
/// work when it is scaled up again. The real controller runs as a process here; the Deployment
/// in a namespace standing in for flux-system is what fluxmedic is told to read.
#[tokio::test(flavor = "multi_thread")]
async fn a_flux_controller_scaled_to_zero_is_escalated_at_once_and_left_alone() {
    let (env, client, ns) = setup("scaled").await;
    let flux_ns = namespace(&client, "scaled-flux").await;
    flux_controller_deployment(
        &client,
        &flux_ns,
        "source-controller",
        0,
        "fluxmedic.local/none:0",
        &["--watch-all-namespaces"],
    )
    .await;
    unreachable_repo_polled(&client, &ns).await;
    let op = Operator::start(env, &ns, &["--flux-namespace", &flux_ns]);
    let rem = wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "escalated: scaled to zero",
        MIN,
        |r| {
            phase(r) == "Escalated"
                && r["status"]["blocked"].as_str().is_some_and(|b| {
                    b.contains(&format!(
                        "Deployment {flux_ns}/source-controller is scaled to 0 replicas"
                    ))
                })
        },
    )
    .await;
    assert!(
        steps(&rem).is_empty(),
        "nothing requested through it: {rem}"
    );
    op.wait_metric(
        "fluxmedic_flux_controller_down{controller=\"source-controller\"}",
        1.0,
    )
    .await;
    // Nothing through it meanwhile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = get(&client, &ns, "GitRepository", "repo").await.unwrap();
    assert!(
        now["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].is_null(),
        "{now}"
    );

    // Scaled up again (no pods run here: not yet available, within the grace): polls resume.
    flux_controller_deployment(
        &client,
        &flux_ns,
        "source-controller",
        1,
        "fluxmedic.local/none:0",
        &["--watch-all-namespaces"],
    )
    .await;
    wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "polling again",
        MIN,
        |r| has_step(r, "reconcile-source", "Succeeded"),
    )
    .await;
    assert_eq!(
        op.metric("fluxmedic_flux_controller_down{controller=\"source-controller\"}")
            .await,
        0.0
    );
}
