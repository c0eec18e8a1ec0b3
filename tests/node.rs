//! fluxmedic as users run it: the chart's Deployment as real pods on the test node (kubelet,
//! containerd, runc), from the image hack/image.sh builds, in flux-system under the restricted
//! Pod Security Standard, with nothing but the chart's ServiceAccount.
//!
//! These tests need the node: `FLUXMEDIC_TESTENV_NODE=1` (up.sh --node) and the image tarball
//! in `FLUXMEDIC_IMAGE_TAR`; the test command runs them with `--ignored` on a control plane of
//! their own. Elsewhere they are reported as ignored, never as passed.

mod support;

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Namespace, Pod},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::*;

const NS: &str = "flux-system";
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/fluxmedic");
/// The chart test installs fluxmedic for the whole cluster: while it runs, that instance acts
/// on every namespace's incidents under their policies, another test's too (two operators on
/// the same objects is not a setup anyone runs). Tests that start an operator of their own
/// take turns with it.
static ONE_FLUXMEDIC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NEEDS_NODE: &str = "needs the test node: FLUXMEDIC_TESTENV_NODE=1 and FLUXMEDIC_IMAGE_TAR";

fn node_env() -> &'static Env {
    let env = env();
    assert_eq!(
        env.vars.get("FLUXMEDIC_NODE").map(String::as_str),
        Some("1"),
        "this control plane has no node: start it with FLUXMEDIC_TESTENV_NODE=1"
    );
    env
}

fn image_tar() -> String {
    std::env::var("FLUXMEDIC_IMAGE_TAR").expect("FLUXMEDIC_IMAGE_TAR: the image from hack/image.sh")
}

fn run(mut c: Command) -> (bool, String) {
    let out = c.output().expect("spawn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn helm(env: &Env, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(env.helm());
    c.args(args)
        .env("KUBECONFIG", env.kubeconfig())
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("fm-node-helm/cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("fm-node-helm/config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("fm-node-helm/data"),
        );
    run(c)
}

/// The image's name and tag, from the docker-archive's manifest.
fn image_ref(dir: &Path) -> String {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    manifest[0]["RepoTags"][0].as_str().unwrap().to_string()
}

/// The tarball unpacked (archive, then its one layer) into a temporary directory.
fn unpack(tar: &str) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = run({
        let mut c = Command::new("tar");
        c.args(["-xf", tar, "-C"]).arg(dir.path());
        c
    });
    assert!(ok, "{out}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let config: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(manifest[0]["Config"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let (ok, out) = run({
        let mut c = Command::new("tar");
        c.arg("-xf")
            .arg(dir.path().join(layers[0].as_str().unwrap()))
            .arg("-C")
            .arg(&rootfs);
        c
    });
    assert!(ok, "{out}");
    (dir, config)
}

/// The image goes into the node's containerd, as a registry pull would put it. Returns its
/// reference.
fn import_image(env: &Env) -> String {
    let tar = image_tar();
    let (dir, _) = unpack(&tar);
    let image = image_ref(dir.path());
    let (ok, out) = run({
        let mut c = env.tool("ctr");
        c.args([
            "--address",
            env.var("FLUXMEDIC_NODE_CTR_ADDRESS"),
            "-n",
            "k8s.io",
            "images",
            "import",
            &tar,
        ]);
        c
    });
    assert!(ok, "import {tar}: {out}");
    image
}

