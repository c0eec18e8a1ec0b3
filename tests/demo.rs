//! The demo: fluxmedic doing its job on a small, realistic Flux estate, on the local control
//! plane. `bash hack/run.sh` runs it with a live view and stays up for exploring; the test
//! command runs it once without the live view and fails unless every case recovered.
//!
//! The estate (namespace `shop-…`): three Git repositories on the local Git server (one
//! private, with a credentials Secret), Kustomizations `storefront`, `billing` and the chain
//! `infra` <- `app` <- `frontend`, a chart repository with HelmReleases `web` and `cache`.
//! Intervals as people set them: GitRepository 5m, Kustomization and HelmRelease 10m.
//! fluxmedic runs as the chart runs it: its own namespace, the chart's default policy (every
//! runbook case Auto with its safe default actions) covering the estate.
//!
//! Then the runbook's failures, all at once: a broken commit, a rotated Git password, an
//! upgrade that exhausts its retries, a Helm lock left by a dead process, a root failure under
//! two dependents. After FIX_AFTER seconds a person fixes the cause (a commit, the new
//! password, the rollout that now completes); the lock needs no person. The demo times each
//! case from the fix to Ready again and prints it beside what plain Flux would need.

mod support;

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use support::*;

const GIT_INTERVAL: &str = "5m";
const APP_INTERVAL: &str = "10m";
const CAP: Duration = Duration::from_secs(180);

/// What a case reports to the live view and the summary.
#[derive(Clone, Debug, Default)]
struct Progress {
    stage: String,
    /// Seconds from the fix to Ready.
    recovered: Option<f64>,
    failed: Option<String>,
}

type Board = Arc<Mutex<BTreeMap<usize, Progress>>>;

struct Case {
    title: &'static str,
    what: &'static str,
    plain_flux: &'static str,
}

const CASES: [Case; 5] = [
    Case {
        title: "broken commit",
        what: "Kustomization storefront: YAML that does not parse is pushed",
        plain_flux: "up to 5m (the GitRepository's next fetch)",
    },
    Case {
        title: "rotated Git password",
        what: "GitRepository billing: the server's password changes, then the Secret",
        plain_flux: "up to 5m (source-controller does not watch Secrets)",
    },
    Case {
        title: "retries exhausted",
        what: "HelmRelease web: an upgrade times out (its Deployment never rolls out)",
        plain_flux: "never: Stalled until a person runs flux reconcile --reset",
    },
    Case {
        title: "stale Helm lock",
        what: "HelmRelease cache: a dead Helm process left revision 2 pending-upgrade",
        plain_flux: "up to 10m (helm-controller unlocks at its next interval)",
    },
    Case {
        title: "root failure under dependents",
        what: "Kustomization infra broken; app and frontend depend on it",
        plain_flux: "up to 5m for the fix, then 30s per dependency hop",
    },
];

fn set(board: &Board, i: usize, stage: impl Into<String>) {
    board.lock().unwrap().entry(i).or_default().stage = stage.into();
}

/// Seconds until `done`, or an error at the cap.
async fn until<F, Fut>(what: &str, mut done: F) -> Result<f64, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < CAP {
        if done().await {
            return Ok(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("{what}: not within {}s", CAP.as_secs()))
}

async fn ready(client: &Client, ns: &str, kind: &str, name: &str) -> bool {
    get(client, ns, kind, name)
        .await
        .is_some_and(|o| is_ready(&o))
}

async fn git(client: &Client, ns: &str, name: &str, url: &str, secret: Option<&str>) {
    let mut spec =
        json!({"url": url, "interval": GIT_INTERVAL, "ref": {"branch": "main"}, "timeout": "20s"});
    if let Some(s) = secret {
        spec["secretRef"] = json!({"name": s});
    }
    apply(
        client,
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .await;
}

async fn ks(client: &Client, ns: &str, name: &str, source: &str, path: &str, deps: &[&str]) {
    let deps: Vec<Value> = deps.iter().map(|d| json!({"name": d})).collect();
    apply(client, json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"interval": APP_INTERVAL, "path": path, "prune": true, "targetNamespace": ns, "dependsOn": deps,
                 "sourceRef": {"kind": "GitRepository", "name": source}}})).await;
}

