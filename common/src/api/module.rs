//! The `Module` custom resource (`kmm.sigs.x-k8s.io/v1beta1`), field for field compatible with
//! upstream KMM's `api/v1beta1/module_types.go`.
//!
//! Conventions that mirror Go's zero values so that upstream manifests round-trip unchanged:
//! plain Go `string` fields are `String` (empty means unset and is not serialized), Go slices are
//! `Vec` (empty is not serialized), Go pointers to structs are `Option`. The CEL rules attached
//! here (`x-kubernetes-validations`) are the schema-checkable subset of upstream's admission
//! webhook; [`crate::validate_module`] carries the same rules as Rust.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel;
pub use super::dra::DraSpec;

/// `ModuleSpec` describes how the KMM operator should deploy a Module on those nodes that need it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "Module",
    plural = "modules",
    namespaced,
    cel,
    status = "ModuleStatus",
    doc = "Module describes how to load a module on different kernel versions",
    printcolumn = r#"{"name":"Version","type":"string","description":"Module version for ordered upgrades","jsonPath":".spec.moduleLoader.container.version","priority":1}"#,
    printcolumn = r#"{"name":"Matching","type":"integer","description":"Nodes matching the selector","jsonPath":".status.moduleLoader.nodesMatchingSelectorNumber"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","description":"Nodes that should have the module loaded","jsonPath":".status.moduleLoader.desiredNumber"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","description":"Nodes with the module loaded","jsonPath":".status.moduleLoader.availableNumber"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = cel::name_length_rule(),
    validation = cel::ready_label_fits(),
    validation = cel::device_plugin_label_fits(),
    validation = cel::dra_label_fits(),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = cel::dra_xor_device_plugin())]
pub struct ModuleSpec {
    /// DevicePlugin allows overriding some properties of the container that deploys the device
    /// plugin on the node. Name is ignored and is set automatically by the KMM Operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DevicePluginSpec>,

    /// DRA configures a DRA driver DaemonSet and optional DeviceClasses. Mutually exclusive
    /// with DevicePlugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<DraSpec>,

    /// ModuleLoader allows overriding some properties of the container that loads the kernel
    /// module on the node. Name and image are ignored and are set automatically by the KMM
    /// Operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_loader: Option<ModuleLoaderSpec>,

    /// ImageRepoSecret is an optional secret that is used to pull both the module loader and the
    /// device plugin, and to push the resulting image from the module loader build, if enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,

    /// Selector describes on which nodes the Module should be loaded and optionally built.
    /// An empty selector matches every node.
    pub selector: BTreeMap<String, String>,

    /// If specified, the tolerations of the worker and device plugin pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// ImageRebuildTriggerGeneration is an optional counter that can be incremented to trigger a
    /// rebuild of the module images. When this value changes (compared to the value stored in
    /// status), KMM will re-verify and potentially rebuild all module images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rebuild_trigger_generation: Option<i64>,
}

/// TLS options for accessing a container registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsOptions {
    /// If Insecure is true, the operator will be able to access a registry in an insecure (plain
    /// HTTP) protocol.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure: bool,

    /// If InsecureSkipTLSVerify, the operator will accept any certificate provided by the
    /// registry.
    #[serde(
        default,
        rename = "insecureSkipTLSVerify",
        skip_serializing_if = "is_false"
    )]
    pub insecure_skip_tls_verify: bool,
}

/// BuildArg represents a build argument used when building a container image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct BuildArg {
    /// Name of the build argument.
    pub name: String,
    /// Value of the build argument.
    pub value: String,
}

/// Parameters for the Kaniko build backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct KanikoParams {
    /// Kaniko image tag to use when creating the build Pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

