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

/// Every reason.
pub const ALL: &[Reason] = &[
    Reason::PullSecretFailed,
    Reason::ImagePullFailed,
    Reason::WaitingForImage,
    Reason::ModprobeFailed,
    Reason::UnloadFailed,
    Reason::InTreeRemovalFailed,
    Reason::FirmwareFailed,
    Reason::StateWriteFailed,
    Reason::InvalidModuleSpec,
    Reason::ForeignModuleLoaded,
    Reason::Internal,
];

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

    /// The reason whose code is `code`, if it is one of these.
    pub fn parse(code: &str) -> Option<Self> {
        ALL.iter().copied().find(|r| r.as_str() == code)
    }

    /// What an operator can do about it, where there is more to say than the message.
    pub fn advice(self) -> Option<&'static str> {
        match self {
            Reason::UnloadFailed => Some(
                "the module is in use: stop its users on the node (unmount, stop the processes or the device plugin holding it; see /sys/module/<module>/holders and refcnt); the agent retries with backoff and unloads it once free, or reboot the node",
            ),
            Reason::ForeignModuleLoaded => Some(
                "another build of this kernel module is loaded (e.g. the in-tree driver loaded by udev at boot): add its name to inTreeModulesToRemove to replace it, or remove it by hand; the agent never unloads a module it did not insert",
            ),
            Reason::InvalidModuleSpec => Some(
                "the agent refuses this Module as written and does not retry until it changes: fix the field the message names",
            ),
            _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_parses_back_from_its_code() {
        for r in ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
        assert_eq!(Reason::parse("NoSuchReason"), None);
        assert!(
            Reason::UnloadFailed
                .advice()
                .is_some_and(|a| a.contains("in use"))
        );
    }
}
