//! API faults injected for real: a validating admission webhook (hack/testenv/fault-webhook.py)
//! makes the kube-apiserver answer chosen writes of the operator with 409 Conflict or let them
//! time out. Each fault is recorded (step, metric), survived and retried with backoff, and
//! nothing is lost: every injected fault on a Flux write shows up as one Failed step.

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use support::*;

/// The fault webhook for one namespace, registered with the apiserver; removed on drop.
struct FaultWebhook {
    child: Child,
    log: std::path::PathBuf,
    client: kube::Client,
    name: String,
}

impl FaultWebhook {
    async fn start(
        env: &Env,
        client: &kube::Client,
        ns: &str,
        port_offset: u16,
        rules: Value,
    ) -> Self {
        use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
        let dir = std::path::PathBuf::from(env.var("FLUXMEDIC_TESTENV_DIR"));
        let port = env.var("FLUXMEDIC_PORT_BASE").parse::<u16>().unwrap() + port_offset;
        let tmp = std::env::temp_dir();
        let plan = tmp.join(format!("faults-{ns}.json"));
        let log = tmp.join(format!("faults-{ns}.jsonl"));
        std::fs::write(&plan, json!({"rules": rules}).to_string()).unwrap();
        let _ = std::fs::remove_file(&log);
        let child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/hack/testenv/fault-webhook.py"
            ))
            .args(["--port", &port.to_string(), "--plan"])
            .arg(&plan)
            .arg("--log")
            .arg(&log)
            .arg("--cert")
            .arg(dir.join("pki/apiserver.crt"))
            .arg("--key")
            .arg(dir.join("pki/apiserver.key"))
            .stdout(Stdio::null())
            .spawn()
            .expect("start the fault webhook");
        let ca = std::fs::read(dir.join("pki/ca.crt")).unwrap();
        let name = format!("faults-{ns}");
        let hook: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": "faults.fluxmedic.io",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/"),
                                 "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
                "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": ["*"], "apiVersions": ["*"],
                           "resources": ["gitrepositories", "kustomizations", "helmreleases",
                                         "remediations", "remediations/status"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "failurePolicy": "Fail", "sideEffects": "None", "timeoutSeconds": 1,
                "admissionReviewVersions": ["v1"]}]}))
        .unwrap();
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        api.create(&PostParams::default(), &hook).await.unwrap();
        // Registration reaches the apiserver's webhook cache within about a second.
        tokio::time::sleep(Duration::from_secs(2)).await;
        FaultWebhook {
            child,
            log,
            client: client.clone(),
            name,
        }
    }

    /// The faults injected so far: (fault, resource/subresource).
    fn injected(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                let sub = v["subResource"].as_str().unwrap_or_default();
                let res = v["resource"].as_str().unwrap_or_default();
                (
                    v["fault"].as_str().unwrap_or_default().to_string(),
                    if sub.is_empty() {
                        res.to_string()
                    } else {
                        format!("{res}/{sub}")
                    },
                )
            })
            .collect()
    }
}

impl Drop for FaultWebhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let client = self.client.clone();
        let name = self.name.clone();
        // Best effort: the namespace selector keeps a leftover harmless to other tests.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
                let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
                let _ = api.delete(&name, &Default::default()).await;
            });
        })
        .join()
        .ok();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_and_timeouts_are_recorded_survived_and_retried() {
    let (env, client, ns) = setup("faults").await;
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
    break_app(&client, &ns, &repo, "broken").await;

    // The operator's first status write (the outcome of its first poll: a new incident's
    // intent rides on the create) times out; its first three polls of the source get 409, 409
    // and a timeout.
    let hook = FaultWebhook::start(
        env,
        &client,
        &ns,
        194,
        json!([
            {"namespace": ns, "resource": "remediations", "subResource": "status",
             "fieldManager": "fluxmedic", "fault": "timeout", "count": 1},
            {"namespace": ns, "resource": "gitrepositories",
             "fieldManager": "fluxmedic", "fault": "conflict", "count": 2},
            {"namespace": ns, "resource": "gitrepositories",
             "fieldManager": "fluxmedic", "fault": "timeout", "count": 1},
        ]),
    )
    .await;
    let mut op = Operator::start(env, &ns, &[]);

    let rem = wait_remediation(
        &client,
        &ns,
        "Kustomization/app",
        "a successful poll after three failed ones",
        Duration::from_secs(120),
        |r| has_step(r, "reconcile-source", "Succeeded"),
    )
    .await;
    let injected = hook.injected();
    assert_eq!(
        injected,
        vec![
            ("conflict".to_string(), "gitrepositories".to_string()),
            ("timeout".to_string(), "remediations/status".to_string()),
            ("conflict".to_string(), "gitrepositories".to_string()),
            ("timeout".to_string(), "gitrepositories".to_string()),
        ],
        "the faults were injected in order"
    );
    let failed: Vec<&Value> = rem["status"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["outcome"] == "Failed")
        .collect();
    // The first poll's outcome never reached the status; that step was finished again with
    // the token recorded at creation (and met the second conflict). Each later fault is one
    // Failed step.
    assert_eq!(failed.len(), 2, "{failed:?}");
    let intent = recorded_intent(&rem).expect("the first intent recorded at creation");
    assert_eq!(
        failed[0]["token"], intent["token"],
        "the interrupted first step kept its token"
    );
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("injected conflict")
    );
    assert!(
        failed[1]["message"]
            .as_str()
            .unwrap()
            .contains("context deadline exceeded"),
        "{}",
        failed[1]
    );
    assert!(
        rem["status"]["detectedAt"].is_string(),
        "the status write that timed out was written again"
    );
    assert_eq!(
        remediations(&client, &ns).await.len(),
        1,
        "one record for the incident"
    );
    op.wait_metric("fluxmedic_errors_total{category=\"Conflict\"}", 2.0)
        .await;
    op.wait_metric("fluxmedic_errors_total{category=\"Timeout\"}", 2.0)
        .await;
    assert!(op.alive(), "the operator survives API faults");

    repo.commit(&[("app/cm.yaml", Some(&good))], "fixed");
    wait_remediation(&client, &ns, "Kustomization/app", "recovered", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    wait_ready(&client, &ns, "Kustomization", "app", MIN).await;
    let evs = events_about(&client, &ns, "app").await;
    assert!(evs.iter().any(|(r, _)| r == "Conflict"), "{evs:?}");
    assert!(op.alive());
}
