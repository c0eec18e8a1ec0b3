//! The kube-apiserver crashes (SIGKILL) and comes back five seconds later under a running
//! operator with an open incident. Its own test binary: nothing else runs meanwhile.
//! The operator survives, records the failed calls, re-establishes its watches (a failure
//! after the restart is detected), and closes the incident when the fix lands.

mod support;

use std::process::Command;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_survives_an_apiserver_restart() {
    let (env, client, ns) = setup("restart").await;
    let repo = ready_app(env, &client, &ns).await;
    let good = cm("greeting", "v1");
    apply(
        &client,
        policy(
            &ns,
            "auto",
            json!({"rules": [{"case": "invalid-manifests", "mode": "Auto"}],
                   "limits": {"pollInterval": "1s", "maxPollInterval": "2s"}}),
        ),
    )
    .await;
    let mut op = Operator::start(env, &ns, &[]);
    repo.commit(&[("app/cm.yaml", Some(BROKEN_YAML))], "broken");
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    let first = wait_remediation(&client, &ns, "Kustomization/app", "polling", MIN, |r| {
        has_step(r, "reconcile-source", "Succeeded")
    })
    .await;

    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/hack/testenv/restart-apiserver.sh"
        ))
        .arg("5")
        .env("FLUXMEDIC_TESTENV_DIR", env.var("FLUXMEDIC_TESTENV_DIR"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                env.var("FLUXMEDIC_TESTENV_BIN"),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .expect("restart the apiserver");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(op.alive(), "the operator survives the apiserver going away");
    op.wait_metric("fluxmedic_errors_total{category=\"ApiUnreachable\"}", 1.0)
        .await;

    // Flux's controllers reconnect by themselves, with client-go's relist backoff (up to 30 s,
    // jittered to twice that) and a requeue of everything they know. That is Flux's recovery,
    // not fluxmedic's: wait until source-controller and kustomize-controller each handle a
    // request again, then give fluxmedic its usual deadline. (kustomize-controller can run a
    // reconcile before its caches are back and fail to write its status — "failed to update
    // status: timed out waiting for the condition" — which leaves the Kustomization at
    // Ready=Unknown until its next interval, an hour here: so a fresh request until one is
    // handled, not one request waited for.)
    let client = env.client().await;
    let started = std::time::Instant::now();
    for (kind, name) in [("GitRepository", "repo"), ("Kustomization", "app")] {
        flux_handles_requests_again(&client, &ns, kind, name).await;
        eprintln!(
            "{kind}/{name}: a request handled {:.1}s after the restart",
            started.elapsed().as_secs_f64()
        );
    }

    // The incident opened before the crash is still followed and closes when the fix lands.
    repo.commit(&[("app/cm.yaml", Some(&good))], "fixed");
    let closed = wait_remediation(&client, &ns, "Kustomization/app", "closed", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    assert_eq!(closed["metadata"]["name"], first["metadata"]["name"]);
    assert!(
        closed["status"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["outcome"] != "Running"),
        "no step left half-done: {}",
        closed["status"]
    );

    // The watches were re-established: a new failure after the restart is detected.
    repo.commit(&[("app/cm.yaml", Some(BROKEN_YAML))], "broken again");
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    let second = wait_remediation(
        &client,
        &ns,
        "Kustomization/app",
        "a new incident",
        MIN,
        |r| {
            r["metadata"]["name"] != first["metadata"]["name"]
                && has_step(r, "reconcile-source", "Succeeded")
        },
    )
    .await;
    assert_eq!(second["spec"]["case"], "invalid-manifests");
    assert!(op.alive());
}

/// Request a reconcile of `kind/name` with a fresh token every five seconds until its
/// controller records one as handled (three minutes at most).
async fn flux_handles_requests_again(client: &kube::Client, ns: &str, kind: &str, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let token = request_reconcile(client, ns, kind, name).await;
        let handled = async {
            loop {
                let obj = get(client, ns, kind, name).await;
                if obj.as_ref().map(|o| &o["status"]["lastHandledReconcileAt"])
                    == Some(&json!(token))
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(5), handled)
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind}/{name}: no request handled within 3 minutes of the restart"
        );
    }
}
