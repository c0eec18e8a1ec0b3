//! What `fluxmedic diagnose -f` reads: any text, as YAML or JSON, through the whole report.
#![no_main]

use fluxmedic::{cli, input, policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((snap, _)) = input::parse_dump(text, 1_800_000_000) {
        let p = policy::Policy::new("flux-system", "default", policy::default_policy_spec())
            .expect("the default policy is valid");
        let (report, rows) = cli::evaluate(&snap, &[p], "flux-system", 20);
        let _ = cli::render_table(&report, &rows, snap.objects.len());
    }
    let _ = fluxmedic::flux::parse_go_duration(text);
});
