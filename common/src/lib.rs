//! kmm-rs common library: the `Module` API (`kmm.sigs.x-k8s.io/v1beta1`), its CRD,
//! and the pure decisions (eligibility, kernel mapping, substitution) shared by
//! the agent and the controller.
//!
//! - [`Module`] / [`NodeModulesConfig`]: the API types (drop-in for upstream KMM's
//!   `kmm.sigs.x-k8s.io/v1beta1`); [`crd::module_crd`] / [`crd::nmc_crd`] are the CRDs as
//!   committed in `deploy/crds/` (regenerate with `cargo run -p kmm-common --bin crdgen --
//!   deploy/crds`; a unit test fails when they drift).
//! - [`validate_module`] / [`validate_module_update`]: the admission rules (the CRD's CEL rules
//!   are the schema-checkable subset of the same rules); [`validate_preflight`] for
//!   [`PreflightValidation`] (`kmm.sigs.x-k8s.io/v1beta2`, [`crd::preflight_crd`]).
//! - [`target_node`] / [`node_eligibility`]: whether a node gets a Module and what to load
//!   there ([`ResolvedMapping`]), or an [`Ineligible`] reason a user can read.
//! - [`labels`]: node label keys, the finalizer and the namespace label.
//! - [`nmc`]: how a `NodeModulesConfig` status is read (which entry, loaded or not).
//! - [`modprobe_args`]: `modprobe.args` / `rawArgs` read as modprobe command lines, mapped
//!   onto what the agent loads and unloads (refused flags named, for the webhook and agent).
//!
//! ```
//! use std::collections::BTreeMap;
//! use kmm_common::{Module, target_node, validate_module};
//!
//! let module: Module = serde_yaml::from_str(r#"
//! apiVersion: kmm.sigs.x-k8s.io/v1beta1
//! kind: Module
//! metadata: {name: brd, namespace: kmm-demo}
//! spec:
//!   selector: {}
//!   moduleLoader:
//!     container:
//!       modprobe: {moduleName: brd, parameters: [rd_nr=3]}
//!       kernelMappings:
//!         - regexp: '^.*-amd64$'
//!           containerImage: '10.0.2.2:5000/${MOD_NAMESPACE}/${MOD_NAME}:${KERNEL_FULL_VERSION}'
//! "#).unwrap();
//! assert!(validate_module(&module).is_ok());
//!
//! let target = target_node(&module, &BTreeMap::new(), "6.1.0-56-amd64").unwrap();
//! assert_eq!(target.container_image, "10.0.2.2:5000/kmm-demo/brd:6.1.0-56-amd64");
//!
//! let reason = target_node(&module, &BTreeMap::new(), "6.1.0-56-arm64").unwrap_err();
//! assert_eq!(reason.to_string(), "kernel 6.1.0-56-arm64 matches no kernelMapping");
//! ```
#![warn(missing_docs)]

pub mod api;
#[cfg(test)]
mod corpus_tests;
pub mod crd;
pub mod image;
pub mod labels;
pub mod modprobe_args;
pub mod nmc;
pub mod reason;
pub mod targeting;
#[cfg(test)]
mod test_support;
pub mod validation;

pub use api::cel::MAX_COMBINED_NAME_LENGTH;
pub use api::dra::{DeviceClassSpec, MAX_DNS_SUBDOMAIN_LENGTH};
pub use api::module::{
    Build, BuildArg, CommonContainerSpec, DaemonSetStatus, DevicePluginContainerSpec,
    DevicePluginSpec, DraSpec, KanikoParams, KernelMapping, ModprobeArgs, ModprobeSpec, Module,
    ModuleLoaderContainerSpec, ModuleLoaderSpec, ModuleSpec, ModuleStatus, Sign, TlsOptions,
};
pub use api::nmc::{
    ModuleConfig, ModuleError, ModuleItem, NodeModuleSpec, NodeModuleStatus, NodeModulesConfig,
    NodeModulesConfigSpec, NodeModulesConfigStatus, REASON_WAITING_FOR_IMAGE,
};
pub use api::preflight::{
    PreflightValidation, PreflightValidationModuleStatus, PreflightValidationSpec,
    PreflightValidationStatus,
};
pub use api::rollout::{
    Eviction, ModuleRollout, ModuleRolloutSpec, ModuleRolloutStatus, NodeBlocker, NodeCounts,
    ROLLOUT_FINALIZER, RolloutStrategy, Validation, ValidationJob, WaitForPods,
};
pub use labels::{
    MODULE_FINALIZER, NAMESPACE_CONTAINS_MODULES_LABEL, NODE_LABEL_PREFIX, REBOOT_REQUIRED_LABEL,
    UpgradeState, device_plugin_ready_label, dra_ready_label, is_agent_label, ready_label,
    upgrade_boot_id_annotation, upgrade_cordoned_annotation, upgrade_message_annotation,
    upgrade_since_annotation, upgrade_state_label, version_module_label, version_ready_label,
};
pub use reason::Reason;
pub use targeting::{
    Ineligible, ResolvedMapping, Target, UNSCHEDULABLE_TAINT, Vars, check_node_taints,
    check_taints, in_rollout_scope, node_eligibility, node_kernel_version, node_taints,
    resolve_mapping, selector_matches, substitute, target_node, untolerated_taint,
};
pub use validation::{
    ValidationError, validate_module, validate_module_update, validate_preflight,
};
