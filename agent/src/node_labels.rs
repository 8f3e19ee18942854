//! Writes this agent's own Node labels (`kmm.node.kubernetes.io/<ns>.<name>.ready`
//! and `.version.ready`) as a merge patch of labels only, nothing else of the Node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

/// The labels to set (`Some(value)`) or remove (`None`).
pub type LabelChanges = BTreeMap<String, Option<String>>;

/// The merge patch body for `changes`: `null` removes a label.
pub fn label_patch(changes: &LabelChanges) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> = changes
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.clone()
                    .map_or(serde_json::Value::Null, serde_json::Value::String),
            )
        })
        .collect();
    serde_json::json!({ "metadata": { "labels": labels } })
}

/// Only the changes that differ from the node's current labels, so an unchanged
/// node costs no write.
pub fn effective_changes(
    current: &BTreeMap<String, String>,
    wanted: &LabelChanges,
) -> LabelChanges {
    wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != v.as_ref())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Applies `changes` to the node `node_name` (no request when there is nothing to change).
///
/// # Errors
/// The API server's answer when the patch is refused.
pub async fn apply(
    nodes: &Api<Node>,
    node_name: &str,
    current: &BTreeMap<String, String>,
    wanted: &LabelChanges,
) -> Result<(), kube::Error> {
    let changes = effective_changes(current, wanted);
    if changes.is_empty() {
        return Ok(());
    }
    nodes
        .patch(
            node_name,
            &PatchParams::default(),
            &Patch::Merge(&label_patch(&changes)),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_and_removes() {
        let mut ch = LabelChanges::new();
        ch.insert("a".into(), Some("1".into()));
        ch.insert("b".into(), None);
        assert_eq!(
            label_patch(&ch),
            serde_json::json!({"metadata": {"labels": {"a": "1", "b": null}}})
        );
    }

    #[test]
    fn unchanged_labels_need_no_patch() {
        let current = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let mut wanted = LabelChanges::new();
        wanted.insert("a".into(), Some("1".into()));
        wanted.insert("gone".into(), None);
        assert!(effective_changes(&current, &wanted).is_empty());
        wanted.insert("a".into(), Some("2".into()));
        assert_eq!(effective_changes(&current, &wanted).len(), 1);
    }
}