/// The image hack/image.sh builds holds what the Dockerfile's final stage holds: the same
/// files (each COPY destination, executable), the same user and the same way to start. The
/// Dockerfile's base images cannot be pulled here, so this is what keeps the two in step.
#[test]
#[ignore = "needs the image: FLUXMEDIC_IMAGE_TAR (hack/image.sh)"]
fn the_image_holds_what_the_dockerfile_final_stage_holds() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let final_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let directive = |name: &str| -> Option<Value> {
        final_stage
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name} ")))
            .next_back()
            .map(|v| serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())))
    };
    let copies: Vec<String> = final_stage
        .lines()
        .filter(|l| l.starts_with("COPY "))
        .map(|l| l.split_whitespace().last().unwrap().to_string())
        .collect();
    assert!(copies.len() >= 2, "fluxmedic and helm: {copies:?}");

    let (dir, config) = unpack(&image_tar());
    let c = &config["config"];
    assert_eq!(Some(c["User"].clone()), directive("USER"));
    assert_eq!(Some(c["Entrypoint"].clone()), directive("ENTRYPOINT"));
    assert_eq!(Some(c["Cmd"].clone()), directive("CMD"));
    assert_eq!(config["os"], "linux");
    // The final stage's OCI labels, its ARGs as a build of this version sets them.
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    for key in ["title", "source", "licenses", "revision"] {
        let k = format!("org.opencontainers.image.{key}");
        assert!(
            labels[&k].as_str().is_some_and(|v| !v.is_empty()),
            "{k}: {labels}"
        );
        assert!(final_stage.contains(&k), "{k} is the Dockerfile's");
    }
    let rootfs = dir.path().join("rootfs");
    for dst in &copies {
        let p = rootfs.join(dst.trim_start_matches('/'));
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{dst} missing: {e}"));
        assert!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0,
            "{dst} is not executable"
        );
        // Static: it runs with nothing from the image's (empty) library directories.
        let (ok, out) = run({
            let mut c = Command::new(&p);
            c.arg(if dst.ends_with("helm") {
                "version"
            } else {
                "--version"
            });
            c
        });
        assert!(ok, "{dst} does not run: {out}");
    }
    let entry = c["Entrypoint"][0].as_str().unwrap();
    assert!(
        copies.iter().any(|d| d == entry),
        "the entrypoint {entry} is one of the copied files"
    );
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    let uid = c["User"].as_str().unwrap().split(':').next().unwrap();
    assert!(
        passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)),
        "user {uid} is named in /etc/passwd, as in distroless/static:nonroot"
    );
    // The image's helm is the one the tests pin (and the Dockerfile installs).
    let (_, version) = run({
        let mut c = Command::new(rootfs.join("usr/local/bin/helm"));
        c.arg("version");
        c
    });
    let pinned = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/hack/testenv/versions.env"
    ))
    .unwrap()
    .lines()
    .find_map(|l| l.strip_prefix("HELM_VERSION=").map(str::to_string))
    .unwrap();
    assert!(version.contains(&pinned), "{version} vs {pinned}");
    assert!(dockerfile.contains(&format!("helm.sh/helm/v4/cmd/helm@{pinned}")));
}

/// The default release's Deployment, rolled out.
async fn deployment_rolled_out(client: &Client, replicas: i32) -> Deployment {
    release_rolled_out(client, "fluxmedic", replicas).await
}

/// Release `release`'s Deployment (named from the release, as the chart names it) Available
/// with `replicas` pods of that release running.
async fn release_rolled_out(client: &Client, release: &str, replicas: i32) -> Deployment {
    let name = chart_fullname(release);
    let selector = format!("app.kubernetes.io/name=fluxmedic,app.kubernetes.io/instance={release}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for(
        "the fluxmedic Deployment Available through its probes",
        Duration::from_secs(180),
        || async {
            let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
            let s = d.status.clone().unwrap_or_default();
            let available = s
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Available" && c.status == "True");
            let gen_ = d.metadata.generation;
            let running = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?
                .items;
            if available
                && s.observed_generation == gen_
                && s.updated_replicas == Some(replicas)
                && s.ready_replicas == Some(replicas)
                && s.replicas == Some(replicas)
                && running.len() == replicas as usize
            {
                Ok(d)
            } else {
                let states: Vec<String> = running
                    .iter()
                    .map(|p| {
                        let st = p.status.clone().unwrap_or_default();
                        format!(
                            "{} {:?} {:?}",
                            p.metadata.name.clone().unwrap_or_default(),
                            st.phase,
                            st.container_statuses
                                .iter()
                                .flatten()
                                .map(|c| format!("{:?} ready={}", c.state, c.ready))
                                .collect::<Vec<_>>()
                        )
                    })
                    .collect();
                Err(format!("{s:?}\npods: {states:#?}"))
            }
        },
    )
    .await
}

async fn fluxmedic_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.list(
        &ListParams::default()
            .labels("app.kubernetes.io/name=fluxmedic,app.kubernetes.io/instance=fluxmedic"),
    )
    .await
    .unwrap()
    .items
    .into_iter()
    .filter(|p| p.metadata.deletion_timestamp.is_none())
    .collect()
}

