//! The Module reconciler: finalizer, namespace label, node plugins (device
//! plugin, DRA kubelet plugin and its DeviceClasses), status.
//!
//! Runs only on the leader. Nodes, NodeModulesConfigs, node-plugin pods and
//! managed DeviceClasses are read from reflector caches, and their watch
//! streams also wake the Modules concerned, so status follows the fleet
//! without a list per reconcile.

mod namespace;
pub mod nmc_gc;
mod objects;
pub mod triggers;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::DeviceClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_common::{DaemonSetStatus, MODULE_FINALIZER, Module, NodeModulesConfig};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::instrument;

use crate::build::{self, BuildContext, ImageLookups};
use crate::error::{Error, Result};
use crate::kstatus;
use crate::labels::MANAGED_BY;
use crate::metrics::Metrics;
use crate::plugin::{Kind, all_plugins_selector, device_class};
use crate::status::{self, Fleet};
use triggers::NodeFingerprints;

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Only Modules (and node-plugin pods) of this namespace; all when `None`.
    pub namespace: Option<String>,
    /// Full reconcile of every Module at least this often.
    pub resync: Duration,
    /// Retry delay after a failed reconcile.
    pub error_requeue: Duration,
    /// How often a deletion re-checks the nodes it waits for (changes of NMCs
    /// and Nodes wake it earlier).
    pub unload_poll: Duration,
    /// Identity in events (`reportingInstance`).
    pub instance: String,
    /// The image with `kmmctl`, run by sign Jobs.
    pub signer_image: String,
    /// How often NodeModulesConfigs of deleted Nodes are looked for.
    pub nmc_gc_interval: Duration,
    /// How often a ModuleRollout with nodes in progress is looked at again (node and Job
    /// changes wake it earlier; Pods finishing or going are seen on this tick).
    pub rollout_poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: None,
            resync: Duration::from_secs(300),
            error_requeue: Duration::from_secs(10),
            unload_poll: Duration::from_secs(5),
            instance: "kmm-controller".into(),
            signer_image: DEFAULT_SIGNER_IMAGE.into(),
            nmc_gc_interval: Duration::from_secs(60),
            rollout_poll: Duration::from_secs(3),
        }
    }
}

/// The kmm-rs image (it carries `kmmctl`), as deploy/ names it.
pub const DEFAULT_SIGNER_IMAGE: &str = "kmm-rs:latest";

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings.
    pub settings: Settings,
    /// Events on Modules.
    pub recorder: Recorder,
    /// All Nodes.
    pub nodes: Store<Node>,
    /// All NodeModulesConfigs.
    pub nmcs: Store<NodeModulesConfig>,
    /// Node-plugin pods (ours, by label).
    pub pods: Store<Pod>,
    /// DeviceClasses we manage (by label); `None` when the API server serves
    /// no `resource.k8s.io/v1` (before Kubernetes 1.34).
    pub device_classes: Option<Store<DeviceClass>>,
    /// Build and sign Jobs (ours, by label).
    pub jobs: Store<Job>,
    /// Recent "image exists" answers of registries.
    pub image_lookups: ImageLookups,
}

impl Context {
    /// What the build step may use of this context.
    fn build_context(&self) -> BuildContext<'_> {
        BuildContext {
            client: &self.client,
            recorder: &self.recorder,
            metrics: &self.metrics,
            nodes: &self.nodes,
            jobs: &self.jobs,
            image_lookups: &self.image_lookups,
            signer_image: &self.settings.signer_image,
        }
    }
}

/// `Api::namespaced` for `Some(ns)`, `Api::all` otherwise.
pub(crate) fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn build_job_selector() -> String {
    format!(
        "{},app.kubernetes.io/managed-by={MANAGED_BY}",
        build::job::JOB_TYPE_LABEL
    )
}

