//! Fleet-scale load harness against the real test control plane (`task bench:load`):
//!
//! 1. create FLUXMEDIC_LOAD_OBJECTS Flux objects (default 10,000: 50% Kustomizations, 40%
//!    HelmReleases, 10% GitRepositories), labelled `fluxmedic.test/unreconciled`, which the
//!    test control plane's Flux controllers do not watch (as objects of another shard): they
//!    leave the status the harness writes alone, and fluxmedic acts on them as on any object
//!    (suspended ones it would only record);
//! 2. start `fluxmedic run` (release build) and report start-up until the first full evaluation,
//!    resident memory, idle CPU and API requests per idle minute (from the API server's audit
//!    log, which records only fluxmedic's identity);
//!    The harness acknowledges fluxmedic's reconcile requests on them as Flux's controllers
//!    would (`status.lastHandledReconcileAt`), so that fluxmedic does not take the controllers
//!    for stopped;
//! 3. flip FLUXMEDIC_LOAD_TRICKLE Kustomizations (default 100) to a failing condition one every
//!    FLUXMEDIC_LOAD_TRICKLE_MS (default 250), then FLUXMEDIC_LOAD_FLIP others (default 1,000) at once, and report for each,
//!    per object, the time from the status write to the Remediation being visible, to its
//!    first step's intent being recorded (written before the action), to that step's outcome
//!    (written after the action) and to the incident being handled (that outcome, or its
//!    record waiting on the incident that polls the source it shares), p50/p99; the operator runs with FLUXMEDIC_LOAD_WRITES writes/s
//!    (default 20, the product default) and FLUXMEDIC_LOAD_CONCURRENCY (default 16);
//! 4. time `fluxmedic diagnose` on a dump file and on the live API server against the runbook's
//!    manual `kubectl get` commands.
//!
//! Needs `bash hack/testenv/up.sh` first. Prints a Markdown table.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use support::*;

/// When the harness first saw a target's Remediation, its first step recorded (the intent,
/// written before the action), that step's outcome (written after the action), and the
/// incident handled: that outcome, or the record waiting on the incident that polls its
/// source for all of the namespace's incidents on it (such an incident takes no step of its
/// own).
type FirstSeen = [Option<Instant>; 4];

/// Latencies from the status writes: [to the Remediation, to the intent, to the outcome, to
/// handled].
type Latencies = [Vec<f64>; 4];

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn proc_stat(pid: u32) -> (u64, u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (kb("VmRSS:") / 1024, kb("VmHWM:") / 1024, ticks / 100.0)
}

/// CPU seconds used so far by each control-plane process (`<testenv>/pids/*`), the operator
/// and this harness.
fn cpu_seconds(env: &Env, operator: u32) -> Vec<(String, f64)> {
    let mut out = vec![];
    let dir = Path::new(env.var("FLUXMEDIC_TESTENV_DIR")).join("pids");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        if let Some(pid) = std::fs::read_to_string(dir.join(&name))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            out.push((name, proc_stat(pid).2));
        }
    }
    out.push(("fluxmedic".into(), proc_stat(operator).2));
    out.push(("load harness".into(), proc_stat(std::process::id()).2));
    out
}

