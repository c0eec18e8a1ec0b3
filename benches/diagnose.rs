//! Criterion micro-benchmarks: condition classification, whole-snapshot diagnosis and
//! planning, on a synthetic fleet (objects per second = elements / time).
//! Run: cargo bench --bench diagnose

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fluxmedic::{
    diagnose::{self, Snapshot, classify_condition},
    flux::{self, FluxKind},
    policy::{self, IncidentView, PlanContext, Policy},
};
use serde_json::json;

const NO_POLLERS: &fluxmedic::policy::Pollers = &fluxmedic::policy::Pollers::new();

/// `n` Kustomizations over `n/50` GitRepositories: every 10th source fails (auth), every
/// 20th Kustomization has a broken build, chains of dependsOn of length 3.
fn fleet(n: usize) -> Snapshot {
    let mut objs = vec![];
    let sources = (n / 50).max(1);
    for s in 0..sources {
        let ready = s % 10 != 0;
        let cond = if ready {
            json!({"type": "Ready", "status": "True", "reason": "Succeeded", "message": "stored artifact"})
        } else {
            json!({"type": "Ready", "status": "False", "reason": "GitOperationFailed",
                   "message": "failed to checkout and determine revision: unable to clone 'http://git/x.git': authentication required"})
        };
        objs.push(flux::from_value(&json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": format!("src{s}"), "namespace": "flux-system"},
            "spec": {"url": "http://git/x.git", "secretRef": {"name": "creds"}}, "status": {"conditions": [cond]}})).unwrap());
    }
    for i in 0..n {
        let src = i % sources;
        let deps: Vec<_> = if i % 3 != 0 {
            vec![json!({"name": format!("ks{}", i - 1)})]
        } else {
            vec![]
        };
        let cond = if src.is_multiple_of(10) {
            json!({"type": "Ready", "status": "False", "reason": "ArtifactFailed", "message": "Source is not ready, artifact not found, retrying in 30s"})
        } else if i % 20 == 0 {
            json!({"type": "Ready", "status": "False", "reason": "BuildFailed", "message": "kustomize build failed: yaml: line 3: mapping values are not allowed in this context"})
        } else if i % 20 < 3 && i % 3 != 0 {
            json!({"type": "Ready", "status": "False", "reason": "DependencyNotReady", "message": format!("dependency 'flux-system/ks{}' is not ready", i - 1)})
        } else {
            json!({"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": "Applied revision: main@sha1:abc"})
        };
        objs.push(flux::from_value(&json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": format!("ks{i}"), "namespace": "flux-system"},
            "spec": {"interval": "10m", "dependsOn": deps, "sourceRef": {"kind": "GitRepository", "name": format!("src{src}")}},
            "status": {"conditions": [cond]}})).unwrap());
    }
    Snapshot::new(objs, 1_000_000)
}

fn bench(c: &mut Criterion) {
    let corpus: Vec<serde_json::Value> = include_str!("../tests/fixtures/flux-conditions.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(corpus.len() as u64));
    g.bench_function("corpus", |b| {
        b.iter(|| {
            for r in &corpus {
                let s = |k: &str| r[k].as_str().unwrap_or_default();
                std::hint::black_box(classify_condition(
                    FluxKind::from_kind(s("kind")).unwrap(),
                    s("type"),
                    s("status"),
                    s("reason"),
                    s("message"),
                ));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("diagnose");
    g.sample_size(20);
    for n in [1_000usize, 10_000] {
        let snap = fleet(n);
        g.throughput(Throughput::Elements(snap.objects.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &snap, |b, snap| {
            b.iter(|| std::hint::black_box(diagnose::diagnose(snap)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("plan");
    g.sample_size(20);
    let snap = fleet(10_000);
    let report = diagnose::diagnose(&snap);
    let pol = Policy::new("flux-system", "default", policy::default_policy_spec()).unwrap();
    g.throughput(Throughput::Elements(report.diagnoses.len() as u64));
    g.bench_function("10000-objects-failing-set", |b| {
        b.iter(|| {
            for d in &report.diagnoses {
                let ctx = PlanContext {
                    snapshot: &snap,
                    failing_targets: report.diagnoses.len(),
                    circuit_breaker: 100_000,
                    shared_root: false,
                    operator_namespace: "flux-system",
                    controllers_down: &report.controllers_down,
                    pollers: NO_POLLERS,
                };
                std::hint::black_box(policy::plan(
                    d,
                    &snap.objects[&d.target],
                    Some(&pol),
                    &IncidentView::default(),
                    &ctx,
                ));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
