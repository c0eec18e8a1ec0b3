//! End-to-end: real failures on the real control plane (kube-apiserver, etcd, Flux's
//! controllers, a Git server and a chart repository), the fluxmedic operator running,
//! and assertions on recovery, the Remediation record, Events and metrics.

mod support;

use std::time::Duration;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use support::*;

/// Flux's retry of a refused fetch has backed off this far when a test fixes the credentials:
/// its next retry is about twice this away (see `wait_flux_backed_off`).
const BACKED_OFF: Duration = Duration::from_secs(5);

/// Events are published right after the status they report; give them a moment.
async fn assert_events(client: &Client, ns: &str, name: &str, reasons: &[&str]) {
    wait_for(
        &format!("Events {reasons:?} about {name}"),
        Duration::from_secs(15),
        || async {
            let evs = events_about(client, ns, name).await;
            match reasons
                .iter()
                .find(|r| !evs.iter().any(|(reason, _)| reason == *r))
            {
                None => Ok(()),
                Some(missing) => Err(format!("no {missing} Event: {evs:?}")),
            }
        },
    )
    .await
}

// ---------------------------------------------------------------- invalid manifests

#[tokio::test(flavor = "multi_thread")]
async fn invalid_manifests_recover_as_soon_as_the_fix_is_pushed() {
    let (env, client, ns) = setup("invalid").await;
    let repo = ready_app(env, &client, &ns).await;
    apply(
        &client,
        policy(
            &ns,
            "auto",
            auto(json!([{"case": "invalid-manifests", "mode": "Auto"}])),
        ),
    )
    .await;
    let op = Operator::start(env, &ns, &[]);

    break_app(&client, &ns, &repo, "broken").await;
    let rem = wait_remediation(
        &client,
        &ns,
        "Kustomization/app",
        "polling the source",
        MIN,
        |r| {
            r["spec"]["case"] == "invalid-manifests" && has_step(r, "reconcile-source", "Succeeded")
        },
    )
    .await;
    let ev = rem["status"]["diagnosis"]["evidence"].to_string();
    assert!(ev.contains("kustomize build failed"), "{ev}");
    assert_eq!(rem["status"]["diagnosis"]["retryable"], false);
    let name = rem["metadata"]["name"].as_str().unwrap().to_string();
    let open = readable_while_open(env, &ns, &name, &rem);

    // The source's interval is 1h: only fluxmedic's polling can pick up the fix this fast.
    let fixed_at = std::time::Instant::now();
    repo.commit(&[("app/cm.yaml", Some(&cm("greeting", "v2")))], "fix");
    wait_ready(&client, &ns, "Kustomization", "app", MIN).await;
    let recovery = fixed_at.elapsed();
    let rem = wait_remediation(&client, &ns, "Kustomization/app", "Succeeded", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    // `kubectl wait`, started while the incident was open, returns when it closes.
    let waited = tokio::task::spawn_blocking(move || open.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(waited.status.success(), "kubectl wait: {waited:?}");
    let ready = &rem["status"]["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"]),
        (&json!("Ready"), &json!("True"))
    );
    assert_eq!(ready["reason"], "Succeeded");
    // A record is about one target and case for good: the schema refuses another.
    let api: Api<fluxmedic::api::Remediation> = Api::namespaced(client.clone(), &ns);
    for change in [
        json!({"spec": {"case": "other"}}),
        json!({"spec": {"target": {"name": "another"}}}),
        json!({"spec": {"targetName": "Kustomization/another"}}),
    ] {
        let err = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&change))
            .await
            .expect_err("spec is immutable");
        assert!(err.to_string().contains("is immutable"), "{change}: {err}");
    }
    assert!(rem["status"]["timeToRecoverySeconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(rem["metadata"]["labels"]["fluxmedic.io/open"], "false");
    assert_events(
        &client,
        &ns,
        "app",
        &["FailureDetected", "ActionSucceeded", "Recovered"],
    )
    .await;
    // One Event per occurrence, about the target, naming the Remediation as related.
    let related = events_related(&client, &ns, rem["metadata"]["name"].as_str().unwrap()).await;
    for reason in ["FailureDetected", "ActionSucceeded", "Recovered"] {
        assert!(
            related.iter().any(|(r, _)| r == reason),
            "{reason}: {related:?}"
        );
    }
    // Counted in the target's namespace: alerts and dashboards route per team.
    op.wait_metric(
        &format!("fluxmedic_incidents_total{{case=\"invalid-manifests\",namespace=\"{ns}\"}}"),
        1.0,
    )
    .await;
    op.wait_metric(
        "fluxmedic_actions_total{action=\"reconcile-source\",outcome=\"succeeded\"}",
        1.0,
    )
    .await;
    op.wait_metric(
        "fluxmedic_time_to_recover_seconds_count{case=\"invalid-manifests\"}",
        1.0,
    )
    .await;
    eprintln!("invalid-manifests: recovered {recovery:?} after the fixing commit");
}

/// What Kubernetes tools show of an open record (Ready False with what holds it; the wide
/// columns; the planned action in words), and a `kubectl wait` for its Ready condition,
/// started now.
fn readable_while_open(env: &Env, ns: &str, name: &str, rem: &Value) -> std::process::Child {
    let ready = &rem["status"]["conditions"][0];
    assert_eq!(
        (&ready["type"], &ready["status"]),
        (&json!("Ready"), &json!("False"))
    );
    assert_eq!(ready["observedGeneration"], rem["metadata"]["generation"]);
    let kubectl = |args: &[&str]| {
        let out = env.kubectl().args(args).args(["-n", ns]).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let wide = kubectl(&["get", "remediation", name, "-o", "wide"]);
    for column in ["READY", "ATTEMPTS", "BLOCKED", "MESSAGE"] {
        assert!(wide.lines().next().unwrap().contains(column), "{wide}");
    }
    let described = kubectl(&["describe", "remediation", name]);
    let status = described.split_once("\nStatus:").unwrap().1;
    let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        status.lines().any(|l| words(l) == "Type: ReconcileSource"),
        "{status}"
    );
    assert!(
        !status.contains("{\""),
        "no JSON text in the status: {status}"
    );
    env.kubectl()
        .args(["wait", "--for=condition=Ready", "--timeout=120s", "-n", ns])
        .arg(format!("remediation/{name}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

// ---------------------------------------------------------------- git auth

#[tokio::test(flavor = "multi_thread")]
async fn git_auth_recovers_when_the_secret_is_fixed_and_escalates_meanwhile() {
    let (env, client, ns) = setup("gitauth").await;
    let repo = private_app_repo(env, &client, &ns).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    git_repository(&client, &ns, "repo", &repo.url, Some("creds")).await;
    kustomization(&client, &ns, "app", "./app", &[]).await;
    wait_ready(&client, &ns, "Kustomization", "app", MIN).await;
    let mut spec = auto(json!([{"case": "git-auth", "mode": "Auto"}]));
    spec["escalation"] = json!({"after": "8s"});
    apply(&client, policy(&ns, "auto", spec)).await;
    let op = Operator::start(env, &ns, &[]);

    // The server's password is rotated; the Secret still holds the old one.
    repo.set_server_credentials(env, "bot", "second-password");
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    let src = wait_failing(
        &client,
        &ns,
        "GitRepository",
        "repo",
        "GitOperationFailed",
        MIN,
    )
    .await;
    assert!(
        condition(&src, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("authentication required")
    );
    let rem = wait_remediation(&client, &ns, "GitRepository/repo", "escalated", MIN, |r| {
        phase(r) == "Escalated"
    })
    .await;
    assert_eq!(rem["spec"]["case"], "git-auth");
    let ev = rem["status"]["diagnosis"]["evidence"].to_string();
    assert!(
        ev.contains("Secret") && ev.contains("has keys [password, username]"),
        "{ev}"
    );
    assert!(
        rem["status"]["blocked"]
            .as_str()
            .unwrap()
            .contains("fix the credentials in Secret"),
        "{}",
        rem["status"]
    );
    assert!(
        steps(&rem).is_empty(),
        "nothing to do until the Secret changes"
    );
    assert_events(&client, &ns, "repo", &["FailureDetected", "Escalated"]).await;
    op.wait_metric("fluxmedic_escalations_total{case=\"git-auth\"}", 1.0)
        .await;
    // Flux's own retries have backed off (see wait_flux_backed_off): the fix is fluxmedic's to see.
    wait_flux_backed_off(&repo.refusals(env), BACKED_OFF).await;

    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "second-password"}})),
        )
        .await
        .unwrap();
    let rem = wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "reconciled after the Secret changed",
        MIN,
        |r| has_step(r, "reconcile-source-and-consumers", "Succeeded"),
    )
    .await;
    wait_ready(&client, &ns, "GitRepository", "repo", MIN).await;
    // The consumer was asked to reconcile with the same token.
    let token = rem["status"]["steps"].as_array().unwrap().last().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let ks = get(&client, &ns, "Kustomization", "app").await.unwrap();
    assert_eq!(
        ks["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"],
        token.as_str()
    );
    let rem = wait_remediation(&client, &ns, "GitRepository/repo", "closed", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    // Secret values never reach the record.
    let text = rem.to_string();
    assert!(!text.contains("first-password") && !text.contains("second-password"));
    assert!(!op.logs().contains("second-password"));
}

