//! Errors of the rollout reconciler.

/// Why a rollout pass did not finish (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What the call was for.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The ModuleRollout lacks what every stored object has (namespace, uid).
    #[error("invalid ModuleRollout: {0}")]
    Invalid(String),
}

impl Error {
    /// Wraps an API error with what it was for.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source,
        }
    }

    /// Short label by kind, for `kmm_rollout_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube_api",
            Self::Invalid(_) => "invalid_rollout",
        }
    }
}

/// Result of rollout steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
