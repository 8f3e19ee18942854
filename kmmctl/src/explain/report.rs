//! The `kmmctl explain -o json` document. Field names are camelCase and stable: new fields
//! may be added, existing ones keep their name and meaning (`schemaVersion` changes if not).
//!
//! ```json
//! {
//!   "schemaVersion": 1,
//!   "module": { "namespace": "kmm-demo", "name": "brd" },
//!   "summary": { "nodes": 2, "loaded": 1, "pending": 0, "failing": 0, "notTargeted": 1 },
//!   "nodes": [
//!     {
//!       "node": "worker-1", "kernel": "6.1.0-56-amd64",
//!       "state": "Loaded", "reason": "Loaded",
//!       "message": "10.0.2.2:5000/kmm-demo/brd:6.1.0-56-amd64 is loaded",
//!       "applies": true,
//!       "target": { "mappingIndex": 0, "image": "10.0.2.2:5000/kmm-demo/brd:6.1.0-56-amd64",
//!                   "kernel": "6.1.0-56-amd64" },
//!       "loaded": { "image": "10.0.2.2:5000/kmm-demo/brd:6.1.0-56-amd64",
//!                   "digest": "sha256:…", "kernel": "6.1.0-56-amd64",
//!                   "since": "2026-11-25T21:00:00Z" },
//!       "readyLabel": { "key": "kmm.node.kubernetes.io/kmm-demo.brd.ready", "present": true }
//!     },
//!     {
//!       "node": "worker-2", "kernel": "6.1.0-56-arm64",
//!       "state": "NotTargeted", "reason": "NoKernelMapping",
//!       "message": "kernel 6.1.0-56-arm64 matches no kernelMapping",
//!       "applies": false,
//!       "notTargeted": { "reason": "NoKernelMapping",
//!                        "message": "kernel 6.1.0-56-arm64 matches no kernelMapping" },
//!       "readyLabel": { "key": "kmm.node.kubernetes.io/kmm-demo.brd.ready", "present": false }
//!     }
//!   ]
//! }
//! ```
//!
//! Absent optional fields are omitted, `notes` too when empty.

use serde::{Deserialize, Serialize};

/// Version of this document's shape.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole answer for one Module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The Module explained.
    pub module: ModuleRef,
    /// Counts per state.
    pub summary: Summary,
    /// One entry per node, sorted by node name.
    pub nodes: Vec<NodeExplanation>,
}

/// Namespace and name of a Module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// How many nodes are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// All nodes explained.
    pub nodes: usize,
    /// [`NodeState::Loaded`].
    pub loaded: usize,
    /// [`NodeState::Pending`].
    pub pending: usize,
    /// [`NodeState::Failing`].
    pub failing: usize,
    /// [`NodeState::NotTargeted`].
    pub not_targeted: usize,
}

/// The verdict for one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// The Module applies and the image it resolves to is loaded for the node's kernel.
    Loaded,
    /// Not there yet: applies but not (or not this image) loaded, or no longer applies but
    /// still loaded. `reason` says which.
    Pending,
    /// The agent reported an error for this Module on this node (`lastError`).
    Failing,
    /// The Module does not apply to this node; `reason` says why.
    NotTargeted,
}

impl NodeState {
    /// The name used in text output.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Loaded => "Loaded",
            NodeState::Pending => "Pending",
            NodeState::Failing => "Failing",
            NodeState::NotTargeted => "NotTargeted",
        }
    }
}

/// Everything known about one Module on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeExplanation {
    /// Node name.
    pub node: String,
    /// `status.nodeInfo.kernelVersion`, when the node reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The verdict.
    pub state: NodeState,
    /// Code for the verdict: `Loaded`; for Pending `NoNodeModulesConfig`, `NotReported`,
    /// `Upgrading`, `Unloading`, `WaitingForImage`; for Failing the agent's reason (`ImagePullFailed`,
    /// `ModprobeFailed`, ...); for NotTargeted `SelectorMismatch`, `NoKernelMapping`,
    /// `VersionMismatch`, `InvalidRegexp`, `MissingImage`, `NoKernelVersion`,
    /// `NoModuleLoader`.
    pub reason: String,
    /// One sentence a person can act on.
    pub message: String,
    /// Whether the Module targets this node (selector, kernel mapping, version label).
    pub applies: bool,
    /// What the Module resolves to here, when it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetInfo>,
    /// Why the Module does not apply, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_targeted: Option<NotTargeted>,
    /// What the node's `NodeModulesConfig` status says is loaded now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded: Option<Loaded>,
    /// The agent's last error for this Module on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorInfo>,
    /// The node's `<ns>.<name>.ready` label.
    pub ready_label: LabelInfo,
    /// Inconsistencies worth a look (label vs status, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The kernel mapping the Module resolves to on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetInfo {
    /// Index into `spec.moduleLoader.container.kernelMappings`.
    pub mapping_index: usize,
    /// The image, variables substituted.
    pub image: String,
    /// The kernel it was resolved for.
    pub kernel: String,
    /// `container.version` (ordered upgrade), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Why a Module does not apply to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotTargeted {
    /// Code (see [`NodeExplanation::reason`]).
    pub reason: String,
    /// Sentence from `kmm_common`'s targeting.
    pub message: String,
}

/// What is loaded on a node, from its `NodeModulesConfig` status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    /// Image reference loaded.
    pub image: String,
    /// Its digest, when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Kernel it was loaded into.
    pub kernel: String,
    /// Load time (RFC 3339), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// An error the agent reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// CamelCase reason (`ImagePullFailed`, `ModprobeFailed`, ...).
    pub reason: String,
    /// The agent's message.
    pub message: String,
}

/// The ready label on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelInfo {
    /// `kmm.node.kubernetes.io/<ns>.<name>.ready`.
    pub key: String,
    /// Whether the node has it.
    pub present: bool,
    /// Value of `<ns>.<name>.version.ready` (ordered upgrade), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in this module's docs is a valid document (the docs do not drift).
    #[test]
    fn documented_example_parses() {
        let src = include_str!("report.rs");
        let json: String = src
            .lines()
            .skip_while(|l| *l != "//! ```json")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| l.trim_start_matches("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let e: Explanation = serde_json::from_str(&json).unwrap();
        assert_eq!(e.schema_version, SCHEMA_VERSION);
        assert_eq!(e.summary.nodes, e.nodes.len());
        assert_eq!(e.nodes[1].state, NodeState::NotTargeted);
        assert_eq!(
            e.nodes[0].loaded.as_ref().and_then(|l| l.since.as_deref()),
            Some("2026-11-25T21:00:00Z")
        );
    }
}