/// Whether the API server serves DRA (`resource.k8s.io/v1`, Kubernetes >= 1.34;
/// upstream skips its DRA controller otherwise). An unreadable version counts
/// as served: the DeviceClass watch then reports what is wrong.
async fn dra_served(client: &Client) -> bool {
    match client.apiserver_version().await {
        Ok(info) => {
            match kmm_common::validation::check_dra_server_version(&info.major, &info.minor) {
                Ok(()) => true,
                Err(why) => {
                    tracing::info!(%why, "not managing DeviceClasses");
                    false
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the API server version");
            true
        }
    }
}

/// Managed DeviceClasses, reflected into the store whose writer is `writer`;
/// an empty stream without one.
fn device_class_trigger(
    client: &Client,
    writer: Option<reflector::store::Writer<DeviceClass>>,
) -> futures::stream::BoxStream<'static, Result<DeviceClass, watcher::Error>> {
    match writer {
        Some(writer) => watcher(
            Api::<DeviceClass>::all(client.clone()),
            watcher::Config::default().labels(&device_class::managed_selector()),
        )
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .boxed(),
        None => futures::stream::empty().boxed(),
    }
}

/// Runs the Module controller until the process stops.
pub async fn run(client: Client, metrics: Metrics, settings: Settings) {
    let ns = settings.namespace.clone();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (nmcs, nmcs_w) = reflector::store::<NodeModulesConfig>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let (jobs, jobs_w) = reflector::store::<Job>();
    let device_classes = dra_served(&client)
        .await
        .then(reflector::store::<DeviceClass>);

    // Nodes: a change of labels or kernel, or a Node coming or going, can
    // change every Module's counts.
    let mut fingerprints = NodeFingerprints::default();
    let node_trigger = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(nodes_w)
        .filter_map(move |ev| {
            future::ready(match ev {
                Ok(ev) => fingerprints.relevant(&ev).then_some(()),
                Err(e) => {
                    tracing::warn!(error = %e, "node watch");
                    None
                }
            })
        });
    let nmc_trigger = watcher(
        Api::<NodeModulesConfig>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(nmcs_w)
    .touched_objects();
    let pod_trigger = watcher(
        scoped::<Pod>(&client, ns.as_deref()),
        watcher::Config::default().labels(&all_plugins_selector()),
    )
    .default_backoff()
    .reflect(pods_w)
    .touched_objects();
    // A Job finishing moves its kernel to the next step (or collection).
    let job_trigger = watcher(
        scoped::<Job>(&client, ns.as_deref()),
        watcher::Config::default().labels(&build_job_selector()),
    )
    .default_backoff()
    .reflect(jobs_w)
    .touched_objects();

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kmm-controller".into(),
            instance: Some(settings.instance.clone()),
        },
    );
    // Polled with the controller (not spawned): losing the lease drops both.
    let nmc_gc = nmc_gc::run(
        client.clone(),
        nodes.clone(),
        nmcs.clone(),
        settings.nmc_gc_interval,
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        settings,
        recorder,
        nodes,
        nmcs,
        pods,
        device_classes: device_classes.as_ref().map(|(store, _)| store.clone()),
        jobs,
        image_lookups: ImageLookups::default(),
    });
    let controller = Controller::new(
        scoped::<Module>(&client, ns.as_deref()),
        watcher::Config::default(),
    )
    .owns(
        scoped::<DaemonSet>(&client, ns.as_deref()),
        watcher::Config::default().labels(&all_plugins_selector()),
    )
    .watches_stream(nmc_trigger, triggers::modules_of_nmc)
    .watches_stream(pod_trigger, triggers::module_of_pod)
    .watches_stream(job_trigger, triggers::module_of_job)
    .watches_stream(
        device_class_trigger(&client, device_classes.map(|(_, w)| w)),
        |class: DeviceClass| device_class::module_of(&class),
    )
    .reconcile_all_on(node_trigger)
    // Bursts of NMC/Node events (a rollout) collapse into one reconcile per Module.
    .with_config(controller::Config::default().debounce(Duration::from_millis(500)));
    // Upstream's fleet gauges, recounted from the Module cache after each
    // reconcile (no API call).
    let modules = controller.store();
    let metrics = ctx.metrics.clone();
    let controller = controller
        .run(reconcile, error_policy, ctx)
        .for_each(move |res| {
            metrics.count_modules(modules.state().iter().map(AsRef::as_ref));
            async move {
                match res {
                    Ok((obj, _)) => tracing::debug!(module = %obj, "reconciled"),
                    Err(controller::Error::ReconcilerFailed(e, obj)) => {
                        tracing::debug!(module = %obj, error = %e, "reconcile failed");
                    }
                    // NMCs list Modules of every namespace; outside our scope (or just
                    // deleted) they are not in the store.
                    Err(controller::Error::ObjectNotFound(obj)) => {
                        tracing::debug!(module = %obj, "not in scope or gone");
                    }
                    Err(e) => tracing::warn!(error = %e, "controller"),
                }
            }
        });
    tokio::select! {
        () = controller => {}
        () = nmc_gc => {}
    }
}

