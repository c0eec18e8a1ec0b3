//! Condition classifier: (kind, condition type, reason) first, then the message.
//!
//! Message formats follow helm-controller, kustomize-controller, source-controller
//! and fluxcd/pkg (ssa, git/gogit); see docs/cases.md.

use std::sync::LazyLock;

use regex::RegexSet;

use super::Case;
use crate::flux::FluxKind;

/// Result of classifying one condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    pub case: Case,
    /// Whether retrying the same input can succeed (a timeout can; a schema error cannot).
    pub retryable: bool,
    /// A short, stable explanation of the rule that matched (shown in evidence).
    pub rule: &'static str,
}

const fn c(case: Case, retryable: bool, rule: &'static str) -> Classification {
    Classification {
        case,
        retryable,
        rule,
    }
}

/// Helm's errPending, the text of a held release lock.
pub const HELM_LOCK_TEXT: &str = "another operation (install/upgrade/rollback) is in progress";

static NON_RETRYABLE_RELEASE: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"values don't meet the specifications of the schema",
        r"(?i)field is immutable",
        r"Invalid value: .*: field is immutable",
        r"unable to build kubernetes objects from release manifest",
        r"rendered manifests contain a resource that already exists",
        r"invalid ownership metadata",
        r"(?i)parse error|YAML parse error|template: .*: (executing|function)",
        r"chart requires kubeVersion",
        r"execution error at \(",
        r"missing target release for rollback",
        r"\bis invalid\b",
    ])
    .expect("static regexes")
});

static MISSING_CRD: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([r#"no matches for kind "#, r"resource mapping not found"])
        .expect("static regexes")
});

static TRANSIENT: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"context deadline exceeded",
        r"timed out waiting for the condition",
        r"timeout waiting for: \[",
        r"failed early due to stalled resources",
        r"(pre|post)-(install|upgrade|rollback) hooks failed",
        r"failed (pre|post)-(install|upgrade)",
        r"failed to call webhook",
        r"(?i)connection refused|connection reset|i/o timeout|TLS handshake timeout|\bEOF\b",
        r"(?i)retrying in",
        r"(?i)too many requests|rate limit|etcdserver: request timed out|the object has been modified",
    ])
    .expect("static regexes")
});

static GIT_AUTH: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"authentication required",
        r"authorization failed",
        r"unable to authenticate",
        r"knownhosts|known_hosts",
        r"failed to get secret",
        r"failed to configure authentication options",
        r"'identity' is required|identity is required",
        r"(?i)auth error",
        r"(?i)invalid .* secret data",
        r"(?i)successfully authenticated",
        r"(?i)permission denied \(publickey",
        r"repository not found",
    ])
    .expect("static regexes")
});

static GIT_NETWORK: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"dial tcp",
        r"no such host",
        r"server misbehaving",
        r"i/o timeout",
        r"connection refused",
        r"connection reset",
        r"\bEOF\b",
        r"TLS handshake timeout",
        r"context deadline exceeded",
        r"(?i)network is unreachable",
        r"(?i)unexpected (client|server) error|status code: 5\d\d|502|503|504",
    ])
    .expect("static regexes")
});

static INVALID_MANIFEST_APPLY: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"dry-run failed \(Invalid\)",
        r"dry-run failed, reason: Invalid",
        r"dry-run failed: .*(is invalid|Invalid value|unknown field)",
        r"dry-run failed \(BadRequest\)",
    ])
    .expect("static regexes")
});

/// A registry, chart repository or bucket refusing the credentials (go-containerregistry's
/// registry errors, Helm's getter, the S3/GCS/Azure clients).
static SOURCE_AUTH: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"\bUNAUTHORIZED\b",
        r"\bDENIED\b",
        r"(?i)\b401\b|\bunauthorized\b",
        r"(?i)\b403\b.*forbidden|status code 403",
        r"(?i)authentication required|failed to authenticate|failed to get credential",
        r"(?i)access denied|InvalidAccessKeyId|SignatureDoesNotMatch|does not exist in our records",
        r"(?i)AuthorizationFailure|AuthenticationFailed|invalid_grant",
    ])
    .expect("static regexes")
});

/// The artifact, tag, chart version or bucket does not exist.
static SOURCE_NOT_FOUND: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new([
        r"MANIFEST_UNKNOWN|NAME_UNKNOWN|BLOB_UNKNOWN",
        r"(?i)\b404\b|status code 404",
        r"no '.*' chart with version matching",
        r"bucket '.*' not found|NoSuchBucket|BucketNotFound|ContainerNotFound",
        r"(?i)no matching tag|tag .* not found|not found in repository|couldn't find tag",
    ])
    .expect("static regexes")
});