/// The request token fluxmedic's last step wrote.
fn last_token(rem: &Value) -> String {
    rem["status"]["steps"].as_array().unwrap().last().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn requested_at(client: &Client, ns: &str, kind: &str, name: &str) -> Value {
    get(client, ns, kind, name).await.unwrap()["metadata"]["annotations"]
        ["reconcile.fluxcd.io/requestedAt"]
        .clone()
}

/// A source refused after a credentials rotation: its record must wait for the Secret
/// (git-auth, nothing done, the Secret's key names as evidence). Once Flux's own retries have
/// backed off (`refusals`), `fix` is merged into the Secret's stringData; returns the record
/// once fluxmedic has reconciled the source and its consumers, with that step's token.
async fn fix_credentials(
    client: &Client,
    ns: &str,
    target: &str,
    secret: &str,
    keys: &str,
    refusals: &std::path::Path,
    fix: Value,
) -> (Value, String) {
    let rem = wait_remediation(client, ns, target, "waiting for the Secret", MIN, |r| {
        r["status"]["blocked"]
            .as_str()
            .is_some_and(|b| b.contains(&format!("fix the credentials in Secret {ns}/{secret}")))
    })
    .await;
    assert_eq!(rem["spec"]["case"], "git-auth", "{rem}");
    let ev = rem["status"]["diagnosis"]["evidence"].to_string();
    assert!(ev.contains(&format!("has keys [{keys}]")), "{ev}");
    assert!(
        steps(&rem).is_empty(),
        "nothing to do until the Secret changes: {rem}"
    );
    wait_flux_backed_off(refusals, BACKED_OFF).await;
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            secret,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": fix})),
        )
        .await
        .unwrap();
    let rem = wait_remediation(
        client,
        ns,
        target,
        "reconciled with its consumers after the Secret changed",
        MIN,
        |r| has_step(r, "reconcile-source-and-consumers", "Succeeded"),
    )
    .await;
    let token = last_token(&rem);
    (rem, token)
}

/// Wait for the target's record to close, and check no password of the test reached any
/// record of the namespace or the operator's log.
async fn closed_without_secrets(client: &Client, ns: &str, target: &str, op: &Operator) {
    wait_remediation(client, ns, target, "closed", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    let text: String = remediations(client, ns)
        .await
        .iter()
        .map(|r| r.to_string())
        .collect();
    let logs = op.logs();
    for secret in ["first-password", "second-password", "key-one", "key-two"] {
        assert!(
            !text.contains(secret) && !logs.contains(secret),
            "{secret} leaked"
        );
    }
}

/// Wait until ConfigMap `name` in `ns` holds `value` (applied from a source).
async fn wait_config_value(client: &Client, ns: &str, name: &str, value: &str) {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("ConfigMap {name} = {value}"), MIN, || async {
        let v = cms
            .get(name)
            .await
            .map_err(|e| e.to_string())?
            .data
            .unwrap_or_default();
        if v.get("value").map(String::as_str) == Some(value) {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;
}

/// Wait until HelmRelease `name` is Ready at chart `version`.
async fn wait_release_at(client: &Client, ns: &str, name: &str, version: &str) {
    wait_for(&format!("{name} at {version}"), MIN, || async {
        let hr = get(client, ns, "HelmRelease", name).await.ok_or("gone")?;
        if is_ready(&hr) && hr["status"]["lastAttemptedRevision"] == version {
            Ok(())
        } else {
            Err(hr["status"].to_string())
        }
    })
    .await;
}

async fn secret_with(client: &Client, ns: &str, name: &str, type_: &str, data: Value) {
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "Secret", "type": type_,
        "metadata": {"name": name, "namespace": ns}, "stringData": data}),
    )
    .await;
}

async fn source(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) {
    apply(
        client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": kind,
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .await;
}

/// Kustomization `app` applying the root of source `kind`/`name` into `ns`.
async fn kustomization_of(client: &Client, ns: &str, kind: &str, name: &str) {
    apply(
        client,
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {"interval": "1h", "path": "./", "prune": true, "targetNamespace": ns,
                 "sourceRef": {"kind": kind, "name": name}}}),
    )
    .await;
}