/// In-cluster build instructions for a kmod image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    /// BuildArgs is an array of build variables that are provided to the image building backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub build_args: Vec<BuildArg>,

    /// ConfigMap that holds Dockerfile contents.
    pub dockerfile_config_map: LocalObjectReference,

    /// BaseImageRegistryTLS contains settings determining how to access registries of the base
    /// images in the build-process' Dockerfile.
    #[serde(
        default,
        rename = "baseImageRegistryTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_image_registry_tls: Option<TlsOptions>,

    /// Secrets is an optional list of secrets to be made available to the build system. Those
    /// secrets should be used for private resources such as a private Github repo. For container
    /// registries auth use module.spec.imageRepoSecret instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<LocalObjectReference>,

    /// KanikoParams is used to customize the building process of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kaniko_params: Option<KanikoParams>,

    /// Selector describes on which nodes will run the building process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// In-cluster signing settings for kernel modules (secure boot).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = cel::files_to_sign_non_empty())]
pub struct Sign {
    /// Image to sign, ignored if a Build is present, required otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unsigned_image: String,

    /// UnsignedImageRegistryTLS contains settings determining how to access registries of the
    /// unsigned image.
    #[serde(
        default,
        rename = "unsignedImageRegistryTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub unsigned_image_registry_tls: Option<TlsOptions>,

    /// A secret containing the private key used to sign kernel modules for secureboot.
    pub key_secret: LocalObjectReference,

    /// A secret containing the public key used to sign kernel modules for secureboot.
    pub cert_secret: LocalObjectReference,

    /// Paths inside the image for the kernel modules to sign. Full path to explicit files are
    /// required or any globs supported by the `Ash` shell. Each must be under
    /// modprobe.dirName. Supports ${KERNEL_FULL_VERSION}, ${MOD_NAME} and ${MOD_NAMESPACE}.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    pub files_to_sign: Vec<String>,
}

/// KernelMapping pairs kernel versions with a kmod image. Kernel versions can be matched
/// literally or using a regular expression; exactly one of literal and regexp must be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = cel::literal_xor_regexp())]
pub struct KernelMapping {
    /// Build enables in-cluster builds for this mapping and allows overriding the Module's build
    /// settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,

    /// Sign enables in-cluster signing for this mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,

    /// ContainerImage is the name of the kmod image that should be used to deploy the module
    /// (required unless the container-level containerImage is set). Must carry a tag or a
    /// digest. Supports ${KERNEL_FULL_VERSION}, ${MOD_NAME} and ${MOD_NAMESPACE}.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 512))]
    #[x_kube(
        validation = cel::image_has_tag("kernelMappings[].containerImage"),
        validation = cel::image_digest("kernelMappings[].containerImage"),
    )]
    pub container_image: String,

    /// Literal defines a literal target kernel version to be matched exactly against node
    /// kernels.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    pub literal: String,

    /// RegistryTLS set the TLS configs for accessing the registry of the module-loader's image.
    #[serde(
        default,
        rename = "registryTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub registry_tls: Option<TlsOptions>,

    /// Regexp is a regular expression to be matched against node kernels (RE2 syntax, unanchored
    /// search as Go's regexp.MatchString).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    pub regexp: String,

    /// Deprecated: please use inTreeModulesToRemove. InTreeModuleToRemove specifies one in-tree
    /// kernel module that should be removed (if present) before loading the kernel module from
    /// the containerImage.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = cel::kernel_module_name("inTreeModuleToRemove"))]
    pub in_tree_module_to_remove: String,

    /// InTreeModulesToRemove specifies any number of in-tree kernel modules that should be
    /// removed (if present) before loading the kernel module from the containerImage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    #[x_kube(validation = cel::kernel_module_names("inTreeModulesToRemove"))]
    pub in_tree_modules_to_remove: Vec<String>,
}

/// Arguments passed to modprobe on load and on unload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct ModprobeArgs {
    /// Load is an optional list of arguments to be used when loading the kernel module.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub load: Vec<String>,

    /// Unload is an optional list of arguments to be used when unloading the kernel module.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub unload: Vec<String>,
}

/// How modprobe loads the module: which module, which parameters, from which directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = cel::raw_args_only_without_module_name(),
    validation = cel::raw_args_required_without_module_name(),
    validation = cel::loading_order_min_two(),
    validation = cel::loading_order_starts_with_module_name(),
)]
pub struct ModprobeSpec {
    /// ModuleName is the name of the Module to be loaded. This field can only be unset if rawArgs
    /// is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = cel::kernel_module_name("modprobe.moduleName"))]
    pub module_name: String,