async fn hr(client: &Client, ns: &str, name: &str, version: &str, timeout: &str) {
    apply(client, json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"interval": APP_INTERVAL, "timeout": timeout, "values": {"suffix": name},
                 "chart": {"spec": {"chart": "web", "version": version, "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}})).await;
}

fn app_files(dir: &str, value: &str) -> Vec<(String, String)> {
    vec![
        (
            format!("{dir}/kustomization.yaml"),
            "resources:\n- cm.yaml\n".into(),
        ),
        (format!("{dir}/cm.yaml"), cm(dir, value)),
    ]
}

fn as_refs(files: &[(String, String)]) -> Vec<(&str, Option<&str>)> {
    files
        .iter()
        .map(|(a, b)| (a.as_str(), Some(b.as_str())))
        .collect()
}

struct Estate {
    storefront: Repo,
    billing: Repo,
    platform: Repo,
}

/// Everything Ready, as a person would have it before a bad day.
async fn build_estate(env: &'static Env, client: &Client, ns: &str) -> Estate {
    let storefront = Repo::new(env, &format!("{ns}-storefront"), false);
    storefront.commit(&as_refs(&app_files("storefront", "v1")), "storefront v1");
    let billing = Repo::new(env, &format!("{ns}-billing"), true);
    billing.set_server_credentials(env, "deploy-bot", "first-password");
    billing.commit(&as_refs(&app_files("billing", "v1")), "billing v1");
    let platform = Repo::new(env, &format!("{ns}-platform"), false);
    let mut files = app_files("infra", "v1");
    files.extend(app_files("app", "v1"));
    files.extend(app_files("frontend", "v1"));
    platform.commit(&as_refs(&files), "platform v1");
    let creds: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "billing-git", "namespace": ns},
        "stringData": {"username": "deploy-bot", "password": "first-password"}}))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&Default::default(), &creds)
        .await
        .unwrap();
    git(client, ns, "storefront", &storefront.url, None).await;
    git(client, ns, "billing", &billing.url, Some("billing-git")).await;
    git(client, ns, "platform", &platform.url, None).await;
    ks(client, ns, "storefront", "storefront", "./storefront", &[]).await;
    ks(client, ns, "billing", "billing", "./billing", &[]).await;
    ks(client, ns, "infra", "platform", "./infra", &[]).await;
    ks(client, ns, "app", "platform", "./app", &["infra"]).await;
    ks(client, ns, "frontend", "platform", "./frontend", &["app"]).await;
    chart_repo(env, client, ns).await;
    hr(client, ns, "web", "0.1.0", "15s").await;
    hr(client, ns, "cache", "0.1.0", "30s").await;
    for (kind, name) in [
        ("Kustomization", "storefront"),
        ("Kustomization", "billing"),
        ("Kustomization", "infra"),
        ("Kustomization", "app"),
        ("Kustomization", "frontend"),
        ("HelmRelease", "web"),
        ("HelmRelease", "cache"),
    ] {
        wait_ready(client, ns, kind, name, Duration::from_secs(120)).await;
    }
    Estate {
        storefront,
        billing,
        platform,
    }
}

/// fluxmedic as the chart runs it: its own namespace, the chart's default policy (every
/// runbook case Auto with its safe defaults) there, covering the estate.
async fn install_fluxmedic(env: &'static Env, client: &Client, op_ns: &str, ns: &str) -> Operator {
    let mut spec = serde_json::to_value(fluxmedic::policy::default_policy_spec()).unwrap();
    spec["targets"]["namespaces"] = json!([ns]);
    apply(client, policy(op_ns, "default", spec)).await;
    Operator::launch(
        env,
        op_ns,
        &[ns, op_ns],
        &["--leader-elect"],
        &[("POD_NAME", "fluxmedic-demo")],
        env.kubeconfig(),
    )
}