/// Reasons of a fetched artifact that cannot be used (source-controller's condition reasons
/// and Helm chart build reasons).
const INVALID_ARTIFACT_REASONS: &[&str] = &[
    "OCIArtifactLayerOperationFailed",
    "IndexationFailed",
    "URLInvalid",
    "VerificationError",
    "InvalidChartReference",
    "MetadataPatchError",
    "ValuesFilesError",
    "DependencyBuildError",
    "ChartPackageError",
    "ChartVerificationError",
];

/// OCIRepository, HelmRepository, HelmChart, Bucket (source-controller v1.7-v1.9 formats):
/// credentials vs reachability vs a missing artifact vs an unusable one. The first two are the
/// runbook's source cases (`git-auth`, `git-unreachable`, named for the commonest source).
fn classify_artifact_source(reason: &str, message: &str) -> Classification {
    use Case::*;
    if reason == "AuthenticationFailed" {
        return c(
            GitAuth,
            false,
            "the source's credentials are missing or invalid",
        );
    }
    if INVALID_ARTIFACT_REASONS.contains(&reason) {
        return c(
            Other,
            false,
            "the artifact was fetched but cannot be used (invalid content, reference or signature)",
        );
    }
    if SOURCE_AUTH.is_match(message) {
        c(
            GitAuth,
            false,
            "the registry, repository or bucket rejected the credentials",
        )
    } else if SOURCE_NOT_FOUND.is_match(message) {
        c(
            Other,
            false,
            "the artifact, tag, chart version or bucket does not exist",
        )
    } else if GIT_NETWORK.is_match(message) {
        c(
            GitUnreachable,
            true,
            "the registry, repository or bucket could not be reached",
        )
    } else {
        c(Other, transient(message), "source not ready")
    }
}

fn transient(message: &str) -> bool {
    TRANSIENT.is_match(message)
}

