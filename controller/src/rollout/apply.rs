//! Carries out a plan's node actions: one Node patch per transition, evictions through the
//! Eviction API (a refusal names the PodDisruptionBudget), forced deletions, validation Jobs,
//! and an Event on the Node and on the ModuleRollout per transition.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kmm_common::{ModuleRollout, upgrade_message_annotation};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use tracing::instrument;

use super::error::{Error, Result};
use super::job::{For, validation_job};
use super::plan::{Effect, NodeAction, NodeEvent, PodRef};
use crate::metrics::Metrics;

/// What the executor needs.
pub struct Executor<'a> {
    /// API client.
    pub client: &'a Client,
    /// Node uids by name, for the events' references.
    pub node_uids: &'a BTreeMap<String, String>,
    /// The client evictions go through (no retry of 429: a refusal is reported at once).
    pub eviction_client: &'a Client,
    /// Events.
    pub recorder: &'a Recorder,
    /// Transition counter.
    pub metrics: &'a Metrics,
    /// The ModuleRollout.
    pub rollout: &'a ModuleRollout,
    /// Its namespace (the Module's).
    pub namespace: &'a str,
    /// The Module's name.
    pub module: &'a str,
    /// The target version.
    pub target: &'a str,
    /// Now (for `upgrade-since`).
    pub now: Timestamp,
}