/// A policy acting on git-auth (for every source kind) at once.
async fn git_auth_auto(client: &Client, ns: &str) {
    apply(
        client,
        policy(
            ns,
            "auto",
            auto(json!([{"case": "git-auth", "mode": "Auto"}])),
        ),
    )
    .await;
}

/// The chart repository's password is rotated while an upgrade is pending: the repository,
/// the chart and both releases (one through `spec.chart`, one through `chartRef` to a shared
/// HelmChart) wait; once the Secret holds the new password fluxmedic reconciles the repository
/// and everything fed by it with one token, and the upgrade lands without waiting an interval.
#[tokio::test(flavor = "multi_thread")]
async fn a_chart_repository_password_rotation_recovers_its_charts_and_releases() {
    let (env, client, ns) = setup("chartauth").await;
    let charts = ChartRepo::private(env, &ns, "bot", "first-password");
    for v in ["0.1.0", "0.3.0"] {
        charts.publish(env, "web", v, &[("cm.yaml", CM_TEMPLATE)], "suffix: one\n");
    }
    secret_with(
        &client,
        &ns,
        "creds",
        "Opaque",
        json!({"username": "bot", "password": "first-password"}),
    )
    .await;
    source(
        &client,
        &ns,
        "HelmRepository",
        "charts",
        json!({"url": charts.url, "interval": "1h", "secretRef": {"name": "creds"}}),
    )
    .await;
    source(
        &client,
        &ns,
        "HelmChart",
        "shared",
        json!({"chart": "web", "version": "0.1.0", "interval": "1h",
        "sourceRef": {"kind": "HelmRepository", "name": "charts"}}),
    )
    .await;
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "one"}),
        "30s",
    )
    .await;
    apply(
        &client,
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "by-ref", "namespace": ns},
        "spec": {"interval": "1h", "timeout": "30s", "values": {"suffix": "ref"},
                 "chartRef": {"kind": "HelmChart", "name": "shared"}}}),
    )
    .await;
    for name in ["web", "by-ref"] {
        wait_ready(&client, &ns, "HelmRelease", name, MIN).await;
    }
    git_auth_auto(&client, &ns).await;
    let op = Operator::start(env, &ns, &[]);

    // Rotated on the server, not yet in the Secret; meanwhile an upgrade is pushed.
    charts.set_server_credentials(env, "bot", "second-password");
    request_reconcile(&client, &ns, "HelmRepository", "charts").await;
    let failing = wait_failing(&client, &ns, "HelmRepository", "charts", "Failed", MIN).await;
    assert!(
        condition(&failing, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{failing}"
    );
    helm_release(
        &client,
        &ns,
        "web",
        "0.3.0",
        json!({"suffix": "one"}),
        "30s",
    )
    .await;
    let (_, token) = fix_credentials(
        &client,
        &ns,
        "HelmRepository/charts",
        "creds",
        "password, username",
        &charts.refusals(env),
        json!({"password": "second-password"}),
    )
    .await;
    // One token for the repository, both charts and both releases (chartRef included).
    for (kind, name) in [
        ("HelmRepository", "charts".to_string()),
        ("HelmChart", "shared".to_string()),
        ("HelmChart", format!("{ns}-web")),
        ("HelmRelease", "web".to_string()),
        ("HelmRelease", "by-ref".to_string()),
    ] {
        assert_eq!(
            requested_at(&client, &ns, kind, &name).await,
            token.as_str(),
            "{kind}/{name}"
        );
    }
    // The upgrade lands well inside the repository's one-hour interval.
    wait_release_at(&client, &ns, "web", "0.3.0").await;
    closed_without_secrets(&client, &ns, "HelmRepository/charts", &op).await;
    wait_ready(&client, &ns, "HelmRelease", "by-ref", MIN).await;
}

/// An OCI artifact behind a registry password (a registry on loopback): the password is
/// rotated and a new artifact pushed under the same tag; the OCIRepository fails on the old
/// password and fluxmedic waits; once the pull Secret holds the new one, fluxmedic reconciles
/// the source and its Kustomization, and the new content is applied.
#[tokio::test(flavor = "multi_thread")]
async fn an_oci_registry_password_rotation_recovers_the_source_and_its_kustomization() {
    let (env, client, ns) = setup("ociauth").await;
    let registry = Registry::private(env, &ns, "bot", "first-password");
    registry.push(
        "app",
        "v1",
        &[("cm.yaml", &cm("oci", "v1"))],
        "bot",
        "first-password",
    );
    secret_with(
        &client,
        &ns,
        "regcred",
        "kubernetes.io/dockerconfigjson",
        registry.docker_config("bot", "first-password"),
    )
    .await;
    source(&client, &ns, "OCIRepository", "app", json!({"url": registry.url("app"), "insecure": true,
        "interval": "1h", "timeout": "20s", "ref": {"tag": "v1"}, "secretRef": {"name": "regcred"}})).await;
    kustomization_of(&client, &ns, "OCIRepository", "app").await;
    wait_ready(&client, &ns, "Kustomization", "app", MIN).await;
    wait_config_value(&client, &ns, "oci", "v1").await;
    git_auth_auto(&client, &ns).await;
    let op = Operator::start(env, &ns, &[]);

    registry.set_server_credentials("bot", "second-password");
    registry.push(
        "app",
        "v1",
        &[("cm.yaml", &cm("oci", "v2"))],
        "bot",
        "second-password",
    );
    request_reconcile(&client, &ns, "OCIRepository", "app").await;
    let failing = wait_failing(
        &client,
        &ns,
        "OCIRepository",
        "app",
        "OCIArtifactPullFailed",
        MIN,
    )
    .await;
    let message = condition(&failing, "Ready").unwrap()["message"].to_string();
    assert!(message.contains("UNAUTHORIZED"), "{message}");
    let (_, token) = fix_credentials(
        &client,
        &ns,
        "OCIRepository/app",
        "regcred",
        ".dockerconfigjson",
        &registry.refusals(),
        registry.docker_config("bot", "second-password"),
    )
    .await;
    assert_eq!(
        requested_at(&client, &ns, "Kustomization", "app").await,
        token.as_str()
    );
    wait_config_value(&client, &ns, "oci", "v2").await;
    closed_without_secrets(&client, &ns, "OCIRepository/app", &op).await;
}

