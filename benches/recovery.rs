//! Time to recovery per runbook case, fluxmedic beside plain Flux, in one run on the real
//! control plane (`task bench:recovery`).
//!
//! Every case runs twice at the same time in two namespaces: once with a fluxmedic operator
//! scoped to its namespace (the policy below, every case Auto, default limits), once without.
//! Flux objects use the intervals of a `flux bootstrap`-style setup: GitRepository 1m,
//! Kustomization and HelmRelease 10m (retryInterval unset, so equal to the interval).
//! The failure is established the same way in both runs, lasts FLUXMEDIC_RECOVERY_FIX_AFTER
//! seconds (default 30) before the person's fix lands (for the stale lock: the lock appears),
//! and time to recovery is measured from the fix to the target Ready again, capped at
//! FLUXMEDIC_RECOVERY_CAP seconds (default 720).
//!
//! Cases: broken commit fixed (invalid-manifests), credentials fixed (git-auth), retries
//! exhausted (failed-release after a timeout), stale lock (pending-upgrade left by a dead
//! Helm process), three-level dependency cascade (root fixed).
//!
//! Needs `bash hack/testenv/up.sh` first. Prints a Markdown table.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::*;

const GIT_INTERVAL: &str = "1m";
const APP_INTERVAL: &str = "10m";

struct Cfg {
    cap: Duration,
    fix_after: Duration,
}

fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// The example policy's shape with every case Auto (failed-release too) and default limits.
fn bench_policy(ns: &str) -> Value {
    policy(
        ns,
        "bench",
        json!({"rules": [
            {"case": "failed-release", "mode": "Auto", "actions": ["Retry"]},
            {"case": "invalid-manifests", "mode": "Auto"},
            {"case": "git-auth", "mode": "Auto"},
            {"case": "git-unreachable", "mode": "Auto"},
            {"case": "dependency-cascade", "mode": "Auto"},
            {"case": "stale-lock", "mode": "Auto"}]}),
    )
}

async fn git_source(client: &Client, ns: &str, url: &str, secret: Option<&str>) {
    let mut spec =
        json!({"url": url, "interval": GIT_INTERVAL, "ref": {"branch": "main"}, "timeout": "20s"});
    if let Some(s) = secret {
        spec["secretRef"] = json!({"name": s});
    }
    apply(
        client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": "repo", "namespace": ns}, "spec": spec}),
    )
    .await;
}

async fn ks(client: &Client, ns: &str, name: &str, path: &str, deps: &[&str]) {
    let deps: Vec<Value> = deps.iter().map(|d| json!({"name": d})).collect();
    apply(client, json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"interval": APP_INTERVAL, "path": path, "prune": true, "targetNamespace": ns, "dependsOn": deps,
                 "sourceRef": {"kind": "GitRepository", "name": "repo"}}})).await;
}

