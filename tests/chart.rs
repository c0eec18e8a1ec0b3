//! The Helm chart: lint, render, schema, install into the real API server, and the operator
//! running with nothing but the chart's ServiceAccount token doing real remediations.

mod support;

use std::{process::Command, time::Duration};

use kube::{Api, Client, api::PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/fluxmedic");

/// The name the chart gives a release's objects.
fn full(release: &str) -> String {
    chart_fullname(release)
}

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
        3,
        "cluster mode: ClusterRoles, plus the leader-election Role, the read-only Role on the Flux controllers and the uninstall hook's Role"
    );
    // fluxmedic's own identity writes no Secret (its seal key aside, a create in its own
    // namespace, which the admission policy holds it to); the unlock acts as the release's
    // identity only to update a Secret; no rollback, no delete, no general impersonation.
    assert!(!out.contains("\"update\", \"delete\"") && !out.contains("\"impersonate\"]"));
    assert!(
        out.contains("verbs: [\"impersonate-on:serviceaccount:update\"]"),
        "{out}"
    );
    assert!(!out.contains("impersonate-on:serviceaccount:delete"));
    assert!(
        out.contains("kind: ValidatingAdmissionPolicy\n")
            && out.contains("kind: ValidatingAdmissionPolicyBinding")
    );
    assert!(out.contains("serviceAccountName: fm-fluxmedic-release-holds"));
    assert!(out.contains("--leader-elect") && out.contains("--flux-namespace=flux-system"));
    // Opt-ins stay off by default; probes stay on.
    assert!(!out.contains("--events-addr") && !out.contains("--no-source-probes"));
    assert!(out.contains("--controller-timeout-seconds=120") && out.contains("--log-level=info"));
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
            "--set",
            "notifications.enabled=true",
            "--set",
            "sourceProbes=false",
            "--set",
            "fluxNamespace=",
            "--set",
            "deletePendingRelease.enabled=true",
            "--set",
            "helmController.defaultServiceAccount=tenant",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.matches("kind: Role\n").count(),
        7,
        "one Role per watched namespace and the release namespace, plus leader election (no Flux namespace), the hook's Role and its HelmRelease Role per watched namespace"
    );
    assert!(
        out.contains("--allow-delete-pending-release")
            && out.contains("--helm-default-service-account=tenant")
    );
    assert!(out.contains(
        "\"impersonate-on:serviceaccount:update\", \"impersonate-on:serviceaccount:delete\""
    ));
    assert!(out.contains("--flux-namespace=\n"));
    assert!(out.contains("--watch-namespaces=apps,data"));
    assert!(
        out.contains(
            "--events-addr=http://notification-controller.flux-system.svc.cluster.local./"
        )
    );
    assert!(out.contains("--no-source-probes"));
    for want in [
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "FluxmedicIncidentEscalated",
        "FluxmedicCircuitBreakerOpen",
        "kind: RemediationPolicy",
        "Retry, Rollback",
        "verbs: [\"impersonate\"]",
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
        ("logLevel=verbose", "logLevel"),
        ("nosuchvalue=1", "nosuchvalue"),
        ("notifications.address=ftp://x", "notifications/address"),
        ("controllerTimeoutSeconds=1", "controllerTimeoutSeconds"),
        ("fluxNamespace=Flux_System", "fluxNamespace"),
        (
            "helmController.serviceAccount=helm-controller",
            "helmController",
        ),
        ("rollback.clusterRole=cluster-admin", "clusterRole"),
        (
            "fullnameOverride=a-name-far-too-long-for-every-suffix-x",
            "fullnameOverride",
        ),
        ("serviceAccount.name=Not_A_Name", "serviceAccount"),
        ("podLabels.team=null", "podLabels"),
        ("networkPolicy.allowAll=true", "allowAll"),
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

/// The documents of a rendering, as JSON values.
fn documents(rendered: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(rendered)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|d| d.is_object())
        .collect()
}

/// What charts are expected to take, each proven in the rendering: pull secrets, priority,
/// pod metadata, a ServiceAccount of one's own, a PodDisruptionBudget, a NetworkPolicy,
/// topology spread, the labels Prometheus Operator selects by; every object labelled with its
/// chart, and named from the release.
#[test]
fn the_chart_takes_what_charts_are_expected_to_take() {
    let env = env();
    let sets = [
        "imagePullSecrets[0].name=regcred",
        "priorityClassName=system-cluster-critical",
        "podAnnotations.team=platform",
        "podLabels.tier=ops",
        "serviceAccount.create=false",
        "serviceAccount.name=ops-identity",
        "podDisruptionBudget.enabled=true",
        "replicas=2",
        "networkPolicy.enabled=true",
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=prometheus",
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=prometheus",
    ];
    let mut args = vec!["template", "shard-a", CHART, "-n", "flux-system"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let (ok, out) = helm(env, &args);
    assert!(ok, "{out}");
    let docs = documents(&out);
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let deploy = kind("Deployment").next().unwrap();
    let pod = &deploy["spec"]["template"];
    assert_eq!(deploy["metadata"]["name"], "shard-a-fluxmedic");
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["metadata"]["annotations"]["team"], "platform");
    assert_eq!(pod["metadata"]["labels"]["tier"], "ops");
    assert_eq!(pod["spec"]["serviceAccountName"], "ops-identity");
    assert_eq!(pod["spec"]["topologySpreadConstraints"][0]["maxSkew"], 1);
    // Not created, but bound and held by the admission policies under its own name.
    assert!(!kind("ServiceAccount").any(|sa| sa["metadata"]["name"] == "ops-identity"));
    for b in kind("ClusterRoleBinding").filter(|b| b["metadata"]["name"] == "shard-a-fluxmedic") {
        assert_eq!(b["subjects"][0]["name"], "ops-identity");
    }
    assert!(out.contains("system:serviceaccount:flux-system:ops-identity"));
    let pdb = kind("PodDisruptionBudget").next().unwrap();
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "shard-a"
    );
    let np = kind("NetworkPolicy").next().unwrap();
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "http-metrics");
    for k in ["ServiceMonitor", "PrometheusRule"] {
        assert_eq!(
            kind(k).next().unwrap()["metadata"]["labels"]["release"],
            "prometheus"
        );
    }
    // The uninstall hook pulls the same image the same way, as its own identity.
    let hook = kind("Job").next().unwrap();
    assert_eq!(
        hook["spec"]["template"]["spec"]["imagePullSecrets"][0]["name"],
        "regcred"
    );
    assert_eq!(
        hook["spec"]["template"]["spec"]["serviceAccountName"],
        "shard-a-fluxmedic-release-holds"
    );
    for d in &docs {
        let name = d["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("shard-a-fluxmedic") || name == "ops-identity",
            "{name}"
        );
        assert_eq!(
            d["metadata"]["labels"]["helm.sh/chart"], "fluxmedic-0.1.0",
            "{name}"
        );
    }
    // NOTES.txt says where it is and what to do first.
    let (ok, notes) = helm(
        env,
        &[
            "install",
            "shard-a",
            CHART,
            "-n",
            "flux-system",
            "--dry-run=client",
        ],
    );
    assert!(ok, "{notes}");
    assert!(
        notes.contains("installed as shard-a-fluxmedic in flux-system"),
        "{notes}"
    );
    assert!(notes.contains("fluxmedic approve"), "{notes}");
}

