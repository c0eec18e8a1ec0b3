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

/// Most bytes a payload may inflate to. A release is stored in one Secret (at most 1 MiB,
/// gzip at best compression), so a real one inflates to a few MiB; anything past this is
/// refused as corrupt, never held in memory.
pub const MAX_INFLATED: usize = 16 * 1024 * 1024;
/// Most fields of the release object, and of its `info`, a payload may have (Helm writes
/// about a dozen): re-encoding keeps each field's text, so their number is what costs memory.
const MAX_FIELDS: usize = 256;
/// Longest text kept of a release's name, namespace, status, description or chart version.
const MAX_TEXT: usize = 4096;

/// A decoded release payload: its JSON text as stored, and the few fields fluxmedic reads.
/// The content is never parsed into a tree (a payload of millions of tiny values would cost
/// gigabytes that way); an edit replaces `info.status` and `info.description` in the text.
#[derive(Clone, Debug, PartialEq)]
pub struct Release {
    text: String,
    pub was_gzipped: bool,
    head: Head,
    /// New `info.status` and `info.description`, applied by [`Release::encode`].
    edit: Option<(String, String)>,
}

/// The fields fluxmedic reads, each bounded to [`MAX_TEXT`].
#[derive(Clone, Debug, Default, PartialEq)]
struct Head {
    name: Option<String>,
    version: Option<i64>,
    namespace: Option<String>,
    status: Option<String>,
    description: Option<String>,
    chart_version: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawHead<'a> {
    #[serde(default, borrow)]
    name: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    version: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    namespace: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    info: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    chart: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct RawInfo<'a> {
    #[serde(default, borrow)]
    status: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    description: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct RawChart<'a> {
    #[serde(default, borrow)]
    metadata: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct RawChartMetadata<'a> {
    #[serde(default, borrow)]
    version: Option<&'a serde_json::value::RawValue>,
}

/// A JSON string's value (bounded), or `None` when the value is not a string.
fn string_value(v: Option<&serde_json::value::RawValue>) -> Option<String> {
    let s: std::borrow::Cow<'_, str> = serde_json::from_str(v?.get()).ok()?;
    Some(bounded(&s))
}

