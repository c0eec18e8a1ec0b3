//! Typed views of the Flux objects fluxmedic reads.
//!
//! Each kind has a small serde view that reads only the fields the diagnosis
//! needs and ignores everything else, so new Flux fields never break parsing.
//! The views are folded into one normalised [`FluxObject`], the unit the pure
//! diagnosis engine works on.

mod views;

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Serialize};

pub use views::{ParseError, from_value};

/// The Flux kinds fluxmedic understands.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum FluxKind {
    Kustomization,
    HelmRelease,
    GitRepository,
    HelmChart,
    HelmRepository,
    OCIRepository,
    Bucket,
}

impl FluxKind {
    pub const ALL: [FluxKind; 7] = [
        FluxKind::Kustomization,
        FluxKind::HelmRelease,
        FluxKind::GitRepository,
        FluxKind::HelmChart,
        FluxKind::HelmRepository,
        FluxKind::OCIRepository,
        FluxKind::Bucket,
    ];

    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FluxKind::Kustomization => "Kustomization",
            FluxKind::HelmRelease => "HelmRelease",
            FluxKind::GitRepository => "GitRepository",
            FluxKind::HelmChart => "HelmChart",
            FluxKind::HelmRepository => "HelmRepository",
            FluxKind::OCIRepository => "OCIRepository",
            FluxKind::Bucket => "Bucket",
        }
    }

    /// API group of the kind.
    pub fn group(self) -> &'static str {
        match self {
            FluxKind::Kustomization => "kustomize.toolkit.fluxcd.io",
            FluxKind::HelmRelease => "helm.toolkit.fluxcd.io",
            _ => "source.toolkit.fluxcd.io",
        }
    }

    /// The served version fluxmedic reads and writes.
    pub fn version(self) -> &'static str {
        match self {
            FluxKind::HelmRelease => "v2",
            _ => "v1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            FluxKind::Kustomization => "kustomizations",
            FluxKind::HelmRelease => "helmreleases",
            FluxKind::GitRepository => "gitrepositories",
            FluxKind::HelmChart => "helmcharts",
            FluxKind::HelmRepository => "helmrepositories",
            FluxKind::OCIRepository => "ocirepositories",
            FluxKind::Bucket => "buckets",
        }
    }

    pub fn is_source(self) -> bool {
        !matches!(self, FluxKind::Kustomization | FluxKind::HelmRelease)
    }

    /// Short form used in Remediation names.
    pub fn abbrev(self) -> &'static str {
        match self {
            FluxKind::Kustomization => "ks",
            FluxKind::HelmRelease => "hr",
            FluxKind::GitRepository => "gitrepo",
            FluxKind::HelmChart => "hc",
            FluxKind::HelmRepository => "helmrepo",
            FluxKind::OCIRepository => "ocirepo",
            FluxKind::Bucket => "bucket",
        }
    }
}

impl fmt::Display for FluxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a Flux object: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: FluxKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: FluxKind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A status condition, as every Flux kind writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub last_transition_time: Option<jiff::Timestamp>,
    #[serde(default)]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
    pub fn is_false(&self) -> bool {
        self.status == "False"
    }
}

/// One entry of a HelmRelease's `status.history` (newest first).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSnapshot {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub chart_name: String,
    #[serde(default)]
    pub chart_version: String,
    #[serde(default)]
    pub digest: String,
}

/// How helm-controller handles a failed release, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseStrategy {
    RemediateOnFailure,
    RetryOnFailure,
}

/// The HelmRelease-specific part of a [`FluxObject`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelmReleaseInfo {
    /// Helm release name as helm-controller computes it: spec.releaseName or
    /// `[<targetNamespace>-]<name>`, shortened when longer than 53 characters.
    pub release_name: String,
    /// Namespace holding the Helm storage Secrets: spec.storageNamespace, else the
    /// HelmRelease's namespace (never the target namespace).
    pub storage_namespace: String,
    /// Namespace the release's objects go to: spec.targetNamespace, else the HelmRelease's.
    pub release_namespace: String,
    /// status.storageNamespace, as helm-controller last recorded it.
    pub status_storage_namespace: Option<String>,
    /// spec.kubeConfig is set: the release lives in another cluster.
    pub remote: bool,
    /// spec.serviceAccountName: helm-controller acts as that ServiceAccount.
    pub service_account: Option<String>,
    /// The Helm action timeout (spec.timeout, default 5m).
    pub timeout: Duration,
    pub install_retries: i64,
    pub upgrade_retries: i64,
    /// `None` when the spec sets no strategy (then the controller's feature gate decides).
    pub install_strategy: Option<ReleaseStrategy>,
    pub upgrade_strategy: Option<ReleaseStrategy>,
    pub failures: i64,
    pub install_failures: i64,
    pub upgrade_failures: i64,
    pub last_attempted_release_action: Option<String>,
    pub last_attempted_revision: Option<String>,
    pub last_attempted_config_digest: Option<String>,
    pub last_attempted_generation: Option<i64>,
    pub history: Vec<ReleaseSnapshot>,
    pub last_handled_reconcile_at: Option<String>,
    pub last_handled_force_at: Option<String>,
    pub last_handled_reset_at: Option<String>,
    /// `<ns>/<name>` of the HelmChart helm-controller created (status.helmChart).
    pub helm_chart: Option<String>,
}