/// A Bucket's access key is rotated (the old key id deleted, new objects written with the new
/// one): the Bucket source is refused and fluxmedic waits; once the Secret holds the new key,
/// fluxmedic reconciles the Bucket and its Kustomization, and the new content is applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_access_key_rotation_recovers_the_source_and_its_kustomization() {
    let (env, client, ns) = setup("bucketauth").await;
    let bucket = S3Bucket::new(env, &ns, "key-one");
    bucket.put("cm.yaml", &cm("bucket", "v1"), "key-one");
    secret_with(
        &client,
        &ns,
        "creds",
        "Opaque",
        json!({"accesskey": "key-one", "secretkey": "not-checked-here"}),
    )
    .await;
    source(&client, &ns, "Bucket", "files", json!({"bucketName": bucket.name, "endpoint": bucket.endpoint,
        "insecure": true, "provider": "generic", "interval": "1h", "timeout": "20s", "secretRef": {"name": "creds"}})).await;
    kustomization_of(&client, &ns, "Bucket", "files").await;
    wait_ready(&client, &ns, "Kustomization", "app", MIN).await;
    wait_config_value(&client, &ns, "bucket", "v1").await;
    git_auth_auto(&client, &ns).await;
    let op = Operator::start(env, &ns, &[]);

    bucket.set_access_key("key-two");
    bucket.put("cm.yaml", &cm("bucket", "v2"), "key-two");
    request_reconcile(&client, &ns, "Bucket", "files").await;
    wait_failing(
        &client,
        &ns,
        "Bucket",
        "files",
        "BucketOperationFailed",
        MIN,
    )
    .await;
    let (_, token) = fix_credentials(
        &client,
        &ns,
        "Bucket/files",
        "creds",
        "accesskey, secretkey",
        &bucket.refusals(),
        json!({"accesskey": "key-two"}),
    )
    .await;
    assert_eq!(
        requested_at(&client, &ns, "Kustomization", "app").await,
        token.as_str()
    );
    wait_config_value(&client, &ns, "bucket", "v2").await;
    closed_without_secrets(&client, &ns, "Bucket/files", &op).await;
}

/// Charts from an OCI registry: the HelmRepository (type oci) has no status of its own, so
/// when the registry password is rotated and an upgrade asks for a new chart version, the
/// HelmChart is what fails, with the repository's credentials. fluxmedic names the
/// repository's Secret, waits for it, then reconciles the chart and its release.
#[tokio::test(flavor = "multi_thread")]
async fn an_oci_chart_repository_password_rotation_recovers_the_chart_and_its_release() {
    let (env, client, ns) = setup("ocicharts").await;
    let registry = Registry::private(env, &ns, "bot", "first-password");
    for v in ["0.1.0", "0.3.0"] {
        registry.push_chart(
            env,
            "web",
            v,
            &[("cm.yaml", CM_TEMPLATE)],
            "suffix: one\n",
            "bot",
            "first-password",
        );
    }
    secret_with(
        &client,
        &ns,
        "creds",
        "Opaque",
        json!({"username": "bot", "password": "first-password"}),
    )
    .await;
    source(
        &client,
        &ns,
        "HelmRepository",
        "charts",
        json!({"type": "oci", "url": registry.charts_url(),
        "insecure": true, "interval": "1h", "secretRef": {"name": "creds"}}),
    )
    .await;
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "one"}),
        "30s",
    )
    .await;
    wait_ready(&client, &ns, "HelmRelease", "web", MIN).await;
    git_auth_auto(&client, &ns).await;
    let op = Operator::start(env, &ns, &[]);

    registry.set_server_credentials("bot", "second-password");
    helm_release(
        &client,
        &ns,
        "web",
        "0.3.0",
        json!({"suffix": "one"}),
        "30s",
    )
    .await;
    let chart = format!("{ns}-web");
    // The reason differs by release (v1.7 ChartPullError, v1.9 Unknown): wait for the refusal.
    wait_for("the chart pull refused", MIN, || async {
        let o = get(&client, &ns, "HelmChart", &chart)
            .await
            .ok_or("no HelmChart yet")?;
        match condition(&o, "Ready") {
            Some(c)
                if c["status"] == "False"
                    && c["message"].as_str().is_some_and(|m| m.contains("401")) =>
            {
                Ok(())
            }
            c => Err(format!("{c:?}")),
        }
    })
    .await;
    let target = format!("HelmChart/{chart}");
    let (_, token) = fix_credentials(
        &client,
        &ns,
        &target,
        "creds",
        "password, username",
        &registry.refusals(),
        json!({"password": "second-password"}),
    )
    .await;
    assert_eq!(
        requested_at(&client, &ns, "HelmRelease", "web").await,
        token.as_str()
    );
    wait_release_at(&client, &ns, "web", "0.3.0").await;
    closed_without_secrets(&client, &ns, &target, &op).await;
}

