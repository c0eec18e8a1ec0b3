//! The test control plane is real: Flux fetches from the Git server, applies, installs a
//! chart from the chart repository, and reports kustomize's own error for a broken commit.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::json;
use support::*;

pub fn configmap(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn flux_reconciles_git_and_helm_for_real() {
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, "smoke").await;

    let repo = Repo::new(env, &ns, false);
    repo.commit(
        &[
            ("app/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
            ("app/cm.yaml", Some(&configmap("greeting", "hello"))),
        ],
        "initial",
    );
    git_repository(&client, &ns, "repo", &repo.url, None).await;
    kustomization(&client, &ns, "app", "./app", &[]).await;
    wait_ready(
        &client,
        &ns,
        "Kustomization",
        "app",
        Duration::from_secs(60),
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = cms
        .get("greeting")
        .await
        .expect("the Kustomization applied the ConfigMap");
    assert_eq!(cm.data.unwrap()["value"], "hello");

    let charts = ChartRepo::new(env, &ns);
    charts.publish(env, "hello", "0.1.0", &[("cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello-{{ .Release.Name }}\ndata:\n  v: \"{{ .Values.v }}\"\n")], "v: one\n");
    apply(&client, json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "charts", "namespace": ns}, "spec": {"url": charts.url, "interval": "1h"}})).await;
    apply(
        &client,
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "hello", "namespace": ns},
        "spec": {"interval": "1h", "chart": {"spec": {"chart": "hello", "version": "0.1.0",
                 "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}}),
    )
    .await;
    wait_ready(
        &client,
        &ns,
        "HelmRelease",
        "hello",
        Duration::from_secs(90),
    )
    .await;
    let cm = cms
        .get("hello-hello")
        .await
        .expect("the HelmRelease installed the chart");
    assert_eq!(cm.data.unwrap()["v"], "one");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let rel = secrets
        .get("sh.helm.release.v1.hello.v1")
        .await
        .expect("Helm release storage");
    assert_eq!(rel.metadata.labels.unwrap()["status"], "deployed");

    repo.commit(
        &[(
            "app/kustomization.yaml",
            Some("resources:\n- cm.yaml\n- missing.yaml\n"),
        )],
        "broken",
    );
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    let ks = wait_failing(
        &client,
        &ns,
        "Kustomization",
        "app",
        "BuildFailed",
        Duration::from_secs(60),
    )
    .await;
    let msg = condition(&ks, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.starts_with("kustomize build failed:"), "{msg}");
    assert!(msg.contains("missing.yaml"), "{msg}");
}

/// The generated CRDs (and the chart's copy) apply to the API server without a single warning
/// (an unknown schema `format`, a deprecated field ...).
#[test]
fn the_crds_apply_without_a_warning() {
    let env = support::env();
    for dir in ["crds", "charts/fluxmedic/crds"] {
        let out = std::process::Command::new(
            std::path::Path::new(env.var("FLUXMEDIC_TESTENV_BIN")).join("kubectl"),
        )
        .env("KUBECONFIG", env.kubeconfig())
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=warning-check",
            "--dry-run=server",
            "-f",
        ])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(!stderr.contains("Warning"), "{dir}: {stderr}");
    }
}
