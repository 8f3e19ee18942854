//! The `kmmctl rollout status` document (also its `-o json` output), built from the
//! ModuleRollout, its Module and the Nodes as pure functions. Field names are camelCase and
//! stable: new fields may be added, existing ones keep their name and meaning
//! (`schemaVersion` changes if not).
//!
//! The node rows come from the Nodes themselves (the `upgrade-state` label and annotations the
//! controller writes), so they are current even when the rollout's status lags; the counts
//! are the controller's (`status.nodes`), shown as it reported them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kmm_common::{
    Module, ModuleRollout, NodeCounts, RolloutStrategy, UpgradeState, in_rollout_scope,
    upgrade_cordoned_annotation, upgrade_message_annotation, upgrade_since_annotation,
    upgrade_state_label, version_ready_label,
};
use serde::{Deserialize, Serialize};

/// Version of this document's shape.
pub const SCHEMA_VERSION: u32 = 1;

/// The message of an in-scope node the rollout has not labelled yet.
pub const NOT_STARTED: &str = "not started (no upgrade-state label yet)";

/// What `kmmctl rollout status` reads.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The rollout.
    pub rollout: ModuleRollout,
    /// Its Module (`spec.moduleName`, same namespace).
    pub module: Module,
    /// Every Node (the report keeps those in scope or carrying the state label).
    pub nodes: Vec<Node>,
}

/// The whole answer for one rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Namespace of the rollout and its Module.
    pub namespace: String,
    /// The rollout's name.
    pub rollout: String,
    /// The Module rolled out.
    pub module: String,
    /// The version nodes move to: the controller's `status.targetVersion`, else the Module's
    /// `container.version` (absent when neither says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// `Unload` or `Reboot`.
    pub strategy: String,
    /// `spec.paused`.
    pub paused: bool,
    /// The limits, defaults applied.
    pub limits: Limits,
    /// The controller's conditions.
    pub conditions: Vec<ConditionRow>,
    /// Nodes per state as the controller last reported them (absent before its first report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<NodeCounts>,
    /// The nodes in progress, as the controller last reported them.
    pub wave: Vec<String>,
    /// Nodes per state from the node labels right now (`required` includes unlabelled nodes).
    pub tally: BTreeMap<String, usize>,
    /// One row per node, sorted by name.
    pub nodes: Vec<NodeRow>,
}

/// `maxUnavailable`, `maxParallel`, `maxFailed` with the API's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// A count or a percentage, as written.
    pub max_unavailable: String,
    /// Nodes in progress at once.
    pub max_parallel: i32,
    /// Failed nodes after which the rollout stops.
    pub max_failed: i32,
}

/// One condition of the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionRow {
    /// `Progressing`, `Paused`, `Stopped`, `Complete`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    pub reason: String,
    /// What it means.
    pub message: String,
}

/// Who cordoned a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CordonedBy {
    /// The rollout (it carries the `upgrade-cordoned` annotation): uncordoned by the rollout.
    Rollout,
    /// Someone else: the rollout leaves it cordoned.
    Other,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// Node name.
    pub node: String,
    /// The `upgrade-state` label value; `required` for an unlabelled node in scope.
    pub state: String,
    /// Whether the state comes from the label (false: in scope, not labelled yet).
    pub labelled: bool,
    /// Whether the node is in the rollout's scope now (a labelled node may have left it).
    pub in_scope: bool,
    /// When the node entered `state` (RFC 3339, the `upgrade-since` annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The version loaded now (the node's `.version.ready` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether and by whom the node is cordoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordoned: Option<CordonedBy>,
    /// What the node waits for or why it failed (the `upgrade-message` annotation, else the
    /// rollout's `status.blocked` entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl RolloutReport {
    /// Nodes whose label says `failed` right now.
    pub fn failed_nodes(&self) -> usize {
        self.tally
            .get(UpgradeState::Failed.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Whether the controller reports the rollout `Stopped` (failure limit reached).
    pub fn stopped(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == "Stopped" && c.status == "True")
    }

    /// Whether someone has to act: a node failed or the rollout stopped.
    pub fn needs_attention(&self) -> bool {
        self.failed_nodes() > 0 || self.stopped()
    }
}

