//! Helm release storage: `sh.helm.release.v1.<release>.v<N>` Secrets.
//!
//! Payload (`data.release`): base64(gzip(json(release))), gzip optional for old
//! releases. Labels: `owner=helm`, `name`, `status`, `version`, `createdAt`,
//! `modifiedAt`. Decoding never panics; a corrupt Secret is an error value
//! that callers report and leave alone.

use std::{collections::BTreeMap, io::Read, time::Duration};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const SECRET_PREFIX: &str = "sh.helm.release.v1.";
pub const SECRET_TYPE: &str = "helm.sh/release.v1";
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
/// Refuse to inflate a payload beyond this (a release is normally well under 1 MiB
/// compressed, the Secret size limit).
const MAX_INFLATED: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    #[error(
        "Secret {0} is not a Helm release Secret (name must be sh.helm.release.v1.<release>.v<N>)"
    )]
    NotAReleaseSecret(String),
    #[error("Secret {0} has no data.release")]
    MissingPayload(String),
    #[error("Secret {secret}: data.release is not base64: {reason}")]
    Base64 { secret: String, reason: String },
    #[error("Secret {secret}: data.release is not valid gzip: {reason}")]
    Gzip { secret: String, reason: String },
    #[error("Secret {secret}: release JSON is invalid: {reason}")]
    Json { secret: String, reason: String },
    #[error("Secret {secret}: release JSON says {field}={found} but the Secret says {expected}")]
    Mismatch {
        secret: String,
        field: &'static str,
        found: String,
        expected: String,
    },
}

/// Status of a stored release, as Helm writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReleaseStatus(pub String);

impl ReleaseStatus {
    pub fn is_pending(&self) -> bool {
        matches!(
            self.0.as_str(),
            "pending-install" | "pending-upgrade" | "pending-rollback"
        )
    }
    /// A revision that once ran successfully and can be rolled back to.
    pub fn is_good(&self) -> bool {
        matches!(self.0.as_str(), "deployed" | "superseded")
    }
}

/// What fluxmedic keeps of one release Secret: its metadata only (no payload),
/// so watching thousands of releases costs little memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRelease {
    pub secret_name: String,
    pub namespace: String,
    pub release: String,
    pub version: i64,
    pub status: ReleaseStatus,
    /// Unix seconds of the last write (modifiedAt, else createdAt), from the labels.
    pub modified_at: Option<i64>,
}

/// Parse `sh.helm.release.v1.<release>.v<N>`.
pub fn parse_secret_name(name: &str) -> Option<(String, i64)> {
    let rest = name.strip_prefix(SECRET_PREFIX)?;
    let (release, version) = rest.rsplit_once(".v")?;
    if release.is_empty() {
        return None;
    }
    let version: i64 = version.parse().ok()?;
    (version > 0).then(|| (release.to_string(), version))
}

impl StoredRelease {
    /// Build from a Secret's name, namespace and labels. Returns `None` for Secrets that
    /// are not Helm release storage (foreign Secrets are ignored, never touched).
    pub fn from_metadata(
        name: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<Self> {
        if labels.get("owner").map(String::as_str) != Some("helm") {
            return None;
        }
        let (release, version) = parse_secret_name(name)?;
        if labels.get("name").is_some_and(|n| n != &release) {
            return None;
        }
        let ts = |k: &str| labels.get(k).and_then(|v| v.parse::<i64>().ok());
        Some(StoredRelease {
            secret_name: name.to_string(),
            namespace: namespace.to_string(),
            release,
            version,
            status: ReleaseStatus(
                labels
                    .get("status")
                    .cloned()
                    .unwrap_or_else(|| "unknown".into()),
            ),
            modified_at: ts("modifiedAt").or_else(|| ts("createdAt")),
        })
    }
}

/// A decoded release payload. The whole JSON is kept so that re-encoding after a
/// status change loses nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Release {
    pub json: Value,
    pub was_gzipped: bool,
}

