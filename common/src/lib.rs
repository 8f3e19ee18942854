//! kmm-rs common library: the `Module` API (`kmm.sigs.x-k8s.io/v1beta1`), its CRD,
//! and the pure decisions (eligibility, kernel mapping, substitution) shared by
//! the agent and the controller.
#![warn(missing_docs)]

pub mod api;
pub mod crd;

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
