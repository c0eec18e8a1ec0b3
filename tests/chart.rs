//! The Helm chart: lint, render, schema, install into the real API server, and the operator
//! running with nothing but the chart's ServiceAccount token doing real remediations.

mod support;

use std::{process::Command, time::Duration};

use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/fluxmedic");

fn helm(env: &Env, args: &[&str]) -> (bool, String) {
    let out = Command::new(env.helm())
        .args(args)
        .env("KUBECONFIG", env.kubeconfig())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn chart_lints_and_renders_every_mode() {
    let env = env();
    let (ok, out) = helm(env, &["lint", CHART, "--strict"]);
    assert!(ok, "{out}");
    let (ok, out) = helm(env, &["template", "fm", CHART, "-n", "flux-system"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("kind: ClusterRole")
            && out.contains("runAsNonRoot: true")
            && out.contains("readOnlyRootFilesystem: true")
    );
    assert_eq!(
        out.matches("kind: Role\n").count(),
        1,
        "cluster mode: a ClusterRole, plus the leader-election Role"
    );
    assert!(out.contains("--leader-elect"));
    let (ok, out) = helm(
        env,
        &[
            "template",
            "fm",
            CHART,
            "-n",
            "flux-system",
            "--set",
            "watchNamespaces={apps,data}",
            "--set",
            "rollback.enabled=true",
            "--set",
            "defaultPolicy.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.matches("kind: Role\n").count(),
        4,
        "one Role per watched namespace and the release namespace, plus leader election"
    );
    assert!(out.contains("--watch-namespaces=apps,data"));
    for want in [
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "FluxmedicIncidentEscalated",
        "FluxmedicCircuitBreakerOpen",
        "kind: RemediationPolicy",
        "Retry, Rollback",
        "name: cluster-admin",
    ] {
        assert!(out.contains(want), "{want} missing");
    }
    // The CRDs shipped by the chart are the generated ones.
    for (file, yaml) in fluxmedic::api::crd_documents() {
        assert_eq!(
            std::fs::read_to_string(format!("{CHART}/crds/{file}")).unwrap(),
            yaml
        );
    }
}

#[test]
fn bad_values_fail_at_install_with_a_clear_message() {
    let env = env();
    for (set, want) in [
        ("replicas=9", "replicas"),
        ("concurrency=0", "concurrency"),
        ("logFormat=xml", "logFormat"),
        ("nosuchvalue=1", "nosuchvalue"),
    ] {
        let (ok, out) = helm(env, &["template", "fm", CHART, "--set", set]);
        assert!(!ok, "--set {set} must be rejected");
        assert!(
            out.contains("values don't meet the specifications of the schema")
                && out.contains(want),
            "{set}: {out}"
        );
    }
}

/// `helm install` the chart as release `ns` into `ns` (namespace mode: watching only `ns`), and a
/// kubeconfig holding a TokenRequest token of its ServiceAccount and nothing else.
async fn install_chart(
    env: &Env,
    client: &kube::Client,
    ns: &str,
    namespaced: bool,
) -> std::path::PathBuf {
    // The chart installs the CRDs when they are missing; when other tests already applied
    // them (server-side, another field manager) it must not fight over them.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let present = crds
        .get_opt("remediations.fluxmedic.io")
        .await
        .unwrap()
        .is_some();
    let watch = format!("watchNamespaces={{{ns}}}");
    let mut args = vec!["install", ns, CHART, "-n", ns];
    if namespaced {
        args.extend(["--set", watch.as_str()]);
    }
    if present {
        args.push("--skip-crds");
    }
    let (ok, out) = helm(env, &args);
    assert!(ok, "{out}");
    assert!(
        crds.get_opt("remediationpolicies.fluxmedic.io")
            .await
            .unwrap()
            .is_some()
    );
    install_crds(client).await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    let tr: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let tr = sas
        .create_token_request("fluxmedic", &PostParams::default(), &tr)
        .await
        .expect("token request");
    let token = tr.status.unwrap().token.expect("a token");
    token_kubeconfig(env, ns, &token)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_service_account_can_do_the_remediations() {
    service_account_remediates(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_namespace_scoped_chart_service_account_can_do_the_remediations() {
    service_account_remediates(true).await;
}

async fn service_account_remediates(namespaced: bool) {
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, if namespaced { "chartns" } else { "chart" }).await;
    let release = ns.clone();
    let kc = install_chart(env, &client, &ns, namespaced).await;

    // A stale lock and a broken commit, fixed by the operator running as the ServiceAccount.
    let charts = ChartRepo::new(env, &ns);
    charts.publish(
        env,
        "web",
        "0.1.0",
        &[(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  v: one\n",
        )],
        "{}\n",
    );
    apply(&client, json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "charts", "namespace": ns}, "spec": {"url": charts.url, "interval": "1h"}})).await;
    apply(&client, json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "metadata": {"name": "web", "namespace": ns},
        "spec": {"interval": "1h", "chart": {"spec": {"chart": "web", "version": "0.1.0", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})).await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    merge_patch(
        &client,
        &ns,
        "HelmRelease",
        "web",
        json!({"spec": {"suspend": true}}),
    )
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let mut s = secrets.get("sh.helm.release.v1.web.v1").await.unwrap();
    let data: std::collections::BTreeMap<String, Vec<u8>> = s
        .data
        .clone()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let mut rel = fluxmedic::helm::decode_secret("sh.helm.release.v1.web.v1", &data).unwrap();
    rel.json["version"] = json!(2);
    rel.json["info"]["status"] = json!("pending-upgrade");
    s.metadata = serde_json::from_value(json!({"name": "sh.helm.release.v1.web.v2", "namespace": ns, "labels": {"owner": "helm", "name": "web",
        "status": "pending-upgrade", "version": "2", "modifiedAt": (jiff::Timestamp::now().as_second() - 3600).to_string()}})).unwrap();
    s.data = Some([("release".to_string(), k8s_openapi::ByteString(rel.encode()))].into());
    secrets.create(&PostParams::default(), &s).await.unwrap();
    apply(
        &client,
        policy(
            &ns,
            "auto",
            json!({"rules": [{"case": "stale-lock", "mode": "Auto"}]}),
        ),
    )
    .await;

    let port =
        env.var("FLUXMEDIC_PORT_BASE").parse::<u16>().unwrap() + if namespaced { 191 } else { 190 };
    let log = std::env::temp_dir().join(format!("fluxmedic-{ns}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
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
        ])
        .env("KUBECONFIG", &kc)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let res = wait_for(
        "unlock done as the ServiceAccount",
        Duration::from_secs(60),
        || async {
            match remediation_for(&client, &ns, "HelmRelease/web").await {
                Some(r) if r["status"]["phase"] == "Succeeded" => Ok(r),
                Some(r) => Err(r["status"].to_string()),
                None => Err("none".into()),
            }
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logs.contains("Forbidden") && !logs.contains("forbidden"),
        "the chart's RBAC was not enough:\n{logs}"
    );
    assert!(
        res["status"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s: &Value| s["action"] == "unlock" && s["outcome"] == "Succeeded")
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    assert!(
        !events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "Events were created as the ServiceAccount"
    );
    let _ = helm(env, &["uninstall", &release, "-n", &ns]);
}

/// An API fault: one rule removed from the chart's ClusterRole under a running operator. The
/// action fails Forbidden, is recorded with its category (step, Event, metric), the process
/// survives and backs off, and the next attempt after the rule is restored succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_write_is_recorded_survived_and_retried() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, "forbidden").await;
    let kc = install_chart(env, &client, &ns, false).await;

    // Take `patch` on sources away from the ClusterRole.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role_name = format!("{ns}-fluxmedic");
    let original = roles.get(&role_name).await.unwrap();
    let mut cut = original.clone();
    for r in cut.rules.iter_mut().flatten() {
        if r.api_groups
            .as_ref()
            .is_some_and(|g| g.iter().any(|g| g == "source.toolkit.fluxcd.io"))
        {
            r.verbs.retain(|v| v != "patch");
        }
    }
    roles
        .replace(&role_name, &PostParams::default(), &cut)
        .await
        .unwrap();

    let repo = Repo::new(env, &ns, false);
    repo.commit(
        &[
            ("app/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
            (
                "app/cm.yaml",
                Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  v: one\n"),
            ),
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

    let port = env.var("FLUXMEDIC_PORT_BASE").parse::<u16>().unwrap() + 192;
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
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
        ])
        .env("KUBECONFIG", &kc)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let failed = wait_for("a Forbidden step", Duration::from_secs(60), || async {
        match remediation_for(&client, &ns, "Kustomization/app").await {
            Some(r)
                if r["status"]["steps"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["outcome"] == "Failed")) =>
            {
                Ok(r)
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let step = failed["status"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["outcome"] == "Failed")
        .unwrap()
        .clone();
    assert!(
        step["message"].as_str().unwrap().contains("forbidden"),
        "{step}"
    );
    wait_for("the Forbidden metric", Duration::from_secs(15), || async {
        let text = reqwest_get(&metrics).await.unwrap_or_default();
        if text.contains("fluxmedic_errors_total{category=\"Forbidden\"}") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let evs = events_about(&client, &ns, "app").await;
    assert!(evs.iter().any(|(r, _)| r == "Forbidden"), "{evs:?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the operator survives API errors"
    );

    // Restore the rule: the backed-off step is retried and succeeds.
    let mut restored = original.clone();
    restored.metadata.resource_version = None;
    roles
        .replace(&role_name, &PostParams::default(), &restored)
        .await
        .unwrap();
    wait_for(
        "a successful poll after the fault",
        Duration::from_secs(60),
        || async {
            match remediation_for(&client, &ns, "Kustomization/app").await {
                Some(r)
                    if r["status"]["steps"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["outcome"] == "Succeeded")) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(child.try_wait().unwrap().is_none());
    let _ = child.kill();
    let _ = child.wait();
    let _ = helm(env, &["uninstall", &ns, "-n", &ns]);
}
