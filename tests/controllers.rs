//! A Flux controller stops working under a running operator (its process frozen with
//! SIGSTOP: alive, not processing). Its own test binary: it disturbs everyone else.
//! fluxmedic notices from a reconcile request left unhandled, escalates at once (record,
//! Event, metric), does nothing through that controller meanwhile, and recovers when it
//! works again.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// SIGCONT on drop, whatever happens: never leave a controller frozen for the next test.
struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flux_controller_that_stops_working_is_escalated_at_once_and_left_alone() {
    let (env, client, ns) = setup("ctrldown").await;
    // An unreachable source fluxmedic polls (git-unreachable, Auto).
    unreachable_repo_polled(&client, &ns).await;
    let op = Operator::start(env, &ns, &["--controller-timeout-seconds", "8"]);
    wait_remediation(&client, &ns, "GitRepository/repo", "polling", MIN, |r| {
        has_step(r, "reconcile-source", "Succeeded")
    })
    .await;

    let pid: u32 = std::fs::read_to_string(format!(
        "{}/pids/source-controller",
        env.var("FLUXMEDIC_TESTENV_DIR")
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let frozen = Frozen(pid);
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );

    // Frozen mid-reconcile, as source-controller leaves an object it had just picked up:
    // Flux shows it working on it (Ready Unknown), the request not yet marked handled, and it
    // will never move. Written here so the test does not depend on where the SIGSTOP landed.
    flux_api(&client, &ns, "GitRepository")
        .patch_status(
            "repo",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"lastHandledReconcileAt": null, "conditions": [
                {"type": "Reconciling", "status": "True", "reason": "Progressing",
                 "lastTransitionTime": "2026-11-30T08:00:00Z", "message": "reconciliation in progress"},
                {"type": "Ready", "status": "Unknown", "reason": "Progressing",
                 "lastTransitionTime": "2026-11-30T08:00:00Z", "message": "reconciliation in progress"}]}})),
        )
        .await
        .unwrap();

    let rem = wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "escalated: source-controller not working",
        MIN,
        |r| {
            phase(r) == "Escalated"
                && r["status"]["blocked"]
                    .as_str()
                    .is_some_and(|b| b.contains("source-controller has not handled"))
        },
    )
    .await;
    assert!(
        rem["status"]["diagnosis"]["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["source"] == "controller"),
        "{}",
        rem["status"]
    );
    op.wait_metric(
        "fluxmedic_flux_controller_down{controller=\"source-controller\"}",
        1.0,
    )
    .await;
    op.wait_metric("fluxmedic_escalations_total{case=\"git-unreachable\"}", 1.0)
        .await;
    // Nothing goes through the frozen controller meanwhile: no more polls.
    let polls = |r: &serde_json::Value| r["status"]["polls"].as_u64().unwrap_or(0);
    let before = polls(&rem);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = remediation_for(&client, &ns, "GitRepository/repo")
        .await
        .unwrap();
    assert_eq!(
        polls(&after),
        before,
        "no request piled onto a controller that is not working"
    );
    let evs = events_about(&client, &ns, "repo").await;
    assert!(
        evs.iter()
            .any(|(r, n)| r == "Escalated" && n.contains("failing")),
        "{evs:?}"
    );

    // It works again: the request is handled, fluxmedic goes back to polling.
    drop(frozen);
    wait_for(
        "source-controller counted as working again",
        MIN,
        || async {
            let v = op
                .metric("fluxmedic_flux_controller_down{controller=\"source-controller\"}")
                .await;
            if v == 0.0 { Ok(()) } else { Err(v.to_string()) }
        },
    )
    .await;
    wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "polling again",
        MIN,
        |r| polls(r) > before,
    )
    .await;
}