async fn pod_names(client: &Client) -> BTreeSet<String> {
    fluxmedic_pods(client)
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

async fn lease_holder(client: &Client) -> Option<String> {
    lease_holder_of(client, "fluxmedic-leader").await
}

async fn lease_holder_of(client: &Client, lease: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    leases
        .get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// The host's view of a pod's fluxmedic process (kubelet's cgroupfs path holds the pod UID):
/// its effective user, and whether its root filesystem is mounted read-only.
fn pod_process(uid: &str) -> Option<(String, bool)> {
    let marker = format!("pod{uid}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let p = entry.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() != "fluxmedic" {
            continue;
        }
        let cgroup = std::fs::read_to_string(p.join("cgroup")).unwrap_or_default();
        if !cgroup.contains(&marker) {
            continue;
        }
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_string();
        let mountinfo = std::fs::read_to_string(p.join("mountinfo")).unwrap_or_default();
        let root_ro = mountinfo.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|o| o == "ro"))
        });
        return Some((euid, root_ro));
    }
    None
}

fn logs(env: &Env, pod: &str) -> String {
    let (_, out) = run({
        let mut c = env.tool("kubectl");
        c.args(["logs", "-n", NS, pod, "-c", "fluxmedic"]);
        c
    });
    out
}

/// `helm install fluxmedic charts/fluxmedic -n flux-system` with the image built here, into a
/// namespace that enforces the restricted standard: two replicas become Available through
/// their own probes, as user 65532 on a read-only root, share one Lease, remediate a real
/// failure (a `helm rollback` run inside the container, on the ServiceAccount's token),
/// log plain text to `kubectl logs`, serve metrics on the pod network; deleting the leader
/// moves the work to the other replica; `helm upgrade` rolls the pods; `helm uninstall` runs
/// its pre-delete hook, which resumes the HelmRelease fluxmedic held (and not one a person
/// suspended), then removes the chart's RBAC.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test node: FLUXMEDIC_TESTENV_NODE=1 and FLUXMEDIC_IMAGE_TAR"]
async fn the_chart_runs_as_users_run_it() {
    let _ = NEEDS_NODE;
    let _one_fluxmedic = ONE_FLUXMEDIC.lock().await;
    let env = node_env();
    let client = env.client().await;

    let image = import_image(env);
    let (repository, tag) = image.rsplit_once(':').unwrap();

    // flux-system enforces the restricted standard: a pod the chart renders must pass it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            NS,
            &PatchParams::apply("fluxmedic-tests"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                           "pod-security.kubernetes.io/enforce-version": "latest"}}}),
            ),
        )
        .await
        .unwrap();

    // A tenant with a HelmRelease (its policy, allowing a rollback, once the chart is in).
    let app = namespace(&client, "nodeapp").await;
    chart_repo(env, &client, &app).await;
    helm_release(
        &client,
        &app,
        "web",
        "0.1.0",
        json!({"suffix": "one"}),
        "30s",
    )
    .await;
    wait_ready(&client, &app, "HelmRelease", "web", Duration::from_secs(90)).await;

    // The API server's address on the pod network (there is no kube-proxy for the Service).
    let api = env.var("FLUXMEDIC_API_URL");
    let hostport = api.trim_start_matches("https://");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let sets = [
        ("--set", format!("image.repository={repository}")),
        ("--set", format!("image.tag={tag}")),
        ("--set", "image.pullPolicy=Never".to_string()),
        ("--set", "replicas=2".to_string()),
        ("--set", "rollback.enabled=true".to_string()),
        // helm-controller runs as a process here, no Deployment says as whom (up.sh).
        (
            "--set",
            "helmController.serviceAccount=flux-system/helm-controller".to_string(),
        ),
        ("--set", "logFormat=text".to_string()),
        (
            "--set",
            "extraEnv[0].name=KUBERNETES_SERVICE_HOST".to_string(),
        ),
        ("--set", format!("extraEnv[0].value={host}")),
        (
            "--set",
            "extraEnv[1].name=KUBERNETES_SERVICE_PORT".to_string(),
        ),
        ("--set-string", format!("extraEnv[1].value={port}")),
    ];
    let mut args = vec!["install", "fluxmedic", CHART, "-n", NS];
    for (flag, s) in &sets {
        args.extend([*flag, s.as_str()]);
    }
    let (ok, out) = helm(env, &args);
    assert!(ok, "helm install: {out}");

    // The chart brought the CRDs (crds/): now the tenant's policy.
    apply(&client, policy(&app, "auto", json!({"rules": [{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}],
        "limits": {"pollInterval": "2s", "maxPollInterval": "4s", "cooldown": "3s", "maxAttempts": 3}}))).await;
    let d = deployment_rolled_out(&client, 2).await;
    let template = serde_json::to_value(&d.spec.unwrap().template).unwrap();
    assert_eq!(template["spec"]["containers"][0]["image"], image.as_str());
    let pods = fluxmedic_pods(&client).await;
    assert_eq!(pods.len(), 2);
    for p in &pods {
        let uid = p.metadata.uid.clone().unwrap();
        let (euid, ro) = pod_process(&uid).expect("the pod's fluxmedic process on the node");
        assert_eq!(euid, "65532", "runs as the image's non-root user");
        assert!(ro, "its root filesystem is read-only");
        assert!(
            p.spec.as_ref().unwrap().host_network != Some(true),
            "the restricted standard: no host network"
        );
    }
    let names: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let leader = wait_for("one replica holds the Lease", MIN, || async {
        match lease_holder(&client).await {
            Some(h) if names.contains(&h) => Ok(h),
            other => Err(format!("{other:?} not in {names:?}")),
        }
    })
    .await;

    // A real failure, remediated by the pod: values the chart cannot render (not retryable),
    // so the policy's rollback runs `helm rollback` inside the container.
    break_and_wait_rolled_back(&client, &app, Duration::from_secs(180)).await;

    // kubectl logs: the leader's log, plain text (no terminal, no colour codes), no denials.
    let log = logs(env, &leader);
    assert!(log.contains("web"), "the leader logged its work:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in kubectl logs:\n{log}"
    );
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");

    // Metrics, scraped from the pod over the pod network.
    let leader_pod = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(leader.as_str()))
        .unwrap();
    let ip = leader_pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let metrics = wait_for("metrics from the pod", MIN, || async {
        reqwest_get(&format!("http://{ip}:8080/metrics"))
            .await
            .filter(|m| m.contains("fluxmedic_"))
            .ok_or_else(|| "no metrics".to_string())
    })
    .await;
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with(r#"fluxmedic_actions_total{action="rollback",outcome="succeeded"} "#)),
        "the rollback is counted:\n{metrics}"
    );

    // Failover: the leader pod goes; the other replica takes the Lease and closes the
    // incident when the fix lands.
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods_api
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    let next = wait_for(
        "another replica holds the Lease",
        Duration::from_secs(90),
        || async {
            let alive: BTreeSet<String> = pod_names(&client).await;
            match lease_holder(&client).await {
                Some(h) if h != leader && alive.contains(&h) => Ok(h),
                other => Err(format!("holder {other:?}, alive {alive:?}")),
            }
        },
    )
    .await;
    helm_release(
        &client,
        &app,
        "web",
        "0.1.0",
        json!({"suffix": "two"}),
        "30s",
    )
    .await;
    wait_ready(
        &client,
        &app,
        "HelmRelease",
        "web",
        Duration::from_secs(120),
    )
    .await;
    wait_remediation(
        &client,
        &app,
        "HelmRelease/web",
        "Succeeded",
        Duration::from_secs(120),
        |r| phase(r) == "Succeeded",
    )
    .await;
    let log = logs(env, &next);
    assert!(
        log.contains("web"),
        "the new leader did the closing:\n{log}"
    );

    // helm upgrade with changed values rolls the pods.
    let before: BTreeSet<String> = pod_names(&client).await;
    let mut args = vec!["upgrade", "fluxmedic", CHART, "-n", NS, "--reuse-values"];
    args.extend(["--set", "concurrency=2"]);
    let (ok, out) = helm(env, &args);
    assert!(ok, "helm upgrade: {out}");
    let d = deployment_rolled_out(&client, 2).await;
    let template = serde_json::to_value(&d.spec.unwrap().template).unwrap();
    assert!(
        template["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--concurrency=2")
    );
    let after: BTreeSet<String> = pod_names(&client).await;
    assert!(
        before.is_disjoint(&after),
        "new pods: {before:?} -> {after:?}"
    );

    // A held release at uninstall: broken again, rolled back and held suspended for its fix.
    // Beside it, a release a person suspended, with a hand-written fluxmedic annotation.
    let first = remediation_for(&client, &app, "HelmRelease/web")
        .await
        .unwrap();
    helm_release(
        &client,
        &app,
        "web",
        "0.1.0",
        json!({"suffix": "Broken_Again"}),
        "30s",
    )
    .await;
    wait_for(
        "held again, awaiting its fix",
        Duration::from_secs(180),
        || async {
            let r = remediation_for(&client, &app, "HelmRelease/web")
                .await
                .ok_or("none")?;
            let hr = get(&client, &app, "HelmRelease", "web")
                .await
                .ok_or("no HelmRelease")?;
            if r["metadata"]["name"] != first["metadata"]["name"]
                && r["status"]["phase"] == "AwaitingFix"
                && hr["spec"]["suspend"] == true
            {
                Ok(())
            } else {
                Err(format!("{} suspend={}", r["status"], hr["spec"]["suspend"]))
            }
        },
    )
    .await;
    let manual = namespace(&client, "nodemanual").await;
    chart_repo(env, &client, &manual).await;
    apply(&client, json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": manual,
                     "annotations": {"fluxmedic.io/suspended-by": "forged", "fluxmedic.io/hold": "forged"}},
        "spec": {"interval": "1h", "suspend": true,
                 "chart": {"spec": {"chart": "web", "version": "0.1.0", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})).await;

    // helm uninstall: its pre-delete hook (a Job on the node, the same image, its own token) stops
    // the operator and resumes what fluxmedic held; then the pods and the chart's cluster-wide
    // RBAC go. The person's suspension stays.
    let lp = ListParams::default().labels("app.kubernetes.io/instance=fluxmedic");
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    assert!(
        crbs.list(&lp).await.unwrap().items.len() >= 2,
        "the chart's ClusterRoleBindings (the operator's and the uninstall hook's) are labelled"
    );
    let (ok, out) = helm(
        env,
        &[
            "uninstall",
            "fluxmedic",
            "-n",
            NS,
            "--wait",
            "--timeout",
            "5m",
        ],
    );
    assert!(ok, "helm uninstall: {out}");
    let hr = get(&client, &app, "HelmRelease", "web").await.unwrap();
    assert_ne!(
        hr["spec"]["suspend"], true,
        "fluxmedic's hold outlived it: {}",
        hr["metadata"]
    );
    assert!(
        hr["metadata"]["annotations"]
            .get("fluxmedic.io/suspended-by")
            .is_none(),
        "{}",
        hr["metadata"]
    );
    let person = get(&client, &manual, "HelmRelease", "web").await.unwrap();
    assert_eq!(
        person["spec"]["suspend"], true,
        "a suspension fluxmedic did not seal was resumed"
    );
    wait_for("the pods are gone", Duration::from_secs(90), || async {
        let left = fluxmedic_pods(&client).await.len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} pods"))
        }
    })
    .await;
    let chart_rbac = || {
        let client = client.clone();
        async move {
            let lp = ListParams::default().labels("app.kubernetes.io/instance=fluxmedic");
            let crs: Api<ClusterRole> = Api::all(client.clone());
            let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
            let mut names: Vec<String> = crs
                .list(&lp)
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect();
            names.extend(
                crbs.list(&lp)
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .filter_map(|o| o.metadata.name)
                    .map(|n| format!("binding {n}")),
            );
            names
        }
    };
    assert!(
        chart_rbac().await.is_empty(),
        "the chart's cluster RBAC outlived it: {:?}",
        chart_rbac().await
    );
}