/// Builds the report (pure).
pub fn build(s: &Snapshot) -> RolloutReport {
    let namespace = s.rollout.metadata.namespace.clone().unwrap_or_default();
    let spec = &s.rollout.spec;
    let status = s.rollout.status.as_ref();
    let blocked: BTreeMap<&str, &str> = status
        .map(|st| {
            st.blocked
                .iter()
                .map(|b| (b.node.as_str(), b.message.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let keys = Keys::new(&namespace, &spec.module_name);
    let mut nodes: Vec<NodeRow> = s
        .nodes
        .iter()
        .filter_map(|node| {
            let in_scope = in_rollout_scope(&s.module, spec.node_selector.as_ref(), node);
            node_row(node, in_scope, &keys, &blocked)
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let mut tally = BTreeMap::new();
    for n in &nodes {
        *tally.entry(n.state.clone()).or_insert(0) += 1;
    }
    let module_version = s
        .module
        .spec
        .module_loader
        .as_ref()
        .map(|l| l.container.version.clone())
        .filter(|v| !v.is_empty());
    RolloutReport {
        schema_version: SCHEMA_VERSION,
        rollout: s.rollout.metadata.name.clone().unwrap_or_default(),
        module: spec.module_name.clone(),
        target_version: status
            .and_then(|st| st.target_version.clone())
            .or(module_version),
        strategy: match spec.strategy {
            RolloutStrategy::Unload => "Unload",
            RolloutStrategy::Reboot => "Reboot",
        }
        .to_string(),
        paused: spec.paused,
        limits: Limits {
            max_unavailable: match &spec.max_unavailable {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
                None => "1".to_string(),
            },
            max_parallel: spec.max_parallel.unwrap_or(1),
            max_failed: spec.max_failed.unwrap_or(1),
        },
        conditions: status
            .map(|st| {
                st.conditions
                    .iter()
                    .map(|c| ConditionRow {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        counts: status.map(|st| st.nodes.clone()),
        wave: status.map(|st| st.wave.clone()).unwrap_or_default(),
        tally,
        nodes,
        namespace,
    }
}

/// The label and annotation keys of one Module's rollout (from `kmm_common::labels`).
struct Keys {
    state: String,
    since: String,
    message: String,
    cordoned: String,
    version_ready: String,
}

impl Keys {
    fn new(namespace: &str, module: &str) -> Self {
        Self {
            state: upgrade_state_label(namespace, module),
            since: upgrade_since_annotation(namespace, module),
            message: upgrade_message_annotation(namespace, module),
            cordoned: upgrade_cordoned_annotation(namespace, module),
            version_ready: version_ready_label(namespace, module),
        }
    }
}

/// The row of `node`, or `None` when it is neither in scope nor labelled.
fn node_row(
    node: &Node,
    in_scope: bool,
    keys: &Keys,
    blocked: &BTreeMap<&str, &str>,
) -> Option<NodeRow> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let label = |k: &str| {
        node.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .cloned()
    };
    let annotation = |k: &str| {
        node.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let state = label(&keys.state);
    if state.is_none() && !in_scope {
        return None;
    }
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let cordoned = match (unschedulable, annotation(&keys.cordoned).is_some()) {
        (false, _) => None,
        (true, true) => Some(CordonedBy::Rollout),
        (true, false) => Some(CordonedBy::Other),
    };
    let message = annotation(&keys.message)
        .or_else(|| blocked.get(name.as_str()).map(|m| m.to_string()))
        .or_else(|| state.is_none().then(|| NOT_STARTED.to_string()));
    Some(NodeRow {
        labelled: state.is_some(),
        state: state.unwrap_or_else(|| UpgradeState::Required.as_str().to_string()),
        in_scope,
        since: annotation(&keys.since),
        version: label(&keys.version_ready),
        cordoned,
        message,
        node: name,
    })
}

#[cfg(test)]
#[path = "report_tests.rs"]
pub(crate) mod tests;
