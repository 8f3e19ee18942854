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

    /// The error of a pass run through [`kube::runtime::finalizer`]: the pass's own, or the
    /// finalizer's add or remove failing.
    pub fn from_finalizer(e: kube::runtime::finalizer::Error<Self>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(e) => Self::kube("adding the finalizer", e),
            F::RemoveFinalizer(e) => Self::kube("removing the finalizer", e),
            other => Self::Invalid(other.to_string()),
        }
    }

    /// Every [`Error::metric_label`], for the counter's series at 0.
    pub const METRIC_LABELS: [&'static str; 2] = ["kube_api", "invalid_rollout"];

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

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn every_metric_label_is_listed_for_the_zero_series() {
        let errors = [
            Error::kube("x", kube::Error::LinesCodecMaxLineLengthExceeded),
            Error::Invalid("x".into()),
        ];
        for e in &errors {
            assert!(Error::METRIC_LABELS.contains(&e.metric_label()), "{e}");
        }
        assert_eq!(errors.len(), Error::METRIC_LABELS.len());
    }
}
