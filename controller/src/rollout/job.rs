//! The validation Job of one node, as a pure builder. Its name is derived from the rollout,
//! the node and the target version, so a new leader finds the Job its predecessor made.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kmm_common::ValidationJob;
use sha2::{Digest, Sha256};

use crate::labels::{MANAGED_BY, MODULE_NAME_LABEL};

/// Label naming the ModuleRollout a validation Job belongs to.
pub const ROLLOUT_LABEL: &str = "rollout.kmm-rs.io/name";
/// Annotation naming the node a validation Job validates.
pub const NODE_ANNOTATION: &str = "rollout.kmm-rs.io/node";
/// Annotation with the version a validation Job validates.
pub const VERSION_ANNOTATION: &str = "rollout.kmm-rs.io/version";

/// `<module>-validate-<hash>`: the hash covers rollout, node and target version; the name
/// stays a valid label value (≤ 63) for the Job controller's `job-name` label.
pub fn job_name(rollout: &str, module: &str, node: &str, target: &str) -> String {
    let digest = Sha256::digest(format!("{rollout}\0{node}\0{target}").as_bytes());
    let suffix = format!("-validate-{}", &hex::encode(digest)[..12]);
    let room = 63 - suffix.len();
    let module: String = module.chars().take(room).collect();
    format!("{}{suffix}", module.trim_end_matches(['-', '.']))
}

/// What a validation Job is for.
#[derive(Debug, Clone, Copy)]
pub struct For<'a> {
    /// The ModuleRollout's name.
    pub rollout: &'a str,
    /// Its namespace (the Module's).
    pub namespace: &'a str,
    /// The Module.
    pub module: &'a str,
    /// The node.
    pub node: &'a str,
    /// The version it now runs.
    pub target: &'a str,
}

/// The Job running `spec`'s Pod on the node: `nodeName` pinned, `restartPolicy: Never`,
/// owned by the ModuleRollout.
pub fn validation_job(spec: &ValidationJob, of: For<'_>, owner: OwnerReference) -> Job {
    let mut template = spec.template.clone();
    let pod = template.spec.get_or_insert_with(Default::default);
    pod.node_name = Some(of.node.to_string());
    pod.restart_policy = Some("Never".into());
    let labels = BTreeMap::from([
        (ROLLOUT_LABEL.to_string(), label_value(of.rollout)),
        (MODULE_NAME_LABEL.to_string(), label_value(of.module)),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ]);
    let annotations = BTreeMap::from([
        (NODE_ANNOTATION.to_string(), of.node.to_string()),
        (VERSION_ANNOTATION.to_string(), of.target.to_string()),
    ]);
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(labels.clone());
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(of.rollout, of.module, of.node, of.target)),
            namespace: Some(of.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(spec.backoff_limit.unwrap_or(0)),
            template,
            ..JobSpec::default()
        }),
        status: None,
    }
}

fn label_value(name: &str) -> String {
    let short: String = name.chars().take(63).collect();
    short.trim_end_matches(['-', '.', '_']).to_string()
}

/// [`ROLLOUT_LABEL`] and managed-by: the selector of the Jobs the rollout reconciler watches.
pub fn selector() -> String {
    format!("{ROLLOUT_LABEL},app.kubernetes.io/managed-by={MANAGED_BY}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_stable_short_and_differs_per_node_and_version() {
        let a = job_name("r", "gpu", "node-a", "v2");
        assert_eq!(a, job_name("r", "gpu", "node-a", "v2"));
        assert_ne!(a, job_name("r", "gpu", "node-b", "v2"));
        assert_ne!(a, job_name("r", "gpu", "node-a", "v3"));
        assert!(a.starts_with("gpu-validate-"));
        let long = job_name("r", &"m".repeat(80), "n", "v");
        assert!(long.len() <= 63, "{long}");
    }

    #[test]
    fn the_pod_is_pinned_to_the_node_and_never_restarts() {
        let spec: ValidationJob = serde_json::from_value(serde_json::json!({
            "template": {"spec": {"restartPolicy": "OnFailure", "nodeName": "elsewhere",
                "containers": [{"name": "check", "image": "r/check:1"}]}},
            "backoffLimit": 2,
        }))
        .unwrap();
        let owner = OwnerReference {
            api_version: "rollout.kmm-rs.io/v1alpha1".into(),
            kind: "ModuleRollout".into(),
            name: "r".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let of = For {
            rollout: "r",
            namespace: "ns",
            module: "gpu",
            node: "n1",
            target: "v2",
        };
        let job = validation_job(&spec, of, owner);
        let js = job.spec.unwrap();
        let pod = js.template.spec.unwrap();
        assert_eq!(pod.node_name.as_deref(), Some("n1"));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(js.backoff_limit, Some(2));
        assert_eq!(
            js.template.metadata.unwrap().labels.unwrap()[ROLLOUT_LABEL],
            "r"
        );
        assert_eq!(job.metadata.annotations.unwrap()[NODE_ANNOTATION], "n1");
    }
}