async fn hr(client: &Client, ns: &str, version: &str, timeout: &str) {
    apply(client, json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"interval": APP_INTERVAL, "timeout": timeout, "values": {"suffix": "one"},
                 "chart": {"spec": {"chart": "web", "version": version, "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})).await;
}

/// Seconds until `done` holds, or None at the cap.
async fn until<F, Fut>(cap: Duration, mut done: F) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < cap {
        if done().await {
            return Some(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn ready(client: &Client, ns: &str, kind: &str, name: &str) -> bool {
    get(client, ns, kind, name)
        .await
        .is_some_and(|o| is_ready(&o))
}

/// The operator for the fluxmedic run (policy first), or nothing for plain Flux.
async fn maybe_operator(env: &Env, client: &Client, ns: &str, with: bool) -> Option<Operator> {
    if !with {
        return None;
    }
    apply(client, bench_policy(ns)).await;
    Some(Operator::start(env, ns, &[]))
}

/// Plain Flux with a webhook Receiver (notification-controller, type generic) on the
/// GitRepository, and the push calling it as a forge would: the source fetches at once.
async fn broken_commit_receiver(env: &'static Env, client: Client, cfg: &Cfg) -> Option<f64> {
    let ns = namespace(&client, "ttr-commit-hook").await;
    let base: u16 = env.var("FLUXMEDIC_PORT_BASE").parse().ok()?;
    apply(
        &client,
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "webhook-token", "namespace": ns},
        "stringData": {"token": "bench-webhook-token"}}),
    )
    .await;
    apply(&client, json!({"apiVersion": "notification.toolkit.fluxcd.io/v1", "kind": "Receiver",
        "metadata": {"name": "push", "namespace": ns},
        "spec": {"type": "generic", "secretRef": {"name": "webhook-token"},
                 "resources": [{"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "name": "repo"}]}})).await;
    let path = wait_for("the Receiver's webhook path", MIN, || async {
        let receivers: Api<kube::api::DynamicObject> = Api::namespaced_with(
            client.clone(),
            &ns,
            &ar(
                "notification.toolkit.fluxcd.io",
                "v1",
                "Receiver",
                "receivers",
            ),
        );
        let r = receivers.get("push").await.map_err(|e| e.to_string())?;
        let r = serde_json::to_value(r).unwrap();
        r["status"]["webhookPath"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| r["status"].to_string())
    })
    .await;
    let hook = format!("127.0.0.1:{}", base + 85);
    broken_commit_in(env, client, &ns, false, cfg, Some((hook, path))).await
}

async fn broken_commit(env: &'static Env, client: Client, with: bool, cfg: &Cfg) -> Option<f64> {
    let ns = namespace(&client, if with { "ttr-commit-fm" } else { "ttr-commit" }).await;
    broken_commit_in(env, client, &ns, with, cfg, None).await
}

/// POST to a webhook path on `host`, as a forge does on a push.
async fn post(host: &str, path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!("POST {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
}

async fn broken_commit_in(
    env: &'static Env,
    client: Client,
    ns: &str,
    with: bool,
    cfg: &Cfg,
    hook: Option<(String, String)>,
) -> Option<f64> {
    let ns = ns.to_string();
    let repo = Repo::new(env, &ns, false);
    let good = cm("greeting", "v1");
    repo.commit(
        &[
            ("app/kustomization.yaml", Some("resources:\n- cm.yaml\n")),
            ("app/cm.yaml", Some(&good)),
        ],
        "initial",
    );
    git_source(&client, &ns, &repo.url, None).await;
    ks(&client, &ns, "app", "./app", &[]).await;
    wait_ready(&client, &ns, "Kustomization", "app", MIN).await;
    let _op = maybe_operator(env, &client, &ns, with).await;
    break_app(&client, &ns, &repo, "broken").await;
    tokio::time::sleep(cfg.fix_after).await;
    let fix = repo.commit(&[("app/cm.yaml", Some(&cm("greeting", "v2")))], "fixed");
    if let Some((host, path)) = &hook {
        post(host, path).await;
    }
    until(cfg.cap, || async {
        get(&client, &ns, "Kustomization", "app")
            .await
            .is_some_and(|o| {
                is_ready(&o)
                    && o["status"]["lastAppliedRevision"]
                        .as_str()
                        .is_some_and(|r| r.contains(&fix))
            })
    })
    .await
}

async fn credentials(env: &'static Env, client: Client, with: bool, cfg: &Cfg) -> Option<f64> {
    let ns = namespace(&client, if with { "ttr-creds-fm" } else { "ttr-creds" }).await;
    let repo = private_app_repo(env, &client, &ns).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    git_source(&client, &ns, &repo.url, Some("creds")).await;
    ks(&client, &ns, "app", "./app", &[]).await;
    wait_ready(&client, &ns, "Kustomization", "app", MIN).await;
    let _op = maybe_operator(env, &client, &ns, with).await;
    repo.set_server_credentials(env, "bot", "second-password");
    request_reconcile(&client, &ns, "GitRepository", "repo").await;
    wait_failing(
        &client,
        &ns,
        "GitRepository",
        "repo",
        "GitOperationFailed",
        MIN,
    )
    .await;
    tokio::time::sleep(cfg.fix_after).await;
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "second-password"}})),
        )
        .await
        .unwrap();
    until(cfg.cap, || async {
        ready(&client, &ns, "GitRepository", "repo").await
    })
    .await
}

async fn retries_exhausted(
    env: &'static Env,
    client: Client,
    with: bool,
    cfg: &Cfg,
) -> Option<f64> {
    let ns = namespace(&client, if with { "ttr-retry-fm" } else { "ttr-retry" }).await;
    chart_repo(env, &client, &ns).await;
    hr(&client, &ns, "0.1.0", "10s").await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    let _op = maybe_operator(env, &client, &ns, with).await;
    // The upgrade waits for a Deployment that does not roll out: timeout, retries (0) exhausted.
    hr(&client, &ns, "0.2.0", "10s").await;
    wait_stalled(&client, &ns, "web").await;
    tokio::time::sleep(cfg.fix_after).await;
    // The cause goes away (the rollout completes).
    mark_deployment_available(&client, &ns).await;
    until(cfg.cap, || async {
        get(&client, &ns, "HelmRelease", "web")
            .await
            .is_some_and(|o| is_ready(&o) && o["status"]["lastAttemptedRevision"] == "0.2.0")
    })
    .await
}

async fn stale_lock(env: &'static Env, client: Client, with: bool, cfg: &Cfg) -> Option<f64> {
    let ns = namespace(&client, if with { "ttr-lock-fm" } else { "ttr-lock" }).await;
    chart_repo(env, &client, &ns).await;
    hr(&client, &ns, "0.1.0", "30s").await;
    wait_ready(&client, &ns, "HelmRelease", "web", Duration::from_secs(90)).await;
    let _op = maybe_operator(env, &client, &ns, with).await;
    tokio::time::sleep(cfg.fix_after).await;
    // A Helm process died mid-upgrade an hour ago: revision 2 is pending-upgrade.
    forge_pending(&client, &ns, "web", 1, 2, 3600, false).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    until(cfg.cap, || async {
        let pending = secrets
            .list(&ListParams::default().labels("owner=helm,name=web"))
            .await
            .map(|l| {
                l.items.iter().any(|s| {
                    s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("status"))
                        .is_some_and(|st| st.starts_with("pending"))
                })
            })
            .unwrap_or(true);
        !pending && ready(&client, &ns, "HelmRelease", "web").await
    })
    .await
}

async fn cascade(env: &'static Env, client: Client, with: bool, cfg: &Cfg) -> Option<f64> {
    let ns = namespace(
        &client,
        if with {
            "ttr-cascade-fm"
        } else {
            "ttr-cascade"
        },
    )
    .await;
    let repo = Repo::new(env, &ns, false);
    let mut files = vec![];
    for d in ["base", "mid", "top"] {
        files.push((
            format!("{d}/kustomization.yaml"),
            "resources:\n- cm.yaml\n".to_string(),
        ));
        files.push((format!("{d}/cm.yaml"), cm(d, "v1")));
    }
    repo.commit(
        &files
            .iter()
            .map(|(a, b)| (a.as_str(), Some(b.as_str())))
            .collect::<Vec<_>>(),
        "initial",
    );
    git_source(&client, &ns, &repo.url, None).await;
    ks(&client, &ns, "a", "./base", &[]).await;
    ks(&client, &ns, "b", "./mid", &["a"]).await;
    ks(&client, &ns, "c", "./top", &["b"]).await;
    for k in ["a", "b", "c"] {
        wait_ready(&client, &ns, "Kustomization", k, Duration::from_secs(90)).await;
    }
    let _op = maybe_operator(env, &client, &ns, with).await;
    break_root(&client, &ns, &repo, &["b", "c"]).await;
    tokio::time::sleep(cfg.fix_after).await;
    repo.commit(&[("base/cm.yaml", Some(&cm("base", "v2")))], "fix the root");
    until(cfg.cap, || async {
        for k in ["a", "b", "c"] {
            if !ready(&client, &ns, "Kustomization", k).await {
                return false;
            }
        }
        true
    })
    .await
}

fn fmt(t: Option<f64>, cap: Duration) -> String {
    match t {
        Some(s) => format!("{s:.1} s"),
        None => format!("not within {} s", cap.as_secs()),
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = Cfg {
            cap: secs("FLUXMEDIC_RECOVERY_CAP", 720),
            fix_after: secs("FLUXMEDIC_RECOVERY_FIX_AFTER", 30),
        };
        let env = env();
        let client = env.client().await;
        install_crds(&client).await;
        let started = Instant::now();
        macro_rules! pair {
            ($f:ident) => {
                futures::future::join($f(env, client.clone(), false, &cfg), $f(env, client.clone(), true, &cfg))
            };
        }
        let (commit, hooked, creds, retry, lock, casc) = futures::join!(
            pair!(broken_commit),
            broken_commit_receiver(env, client.clone(), &cfg),
            pair!(credentials),
            pair!(retries_exhausted),
            pair!(stale_lock),
            pair!(cascade)
        );
        println!(
            "\nTime to recovery after the fix (failure lasting {} s first; GitRepository {GIT_INTERVAL}, Kustomization/HelmRelease {APP_INTERVAL}; cap {} s; whole run {:.0} s)\n",
            cfg.fix_after.as_secs(),
            cfg.cap.as_secs(),
            started.elapsed().as_secs_f64()
        );
        println!("| case | plain Flux | with fluxmedic | plain / fluxmedic |");
        println!("|---|---|---|---|");
        for (name, (plain, fm)) in [
            ("stale lock (pending-upgrade)", lock),
            ("retries exhausted (upgrade timeout)", retry),
            ("broken commit fixed", commit),
            ("credentials fixed", creds),
            ("three-level dependency cascade", casc),
        ] {
            let ratio = match (plain, fm) {
                (Some(p), Some(f)) => format!("{:.0}x", p / f.max(0.1)),
                (None, Some(f)) => format!("> {:.0}x", cfg.cap.as_secs_f64() / f.max(0.1)),
                _ => "-".into(),
            };
            println!("| {name} | {} | {} | {ratio} |", fmt(plain, cfg.cap), fmt(fm, cfg.cap));
        }
        println!(
            "\nBroken commit fixed, plain Flux with a webhook Receiver called on the push: {}",
            fmt(hooked, cfg.cap)
        );
    });
}
