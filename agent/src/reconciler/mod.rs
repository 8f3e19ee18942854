//! The agent's control loop: watch Modules (all namespaces) and its own Node,
//! and on every change (or resync) decide what this node needs ([`crate::plan`])
//! and hand each Module's action to its own worker task ([`executor`]), so a slow
//! pull of one Module never delays another, and an unload never waits for a pull.

mod error;
mod executor;
mod journal;
pub mod module_state;
pub mod phases;
mod plugin_stop;
mod recovery;
mod report;
mod sources;
#[cfg(test)]
mod tests;
mod wake;
mod workers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kmm_common::Module;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use crate::image::ImageCache;
use crate::kernel::Kernel;
use crate::metrics::Metrics;
use crate::server::{Liveness, Readiness};
use crate::state::{ModuleKey, StateFile};

pub use desired::desired_for_node;
pub use error::ActionError;
pub use executor::Executor;
pub use journal::Journal;
pub use recovery::{Presence, Recovered, presence, recover, roll_back_interrupted};
pub use report::{KubeReporter, Report};
pub use sources::{Images, PullSecrets};
pub use workers::{Failure, ReleaseMemory, Workers, backoff};

mod desired;

/// How long a pass waits after a watch event for more (a rollout touches many
/// objects at once).
const WATCH_COALESCE: Duration = Duration::from_millis(200);
/// How long a pass waits after a worker finished for the others of its burst.
const FINISH_COALESCE: Duration = Duration::from_millis(20);

/// Static settings of the agent.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub node_name: String,
    /// Running kernel release (`uname -r`, or a flag for the simulated kernel).
    pub kernel_release: String,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Host firmware directory firmware files are copied into.
    pub firmware_dir: PathBuf,
    /// Also point `/sys/module/firmware_class/parameters/path` at `firmware_dir`.
    pub set_firmware_class_path: bool,
    /// Full pass over all Modules at least this often.
    pub resync: Duration,
    /// With `imagePullPolicy: Always`, how often a loaded image's digest is checked.
    pub verify_interval: Duration,
    /// Deadlines and caps of every pull (policy, credentials and TLS are set per Module).
    pub pull: crate::image::PullOptions,
    /// How long a replace of a Module with a device plugin or DRA driver waits
    /// for the plugin to leave the node before unloading anyway.
    pub plugin_stop_timeout: Duration,
    /// File raised when a version is staged for the next boot (`strategy: Reboot`), for a
    /// reboot operator such as kured (its default sentinel is `/var/run/reboot-required`).
    pub reboot_sentinel: Option<PathBuf>,
}

/// Locks a std mutex, ignoring poisoning: a panicked worker must not take the
/// node's bookkeeping down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads the state file and reconciles it with the kernel ([`recover`]).
///
/// # Errors
/// If the state file cannot be read or written, or kernel state cannot be read:
/// the agent must not guess what it loaded.
pub async fn recover_journal(
    kernel: Arc<dyn Kernel>,
    file: StateFile,
    settings: &Settings,
    metrics: &Metrics,
) -> anyhow::Result<Journal> {
    let state = file.load()?;
    let (running, boot) = (settings.kernel_release.clone(), settings.boot_id.clone());
    let (state, recovered) =
        tokio::task::spawn_blocking(move || recover(kernel.as_ref(), state, &running, &boot))
            .await??;
    for (key, why) in &recovered.forgotten {
        tracing::info!(module = %key, reason = %why, "record dropped at start; the Module loads again if still wanted");
    }
    if !recovered.rolled_back.is_empty() {
        tracing::info!(removed = ?recovered.rolled_back,
            "rolled back loads interrupted by a restart; they are retried from the start");
    }
    if !recovered.finished_unloads.is_empty() {
        tracing::info!(removed = ?recovered.finished_unloads, "finished unloads interrupted by a restart");
    }
    file.save(&state)?;
    for key in state.modules.keys() {
        metrics
            .modules_loaded
            .with_label_values(&[&key.namespace, &key.name])
            .set(1);
    }
    tracing::info!(loaded = state.modules.len(), "node state recovered");
    Ok(Journal::new(state, file))
}

/// The real parts of an agent.
pub struct Parts {
    /// API client.
    pub client: Client,
    /// The kernel.
    pub kernel: Arc<dyn Kernel>,
    /// Local image cache.
    pub images: Arc<ImageCache>,
    /// Pull secrets.
    pub secrets: Arc<dyn PullSecrets>,
    /// State file.
    pub state_file: StateFile,
    /// Metrics.
    pub metrics: Metrics,
    /// Gives freed heap back to the OS after work (`kmm_memtrim`; many agents
    /// in one process share one, rate-limited).
    pub release_memory: ReleaseMemory,
}