impl Executor<'_> {
    /// Applies `actions` in order; returns, per node, why an eviction was refused. Starts
    /// are skipped once a step before them failed (a node freed on paper but not in the API
    /// must not be replaced yet).
    ///
    /// # Errors
    /// The first API failure, after trying every step of nodes already in progress.
    pub async fn run(
        &self,
        actions: &[NodeAction],
        current_messages: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>> {
        let mut refused = BTreeMap::new();
        let mut first_error = None;
        for action in actions {
            if action.starts && first_error.is_some() {
                break;
            }
            let current = current_messages.get(&action.node).cloned().flatten();
            match self.one(action, current).await {
                Ok(Some(why)) => {
                    refused.insert(action.node.clone(), why);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(node = %action.node, error = %e, "rollout step");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(refused),
        }
    }

    #[instrument(skip_all, fields(node = %action.node))]
    async fn one(&self, action: &NodeAction, message: Option<String>) -> Result<Option<String>> {
        if let Some(patch) = &action.patch {
            let body = patch.to_json(self.namespace, self.module, self.now);
            self.patch_node(&action.node, &body).await?;
            if let Some(state) = patch.state {
                self.metrics
                    .rollout_transitions
                    .with_label_values(&[state.as_str()])
                    .inc();
                tracing::info!(state = %state, "node transition");
            }
        }
        if let Some(event) = &action.event {
            self.publish(&action.node, event).await;
        }
        match &action.effect {
            None => Ok(None),
            Some(Effect::Evict(pods)) => self.evict(&action.node, pods, message).await,
            Some(Effect::Delete(pods)) => {
                for p in pods {
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace);
                    match api.delete(&p.name, &DeleteParams::default()).await {
                        Ok(_) => tracing::info!(pod = %p, "deleted after the eviction timeout"),
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(Error::kube(format!("deleting Pod {p}"), e)),
                    }
                }
                Ok(None)
            }
            Some(Effect::CreateJob) => self.create_job(&action.node).await.map(|()| None),
            Some(Effect::DeleteJob) => self.delete_job(&action.node).await.map(|()| None),
        }
    }

    async fn patch_node(&self, node: &str, body: &serde_json::Value) -> Result<()> {
        Api::<Node>::all(self.client.clone())
            .patch(node, &PatchParams::default(), &Patch::Merge(body))
            .await
            .map_err(|e| Error::kube(format!("patching Node {node}"), e))?;
        Ok(())
    }

    /// Evicts each Pod; a 429 is a PodDisruptionBudget saying no: the node waits, and its
    /// message (annotation, `status.blocked`, a Warning event once per change) names it.
    async fn evict(
        &self,
        node: &str,
        pods: &[PodRef],
        current: Option<String>,
    ) -> Result<Option<String>> {
        let mut refusals = Vec::new();
        for p in pods {
            let api: Api<Pod> = Api::namespaced(self.eviction_client.clone(), &p.namespace);
            match api.evict(&p.name, &EvictParams::default()).await {
                Ok(_) => tracing::info!(pod = %p, "evicted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    let budgets = self.budgets_of(p).await;
                    refusals.push(if budgets.is_empty() {
                        format!("eviction of Pod {p} refused: {}", s.message)
                    } else {
                        format!(
                            "eviction of Pod {p} refused by PodDisruptionBudget {}",
                            budgets.join(", ")
                        )
                    });
                }
                Err(e) => return Err(Error::kube(format!("evicting Pod {p}"), e)),
            }
        }
        if refusals.is_empty() {
            return Ok(None);
        }
        let why = refusals.join("; ");
        if current.as_deref() != Some(why.as_str()) {
            let key = upgrade_message_annotation(self.namespace, self.module);
            let body = serde_json::json!({"metadata": {"annotations": {key: why}}});
            self.patch_node(node, &body).await?;
            let event = NodeEvent {
                reason: "EvictionBlocked",
                note: format!("node {node}: {why}"),
                warning: true,
            };
            self.publish(node, &event).await;
        }
        Ok(Some(why))
    }

    /// `ns/name (disruptionsAllowed n)` of the budgets selecting the Pod (best effort: the
    /// refusal stands even if they cannot be listed).
    async fn budgets_of(&self, pod: &PodRef) -> Vec<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), &pod.namespace);
        let (Ok(Some(p)), Ok(list)) = (
            pods.get_opt(&pod.name).await,
            pdbs.list(&ListParams::default()).await,
        ) else {
            return Vec::new();
        };
        list.items
            .into_iter()
            .filter(|b| {
                b.spec
                    .as_ref()
                    .and_then(|s| s.selector.clone())
                    .and_then(|s| Selector::try_from(s).ok())
                    .is_some_and(|s| s.matches(p.labels()))
            })
            .map(|b| {
                let allowed = b
                    .status
                    .as_ref()
                    .and_then(|s| s.disruptions_allowed)
                    .unwrap_or(0);
                format!(
                    "{}/{} (disruptionsAllowed {allowed})",
                    pod.namespace,
                    b.name_any()
                )
            })
            .collect()
    }

    async fn create_job(&self, node: &str) -> Result<()> {
        let Some(spec) = self
            .rollout
            .spec
            .validation
            .as_ref()
            .and_then(|v| v.job.as_ref())
        else {
            return Ok(());
        };
        let owner = self
            .rollout
            .controller_owner_ref(&())
            .ok_or_else(|| Error::Invalid("no uid yet".into()))?;
        let of = For {
            rollout: &self.rollout.name_any(),
            namespace: self.namespace,
            module: self.module,
            node,
            target: self.target,
        };
        let job = validation_job(spec, of, owner);
        let name = job.name_any();
        let api: Api<Job> = Api::namespaced(self.client.clone(), self.namespace);
        match api.create(&PostParams::default(), &job).await {
            Ok(_) => {
                tracing::info!(job = %name, "created the validation Job");
                Ok(())
            }
            // Made by a previous pass (or leader).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(Error::kube(format!("creating Job {name}"), e)),
        }
    }

    async fn delete_job(&self, node: &str) -> Result<()> {
        let name = super::job::job_name(&self.rollout.name_any(), self.module, node, self.target);
        let api: Api<Job> = Api::namespaced(self.client.clone(), self.namespace);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                tracing::info!(job = %name, "deleted the validation Job of an earlier attempt");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Error::kube(format!("deleting Job {name}"), e)),
        }
    }

    /// The event on the Node and on the ModuleRollout (failures only logged: an event is
    /// never worth a retry of the step).
    pub async fn publish(&self, node: &str, event: &NodeEvent) {
        let ev = event.to_kube();
        let node_ref = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            uid: self.node_uids.get(node).cloned(),
            ..ObjectReference::default()
        };
        for reference in [node_ref, self.rollout.object_ref(&())] {
            if let Err(e) = self.recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, reason = event.reason, "publishing event");
            }
        }
    }
}
