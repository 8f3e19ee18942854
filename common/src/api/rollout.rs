//! `ModuleRollout` (`rollout.kmm-rs.io/v1alpha1`): kmm-rs's opt-in automatic ordered upgrade of
//! one versioned Module. Not part of upstream KMM's API, on purpose (see `docs/upgrade.md`):
//!
//! - a Module stays byte-for-byte upstream's: a Module without a rollout behaves exactly as
//!   upstream (the admin moves `version-module.<ns>.<name>` by hand), and the same YAML still
//!   applies to upstream KMM;
//! - who may drain nodes is a separate RBAC grant from who may edit Modules;
//! - the rollout's status (nodes per state, the current wave, what blocks whom) has its own
//!   object, so a long upgrade never rewrites the Module's status.
//!
//! The per-node progress lives on the Node (the `upgrade-state` label and the annotations in
//! [`crate::labels`]), so a new leader resumes exactly where the old one was.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of kmm-rs's own resources.
pub const ROLLOUT_GROUP: &str = "rollout.kmm-rs.io";

/// Held by every ModuleRollout until its deletion has released its nodes (uncordoned the
/// nodes it cordoned, cleared the states no rollout drives any more).
pub const ROLLOUT_FINALIZER: &str = "rollout.kmm-rs.io/release-nodes";

/// How the new version reaches a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum RolloutStrategy {
    /// The agent unloads the old version and loads the new one (the node keeps running).
    #[default]
    Unload,
    /// For modules that cannot be unloaded while in use (filesystems, storage): the node is
    /// marked for reboot (`kmm.node.kubernetes.io/reboot-required`, for a reboot operator such
    /// as kured), the boot path loads the new version at the next boot, and the rollout
    /// continues once the node's boot ID has changed.
    Reboot,
}

/// ModuleRollout upgrades the nodes of one versioned Module (same namespace) to the Module's
/// `spec.moduleLoader.container.version`, a few nodes at a time: cordon, wait for Pods, evict
/// through the Eviction API, move the node's `version-module` label, validate, uncordon.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "rollout.kmm-rs.io",
    version = "v1alpha1",
    kind = "ModuleRollout",
    plural = "modulerollouts",
    shortname = "mro",
    namespaced,
    status = "ModuleRolloutStatus",
    printcolumn = r#"{"name":"Module","type":"string","jsonPath":".spec.moduleName"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.targetVersion"}"#,
    printcolumn = r#"{"name":"Done","type":"integer","jsonPath":".status.nodes.done"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.nodes.failed"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    doc = "ModuleRollout upgrades the nodes of one versioned Module, a few at a time, with cordon, eviction and validation (kmm-rs extension)."
)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRolloutSpec {
    /// Name of the Module (same namespace) to roll out. The Module must set
    /// `spec.moduleLoader.container.version`; its nodes move to that version.
    pub module_name: String,

    /// At most this many of the Module's nodes may be without the Module (not ready for it)
    /// at any instant, counting nodes not ready for other reasons: a count or a percentage of
    /// the Module's nodes (rounded down, at least 1). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,

    /// At most this many nodes in progress at once (cordoned to validated). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallel: Option<i32>,

    /// The rollout stops (no new node starts) once this many nodes are `failed`. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_failed: Option<i32>,

    /// No new node starts while true; nodes in progress finish their current step.
    #[serde(default)]
    pub paused: bool,

    /// Only nodes matching this selector (besides the Module's own) are upgraded; the others
    /// are left to the admin's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// Cordon each node before its upgrade (default true). Only nodes the rollout cordoned are
    /// uncordoned; a node an admin cordoned stays cordoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordon: Option<bool>,

    /// Wait for Pods matching this selector on the node to finish before evicting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_pods: Option<WaitForPods>,

    /// Evict Pods that use the device, through the Eviction API (PodDisruptionBudgets are
    /// honoured: a refused eviction makes the node wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction: Option<Eviction>,

    /// Checks after the node reports the new version; a failure marks the node `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,

    /// How the new version reaches the node. Default `Unload`.
    #[serde(default)]
    pub strategy: RolloutStrategy,
}

/// Pods to wait for (e.g. running jobs on the device).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitForPods {
    /// Pods (any namespace) on the node matching this selector.
    pub pod_selector: LabelSelector,
    /// Give up waiting after this long and go on to eviction (0: wait forever). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: Option<i64>,
}

/// Pods to evict from the node before the swap.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Eviction {
    /// Pods (any namespace) on the node matching this selector are evicted. DaemonSet Pods
    /// and mirror Pods are never evicted.
    pub pod_selector: LabelSelector,
    /// After this long without success (e.g. a PodDisruptionBudget refusing), the node is
    /// `failed` unless `force` (0: wait forever). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub timeout_seconds: Option<i64>,
    /// When the timeout passes, delete the remaining Pods instead of failing the node.
    #[serde(default)]
    pub force: bool,
}

/// How a node's upgrade is validated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// Wait for the Module's device-plugin (or DRA driver) Pod on the node to be Ready.
    #[serde(default)]
    pub wait_for_plugin_ready: bool,
    /// A Job run on the node (pinned with `nodeName`) once the new version is loaded; its
    /// failure marks the node `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<ValidationJob>,
    /// The node is `failed` if validation has not passed after this long. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,
}

/// The validation Job's Pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationJob {
    /// The Pod to run (its `nodeName` is set to the node, `restartPolicy` to `Never`).
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,
    /// Retries before the Job counts as failed. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backoff_limit: Option<i32>,
}

/// Nodes per state (`upgrade-state` label values).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes of the Module (the rollout's scope).
    pub total: i32,
    /// Nodes still on another version, not started.
    pub required: i32,
    /// Nodes between cordon and uncordon.
    pub in_progress: i32,
    /// Nodes on the target version (upgraded, or already on it).
    pub done: i32,
    /// Nodes whose upgrade failed (retry with `kmmctl rollout retry`).
    pub failed: i32,
    /// Nodes labelled to be skipped.
    pub skipped: i32,
    /// Nodes of the Module not ready for it right now (for any reason).
    pub unavailable: i32,
}

/// A node that cannot go on, and why (e.g. a PodDisruptionBudget refusing an eviction).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeBlocker {
    /// The node.
    pub node: String,
    /// Its `upgrade-state`.
    pub state: String,
    /// What it waits for, or why it failed.
    pub message: String,
}

/// Observed state of a ModuleRollout, written by the leader when it changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRolloutStatus {
    /// The version the nodes move to (the Module's `container.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// Nodes per state.
    #[serde(default)]
    pub nodes: NodeCounts,
    /// Nodes in progress now (the current wave).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wave: Vec<String>,
    /// Nodes waiting on something, or failed, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<NodeBlocker>,
    /// `Progressing`, `Paused`, `Stopped` (failure limit), `Complete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The validation Pod template is validated by the API server when the Job is created (its
/// schema is the Job's); the CRD keeps it as an object so it does not grow by the size of
/// `PodTemplateSpec`'s schema.
fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