/// Runs the agent until the watches end (they do not, barring shutdown).
///
/// # Errors
/// If the state cannot be recovered (the agent must not guess what it loaded).
pub async fn run(
    settings: Settings,
    parts: Parts,
    ready: Readiness,
    live: Liveness,
) -> anyhow::Result<()> {
    let journal = recover_journal(
        parts.kernel.clone(),
        parts.state_file,
        &settings,
        &parts.metrics,
    )
    .await?;
    let reporter = Arc::new(KubeReporter::new(parts.client.clone(), &settings.node_name));
    let exec = Arc::new(Executor::new(
        settings.clone(),
        parts.kernel,
        parts.images,
        parts.secrets,
        reporter,
        journal,
        parts.metrics,
    ));
    let wake = Arc::new(Notify::new());
    // Workers finishing wake the loop on their own: their result is published
    // at once, not after the watch events' coalescing delay.
    let finished = Arc::new(Notify::new());
    let workers =
        Arc::new(Workers::new(exec, finished.clone()).with_release_memory(parts.release_memory));

    let modules: Api<Module> = Api::all(parts.client.clone());
    let nodes: Api<Node> = Api::all(parts.client.clone());
    let (module_store, module_writer) = reflector::store::<Module>();
    let (node_store, node_writer) = reflector::store::<Node>();
    let module_watch = watcher(modules, watcher::Config::default())
        .default_backoff()
        .modify(slim_module)
        .reflect(module_writer);
    let node_watch = watcher(
        nodes,
        watcher::Config::default().fields(&format!("metadata.name={}", settings.node_name)),
    )
    .default_backoff()
    .modify(slim_node)
    .reflect(node_writer);
    // When the first watch event not yet seen by a pass arrived: where a load's phases start.
    let event_at = Arc::new(Mutex::new(None));
    let mut module_wakes = wake::ModuleWakes::default();
    tokio::spawn(drive(
        "modules",
        module_watch,
        (wake.clone(), event_at.clone()),
        move |e| module_wakes.wakes(e),
    ));
    let mut node_wakes = wake::NodeWakes::default();
    tokio::spawn(drive(
        "node",
        node_watch,
        (wake.clone(), event_at.clone()),
        move |e| node_wakes.wakes(e),
    ));

    // Acting on a partial view could unload a Module merely not listed yet.
    module_store.wait_until_ready().await?;
    node_store.wait_until_ready().await?;
    ready.set_ready();
    tracing::info!(node = %settings.node_name, kernel = %settings.kernel_release, "watches synced");

    loop {
        live.beat();
        let woken_at = lock(&event_at).take();
        let next_retry = pass(&workers, &settings, &module_store, &node_store, woken_at).await;
        let wait = next_retry.map_or(settings.resync, |d| d.min(settings.resync));
        tokio::select! {
            () = wake.notified() => {
                // Coalesce bursts (a rollout touches many objects at once).
                tokio::time::sleep(WATCH_COALESCE).await;
            }
            () = finished.notified() => {
                // Workers of one burst finish close together: one status write for them.
                tokio::time::sleep(FINISH_COALESCE).await;
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Written by `kubectl apply`: the whole object again, as JSON.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The watch caches keep what the agent reads, not what the API server
/// stores: managedFields and kubectl's last-applied copy more than double a
/// Module, and every agent of a fleet holds every Module.
fn slim_module(module: &mut Module) {
    module.managed_fields_mut().clear();
    module.annotations_mut().remove(LAST_APPLIED);
}

/// As [`slim_module`], and a Node's image list (up to 50 images with all
/// their tags and digests), which the agent never reads.
fn slim_node(node: &mut Node) {
    node.managed_fields_mut().clear();
    node.annotations_mut().remove(LAST_APPLIED);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
}

/// Follows a watch (its reflector updates the store) and wakes the loop for
/// the events `wakes` selects, noting when the first of them arrived.
async fn drive<S, K>(
    what: &'static str,
    stream: S,
    (wake, event_at): (Arc<Notify>, Arc<Mutex<Option<Instant>>>),
    mut wakes: impl FnMut(&watcher::Event<K>) -> bool,
) where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => {
                if wakes(&event) {
                    lock(&event_at).get_or_insert_with(Instant::now);
                    wake.notify_one();
                }
            }
            Ok(None) => break,
            // The store keeps its last view on errors: nothing is unloaded because of them.
            Err(e) => {
                tracing::warn!(watch = what, error = %e, "watch error, retrying with backoff")
            }
        }
    }
    tracing::error!(watch = what, "watch stream ended");
}

async fn pass(
    workers: &Arc<Workers>,
    settings: &Settings,
    modules: &Store<Module>,
    nodes: &Store<Node>,
    event_at: Option<Instant>,
) -> Option<Duration> {
    let Some(node) = nodes.find(|n| n.metadata.name.as_deref() == Some(&settings.node_name)) else {
        tracing::warn!(node = %settings.node_name, "own Node not found; doing nothing until it exists");
        return None;
    };
    if let Some(reported) = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| &i.kernel_version)
        && *reported != settings.kernel_release
    {
        tracing::warn!(node_reports = %reported, running = %settings.kernel_release,
            "Node's kernelVersion differs from the running kernel; using the running kernel");
    }
    let all: Vec<Arc<Module>> = modules.state();
    let by_key: BTreeMap<ModuleKey, Arc<Module>> = all
        .iter()
        .filter_map(|m| {
            Some((
                ModuleKey::new(m.metadata.namespace.clone()?, m.metadata.name.clone()?),
                m.clone(),
            ))
        })
        .collect();
    workers
        .reconcile(&all, &by_key, &node, &settings.kernel_release, event_at)
        .await
}