// ---------------------------------------------------------------- helm helpers
#[tokio::test(flavor = "multi_thread")]
async fn failed_release_with_exhausted_retries_is_retried_with_one_fresh_token() {
    let (env, client, ns) = setup("hrretry").await;
    chart_repo(env, &client, &ns).await;
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "one"}),
        "10s",
    )
    .await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    apply(&client, policy(&ns, "auto", auto(json!([{"case": "failed-release", "mode": "Auto", "actions": ["Retry"], "withSource": true}])))).await;

    // The upgrade waits for a Deployment that never rolls out: helm-controller times out,
    // and with the default retries (0) the release is Stalled.
    helm_release(
        &client,
        &ns,
        "web",
        "0.2.0",
        json!({"suffix": "one"}),
        "10s",
    )
    .await;
    let hr = wait_stalled(&client, &ns, "web").await;
    let ready = condition(&hr, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ready.contains("timeout") || ready.contains("deadline"),
        "{ready}"
    );
    // The cause goes away (rollouts complete from now on); plain Flux would stay Stalled.
    let _rollouts = keep_deployment_available(&client, &ns);
    let op = Operator::start(env, &ns, &[]);

    let rem = wait_remediation(
        &client,
        &ns,
        "HelmRelease/web",
        "retried",
        Duration::from_secs(90),
        |r| has_step(r, "retry", "Succeeded"),
    )
    .await;
    assert_eq!(rem["spec"]["case"], "failed-release");
    assert_eq!(rem["status"]["diagnosis"]["retryable"], true);
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    let ann = &hr["metadata"]["annotations"];
    let token = ann["reconcile.fluxcd.io/requestedAt"].as_str().unwrap();
    assert_eq!(
        ann["reconcile.fluxcd.io/resetAt"], token,
        "one token for all three annotations"
    );
    assert_eq!(ann["reconcile.fluxcd.io/forceAt"], token);
    assert_eq!(
        hr["status"]["lastHandledResetAt"], token,
        "helm-controller honoured the reset"
    );
    assert!(
        rem["status"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["token"] == token)
    );
    // --with-source: the chart source was asked first, with the same token.
    let chart = get(&client, &ns, "HelmChart", &format!("{ns}-web"))
        .await
        .unwrap();
    assert_eq!(
        chart["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"],
        token
    );
    let rem = wait_remediation(&client, &ns, "HelmRelease/web", "Succeeded", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    assert_eq!(rem["status"]["attempts"], 1);
    assert_events(
        &client,
        &ns,
        "web",
        &["FailureDetected", "ActionSucceeded", "Recovered"],
    )
    .await;
    op.wait_metric(
        "fluxmedic_actions_total{action=\"retry\",outcome=\"succeeded\"}",
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------- failed release: rollback

#[tokio::test(flavor = "multi_thread")]
async fn non_retryable_release_is_rolled_back_kept_suspended_and_resumed_when_fixed() {
    let (env, client, ns) = setup("hrrollback").await;
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
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    apply(&client, policy(&ns, "auto", auto(json!([{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}])))).await;
    let op = Operator::start(env, &ns, &[]);

    // Bad values: the ConfigMap name becomes invalid; the API server rejects the upgrade.
    helm_release(
        &client,
        &ns,
        "web",
        "0.1.0",
        json!({"suffix": "Not_Valid"}),
        "30s",
    )
    .await;
    wait_stalled(&client, &ns, "web").await;
    let rem = wait_remediation(
        &client,
        &ns,
        "HelmRelease/web",
        "rolled back",
        Duration::from_secs(90),
        |r| phase(r) == "AwaitingFix",
    )
    .await;
    assert_eq!(rem["status"]["diagnosis"]["retryable"], false);
    assert!(has_step(&rem, "rollback", "Succeeded"), "{:?}", steps(&rem));
    assert!(
        !has_step(&rem, "retry", "Succeeded"),
        "a retry cannot help, so none was made"
    );
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_eq!(
        hr["spec"]["suspend"], true,
        "kept suspended: resuming would re-run the failing upgrade"
    );
    assert_eq!(
        hr["metadata"]["annotations"]["fluxmedic.io/suspended-by"],
        rem["metadata"]["name"]
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let latest = secrets
        .get("sh.helm.release.v1.web.v3")
        .await
        .expect("rollback wrote revision 3");
    assert_eq!(
        latest.metadata.labels.as_ref().unwrap()["status"],
        "deployed"
    );
    let data: std::collections::BTreeMap<String, Vec<u8>> = latest
        .data
        .unwrap()
        .into_iter()
        .map(|(k, ByteString(v))| (k, v))
        .collect();
    let rel = fluxmedic::helm::decode_secret("sh.helm.release.v1.web.v3", &data).unwrap();
    assert_eq!(rel.description(), Some("Rollback to 1"));

    // The fix lands: valid values. fluxmedic resumes; helm-controller upgrades.
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
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_ne!(hr["spec"]["suspend"], true);
    assert!(
        hr["metadata"]["annotations"]
            .get("fluxmedic.io/suspended-by")
            .is_none()
    );
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(cms.get("web-two").await.is_ok());
    op.wait_metric(
        "fluxmedic_actions_total{action=\"rollback\",outcome=\"succeeded\"}",
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------- stale lock

#[tokio::test(flavor = "multi_thread")]
async fn stale_pending_release_is_unlocked_like_helm_controller_does() {
    let (env, client, ns) = setup("stalelock").await;
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
    let op = Operator::start(env, &ns, &[]);

    let rem = wait_remediation(&client, &ns, "HelmRelease/web", "unlocked", MIN, |r| {
        has_step(r, "unlock", "Succeeded")
    })
    .await;
    assert_eq!(rem["spec"]["case"], "stale-lock");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s = secrets
        .get("sh.helm.release.v1.web.v2")
        .await
        .expect("unlock never deletes by default");
    assert_eq!(s.metadata.labels.as_ref().unwrap()["status"], "failed");
    let data: std::collections::BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap()
        .into_iter()
        .map(|(k, ByteString(v))| (k, v))
        .collect();
    let rel = fluxmedic::helm::decode_secret("sh.helm.release.v1.web.v2", &data).unwrap();
    assert_eq!(rel.status(), Some("failed"));
    assert_eq!(
        rel.description(),
        Some("Release unlocked from stale 'pending-upgrade' state")
    );
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_eq!(
        hr["spec"]["suspend"], true,
        "fluxmedic never resumes a suspension it did not make"
    );
    assert!(hr["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].is_string());
    wait_remediation(&client, &ns, "HelmRelease/web", "Succeeded", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    op.wait_metric(
        "fluxmedic_actions_total{action=\"unlock\",outcome=\"succeeded\"}",
        1.0,
    )
    .await;
    assert_events(&client, &ns, "web", &["FailureDetected", "ActionSucceeded"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_release_secret_is_reported_and_never_deleted() {
    let (env, client, ns) = setup("corrupt").await;
    suspended_release_with_pending(env, &client, &ns, true).await;
    apply(&client, policy(&ns, "auto", auto(json!([{"case": "stale-lock", "mode": "Auto", "actions": ["DeletePendingRelease"]}])))).await;
    let op = Operator::start(env, &ns, &["--allow-delete-pending-release"]);
    let rem = wait_remediation(&client, &ns, "HelmRelease/web", "a failed step", MIN, |r| {
        has_step(r, "delete-pending-release", "Failed")
    })
    .await;
    let msg = rem["status"]["steps"].as_array().unwrap().last().unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("corrupt Helm release") && msg.contains("gzip"),
        "{msg}"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets.get("sh.helm.release.v1.web.v2").await.is_ok(),
        "a corrupt Secret is never deleted"
    );
    op.wait_metric("fluxmedic_errors_total{category=\"CorruptRelease\"}", 1.0)
        .await;
    assert_events(&client, &ns, "web", &["CorruptRelease"]).await;
}

// ---------------------------------------------------------------- dependency cascade

#[tokio::test(flavor = "multi_thread")]
async fn dependency_cascade_acts_on_the_root_then_reconciles_dependents_in_order() {
    let (env, client, ns) = setup("cascade").await;
    let repo = Repo::new(env, &ns, false);
    let files = |base: &str| {
        vec![
            (
                "base/kustomization.yaml".to_string(),
                "resources:\n- cm.yaml\n".to_string(),
            ),
            ("base/cm.yaml".to_string(), base.to_string()),
            (
                "mid/kustomization.yaml".to_string(),
                "resources:\n- cm.yaml\n".to_string(),
            ),
            ("mid/cm.yaml".to_string(), cm("mid", "v1")),
            (
                "top/kustomization.yaml".to_string(),
                "resources:\n- cm.yaml\n".to_string(),
            ),
            ("top/cm.yaml".to_string(), cm("top", "v1")),
        ]
    };
    let f = files(&cm("base", "v1"));
    repo.commit(
        &f.iter()
            .map(|(a, b)| (a.as_str(), Some(b.as_str())))
            .collect::<Vec<_>>(),
        "initial",
    );
    git_repository(&client, &ns, "repo", &repo.url, None).await;
    kustomization(&client, &ns, "a", "./base", &[]).await;
    kustomization(&client, &ns, "b", "./mid", &["a"]).await;
    kustomization(&client, &ns, "c", "./top", &["b"]).await;
    for k in ["a", "b", "c"] {
        wait_ready(&client, &ns, "Kustomization", k, Duration::from_secs(90)).await;
    }
    apply(&client, policy(&ns, "auto", auto(json!([
        {"case": "invalid-manifests", "mode": "Auto"}, {"case": "dependency-cascade", "mode": "Auto"}])))).await;
    let op = Operator::start(env, &ns, &[]);

    break_root(&client, &ns, &repo, &["b", "c"]).await;
    for k in ["b", "c"] {
        let rem = wait_remediation(
            &client,
            &ns,
            &format!("Kustomization/{k}"),
            "blocked by the root",
            MIN,
            |r| {
                r["status"]["root"]["name"] == "a"
                    && r["status"]["blocked"]
                        .as_str()
                        .is_some_and(|b| b.contains("blocked by Kustomization"))
            },
        )
        .await;
        assert_eq!(rem["spec"]["case"], "dependency-cascade");
        assert!(
            steps(&rem).is_empty(),
            "no action on a dependent while its root fails"
        );
    }

    let fixed_at = std::time::Instant::now();
    repo.commit(&[("base/cm.yaml", Some(&cm("base", "v2")))], "fix the root");
    for k in ["a", "b", "c"] {
        wait_ready(&client, &ns, "Kustomization", k, Duration::from_secs(90)).await;
    }
    let elapsed = fixed_at.elapsed();
    let rb = wait_remediation(&client, &ns, "Kustomization/b", "Succeeded", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    let rc = wait_remediation(&client, &ns, "Kustomization/c", "Succeeded", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    // Dependents were reconciled, b before c.
    let at = |r: &Value| {
        r["status"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["action"] == "reconcile")
            .map(|s| s["startedAt"].as_str().unwrap().to_string())
    };
    if let (Some(tb), Some(tc)) = (at(&rb), at(&rc)) {
        assert!(tb <= tc, "b ({tb}) is reconciled before c ({tc})");
    }
    assert!(
        at(&rb).is_some() || at(&rc).is_some(),
        "fluxmedic reconciled the dependents: {rb} {rc}"
    );
    op.wait_metric(
        "fluxmedic_incidents_total{case=\"dependency-cascade\"}",
        2.0,
    )
    .await;
    eprintln!("dependency-cascade: all three Ready {elapsed:?} after the fixing commit");
}

// ---------------------------------------------------------------- modes and limits

async fn broken_kustomization_setup(
    prefix: &str,
    n: usize,
) -> (&'static Env, Client, String, Repo) {
    let (env, client, ns) = setup(prefix).await;
    let repo = ready_apps(env, &client, &ns, n).await;
    (env, client, ns, repo)
}

async fn break_all(client: &Client, ns: &str, repo: &Repo, n: usize) {
    break_apps(client, ns, repo, n).await
}

/// Whether fluxmedic wrote to the GitRepository (its field manager in managedFields).
async fn fluxmedic_touched(client: &Client, ns: &str, kind: &str, name: &str) -> bool {
    let o = get(client, ns, kind, name).await.unwrap();
    o["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|m| m.iter().any(|f| f["manager"] == "fluxmedic"))
}

#[tokio::test(flavor = "multi_thread")]
async fn observe_mode_records_the_plan_and_changes_nothing() {
    let (env, client, ns, repo) = broken_kustomization_setup("observe", 1).await;
    apply(
        &client,
        policy(
            &ns,
            "watch",
            auto(json!([{"case": "invalid-manifests", "mode": "Observe"}])),
        ),
    )
    .await;
    // An overlapping Auto policy with a lower priority: it must lose, and say so.
    let mut fallback = auto(json!([{"case": "invalid-manifests", "mode": "Auto"}]));
    fallback["priority"] = json!(-10);
    apply(&client, policy(&ns, "fallback", fallback)).await;
    let op = Operator::start(env, &ns, &[]);
    break_all(&client, &ns, &repo, 1).await;
    let rem = wait_remediation(&client, &ns, "Kustomization/app0", "recorded", MIN, |r| {
        r["status"]["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("Observe"))
    })
    .await;
    assert_eq!(rem["status"]["mode"], "Observe");
    assert!(
        rem["status"]["blocked"]
            .as_str()
            .unwrap()
            .starts_with("planned reconcile-source"),
        "{}",
        rem["status"]
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rem = remediation_for(&client, &ns, "Kustomization/app0")
        .await
        .unwrap();
    assert!(steps(&rem).is_empty());
    assert!(!fluxmedic_touched(&client, &ns, "GitRepository", "repo").await);
    assert!(!fluxmedic_touched(&client, &ns, "Kustomization", "app0").await);
    op.wait_metric("fluxmedic_actions_blocked_total{reason=\"observe\"}", 1.0)
        .await;
    let pols: Api<fluxmedic::api::RemediationPolicy> = Api::namespaced(client.clone(), &ns);
    let winner = format!("policy {ns}/watch wins");
    wait_for("the losing policy's status", MIN, || async {
        let p = pols.get("fallback").await.map_err(|e| e.to_string())?;
        let o = p.status.map(|s| s.overridden).unwrap_or_default();
        if o.iter()
            .any(|t| t.starts_with("Kustomization/") && t.contains("/app0 ") && t.contains(&winner))
        {
            Ok(())
        } else {
            Err(format!("{o:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_policy_means_record_only() {
    let (env, client, ns, repo) = broken_kustomization_setup("nopolicy", 1).await;
    let _op = Operator::start(env, &ns, &[]);
    break_all(&client, &ns, &repo, 1).await;
    let rem = wait_remediation(&client, &ns, "Kustomization/app0", "recorded", MIN, |r| {
        r["status"]["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("no RemediationPolicy"))
    })
    .await;
    assert!(steps(&rem).is_empty());
    assert!(!fluxmedic_touched(&client, &ns, "GitRepository", "repo").await);
}

/// A broken Kustomization under a RequireApproval policy, its operator running, and the
/// Remediation waiting for approval (its record).
async fn awaiting_approval(prefix: &str) -> (&'static Env, Client, String, Operator, Value) {
    let (env, client, ns, repo) = broken_kustomization_setup(prefix, 1).await;
    apply(
        &client,
        policy(
            &ns,
            "gated",
            auto(json!([{"case": "invalid-manifests", "mode": "RequireApproval"}])),
        ),
    )
    .await;
    let op = Operator::start(env, &ns, &[]);
    break_all(&client, &ns, &repo, 1).await;
    let rem = wait_remediation(
        &client,
        &ns,
        "Kustomization/app0",
        "awaiting approval",
        MIN,
        |r| phase(r) == "AwaitingApproval",
    )
    .await;
    (env, client, ns, op, rem)
}

#[tokio::test(flavor = "multi_thread")]
async fn require_approval_waits_for_a_person() {
    let (env, client, ns, _op, rem) = awaiting_approval("approval").await;
    assert!(steps(&rem).is_empty());
    assert!(!fluxmedic_touched(&client, &ns, "GitRepository", "repo").await);
    let name = rem["metadata"]["name"].as_str().unwrap().to_string();
    assert_events(&client, &ns, &name, &["ActionBlocked"]).await;

    // An approval must name the request's id: "true" approves nothing.
    let api: Api<fluxmedic::api::Remediation> = Api::namespaced(client.clone(), &ns);
    let annotate = |v: String| {
        let (api, name) = (api.clone(), name.clone());
        async move {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"fluxmedic.io/approve": v}}})),
            )
            .await
            .unwrap();
        }
    };
    annotate("true".into()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!fluxmedic_touched(&client, &ns, "GitRepository", "repo").await);
    // kubectl annotate remediation NAME fluxmedic.io/approve=<status.approval.id>
    let id = rem["status"]["approval"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        rem["status"]["blocked"]
            .as_str()
            .unwrap()
            .contains(&format!("fluxmedic.io/approve={id}")),
        "{}",
        rem["status"]
    );
    // `fluxmedic approve` writes exactly that annotation; the operator acts.
    let said = cli(env, &["approve", &name, "-n", &ns, "--id", &id]);
    assert!(
        said.contains(&format!(
            "approved reconcile-source GitRepository/{ns}/repo"
        )),
        "{said}"
    );
    wait_remediation(
        &client,
        &ns,
        "Kustomization/app0",
        "approved and acted",
        MIN,
        |r| has_step(r, "reconcile-source", "Succeeded"),
    )
    .await;
    assert!(fluxmedic_touched(&client, &ns, "GitRepository", "repo").await);
}

/// `fluxmedic ARGS` on the test plane; its output (it must succeed).
fn cli(env: &Env, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
        .args(args)
        .args(["--kubeconfig", env.kubeconfig()])
        .output()
        .unwrap();
    assert!(out.status.success(), "fluxmedic {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_action_is_not_asked_for_again() {
    let (env, client, ns, op, rem) = awaiting_approval("reject").await;
    let name = rem["metadata"]["name"].as_str().unwrap().to_string();
    let said = cli(env, &["reject", &name, "-n", &ns]);
    assert!(said.starts_with("rejected reconcile-source"), "{said}");
    let rem = wait_remediation(&client, &ns, "Kustomization/app0", "rejected", MIN, |r| {
        r["status"]["approval"]["rejected"] == true
    })
    .await;
    assert_eq!(phase(&rem), "Detected");
    assert_eq!(rem["status"]["conditions"][0]["reason"], "Rejected");
    assert!(
        rem["status"]["blocked"]
            .as_str()
            .unwrap()
            .contains("a person rejected it")
    );
    assert_events(&client, &ns, &name, &["ActionRejected"]).await;
    // An approval of the rejected request afterwards counts for nothing.
    let id = rem["status"]["approval"]["id"].as_str().unwrap();
    let api: Api<fluxmedic::api::Remediation> = Api::namespaced(client.clone(), &ns);
    let approve = json!({"metadata": {"annotations": {"fluxmedic.io/approve": id}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&approve))
        .await
        .unwrap();
    // Passes that saw the approval (a watch event wakes one; the tick runs them anyway).
    let passes = op.metric("fluxmedic_evaluations_total").await;
    op.wait_metric("fluxmedic_evaluations_total", passes + 3.0)
        .await;
    assert!(!fluxmedic_touched(&client, &ns, "GitRepository", "repo").await);
    let listed = cli(env, &["get", "-n", &ns]);
    assert!(listed.contains(&format!("rejected {id}")), "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn circuit_breaker_stops_action_when_many_targets_fail_at_once() {
    let (env, client, ns, repo) = broken_kustomization_setup("breaker", 3).await;
    let mut spec = auto(json!([{"case": "invalid-manifests", "mode": "Auto"}]));
    spec["circuitBreaker"] = json!({"maxFailingTargets": 2});
    apply(&client, policy(&ns, "auto", spec)).await;
    // A storm: three targets are failing at once when fluxmedic looks.
    break_all(&client, &ns, &repo, 3).await;
    let op = Operator::start(env, &ns, &[]);
    for i in 0..3 {
        let rem = wait_remediation(
            &client,
            &ns,
            &format!("Kustomization/app{i}"),
            "blocked by the breaker",
            MIN,
            |r| {
                r["status"]["blocked"]
                    .as_str()
                    .is_some_and(|b| b.contains("circuit breaker open"))
            },
        )
        .await;
        assert!(steps(&rem).is_empty());
    }
    assert_eq!(
        op.metric(&format!(
            "fluxmedic_circuit_breaker_open{{namespace=\"{ns}\"}}"
        ))
        .await,
        1.0
    );
    assert!(!fluxmedic_touched(&client, &ns, "GitRepository", "repo").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_attempts_and_cooldown_bound_retries() {
    let (env, client, ns) = setup("limits").await;
    chart_repo(env, &client, &ns).await;
    for name in ["once", "cool"] {
        apply(&client, json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"interval": "1h", "timeout": "8s", "releaseName": name,
                     "chart": {"spec": {"chart": "web", "version": "0.1.0", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}},
                     "values": {"suffix": name}}})).await;
    }
    for name in ["once", "cool"] {
        wait_ready(&client, &ns, "HelmRelease", name, Duration::from_secs(90)).await;
    }
    let rule = json!([{"case": "failed-release", "mode": "Auto", "actions": ["Retry"]}]);
    apply(&client, policy(&ns, "once", json!({"targets": {"names": ["once"]}, "rules": rule, "limits": {"maxAttempts": 1, "cooldown": "1s"}}))).await;
    apply(&client, policy(&ns, "cool", json!({"targets": {"names": ["cool"]}, "rules": rule, "limits": {"maxAttempts": 5, "cooldown": "1h"}}))).await;
    // Both upgrade to a chart whose rollout never completes: every retry fails again.
    for name in ["once", "cool"] {
        merge_patch(
            &client,
            &ns,
            "HelmRelease",
            name,
            json!({"spec": {"chart": {"spec": {"version": "0.2.0"}}}}),
        )
        .await;
    }
    for name in ["once", "cool"] {
        wait_stalled(&client, &ns, name).await;
    }
    let op = Operator::start(env, &ns, &[]);
    let once = wait_remediation(
        &client,
        &ns,
        "HelmRelease/once",
        "Failed after one attempt",
        Duration::from_secs(120),
        |r| phase(r) == "Failed",
    )
    .await;
    assert_eq!(once["status"]["attempts"], 1);
    assert!(
        once["status"]["blocked"]
            .as_str()
            .unwrap()
            .contains("maximum attempts"),
        "{}",
        once["status"]
    );
    let cool = wait_remediation(
        &client,
        &ns,
        "HelmRelease/cool",
        "in cooldown",
        Duration::from_secs(120),
        |r| {
            has_step(r, "retry", "Succeeded")
                && r["status"]["blocked"]
                    .as_str()
                    .is_some_and(|b| b.contains("cooldown"))
        },
    )
    .await;
    assert_eq!(cool["status"]["attempts"], 1);
    op.wait_metric(
        "fluxmedic_actions_blocked_total{reason=\"max-attempts\"}",
        1.0,
    )
    .await;
    op.wait_metric("fluxmedic_actions_blocked_total{reason=\"cooldown\"}", 1.0)
        .await;
}

// ---------------------------------------------------------------- bad policies

#[tokio::test(flavor = "multi_thread")]
async fn invalid_policies_are_rejected_by_the_schema_with_readable_messages() {
    let (_env, client, ns) = setup("badpolicy").await;
    let api: Api<fluxmedic::api::RemediationPolicy> = Api::namespaced(client.clone(), &ns);
    let cases = [
        (
            json!({"rules": [{"case": "git-auth", "mode": "Auto"}, {"case": "git-auth", "mode": "Observe"}]}),
            "each case may appear in at most one rule",
        ),
        (
            json!({"rules": [{"case": "git-auth", "mode": "Auto", "actions": ["Rollback"]}]}),
            "actions Retry and Rollback apply only to case failed-release",
        ),
        (
            json!({"rules": [{"case": "stale-lock", "mode": "Auto", "actions": ["Unlock", "DeletePendingRelease"]}]}),
            "choose one of Unlock or DeletePendingRelease",
        ),
        (
            json!({"limits": {"cooldown": "five minutes"}}),
            "must be a duration such as 30s, 5m or 1h30m",
        ),
        (
            json!({"limits": {"maxAttempts": 0}}),
            "should be greater than or equal to 1",
        ),
        (
            json!({"rules": [{"case": "gitauth", "mode": "Auto"}]}),
            "Unsupported value: \"gitauth\"",
        ),
        (
            json!({"rules": [{"case": "git-auth", "mode": "Sometimes"}]}),
            "Unsupported value: \"Sometimes\"",
        ),
        (
            json!({"rules": [{"case": "git-auth", "mode": "Auto", "withSource": true}]}),
            "withSource applies only to case failed-release",
        ),
    ];
    for (i, (spec, want)) in cases.iter().enumerate() {
        let raw = policy(&ns, &format!("bad{i}"), spec.clone());
        let dynamic = kube::api::DynamicObject::new(
            &format!("bad{i}"),
            &support::ar(
                "fluxmedic.io",
                "v1alpha1",
                "RemediationPolicy",
                "remediationpolicies",
            ),
        )
        .within(&ns)
        .data(json!({"spec": raw["spec"]}));
        let dapi: Api<kube::api::DynamicObject> = Api::namespaced_with(
            client.clone(),
            &ns,
            &support::ar(
                "fluxmedic.io",
                "v1alpha1",
                "RemediationPolicy",
                "remediationpolicies",
            ),
        );
        let err = dapi
            .create(&PostParams::default(), &dynamic)
            .await
            .expect_err(&format!("policy {i} must be rejected"));
        let text = err.to_string();
        assert!(text.contains(want), "policy {i}: want {want:?} in {text}");
    }
    assert!(
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing invalid was stored"
    );
}

// ---------------------------------------------------------------- RetryOnFailure

/// helm-controller under RetryOnFailure never stalls: it retries a failed upgrade at its
/// retryInterval without a limit, also when a retry cannot help (helm-controller#1551).
/// fluxmedic counts the attempts, escalates, and (allowed to) rolls back and holds, which
/// ends the loop; the fix resumes it.
#[tokio::test(flavor = "multi_thread")]
async fn retry_on_failure_looping_on_bad_values_is_rolled_back_held_and_escalated() {
    let (env, client, ns) = setup("retryforever").await;
    chart_repo(env, &client, &ns).await;
    let release = |suffix: &str| {
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"interval": "1h", "timeout": "30s", "values": {"suffix": suffix},
                 "upgrade": {"strategy": {"name": "RetryOnFailure", "retryInterval": "5s"}},
                 "chart": {"spec": {"chart": "web", "version": "0.1.0", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})
    };
    apply(&client, release("one")).await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    apply(&client, release("Not_Valid")).await;
    // Flux loops: Reconciling/ProgressingWithRetry, never Stalled.
    let looping = wait_for("helm-controller retrying", MIN, || async {
        let o = get(&client, &ns, "HelmRelease", "web")
            .await
            .ok_or("missing")?;
        let retrying =
            condition(&o, "Reconciling").is_some_and(|c| c["reason"] == "ProgressingWithRetry");
        if retrying && o["status"]["upgradeFailures"].as_i64().unwrap_or(0) >= 1 {
            Ok(o)
        } else {
            Err(format!("{}", o["status"]))
        }
    })
    .await;
    assert!(condition(&looping, "Stalled").is_none_or(|c| c["status"] != "True"));
    apply(&client, policy(&ns, "auto", auto(json!([{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}])))).await;
    let op = Operator::start(env, &ns, &[]);
    let rem = wait_remediation(
        &client,
        &ns,
        "HelmRelease/web",
        "rolled back and escalated",
        Duration::from_secs(90),
        |r| has_step(r, "rollback", "Succeeded") && phase(r) == "Escalated",
    )
    .await;
    assert_eq!(rem["status"]["diagnosis"]["native"], "RetryingForever");
    assert!(
        !has_step(&rem, "retry", "Succeeded"),
        "no retry of ours on top of Flux's"
    );
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_eq!(hr["spec"]["suspend"], true, "held: the loop stopped");
    let failures = hr["status"]["upgradeFailures"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let hr = get(&client, &ns, "HelmRelease", "web").await.unwrap();
    assert_eq!(
        hr["status"]["upgradeFailures"].as_i64().unwrap(),
        failures,
        "no more failed attempts while held"
    );
    op.wait_metric("fluxmedic_escalations_total{case=\"failed-release\"}", 1.0)
        .await;
    // The fix lands: resumed, Ready.
    apply(&client, release("two")).await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    let rem = wait_remediation(&client, &ns, "HelmRelease/web", "Succeeded", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    assert!(has_step(&rem, "resume", "Succeeded"));
}
