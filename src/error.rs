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
}

impl Error {
    /// Stable, low-cardinality category for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) => match s.code {
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
        }
    }

    /// Whether the same step may succeed later without a change of input.
    pub fn is_transient(&self) -> bool {
        !matches!(self.category(), "Invalid" | "CorruptRelease")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
