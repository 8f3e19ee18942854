//! kmm-rs common library: the `Module` API (`kmm.sigs.x-k8s.io/v1beta1`), its CRD,
//! and the pure decisions (eligibility, kernel mapping, substitution) shared by
//! the agent and the controller.
#![warn(missing_docs)]

pub mod api;
pub mod crd;
pub mod image;
pub mod labels;
pub mod targeting;
#[cfg(test)]
mod test_support;
pub mod validation;

pub use api::cel::MAX_COMBINED_NAME_LENGTH;
pub use api::module::{
    Build, BuildArg, DaemonSetStatus, DevicePluginContainerSpec, DevicePluginSpec, DraSpec,
    KanikoParams, KernelMapping, ModprobeArgs, ModprobeSpec, Module, ModuleLoaderContainerSpec,
    ModuleLoaderSpec, ModuleSpec, ModuleStatus, Sign, TlsOptions,
};
pub use api::nmc::{
    ModuleConfig, ModuleError, ModuleItem, NodeModuleSpec, NodeModuleStatus, NodeModulesConfig,
    NodeModulesConfigSpec, NodeModulesConfigStatus,
};
pub use labels::{
    MODULE_FINALIZER, NAMESPACE_CONTAINS_MODULES_LABEL, NODE_LABEL_PREFIX,
    device_plugin_ready_label, ready_label, version_module_label, version_ready_label,
};
pub use targeting::{
    Ineligible, ResolvedMapping, Target, Vars, node_eligibility, node_kernel_version,
    resolve_mapping, selector_matches, substitute, target_node,
};
pub use validation::{ValidationError, validate_module, validate_module_update};
