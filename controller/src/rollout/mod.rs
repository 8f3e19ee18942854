//! The ModuleRollout reconciler (leader only): kmm-rs's automatic ordered upgrade of a
//! versioned Module, a few nodes at a time (see `docs/rollout.md`).
//!
//! Each pass reads the Module and its nodes fresh from the API, plans ([`plan::plan`], pure)
//! and applies the plan ([`apply`]); all state is on the Nodes (the `upgrade-state` label and
//! annotations), on the validation Jobs and in the status, so a restarted or new leader
//! recomputes the same plan and never redoes a `done` node.
//!
//! - [`policy`]: the spec read against the Module, or why it cannot run;
//! - [`plan`]: per-node steps and counts, pure;
//! - [`facts`]: nodes, Pods and Jobs read for the plan;
//! - [`apply`]: Node patches, evictions, Jobs, events;
//! - [`job`]: the validation Job;
//! - [`status`]: the status and rollout-level events, pure.

pub mod apply;
pub mod error;
pub mod facts;
pub mod job;
pub mod plan;
pub mod policy;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_common::{
    Module, ModuleRollout, ModuleRolloutStatus, ROLLOUT_FINALIZER, upgrade_message_annotation,
    upgrade_state_label,
};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::instrument;

pub use error::{Error, Result};

use crate::metrics::Metrics;
use crate::reconcile::triggers::NodeFingerprints;
use crate::reconcile::{Settings, scoped};
use plan::{Input, NodeEvent};

/// What every rollout pass shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// The same API without kube's retry of 429: an eviction a PodDisruptionBudget refuses
    /// answers 429, and the node must report that, not retry it for minutes.
    pub eviction_client: Client,
    /// Metrics (`kmm_rollout_*`).
    pub metrics: Metrics,
    /// Namespace scope and timings.
    pub settings: Settings,
    /// Events on Nodes and ModuleRollouts.
    pub recorder: Recorder,
    /// Every ModuleRollout in scope (two rollouts of one Module: the older one runs).
    pub rollouts: Store<ModuleRollout>,
}

/// Runs the ModuleRollout controller until the process stops.
pub async fn run(client: Client, eviction_client: Client, metrics: Metrics, settings: Settings) {
    let ns = settings.namespace.clone();
    // Labels (state, version, ready) are what a rollout reads of its nodes.
    let mut fingerprints = NodeFingerprints::default();
    let node_trigger = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .filter_map(move |ev| {
            future::ready(match ev {
                Ok(ev) => fingerprints.relevant(&ev).then_some(()),
                Err(e) => {
                    tracing::warn!(error = %e, "node watch (rollout)");
                    None
                }
            })
        });
    let controller = Controller::new(
        scoped::<ModuleRollout>(&client, ns.as_deref()),
        watcher::Config::default(),
    );
    let rollouts = controller.store();
    let of_module = rollouts.clone();
    let controller = controller
        .owns(
            scoped::<Job>(&client, ns.as_deref()),
            watcher::Config::default().labels(&job::selector()),
        )
        .watches(
            scoped::<Module>(&client, ns.as_deref()),
            watcher::Config::default(),
            move |m: Module| rollouts_of(&of_module, &m),
        )
        .reconcile_all_on(node_trigger)
        .with_config(controller::Config::default().debounce(Duration::from_millis(200)));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kmm-controller".into(),
            instance: Some(settings.instance.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        eviction_client,
        metrics: metrics.clone(),
        settings,
        recorder,
        rollouts,
    });
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(move |res| {
            match res {
                Ok((obj, _)) => tracing::debug!(rollout = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::debug!(rollout = %obj, error = %e, "rollout pass failed");
                }
                Err(controller::Error::ObjectNotFound(obj)) => {
                    let ns = obj.namespace.clone().unwrap_or_default();
                    metrics.set_rollout_nodes(&ns, &obj.name, None);
                }
                Err(e) => tracing::warn!(error = %e, "rollout controller"),
            }
            future::ready(())
        })
        .await;
}