/// The chart in a copy whose Remediation CRD is changed (its description names `version`):
/// what a release with a new CRD looks like.
fn chart_with_changed_crd(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = run({
        let mut c = Command::new("cp");
        c.args(["-r", CHART]).arg(dir.path().join("fluxmedic"));
        c
    });
    assert!(ok, "{out}");
    let crd = dir
        .path()
        .join("fluxmedic/crds/remediations.fluxmedic.io.yaml");
    let text = std::fs::read_to_string(&crd).unwrap();
    let changed = text.replacen(
        "Remediation records one incident",
        &format!("Remediation (chart {version}) records one incident"),
        1,
    );
    assert_ne!(text, changed);
    std::fs::write(&crd, changed).unwrap();
    dir
}

/// Flux installs fluxmedic as Flux users install add-ons, with the README's manifests: the
/// chart from a chart repository on loopback, a HelmRelease in flux-system creating and
/// replacing the CRDs; the pods run on the node. A new chart version with a changed CRD
/// updates the CRD (Helm alone never would); deleting the HelmRelease uninstalls it, the
/// pre-delete hook running as a Job on the node, and nothing of the chart's is left.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test node: FLUXMEDIC_TESTENV_NODE=1 and FLUXMEDIC_IMAGE_TAR"]
async fn flux_installs_upgrades_and_removes_fluxmedic() {
    let _ = NEEDS_NODE;
    let _one_fluxmedic = ONE_FLUXMEDIC.lock().await;
    let env = node_env();
    let client = env.client().await;
    let image = import_image(env);
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let charts = ChartRepo::new(env, "fluxmedic-release");
    charts.publish_dir(env, Path::new(CHART), "0.1.0");
    let changed = chart_with_changed_crd("0.1.1");
    charts.publish_dir(env, &changed.path().join("fluxmedic"), "0.1.1");

    let api = env.var("FLUXMEDIC_API_URL");
    let (host, port) = api.trim_start_matches("https://").rsplit_once(':').unwrap();
    let values = json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "rollback": {"enabled": true},
        "helmController": {"serviceAccount": "flux-system/helm-controller"},
        "logFormat": "text",
        "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": host},
                     {"name": "KUBERNETES_SERVICE_PORT", "value": port}]});
    // The README's manifests (a chart repository here; an OCI one is the same with type: oci).
    apply(
        &client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
        "metadata": {"name": "fluxmedic", "namespace": NS},
        "spec": {"interval": "1h", "url": charts.url}}),
    )
    .await;
    let release_named = |name: &str, version: &str, values: &Value| {
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"interval": "1h",
                     "chart": {"spec": {"chart": "fluxmedic", "version": version,
                                        "sourceRef": {"kind": "HelmRepository", "name": "fluxmedic"}}},
                     "install": {"crds": "CreateReplace"}, "upgrade": {"crds": "CreateReplace"},
                     "values": values}})
    };
    let release = |version: &str| release_named("fluxmedic", version, &values);
    apply(&client, release("0.1.0")).await;
    wait_ready(
        &client,
        NS,
        "HelmRelease",
        "fluxmedic",
        Duration::from_secs(180),
    )
    .await;
    deployment_rolled_out(&client, 1).await;
    let leader = wait_for("the pod holds the Lease", MIN, || async {
        lease_holder(&client)
            .await
            .ok_or_else(|| "no holder".to_string())
    })
    .await;
    assert!(pod_names(&client).await.contains(&leader));

    // A second release beside it in flux-system, serving a Flux shard: nothing collides, its
    // pod runs and holds its shard's own Lease.
    let shard = "sharding.fluxcd.io/key=b";
    let mut shard_values = values.clone();
    shard_values["watchLabelSelector"] = json!(shard);
    apply(&client, release_named("shard-b", "0.1.0", &shard_values)).await;
    wait_ready(
        &client,
        NS,
        "HelmRelease",
        "shard-b",
        Duration::from_secs(180),
    )
    .await;
    release_rolled_out(&client, "shard-b", 1).await;
    let shard_lease = format!(
        "fluxmedic-leader-{}",
        fluxmedic::incident::seal::shard_id(Some(shard)).unwrap()
    );
    let shard_leader = wait_for("the shard's pod holds its Lease", MIN, || async {
        lease_holder_of(&client, &shard_lease)
            .await
            .ok_or_else(|| "no holder".to_string())
    })
    .await;
    assert!(
        shard_leader.starts_with("shard-b-fluxmedic-"),
        "{shard_leader}"
    );
    assert_eq!(
        lease_holder(&client).await.as_deref(),
        Some(leader.as_str())
    );

    // It works: a tenant's release rolled back and held, awaiting its fix.
    let app = namespace(&client, "fluxapp").await;
    chart_repo(env, &client, &app).await;
    helm_release(
        &client,
        &app,
        "web",
        "0.1.0",
        json!({"suffix": "one"}),
        "30s",
    )
    .await;
    wait_ready(&client, &app, "HelmRelease", "web", Duration::from_secs(90)).await;
    apply(&client, policy(&app, "auto", json!({"rules": [{"case": "failed-release", "mode": "Auto", "actions": ["Retry", "Rollback"]}],
        "limits": {"pollInterval": "2s", "maxPollInterval": "4s", "cooldown": "3s", "maxAttempts": 3}}))).await;
    break_and_wait_rolled_back(&client, &app, Duration::from_secs(180)).await;
    let held = get(&client, &app, "HelmRelease", "web").await.unwrap();
    assert_eq!(held["spec"]["suspend"], true, "held for its fix");

    // The next chart version, with a changed CRD: CreateReplace updates it.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    let description = || async {
        let crd = crds.get("remediations.fluxmedic.io").await.unwrap();
        let schema = crd.spec.versions[0].schema.clone().unwrap();
        schema
            .open_api_v3_schema
            .unwrap()
            .description
            .unwrap_or_default()
    };
    assert!(!description().await.contains("(chart 0.1.1)"));
    apply(&client, release("0.1.1")).await;
    wait_for(
        "the HelmRelease at 0.1.1",
        Duration::from_secs(180),
        || async {
            let hr = get(&client, NS, "HelmRelease", "fluxmedic")
                .await
                .ok_or("gone")?;
            let ready = condition(&hr, "Ready").is_some_and(|c| c["status"] == "True");
            match hr["status"]["history"][0]["chartVersion"].as_str() {
                Some("0.1.1") if ready => Ok(()),
                v => Err(format!("{v:?} ready={ready}")),
            }
        },
    )
    .await;
    assert!(
        description().await.contains("(chart 0.1.1)"),
        "the CRD was not updated"
    );
    deployment_rolled_out(&client, 1).await;

    // Removed: helm-controller uninstalls with hooks; the hook Job stops the operator first.
    let hrs: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ar(
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
            "helmreleases",
        ),
    );
    let removed_at = jiff::Timestamp::now();
    for name in ["fluxmedic", "shard-b"] {
        hrs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_for(
        "the HelmRelease and its pods gone",
        Duration::from_secs(180),
        || async {
            let hr = get(&client, NS, "HelmRelease", "fluxmedic").await;
            let shard_hr = get(&client, NS, "HelmRelease", "shard-b").await;
            let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
            let lp = ListParams::default().labels("app.kubernetes.io/name=fluxmedic");
            let pods = pods.list(&lp).await.map_err(|e| e.to_string())?.items.len();
            if hr.is_none() && shard_hr.is_none() && pods == 0 {
                Ok(())
            } else {
                Err(format!("hr={} pods={pods}", hr.is_some()))
            }
        },
    )
    .await;
    // The hook Job ran to completion (the job controller says so), then went (hook-succeeded),
    // and resumed what fluxmedic held.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), NS);
    let about_hook = "involvedObject.kind=Job,involvedObject.name=fluxmedic-release-holds";
    let completed = events
        .list(&ListParams::default().fields(about_hook))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Completed"))
        .filter_map(|e| {
            let at = e.last_timestamp.or(e.first_timestamp).map(|t| t.0);
            at.or(e.event_time.map(|t| t.0))
        })
        .any(|at| at.as_second() >= removed_at.as_second() - 1);
    assert!(completed, "the pre-delete hook Job completed");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), NS);
    assert!(
        jobs.get_opt("fluxmedic-release-holds")
            .await
            .unwrap()
            .is_none()
    );
    let hr = get(&client, &app, "HelmRelease", "web").await.unwrap();
    assert_ne!(
        hr["spec"]["suspend"], true,
        "fluxmedic's hold outlived it: {}",
        hr["metadata"]
    );
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    let crs: Api<ClusterRole> = Api::all(client.clone());
    for instance in ["fluxmedic", "shard-b"] {
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}"));
        assert!(crbs.list(&lp).await.unwrap().items.is_empty(), "{instance}");
        assert!(crs.list(&lp).await.unwrap().items.is_empty(), "{instance}");
    }
    assert!(
        crds.get_opt("remediations.fluxmedic.io")
            .await
            .unwrap()
            .is_some(),
        "the CRDs stay (and with them every record), as Helm and Flux keep CRDs"
    );
    // Left as the other tests' `helm install` finds CRDs it made itself.
    hand_crds_to_helm(&client).await;
}

