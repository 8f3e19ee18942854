//! Why an action failed; [`ActionError::reason`] is the shared [`Reason`] code.

use kmm_common::Reason;

use crate::kernel;
use crate::load_sequence::StepError;

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The pull secret could not be read.
    #[error("reading imageRepoSecret {name}: {message}")]
    PullSecret {
        /// Secret name.
        name: String,
        /// What went wrong (API error, or not a docker config).
        message: String,
    },
    /// Pulling or unpacking the image failed.
    #[error("pulling {image}: {source}")]
    Pull {
        /// Image reference.
        image: String,
        /// Cause.
        #[source]
        source: crate::image::ImageError,
    },
    /// The image is not in the registry yet and the controller builds or
    /// signs it: the node waits for it (retried at a steady pace, no warning).
    #[error("waiting for {image} to be built or signed in the cluster (not in the registry yet)")]
    WaitingForImage {
        /// Image reference.
        image: String,
    },
    /// The image does not hold the modules for this kernel, or a load failed.
    #[error("{0}")]
    Kernel(#[from] kernel::Error),
    /// Unloading failed (e.g. the module is in use); the module stays loaded.
    #[error("unloading: {0}")]
    Unload(#[source] kernel::Error),
    /// A step of the load sequence (in-tree removal, firmware, load) failed.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The state file could not be written.
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    /// The Module asks for something the agent refuses (e.g. a path leaving the image).
    #[error("invalid Module: {0}")]
    InvalidSpec(String),
    /// A module of the same name but another build is in the kernel.
    #[error(
        "kernel module {module} is already loaded but is not this Module's build (srcversion {loaded} in the kernel, {wanted} in the image){}; it is neither used nor unloaded: list it in inTreeModulesToRemove to replace it",
        owner.as_ref().map(|o| format!(", loaded by Module {o}")).unwrap_or_default()
    )]
    Foreign {
        /// The kernel module.
        module: String,
        /// srcversion in the kernel.
        loaded: String,
        /// srcversion in the image.
        wanted: String,
        /// The other Module that loaded it, if it was one of ours.
        owner: Option<String>,
    },
    /// The Module's ready labels could not be taken off the Node to stop its
    /// device plugin before the unload: the loaded version stays.
    #[error(
        "unloading: could not remove the node's ready labels to stop the device plugin first: {0}"
    )]
    PluginLabels(#[source] crate::node_labels::LabelError),
    /// The pull was cancelled because the Module is no longer wanted here.
    #[error("cancelled: the Module changed or is no longer wanted on this node")]
    Cancelled,
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl ActionError {
    /// The reason code for status, events and the failures metric.
    pub fn reason(&self) -> Reason {
        match self {
            ActionError::PullSecret { .. } => Reason::PullSecretFailed,
            ActionError::Pull { .. } => Reason::ImagePullFailed,
            ActionError::WaitingForImage { .. } => Reason::WaitingForImage,
            ActionError::Kernel(e) | ActionError::Step(StepError::Kernel(e)) => kernel_reason(e),
            ActionError::Unload(_) | ActionError::PluginLabels(_) => Reason::UnloadFailed,
            ActionError::Step(StepError::InTree { .. }) => Reason::InTreeRemovalFailed,
            ActionError::Step(StepError::Firmware(_)) => Reason::FirmwareFailed,
            ActionError::State(_) => Reason::StateWriteFailed,
            ActionError::InvalidSpec(_) => Reason::InvalidModuleSpec,
            ActionError::Foreign { .. } => Reason::ForeignModuleLoaded,
            ActionError::Cancelled | ActionError::Join(_) => Reason::Internal,
        }
    }

    /// Whether this is a wait rather than a failure (no backoff growth, no warning).
    pub fn is_wait(&self) -> bool {
        self.reason().is_wait()
    }
}

/// A request the kernel layer refuses before touching the kernel is a spec
/// problem (retrying cannot help); anything else the kernel did is a load failure.
fn kernel_reason(e: &kernel::Error) -> Reason {
    match e {
        kernel::Error::Invalid { .. } | kernel::Error::BadLoadingOrder { .. } => {
            Reason::InvalidModuleSpec
        }
        _ => Reason::ModprobeFailed,
    }
}