impl Release {
    pub fn name(&self) -> Option<&str> {
        self.json.get("name").and_then(Value::as_str)
    }
    pub fn version(&self) -> Option<i64> {
        self.json.get("version").and_then(Value::as_i64)
    }
    pub fn status(&self) -> Option<&str> {
        self.json.pointer("/info/status").and_then(Value::as_str)
    }
    pub fn description(&self) -> Option<&str> {
        self.json
            .pointer("/info/description")
            .and_then(Value::as_str)
    }
    pub fn chart_version(&self) -> Option<&str> {
        self.json
            .pointer("/chart/metadata/version")
            .and_then(Value::as_str)
    }

    /// Mark a pending release failed, exactly as helm-controller's unlock does:
    /// status `failed`, description `Release unlocked from stale '<status>' state`.
    pub fn mark_unlocked(&mut self) -> Result<String, String> {
        let previous = self.status().unwrap_or("unknown").to_string();
        let info = self
            .json
            .get_mut("info")
            .and_then(Value::as_object_mut)
            .ok_or("release has no info")?;
        info.insert("status".into(), Value::String("failed".into()));
        info.insert(
            "description".into(),
            Value::String(format!("Release unlocked from stale '{previous}' state")),
        );
        Ok(previous)
    }

    /// Encode as Helm does: gzip (best compression) then base64. The result is what goes
    /// into `data.release` (the API layer adds its own base64).
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(&self.json).expect("serde_json::Value always serialises");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &json).expect("writing to a Vec cannot fail");
        let gz = enc.finish().expect("writing to a Vec cannot fail");
        base64::engine::general_purpose::STANDARD
            .encode(gz)
            .into_bytes()
    }
}

/// Decode `data.release` (as bytes, after the API's own base64 has been removed).
pub fn decode_payload(secret: &str, payload: &[u8]) -> Result<Release, DecodeError> {
    let trimmed: Vec<u8> = payload
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&trimmed)
        .map_err(|e| DecodeError::Base64 {
            secret: secret.into(),
            reason: e.to_string(),
        })?;
    let (json_bytes, was_gzipped) = if raw.len() >= 3 && raw[..3] == GZIP_MAGIC {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_INFLATED)
            .read_to_end(&mut out)
            .map_err(|e| DecodeError::Gzip {
                secret: secret.into(),
                reason: e.to_string(),
            })?;
        (out, true)
    } else {
        (raw, false)
    };
    let json: Value = serde_json::from_slice(&json_bytes).map_err(|e| DecodeError::Json {
        secret: secret.into(),
        reason: e.to_string(),
    })?;
    if !json.is_object() {
        return Err(DecodeError::Json {
            secret: secret.into(),
            reason: "not a JSON object".into(),
        });
    }
    Ok(Release { json, was_gzipped })
}

/// Decode a whole release Secret and check that its payload agrees with its name.
pub fn decode_secret(name: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<Release, DecodeError> {
    let (release, version) =
        parse_secret_name(name).ok_or_else(|| DecodeError::NotAReleaseSecret(name.into()))?;
    let payload = data
        .get("release")
        .ok_or_else(|| DecodeError::MissingPayload(name.into()))?;
    let rel = decode_payload(name, payload)?;
    if rel.name() != Some(release.as_str()) {
        return Err(DecodeError::Mismatch {
            secret: name.into(),
            field: "name",
            found: rel.name().unwrap_or("<none>").into(),
            expected: release,
        });
    }
    if rel.version() != Some(version) {
        return Err(DecodeError::Mismatch {
            secret: name.into(),
            field: "version",
            found: rel
                .version()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "<none>".into()),
            expected: version.to_string(),
        });
    }
    Ok(rel)
}

/// All stored revisions of one release, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleaseHistory {
    pub releases: Vec<StoredRelease>,
}

