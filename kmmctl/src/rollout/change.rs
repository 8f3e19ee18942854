//! What `skip`, `unskip` and `retry` do to one node, decided from its current `upgrade-state`
//! (pure), and the Node patch that does it.
//!
//! The controller owns every state but two hand-offs: the admin may set `skip` (the controller
//! never touches a skipped node) and may set a `failed` node back to `required` (the
//! controller leaves a failed node failed until then). Nothing else is ours to move.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kmm_common::{
    UpgradeState, upgrade_message_annotation, upgrade_since_annotation, upgrade_state_label,
};
use serde_json::{Value, json};

/// A change asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `kmmctl rollout skip` (`force`: even a node in progress).
    Skip {
        /// Skip a node mid-way too.
        force: bool,
    },
    /// `kmmctl rollout unskip`.
    Unskip,
    /// `kmmctl rollout retry`.
    Retry,
}

/// What to do with one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Set the label to this state (with a note for the admin, e.g. the node stays cordoned).
    Set(UpgradeState, Option<String>),
    /// The node is already there: nothing to write.
    Already(UpgradeState),
    /// Refused, and why (nothing is written to any node).
    Refuse(String),
}

/// What we know of the node: its `upgrade-state` label value (raw) and whether the rollout
/// cordoned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current<'a> {
    /// The label value, if any.
    pub state: Option<&'a str>,
    /// The node is cordoned and carries the rollout's `upgrade-cordoned` annotation.
    pub cordoned_by_rollout: bool,
}

/// Decides `change` for `node` (pure).
pub fn decide(change: Change, node: &str, current: Current<'_>) -> Decision {
    let parsed = current.state.map(UpgradeState::parse);
    let shown = current.state.unwrap_or("unlabelled");
    match change {
        Change::Skip { force } => match parsed {
            Some(Some(UpgradeState::Skip)) => Decision::Already(UpgradeState::Skip),
            None
            | Some(Some(UpgradeState::Required | UpgradeState::Done | UpgradeState::Failed)) => {
                Decision::Set(UpgradeState::Skip, None)
            }
            // In progress, or a value the controller does not write: it may be mid-way.
            Some(_) if force => Decision::Set(UpgradeState::Skip, mid_way_note(node, current)),
            Some(_) => Decision::Refuse(format!(
                "node {node} is {shown}, mid-way through its upgrade: it may be cordoned, its \
                 Pods evicted or its module unloaded, and the rollout never touches a skipped \
                 node again, so it would stay so; wait for it to finish (or fail), or use \
                 --force and see to the node yourself"
            )),
        },
        Change::Unskip => match parsed {
            Some(Some(UpgradeState::Skip)) => Decision::Set(UpgradeState::Required, None),
            _ => Decision::Refuse(format!("node {node} is {shown}, not skipped")),
        },
        Change::Retry => match parsed {
            Some(Some(UpgradeState::Failed)) => Decision::Set(UpgradeState::Required, None),
            _ => Decision::Refuse(format!("node {node} is {shown}, not failed")),
        },
    }
}

/// What a forced skip leaves behind.
fn mid_way_note(node: &str, current: Current<'_>) -> Option<String> {
    current.cordoned_by_rollout.then(|| {
        format!("{node} stays cordoned (the rollout cordoned it): `kubectl uncordon {node}` when it is ready")
    })
}

/// The JSON merge patch that moves `node` to `state`: the label, `upgrade-since` = `now` (RFC 3339, seconds), the
/// `upgrade-message` removed (it described the state left), and `resourceVersion`, so the
/// API server refuses it (409) if the controller changed the node since we read it.
pub fn node_patch(
    namespace: &str,
    module: &str,
    state: UpgradeState,
    now: Timestamp,
    resource_version: &str,
) -> Value {
    json!({
        "metadata": {
            "resourceVersion": resource_version,
            "labels": { upgrade_state_label(namespace, module): state.as_str() },
            "annotations": {
                upgrade_since_annotation(namespace, module): Time(now),
                upgrade_message_annotation(namespace, module): Value::Null,
            },
        }
    })
}

#[cfg(test)]
#[path = "change_tests.rs"]
mod tests;
