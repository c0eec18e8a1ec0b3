//! Any JSON a watch could deliver, as a Flux object: parsed, indexed, diagnosed and planned
//! under the built-in default policy. Errors are fine; panics are not.
#![no_main]

use fluxmedic::{
    controller::index::{self, Index},
    diagnose,
    flux::FluxKind,
    policy::{self, IncidentView, PlanContext, Policy},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let mut idx = Index::default();
    for kind in FluxKind::ALL {
        index::apply_flux(&mut idx, kind, &("ns".into(), "name".into()), &value);
    }
    let snap = idx.snapshot(1_800_000_000);
    let report = diagnose::diagnose(&snap);
    let Ok(p) = Policy::new("flux-system", "default", policy::default_policy_spec()) else {
        return;
    };
    for d in &report.diagnoses {
        let ctx = PlanContext {
            snapshot: &snap,
            failing_targets: report.diagnoses.len(),
            circuit_breaker: 20,
            shared_root: false,
            operator_namespace: "flux-system",
            controllers_down: &report.controllers_down,
            pollers: &fluxmedic::policy::Pollers::new(),
        };
        let inc = IncidentView {
            detected_at: snap.now,
            ..Default::default()
        };
        let _ = policy::plan(d, &snap.objects[&d.target], Some(&p), &inc, &ctx);
    }
});
