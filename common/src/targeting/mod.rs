//! Targeting: which nodes a Module applies to and what to load there, as pure functions.
//!
//! - [`mod@substitute`]: `${KERNEL_FULL_VERSION}`, `${MOD_NAME}`, `${MOD_NAMESPACE}` expansion;
//! - [`mod@mapping`]: the first kernel mapping that matches a kernel, merged with the container
//!   defaults into a [`ResolvedMapping`];
//! - [`eligibility`]: selector, kernel and ordered-upgrade version checks for one node;
//! - [`taints`]: which taint keeps a new load off a node (never unloads);
//! - [`rollout_scope`]: which nodes a `ModuleRollout` upgrades.
//!
//! Nothing here panics on user input; failures are [`Ineligible`] values whose `Display` is a
//! sentence a user can act on.

pub mod eligibility;
pub mod mapping;
pub mod rollout_scope;
pub mod substitute;
pub mod taints;

pub use eligibility::{node_eligibility, node_kernel_version, selector_matches, target_node};
pub use mapping::{ResolvedMapping, Target, kernel_matches, resolve_mapping};
pub use rollout_scope::in_rollout_scope;
pub use substitute::{Vars, substitute};
pub use taints::{
    UNSCHEDULABLE_TAINT, check_node_taints, check_taints, node_taints, untolerated_taint,
};

/// Why a Module does not apply to a node (or cannot be resolved for its kernel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ineligible {
    /// The Module has no `spec.moduleLoader`, so there is nothing to load.
    #[error("Module has no spec.moduleLoader")]
    NoModuleLoader,
    /// A selector label is missing on the node or has another value.
    #[error("{}", label_mismatch("selector label", key, actual.as_deref(), wanted))]
    SelectorMismatch {
        /// Selector key.
        key: String,
        /// Value the Module's selector wants.
        wanted: String,
        /// Value on the node, if the label exists.
        actual: Option<String>,
    },
    /// The node does not report its kernel (`status.nodeInfo.kernelVersion`).
    #[error("node reports no kernel version (status.nodeInfo.kernelVersion is empty)")]
    NoKernelVersion,
    /// No kernel mapping matches the node's kernel.
    #[error("kernel {kernel} matches no kernelMapping")]
    NoMatchingMapping {
        /// The node's kernel.
        kernel: String,
    },
    /// A mapping's regexp does not compile (reached before any mapping matched).
    #[error("invalid regexp '{regexp}' in kernelMappings[{index}]: {error}")]
    InvalidRegexp {
        /// Index of the mapping.
        index: usize,
        /// The regexp as written.
        regexp: String,
        /// The compiler's message.
        error: String,
    },
    /// The matching mapping has no image and the container level has none either.
    #[error(
        "kernelMappings[{index}] matches kernel {kernel} but neither it nor container.containerImage sets an image"
    )]
    MissingImage {
        /// Index of the mapping.
        index: usize,
        /// The node's kernel.
        kernel: String,
    },
    /// Ordered upgrade: the node's version label does not equal `container.version`.
    #[error("{}", label_mismatch("label", label, actual.as_deref(), wanted))]
    VersionMismatch {
        /// `kmm.node.kubernetes.io/version-module.<ns>.<name>`.
        label: String,
        /// `container.version`.
        wanted: String,
        /// Value on the node, if the label exists.
        actual: Option<String>,
    },
    /// A `NoSchedule`/`NoExecute` taint of the node is not in `spec.tolerations`: nothing new
    /// is loaded there, but a module already loaded stays (a cordon never unloads a driver).
    #[error(
        "node taint {taint} is not tolerated by spec.tolerations: nothing is loaded here while it stays, a module already loaded is kept"
    )]
    UntoleratedTaint {
        /// `key=value:Effect`.
        taint: String,
    },
}

fn label_mismatch(what: &str, key: &str, actual: Option<&str>, wanted: &str) -> String {
    match actual {
        Some(actual) => format!("node {what} {key} is {actual}, Module wants {wanted}"),
        None => format!("node has no {what} {key}, Module wants {wanted}"),
    }
}