fn rollouts_of(store: &Store<ModuleRollout>, module: &Module) -> Vec<ObjectRef<ModuleRollout>> {
    let ns = module.namespace();
    store
        .state()
        .iter()
        .filter(|r| r.namespace() == ns && r.spec.module_name == module.name_any())
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// Another ModuleRollout of the same Module created earlier (it runs, this one waits).
fn earlier_rollout(store: &Store<ModuleRollout>, rollout: &ModuleRollout) -> Option<String> {
    let key = |r: &ModuleRollout| (r.metadata.creation_timestamp.clone(), r.name_any());
    store
        .state()
        .iter()
        .filter(|r| {
            r.namespace() == rollout.namespace()
                && r.spec.module_name == rollout.spec.module_name
                && r.name_any() != rollout.name_any()
                && r.metadata.deletion_timestamp.is_none()
                && key(r) < key(rollout)
        })
        .map(|r| r.name_any())
        .next()
}

/// One pass over one ModuleRollout.
///
/// # Errors
/// API failures (the pass is retried).
#[instrument(skip(rollout, ctx), fields(ns = rollout.namespace(), name = rollout.name_any(), module = %rollout.spec.module_name))]
pub async fn reconcile(rollout: Arc<ModuleRollout>, ctx: Arc<Context>) -> Result<Action> {
    let _ = ctx.rollouts.wait_until_ready().await;
    let ns = rollout
        .namespace()
        .ok_or_else(|| Error::Invalid("no namespace".into()))?;
    let api: Api<ModuleRollout> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, ROLLOUT_FINALIZER, rollout, |event| async {
        match event {
            Event::Apply(r) => pass(r, &ns, &ctx).await,
            Event::Cleanup(r) => release(&r, &ns, &ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// A deleted ModuleRollout releases its Module's nodes ([`plan::release`]: uncordons those it
/// cordoned, clears the states nothing drives any more) before its finalizer goes; its
/// validation Jobs go with it (owner references). One that never ran (another rollout of
/// the Module runs) leaves the nodes to that one.
async fn release(rollout: &ModuleRollout, ns: &str, ctx: &Context) -> Result<Action> {
    let name = rollout.name_any();
    ctx.metrics.set_rollout_nodes(ns, &name, None);
    if let Some(other) = earlier_rollout(&ctx.rollouts, rollout) {
        tracing::info!(%other, "deleted while another rollout of its Module runs; its nodes are that one's");
        return Ok(Action::await_change());
    }
    let module = &rollout.spec.module_name;
    let nodes = Api::<Node>::all(ctx.client.clone());
    let driven = nodes
        .list(&ListParams::default().labels(&upgrade_state_label(ns, module)))
        .await
        .map_err(|e| Error::kube("listing the rollout's nodes", e))?;
    let now = k8s_openapi::jiff::Timestamp::now();
    for node in &driven.items {
        let Some(patch) = plan::release(ns, module, &name, node.labels(), node.annotations())
        else {
            continue;
        };
        let node_name = node.name_any();
        match nodes
            .patch(
                &node_name,
                &PatchParams::default(),
                &Patch::Merge(patch.to_json(ns, module, now)),
            )
            .await
        {
            Ok(_) => tracing::info!(node = %node_name, uncordoned = patch.unschedulable.is_some(),
                "released by the deleted rollout"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("releasing Node {node_name}"), e)),
        }
    }
    Ok(Action::await_change())
}

/// One pass of a ModuleRollout that is not being deleted.
async fn pass(rollout: Arc<ModuleRollout>, ns: &str, ctx: &Context) -> Result<Action> {
    let ns = ns.to_string();
    let spec = &rollout.spec;
    let module = Api::<Module>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&spec.module_name)
        .await
        .map_err(|e| Error::kube(format!("reading Module {}", spec.module_name), e))?;
    let resolved = match earlier_rollout(&ctx.rollouts, &rollout) {
        Some(other) => Err(format!(
            "ModuleRollout {other} already rolls out Module {}; only one rollout per Module runs",
            spec.module_name
        )),
        None => policy::resolve(spec, module.as_ref()),
    };
    let old = rollout.status.clone().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let (policy, module) = match (resolved, module) {
        (Ok(policy), Some(module)) => (policy, module),
        (Err(why), _) => {
            let new = status::of_invalid(&why, &old, rollout.metadata.generation, &Time(now));
            finish(&rollout, &ns, &old, new, ctx).await?;
            tracing::info!(%why, "rollout cannot run");
            // A Module or spec change wakes it.
            return Ok(Action::requeue(ctx.settings.resync));
        }
        // `resolve` refuses a missing Module.
        (Ok(_), None) => return Ok(Action::requeue(ctx.settings.error_requeue)),
    };
    let selectors = Selectors::of(spec);
    let nodes = facts::nodes(&ctx.client, &module, spec.node_selector.as_ref()).await?;
    let rollout_name = rollout.name_any();
    let scope = facts::Scope {
        client: &ctx.client,
        rollout: &rollout_name,
        namespace: &ns,
        module: &spec.module_name,
        wait_selector: selectors.wait.as_ref(),
        evict_selector: selectors.evict.as_ref(),
        target: &policy.target,
    };
    let node_facts = facts::gather(&scope, &nodes).await?;
    let mut plan = plan::plan(&Input {
        namespace: &ns,
        module: &spec.module_name,
        policy: &policy,
        nodes: &nodes,
        facts: &node_facts,
        now,
    });
    let message_key = upgrade_message_annotation(&ns, &spec.module_name);
    let messages: BTreeMap<String, Option<String>> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.annotations.get(&message_key).cloned()))
        .collect();
    let uids: BTreeMap<String, String> = nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), n.uid.clone()?)))
        .collect();
    let executor = apply::Executor {
        client: &ctx.client,
        node_uids: &uids,
        eviction_client: &ctx.eviction_client,
        recorder: &ctx.recorder,
        metrics: &ctx.metrics,
        rollout: &rollout,
        namespace: &ns,
        module: &spec.module_name,
        target: &policy.target,
        now,
    };
    let refused = executor.run(&plan.actions, &messages).await?;
    for b in &mut plan.blocked {
        if let Some(why) = refused.get(&b.node) {
            b.message.clone_from(why);
        }
    }
    let new = status::of_plan(
        &plan,
        &policy,
        &old,
        rollout.metadata.generation,
        &Time(now),
    );
    ctx.metrics
        .set_rollout_nodes(&ns, &rollout_name, Some(&new.nodes));
    finish(&rollout, &ns, &old, new, ctx).await?;
    if plan.wave.is_empty() {
        Ok(Action::requeue(ctx.settings.resync))
    } else {
        Ok(Action::requeue(ctx.settings.rollout_poll))
    }
}

