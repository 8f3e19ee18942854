//! Writes this agent's own Node labels (`kmm.node.kubernetes.io/<ns>.<name>.ready`
//! and `.version.ready`) as a merge patch of labels only, nothing else of the Node.
//!
//! One request carries every change. When the API server refuses it as invalid (one
//! Module's key or value cannot exist), each change is retried on its own, so one bad
//! label cannot keep every other Module's label from moving.

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};

/// The labels to set (`Some(value)`) or remove (`None`).
pub type LabelChanges = BTreeMap<String, Option<String>>;

/// Why labels did not all land.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The API server could not be asked or refused the write for another reason than
    /// an invalid label (nothing was changed).
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// These labels are invalid and were not written; every other change was.
    #[error("node labels refused by the API server (the others were written): {}", describe(.0))]
    Refused(Vec<(String, String)>),
}

fn describe(refused: &[(String, String)]) -> String {
    refused
        .iter()
        .map(|(key, why)| format!("{key}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

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

/// What the API server said, without the Status dump.
fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// The API server's "the object would be invalid" answer (422 `Invalid`).
fn is_invalid(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422 || s.reason == "Invalid")
}

/// Applies `changes` to the node `node_name` (no request when there is nothing to change).
///
/// # Errors
/// [`LabelError::Api`] when the API server cannot be reached or refuses the write for
/// another reason; [`LabelError::Refused`] naming the labels that cannot be written (all
/// others were).
pub async fn apply(
    nodes: &Api<Node>,
    node_name: &str,
    current: &BTreeMap<String, String>,
    wanted: &LabelChanges,
) -> Result<(), LabelError> {
    apply_with(&effective_changes(current, wanted), |patch| async move {
        nodes
            .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    })
    .await
}

/// [`apply`] with the patch request as a parameter: one request for all `changes`; when it
/// is refused as invalid, one request per change, so the valid ones land.
///
/// # Errors
/// See [`apply`].
pub async fn apply_with<F, Fut>(changes: &LabelChanges, mut patch: F) -> Result<(), LabelError>
where
    F: FnMut(serde_json::Value) -> Fut,
    Fut: Future<Output = Result<(), kube::Error>>,
{
    if changes.is_empty() {
        return Ok(());
    }
    match patch(label_patch(changes)).await {
        Ok(()) => return Ok(()),
        Err(e) if is_invalid(&e) && changes.len() > 1 => {
            tracing::warn!(error = %e, "label patch refused as invalid; writing each label on its own");
        }
        Err(e) if is_invalid(&e) => {
            return Err(LabelError::Refused(
                changes.keys().map(|k| (k.clone(), reason(&e))).collect(),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let mut refused = Vec::new();
    for (key, value) in changes {
        let one = LabelChanges::from([(key.clone(), value.clone())]);
        match patch(label_patch(&one)).await {
            Ok(()) => {}
            Err(e) if is_invalid(&e) => {
                tracing::warn!(label = %key, error = %e, "node label refused");
                refused.push((key.clone(), reason(&e)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(LabelError::Refused(refused))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::sync::Mutex;

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

    fn status(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: format!("{reason} ({code})"),
            ..kube::core::Status::default()
        }))
    }

    /// A fake API server: refuses (422) any patch that carries a key containing "bad",
    /// records every body it gets and the labels it applied.
    struct Fake {
        bodies: Mutex<Vec<serde_json::Value>>,
        applied: Mutex<BTreeMap<String, Option<String>>>,
        down: bool,
    }

    impl Fake {
        fn new(down: bool) -> Self {
            Self {
                bodies: Mutex::new(Vec::new()),
                applied: Mutex::new(BTreeMap::new()),
                down,
            }
        }

        async fn patch(&self, body: serde_json::Value) -> Result<(), kube::Error> {
            self.bodies.lock().unwrap().push(body.clone());
            if self.down {
                return Err(status(503, "ServiceUnavailable"));
            }
            let labels = body["metadata"]["labels"].as_object().unwrap().clone();
            if labels.keys().any(|k| k.contains("bad")) {
                return Err(status(422, "Invalid"));
            }
            for (k, v) in labels {
                self.applied
                    .lock()
                    .unwrap()
                    .insert(k, v.as_str().map(str::to_owned));
            }
            Ok(())
        }
    }

    fn changes(keys: &[(&str, Option<&str>)]) -> LabelChanges {
        keys.iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    #[tokio::test]
    async fn all_valid_labels_cost_one_request() {
        let fake = Fake::new(false);
        let ch = changes(&[("a", Some("1")), ("b", None), ("c", Some("2"))]);
        apply_with(&ch, |b| fake.patch(b)).await.unwrap();
        assert_eq!(fake.bodies.lock().unwrap().len(), 1);
        assert_eq!(*fake.applied.lock().unwrap(), ch);
    }

    #[tokio::test]
    async fn one_invalid_label_does_not_block_the_others() {
        let fake = Fake::new(false);
        let ch = changes(&[("a", Some("1")), ("bad-key", Some("x")), ("c", None)]);
        let err = apply_with(&ch, |b| fake.patch(b)).await.unwrap_err();
        let LabelError::Refused(refused) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            refused.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["bad-key"]
        );
        assert!(err.to_string().contains("bad-key"), "{err}");
        // The merged patch, then one per change.
        assert_eq!(fake.bodies.lock().unwrap().len(), 4);
        assert_eq!(
            *fake.applied.lock().unwrap(),
            changes(&[("a", Some("1")), ("c", None)])
        );
    }

    #[tokio::test]
    async fn other_errors_are_not_retried_per_label() {
        let fake = Fake::new(true);
        let ch = changes(&[("a", Some("1")), ("b", Some("2"))]);
        let err = apply_with(&ch, |b| fake.patch(b)).await.unwrap_err();
        assert!(matches!(err, LabelError::Api(_)), "{err}");
        assert_eq!(fake.bodies.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn nothing_to_change_sends_nothing() {
        let fake = Fake::new(false);
        apply_with(&LabelChanges::new(), |b| fake.patch(b))
            .await
            .unwrap();
        assert!(fake.bodies.lock().unwrap().is_empty());
    }
}