/// A parent chart carries fluxmedic as a subchart, with its `global` values.
#[test]
fn the_chart_works_as_a_subchart() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("platform");
    std::fs::create_dir_all(parent.join("charts")).unwrap();
    std::fs::write(
        parent.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n- name: fluxmedic\n  version: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        parent.join("values.yaml"),
        "global:\n  imageRegistry: mirror.example\nfluxmedic:\n  replicas: 2\n",
    )
    .unwrap();
    let status = Command::new("cp")
        .args(["-r", CHART, parent.join("charts").to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, out) = helm(
        env,
        &[
            "template",
            "ops",
            parent.to_str().unwrap(),
            "-n",
            "flux-system",
        ],
    );
    assert!(ok, "{out}");
    let docs = documents(&out);
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deploy["metadata"]["name"], "ops-fluxmedic");
    assert_eq!(deploy["spec"]["replicas"], 2);
}

/// Two releases, one per Flux shard, side by side in one namespace of the real API server:
/// both install, and no object of one is the other's.
#[tokio::test(flavor = "multi_thread")]
async fn two_shards_install_side_by_side_in_one_namespace() {
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, "shards").await;
    install_crds(&client).await;
    let mut owners: std::collections::BTreeMap<String, String> = Default::default();
    for (release, selector) in [
        ("shard-a", "sharding.fluxcd.io/key=shard-a"),
        ("shard-b", "sharding.fluxcd.io/key=shard-b"),
    ] {
        let sel = format!("watchLabelSelector={selector}");
        let flux_ns = format!("fluxNamespace={ns}");
        let args = [
            "install",
            release,
            CHART,
            "-n",
            &ns,
            "--skip-crds",
            "--set",
            &sel,
            "--set",
            &flux_ns,
        ];
        let (ok, out) = helm(env, &args);
        assert!(ok, "{release}: {out}");
        let (ok, manifest) = helm(env, &["get", "manifest", release, "-n", &ns]);
        assert!(ok, "{manifest}");
        for d in documents(&manifest) {
            let key = format!("{}/{}", d["kind"], d["metadata"]["name"]);
            assert!(
                d["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{release}-fluxmedic"))
            );
            if let Some(other) = owners.insert(key.clone(), release.into()) {
                panic!("{key} belongs to both {other} and {release}");
            }
        }
    }
    assert!(owners.len() > 20, "{owners:?}");
    for release in ["shard-a", "shard-b"] {
        let (ok, out) = helm(env, &["uninstall", release, "-n", &ns, "--no-hooks"]);
        assert!(ok, "{out}");
    }
}