/// The runbook: "if Flux system pods are crash-looping, escalate to the platform team
/// immediately". A source-controller Deployment whose container exits at start (the image run
/// with a flag it refuses) crash-loops for real on the node; fluxmedic reads kubelet's verdict
/// from the pod and escalates the incident that needs that controller at once, without a
/// request through it, then goes back to work once the Deployment is gone. (The real
/// source-controller runs as a process beside the node; a namespace stands in for flux-system.)
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the test node: FLUXMEDIC_TESTENV_NODE=1 and FLUXMEDIC_IMAGE_TAR"]
async fn a_crash_looping_flux_controller_is_escalated_at_once() {
    let _one_fluxmedic = ONE_FLUXMEDIC.lock().await;
    let env = node_env();
    let client = env.client().await;
    install_crds_as_helm_does(&client).await;
    let image = import_image(env);
    let ns = namespace(&client, "crashapp").await;
    let flux_ns = namespace(&client, "crashflux").await;
    flux_controller_deployment(
        &client,
        &flux_ns,
        "source-controller",
        1,
        &image,
        &["--no-such-flag"],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &flux_ns);
    // Three restarts (kubelet backs off 10, 20, 40 s): from then on every state kubelet reports
    // (back-off, the instant it runs, exited) reads as crash-looping.
    wait_for(
        "kubelet restarted it three times",
        Duration::from_secs(180),
        || async {
            let list = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let restarts: Vec<i32> = list
                .items
                .iter()
                .flat_map(|p| {
                    p.status
                        .iter()
                        .flat_map(|s| s.container_statuses.iter().flatten())
                })
                .map(|c| c.restart_count)
                .collect();
            if restarts.iter().any(|r| *r >= 3) {
                Ok(())
            } else {
                Err(format!("{restarts:?}"))
            }
        },
    )
    .await;

    unreachable_repo_polled(&client, &ns).await;
    let op = Operator::start(env, &ns, &["--flux-namespace", &flux_ns]);
    let rem = wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "escalated: crash-looping",
        MIN,
        |r| {
            phase(r) == "Escalated"
                && r["status"]["blocked"].as_str().is_some_and(|b| {
                    b.contains(&format!(
                        "Deployment {flux_ns}/source-controller has 0 of 1 replicas available"
                    )) && ["CrashLoopBackOff", "keeps restarting", "exited with code 2"]
                        .iter()
                        .any(|w| b.contains(w))
                })
        },
    )
    .await;
    let blocked = rem["status"]["blocked"].as_str().unwrap();
    assert!(
        blocked.contains("last exit code 2") || blocked.contains("exited with code 2"),
        "{blocked}"
    );
    assert!(
        steps(&rem).is_empty(),
        "nothing requested through it: {rem}"
    );
    op.wait_metric(
        "fluxmedic_flux_controller_down{controller=\"source-controller\"}",
        1.0,
    )
    .await;
    op.wait_metric("fluxmedic_escalations_total{case=\"git-unreachable\"}", 1.0)
        .await;
    let repo = get(&client, &ns, "GitRepository", "repo").await.unwrap();
    assert!(
        repo["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"].is_null(),
        "{repo}"
    );

    // The Deployment is removed (the platform team fixed it): fluxmedic works again.
    Api::<Deployment>::namespaced(client.clone(), &flux_ns)
        .delete("source-controller", &DeleteParams::default())
        .await
        .unwrap();
    wait_remediation(
        &client,
        &ns,
        "GitRepository/repo",
        "polling again",
        MIN,
        |r| has_step(r, "reconcile-source", "Succeeded"),
    )
    .await;
}
