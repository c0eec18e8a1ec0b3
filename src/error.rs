//! Errors of the IO layer. Each carries a category used as the metric label and the
//! Event reason, and says whether retrying can help.

use crate::helm::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("helm: {0}")]
    Helm(String),
    #[error("corrupt Helm release: {0}")]
    CorruptRelease(#[from] DecodeError),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    NotLeader(#[from] crate::limiter::NotLeader),
    #[error("{0}")]
    Timeout(String),
}

impl Error {
    /// Stable, low-cardinality category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
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
            Error::Precondition(_) => "PreconditionFailed",
            Error::NotLeader(_) => "NotLeader",
            Error::Timeout(_) => "Timeout",
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
}
