//! The agent's control loop: watch Modules (all namespaces) and its own Node,
//! and on every change (or resync) decide what this node needs ([`crate::plan`])
//! and do it, one Module at a time, each with its own backoff.

mod actions;
mod desired;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kmm_common::Module;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::{Mutex, Notify};

use crate::image::ImageCache;
use crate::kernel::Kernel;
use crate::metrics::Metrics;
use crate::plan::{self, Action};
use crate::server::Readiness;
use crate::state::{ModuleKey, NodeState, StateFile};

pub use desired::desired_for_node;

/// Static settings of the agent.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub node_name: String,
    /// Running kernel release (`uname -r`, or a flag for the simulated kernel).
    pub kernel_release: String,
    /// Host firmware directory firmware files are copied into.
    pub firmware_dir: PathBuf,
    /// Also point `/sys/module/firmware_class/parameters/path` at `firmware_dir`.
    pub set_firmware_class_path: bool,
    /// Full pass over all Modules at least this often.
    pub resync: Duration,
    /// With `imagePullPolicy: Always`, how often a loaded image's digest is checked.
    pub verify_interval: Duration,
}

/// Why a Module's last attempt failed, kept until it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase reason (ImagePullFailed, ModprobeFailed, …).
    pub reason: String,
    /// What went wrong, for users.
    pub message: String,
    /// Consecutive failures.
    pub attempts: u32,
    /// Not retried before this.
    pub retry_at: Instant,
}

/// Everything the loop shares.
pub struct Context {
    /// Settings.
    pub settings: Settings,
    /// API client.
    pub client: Client,
    /// The kernel (libkmod, or simulated for scale tests).
    pub kernel: Arc<dyn Kernel>,
    /// Local image cache.
    pub images: Arc<ImageCache>,
    /// State file.
    pub state_file: StateFile,
    /// What this agent loaded.
    pub state: Mutex<NodeState>,
    /// Failures by Module.
    pub failures: Mutex<HashMap<ModuleKey, Failure>>,
    /// Last reason each Module does not apply here, logged when it changes.
    pub reasons: Mutex<HashMap<ModuleKey, String>>,
    /// Last digest check by Module.
    pub verified_at: Mutex<HashMap<ModuleKey, Instant>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Events on Modules.
    pub recorder: Recorder,
}