/// `helm install` the chart as release `ns` into `ns` (namespace mode: watching only `ns`), and a
/// kubeconfig holding a TokenRequest token of its ServiceAccount and nothing else.
async fn install_chart(
    env: &Env,
    client: &kube::Client,
    ns: &str,
    namespaced: bool,
    extra: &[&str],
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
    // The test namespace stands in for flux-system (which need not exist here).
    let flux_ns = format!("fluxNamespace={ns}");
    let mut args = vec!["install", ns, CHART, "-n", ns, "--set", flux_ns.as_str()];
    if namespaced {
        args.extend(["--set", watch.as_str()]);
    }
    if present {
        args.push("--skip-crds");
    }
    args.extend(extra);
    let (ok, out) = helm(env, &args);
    assert!(ok, "{out}");
    assert!(
        crds.get_opt("remediationpolicies.fluxmedic.io")
            .await
            .unwrap()
            .is_some()
    );
    install_crds(client).await;
    // helm-controller beside it, as Flux installs it: the identity Helm actions borrow.
    helm_controller_as_flux_installs_it(client, ns, &["--watch-all-namespaces"]).await;
    service_account_kubeconfig(env, client, ns, &full(ns)).await
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
    let kc = install_chart(env, &client, &ns, namespaced, &[]).await;

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
    suspend_then_forge_pending(&client, &ns, "web", false).await;
    apply(
        &client,
        policy(
            &ns,
            "auto",
            json!({"rules": [{"case": "stale-lock", "mode": "Auto"}]}),
        ),
    )
    .await;

    let (child, log) = run_as(&kc, &ns, if namespaced { 191 } else { 190 }, &[]);
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
    drop(child);
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
    if namespaced {
        // `fluxmedic diagnose` on credentials scoped to one namespace: with -n it reads that
        // namespace; without, what it may not read is a warning, never an abort.
        let diagnose = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
                .arg("diagnose")
                .args(args)
                .env("KUBECONFIG", &kc)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (code, out, err) = diagnose(&["-n", &ns]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(!err.contains("not readable"), "{err}");
        assert!(
            out.contains("Flux objects") && !out.contains("All 0 "),
            "the namespace's objects are read:\n{out}"
        );
        let (code, out, err) = diagnose(&[]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            err.contains("HelmRelease: not readable with these credentials"),
            "{err}"
        );
    }
    let _ = helm(env, &["uninstall", &release, "-n", &ns, "--no-hooks"]);
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
    let kc = install_chart(env, &client, &ns, false, &[]).await;

    // Take `patch` on sources away from the ClusterRole.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role_name = full(&ns);
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

    let repo = ready_app(env, &client, &ns).await;
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
    let (mut child, _log) = run_as(&kc, &ns, 192, &[]);
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
    // Events are published from a queue, paced by the write budget, after the step's error is
    // counted: wait for it as for the metric.
    wait_for("the Forbidden Event", Duration::from_secs(15), || async {
        let evs = events_about(&client, &ns, "app").await;
        if evs.iter().any(|(r, _)| r == "Forbidden") {
            Ok(())
        } else {
            Err(format!("{evs:?}"))
        }
    })
    .await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
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
    assert!(child.0.try_wait().unwrap().is_none());
    drop(child);
    let _ = helm(env, &["uninstall", &ns, "-n", &ns, "--no-hooks"]);
}

/// Run `fluxmedic run` on a ServiceAccount kubeconfig, scoped to `ns`, logging to a file.
fn run_as(
    kc: &std::path::Path,
    ns: &str,
    port_offset: u16,
    extra: &[&str],
) -> (Killed, std::path::PathBuf) {
    let env = env();
    let port = env.var("FLUXMEDIC_PORT_BASE").parse::<u16>().unwrap() + port_offset;
    let log = std::env::temp_dir().join(format!("fluxmedic-{ns}.log"));
    // The test namespace stands in for the Flux namespace unless the test names one.
    let flux_ns: &[&str] = if extra.contains(&"--flux-namespace") {
        &[]
    } else {
        &["--flux-namespace", ns]
    };
    let child = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
        .args([
            "run",
            "--namespace",
            ns,
            "--watch-namespaces",
            ns,
            "--tick-seconds",
            "1",
        ])
        .args(flux_ns)
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .env("KUBECONFIG", kc)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (Killed(child), log)
}

/// An OCIRepository, a HelmRepository and a Bucket whose endpoints refuse connections.
async fn unreachable_sources(client: &Client, ns: &str) -> Vec<(&'static str, &'static str)> {
    let sources = [
        (
            "OCIRepository",
            "oci",
            json!({"url": "oci://127.0.0.1:1/apps/web", "insecure": true, "interval": "1h", "ref": {"tag": "latest"}}),
        ),
        (
            "HelmRepository",
            "charts-gone",
            json!({"url": "http://127.0.0.1:1/charts/", "interval": "1h", "timeout": "5s"}),
        ),
        (
            "Bucket",
            "files",
            json!({"bucketName": "files", "endpoint": "127.0.0.1:1", "insecure": true, "provider": "generic", "interval": "1h", "timeout": "5s"}),
        ),
    ];
    for (kind, name, spec) in &sources {
        apply(
            client,
            json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        )
        .await;
    }
    sources.iter().map(|(k, n, _)| (*k, *n)).collect()
}

/// (apiGroup, resource[/subresource], verb) granted by a list of RBAC rules.
fn granted(
    rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
) -> std::collections::BTreeSet<(String, String, String)> {
    let mut out = std::collections::BTreeSet::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// Rights the chart grants that this environment cannot exercise, with the reason (none now:
/// keep the list, so a right that truly cannot be exercised here is named, not dropped).
const NOT_EXERCISED_HERE: &[(&str, &str, &str, &str)] = &[];

/// The same for the uninstall hook's ServiceAccount.
const HOOK_NOT_EXERCISED_HERE: &[(&str, &str, &str, &str)] = &[(
    "helm.toolkit.fluxcd.io",
    "helmreleases",
    "patch",
    "only with a hold to release: node::the_chart_runs_as_users_run_it runs the hook as a pod and releases one",
)];

/// A kubeconfig holding a TokenRequest token of ServiceAccount `ns/name`, and nothing else.
async fn service_account_kubeconfig(
    env: &Env,
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> std::path::PathBuf {
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    let tr: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let tr = sas
        .create_token_request(name, &PostParams::default(), &tr)
        .await
        .expect("token request");
    let token = tr.status.unwrap().token.expect("a token");
    token_kubeconfig(env, &format!("{ns}-{name}"), &token)
}

/// (group, resource, verb) rights `user` used according to the audit log, and the requests
/// refused. A request made as another identity (impersonation) used the rights to act as a
/// ServiceAccount and to do that verb on that resource as it (constrained impersonation).
/// (API group, resource, verb).
type Use = (String, String, String);

fn audited_rights(env: &Env, user: &str) -> (std::collections::BTreeSet<Use>, Vec<Use>) {
    let audit = std::fs::read_to_string(env.var("FLUXMEDIC_AUDIT_LOG")).unwrap();
    let mut used = std::collections::BTreeSet::new();
    let mut refused = vec![];
    for e in audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if e["user"]["username"] != user {
            continue;
        }
        let o = &e["objectRef"];
        let mut res = o["resource"].as_str().unwrap_or_default().to_string();
        if let Some(sub) = o["subresource"].as_str() {
            res = format!("{res}/{sub}");
        }
        let group = o["apiGroup"].as_str().unwrap_or_default().to_string();
        let verb = e["verb"].as_str().unwrap_or_default().to_string();
        let mut keys = vec![];
        if e["impersonatedUser"]["username"]
            .as_str()
            .is_some_and(|u| u.starts_with("system:serviceaccount:"))
        {
            keys.push((
                "authentication.k8s.io".to_string(),
                "serviceaccounts".to_string(),
                "impersonate:serviceaccount".to_string(),
            ));
            keys.push((group, res, format!("impersonate-on:serviceaccount:{verb}")));
        } else {
            keys.push((group, res, verb));
        }
        if e["responseStatus"]["code"] == 403 {
            refused.extend(keys.iter().cloned());
        }
        used.extend(keys);
    }
    (used, refused)
}

async fn cluster_role_rights(
    client: &kube::Client,
    name: &str,
) -> std::collections::BTreeSet<(String, String, String)> {
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    granted(&roles.get(name).await.unwrap().rules.unwrap_or_default())
}

async fn role_rights(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> std::collections::BTreeSet<(String, String, String)> {
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(client.clone(), ns);
    granted(&roles.get(name).await.unwrap().rules.unwrap_or_default())
}

fn assert_all_used(
    rights: &std::collections::BTreeSet<(String, String, String)>,
    used: &std::collections::BTreeSet<(String, String, String)>,
    not_here: &[(&str, &str, &str, &str)],
) {
    let unused: Vec<_> = rights
        .iter()
        .filter(|k| !used.contains(*k))
        .filter(|(g, r, v)| {
            !not_here
                .iter()
                .any(|(g2, r2, v2, _)| g == g2 && r == r2 && v == v2)
        })
        .collect();
    assert!(
        unused.is_empty(),
        "granted but never used (remove from the chart, or exercise here): {unused:?}\nused: {used:?}"
    );
}

/// Least privilege, proven rather than claimed: the operator runs on the chart's ServiceAccount
/// token through every remediation the chart grants rights for (unlock, delete a pending
/// release, retry with the chart source, poll a broken commit's source, reconcile a dependent,
/// Events and their aggregation, records and their garbage collection, leader election), and
/// the API server's audit log of that identity shows that no request was refused and that every
/// (group, resource, verb) the chart's roles grant was used. Removing any rule therefore makes
/// one of these requests Forbidden and fails this test, and a right nothing uses fails it too.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_grants_exactly_the_rights_the_remediations_use() {
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, "rbac").await;
    let kc = install_chart(
        env,
        &client,
        &ns,
        false,
        &["--set", "deletePendingRelease.enabled=true"],
    )
    .await;
    let user = format!("system:serviceaccount:{ns}:{}", full(&ns));

    // Helm: two suspended releases with a stale pending revision (one to unlock, one whose
    // pending Secret is deleted), one whose upgrade timed out with retries exhausted.
    chart_repo(env, &client, &ns).await;
    for name in ["lock", "gone", "slow"] {
        helm_release(&client, &ns, name, "0.1.0", json!({"suffix": name}), "10s").await;
    }
    for name in ["lock", "gone", "slow"] {
        wait_ready(&client, &ns, "HelmRelease", name, Duration::from_secs(90)).await;
    }
    for name in ["lock", "gone"] {
        suspend_then_forge_pending(&client, &ns, name, false).await;
    }
    helm_release(
        &client,
        &ns,
        "slow",
        "0.2.0",
        json!({"suffix": "slow"}),
        "10s",
    )
    .await;
    wait_stalled(&client, &ns, "slow").await;
    mark_deployment_available(&client, &ns).await;

    // Git: a broken root and a dependent blocked by it.
    let repo = Repo::new(env, &ns, false);
    repo.commit(
        &[
            ("base/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
            ("base/cm.yaml", Some(&cm("base", "v1"))),
            ("mid/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
            ("mid/cm.yaml", Some(&cm("mid", "v1"))),
        ],
        "initial",
    );
    git_repository(&client, &ns, "repo", &repo.url, None).await;
    kustomization(&client, &ns, "a", "./base", &[]).await;
    kustomization(&client, &ns, "b", "./mid", &["a"]).await;
    wait_ready(&client, &ns, "Kustomization", "a", MIN).await;
    wait_ready(&client, &ns, "Kustomization", "b", MIN).await;
    break_root(&client, &ns, &repo, &["b"]).await;
    // Sources of every other kind that cannot be reached: each is polled.
    let unreachable = unreachable_sources(&client, &ns).await;

    let limits = json!({"pollInterval": "1s", "maxPollInterval": "2s", "cooldown": "3s"});
    apply(
        &client,
        policy(
            &ns,
            "auto",
            json!({"rules": [
        {"case": "stale-lock", "mode": "Auto"},
        {"case": "failed-release", "mode": "Auto", "actions": ["Retry"], "withSource": true},
        {"case": "invalid-manifests", "mode": "Auto"},
        {"case": "dependency-cascade", "mode": "Auto"},
        {"case": "git-unreachable", "mode": "Auto"}], "limits": limits}),
        ),
    )
    .await;
    apply(
        &client,
        policy(
            &ns,
            "delete",
            json!({"priority": 10, "targets": {"names": ["gone"]},
        "rules": [{"case": "stale-lock", "mode": "Auto", "actions": ["DeletePendingRelease"]}]}),
        ),
    )
    .await;

    let (child, log) = run_as(
        &kc,
        &ns,
        193,
        &[
            "--leader-elect",
            "--history-limit",
            "0",
            "--allow-delete-pending-release",
        ],
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "unlock, delete, retry and polls",
        Duration::from_secs(120),
        || async {
            let lock = secrets
                .get("sh.helm.release.v1.lock.v2")
                .await
                .map_err(|e| e.to_string())?;
            let unlocked = lock
                .metadata
                .labels
                .unwrap_or_default()
                .get("status")
                .map(String::as_str)
                == Some("failed");
            let deleted = secrets
                .get_opt("sh.helm.release.v1.gone.v2")
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            let slow = get(&client, &ns, "HelmRelease", "slow")
                .await
                .ok_or("slow")?;
            let retried = is_ready(&slow) && slow["status"]["lastAttemptedRevision"] == "0.2.0";
            // At least two polls of the broken root's source: the second Event is aggregated.
            let polled = events_about(&client, &ns, "a")
                .await
                .iter()
                .filter(|(r, _)| r == "ActionSucceeded")
                .count()
                >= 1
                && remediation_for(&client, &ns, "Kustomization/a")
                    .await
                    .is_some_and(|r| {
                        r["status"]["steps"].as_array().is_some_and(|s| {
                            s.iter().filter(|s| s["outcome"] == "Succeeded").count() >= 2
                        })
                    });
            let mut sources_polled = true;
            for (kind, name) in &unreachable {
                sources_polled &= remediation_for(&client, &ns, &format!("{kind}/{name}"))
                    .await
                    .is_some_and(|r| has_step(&r, "reconcile-source", "Succeeded"));
            }
            if unlocked && deleted && retried && polled && sources_polled {
                Ok(())
            } else {
                Err(format!(
                    "unlocked {unlocked} deleted {deleted} retried {retried} polled {polled} sources polled {sources_polled}"
                ))
            }
        },
    )
    .await;
    repo.commit(&[("base/cm.yaml", Some(&cm("base", "v2")))], "fix the root");
    for (kind, name) in &unreachable {
        flux_api(&client, &ns, kind)
            .delete(name, &Default::default())
            .await
            .unwrap();
    }
    wait_ready(&client, &ns, "Kustomization", "b", Duration::from_secs(90)).await;
    // Every incident closed and its record garbage-collected (--history-limit 0).
    wait_for(
        "every Remediation closed and collected",
        Duration::from_secs(90),
        || async {
            let left = remediations(&client, &ns).await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{:?}",
                    left.iter()
                        .map(|r| (&r["spec"]["targetName"], &r["status"]["phase"]))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;
    drop(child);
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the chart's RBAC was not enough:\n{logs}"
    );
    // What the pre-delete hook runs, on its own ServiceAccount's token (no pod runs here;
    // tests/node.rs runs the hook itself): it stops the operator's Deployment and finds
    // nothing held.
    let holds = format!("{}-release-holds", full(&ns));
    let hook_kc = service_account_kubeconfig(env, &client, &ns, &holds).await;
    let out = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
        .args([
            "release-holds",
            "--namespace",
            &ns,
            "--stop-deployment",
            &full(&ns),
            "--stop-timeout-seconds",
            "30",
        ])
        .env("KUBECONFIG", &hook_kc)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "release-holds as the hook's ServiceAccount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    assert_eq!(
        deployments
            .get(&full(&ns))
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(0),
        "the operator's Deployment is scaled to 0 before holds are released"
    );

    // The audit log of each ServiceAccount: nothing refused, every granted right used.
    let (used, refused) = audited_rights(env, &user);
    assert!(refused.is_empty(), "requests refused: {refused:?}");
    let mut rights = cluster_role_rights(&client, &full(&ns)).await;
    for role in [
        format!("{}-leader-election", full(&ns)),
        format!("{}-flux-controllers", full(&ns)),
    ] {
        rights.extend(role_rights(&client, &ns, &role).await);
    }
    assert_all_used(&rights, &used, NOT_EXERCISED_HERE);
    let hook = format!("system:serviceaccount:{ns}:{holds}");
    let (used, refused) = audited_rights(env, &hook);
    assert!(refused.is_empty(), "hook requests refused: {refused:?}");
    let mut rights = cluster_role_rights(&client, &holds).await;
    rights.extend(role_rights(&client, &ns, &holds).await);
    assert_all_used(&rights, &used, HOOK_NOT_EXERCISED_HERE);
    let _ = helm(env, &["uninstall", &ns, "-n", &ns, "--no-hooks"]);
}

/// Rollback runs `helm rollback` on the ServiceAccount token, acting as the identity
/// helm-controller uses for the release (its own ServiceAccount here, read from its
/// Deployment): with the chart's opt-in `rollback.enabled` (the impersonate verb, no
/// cluster-admin binding) the whole rollback path works.
#[tokio::test(flavor = "multi_thread")]
async fn the_chart_service_account_rolls_back_with_the_opt_in_role() {
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, "chartrb").await;
    let kc = install_chart(
        env,
        &client,
        &ns,
        false,
        &["--set", "rollback.enabled=true"],
    )
    .await;
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
    apply(&client, policy(&ns, "auto", json!({"rules": [{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}]}))).await;
    let (child, log) = run_as(&kc, &ns, 195, &["--helm", env.helm()]);
    // Values the chart cannot render: not retryable, so suspend + rollback.
    break_and_wait_rolled_back(&client, &ns, Duration::from_secs(120)).await;
    // The fix lands: resumed and recovered, still on the ServiceAccount token.
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
    wait_remediation(&client, &ns, "HelmRelease/web", "Succeeded", MIN, |r| {
        phase(r) == "Succeeded"
    })
    .await;
    drop(child);
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!logs.to_lowercase().contains("forbidden"), "{logs}");
    let _ = helm(env, &["uninstall", &ns, "-n", &ns, "--no-hooks"]);
}

/// The series the operator really exports for `metrics` (rendered by its own telemetry code):
/// every sample line's `name{labels}`, keyed by metric name.
fn exported_series(
    metrics: &fluxmedic::telemetry::Metrics,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in metrics.render().lines().filter(|l| !l.starts_with('#')) {
        let series = line
            .rsplit_once(' ')
            .map(|(s, _)| s)
            .unwrap_or(line)
            .to_string();
        let name = series.split('{').next().unwrap().to_string();
        out.entry(name).or_default().push(series);
    }
    out
}

/// Series and their values over time, as promtool's input_series.
type Series<'a> = Vec<(String, &'a str)>;
/// An alert, the series that make it fire, the same series at rest, when to evaluate, and
/// the labels it fires with.
type AlertCase<'a> = (&'a str, Series<'a>, Series<'a>, &'a str, Value);