async fn broken_commit(
    client: &Client,
    ns: &str,
    repo: &Repo,
    fix_after: Duration,
    b: &Board,
) -> Result<f64, String> {
    set(b, 0, "pushing a broken commit");
    repo.commit(&[("storefront/cm.yaml", Some(BROKEN_YAML))], "typo");
    // Flux fetches it when the source's interval comes round; the demo does not wait 5m.
    request_reconcile(client, ns, "GitRepository", "storefront").await;
    until("the build to fail", || async {
        get(client, ns, "Kustomization", "storefront")
            .await
            .is_some_and(|o| condition(&o, "Ready").is_some_and(|c| c["reason"] == "BuildFailed"))
    })
    .await?;
    set(
        b,
        0,
        format!(
            "the build fails; the fix is pushed in {}s",
            fix_after.as_secs()
        ),
    );
    tokio::time::sleep(fix_after).await;
    let fix = repo.commit(&as_refs(&app_files("storefront", "v2")), "fix the typo");
    set(b, 0, "fix pushed");
    until("storefront Ready on the fix", || async {
        get(client, ns, "Kustomization", "storefront")
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

async fn rotated_password(
    env: &Env,
    client: &Client,
    ns: &str,
    repo: &Repo,
    fix_after: Duration,
    b: &Board,
) -> Result<f64, String> {
    set(b, 1, "rotating the Git server's password");
    repo.set_server_credentials(env, "deploy-bot", "second-password");
    request_reconcile(client, ns, "GitRepository", "billing").await;
    until("the source to fail", || async {
        get(client, ns, "GitRepository", "billing")
            .await
            .is_some_and(|o| condition(&o, "Ready").is_some_and(|c| c["status"] == "False"))
    })
    .await?;
    set(
        b,
        1,
        format!(
            "authentication failing; Secret updated in {}s",
            fix_after.as_secs()
        ),
    );
    tokio::time::sleep(fix_after).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .patch(
            "billing-git",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "second-password"}})),
        )
        .await
        .map_err(|e| e.to_string())?;
    set(b, 1, "Secret updated");
    until("billing Ready again", || async {
        ready(client, ns, "GitRepository", "billing").await
    })
    .await
}

async fn retries_exhausted(
    client: &Client,
    ns: &str,
    fix_after: Duration,
    b: &Board,
) -> Result<f64, String> {
    set(
        b,
        2,
        "upgrading web to a chart whose Deployment never rolls out",
    );
    hr(client, ns, "web", "0.2.0", "15s").await;
    until("web Stalled", || async {
        get(client, ns, "HelmRelease", "web")
            .await
            .is_some_and(|o| condition(&o, "Stalled").is_some_and(|c| c["status"] == "True"))
    })
    .await?;
    set(
        b,
        2,
        format!(
            "Stalled (retries exhausted); the rollout completes in {}s",
            fix_after.as_secs()
        ),
    );
    tokio::time::sleep(fix_after).await;
    let _rollouts = keep_deployment_available(client, ns);
    set(b, 2, "the Deployment rolled out");
    until("web Ready on 0.2.0", || async {
        get(client, ns, "HelmRelease", "web")
            .await
            .is_some_and(|o| is_ready(&o) && o["status"]["lastAttemptedRevision"] == "0.2.0")
    })
    .await
}

async fn stale_lock(client: &Client, ns: &str, b: &Board) -> Result<f64, String> {
    set(b, 3, "a Helm process dies mid-upgrade");
    forge_pending(client, ns, "cache", 1, 2, 3600, false).await;
    set(b, 3, "revision 2 pending-upgrade, nobody working on it");
    // No person needed: timed from the lock appearing.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    until("the lock released and cache Ready", || async {
        let pending = secrets
            .get_opt("sh.helm.release.v1.cache.v2")
            .await
            .ok()
            .flatten()
            .and_then(|s| s.metadata.labels)
            .is_some_and(|l| l.get("status").is_some_and(|s| s.starts_with("pending")));
        !pending && ready(client, ns, "HelmRelease", "cache").await
    })
    .await
}

async fn cascade(
    client: &Client,
    ns: &str,
    repo: &Repo,
    fix_after: Duration,
    b: &Board,
) -> Result<f64, String> {
    set(b, 4, "breaking infra; app and frontend depend on it");
    repo.commit(&[("infra/cm.yaml", Some(BROKEN_YAML))], "break infra");
    request_reconcile(client, ns, "GitRepository", "platform").await;
    until("infra to fail", || async {
        get(client, ns, "Kustomization", "infra")
            .await
            .is_some_and(|o| condition(&o, "Ready").is_some_and(|c| c["reason"] == "BuildFailed"))
    })
    .await?;
    for k in ["app", "frontend"] {
        request_reconcile(client, ns, "Kustomization", k).await;
    }
    until("the dependents to wait on infra", || async {
        let mut all = true;
        for k in ["app", "frontend"] {
            all &= get(client, ns, "Kustomization", k).await.is_some_and(|o| {
                condition(&o, "Ready").is_some_and(|c| c["reason"] == "DependencyNotReady")
            });
        }
        all
    })
    .await?;
    set(
        b,
        4,
        format!(
            "infra failing, app and frontend blocked; fix in {}s",
            fix_after.as_secs()
        ),
    );
    tokio::time::sleep(fix_after).await;
    repo.commit(&as_refs(&app_files("infra", "v2")), "fix infra");
    set(b, 4, "fix pushed");
    until("infra, app and frontend Ready", || async {
        for k in ["infra", "app", "frontend"] {
            if !ready(client, ns, "Kustomization", k).await {
                return false;
            }
        }
        true
    })
    .await
}

