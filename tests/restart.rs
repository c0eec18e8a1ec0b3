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
    // not fluxmedic's: wait until source-controller handles a request again, then give
    // fluxmedic its usual deadline.
    let client = env.client().await;
    let started = std::time::Instant::now();
    let token = jiff::Timestamp::now().to_string();
    wait_for(
        "source-controller handling requests again",
        std::time::Duration::from_secs(180),
        || async {
            merge_patch(
                &client,
                &ns,
                "GitRepository",
                "repo",
                json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}}),
            )
            .await;
            let repo = get(&client, &ns, "GitRepository", "repo").await;
            match repo
                .as_ref()
                .map(|r| &r["status"]["lastHandledReconcileAt"])
            {
                Some(t) if t == token.as_str() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "source-controller handled a request {:.1}s after the restart",
        started.elapsed().as_secs_f64()
    );

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