fn audit_requests(
    path: &str,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> (usize, HashMap<String, usize>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ids = std::collections::HashSet::new();
    let mut by_verb = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(ts) = v["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        if ts < from || ts > to {
            continue;
        }
        if ids.insert(v["auditID"].as_str().unwrap_or_default().to_string()) {
            *by_verb
                .entry(v["verb"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
    (ids.len(), by_verb)
}

/// The label the test control plane's Flux controllers do not watch (hack/testenv/up.sh).
const UNRECONCILED: &str = "fluxmedic.test/unreconciled";

/// Acknowledge every reconcile request on the objects of `api` the way Flux's controllers do:
/// `status.lastHandledReconcileAt` set to the request's value.
async fn acknowledge_requests(api: Api<DynamicObject>) {
    let mut s = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    while let Ok(Some(o)) = s.try_next().await {
        let asked = o
            .annotations()
            .get("reconcile.fluxcd.io/requestedAt")
            .cloned();
        let handled = o.data["status"]["lastHandledReconcileAt"].as_str();
        if let Some(at) = asked.filter(|a| Some(a.as_str()) != handled) {
            let st = json!({"status": {"lastHandledReconcileAt": at}});
            let _ = api
                .patch_status(&o.name_any(), &PatchParams::default(), &Patch::Merge(st))
                .await;
        }
    }
}

/// The API server's mutating requests so far, all clients (`apiserver_request_total`).
fn apiserver_writes(env: &Env) -> f64 {
    let out = Command::new("kubectl")
        .args(["get", "--raw", "/metrics"])
        .env("KUBECONFIG", env.kubeconfig())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| {
            ["POST", "PUT", "PATCH", "DELETE"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn create_all(client: &Client, ns: &str, n: usize) {
    let n_git = n / 10;
    let n_ks = n / 2;
    let n_hr = n - n_git - n_ks;
    let ready = json!([{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": "Applied revision: main@sha1:0", "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
    let mut jobs: Vec<(String, serde_json::Value, serde_json::Value)> = vec![];
    for i in 0..n_git {
        jobs.push(("GitRepository".into(),
            json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "metadata": {"name": format!("repo-{i}"), "namespace": ns, "labels": {UNRECONCILED: "true"}},
                   "spec": {"url": "http://127.0.0.1:1/x.git", "interval": "1h"}}),
            json!({"conditions": ready, "artifact": {"revision": "main@sha1:0", "path": "x", "url": "http://x", "digest": "sha256:0", "lastUpdateTime": "2026-01-01T00:00:00Z"}})));
    }
    for i in 0..n_ks {
        let deps = if i % 5 != 0 {
            json!([{"name": format!("ks-{}", i - 1)}])
        } else {
            json!([])
        };
        jobs.push(("Kustomization".into(),
            json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization", "metadata": {"name": format!("ks-{i}"), "namespace": ns, "labels": {"team": format!("t{}", i % 20), UNRECONCILED: "true"}},
                   "spec": {"interval": "10m", "path": "./", "prune": true, "dependsOn": deps, "sourceRef": {"kind": "GitRepository", "name": format!("repo-{}", i % n_git.max(1))}}}),
            json!({"conditions": ready, "observedGeneration": 1})));
    }
    for i in 0..n_hr {
        jobs.push(("HelmRelease".into(),
            json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "metadata": {"name": format!("hr-{i}"), "namespace": ns, "labels": {UNRECONCILED: "true"}},
                   "spec": {"interval": "10m", "chart": {"spec": {"chart": "web", "sourceRef": {"kind": "HelmRepository", "name": "charts"}}}}}),
            json!({"conditions": ready, "observedGeneration": 1})));
    }
    futures::stream::iter(jobs)
        .for_each_concurrent(24, |(kind, obj, status)| {
            let client = client.clone();
            async move {
                let api = flux_api(
                    &client,
                    obj["metadata"]["namespace"].as_str().unwrap(),
                    &kind,
                );
                let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                let o: DynamicObject = serde_json::from_value(obj).unwrap();
                if let Err(e) = api.create(&PostParams::default(), &o).await
                    && !matches!(&e, kube::Error::Api(s) if s.code == 409)
                {
                    panic!("create {kind}/{name}: {e}");
                }
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
                .unwrap();
            }
        })
        .await;
}

/// FLUXMEDIC_LOAD_HEAPTRACK=<fifo or file>: record the operator's heap with heaptrack's
/// preload library (only the operator's process; the harness and kubectl are not traced).
/// Read it with `heaptrack_interpret < <file> | gzip > ht.gz; heaptrack_print ht.gz`
/// (docs/measurements.md).
fn heap_profile() -> Vec<(&'static str, String)> {
    match std::env::var("FLUXMEDIC_LOAD_HEAPTRACK") {
        Ok(out) => vec![
            (
                "LD_PRELOAD",
                "/usr/lib/heaptrack/libheaptrack_preload.so".into(),
            ),
            ("DUMP_HEAPTRACK_OUTPUT", out),
        ],
        Err(_) => vec![],
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("FLUXMEDIC_LOAD_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let flip: usize = std::env::var("FLUXMEDIC_LOAD_FLIP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
        .min(n / 2);
    let env = env();
    let client = env.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "load").await;
    let mut rows: Vec<(String, String)> = vec![];

    let t = Instant::now();
    create_all(&client, &ns, n).await;
    eprintln!("created {n} objects in {:?}", t.elapsed());
    apply(&client, policy(&ns, "load", json!({"rules": [{"case": "invalid-manifests", "mode": "Auto"}],
        "circuitBreaker": {"maxFailingTargets": 100000}, "limits": {"pollInterval": "10m", "maxPollInterval": "30m"}}))).await;

    // Operator as its own audited identity.
    let kc = audited_kubeconfig(env, &ns);
    let port = env.var("FLUXMEDIC_PORT_BASE").parse::<u16>().unwrap() + 180;
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let writes = std::env::var("FLUXMEDIC_LOAD_WRITES").unwrap_or_else(|_| "20".into());
    rows.push(("`--max-writes-per-second`".into(), writes.clone()));
    // FLUXMEDIC_LOAD_LOG=<file>: the operator's info log, to see where time goes.
    let log = std::env::var("FLUXMEDIC_LOAD_LOG").ok();
    let concurrency = std::env::var("FLUXMEDIC_LOAD_CONCURRENCY").unwrap_or_else(|_| "16".into());
    rows.push(("`--concurrency`".into(), concurrency.clone()));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
        .args([
            "run",
            "--namespace",
            &ns,
            "--watch-namespaces",
            &ns,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--tick-seconds",
            "5",
            "--concurrency",
            &concurrency,
            "--max-writes-per-second",
            &writes,
        ])
        .args(HELM_CONTROLLER_IDENTITY)
        .env("KUBECONFIG", &kc)
        .env(
            "RUST_LOG",
            if log.is_some() {
                "info,fluxmedic=debug"
            } else {
                "warn"
            },
        )
        .stderr(match &log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        })
        .envs(heap_profile())
        .spawn()
        .unwrap();
    let pid = child.id();
    let metric = |text: &str, series: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    loop {
        let text = reqwest_get(&metrics).await.unwrap_or_default();
        if metric(&text, "fluxmedic_evaluations_total") >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no evaluation within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let startup = started.elapsed();
    rows.push((
        format!("start-up until the first full evaluation ({n} objects)"),
        format!("{:.2} s", startup.as_secs_f64()),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, _, cpu0) = proc_stat(pid);
    rows.push((
        "resident memory after the initial sync".into(),
        format!("{rss} MiB"),
    ));

    // Idle minute: CPU and API requests.
    let idle_s = std::env::var("FLUXMEDIC_LOAD_IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64);
    let from = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(idle_s)).await;
    let to = jiff::Timestamp::now();
    let (_, _, cpu1) = proc_stat(pid);
    rows.push((
        format!("CPU while idle ({idle_s} s)"),
        format!("{:.2}% of one core", (cpu1 - cpu0) / idle_s as f64 * 100.0),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await; // audit log flush
    let (reqs, verbs) = audit_requests(env.var("FLUXMEDIC_AUDIT_LOG"), from, to);
    rows.push((
        format!("API requests started in an idle {idle_s} s (audit log)"),
        format!("{reqs} {verbs:?}"),
    ));

    // The harness plays the controllers' part fluxmedic checks: a reconcile request on one of
    // its objects is acknowledged (status.lastHandledReconcileAt), as source-controller and
    // kustomize-controller do first thing; otherwise fluxmedic rightly finds the controller
    // not handling requests and stops acting ("a person is needed").
    let acks: Vec<_> = ["GitRepository", "Kustomization"]
        .into_iter()
        .map(|kind| tokio::spawn(acknowledge_requests(flux_api(&client, &ns, kind))))
        .collect();

    // Flip objects to failing; watch Remediations.
    let seen: Arc<Mutex<HashMap<String, FirstSeen>>> = Arc::default();
    let rem_api: Api<fluxmedic::api::Remediation> = Api::namespaced(client.clone(), &ns);
    let seen2 = seen.clone();
    let watch = tokio::spawn(async move {
        let mut s = watcher(rem_api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Ok(Some(r)) = s.try_next().await {
            let now = Instant::now();
            let mut m = seen2.lock().unwrap();
            let e = m.entry(r.spec.target.name.clone()).or_default();
            e[0].get_or_insert(now);
            let first = r.status.as_ref().and_then(|s| s.steps.first());
            // A new incident's first intent rides on the create (an annotation).
            if first.is_some()
                || r.annotations()
                    .contains_key(fluxmedic::api::INTENT_ANNOTATION)
            {
                e[1].get_or_insert(now);
            }
            if first.is_some_and(|st| st.outcome != fluxmedic::api::StepOutcome::Running) {
                e[2].get_or_insert(now);
                e[3].get_or_insert(now);
            }
            let blocked = r.status.as_ref().and_then(|s| s.blocked.as_deref());
            if blocked.is_some_and(|b| b.contains("is polled for a fix by the incident of")) {
                e[3].get_or_insert(now);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let api = flux_api(&client, &ns, "Kustomization");
    let fail = |api: Api<DynamicObject>,
                written: Arc<Mutex<HashMap<String, Instant>>>,
                name: String| async move {
        let st = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "BuildFailed",
            "message": "kustomize build failed: yaml: line 3: mapping values are not allowed in this context",
            "lastTransitionTime": jiff::Timestamp::now().to_string()}]}});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(st))
            .await
            .unwrap();
        written.lock().unwrap().insert(name, Instant::now());
    };
    // Wait until every name has its first action recorded (or the deadline), then the
    // latencies from each status write.
    let wait_and_measure = |names: Vec<String>, timeout: Duration| {
        let (seen, written) = (seen.clone(), written.clone());
        async move {
            let deadline = Instant::now() + timeout;
            loop {
                let done = {
                    let s = seen.lock().unwrap();
                    names
                        .iter()
                        .filter(|n| s.get(*n).is_some_and(|e| e[3].is_some()))
                        .count()
                };
                if done >= names.len() || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut out: Latencies = Default::default();
            let w = written.lock().unwrap();
            let s = seen.lock().unwrap();
            for name in &names {
                let (Some(at), Some(e)) = (w.get(name), s.get(name)) else {
                    continue;
                };
                for (v, t) in out.iter_mut().zip(e) {
                    if let Some(t) = t {
                        v.push(t.saturating_duration_since(*at).as_secs_f64());
                    }
                }
            }
            out
        }
    };
    let report = |rows: &mut Vec<(String, String)>, what: &str, of: usize, mut l: Latencies| {
        for (v, to) in l.iter_mut().zip([
            "Remediation visible",
            "intent recorded (before the action)",
            "outcome recorded (after the action)",
            "handled (that outcome, or waiting on the incident polling its source)",
        ]) {
            rows.push((
                format!(
                    "{what}: status write → {to}, p50 / p99 ({} of {of})",
                    v.len()
                ),
                format!("{:.3} s / {:.3} s", pct(v, 0.5), pct(v, 0.99)),
            ));
        }
    };

    // A steady trickle first: failures arriving one at a time, as in a busy fleet.
    let trickle: usize = std::env::var("FLUXMEDIC_LOAD_TRICKLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(n / 2);
    let spacing_ms: u64 = std::env::var("FLUXMEDIC_LOAD_TRICKLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let trickle_names: Vec<String> = (0..trickle).map(|i| format!("ks-{}", i * 5 + 1)).collect();
    for name in &trickle_names {
        fail(api.clone(), written.clone(), name.clone()).await;
        tokio::time::sleep(Duration::from_millis(spacing_ms)).await;
    }
    let l = wait_and_measure(trickle_names, Duration::from_secs(60)).await;
    report(
        &mut rows,
        &format!("one failure every {spacing_ms} ms"),
        trickle,
        l,
    );

    // Then a storm: `flip` roots of dependsOn chains at once.
    let storm_names: Vec<String> = (0..flip).map(|i| format!("ks-{}", i * 5)).collect();
    let t_flip = Instant::now();
    let cpu_before = cpu_seconds(env, pid);
    let storm_from = jiff::Timestamp::now();
    let api_writes_before = apiserver_writes(env);
    eprintln!("storm starts at {storm_from}");
    futures::stream::iter(storm_names.clone())
        .for_each_concurrent(16, |name| fail(api.clone(), written.clone(), name))
        .await;
    let flip_write = t_flip.elapsed();
    let l = wait_and_measure(storm_names.clone(), Duration::from_secs(300)).await;
    let storm_wall = t_flip.elapsed().as_secs_f64();
    let storm_to = jiff::Timestamp::now();
    let api_writes = apiserver_writes(env) - api_writes_before;
    // The last incident recorded (its Remediation visible), from the first flip.
    let recorded_in = {
        let s = seen.lock().unwrap();
        storm_names
            .iter()
            .filter_map(|n| s.get(n).and_then(|e| e[0]))
            .map(|t| t.saturating_duration_since(t_flip).as_secs_f64())
            .fold(0.0, f64::max)
    };
    let cpu: Vec<String> = cpu_seconds(env, pid)
        .into_iter()
        .zip(cpu_before)
        .map(|((name, after), (_, before))| (name, after - before))
        .filter(|(_, used)| *used >= 0.05)
        .map(|(name, used)| format!("{name} {used:.1}"))
        .collect();
    watch.abort();
    for a in &acks {
        a.abort();
    }
    rows.push((
        format!("status writes of {flip} flips (16 concurrent)"),
        format!("{:.2} s", flip_write.as_secs_f64()),
    ));
    let recorded = l[0].len();
    report(&mut rows, &format!("{flip} flipped at once"), flip, l);
    tokio::time::sleep(Duration::from_secs(2)).await; // audit log flush
    let (ours, verbs) = audit_requests(env.var("FLUXMEDIC_AUDIT_LOG"), storm_from, storm_to);
    let ours_writes: usize = ["create", "update", "patch", "delete"]
        .iter()
        .map(|v| verbs.get(*v).copied().unwrap_or(0))
        .sum();
    rows.push((
        "fluxmedic's writes during the storm (audit log), per incident".into(),
        format!(
            "{ours_writes} ({:.1} per incident; {ours} requests in all: {verbs:?})",
            ours_writes as f64 / recorded.max(1) as f64
        ),
    ));
    rows.push((
        "incidents recorded per second during the storm, beside the API server's write rate".into(),
        format!(
            "{:.0}/s ({recorded} in {recorded_in:.1} s); API server {:.0} writes/s over the storm's {storm_wall:.1} s (all clients, apiserver_request_total)",
            recorded as f64 / recorded_in.max(0.001),
            api_writes / storm_wall.max(0.001)
        ),
    ));
    rows.push((
        format!(
            "CPU seconds used during the storm ({storm_wall:.1} s wall, {} cores)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        cpu.join(", "),
    ));
    let (rss2, hwm, _) = proc_stat(pid);
    rows.push((
        format!("resident memory with {flip} open incidents (peak)"),
        format!("{rss2} MiB ({hwm} MiB)"),
    ));
    let _ = child.kill();
    let _ = child.wait();

    // diagnose: dump file and live, beside the manual commands.
    let kubectl = |args: &[&str]| {
        let t = Instant::now();
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", env.kubeconfig())
            .output()
            .unwrap();
        (t.elapsed(), out.stdout)
    };
    let (t_get, _) = kubectl(&[
        "get",
        "kustomizations,helmreleases,gitrepositories",
        "-n",
        &ns,
    ]);
    let (t_dump, dump) = kubectl(&[
        "get",
        "kustomizations,helmreleases,gitrepositories,helmcharts",
        "-n",
        &ns,
        "-o",
        "yaml",
    ]);
    let file = std::env::temp_dir().join(format!("{ns}-dump.yaml"));
    std::fs::write(&file, &dump).unwrap();
    let time = |args: &[&str], kc: &str| {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_fluxmedic"))
            .args(args)
            .env("KUBECONFIG", kc)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let t_file = time(
        &["diagnose", "-f", file.to_str().unwrap(), "-o", "json"],
        env.kubeconfig(),
    );
    let t_live = time(&["diagnose", "-o", "json"], env.kubeconfig());
    rows.push((
        "`kubectl get kustomizations,helmreleases,gitrepositories` (table)".into(),
        format!("{:.2} s", t_get.as_secs_f64()),
    ));
    rows.push((
        format!(
            "`kubectl get … -o yaml` dump ({} MiB)",
            dump.len() / (1 << 20)
        ),
        format!("{:.2} s", t_dump.as_secs_f64()),
    ));
    rows.push((
        "`fluxmedic diagnose -f dump.yaml`".into(),
        format!("{:.2} s", t_file.as_secs_f64()),
    ));
    rows.push((
        "`fluxmedic diagnose` (live, whole cluster)".into(),
        format!("{:.2} s", t_live.as_secs_f64()),
    ));

    println!("\n| Measurement ({n} objects) | Result |\n| --- | --- |");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    // Leave the namespace for inspection; the control plane is disposable.
}