/// Classify one condition of a Flux object.
pub fn classify_condition(
    kind: FluxKind,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> Classification {
    use Case::*;
    // Anywhere in Flux, Helm's pending lock shows as this text.
    if kind == FluxKind::HelmRelease && message.contains(HELM_LOCK_TEXT) {
        return c(
            StaleLock,
            true,
            "Helm reports a pending operation holding the release lock",
        );
    }
    if reason == "DependencyNotReady" {
        return c(DependencyCascade, true, "a dependency is not ready");
    }
    match kind {
        FluxKind::HelmRelease => classify_helmrelease(type_, status, reason, message),
        FluxKind::Kustomization => classify_kustomization(type_, reason, message),
        FluxKind::GitRepository => classify_git(reason, message),
        FluxKind::OCIRepository
        | FluxKind::HelmRepository
        | FluxKind::HelmChart
        | FluxKind::Bucket => classify_artifact_source(reason, message),
    }
}

fn classify_helmrelease(type_: &str, status: &str, reason: &str, message: &str) -> Classification {
    use Case::*;
    match (type_, reason) {
        ("Released", "PendingRelease")
            if message.starts_with("Unlock of Helm release") && message.contains("failed") =>
        {
            c(
                StaleLock,
                true,
                "helm-controller could not unlock a pending release",
            )
        }
        (_, "Progressing") | ("Reconciling", _) => {
            c(Other, true, "helm-controller is running a release action")
        }
        ("Stalled", "RetriesExceeded") => c(FailedRelease, true, "retries exhausted"),
        ("Stalled", "MissingRollbackTarget") => c(
            FailedRelease,
            false,
            "no rollback target left in Helm storage",
        ),
        (_, "InstallFailed" | "UpgradeFailed" | "RollbackFailed" | "ReconcileError") => {
            if message.ends_with("retries exhausted") {
                return c(FailedRelease, true, "retries exhausted");
            }
            if MISSING_CRD.is_match(message) {
                return c(
                    Other,
                    false,
                    "a CRD the chart needs is missing (ordering: add dependsOn on the CRD release)",
                );
            }
            if NON_RETRYABLE_RELEASE.is_match(message) {
                return c(
                    FailedRelease,
                    false,
                    "the release input is invalid; the fix must come from Git",
                );
            }
            c(FailedRelease, true, "the release action failed")
        }
        (_, "RollbackSucceeded" | "UninstallSucceeded") => c(
            FailedRelease,
            false,
            "Flux already remediated natively; the failing upgrade needs a fix in Git",
        ),
        (_, "TestFailed") => c(Other, false, "Helm tests failed"),
        _ if status == "Unknown" => c(Other, true, "status unknown"),
        _ => c(Other, transient(message), "HelmRelease not ready"),
    }
}

fn classify_kustomization(type_: &str, reason: &str, message: &str) -> Classification {
    use Case::*;
    let _ = type_;
    match reason {
        "BuildFailed" => {
            if message.contains("decrypt")
                || message.contains("sops")
                || message.contains("decryption")
            {
                c(Other, false, "SOPS decryption failed")
            } else {
                c(InvalidManifests, false, "kustomize build failed")
            }
        }
        "ArtifactFailed" if message.contains("kustomization path not found") => c(
            InvalidManifests,
            false,
            "the path does not exist in the source revision",
        ),
        "ReconciliationFailed" if MISSING_CRD.is_match(message) => c(
            Other,
            false,
            "a CRD the manifests need is missing (ordering: add dependsOn)",
        ),
        "ReconciliationFailed" if INVALID_MANIFEST_APPLY.is_match(message) => c(
            InvalidManifests,
            false,
            "the API server rejected a manifest in dry-run",
        ),
        "HealthCheckFailed"
            if message.contains("HelmRelease/") || message.contains("Kustomization/") =>
        {
            c(
                DependencyCascade,
                true,
                "a health-checked Flux object is failing",
            )
        }
        "AccessDenied" => c(Other, false, "cross-namespace reference blocked"),
        _ => c(Other, transient(message), "Kustomization not ready"),
    }
}

fn classify_git(reason: &str, message: &str) -> Classification {
    use Case::*;
    if message.contains("couldn't find remote ref") {
        return c(Other, false, "the branch or tag does not exist");
    }
    match reason {
        "AuthenticationFailed" => c(
            GitAuth,
            false,
            "the credentials Secret is missing or invalid",
        ),
        "GitOperationFailed" | "FetchFailed" | "" => {
            if GIT_AUTH.is_match(message) {
                c(GitAuth, false, "the Git server rejected the credentials")
            } else if GIT_NETWORK.is_match(message) {
                c(GitUnreachable, true, "the Git server could not be reached")
            } else {
                c(Other, transient(message), "Git operation failed")
            }
        }
        _ => c(Other, transient(message), "GitRepository not ready"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hr(reason: &str, message: &str) -> Classification {
        classify_condition(FluxKind::HelmRelease, "Ready", "False", reason, message)
    }

    #[test]
    fn release_retryability() {
        assert!(
            hr(
                "UpgradeFailed",
                "Helm upgrade failed for release a/b with chart c@1: context deadline exceeded"
            )
            .retryable
        );
        let schema = hr(
            "UpgradeFailed",
            "Helm upgrade failed for release a/b with chart c@1: values don't meet the specifications of the schema(s) in the following chart(s):\nc:\n- replicas: Invalid type",
        );
        assert_eq!(schema.case, Case::FailedRelease);
        assert!(!schema.retryable);
        assert!(!hr("InstallFailed", "Helm install failed for release a/b with chart c@1: execution error at (c/templates/cm.yaml:1:3): boom").retryable);
    }

    /// Messages in the formats of source-controller v1.9 (ocirepository_controller.go,
    /// helmrepository_controller.go, helmchart_controller.go, bucket_controller.go) around the
    /// errors of go-containerregistry, Helm's getter and minio-go.
    #[test]
    fn artifact_source_messages() {
        use Case::*;
        let k = |kind, reason: &str, m: &str| {
            let c = classify_condition(kind, "Ready", "False", reason, m);
            (c.case, c.retryable)
        };
        let oci = FluxKind::OCIRepository;
        let repo = FluxKind::HelmRepository;
        let chart = FluxKind::HelmChart;
        let bucket = FluxKind::Bucket;
        for (kind, reason, message, want) in [
            (
                oci,
                "AuthenticationFailed",
                r#"failed to get credential: secrets "regcred" not found"#,
                (GitAuth, false),
            ),
            (
                oci,
                "OCIArtifactPullFailed",
                "failed to determine artifact digest: GET https://127.0.0.1:5000/v2/app/manifests/latest: UNAUTHORIZED: authentication required; [map[Action:pull Class: Name:app Type:repository]]",
                (GitAuth, false),
            ),
            (
                oci,
                "ReadOperationFailed",
                "failed to determine the artifact tag for 'oci://127.0.0.1:5000/app': GET https://127.0.0.1:5000/v2/app/tags/list: NAME_UNKNOWN: repository name not known to registry; map[name:app]",
                (Other, false),
            ),
            (
                oci,
                "OCIArtifactPullFailed",
                "failed to determine artifact digest: GET https://127.0.0.1:5000/v2/app/manifests/9.9.9: MANIFEST_UNKNOWN: manifest unknown; map[Tag:9.9.9]",
                (Other, false),
            ),
            (
                oci,
                "OCIArtifactPullFailed",
                r#"failed to determine artifact digest: Get "https://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused"#,
                (GitUnreachable, true),
            ),
            (
                oci,
                "OCIArtifactLayerOperationFailed",
                "failed to extract layer contents from artifact: requires gzip-compressed body: gzip: invalid header",
                (Other, false),
            ),
            (
                oci,
                "URLInvalid",
                "URL validation failed for 'oci//x': URL must be in format 'oci://<domain>/<org>/<repo>'",
                (Other, false),
            ),
            (
                repo,
                "Failed",
                "failed to fetch Helm repository index: failed to cache index to temporary file: failed to fetch http://127.0.0.1:8080/charts/index.yaml : 401 Unauthorized",
                (GitAuth, false),
            ),
            (
                repo,
                "Failed",
                "failed to fetch Helm repository index: failed to cache index to temporary file: failed to fetch http://127.0.0.1:8080/nope/index.yaml : 404 Not Found",
                (Other, false),
            ),
            (
                repo,
                "Failed",
                r#"failed to fetch Helm repository index: failed to cache index to temporary file: Get "http://charts.example/index.yaml": dial tcp: lookup charts.example on 10.96.0.10:53: no such host"#,
                (GitUnreachable, true),
            ),
            (
                repo,
                "IndexationFailed",
                "failed to load Helm repository from index YAML: error unmarshaling JSON: while decoding JSON: json: cannot unmarshal string into Go value of type repo.IndexFile",
                (Other, false),
            ),
            (
                chart,
                "ChartPullError",
                "chart pull error: failed to get chart version for remote reference: no 'podinfo' chart with version matching '9.9.9' found",
                (Other, false),
            ),
            (
                chart,
                "ChartPullError",
                "chart pull error: failed to download chart for remote reference: failed to fetch http://127.0.0.1:8080/charts/podinfo-1.0.0.tgz : 401 Unauthorized",
                (GitAuth, false),
            ),
            (
                chart,
                "AuthenticationFailed",
                "failed to authenticate with the Helm repository: secrets \"creds\" not found",
                (GitAuth, false),
            ),
            (
                chart,
                "ValuesFilesError",
                "values files merge error: no values file found at path 'nope.yaml'",
                (Other, false),
            ),
            (
                bucket,
                "BucketOperationFailed",
                "bucket 'apps' not found",
                (Other, false),
            ),
            (
                bucket,
                "BucketOperationFailed",
                "failed to confirm existence of 'apps' bucket: The Access Key Id you provided does not exist in our records.",
                (GitAuth, false),
            ),
            (
                bucket,
                "BucketOperationFailed",
                r#"failed to confirm existence of 'apps' bucket: Get "http://minio:9000/apps/?location=": dial tcp: lookup minio on 10.96.0.10:53: no such host"#,
                (GitUnreachable, true),
            ),
        ] {
            assert_eq!(
                k(kind, reason, message),
                want,
                "{kind:?} {reason}: {message}"
            );
        }
        // A port or a digest that happens to contain 401 or 404 is not an HTTP status.
        assert_eq!(
            k(
                oci,
                "OCIArtifactPullFailed",
                "failed to determine artifact digest: Get \"https://127.0.0.1:14010/v2/\": dial tcp 127.0.0.1:14010: connect: connection refused"
            ),
            (GitUnreachable, true)
        );
    }

    #[test]
    fn git_messages() {
        let g = |m: &str| {
            classify_condition(
                FluxKind::GitRepository,
                "Ready",
                "False",
                "GitOperationFailed",
                m,
            )
            .case
        };
        assert_eq!(
            g(
                "failed to checkout and determine revision: unable to clone 'http://127.0.0.1:1/x': authentication required"
            ),
            Case::GitAuth
        );
        assert_eq!(
            g(
                "failed to checkout and determine revision: unable to clone 'http://127.0.0.1:1/x': dial tcp 127.0.0.1:1: connect: connection refused"
            ),
            Case::GitUnreachable
        );
        assert_eq!(
            g(
                "failed to checkout and determine revision: unable to clone 'x': couldn't find remote ref \"refs/heads/nope\""
            ),
            Case::Other
        );
    }
}