/// Every alert of the chart's PrometheusRule, unit-tested with promtool: it fires on the
/// series the operator exports (names and labels rendered by its own metrics code, so a
/// renamed metric or label breaks this test) and stays quiet on the same series at rest.
#[test]
fn the_chart_alerts_fire_on_what_the_operator_exports_and_stay_quiet_otherwise() {
    let env = env();
    let (ok, rendered) = helm(
        env,
        &[
            "template",
            "fm",
            CHART,
            "-n",
            "flux-system",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--show-only",
            "templates/monitoring.yaml",
        ],
    );
    assert!(ok, "{rendered}");
    let rule: Value = serde_yaml_ng::from_str(&rendered).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        serde_yaml_ng::to_string(&json!({"groups": rule["spec"]["groups"]})).unwrap(),
    )
    .unwrap();
    let alerts: Vec<String> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect();

    // One sample of every family the alerts use, as the operator renders it.
    let m = fluxmedic::telemetry::Metrics::default();
    m.escalations
        .get_or_create(&fluxmedic::telemetry::CaseNamespaceLabels {
            case: "git-auth".into(),
            namespace: "team-a".into(),
        })
        .inc();
    m.action("retry", "failed");
    let team_a = fluxmedic::telemetry::NamespaceLabels {
        namespace: "team-a".into(),
    };
    m.records_edited.get_or_create(&team_a).inc();
    m.flux_api_missing
        .get_or_create(&fluxmedic::telemetry::KindLabels {
            kind: "HelmRelease".into(),
        })
        .set(1);
    m.circuit_breaker_open.get_or_create(&team_a).set(1);
    m.leader.set(1);
    let series = exported_series(&m);
    let one = |name: &str| -> String {
        series
            .get(name)
            .and_then(|s| s.first())
            .cloned()
            .unwrap_or_else(|| panic!("the operator exports no {name}: {series:?}"))
    };
    let escalations = one("fluxmedic_escalations_total");
    let failed = one("fluxmedic_actions_total");
    let edited = one("fluxmedic_records_edited_total");
    let missing = one("fluxmedic_flux_api_missing");
    let breaker = one("fluxmedic_circuit_breaker_open");
    let leader = one("fluxmedic_leader");
    // As Prometheus stores it: the target's namespace added (honorLabels keeps the metric's own).
    let build = one("fluxmedic_build_info");
    assert!(build.contains("version=\""), "{build}");
    let scraped_in = |ns: &str| build.replacen('{', &format!("{{namespace=\"{ns}\","), 1);
    // The process metrics every Prometheus client exports, unprefixed.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        one(name);
    }

    // (alert, series that make it fire, the same series at rest, eval time, firing labels)
    let cases: Vec<AlertCase> = vec![
        (
            "FluxmedicIncidentEscalated",
            vec![(escalations.clone(), "0 0 1 1 1")],
            vec![(escalations, "1x20")],
            "5m",
            json!({"case": "git-auth", "namespace": "team-a", "severity": "warning"}),
        ),
        (
            "FluxmedicRemediationFailing",
            vec![(failed.clone(), "0+1x10")],
            vec![(failed, "0 0 1 1 1 1 1 1 1 1")],
            "10m",
            json!({"action": "retry", "outcome": "failed", "severity": "warning"}),
        ),
        (
            "FluxmedicCircuitBreakerOpen",
            vec![(breaker.clone(), "1x20")],
            vec![(breaker, "0x20")],
            "10m",
            json!({"namespace": "team-a", "severity": "warning"}),
        ),
        (
            "FluxmedicRecordEdited",
            vec![(edited.clone(), "0 0 1 1 1")],
            vec![(edited, "3x20")],
            "5m",
            json!({"namespace": "team-a", "severity": "warning"}),
        ),
        (
            "FluxmedicFluxApiMissing",
            vec![(missing.clone(), "1x30")],
            vec![(missing, "0x30")],
            "20m",
            json!({"kind": "HelmRelease", "severity": "info"}),
        ),
        (
            // Only another release's fluxmedic left: this one is gone.
            "FluxmedicAbsent",
            vec![(scraped_in("other-shard"), "1x20")],
            vec![(scraped_in("flux-system"), "1x20")],
            "15m",
            json!({"namespace": "flux-system", "severity": "critical"}),
        ),
        (
            "FluxmedicNoLeader",
            vec![(leader.clone(), "0x20")],
            vec![(leader, "1x20")],
            "10m",
            json!({"severity": "critical"}),
        ),
    ];
    let tested: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.0).collect();
    for a in &alerts {
        assert!(
            tested.contains(a.as_str()),
            "alert {a} has no promtool test"
        );
    }
    // Every alert links its runbook, kept in the repository.
    for r in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let url = r["annotations"]["runbook_url"].as_str().unwrap_or_default();
        let alert = r["alert"].as_str().unwrap();
        assert!(
            url.starts_with("https://") && url.ends_with(&format!("/docs/runbooks/{alert}.md")),
            "{alert}: runbook_url {url:?}"
        );
        let file = format!("{}/docs/runbooks/{alert}.md", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            text.starts_with(&format!("# {alert}\n")) && text.contains("**Act"),
            "{file}"
        );
    }
    // The annotations each alert renders for its labels (promtool compares them too).
    let annotations = |alert: &str, labels: &Value| -> Value {
        let rule = rule["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == alert)
            .unwrap();
        let mut out = serde_json::Map::new();
        for (k, v) in rule["annotations"].as_object().unwrap() {
            let mut text = v.as_str().unwrap().to_string();
            for (name, value) in labels.as_object().unwrap() {
                text = text.replace(
                    &format!("{{{{ $labels.{name} }}}}"),
                    value.as_str().unwrap(),
                );
            }
            out.insert(k.clone(), json!(text));
        }
        Value::Object(out)
    };
    let mut tests = vec![];
    for (alert, firing, quiet, at, labels) in &cases {
        let input = |s: &Vec<(String, &str)>| -> Vec<Value> {
            s.iter()
                .map(|(series, values)| json!({"series": series, "values": values}))
                .collect()
        };
        tests.push(json!({"interval": "1m", "input_series": input(firing),
            "alert_rule_test": [{"eval_time": at, "alertname": alert,
                "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations(alert, labels)}]}]}));
        tests.push(json!({"interval": "1m", "input_series": input(quiet),
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}]}));
    }
    let test_file = dir.path().join("alerts.test.yaml");
    std::fs::write(
        &test_file,
        serde_yaml_ng::to_string(&json!({"rule_files": [rules], "tests": tests})).unwrap(),
    )
    .unwrap();
    for args in [vec!["check", "rules"], vec!["test", "rules"]] {
        let file = if args[0] == "check" {
            &rules
        } else {
            &test_file
        };
        let out = env.tool("promtool").args(&args).arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The names the operator exports: every family its metrics code registers (from the `# TYPE`
/// lines, so a family with no sample yet counts), with the suffixes its type gives samples.
fn exported_names(metrics: &fluxmedic::telemetry::Metrics) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in metrics.render().lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    out
}

/// The operator's metrics with one sample in every family (a family without one renders
/// nothing, not even its name).
fn every_family_sampled() -> fluxmedic::telemetry::Metrics {
    use fluxmedic::telemetry::*;
    let m = Metrics::default();
    let cn = CaseNamespaceLabels {
        case: "git-auth".into(),
        namespace: "team-a".into(),
    };
    let ns = NamespaceLabels {
        namespace: "team-a".into(),
    };
    m.incidents.get_or_create(&cn).inc();
    m.escalations.get_or_create(&cn).inc();
    m.open_incidents.get_or_create(&cn).set(1);
    m.action("retry", "succeeded");
    m.error("Conflict");
    m.blocked
        .get_or_create(&ReasonLabels {
            reason: "cooldown".into(),
        })
        .inc();
    m.time_to_recover
        .get_or_create(&CaseLabels {
            case: "git-auth".into(),
        })
        .observe(3.0);
    m.circuit_breaker_open.get_or_create(&ns).set(1);
    m.records_edited.get_or_create(&ns).inc();
    m.flux_api_missing
        .get_or_create(&KindLabels {
            kind: "Bucket".into(),
        })
        .set(1);
    m.notifications
        .get_or_create(&OutcomeLabels {
            outcome: "sent".into(),
        })
        .inc();
    m.flux_controller_down
        .get_or_create(&ControllerLabels {
            controller: "source-controller".into(),
        })
        .set(0);
    m
}

/// The chart's Grafana dashboard: a ConfigMap the kube-prometheus-stack sidecar loads, whose
/// every query parses (promtool) and names only metrics the operator exports, with the panels
/// an on-call person looks for.
#[test]
fn the_dashboard_queries_parse_and_name_only_what_the_operator_exports() {
    let env = env();
    let args = [
        "template",
        "fm",
        CHART,
        "-n",
        "flux-system",
        "--set",
        "dashboard.enabled=true",
    ];
    let (ok, out) = helm(env, &args);
    assert!(ok, "{out}");
    let docs = documents(&out);
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "fm-fluxmedic-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dash: Value = serde_json::from_str(cm["data"]["fluxmedic.json"].as_str().unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Open incidents by case",
        "Open incidents by namespace",
        "Time to recovery",
        "Actions by outcome",
        "blocked reasons",
        "Circuit breaker",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel for {want}: {titles:?}"
        );
    }
    let mut exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            let inner = q
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap();
            exprs.push(inner.to_string());
        }
    }
    assert!(exprs.len() >= 17, "{exprs:?}");
    // Grafana's variables, as Grafana substitutes them.
    let promql: Vec<String> = exprs
        .iter()
        .map(|e| {
            e.replace("$__rate_interval", "5m")
                .replace("$namespace", ".*")
        })
        .collect();
    let exported = exported_names(&every_family_sampled());
    for e in &promql {
        let names = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|t| t.starts_with("fluxmedic_") || t.starts_with("process_"));
        for n in names {
            assert!(
                exported.contains(n),
                "{n} in {e:?} is not exported: {exported:?}"
            );
        }
    }
    let rules: Vec<Value> = promql
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"record": format!("dashboard:panel_{i}"), "expr": e}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    let text =
        serde_yaml_ng::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]}));
    std::fs::write(&file, text.unwrap()).unwrap();
    let out = env
        .tool("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Told to read a Flux namespace its ServiceAccount may not read (a wrong `fluxNamespace`, or
/// RBAC trimmed by hand): fluxmedic says so in its log and `/readyz`, becomes ready anyway and
/// goes on with the reconcile-request check alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_flux_namespace_it_may_not_read_is_reported_and_the_rest_works() {
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, "chartfluxns").await;
    let kc = install_chart(env, &client, &ns, true, &[]).await;
    let port = env.var("FLUXMEDIC_PORT_BASE").parse::<u16>().unwrap() + 196;
    let (child, log) = run_as(&kc, &ns, 196, &["--flux-namespace", "kube-system"]);
    let body = wait_for(
        "ready, saying what it cannot see",
        Duration::from_secs(60),
        || async {
            match reqwest_get(&format!("http://127.0.0.1:{port}/readyz")).await {
                Some(b) if b.starts_with("ok") => Ok(b),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        body.contains("not watched: Flux controller pods in kube-system: listing Deployments"),
        "{body}"
    );
    drop(child);
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logs.contains("cannot watch the Flux controllers' pods"),
        "{logs}"
    );
}

