//! Property-based fuzzing (proptest) of the three parsers of untrusted input: the Helm release
//! decoder, the condition classifier and the `diagnose` input parser. They must return a value
//! or an error for any input, never panic. `PROPTEST_CASES=100000 cargo test --test fuzz` runs
//! a longer campaign (`task fuzz`).

use std::collections::BTreeMap;

use base64::Engine as _;
use fluxmedic::{diagnose, flux::FluxKind, helm, input};
use proptest::prelude::*;
use serde_json::{Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("5m")),
        Just(json!("True")),
        Just(json!("False")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("spec".to_string()),
                    Just("status".to_string()),
                    Just("metadata".to_string()),
                    Just("conditions".to_string()),
                    Just("dependsOn".to_string()),
                    Just("sourceRef".to_string()),
                    Just("history".to_string()),
                    Just("name".to_string()),
                    Just("interval".to_string()),
                    Just("labels".to_string()),
                    Just("chart".to_string()),
                    "[a-zA-Z]{1,10}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_flux_object() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
            ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
            ("source.toolkit.fluxcd.io/v1", "GitRepository"),
            ("source.toolkit.fluxcd.io/v1", "HelmChart"),
        ]),
        arb_json(),
        arb_json(),
        arb_json(),
    )
        .prop_map(|((api, kind), meta, spec, status)| {
            let mut meta = meta;
            if let Value::Object(m) = &mut meta {
                m.insert("name".into(), json!("x"));
            }
            json!({"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec, "status": status})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512), ..ProptestConfig::default() })]

    #[test]
    fn helm_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = helm::decode_payload("s", &bytes);
        // also as a valid base64 wrapper around garbage, and around a gzip header + garbage
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let _ = helm::decode_payload("s", b64.as_bytes());
        let mut gz = vec![0x1f, 0x8b, 0x08];
        gz.extend_from_slice(&bytes);
        let _ = helm::decode_payload("s", base64::engine::general_purpose::STANDARD.encode(gz).as_bytes());
        let data = BTreeMap::from([("release".to_string(), bytes.clone())]);
        let _ = helm::decode_secret("sh.helm.release.v1.x.v1", &data);
    }

    #[test]
    fn helm_codec_roundtrips_any_release_json(j in arb_json()) {
        let j = json!({"name": "x", "version": 1, "info": {"status": "deployed"}, "extra": j});
        let mut back = helm::decode_payload("s", &helm::encode_json(&j)).unwrap();
        prop_assert_eq!(back.to_value().unwrap(), j.clone());
        // The unlock's edit changes the status and description and keeps every other field.
        back.mark_unlocked().unwrap();
        let edited = helm::decode_payload("s", &back.encode().unwrap()).unwrap().to_value().unwrap();
        prop_assert_eq!(&edited["info"]["status"], "failed");
        prop_assert_eq!(&edited["extra"], &j["extra"]);
        prop_assert_eq!(&edited["name"], &j["name"]);
    }

    #[test]
    fn classifier_is_total_and_deterministic(
        kind in prop::sample::select(FluxKind::ALL.to_vec()),
        type_ in prop::sample::select(vec!["Ready", "Stalled", "Released", "Reconciling", "X"]),
        status in prop::sample::select(vec!["True", "False", "Unknown", ""]),
        reason in prop::sample::select(vec!["UpgradeFailed", "InstallFailed", "BuildFailed", "GitOperationFailed",
            "AuthenticationFailed", "DependencyNotReady", "HealthCheckFailed", "RetriesExceeded", "PendingRelease", "Progressing", "", "Weird"]),
        message in ".{0,300}",
    ) {
        let a = diagnose::classify_condition(kind, type_, status, reason, &message);
        let b = diagnose::classify_condition(kind, type_, status, reason, &message);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn input_parser_never_panics_on_text(text in ".{0,400}") {
        let _ = input::parse_dump(&text, 0);
    }

    #[test]
    fn input_parser_and_diagnosis_never_panic_on_odd_objects(objs in prop::collection::vec(arb_flux_object(), 1..8)) {
        let doc = json!({"apiVersion": "v1", "kind": "List", "items": objs});
        if let Ok((snap, _)) = input::parse_dump(&doc.to_string(), 1_000) {
            let report = diagnose::diagnose(&snap);
            prop_assert!(report.diagnoses.len() <= snap.objects.len());
        }
        let _ = input::parse_dump(&serde_yaml_ng::to_string(&doc).unwrap(), 0);
    }
}