/// One line per Remediation: what `kubectl get remediations` shows, with time to recovery.
async fn remediation_rows(client: &Client, ns: &str) -> Vec<String> {
    let mut rows: Vec<(String, String)> = remediations(client, ns)
        .await
        .iter()
        .map(|r| {
            let s = &r["status"];
            let last = s["steps"].as_array().and_then(|a| a.last());
            let action = match last {
                Some(st) => format!(
                    "{} {}",
                    st["action"].as_str().unwrap_or(""),
                    st["outcome"].as_str().unwrap_or("")
                ),
                None => s["action"].as_str().unwrap_or("-").to_string(),
            };
            let ttr = match s["timeToRecoverySeconds"].as_f64() {
                Some(t) => format!("{t:.0}s"),
                None => "-".into(),
            };
            let created = r["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (
                created,
                format!(
                    "{:<26} {:<19} {:<42} {:<13} {:>5}",
                    r["spec"]["targetName"].as_str().unwrap_or(""),
                    r["spec"]["case"].as_str().unwrap_or(""),
                    action,
                    s["phase"].as_str().unwrap_or("Detected"),
                    ttr
                ),
            )
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, r)| r).collect()
}

fn header() -> String {
    format!(
        "{:<26} {:<19} {:<42} {:<13} {:>5}",
        "TARGET", "CASE", "LAST ACTION", "PHASE", "TTR"
    )
}