/// A client on `kubeconfig`, acting as ServiceAccount `as_sa` (`namespace:name`) when given.
async fn client_from(kubeconfig: &std::path::Path, as_sa: Option<&str>) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.auth_info.impersonate = as_sa.map(|sa| format!("system:serviceaccount:{sa}"));
    kube::Client::try_from(cfg).unwrap()
}

fn refused(res: Result<impl std::fmt::Debug, kube::Error>) -> String {
    match res {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message.clone(),
        other => panic!("expected a refusal (403), got {other:?}"),
    }
}

/// The chart's scope, on the real API server. fluxmedic's own identity writes no Secret but
/// its seal key: the chart's ValidatingAdmissionPolicy refuses any other, even after someone
/// binds it a role that grants Secret writes. Its unlock may act as the release's identity
/// (helm-controller's, here) only to update a Secret: as that identity it may not create
/// anything, nor delete a Secret unless `deletePendingRelease.enabled`.
#[tokio::test(flavor = "multi_thread")]
async fn fluxmedic_writes_no_secret_itself_and_borrows_an_identity_only_to_update_secrets() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, "vap").await;
    let kc = install_chart(env, &client, &ns, false, &[]).await;
    // More than the chart grants, bound by mistake: Secret writes in this namespace.
    apply(&client, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "too-much", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update", "delete"]}]})).await;
    apply(
        &client,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "too-much", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "too-much"},
        "subjects": [{"kind": "ServiceAccount", "name": full(&ns), "namespace": ns}]}),
    )
    .await;
    let secret = |name: &str, type_: &str, labels: Value| -> Secret {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
            "type": type_, "stringData": {"release": "x"}}),
        )
        .unwrap()
    };
    let release = secret(
        "sh.helm.release.v1.web.v1",
        "helm.sh/release.v1",
        json!({"owner": "helm", "name": "web", "status": "pending-upgrade", "version": "1"}),
    );
    let admin: Api<Secret> = Api::namespaced(client.clone(), &ns);
    admin
        .create(&PostParams::default(), &release)
        .await
        .unwrap();
    let own: Api<Secret> = Api::namespaced(client_from(&kc, None).await, &ns);
    // Any Secret of its own choosing, and Helm storage written directly: refused (once the
    // API server has loaded the policy, a second or so after the install).
    let why = wait_for(
        "the admission policy in force",
        Duration::from_secs(20),
        || async {
            match own
                .create(
                    &PostParams::default(),
                    &secret("other", "Opaque", json!({})),
                )
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 403 => Ok(s.message.clone()),
                Ok(_) => {
                    admin.delete("other", &Default::default()).await.unwrap();
                    Err("created: the policy is not in force yet".to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert!(
        why.contains("writes no Secret but its own seal key"),
        "{why}"
    );
    let mut changed = admin
        .get(&release.metadata.name.clone().unwrap())
        .await
        .unwrap();
    changed
        .metadata
        .labels
        .get_or_insert_default()
        .insert("status".into(), "failed".into());
    refused(
        own.replace(
            "sh.helm.release.v1.web.v1",
            &PostParams::default(),
            &changed,
        )
        .await,
    );
    refused(
        own.delete("sh.helm.release.v1.web.v1", &Default::default())
            .await,
    );
    // Its seal key, in its own namespace: allowed.
    own.create(
        &PostParams::default(),
        &secret("fluxmedic-seal-key", "Opaque", json!({})),
    )
    .await
    .unwrap();
    // Its ledger ConfigMaps, and no other ConfigMap of the namespace (the release namespace
    // may be flux-system): bound a role that lets it write ConfigMaps, it still may not.
    apply(&client, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "too-much-cm", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "update", "delete"]}]})).await;
    apply(
        &client,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "too-much-cm", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "too-much-cm"},
        "subjects": [{"kind": "ServiceAccount", "name": full(&ns), "namespace": ns}]}),
    )
    .await;
    let own_cms: Api<ConfigMap> = Api::namespaced(client_from(&kc, None).await, &ns);
    let cm_named = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}})).unwrap()
    };
    let why = wait_for(
        "the ConfigMap admission policy in force",
        Duration::from_secs(20),
        || async {
            match own_cms
                .create(&PostParams::default(), &cm_named("flux-settings"))
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 403 => Ok(s.message.clone()),
                Ok(_) => {
                    let admin: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
                    admin
                        .delete("flux-settings", &Default::default())
                        .await
                        .unwrap();
                    Err("created: the policy is not in force yet".to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert!(why.contains("writes no ConfigMap but its ledger"), "{why}");
    own_cms
        .create(&PostParams::default(), &cm_named("fluxmedic-ledger-0"))
        .await
        .unwrap();
    refused(
        own_cms
            .delete("fluxmedic-ledger-0", &Default::default())
            .await,
    );

    // As helm-controller's ServiceAccount (cluster-admin): a Secret update only.
    let borrowed = client_from(&kc, Some(&format!("{ns}:helm-controller"))).await;
    let as_hc: Api<Secret> = Api::namespaced(borrowed.clone(), &ns);
    as_hc
        .replace(
            "sh.helm.release.v1.web.v1",
            &PostParams::default(),
            &changed,
        )
        .await
        .expect("an update as the release's identity");
    refused(
        as_hc
            .delete("sh.helm.release.v1.web.v1", &Default::default())
            .await,
    );
    refused(
        as_hc
            .create(&PostParams::default(), &secret("made", "Opaque", json!({})))
            .await,
    );
    let cms: Api<ConfigMap> = Api::namespaced(borrowed.clone(), &ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "made", "namespace": ns}})).unwrap();
    refused(cms.create(&PostParams::default(), &cm).await);
    // Nor may it act as any identity for a rollback (that is rollback.enabled's).
    let kube_system: Api<Secret> = Api::namespaced(
        client_from(&kc, Some("kube-system:default")).await,
        "kube-system",
    );
    refused(kube_system.list(&Default::default()).await);
    let _ = helm(env, &["uninstall", &ns, "-n", &ns, "--no-hooks"]);
}