    /// Parameters is an optional list of kernel module parameters to be provided to modprobe.
    /// They should be in the form of key=value and will be separated by spaces in the modprobe
    /// command. The resulting loading command will be: `modprobe module_name ${Parameters}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    #[x_kube(validation = cel::parameters_single_line())]
    pub parameters: Vec<String>,

    /// DirName is the root directory for modules. It adds `-d ${DirName}` to the modprobe
    /// command-line.
    #[serde(default = "default_dir_name", skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = cel::path_stays_inside("modprobe.dirName"))]
    pub dir_name: String,

    /// Args is an optional list of arguments to be passed to modprobe before the name of the
    /// kernel module. The resulting commands will be: `modprobe ${Args} module_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<ModprobeArgs>,

    /// If RawArgs are specified, they are passed straight to the modprobe binary; all other
    /// properties in this object are ignored. The resulting commands will be:
    /// `modprobe ${RawArgs}`. Only allowed (and then required for load and unload) when
    /// moduleName is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_args: Option<ModprobeArgs>,

    /// FirmwarePath is the path of the firmware(s). The firmware(s) will be copied to the host
    /// for the kernel to find them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = cel::path_stays_inside("modprobe.firmwarePath"))]
    pub firmware_path: String,

    /// ModulesLoadingOrder defines the dependency between kernel modules loading, in case it was
    /// not created by depmod (independent kernel modules). The list order should be: upmost
    /// module, then the module it depends on and so on. The first entry must be moduleName,
    /// there must be at least two entries and no duplicates. Loading happens in reverse order,
    /// unloading in list order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    #[x_kube(
        validation = cel::loading_order_unique(),
        validation = cel::kernel_module_names("modprobe.modulesLoadingOrder"),
    )]
    pub modules_loading_order: Option<Vec<String>>,
}

impl Default for ModprobeSpec {
    fn default() -> Self {
        Self {
            module_name: String::new(),
            parameters: Vec::new(),
            dir_name: default_dir_name(),
            args: None,
            raw_args: None,
            firmware_path: String::new(),
            modules_loading_order: None,
        }
    }
}

/// Default for `modprobe.dirName`, as upstream's `+kubebuilder:default=/opt`.
pub fn default_dir_name() -> String {
    "/opt".to_string()
}

/// The module loader container: which image to use per kernel, and how to run modprobe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = cel::mapping_image_required(),
    validation = cel::container_files_to_sign_under_dir(),
    validation = cel::mapping_files_to_sign_under_dir(),
    validation = cel::version_transition(),
)]
pub struct ModuleLoaderContainerSpec {
    /// Build contains build instructions (defaults for every kernel mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,

    /// Sign provides default kmod signing settings (defaults for every kernel mapping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,

    /// Version defines the current version of the kernel module being used. Used for upgrading
    /// the currently loaded kernel module to a new version (ordered upgrade): a node is only
    /// targeted when its label `kmm.node.kubernetes.io/version-module.<namespace>.<name>` equals
    /// this value. Cannot change to or from empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = cel::version_is_label_value())]
    pub version: String,

