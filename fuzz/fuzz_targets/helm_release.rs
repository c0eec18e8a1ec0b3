//! Helm release storage payloads: decoded (base64, gzip, JSON) or refused, never a panic;
//! a decoded one survives the unlock edit and re-encoding.
#![no_main]

use std::collections::BTreeMap;

use fluxmedic::helm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut rel) = helm::decode_payload("s", data) {
        if rel.mark_unlocked().is_ok()
            && let Ok(encoded) = rel.encode()
        {
            let back = helm::decode_payload("s", &encoded).expect("re-encoded release decodes");
            assert_eq!(back.status(), Some("failed"));
            assert_eq!(back.name(), rel.name());
            assert_eq!(back.version(), rel.version());
        }
    }
    let secret = BTreeMap::from([("release".to_string(), data.to_vec())]);
    let _ = helm::decode_secret("sh.helm.release.v1.web.v3", &secret);
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = helm::parse_secret_name(name);
    }
});