/// A Flux object, normalised across kinds. Only what diagnosis and planning need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FluxObject {
    pub key: ObjectKey,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    /// The version of the object this view was taken from: a write made on its strength is
    /// conditional on it (the API server refuses it if the object changed since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    pub observed_generation: Option<i64>,
    pub labels: BTreeMap<String, String>,
    /// The reconcile.fluxcd.io/* and fluxmedic.io/* annotations currently set.
    pub reconcile_annotations: BTreeMap<String, String>,
    pub suspended: bool,
    pub conditions: Vec<Condition>,
    /// spec.dependsOn, resolved to keys of the same kind.
    pub depends_on: Vec<ObjectKey>,
    /// The source the object consumes (Kustomization/HelmRelease/HelmChart).
    pub source_ref: Option<ObjectKey>,
    /// A sourceRef of a kind fluxmedic does not know (ExternalArtifact, a future kind):
    /// recorded as is, never guessed to be a known kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_source: Option<String>,
    /// spec.secretRef.name of a source.
    pub secret_ref: Option<String>,
    /// spec.url of a source.
    pub url: Option<String>,
    /// status.artifact.revision of a source.
    pub artifact_revision: Option<String>,
    /// status.lastAttemptedRevision of a Kustomization / HelmRelease.
    pub last_attempted_revision: Option<String>,
    /// status.lastHandledReconcileAt: the last `requestedAt` token its controller handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// spec.path of a Kustomization: where in its source its manifests are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// status.lastAppliedRevision of a Kustomization: the last revision that applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    pub interval: Option<Duration>,
    pub retry_interval: Option<Duration>,
    pub timeout: Option<Duration>,
    /// Boxed: most Flux objects are not HelmReleases, and the index holds thousands.
    pub helm: Option<Box<HelmReleaseInfo>>,
}

impl FluxObject {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn is_ready(&self) -> bool {
        self.condition("Ready").is_some_and(Condition::is_true)
    }

    /// Ready=False, or Stalled=True: Flux says it is failing.
    pub fn is_failing(&self) -> bool {
        self.condition("Ready").is_some_and(Condition::is_false)
            || self.condition("Stalled").is_some_and(Condition::is_true)
    }

    /// helm-controller is running a Helm action right now and legitimately holds the lock.
    pub fn is_running_helm_action(&self) -> bool {
        self.conditions.iter().any(|c| {
            (c.type_ == "Reconciling" && c.is_true() || c.type_ == "Ready" && c.status == "Unknown")
                && c.message.starts_with("Running '")
                && c.message.contains("' action")
        })
    }

    /// Whether its controller has reconciled the object's current spec: what its status says
    /// is about what the object asks for now (no generation recorded: taken as current).
    pub fn status_is_current(&self) -> bool {
        match (self.generation, self.observed_generation) {
            (Some(g), Some(o)) => g == o,
            (Some(_), None) => false,
            _ => true,
        }
    }

    /// The moment the object last went not-ready, if Flux recorded it.
    pub fn failing_since(&self) -> Option<jiff::Timestamp> {
        self.condition("Ready").and_then(|c| c.last_transition_time)
    }
}

/// A ServiceAccount fluxmedic acts as (Kubernetes impersonation).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceAccountRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The user name Kubernetes gives the ServiceAccount.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// Parse `namespace/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.trim().split_once('/')?;
        Some(ServiceAccountRef::new(ns, name)).filter(Self::is_valid)
    }

    /// Both parts are names Kubernetes could give (lowercase letters, digits, `-`, `.`): an
    /// identity read from a tenant's object is acted as only if it is one.
    pub fn is_valid(&self) -> bool {
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 253
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        ok(&self.namespace) && ok(&self.name)
    }
}

impl std::fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceAccount {}/{}", self.namespace, self.name)
    }
}

/// How helm-controller picks its identity, as the operator was told (used only where
/// helm-controller's Deployment cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelmControllerIdentity {
    /// helm-controller runs with `--default-service-account=<name>` (Flux's lockdown).
    Lockdown { default_service_account: String },
    /// helm-controller runs with its own rights, as this ServiceAccount.
    Unrestricted { service_account: ServiceAccountRef },
}