fn summary(board: &BTreeMap<usize, Progress>, fix_after: Duration) -> String {
    let mut out = format!(
        "\nEach failure lasted {}s before the fix landed (the lock needed no fix). Time from the fix to Ready again:\n\n",
        fix_after.as_secs()
    );
    out.push_str(&format!(
        "{:<30} {:>16}   {}\n",
        "CASE", "WITH FLUXMEDIC", "PLAIN FLUX (these intervals)"
    ));
    for (i, c) in CASES.iter().enumerate() {
        let p = board.get(&i).cloned().unwrap_or_default();
        let with = match (p.recovered, &p.failed) {
            (Some(s), _) => format!("{s:.1} s"),
            (None, Some(_)) => "FAILED".into(),
            (None, None) => "-".into(),
        };
        out.push_str(&format!(
            "{:<30} {:>16}   {}\n",
            c.title, with, c.plain_flux
        ));
    }
    out.push_str(
        "\nWith the chart's default policy fluxmedic polls a source 10s, 20s, 40s ... apart while a fix is\n\
         awaited and retries a release at most every 2m (limits.pollInterval, limits.cooldown): a fix that\n\
         lands just after a poll or a retry waits for the next one.\n\
         Plain Flux beside fluxmedic, measured in one run: `task bench:recovery` (figures in docs/measurements.md).\n",
    );
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The test harness passes flags of its own; the demo knows two.
    let interactive = args.iter().any(|a| a == "--interactive");
    let fix_after = Duration::from_secs(
        std::env::var("FLUXMEDIC_DEMO_FIX_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if interactive { 20 } else { 10 }),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = rt.block_on(run(interactive, fix_after));
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(interactive: bool, fix_after: Duration) -> bool {
    let say = |s: &str| {
        eprintln!("[demo {}] {s}", jiff::Zoned::now().strftime("%H:%M:%S"));
    };
    let env = env();
    let client = env.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "shop").await;
    let op_ns = namespace(&client, "fluxmedic").await;
    say(&format!(
        "building the estate in namespace {ns}: 3 Git repositories, 5 Kustomizations, 2 HelmReleases"
    ));
    let t0 = Instant::now();
    let estate = build_estate(env, &client, &ns).await;
    say(&format!(
        "estate Ready in {:.0}s; starting fluxmedic in {op_ns} (chart default policy, every runbook case Auto)",
        t0.elapsed().as_secs_f64()
    ));
    let op = install_fluxmedic(env, &client, &op_ns, &ns).await;
    let board: Board = Arc::new(Mutex::new(BTreeMap::new()));
    say("breaking five things the way the runbook describes; a person fixes each cause later");

    // The live view: the Remediations and each case's stage, redrawn every second.
    let view = {
        let (client, ns, board) = (client.clone(), ns.clone(), board.clone());
        let started = Instant::now();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let mut screen = format!(
                    "fluxmedic demo, {:.0}s in   (kubectl get remediations -n {ns})\n\n{}\n",
                    started.elapsed().as_secs_f64(),
                    header()
                );
                for r in remediation_rows(&client, &ns).await {
                    screen.push_str(&r);
                    screen.push('\n');
                }
                screen.push('\n');
                for (i, c) in CASES.iter().enumerate() {
                    let p = board.lock().unwrap().get(&i).cloned().unwrap_or_default();
                    let state = match (&p.recovered, &p.failed) {
                        (Some(s), _) => format!("Ready {s:.1}s after the fix"),
                        (_, Some(e)) => format!("FAILED: {e}"),
                        _ => p.stage.clone(),
                    };
                    screen.push_str(&format!("  {:<30} {state}\n", c.title));
                }
                if interactive {
                    print!("\x1b[H\x1b[2J{screen}");
                    let _ = std::io::stdout().flush();
                } else {
                    // Without a terminal: each line that changed, once, with the time.
                    let before: std::collections::HashSet<&str> = last.lines().collect();
                    for line in screen
                        .lines()
                        .skip(3)
                        .filter(|l| !l.trim().is_empty() && !before.contains(l))
                    {
                        println!(
                            "[+{:>3.0}s] {}",
                            started.elapsed().as_secs_f64(),
                            line.trim_start()
                        );
                    }
                }
                last = screen;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // Each case's result shows as soon as it is in.
    let record = |i: usize, r: Result<f64, String>| {
        let mut b = board.lock().unwrap();
        let p = b.entry(i).or_default();
        match r {
            Ok(s) => p.recovered = Some(s),
            Err(e) => p.failed = Some(e),
        }
    };
    tokio::join!(
        async {
            record(
                0,
                broken_commit(&client, &ns, &estate.storefront, fix_after, &board).await,
            )
        },
        async {
            record(
                1,
                rotated_password(env, &client, &ns, &estate.billing, fix_after, &board).await,
            )
        },
        async { record(2, retries_exhausted(&client, &ns, fix_after, &board).await) },
        async { record(3, stale_lock(&client, &ns, &board).await) },
        async {
            record(
                4,
                cascade(&client, &ns, &estate.platform, fix_after, &board).await,
            )
        },
    );
    // Let the records close (fluxmedic closes an incident on its next pass after Ready).
    let _ = until("every Remediation closed", || async {
        remediations(&client, &ns)
            .await
            .iter()
            .all(|r| r["status"]["closedAt"].is_string())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    view.abort();
    let board = board.lock().unwrap().clone();
    let ok = board.values().all(|p| p.recovered.is_some()) && board.len() == CASES.len();
    println!("\n{}", header());
    for r in remediation_rows(&client, &ns).await {
        println!("{r}");
    }
    print!("{}", summary(&board, fix_after));
    for (i, c) in CASES.iter().enumerate() {
        println!("  {}: {}", c.title, c.what);
        let _ = i;
    }
    let metrics = op.metrics_url.clone();
    if !interactive {
        let rems = remediations(&client, &ns).await;
        // Every case was recorded with the case it is, and acted on.
        for case in [
            "invalid-manifests",
            "git-auth",
            "failed-release",
            "stale-lock",
            "dependency-cascade",
        ] {
            if !rems
                .iter()
                .any(|r| r["spec"]["case"] == case && r["status"]["phase"] == "Succeeded")
            {
                eprintln!("no Succeeded Remediation for {case}");
                return false;
            }
        }
        if !ok {
            eprintln!("not every case recovered: {board:?}");
        }
        return ok;
    }
    println!(
        "\nStill running. Explore:\n  source {}/env.sh\n  kubectl get remediations -A\n  kubectl describe remediation -n {ns} <name>\n  ./target/debug/fluxmedic diagnose        # the live cluster\n  curl -s {metrics} | grep ^fluxmedic_\nCtrl-C stops fluxmedic and everything the demo started.",
        env.var("FLUXMEDIC_TESTENV_DIR")
    );
    let _ = tokio::signal::ctrl_c().await;
    drop(op);
    ok
}