impl Context {
    /// Builds the context; the state file is read by [`run`].
    pub fn new(
        settings: Settings,
        client: Client,
        kernel: Arc<dyn Kernel>,
        images: Arc<ImageCache>,
        state_file: StateFile,
        metrics: Metrics,
    ) -> Self {
        let reporter = Reporter {
            controller: "kmm-agent".into(),
            instance: Some(settings.node_name.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            settings,
            client,
            kernel,
            images,
            state_file,
            state: Mutex::new(NodeState::default()),
            failures: Mutex::new(HashMap::new()),
            reasons: Mutex::new(HashMap::new()),
            verified_at: Mutex::new(HashMap::new()),
            metrics,
        }
    }
}

/// How often a node waiting for an in-cluster build asks the registry again.
const WAIT_FOR_IMAGE_POLL: Duration = Duration::from_secs(10);

/// Backoff after `attempts` consecutive failures: 5 s doubling up to 5 min.
pub fn backoff(attempts: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

/// Runs the agent until the watches end (they do not, barring shutdown).
///
/// # Errors
/// If the state file cannot be read (the agent must not guess what it loaded).
pub async fn run(ctx: Arc<Context>, ready: Readiness) -> anyhow::Result<()> {
    actions::recover_state(&ctx).await?;

    let modules: Api<Module> = Api::all(ctx.client.clone());
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let (module_store, module_writer) = reflector::store::<Module>();
    let (node_store, node_writer) = reflector::store::<Node>();
    let trigger = Arc::new(Notify::new());

    let module_watch = watcher(modules, watcher::Config::default())
        .default_backoff()
        .reflect(module_writer);
    let node_watch = watcher(
        nodes,
        watcher::Config::default().fields(&format!("metadata.name={}", ctx.settings.node_name)),
    )
    .default_backoff()
    .reflect(node_writer);
    tokio::spawn(drive("modules", module_watch, trigger.clone()));
    tokio::spawn(drive("node", node_watch, trigger.clone()));

    // Acting on a partial view could unload a Module merely not listed yet.
    module_store.wait_until_ready().await?;
    node_store.wait_until_ready().await?;
    ready.set_ready();
    tracing::info!(node = %ctx.settings.node_name, kernel = %ctx.settings.kernel_release, "watches synced");

    loop {
        let next_retry = reconcile_pass(&ctx, &module_store, &node_store).await;
        let wait = next_retry.map_or(ctx.settings.resync, |d| d.min(ctx.settings.resync));
        tokio::select! {
            () = trigger.notified() => {
                // Coalesce bursts (a rollout touches many objects at once).
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn drive<S, K>(what: &'static str, stream: S, trigger: Arc<Notify>)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(_)) => trigger.notify_one(),
            Ok(None) => break,
            // The store keeps its last view on errors: nothing is unloaded because of them.
            Err(e) => {
                tracing::warn!(watch = what, error = %e, "watch error, retrying with backoff")
            }
        }
    }
    tracing::error!(watch = what, "watch stream ended");
}

/// One pass: compute the desired state, plan, act, report. Returns when the
/// earliest backed-off Module may be retried, if any.
async fn reconcile_pass(
    ctx: &Context,
    modules: &Store<Module>,
    nodes: &Store<Node>,
) -> Option<Duration> {
    ctx.metrics.reconciles.inc();
    let Some(node) = nodes.find(|n| n.metadata.name.as_deref() == Some(&ctx.settings.node_name))
    else {
        tracing::warn!(node = %ctx.settings.node_name, "own Node not found; doing nothing until it exists");
        return None;
    };
    if let Some(reported) = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| &i.kernel_version)
        && *reported != ctx.settings.kernel_release
    {
        tracing::warn!(node_reports = %reported, running = %ctx.settings.kernel_release,
            "Node's kernelVersion differs from the running kernel; using the running kernel");
    }
    let all: Vec<Arc<Module>> = modules.state();
    let desired = desired_for_node(&all, &node, &ctx.settings.kernel_release);
    let by_key: BTreeMap<ModuleKey, Arc<Module>> = all
        .iter()
        .filter_map(|m| {
            Some((
                ModuleKey::new(m.metadata.namespace.clone()?, m.metadata.name.clone()?),
                m.clone(),
            ))
        })
        .collect();

    log_reasons(ctx, &desired).await;
    let actions = {
        let state = ctx.state.lock().await;
        plan::plan(&desired.map, &state)
    };
    let now = Instant::now();
    let mut freed_images = false;
    let mut pulled_any = false;
    for action in actions {
        let key = action.key().clone();
        let backed_off = ctx
            .failures
            .lock()
            .await
            .get(&key)
            .is_some_and(|f| f.retry_at > now);
        if backed_off && !matches!(action, Action::Unload { .. }) {
            continue;
        }
        let module = by_key.get(&key).cloned();
        pulled_any |= !matches!(action, Action::Unload { .. });
        let result = actions::execute(ctx, &action, module.as_deref()).await;
        let mut failures = ctx.failures.lock().await;
        match result {
            Ok(()) => {
                failures.remove(&key);
                freed_images |= matches!(action, Action::Unload { .. } | Action::Replace { .. });
            }
            Err(e) if e.is_wait() => {
                // The image is being built: look again at a steady pace, the
                // status says why, and nothing is counted as a failure.
                tracing::info!(module = %key, reason = e.reason(), "{e}");
                failures.insert(
                    key,
                    Failure {
                        reason: e.reason().to_string(),
                        message: e.to_string(),
                        attempts: 0,
                        retry_at: Instant::now() + WAIT_FOR_IMAGE_POLL,
                    },
                );
            }
            Err(e) => {
                let attempts = failures.get(&key).map_or(0, |f| f.attempts) + 1;
                ctx.metrics.failures.with_label_values(&[e.reason()]).inc();
                tracing::warn!(module = %key, reason = e.reason(), error = %e, attempts, "action failed");
                if let Some(m) = &module {
                    report::failure_event(ctx, m, &e).await;
                }
                failures.insert(
                    key,
                    Failure {
                        reason: e.reason().to_string(),
                        message: e.to_string(),
                        attempts,
                        retry_at: Instant::now() + backoff(attempts),
                    },
                );
            }
        }
    }
    // Failures of Modules no longer wanted here are stale.
    ctx.failures.lock().await.retain(|k, _| desired.wants(k));

    report::publish(ctx, &node, &by_key).await;
    if freed_images {
        collect_unused_images(ctx, false).await;
    } else if pulled_any {
        collect_unused_images(ctx, true).await;
    }

    let now = Instant::now();
    ctx.failures
        .lock()
        .await
        .values()
        .map(|f| f.retry_at.saturating_duration_since(now))
        .min()
}

/// Removes cached images no loaded Module uses (the state's digests are kept,
/// so the boot path can always load from the cache): always after an unload,
/// and after pulls only when the cache is over its size limit.
async fn collect_unused_images(ctx: &Context, only_over_limit: bool) {
    let keep: Vec<String> = ctx
        .state
        .lock()
        .await
        .modules
        .values()
        .map(|r| r.digest.clone())
        .collect();
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    let result = if only_over_limit {
        ctx.images.enforce_limit(&keep).await
    } else {
        ctx.images.gc(&keep).await.map(Some)
    };
    match result {
        Ok(Some(report)) => tracing::info!(?report, "removed unused images from the cache"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "image cache cleanup failed"),
    }
}

/// Logs why a Module does not apply to this node, once per change of reason.
async fn log_reasons(ctx: &Context, desired: &desired::DesiredSet) {
    let mut reasons = ctx.reasons.lock().await;
    let mut seen = Vec::new();
    for (key, d) in &desired.map {
        if let plan::Desired::Absent(why) = d {
            seen.push(key.clone());
            if reasons.get(key) != Some(why) {
                tracing::info!(module = %key, reason = %why, "Module does not apply to this node");
                reasons.insert(key.clone(), why.clone());
            }
        }
    }
    reasons.retain(|k, _| seen.contains(k));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(20));
        assert_eq!(backoff(20), Duration::from_secs(300));
    }
}
