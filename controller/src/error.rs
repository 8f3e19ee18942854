//! Errors of the Module and PreflightValidation reconcilers.

use kube::runtime::finalizer;

/// Why a reconcile did not finish.
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
    /// Deletion waits: these nodes still report the Module loaded (NMC status or
    /// `.ready` label). Not a failure; retried until the agents have unloaded.
    #[error("waiting for {} node(s) to unload: {}", nodes.len(), nodes.join(", "))]
    StillUnloading {
        /// Nodes still reporting the Module.
        nodes: Vec<String>,
    },
    /// The Module cannot be turned into objects (e.g. no namespace).
    #[error("invalid Module: {0}")]
    InvalidModule(String),
    /// A PreflightValidation the reconciler cannot act on (e.g. no uid yet).
    #[error("invalid PreflightValidation: {0}")]
    InvalidPreflight(String),
    /// Adding or removing the finalizer failed (or a wrapped apply/cleanup error).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// Wraps an API error with what it was for.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            what: what.into(),
            source,
        }
    }

    /// The innermost reconcile error (unwrapping the finalizer layer).
    pub fn inner(&self) -> &Self {
        match self {
            Self::Finalizer(f) => match f.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            other => other,
        }
    }

    /// Short label by kind, for `kmm_controller_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self.inner() {
            Self::Kube { .. } => "kube_api",
            Self::StillUnloading { .. } => "still_unloading",
            Self::InvalidModule(_) => "invalid_module",
            Self::InvalidPreflight(_) => "invalid_preflight",
            Self::Finalizer(_) => "finalizer",
        }
    }
}

/// Result of reconcile steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
