//! Reason codes a node reports for a Module (NodeModulesConfig `lastError.reason`,
//! the agent's Warning events and its `failures_total{reason}` metric): one
//! vocabulary for the agent that writes them and the controller and `kmmctl
//! explain` that read them.

/// Why a Module is not (or not fully) as wanted on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The `imageRepoSecret` could not be read or is not a docker config.
    PullSecretFailed,
    /// The image could not be pulled or unpacked.
    ImagePullFailed,
    /// The image is being built or signed in the cluster (progress, not failure).
    WaitingForImage,
    /// Loading the kernel modules failed.
    ModprobeFailed,
    /// Unloading the kernel modules failed (e.g. in use); retried with backoff.
    UnloadFailed,
    /// An `inTreeModulesToRemove` module could not be removed.
    InTreeRemovalFailed,
    /// Installing firmware failed.
    FirmwareFailed,
    /// The agent's state file could not be written.
    StateWriteFailed,
    /// The Module asks for something the agent always refuses; not retried until it changes.
    InvalidModuleSpec,
    /// A module of the same name but another build is in the kernel, not loaded by
    /// this Module: it is neither adopted nor unloaded.
    ForeignModuleLoaded,
    /// A bug or a task that died.
    Internal,
}

impl Reason {
    /// The CamelCase code written to status, events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PullSecretFailed => "PullSecretFailed",
            Reason::ImagePullFailed => "ImagePullFailed",
            Reason::WaitingForImage => crate::REASON_WAITING_FOR_IMAGE,
            Reason::ModprobeFailed => "ModprobeFailed",
            Reason::UnloadFailed => "UnloadFailed",
            Reason::InTreeRemovalFailed => "InTreeRemovalFailed",
            Reason::FirmwareFailed => "FirmwareFailed",
            Reason::StateWriteFailed => "StateWriteFailed",
            Reason::InvalidModuleSpec => "InvalidModuleSpec",
            Reason::ForeignModuleLoaded => "ForeignModuleLoaded",
            Reason::Internal => "Internal",
        }
    }

    /// Whether the node is waiting (progress), not failing.
    pub fn is_wait(self) -> bool {
        matches!(self, Reason::WaitingForImage)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
