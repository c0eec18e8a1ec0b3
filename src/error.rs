//! Errors of the IO layer. Each carries a category used as the metric label and the
//! Event reason, and says whether retrying can help.

use crate::{flux::ObjectKey, helm::DecodeError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("helm: {0}")]
    Helm(String),
    #[error("corrupt Helm release: {0}")]
    CorruptRelease(#[from] DecodeError),
    #[error(transparent)]
    NotLeader(#[from] crate::limiter::NotLeader),
    #[error("{0}")]
    Timeout(String),
    /// A Helm action asked to run as no valid ServiceAccount.
    #[error(
        "no valid identity to act as ({0}): a Helm action never runs with fluxmedic's own rights"
    )]
    NoIdentity(String),
    /// A connection without the configuration impersonation needs (the command line).
    #[error("this command cannot act as another identity")]
    CannotImpersonate,
    /// A view without a resourceVersion: nothing is suspended on it.
    #[error("no resourceVersion for {0}: not suspended on an unversioned view")]
    Unversioned(ObjectKey),
    #[error("{0} is gone")]
    TargetGone(ObjectKey),
    #[error("{0} is not a HelmRelease")]
    NotHelmRelease(ObjectKey),
    #[error("revision {revision} of {release} is gone from Helm storage")]
    RevisionGone { release: String, revision: i64 },
    /// A Secret that is not the release's own storage: never touched.
    #[error("{secret} is not {release}'s Helm storage: {why}; not touched")]
    NotReleaseStorage {
        secret: String,
        release: String,
        why: String,
    },
    /// A JSON patch fluxmedic built that does not parse (a defect, never retried blindly).
    #[error("bad JSON patch: {0}")]
    BadPatch(String),
    /// Decoding or encoding a release payload did not finish.
    #[error("release payload {0}")]
    Codec(String),
    #[error("no free Remediation name for {0}: 16 records of this failure exist")]
    NoFreeName(ObjectKey),
    /// The lifecycle asked for a record write with no record (a defect of the lifecycle).
    #[error("an effect without a record")]
    NoRecord,
    /// An action's outcome folded into an effect it cannot have (a defect of the lifecycle).
    #[error("an outcome cannot {0}")]
    UnexpectedEffect(&'static str),
    /// The engine's step that failed, and why.
    #[error("{step}: {source}")]
    At {
        step: Stage,
        #[source]
        source: Box<Error>,
    },
}

/// The steps of the engine, each named in the error of a failed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    CreateRecord,
    WriteRecord,
    CloseRecord,
    ReleaseHold,
    /// Performing the action (its name).
    Act(&'static str),
    RecordOutcome,
    ResumeOrphanedHold,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::CreateRecord => f.write_str("creating the Remediation"),
            Stage::WriteRecord => f.write_str("writing the Remediation's status"),
            Stage::CloseRecord => f.write_str("closing the Remediation"),
            Stage::ReleaseHold => f.write_str("releasing the hold"),
            Stage::Act(a) => write!(f, "performing {a}"),
            Stage::RecordOutcome => f.write_str("recording the outcome"),
            Stage::ResumeOrphanedHold => f.write_str("resuming a suspension no record holds"),
        }
    }
}

impl Error {
    /// This error as the cause of `step` failing.
    pub fn at(step: Stage) -> impl FnOnce(Error) -> Error {
        move |e| Error::At {
            step,
            source: Box::new(e),
        }
    }

    /// The step that failed, when the engine said.
    pub fn step(&self) -> Option<Stage> {
        match self {
            Error::At { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// What failed, without the step around it.
    pub fn cause(&self) -> &Error {
        match self {
            Error::At { source, .. } => source.cause(),
            e => e,
        }
    }

    /// Stable, low-cardinality category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self.cause() {
            Error::Kube(kube::Error::Api(s)) => match s.code {
                _ if s.reason == "Timeout"
                    || s.code == 504
                    || s.message.contains("context deadline exceeded") =>
                {
                    "Timeout"
                }
                409 => "Conflict",
                403 => "Forbidden",
                404 => "NotFound",
                422 | 400 => "Invalid",
                429 => "Throttled",
                500..=599 => "ApiUnavailable",
                _ => "ApiError",
            },
            Error::Kube(_) => "ApiUnreachable",
            Error::Helm(_) => "HelmFailed",
            Error::CorruptRelease(_) => "CorruptRelease",
            Error::NotLeader(_) => "NotLeader",
            Error::Timeout(_) => "Timeout",
            Error::NoIdentity(_)
            | Error::CannotImpersonate
            | Error::Unversioned(_)
            | Error::TargetGone(_)
            | Error::NotHelmRelease(_)
            | Error::RevisionGone { .. }
            | Error::NotReleaseStorage { .. }
            | Error::BadPatch(_)
            | Error::Codec(_)
            | Error::NoFreeName(_)
            | Error::NoRecord
            | Error::UnexpectedEffect(_)
            | Error::At { .. } => "PreconditionFailed",
        }
    }

    /// Whether the same step may succeed later without a change of input.
    pub fn is_transient(&self) -> bool {
        crate::incident::retry_can_help(self.category())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        })))
    }

    #[test]
    fn api_errors_get_stable_categories() {
        assert_eq!(api(409, "Conflict", "modified").category(), "Conflict");
        assert_eq!(api(403, "Forbidden", "no").category(), "Forbidden");
        assert_eq!(api(504, "Timeout", "").category(), "Timeout");
        // A webhook that did not answer in time: the apiserver's 500 names the deadline.
        let webhook = api(
            500,
            "InternalError",
            "Internal error occurred: failed calling webhook \"x\": context deadline exceeded",
        );
        assert_eq!(webhook.category(), "Timeout");
        assert!(webhook.is_transient());
        assert_eq!(
            api(503, "ServiceUnavailable", "").category(),
            "ApiUnavailable"
        );
        assert_eq!(api(422, "Invalid", "").category(), "Invalid");
        assert!(!api(422, "Invalid", "").is_transient());
    }

    #[test]
    fn a_failed_step_is_named_and_keeps_its_cause_category() {
        let key = ObjectKey::new(crate::flux::FluxKind::HelmRelease, "apps", "web");
        let e = Error::at(Stage::Act("rollback"))(api(409, "Conflict", "modified"));
        assert_eq!(e.step(), Some(Stage::Act("rollback")));
        assert_eq!(e.category(), "Conflict");
        assert!(
            e.to_string()
                .starts_with("performing rollback: Kubernetes API")
        );
        let gone = Error::at(Stage::WriteRecord)(Error::TargetGone(key.clone()));
        assert_eq!(gone.category(), "PreconditionFailed");
        assert_eq!(
            gone.to_string(),
            "writing the Remediation's status: HelmRelease/apps/web is gone"
        );
        assert!(matches!(gone.cause(), Error::TargetGone(k) if k == &key));
        let leader = Error::at(Stage::CreateRecord)(Error::NotLeader(crate::limiter::NotLeader));
        assert!(matches!(leader.cause(), Error::NotLeader(_)));
        assert_eq!(leader.category(), "NotLeader");
    }
}