    /// ContainerImage is the default kmod image for every kernel mapping. Must carry a tag or a
    /// digest. Supports ${KERNEL_FULL_VERSION}, ${MOD_NAME} and ${MOD_NAMESPACE}.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 512))]
    #[x_kube(
        validation = cel::image_has_tag("containerImage"),
        validation = cel::image_digest("containerImage"),
    )]
    pub container_image: String,

    /// Image pull policy. One of Always, Never, IfNotPresent. Defaults to Always if :latest tag
    /// is specified, or IfNotPresent otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[x_kube(validation = cel::pull_policy("imagePullPolicy"))]
    pub image_pull_policy: String,

    /// KernelMappings is a list of kernel mappings. When a node's labels match selector, then
    /// the KMM Operator will look for the first mapping that matches its kernel version, and use
    /// the corresponding container image to run the module loader.
    #[schemars(length(min = 1, max = 64))]
    pub kernel_mappings: Vec<KernelMapping>,

    /// Modprobe is a set of properties to customize which module modprobe loads and with which
    /// properties.
    pub modprobe: ModprobeSpec,

    /// RegistryTLS set the TLS configs for accessing the registry of the module-loader's image
    /// (default for every kernel mapping).
    #[serde(
        default,
        rename = "registryTLS",
        skip_serializing_if = "Option::is_none"
    )]
    pub registry_tls: Option<TlsOptions>,

    /// Deprecated: please use inTreeModulesToRemove. InTreeModuleToRemove specifies one in-tree
    /// kernel module that should be removed (if present) before loading the kernel module from
    /// the containerImage.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = cel::kernel_module_name("inTreeModuleToRemove"))]
    pub in_tree_module_to_remove: String,

    /// InTreeModulesToRemove specifies any number of in-tree kernel modules that should be
    /// removed (if present) before loading the kernel module from the containerImage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    #[x_kube(validation = cel::kernel_module_names("inTreeModulesToRemove"))]
    pub in_tree_modules_to_remove: Vec<String>,
}

/// Module loader settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleLoaderSpec {
    /// Container holds the properties for the module loader container that runs modprobe.
    pub container: ModuleLoaderContainerSpec,

    /// ServiceAccountName is the name of the ServiceAccount to use to run the worker pods.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,
}

/// A device plugin or DRA driver container (upstream's `CommonContainerSpec`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CommonContainerSpec {
    /// Entrypoint array. Not executed within a shell. The container image's ENTRYPOINT is used
    /// if this is not provided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,

    /// Arguments to the entrypoint. The container image's CMD is used if this is not provided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,

    /// List of environment variables to set in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Image is the name of the container image that the device plugin container will run.
    pub image: String,

    /// Image pull policy. One of Always, Never, IfNotPresent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[x_kube(validation = cel::pull_policy("imagePullPolicy"))]
    pub image_pull_policy: String,

    /// Compute Resources required by this container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// VolumeMounts is a list of volume mounts that are appended to the default ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

/// The device plugin container: upstream keeps this name as an alias of
/// [`CommonContainerSpec`].
pub type DevicePluginContainerSpec = CommonContainerSpec;

/// Device plugin DaemonSet settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginSpec {
    /// The device plugin container.
    pub container: DevicePluginContainerSpec,

    /// InitContainer defines the init container that will be used by the device plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<DevicePluginContainerSpec>,

    /// ServiceAccountName is the name of the ServiceAccount to use to run the device plugin pods.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,

    /// Volumes available to the device plugin pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,

    /// AutomountServiceAccountToken indicates whether a service account token should be
    /// automatically mounted in the device plugin pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

/// DaemonSetStatus contains the status of a set of pods deployed for the Module.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetStatus {
    /// Number of nodes that are targeted by the module selector.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes_matching_selector_number: i32,
    /// Number of the pods that should be deployed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub desired_number: i32,
    /// Number of the actually deployed and running pods.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub available_number: i32,
}

/// ModuleStatus defines the observed state of Module.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// DevicePlugin contains the status of the device plugin pods, if deployed.
    #[serde(default)]
    pub device_plugin: DaemonSetStatus,
    /// ModuleLoader contains the status of the module loader (nodes with the module loaded).
    #[serde(default)]
    pub module_loader: DaemonSetStatus,
    /// DRA contains the status of the DRA driver DaemonSet, if deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<DaemonSetStatus>,
    /// ImageRebuildTriggerGeneration contains the last value of
    /// spec.imageRebuildTriggerGeneration that was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_rebuild_trigger_generation: Option<i64>,
    /// Conditions describe the latest observations of the Module's state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// ObservedGeneration is the metadata.generation the status was computed
    /// from (kstatus, Flux and Argo CD compare it; not in upstream KMM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// serde's skip_serializing_if takes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &i32) -> bool {
    *n == 0
}