/// The Helm release name helm-controller uses for `name` (`release.ShortenName`): unchanged
/// up to 53 characters, else its first 40 characters, `-`, and the first 12 hex digits of
/// its SHA-256.
pub fn shorten_release_name(name: &str) -> String {
    if name.len() <= 53 {
        return name.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Byte-wise like Go's `name[:40]`; release names are ASCII (DNS labels).
    let mut end = 40;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}-{hex}", &name[..end])
}

/// The longest duration Go's `time.Duration` holds (int64 nanoseconds, about 292 years).
/// Flux's controllers parse every duration into one, so anything longer is invalid for Flux
/// too, even where a CRD pattern lets it through.
pub const MAX_GO_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// Parse a Go `time.Duration` string as Flux writes it ("5m", "1m30s", "10m0s", "500ms").
/// Exact (integer arithmetic, no float rounding) and total: any input, however long or odd,
/// gives `None` rather than a panic; a value beyond [`MAX_GO_DURATION`] is `None`, as Go's
/// `time.ParseDuration` rejects it.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let max = MAX_GO_DURATION.as_nanos();
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let frac_part = match rest.strip_prefix('.') {
            Some(r) => {
                let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                rest = &r[n..];
                &r[..n]
            }
            None => "",
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        // Integer part: digits beyond what fits are an overflow, not a wrap.
        let mut whole: u128 = 0;
        for d in int_part.bytes() {
            whole = whole.checked_mul(10)?.checked_add((d - b'0') as u128)?;
            if whole > max {
                return None;
            }
        }
        let mut nanos = whole.checked_mul(unit)?;
        // Fraction: scaled by the unit, truncated like Go (digits past nanosecond precision drop).
        let mut scale = unit;
        for d in frac_part.bytes().take(20) {
            scale /= 10;
            nanos = nanos.checked_add((d - b'0') as u128 * scale)?;
        }
        total = total.checked_add(nanos)?;
        if total > max {
            return None;
        }
    }
    u64::try_from(total).ok().map(Duration::from_nanos)
}

/// Render a duration the way Flux and kubectl users write it ("90s" -> "1m30s").
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("10m0s"), Some(Duration::from_secs(600)));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("5 minutes"), None);
        assert_eq!(parse_go_duration("m5"), None);
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("."), None);
        assert_eq!(parse_go_duration("1.2.3s"), None);
    }

    #[test]
    fn overflowing_durations_are_invalid_never_a_panic() {
        // Both Flux's CRD pattern and fluxmedic's accept these strings.
        assert_eq!(parse_go_duration("99999999999999999999h"), None);
        assert_eq!(
            parse_go_duration("2562048h"),
            None,
            "just past Go's int64 nanoseconds"
        );
        assert_eq!(
            parse_go_duration("2562047h"),
            Some(Duration::from_secs(2_562_047 * 3600))
        );
        assert_eq!(
            parse_go_duration("2562047h47m16s854775807ns"),
            Some(MAX_GO_DURATION)
        );
        assert_eq!(parse_go_duration("2562047h47m16s854775808ns"), None);
        assert_eq!(parse_go_duration(&"9".repeat(40)), None);
        assert_eq!(
            parse_go_duration(&format!("1.{}s", "9".repeat(50))),
            Some(Duration::from_nanos(1_999_999_999)),
            "extra fraction digits are dropped, as Go does"
        );
        assert_eq!(
            parse_go_duration(&format!("1.{}s", "9".repeat(70))),
            None,
            "too long"
        );
        assert_eq!(
            parse_go_duration("0.0000000019s"),
            Some(Duration::from_nanos(1)),
            "truncated to nanoseconds like Go"
        );
    }

    #[test]
    fn long_release_names_are_shortened_like_helm_controller() {
        // helm-controller internal/release/name_test.go
        assert_eq!(shorten_release_name("release-name"), "release-name");
        assert_eq!(
            shorten_release_name(
                "release-name-with-very-long-name-which-is-longer-than-53-characters"
            ),
            "release-name-with-very-long-name-which-i-788ca0d0d7b0"
        );
        assert_eq!(
            shorten_release_name(
                "another-release-name-with-very-long-name-which-is-longer-than-53-characters"
            ),
            "another-release-name-with-very-long-name-7e72150d5a36"
        );
        assert_eq!(shorten_release_name(""), "");
        let exactly = "a".repeat(53);
        assert_eq!(shorten_release_name(&exactly), exactly);
    }

    #[test]
    fn durations_render_compactly() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn kinds_roundtrip() {
        for k in FluxKind::ALL {
            assert_eq!(FluxKind::from_kind(k.as_str()), Some(k));
        }
        assert_eq!(FluxKind::from_kind("Deployment"), None);
    }
}
