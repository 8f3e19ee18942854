//! The cluster-scoped `NodeModulesConfig` (`nmc`): per node, the modules the controller wants
//! there (spec) and what the agent observed (status). Shape of upstream KMM's
//! `nodemodulesconfig_types.go`, plus per-module load details in status written by the agent.

use k8s_openapi::api::core::v1::{LocalObjectReference, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::module::ModprobeSpec;

/// NodeModulesConfigSpec describes the desired state of modules on the node (the object is
/// named after the node).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta1",
    kind = "NodeModulesConfig",
    plural = "nodemodulesconfigs",
    shortname = "nmc",
    status = "NodeModulesConfigStatus",
    doc = "NodeModulesConfig keeps spec and state of the KMM modules on a node.",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct NodeModulesConfigSpec {
    /// Modules list the spec of all the modules that need to be executed on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<NodeModuleSpec>,
}

/// What to load for one Module on this node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleConfig {
    /// Kernel version the config was resolved for.
    pub kernel_version: String,
    /// The kmod image (variables already substituted).
    pub container_image: String,
    /// Image pull policy (defaults to IfNotPresent).
    #[serde(default = "default_pull_policy")]
    #[schemars(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// When InsecurePull is true, the container image can be pulled without TLS.
    #[serde(default)]
    pub insecure_pull: bool,
    /// When InsecureSkipTLSVerify is true, the registry's certificate is not verified
    /// (kmm-rs extension).
    #[serde(
        default,
        rename = "insecureSkipTLSVerify",
        skip_serializing_if = "is_false"
    )]
    pub insecure_skip_tls_verify: bool,
    /// In-tree modules to remove before loading (merged with the deprecated singular).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_tree_modules_to_remove: Vec<String>,
    /// Deprecated single in-tree module to remove.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub in_tree_module_to_remove: String,
    /// How modprobe loads the module.
    #[schemars(schema_with = "modprobe_schema_without_rules")]
    pub modprobe: ModprobeSpec,
}

/// The Module's modprobe schema without its CEL rules: the controller copies an already
/// validated Module, and an unbounded list of CEL-checked entries would exceed the apiserver's
/// rule cost budget.
fn modprobe_schema_without_rules(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<ModprobeSpec>();
    strip_validations(&mut schema);
    schema
}

fn strip_validations(schema: &mut schemars::Schema) {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("x-kubernetes-validations");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        map.remove("x-kubernetes-validations");
        map.values_mut().for_each(strip);
    }
}

fn default_pull_policy() -> String {
    "IfNotPresent".to_string()
}

/// Identifies a Module and the pod-level settings its workers need.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleItem {
    /// Secret used to pull the kmod image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_repo_secret: Option<LocalObjectReference>,
    /// Name of the Module.
    pub name: String,
    /// Namespace of the Module.
    pub namespace: String,
    /// ServiceAccount of the worker pods.
    #[serde(default)]
    pub service_account_name: String,
    /// Tolerations to add to every load/unload pod running on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Desired state of one Module on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeModuleSpec {
    /// The Module this entry is for.
    #[serde(flatten)]
    pub item: ModuleItem,
    /// What to load.
    pub config: ModuleConfig,
}

/// [`ModuleError::reason`] of a node waiting for the controller to build or
/// sign its image: reported like an error so users see it, counted as
/// progress, not degradation.
pub const REASON_WAITING_FOR_IMAGE: &str = "WaitingForImage";

/// A failure the agent hit for a module.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleError {
    /// Machine-readable reason in CamelCase (e.g. ImagePullFailed, ModprobeFailed).
    pub reason: String,
    /// Human-readable description.
    pub message: String,
}

/// Observed state of one Module on the node (written by the agent).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeModuleStatus {
    /// The Module this entry is for.
    #[serde(flatten)]
    pub item: ModuleItem,
    /// The config that is currently applied on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ModuleConfig>,
    /// Last time the applied config changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The image reference that was loaded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// The resolved digest (sha256:...) of the loaded image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The kernel version the module was loaded into.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel: String,
    /// When the module was loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_time: Option<Time>,
    /// The last error for this module, if the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ModuleError>,
}

/// NodeModulesConfigStatus is the most recently observed status of the KMM modules on node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeModulesConfigStatus {
    /// Modules contain observations about each Module's node state status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<NodeModuleStatus>,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}