fn bounded(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// An object's fields, each kept as its JSON text, in order; refused past [`MAX_FIELDS`].
struct Fields<'a>(Vec<(std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a JSON object of at most {MAX_FIELDS} fields")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if out.len() == MAX_FIELDS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_FIELDS} fields"
                        )));
                    }
                    out.push((k, m.next_value::<&'de serde_json::value::RawValue>()?));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl Fields<'_> {
    fn write(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(b"{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, k.as_ref())?;
            out.write_all(b":")?;
            out.write_all(v.get().as_bytes())?;
        }
        out.write_all(b"}")
    }
}

impl Release {
    fn parse(secret: &str, text: String, was_gzipped: bool) -> Result<Self, DecodeError> {
        let json_err = |e: serde_json::Error| DecodeError::Json {
            secret: secret.into(),
            reason: e.to_string(),
        };
        let raw: RawHead<'_> = serde_json::from_str(&text).map_err(json_err)?;
        let info: Option<RawInfo<'_>> = raw
            .info
            .map(|i| serde_json::from_str(i.get()))
            .transpose()
            .map_err(json_err)?;
        let chart_version = raw
            .chart
            .and_then(|c| serde_json::from_str::<RawChart<'_>>(c.get()).ok())
            .and_then(|c| c.metadata)
            .and_then(|m| serde_json::from_str::<RawChartMetadata<'_>>(m.get()).ok())
            .and_then(|m| string_value(m.version));
        let head = Head {
            name: string_value(raw.name),
            version: raw.version.and_then(|v| v.get().parse::<i64>().ok()),
            namespace: string_value(raw.namespace),
            status: string_value(info.as_ref().and_then(|i| i.status)),
            description: string_value(info.as_ref().and_then(|i| i.description)),
            chart_version,
        };
        Ok(Release {
            text,
            was_gzipped,
            head,
            edit: None,
        })
    }

    pub fn name(&self) -> Option<&str> {
        self.head.name.as_deref()
    }
    pub fn version(&self) -> Option<i64> {
        self.head.version
    }
    /// The namespace the release's objects go to, as its payload says.
    pub fn namespace(&self) -> Option<&str> {
        self.head.namespace.as_deref()
    }
    pub fn status(&self) -> Option<&str> {
        match &self.edit {
            Some((status, _)) => Some(status),
            None => self.head.status.as_deref(),
        }
    }
    pub fn description(&self) -> Option<&str> {
        match &self.edit {
            Some((_, description)) => Some(description),
            None => self.head.description.as_deref(),
        }
    }
    pub fn chart_version(&self) -> Option<&str> {
        self.head.chart_version.as_deref()
    }

    /// Mark a pending release failed, exactly as helm-controller's unlock does:
    /// status `failed`, description `Release unlocked from stale '<status>' state`.
    pub fn mark_unlocked(&mut self) -> Result<String, String> {
        let previous = self.status().unwrap_or("unknown").to_string();
        self.mark_failed(format!("Release unlocked from stale '{previous}' state"))?;
        Ok(previous)
    }

    /// Set status `failed` with `description` (the release must have an `info` object).
    pub fn mark_failed(&mut self, description: String) -> Result<(), String> {
        let has_info = serde_json::from_str::<RawHead<'_>>(&self.text)
            .ok()
            .and_then(|h| h.info)
            .is_some_and(|i| i.get().trim_start().starts_with('{'));
        if !has_info {
            return Err("release has no info".into());
        }
        self.edit = Some(("failed".into(), description));
        Ok(())
    }

    /// Write the JSON text as it is to be stored: the stored text with the edit applied,
    /// field order and every byte of every other field kept. Streamed: no second copy of the
    /// text is made.
    fn write_json(&self, out: &mut dyn std::io::Write) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let Some((status, description)) = &self.edit else {
            return out.write_all(self.text.as_bytes()).map_err(io);
        };
        let mut top: Fields<'_> = serde_json::from_str(&self.text).map_err(|e| e.to_string())?;
        let info = top
            .0
            .iter()
            .find(|(k, _)| k == "info")
            .ok_or("release has no info")?
            .1;
        let mut info: Fields<'_> = serde_json::from_str(info.get()).map_err(|e| e.to_string())?;
        let status = serde_json::value::to_raw_value(status).map_err(|e| e.to_string())?;
        let description =
            serde_json::value::to_raw_value(description).map_err(|e| e.to_string())?;
        for (key, value) in [("status", &*status), ("description", &*description)] {
            match info.0.iter_mut().find(|(k, _)| k == key) {
                Some(field) => field.1 = value,
                None => info.0.push((key.into(), value)),
            }
        }
        let mut edited = Vec::new();
        info.write(&mut edited).map_err(io)?;
        let edited = String::from_utf8(edited).map_err(|e| e.to_string())?;
        let edited = serde_json::value::RawValue::from_string(edited).map_err(|e| e.to_string())?;
        for field in top.0.iter_mut().filter(|(k, _)| k == "info") {
            field.1 = &edited;
        }
        top.write(out).map_err(io)
    }

    /// The JSON text as it is to be stored (see [`Release::encode`]).
    pub fn to_json(&self) -> Result<String, String> {
        let mut out = Vec::new();
        self.write_json(&mut out)?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    /// The whole release as a JSON value: for tests and small payloads only (it builds the
    /// tree [`Release`] never builds for a payload it acts on).
    pub fn to_value(&self) -> Result<Value, String> {
        serde_json::from_str(&self.to_json()?).map_err(|e| e.to_string())
    }

    /// Encode as Helm does: gzip (best compression) then base64. The result is what goes
    /// into `data.release` (the API layer adds its own base64).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        self.write_json(&mut enc)?;
        let gz = enc.finish().map_err(|e| e.to_string())?;
        Ok(base64::engine::general_purpose::STANDARD
            .encode(gz)
            .into_bytes())
    }
}

/// Inflate a gzip payload into at most [`MAX_INFLATED`] bytes. The buffer is sized from the
/// gzip trailer and grows by doubling only if that was a lie, never past the bound (a plain
/// `read_to_end` would double it to twice the bound on the byte that crosses it).
fn inflate(gz: &[u8]) -> Result<Vec<u8>, String> {
    let refused = || {
        format!(
            "inflates to more than {} MiB: refused",
            MAX_INFLATED / (1024 * 1024)
        )
    };
    // gzip's trailer says how long the content is (mod 4 GiB; the payload's word, checked as
    // it inflates): one allocation of that size, or a refusal before inflating anything.
    let said = gz
        .len()
        .checked_sub(4)
        .map(|at| u32::from_le_bytes([gz[at], gz[at + 1], gz[at + 2], gz[at + 3]]) as usize)
        .unwrap_or(0);
    if said > MAX_INFLATED {
        return Err(refused());
    }
    let mut dec = flate2::read::GzDecoder::new(gz);
    let mut out: Vec<u8> = Vec::with_capacity(said);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = dec.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > MAX_INFLATED {
            return Err(refused());
        }
        if out.capacity() < out.len() + n {
            let want = (out.capacity() * 2).max(out.len() + n).min(MAX_INFLATED);
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Decode `data.release` (as bytes, after the API's own base64 has been removed). Inflation
/// stops at [`MAX_INFLATED`] and parsing at serde_json's nesting limit; neither builds more
/// than the text itself and a few fields.
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
    drop(trimmed);
    let gzip_err = |reason: String| DecodeError::Gzip {
        secret: secret.into(),
        reason,
    };
    let (bytes, was_gzipped) = if raw.len() >= 3 && raw[..3] == GZIP_MAGIC {
        (inflate(&raw).map_err(gzip_err)?, true)
    } else if raw.len() > MAX_INFLATED {
        return Err(DecodeError::Json {
            secret: secret.into(),
            reason: format!("longer than {} MiB: refused", MAX_INFLATED / (1024 * 1024)),
        });
    } else {
        (raw, false)
    };
    let text = String::from_utf8(bytes).map_err(|e| DecodeError::Json {
        secret: secret.into(),
        reason: format!("not UTF-8: {e}"),
    })?;
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError::Json {
            secret: secret.into(),
            reason: "not a JSON object".into(),
        });
    }
    Release::parse(secret, text, was_gzipped)
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

/// Helm's default action timeout (helm-controller's `spec.timeout` default): a pending
/// release is never taken for stale sooner than this plus [`STALE_GRACE`], whatever shorter
/// timeout the HelmRelease claiming it says.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Beyond the action's timeout before a pending release counts as stale.
pub const STALE_GRACE: Duration = Duration::from_secs(60);

/// How long a pending release must have gone unwritten to be stale, for an action whose
/// HelmRelease sets `timeout`: that timeout, but never less than Helm's default, plus a
/// minute. (A claimant cannot make a running action look stale with `timeout: 1s`.)
pub fn stale_after(timeout: Duration) -> Duration {
    timeout
        .max(DEFAULT_ACTION_TIMEOUT)
        .saturating_add(STALE_GRACE)
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

/// Helper for tests and benchmarks: a payload (base64 of gzip) holding `prefix`, then `len`
/// bytes of `fill` repeated, then `suffix` — a release of any size, built without holding it.
pub fn fixture_payload(prefix: &str, fill: &[u8], len: usize, suffix: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut write = |b: &[u8]| std::io::Write::write_all(&mut enc, b).expect("a Vec");
    write(prefix.as_bytes());
    let chunk: Vec<u8> = fill.iter().copied().cycle().take(1 << 16).collect();
    let mut left = len;
    while left > 0 && !chunk.is_empty() {
        let n = left.min(chunk.len());
        write(&chunk[..n]);
        left -= n;
    }
    write(suffix.as_bytes());
    base64::engine::general_purpose::STANDARD
        .encode(enc.finish().expect("a Vec"))
        .into_bytes()
}

/// Helper for tests and fixtures: build a release payload as Helm would store it.
pub fn encode_json(json: &Value) -> Vec<u8> {
    let text = serde_json::to_string(json).expect("serde_json::Value always serialises");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, text.as_bytes()).expect("writing to a Vec cannot fail");
    base64::engine::general_purpose::STANDARD
        .encode(enc.finish().expect("writing to a Vec cannot fail"))
        .into_bytes()
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
        assert_eq!(rel.to_value().unwrap(), v);
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
        let back = decode_payload("s", &rel.encode().unwrap()).unwrap();
        assert_eq!(back.status(), Some("failed"));
        assert_eq!(
            back.description(),
            Some("Release unlocked from stale 'pending-upgrade' state")
        );
        let back = back.to_value().unwrap();
        assert_eq!(back["config"], json!({"a": 1}));
        assert_eq!(back["manifest"], json!("---"));
        assert_eq!(
            back["chart"], v["chart"],
            "every other field kept as it was"
        );
    }

    #[test]
    fn a_payload_that_inflates_past_the_bound_is_refused_without_being_held() {
        // ~64 KiB of gzip inflating to 64 MiB of zeros: refused at 16 MiB.
        let b = fixture_payload("{\"a\":\"", b"0", 64 << 20, "\"}");
        assert!(b.len() < 200 * 1024, "{} bytes", b.len());
        let err = decode_payload("s", &b).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Gzip { reason, .. } if reason.contains("more than 16 MiB")),
            "{err}"
        );
    }

    #[test]
    fn a_trailer_that_lies_about_the_size_is_checked_as_it_inflates() {
        // 20 MiB of zeros whose trailer says 10 bytes: inflated, counted, refused at the bound.
        let mut b = base64::engine::general_purpose::STANDARD
            .decode(fixture_payload("{\"a\":\"", b"0", 20 << 20, "\"}"))
            .unwrap();
        let n = b.len();
        b[n - 4..].copy_from_slice(&10u32.to_le_bytes());
        let err = decode_payload(
            "s",
            base64::engine::general_purpose::STANDARD
                .encode(&b)
                .as_bytes(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, DecodeError::Gzip { reason, .. } if reason.contains("more than 16 MiB")),
            "{err}"
        );
    }

    #[test]
    fn millions_of_tiny_values_are_read_without_building_them() {
        // 12 MiB of `0,` inside an array: within the inflation bound; as a tree of JSON values
        // it would take hundreds of MiB. Read as text, the release is usable and editable.
        let b = fixture_payload(
            "{\"name\":\"web\",\"version\":2,\"info\":{\"status\":\"pending-upgrade\"},\"manifest\":[",
            b"0,",
            12 << 20,
            "0]}",
        );
        let mut rel = decode_payload("s", &b).unwrap();
        assert_eq!(rel.status(), Some("pending-upgrade"));
        assert_eq!(rel.version(), Some(2));
        rel.mark_unlocked().unwrap();
        let back = decode_payload("s", &rel.encode().unwrap()).unwrap();
        assert_eq!(back.status(), Some("failed"));
        // Too many fields, or too deep a nesting: refused, not explored.
        let wide: String = format!(
            "{{{}\"info\":{{}}}}",
            (0..300).map(|i| format!("\"k{i}\":0,")).collect::<String>()
        );
        let mut rel = decode_payload(
            "s",
            base64::engine::general_purpose::STANDARD
                .encode(&wide)
                .as_bytes(),
        )
        .unwrap();
        rel.mark_failed("x".into()).unwrap();
        assert!(rel.encode().unwrap_err().contains("more than 256 fields"));
        // A nesting 100,000 deep where nothing is read: skipped without recursion, kept as text.
        let deep = format!(
            "{{\"a\":{}{},\"info\":{{\"status\":\"pending-install\"}}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let mut rel = decode_payload(
            "s",
            base64::engine::general_purpose::STANDARD
                .encode(&deep)
                .as_bytes(),
        )
        .map_err(|e| e.to_string()[..200].to_string())
        .unwrap();
        rel.mark_unlocked().unwrap();
        assert!(rel.to_json().unwrap().starts_with("{\"a\":[[[["));
    }

    #[test]
    fn odd_field_types_are_absent_not_errors_and_long_texts_are_bounded() {
        let v = json!({"name": 7, "version": "2", "namespace": ["x"],
                       "info": {"status": {"s": 1}, "description": "d".repeat(10_000)}});
        let rel = decode_payload("s", &encode_json(&v)).unwrap();
        assert_eq!(rel.name(), None);
        assert_eq!(rel.version(), None);
        assert_eq!(rel.namespace(), None);
        assert_eq!(rel.status(), None);
        assert!(rel.description().unwrap().chars().count() <= MAX_TEXT + 1);
        // An edit adds what Helm always writes when a payload lacks it, keeps the rest.
        let v = json!({"name": "web", "version": 1, "info": {"first": 1}});
        let mut rel = decode_payload("s", &encode_json(&v)).unwrap();
        rel.mark_failed("why".into()).unwrap();
        assert_eq!(
            rel.to_value().unwrap()["info"],
            json!({"first": 1, "status": "failed", "description": "why"})
        );
        let mut no_info = decode_payload("s", &encode_json(&json!({"name": "web"}))).unwrap();
        assert!(no_info.mark_failed("why".into()).is_err());
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