/// The rollout's selectors, read (their errors were reported by [`policy::resolve`]).
struct Selectors {
    wait: Option<kube::core::Selector>,
    evict: Option<kube::core::Selector>,
}

impl Selectors {
    fn of(spec: &kmm_common::ModuleRolloutSpec) -> Self {
        Self {
            wait: spec
                .wait_for_pods
                .as_ref()
                .and_then(|w| policy::pod_selector("", &w.pod_selector).ok()),
            evict: spec
                .eviction
                .as_ref()
                .and_then(|e| policy::pod_selector("", &e.pod_selector).ok()),
        }
    }
}

/// Writes the status when it changed, and the rollout-level events of the change.
async fn finish(
    rollout: &ModuleRollout,
    ns: &str,
    old: &ModuleRolloutStatus,
    new: ModuleRolloutStatus,
    ctx: &Context,
) -> Result<()> {
    if *old == new {
        return Ok(());
    }
    let api: Api<ModuleRollout> = Api::namespaced(ctx.client.clone(), ns);
    // Explicit empties: a merge patch would keep what an earlier status had.
    let patch = serde_json::json!({"status": {
        "targetVersion": new.target_version,
        "nodes": new.nodes,
        "wave": new.wave,
        "blocked": new.blocked,
        "conditions": new.conditions,
        "observedGeneration": new.observed_generation,
    }});
    api.patch_status(
        &rollout.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| Error::kube("writing ModuleRollout status", e))?;
    for (reason, note, warning) in status::events(old, &new) {
        let event = NodeEvent {
            reason,
            note,
            warning,
        };
        publish_on_rollout(rollout, &event, ctx).await;
    }
    Ok(())
}

async fn publish_on_rollout(rollout: &ModuleRollout, event: &NodeEvent, ctx: &Context) {
    use kube::Resource;
    if let Err(e) = ctx
        .recorder
        .publish(&event.to_kube(), &rollout.object_ref(&()))
        .await
    {
        tracing::warn!(error = %e, reason = event.reason, "publishing event");
    }
}

/// Retries after `error_requeue`, counting the failure by reason.
pub fn error_policy(rollout: Arc<ModuleRollout>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .rollout_errors
        .with_label_values(&[error.metric_label()])
        .inc();
    tracing::warn!(rollout = %rollout.name_any(), error = %error, "rollout pass failed");
    Action::requeue(ctx.settings.error_requeue)
}
