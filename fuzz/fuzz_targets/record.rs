//! Any Remediation an approver or a tenant could write: read through fluxmedic's seal and run
//! through the incident lifecycle against every state of its target. Whatever it says, a
//! record without fluxmedic's seal yields no effect at all.
#![no_main]

use fluxmedic::{
    api::Remediation,
    diagnose::{Case, Diagnosis, NativeState},
    incident::{self, Input, Record, Seen, Trust, seal::Sealer},
    policy::{Action, Decision},
    api::Mode,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(rem) = serde_json::from_slice::<Remediation>(data) else {
        return;
    };
    let sealer = Sealer::from_key(b"the fuzzer's key, thirty-two b..");
    // A ledger that knows one record, sequence 5: whatever the input says of itself.
    let ledger = incident::Ledger {
        records: [(
            "uid-1".to_string(),
            incident::LedgerEntry {
                sequence: 5,
                closed: false,
            },
        )]
        .into(),
        persisted: 5,
    };
    let Some(rec) = Record::read(&rem, &sealer, &ledger) else {
        return;
    };
    let _ = rec.view(1_800_000_000, None);
    let d = Diagnosis {
        target: rec.target.clone(),
        case: rec.case,
        retryable: true,
        root: rec.target.clone(),
        chain: vec![],
        native: NativeState::Exhausted,
        summary: String::new(),
        evidence: vec![],
    };
    let dec = Decision {
        mode: Mode::Auto,
        planned: Some(Action::Reconcile),
        blocked: None,
        escalate: false,
    };
    for seen in [
        Seen::Failing { diagnosis: &d, decision: &dec },
        Seen::Ready,
        Seen::Pending,
        Seen::Gone,
    ] {
        let effects = incident::next(&Input {
            record: Some(&rec),
            target: None,
            seen,
            source_revision: None,
            secret: None,
            recheck: None,
            escalate: true,
            controller_down: Some("source-controller has not handled a request"),
            policy: None,
            now: 1_800_000_000,
            token: "t",
            rejected: rec.rejected_request(Some("ns"), &|_| None),
            nonce: "n",
        });
        if rec.trust == Trust::Foreign {
            assert!(effects.is_empty(), "an unsealed record must not cause anything");
        }
        let _ = Case::ALL;
    }
});