impl ReleaseHistory {
    pub fn new(mut releases: Vec<StoredRelease>) -> Self {
        releases.sort_by_key(|r| r.version);
        Self { releases }
    }

    pub fn latest(&self) -> Option<&StoredRelease> {
        self.releases.last()
    }

    /// The newest revision that ran successfully and is not the latest one: the target of
    /// a rollback. (Helm's own default, latest-1, may itself be a failed revision.)
    pub fn last_good(&self) -> Option<&StoredRelease> {
        let latest = self.latest()?.version;
        self.releases
            .iter()
            .rev()
            .find(|r| r.version < latest && r.status.is_good())
    }

    /// The latest revision, if it is pending and has not been written for longer than
    /// `threshold` at `now` (unix seconds). A pending release without a timestamp is
    /// treated as stale only if the threshold is zero.
    pub fn stale_pending(&self, now: i64, threshold: Duration) -> Option<&StoredRelease> {
        let latest = self.latest()?;
        if !latest.status.is_pending() {
            return None;
        }
        match latest.modified_at {
            Some(t) => (now.saturating_sub(t) >= threshold.as_secs() as i64).then_some(latest),
            None => threshold.is_zero().then_some(latest),
        }
    }
}

/// Helper for tests and fixtures: build a release payload as Helm would store it.
pub fn encode_json(json: &Value) -> Vec<u8> {
    Release {
        json: json.clone(),
        was_gzipped: true,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sample(name: &str, version: i64, status: &str) -> Value {
        json!({"name": name, "version": version, "namespace": "apps",
               "info": {"status": status, "description": "Upgrade complete"},
               "chart": {"metadata": {"name": "podinfo", "version": "6.0.0"}}, "config": {"a": 1}, "manifest": "---"})
    }

    #[test]
    fn secret_names() {
        assert_eq!(
            parse_secret_name("sh.helm.release.v1.podinfo.v12"),
            Some(("podinfo".into(), 12))
        );
        assert_eq!(
            parse_secret_name("sh.helm.release.v1.my.dotted.name.v3"),
            Some(("my.dotted.name".into(), 3))
        );
        assert_eq!(parse_secret_name("sh.helm.release.v1.podinfo.vx"), None);
        assert_eq!(parse_secret_name("sh.helm.release.v1..v1"), None);
        assert_eq!(parse_secret_name("sh.helm.release.v1.podinfo.v0"), None);
        assert_eq!(parse_secret_name("my-secret"), None);
    }

    #[test]
    fn roundtrip_gzip_and_plain() {
        let v = sample("podinfo", 2, "deployed");
        let enc = encode_json(&v);
        let rel = decode_payload("s", &enc).unwrap();
        assert!(rel.was_gzipped);
        assert_eq!(rel.json, v);
        // Old Helm versions stored plain JSON.
        let plain =
            base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&v).unwrap());
        let rel = decode_payload("s", plain.as_bytes()).unwrap();
        assert!(!rel.was_gzipped);
        assert_eq!(rel.status(), Some("deployed"));
    }

    #[test]
    fn corrupt_payloads_are_errors_not_panics() {
        assert!(matches!(
            decode_payload("s", b"!!!not base64"),
            Err(DecodeError::Base64 { .. })
        ));
        let bad_gz =
            base64::engine::general_purpose::STANDARD.encode([0x1f, 0x8b, 0x08, 0, 1, 2, 3]);
        assert!(matches!(
            decode_payload("s", bad_gz.as_bytes()),
            Err(DecodeError::Gzip { .. })
        ));
        let not_json = base64::engine::general_purpose::STANDARD.encode(b"hello");
        assert!(matches!(
            decode_payload("s", not_json.as_bytes()),
            Err(DecodeError::Json { .. })
        ));
        let array = base64::engine::general_purpose::STANDARD.encode(b"[1]");
        assert!(matches!(
            decode_payload("s", array.as_bytes()),
            Err(DecodeError::Json { .. })
        ));
    }

    #[test]
    fn secret_payload_must_match_its_name() {
        let mut data = BTreeMap::new();
        data.insert(
            "release".to_string(),
            encode_json(&sample("other", 1, "deployed")),
        );
        let err = decode_secret("sh.helm.release.v1.podinfo.v1", &data).unwrap_err();
        assert!(
            matches!(err, DecodeError::Mismatch { field: "name", .. }),
            "{err}"
        );
        data.insert(
            "release".to_string(),
            encode_json(&sample("podinfo", 2, "deployed")),
        );
        let err = decode_secret("sh.helm.release.v1.podinfo.v1", &data).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Mismatch {
                    field: "version",
                    ..
                }
            ),
            "{err}"
        );
        assert!(matches!(
            decode_secret("sh.helm.release.v1.podinfo.v1", &BTreeMap::new()),
            Err(DecodeError::MissingPayload(_))
        ));
    }

    #[test]
    fn unlock_matches_helm_controller_and_keeps_everything_else() {
        let v = sample("podinfo", 3, "pending-upgrade");
        let mut rel = decode_payload("s", &encode_json(&v)).unwrap();
        assert_eq!(rel.mark_unlocked().unwrap(), "pending-upgrade");
        let back = decode_payload("s", &rel.encode()).unwrap();
        assert_eq!(back.status(), Some("failed"));
        assert_eq!(
            back.description(),
            Some("Release unlocked from stale 'pending-upgrade' state")
        );
        assert_eq!(back.json["config"], json!({"a": 1}));
        assert_eq!(back.json["manifest"], json!("---"));
    }

    #[test]
    fn history_finds_last_good_and_stale_pending() {
        let r = |v: i64, status: &str, t: i64| StoredRelease {
            secret_name: format!("sh.helm.release.v1.podinfo.v{v}"),
            namespace: "apps".into(),
            release: "podinfo".into(),
            version: v,
            status: ReleaseStatus(status.into()),
            modified_at: Some(t),
        };
        let h = ReleaseHistory::new(vec![
            r(3, "failed", 300),
            r(1, "superseded", 100),
            r(2, "deployed", 200),
        ]);
        assert_eq!(h.latest().unwrap().version, 3);
        assert_eq!(h.last_good().unwrap().version, 2);
        assert!(h.stale_pending(10_000, Duration::from_secs(60)).is_none());

        let h = ReleaseHistory::new(vec![
            r(1, "deployed", 100),
            r(2, "failed", 200),
            r(3, "pending-upgrade", 1000),
        ]);
        assert_eq!(
            h.last_good().unwrap().version,
            1,
            "skips the failed revision"
        );
        assert!(
            h.stale_pending(1030, Duration::from_secs(60)).is_none(),
            "too fresh"
        );
        assert_eq!(
            h.stale_pending(1060, Duration::from_secs(60))
                .unwrap()
                .version,
            3
        );
        assert!(ReleaseHistory::default().last_good().is_none());
    }

    #[test]
    fn metadata_ignores_foreign_secrets() {
        let l = labels(&[
            ("owner", "helm"),
            ("name", "podinfo"),
            ("status", "pending-install"),
            ("modifiedAt", "42"),
        ]);
        let s = StoredRelease::from_metadata("sh.helm.release.v1.podinfo.v1", "apps", &l).unwrap();
        assert!(s.status.is_pending());
        assert_eq!(s.modified_at, Some(42));
        assert!(
            StoredRelease::from_metadata("sh.helm.release.v1.podinfo.v1", "apps", &labels(&[]))
                .is_none()
        );
        let l = labels(&[("owner", "helm"), ("name", "other")]);
        assert!(
            StoredRelease::from_metadata("sh.helm.release.v1.podinfo.v1", "apps", &l).is_none()
        );
        assert!(
            StoredRelease::from_metadata("creds", "apps", &labels(&[("owner", "helm")])).is_none()
        );
    }
}