/// One Module: finalizer first, then [`apply`] or [`cleanup`].
///
/// # Errors
/// API failures, and [`Error::StillUnloading`] while a deletion waits.
#[instrument(skip(module, ctx), fields(ns = module.namespace(), name = module.name_any()))]
pub async fn reconcile(module: Arc<Module>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start_reconcile();
    // Decisions read the caches: never act on a half-listed fleet.
    let _ = ctx.nodes.wait_until_ready().await;
    let _ = ctx.nmcs.wait_until_ready().await;
    let _ = ctx.pods.wait_until_ready().await;
    let _ = ctx.jobs.wait_until_ready().await;
    if let Some(classes) = &ctx.device_classes {
        let _ = classes.wait_until_ready().await;
    }
    let ns = module
        .namespace()
        .ok_or_else(|| Error::InvalidModule("Module has no namespace".into()))?;
    let api: Api<Module> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, MODULE_FINALIZER, module, |event| async {
        match event {
            Event::Apply(m) => apply(&m, &ns, &ctx).await,
            Event::Cleanup(m) => cleanup(&m, &ns, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Requeues: soon while a deletion waits for nodes (not counted as a failure),
/// after `error_requeue` on failures (counted by reason).
pub fn error_policy(module: Arc<Module>, error: &Error, ctx: Arc<Context>) -> Action {
    match error.inner() {
        Error::StillUnloading { .. } => Action::requeue(ctx.settings.unload_poll),
        inner => {
            ctx.metrics
                .reconcile_errors
                .with_label_values(&[inner.metric_label()])
                .inc();
            tracing::warn!(module = %module.name_any(), error = %error, "reconcile failed");
            Action::requeue(ctx.settings.error_requeue)
        }
    }
}

/// A live Module: namespace label, node plugins and their node labels,
/// DeviceClasses, builds, status.
async fn apply(module: &Module, ns: &str, ctx: &Context) -> Result<Action> {
    namespace::ensure_label(&ctx.client, ns).await?;
    let plugins = objects::sync_plugins(module, ns, ctx).await?;
    for kind in Kind::ALL {
        let ready = objects::plugin_ready_nodes(module, ns, kind, ctx);
        objects::sync_plugin_labels(module, ns, kind, &ready, ctx).await?;
    }
    objects::sync_device_classes(module, ns, false, ctx).await?;
    let images = build::sync(module, ns, &ctx.build_context()).await?;
    write_status(module, ns, ctx, &plugins, None, &images).await?;
    // Builds wake us through their Jobs; a registry that was unreachable or an
    // image a Job should have pushed is asked again sooner than the resync.
    if images.degraded.is_some() {
        return Ok(Action::requeue(
            ctx.settings.error_requeue.max(Duration::from_secs(30)),
        ));
    }
    Ok(Action::requeue(ctx.settings.resync))
}

/// A deleted Module: stop the node plugins and delete its DeviceClasses, then
/// hold the finalizer until no node reports the Module loaded (the agents need
/// the Terminating Module to know what to unload).
async fn cleanup(module: &Module, ns: &str, ctx: &Context) -> Result<Action> {
    objects::gc_plugins(&module.name_any(), ns, ctx).await?;
    for kind in Kind::ALL {
        objects::sync_plugin_labels(module, ns, kind, &Default::default(), ctx).await?;
    }
    objects::sync_device_classes(module, ns, true, ctx).await?;

    let nodes = ctx.nodes.state();
    let nmcs = ctx.nmcs.state();
    let waiting = status::nodes_still_loaded(
        module,
        Fleet {
            nodes: &nodes,
            nmcs: &nmcs,
        },
    );
    if !waiting.is_empty() {
        write_status(
            module,
            ns,
            ctx,
            &objects::Plugins::default(),
            Some(&waiting),
            &Default::default(),
        )
        .await?;
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: "Unloading".into(),
            note: Some(status::unloading_condition(&waiting).message),
            action: "Delete".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &module.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing Unloading event");
        }
        return Err(Error::StillUnloading { nodes: waiting });
    }
    tracing::info!("no node reports the Module loaded; releasing the finalizer");
    namespace::remove_label_if_last(&ctx.client, ns, module).await?;
    Ok(Action::await_change())
}

fn counts_json(s: &DaemonSetStatus) -> serde_json::Value {
    // Explicit zeros: the type skips them, and a merge patch would keep old values.
    serde_json::json!({
        "nodesMatchingSelectorNumber": s.nodes_matching_selector_number,
        "desiredNumber": s.desired_number,
        "availableNumber": s.available_number,
    })
}

/// Computes the status from the caches and writes it only when it differs from
/// what the Module has.
async fn write_status(
    module: &Module,
    ns: &str,
    ctx: &Context,
    plugins: &objects::Plugins,
    unloading: Option<&[String]>,
    images: &build::BuildReport,
) -> Result<()> {
    let nodes = ctx.nodes.state();
    let nmcs = ctx.nmcs.state();
    let fleet = Fleet {
        nodes: &nodes,
        nmcs: &nmcs,
    };
    let loader = status::loader_counts(module, fleet);
    ctx.metrics
        .set_module_nodes(ns, &module.name_any(), &status::node_counts(module, fleet));
    let dp = status::plugin_counts(
        module,
        Kind::DevicePlugin,
        fleet,
        plugins.device_plugin.as_ref(),
    );
    let dra = module
        .spec
        .dra
        .as_ref()
        .map(|_| status::plugin_counts(module, Kind::Dra, fleet, plugins.dra.as_ref()));
    // spec.dra and spec.devicePlugin exclude each other: one plugin at most.
    let plugin = match &dra {
        Some(d) => Some((Kind::Dra, d)),
        None => module
            .spec
            .device_plugin
            .as_ref()
            .map(|_| (Kind::DevicePlugin, &dp)),
    };
    let mut conds = status::conditions(
        &loader,
        plugin,
        &status::waiting_for(module, fleet),
        status::degraded(module, fleet).or_else(|| images.degraded.clone()),
    );
    if let Some((ready, reason, message)) = &images.images_ready {
        conds.push(status::images_ready_condition(
            *ready,
            reason,
            message.clone(),
        ));
    }
    if let Some(waiting) = unloading {
        conds.push(status::unloading_condition(waiting));
    }
    let generic = kstatus::conditions(&conds);
    conds.extend(generic);
    let old = module.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = module.metadata.generation;
    let conds = status::stamp(conds, &old.conditions, generation, &now);
    if old.module_loader == loader
        && old.device_plugin == dp
        && old.dra == dra
        && old.conditions == conds
        && old.observed_generation == generation
    {
        return Ok(());
    }
    // `dra: null` removes it from a Module that dropped spec.dra.
    let patch = serde_json::json!({ "status": {
        "moduleLoader": counts_json(&loader),
        "devicePlugin": counts_json(&dp),
        "dra": dra.as_ref().map(counts_json),
        "conditions": conds,
        "observedGeneration": generation,
    }});
    let api: Api<Module> = Api::namespaced(ctx.client.clone(), ns);
    api.patch_status(
        &module.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| Error::kube("writing Module status", e))?;
    ctx.metrics.status_writes.inc();
    Ok(())
}