/// (identity, scope, API group, resource, resource name, verb): one right.
type Right = (String, String, String, String, String, String);

/// The rights docs/rbac.md lists, with the condition under which each is granted (its "Why"
/// starts with "only with `<value>`").
fn documented_rights() -> Vec<(Right, Option<String>)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/rbac.md")).unwrap();
    let mut out = vec![];
    for line in doc.lines().filter(|l| l.starts_with("| fluxmedic")) {
        let cols: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let (who, scope, group, resources, verbs, why) =
            (cols[0], cols[1], cols[2], cols[3], cols[4], cols[5]);
        let group = if group == "core" { "" } else { group };
        let condition = why
            .strip_prefix("only with `")
            .and_then(|r| r.split('`').next())
            .map(String::from);
        for res in resources.split(", ") {
            let (res, name) = match res.split_once(" (") {
                Some((r, n)) => (r, n.trim_end_matches(')')),
                None => (res, ""),
            };
            for verb in verbs.split(", ") {
                out.push((
                    (
                        who.into(),
                        scope.into(),
                        group.into(),
                        res.into(),
                        name.into(),
                        verb.into(),
                    ),
                    condition.clone(),
                ));
            }
        }
    }
    out
}

/// The rights a rendering of the chart grants, per identity and scope.
fn rendered_rights(rendered: &str) -> std::collections::BTreeSet<Right> {
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(rendered)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|d| d.is_object())
        .collect();
    let mut out = std::collections::BTreeSet::new();
    for role in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        let name = role["metadata"]["name"].as_str().unwrap();
        let scope = match (role["kind"].as_str().unwrap(), name) {
            ("ClusterRole", _) => "cluster",
            (_, n) if n.ends_with("-flux-controllers") => "Flux namespace",
            _ => "release namespace",
        };
        let binding_kind = if role["kind"] == "ClusterRole" {
            "ClusterRoleBinding"
        } else {
            "RoleBinding"
        };
        let who: Vec<String> = docs
            .iter()
            .filter(|b| b["kind"] == binding_kind && b["roleRef"]["name"] == name)
            .flat_map(|b| b["subjects"].as_array().unwrap().iter())
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        for rule in role["rules"].as_array().unwrap() {
            let names: Vec<String> = rule["resourceNames"]
                .as_array()
                .map(|a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect())
                .unwrap_or_else(|| vec![String::new()]);
            for w in &who {
                for g in rule["apiGroups"].as_array().unwrap() {
                    for r in rule["resources"].as_array().unwrap() {
                        for n in &names {
                            for v in rule["verbs"].as_array().unwrap() {
                                out.insert((
                                    w.clone(),
                                    scope.into(),
                                    g.as_str().unwrap().into(),
                                    r.as_str().unwrap().into(),
                                    n.clone(),
                                    v.as_str().unwrap().into(),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// docs/rbac.md is exactly what the chart grants: every documented right granted, none
/// granted that is not documented, and the opt-in ones only with their opt-in.
#[test]
fn the_rbac_table_is_what_the_chart_grants() {
    let env = env();
    let documented = documented_rights();
    assert!(documented.len() > 20, "the table was read: {documented:?}");
    // The default install's names (docs/rbac.md names the release `fluxmedic`).
    let render = |sets: &[&str]| {
        let mut args = vec!["template", "fluxmedic", CHART, "-n", "flux-system"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let (ok, out) = helm(env, &args);
        assert!(ok, "{out}");
        rendered_rights(&out)
    };
    let all = render(&["rollback.enabled=true", "deletePendingRelease.enabled=true"]);
    let doc_all: std::collections::BTreeSet<Right> =
        documented.iter().map(|(r, _)| r.clone()).collect();
    let missing: Vec<_> = doc_all.difference(&all).collect();
    let undocumented: Vec<_> = all.difference(&doc_all).collect();
    assert!(
        missing.is_empty(),
        "documented but not granted: {missing:?}"
    );
    assert!(
        undocumented.is_empty(),
        "granted but not documented: {undocumented:?}"
    );
    let default = render(&[]);
    let doc_default: std::collections::BTreeSet<Right> = documented
        .iter()
        .filter(|(_, c)| c.is_none())
        .map(|(r, _)| r.clone())
        .collect();
    assert_eq!(
        default, doc_default,
        "the default grants exactly the unconditional rows"
    );
}

/// A client on the test control plane's admin kubeconfig, acting as user `user`.
async fn client_as_user(env: &Env, user: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(env.kubeconfig()).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.auth_info.impersonate = Some(user.into());
    kube::Client::try_from(cfg).unwrap()
}

/// The chart's aggregated roles on the real API server. Each carries the labels of the
/// built-in roles it extends, and the clusterrole-aggregation controller folds its rules into
/// them. What each grants is tested on this release's own roles, bound as the aggregation binds
/// them (`edit` = view + edit rules, `admin` = all three), since other releases in the cluster
/// aggregate into the built-in roles too: a tenant with `edit` in its namespace reads and
/// approves its own Remediations, and nothing elsewhere; it writes no status and no policy;
/// `admin` writes policies; `view` approves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_with_edit_approves_its_own_incidents_and_nothing_elsewhere() {
    use fluxmedic::api::{Remediation, RemediationPolicy};
    use kube::api::{Patch, PatchParams};
    let env = env();
    let client = env.client().await;
    let ns = namespace(&client, "agg").await;
    install_chart(env, &client, &ns, false, &[]).await;
    let mine = namespace(&client, "agg-tenant").await;
    let other = namespace(&client, "agg-other").await;
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let levels = ["view", "edit", "admin"];
    for (i, level) in levels.iter().enumerate() {
        let own = roles.get(&format!("{}-{level}", full(&ns))).await.unwrap();
        let labels = own.metadata.labels.clone().unwrap_or_default();
        // Aggregated into its level and every level above it, none below.
        for (j, built_in) in levels.iter().enumerate() {
            let key = format!("rbac.authorization.k8s.io/aggregate-to-{built_in}");
            assert_eq!(
                labels.get(&key).map(String::as_str),
                (j >= i).then_some("true"),
                "{level} → {built_in}"
            );
        }
        // The aggregation controller folds the rules into the built-in role.
        let rules = own.rules.clone().unwrap();
        wait_for(
            &format!("{level} to aggregate fluxmedic's rules"),
            Duration::from_secs(30),
            || {
                let (roles, rules) = (roles.clone(), rules.clone());
                async move {
                    let built_in = roles.get(level).await.map_err(|e| e.to_string())?;
                    let have = built_in.rules.unwrap_or_default();
                    rules
                        .iter()
                        .all(|r| have.contains(r))
                        .then_some(())
                        .ok_or_else(|| format!("{have:?}"))
                }
            },
        )
        .await;
    }
    for (user, level) in [("alice", 1), ("vera", 0), ("ada", 2)] {
        for own in &levels[..=level] {
            apply(&client, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": format!("{user}-{own}"), "namespace": mine},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{}-{own}", full(&ns))},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}))
            .await;
        }
    }
    let record = |ns: &str| {
        json!({"apiVersion": "fluxmedic.io/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "hr-web-1", "namespace": ns},
            "spec": {"target": {"kind": "HelmRelease", "namespace": ns, "name": "web"},
                     "targetName": "HelmRelease/web", "case": "failed-release"}})
    };
    apply(&client, record(&mine)).await;
    apply(&client, record(&other)).await;
    // Exactly what `kubectl annotate remediation hr-web-1 fluxmedic.io/approve=<id>` sends.
    let approve =
        Patch::Merge(json!({"metadata": {"annotations": {"fluxmedic.io/approve": "a1b2c3"}}}));
    let pp = PatchParams::default();
    let alice = client_as_user(env, "alice").await;
    let own: Api<Remediation> = Api::namespaced(alice.clone(), &mine);
    // Allowed once the API server's authorizer has seen the RoleBindings (a moment).
    wait_for(
        "the RoleBindings in force",
        Duration::from_secs(10),
        || async {
            own.patch("hr-web-1", &pp, &approve)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(own.list(&Default::default()).await.unwrap().items.len(), 1);
    let elsewhere: Api<Remediation> = Api::namespaced(alice.clone(), &other);
    refused(elsewhere.patch("hr-web-1", &pp, &approve).await);
    refused(elsewhere.get("hr-web-1").await);
    // A record's status is fluxmedic's: no role of a tenant writes it.
    let forged = Patch::Merge(json!({"status": {"attempts": 0}}));
    refused(own.patch_status("hr-web-1", &pp, &forged).await);
    let policy = serde_json::from_value::<RemediationPolicy>(policy(
        &mine,
        "mine",
        json!({"rules": [{"case": "failed-release", "mode": "Auto", "actions": ["Retry"]}]}),
    ))
    .unwrap();
    let policies: Api<RemediationPolicy> = Api::namespaced(alice, &mine);
    assert_eq!(
        policies
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    refused(policies.create(&PostParams::default(), &policy).await);
    // view reads and approves nothing; admin writes policies.
    let vera: Api<Remediation> = Api::namespaced(client_as_user(env, "vera").await, &mine);
    assert!(vera.get("hr-web-1").await.is_ok());
    refused(vera.patch("hr-web-1", &pp, &approve).await);
    let ada: Api<RemediationPolicy> = Api::namespaced(client_as_user(env, "ada").await, &mine);
    ada.create(&PostParams::default(), &policy).await.unwrap();
    let admin_status: Api<Remediation> = Api::namespaced(client_as_user(env, "ada").await, &mine);
    refused(admin_status.patch_status("hr-web-1", &pp, &forged).await);
}
