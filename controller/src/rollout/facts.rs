//! Reads what the planner needs from the API, fresh each pass (never a cache that may lag
//! behind our own writes): the Module's nodes, and for each node in progress the Pods and the
//! validation Job its state waits on.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kmm_common::{
    Module, UpgradeState, upgrade_since_annotation, upgrade_state_label, version_module_label,
};
use kube::api::{Api, ListParams};
use kube::core::Selector;
use kube::{Client, ResourceExt};

use super::error::{Error, Result};
use super::job::job_name;
use super::plan::{JobFact, NodeFacts, NodeView, PodRef};
use crate::build::plan::{JobState, job_state};

/// The nodes carrying the Module's `version-module` label (the others are the admin's),
/// each marked in scope when the Module targets it apart from the version and it matches
/// the rollout's `nodeSelector`.
///
/// # Errors
/// The list failing.
pub async fn nodes(
    client: &Client,
    module: &Module,
    node_selector: Option<&LabelSelector>,
) -> Result<Vec<NodeView>> {
    let ns = module.namespace().unwrap_or_default();
    let label = version_module_label(&ns, &module.name_any());
    let list = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&label))
        .await
        .map_err(|e| Error::kube("listing the Module's nodes", e))?;
    Ok(list
        .items
        .iter()
        .map(|n| view(n, module, node_selector))
        .collect())
}

fn view(node: &Node, module: &Module, node_selector: Option<&LabelSelector>) -> NodeView {
    let labels = node.labels().clone();
    // The scope `kmmctl rollout status` shows too (the version label aside).
    let in_scope = kmm_common::in_rollout_scope(module, node_selector, node);
    NodeView {
        name: node.name_any(),
        uid: node.metadata.uid.clone(),
        annotations: node.annotations().clone(),
        unschedulable: node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        boot_id: node
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.boot_id.clone())
            .unwrap_or_default(),
        labels,
        in_scope,
    }
}

/// What one rollout reads besides its nodes.
pub struct Scope<'a> {
    /// API client.
    pub client: &'a Client,
    /// The ModuleRollout's name and namespace.
    pub rollout: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// The Module's name.
    pub module: &'a str,
    /// `waitForPods.podSelector`.
    pub wait_selector: Option<&'a Selector>,
    /// `eviction.podSelector`.
    pub evict_selector: Option<&'a Selector>,
    /// The target version.
    pub target: &'a str,
}

/// Facts of each in-scope node whose state waits on Pods or a Job.
///
/// # Errors
/// API failures.
pub async fn gather(scope: &Scope<'_>, nodes: &[NodeView]) -> Result<BTreeMap<String, NodeFacts>> {
    let state_key = upgrade_state_label(scope.namespace, scope.module);
    let mut out = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.in_scope) {
        let state = node
            .labels
            .get(&state_key)
            .and_then(|s| UpgradeState::parse(s));
        let mut facts = NodeFacts::default();
        match state {
            Some(UpgradeState::WaitingForPods) => {
                if let Some(sel) = scope.wait_selector {
                    facts.waiting_pods = pods_on(scope.client, &node.name, sel)
                        .await?
                        .iter()
                        .filter(|p| !finished(p))
                        .map(pod_ref)
                        .collect();
                }
            }
            Some(UpgradeState::Evicting) => {
                if let Some(sel) = scope.evict_selector {
                    let pods = pods_on(scope.client, &node.name, sel).await?;
                    for p in pods.iter().filter(|p| evictable(p)) {
                        if p.metadata.deletion_timestamp.is_some() {
                            facts.terminating_pods.push(pod_ref(p));
                        } else {
                            facts.evict_pods.push(pod_ref(p));
                        }
                    }
                }
            }
            Some(UpgradeState::Validating) => {
                facts.job = job_fact(scope, node).await?;
            }
            _ => continue,
        }
        out.insert(node.name.clone(), facts);
    }
    Ok(out)
}

async fn pods_on(client: &Client, node: &str, selector: &Selector) -> Result<Vec<Pod>> {
    let lp = ListParams::default()
        .fields(&format!("spec.nodeName={node}"))
        .labels_from(selector);
    Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .map(|l| l.items)
        .map_err(|e| Error::kube(format!("listing Pods on {node}"), e))
}

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        namespace: p.namespace().unwrap_or_default(),
        name: p.name_any(),
    }
}

fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Kubernetes' drain rule: DaemonSet Pods come back at once and mirror Pods are the
/// kubelet's, so neither is evicted; finished Pods hold nothing.
pub fn evictable(p: &Pod) -> bool {
    let daemonset = p
        .owner_references()
        .iter()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let mirror = p.annotations().contains_key("kubernetes.io/config.mirror");
    !daemonset && !mirror && !finished(p)
}

async fn job_fact(scope: &Scope<'_>, node: &NodeView) -> Result<JobFact> {
    let name = job_name(scope.rollout, scope.module, &node.name, scope.target);
    let api: Api<Job> = Api::namespaced(scope.client.clone(), scope.namespace);
    let Some(job) = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading Job {name}"), e))?
    else {
        return Ok(JobFact::Absent);
    };
    // A Job made before the node entered `validating` is from an earlier attempt (a retry
    // after `failed`): its verdict is not this attempt's.
    let since = node
        .annotations
        .get(&upgrade_since_annotation(scope.namespace, scope.module))
        .and_then(|s| s.parse::<Timestamp>().ok());
    let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if let (Some(since), Some(created)) = (since, created)
        && created < since
    {
        return Ok(if job.metadata.deletion_timestamp.is_some() {
            JobFact::Active
        } else {
            JobFact::Stale
        });
    }
    Ok(match job_state(&job) {
        JobState::Active => JobFact::Active,
        JobState::Succeeded => JobFact::Succeeded,
        JobState::Failed(why) => JobFact::Failed(why),
    })
}
