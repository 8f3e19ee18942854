//! One worker task per Module with work to do. A pass plans from the journal and
//! the watched objects, starts a worker for each Module that has an action and
//! none running, and publishes what the node looks like. A worker that finishes
//! records its outcome (failures with backoff, one event per change of failure)
//! and wakes the loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kmm_common::{Module, Reason};
use kube::Resource;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use super::desired::{DesiredSet, desired_for_node};
use super::error::ActionError;
use super::executor::Executor;
use super::module_state;
use super::phases::{LoadPhases, Phase};
use super::recovery::{Presence, presence};
use super::{lock, report};
use crate::plan::{self, Action, Desired, DesiredLoad};
use crate::state::ModuleKey;

/// How often a node waiting for an in-cluster build asks the registry again.
const WAIT_FOR_IMAGE_POLL: Duration = Duration::from_secs(10);

/// Backoff after `attempts` consecutive failures: 5 s doubling up to 5 min.
pub fn backoff(attempts: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

/// Why a Module's last attempt failed, kept until it succeeds, the Module
/// changes, or it is neither wanted nor loaded here any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The reason code.
    pub reason: Reason,
    /// What went wrong, for users.
    pub message: String,
    /// Consecutive failures.
    pub attempts: u32,
    /// Not retried before this.
    pub retry_at: Instant,
    /// The Module's generation when it failed: a new generation retries at once.
    pub generation: Option<i64>,
}

struct Running {
    unload: bool,
    /// What a replace of a Module with a device plugin loads: its worker may
    /// wait for the plugin to stop, and is cancelled when the Module changes meanwhile.
    stops_plugin: Option<Box<DesiredLoad>>,
    cancel: watch::Sender<bool>,
}

/// Gives freed heap memory back to the OS; returns whether any was released.
pub type ReleaseMemory = Arc<dyn Fn() -> bool + Send + Sync>;

/// The workers of one node.
pub struct Workers {
    exec: Arc<Executor>,
    wake: Arc<Notify>,
    running: std::sync::Mutex<HashMap<ModuleKey, Running>>,
    pub(super) failures: std::sync::Mutex<HashMap<ModuleKey, Failure>>,
    reasons: std::sync::Mutex<HashMap<ModuleKey, String>>,
    /// Loads done whose status and label are not written yet, with their phases.
    unpublished: std::sync::Mutex<HashMap<ModuleKey, LoadPhases>>,
    /// An unload or replace freed an image since the last cache collection.
    images_freed: AtomicBool,
    /// A pull may have grown the cache since the last collection.
    images_pulled: AtomicBool,
    /// The cache's size is not measured yet (it may hold images from before a restart).
    cache_unmeasured: AtomicBool,
    /// A worker finished (or the agent started) since memory was last released.
    memory_to_release: AtomicBool,
    release_memory: ReleaseMemory,
}

impl Workers {
    /// Workers over `exec`, waking the loop through `wake` when one finishes.
    pub fn new(exec: Arc<Executor>, wake: Arc<Notify>) -> Self {
        Self {
            exec,
            wake,
            running: std::sync::Mutex::new(HashMap::new()),
            failures: std::sync::Mutex::new(HashMap::new()),
            reasons: std::sync::Mutex::new(HashMap::new()),
            unpublished: std::sync::Mutex::new(HashMap::new()),
            images_freed: AtomicBool::new(false),
            images_pulled: AtomicBool::new(false),
            cache_unmeasured: AtomicBool::new(true),
            // The first pass also releases what starting up allocated.
            memory_to_release: AtomicBool::new(true),
            release_memory: Arc::new(kmm_memtrim::release_free_memory),
        }
    }

    /// Replaces how freed memory is given back to the OS (tests count calls).
    #[must_use]
    pub fn with_release_memory(mut self, release: ReleaseMemory) -> Self {
        self.release_memory = release;
        self
    }

    /// The executor.
    pub fn executor(&self) -> &Arc<Executor> {
        &self.exec
    }

    /// Modules with a worker running.
    pub fn busy(&self) -> usize {
        lock(&self.running).len()
    }

    /// Current failures.
    pub fn failures(&self) -> HashMap<ModuleKey, Failure> {
        lock(&self.failures).clone()
    }

    /// One pass: re-check the kernel, plan, start workers, publish. Returns when
    /// the earliest backed-off Module may be retried, if any. `event_at`: when
    /// the watch event that woke this pass was seen (the start of a load's phases).
    pub async fn reconcile(
        self: &Arc<Self>,
        all: &[Arc<Module>],
        by_key: &BTreeMap<ModuleKey, Arc<Module>>,
        node: &Node,
        kernel: &str,
        event_at: Option<Instant>,
    ) -> Option<Duration> {
        let phases = LoadPhases::new(event_at, Instant::now());
        self.exec.metrics.reconciles.inc();
        self.exec.plugin_stop.observe(node.labels());
        node.metadata.uid.clone_into(&mut lock(&self.exec.node_uid));
        let desired = self
            .decide(all, by_key, node, kernel, phases)
            .instrument(tracing::debug_span!("decide"))
            .await;
        {
            // Failures of Modules neither wanted nor loaded here are stale; an
            // unload that fails keeps its failure while the record stays.
            let running = lock(&self.running);
            let state = self.exec.journal.snapshot();
            lock(&self.failures).retain(|k, _| {
                desired.wants(k) || state.modules.contains_key(k) || running.contains_key(k)
            });
        }
        self.publish(node, by_key).await;
        self.collect_images().await;
        self.show_module_states(&desired, kernel);
        self.release_memory();
        let now = Instant::now();
        lock(&self.failures)
            .values()
            .map(|f| f.retry_at.saturating_duration_since(now))
            .min()
    }

    /// Re-checks the kernel, plans and starts the workers; returns what is desired.
    async fn decide(
        self: &Arc<Self>,
        all: &[Arc<Module>],
        by_key: &BTreeMap<ModuleKey, Arc<Module>>,
        node: &Node,
        kernel: &str,
        phases: LoadPhases,
    ) -> DesiredSet {
        let desired = desired_for_node(all, node, kernel);
        self.log_reasons(&desired);
        let unknown = self.recheck_kernel().await;
        let state = self.exec.journal.snapshot();
        let now = Instant::now();
        {
            // A changed Module is retried at once.
            let mut failures = lock(&self.failures);
            failures.retain(|k, f| {
                f.generation.is_none()
                    || by_key.get(k).and_then(|m| m.metadata.generation) == f.generation
            });
        }
        for (key, r) in lock(&self.running).iter() {
            // A wait for a device plugin to stop may be long: a change of the
            // Module (or of its version label) ends it, and is planned anew.
            let changed = r
                .stops_plugin
                .as_ref()
                .is_some_and(|w| !matches!(desired.map.get(key), Some(Desired::Load(d)) if d == w));
            if (!r.unload && !desired.lets_run(key)) || changed {
                // Not wanted any more: stop its pull (a kernel step in progress
                // finishes, and the next pass unloads what it loaded).
                let _ = r.cancel.send(true);
            }
        }
        for action in plan::plan(&desired.map, &state) {
            if unknown.contains(action.key()) {
                continue;
            }
            if let Action::Verify { key, want } = &action
                && !self.exec.verify_due(key, want)
            {
                continue;
            }
            let key = action.key().clone();
            self.dispatch(action, by_key.get(&key).cloned(), now, phases.clone());
        }
        desired
    }

    fn dispatch(
        self: &Arc<Self>,
        action: Action,
        module: Option<Arc<Module>>,
        now: Instant,
        mut phases: LoadPhases,
    ) {
        let key = action.key().clone();
        let unload = matches!(action, Action::Unload { .. });
        let stops_plugin = match &action {
            // Only a swap of a loaded version waits (a first load has no plugin running).
            Action::Replace { want, .. } | Action::Verify { want, .. } if want.stops_plugin => {
                Some(want.clone())
            }
            _ => None,
        };
        let mut running = lock(&self.running);
        if running.contains_key(&key) {
            return;
        }
        if lock(&self.failures)
            .get(&key)
            .is_some_and(|f| f.retry_at > now)
        {
            return;
        }
        let (cancel, cancelled) = watch::channel(false);
        running.insert(
            key.clone(),
            Running {
                unload,
                stops_plugin,
                cancel,
            },
        );
        drop(running);
        let this = self.clone();
        let span = tracing::info_span!("worker", module = %key, action = action.kind());
        tokio::spawn(
            async move {
                phases.mark(Phase::Decide);
                let exec = this.exec.clone();
                let (a, m) = (action.clone(), module.clone());
                // A panicking step must not leave the Module marked busy for ever.
                let run = async move {
                    let result = exec.execute(&a, m, cancelled, &mut phases).await;
                    (result, phases)
                };
                let (result, phases) = match tokio::spawn(run).await {
                    Ok((r, phases)) => (r, Some(phases)),
                    Err(e) => (Err(ActionError::Join(e)), None),
                };
                this.finish(&action, module.as_deref(), result, phases)
                    .await;
            }
            .instrument(span),
        );
    }

    async fn finish(
        &self,
        action: &Action,
        module: Option<&Module>,
        result: Result<(), ActionError>,
        phases: Option<LoadPhases>,
    ) {
        let key = action.key().clone();
        let generation = module.and_then(|m| m.metadata.generation);
        let loaded_stays = self.exec.journal.snapshot().modules.contains_key(&key)
            && !matches!(action, Action::Unload { .. });
        let event = match result {
            Ok(()) => {
                lock(&self.failures).remove(&key);
                if matches!(action, Action::Unload { .. } | Action::Replace { .. }) {
                    self.images_freed.store(true, Ordering::SeqCst);
                }
                if !matches!(action, Action::Unload { .. }) {
                    self.images_pulled.store(true, Ordering::SeqCst);
                }
                // A load's last phases end when the next pass has published it.
                if let Some(p) = phases.filter(|p| p.has(Phase::Kernel))
                    && matches!(action, Action::Load { .. } | Action::Replace { .. })
                {
                    lock(&self.unpublished).insert(key.clone(), p);
                }
                None
            }
            Err(ActionError::Cancelled) => None,
            Err(e) => {
                let reason = e.reason();
                let mut message = e.to_string();
                if loaded_stays {
                    message.push_str("; the loaded version stays loaded");
                }
                let mut failures = lock(&self.failures);
                let previous = failures.get(&key).cloned();
                let failure = if e.is_wait() {
                    tracing::info!(module = %key, reason = %reason, "{message}");
                    Failure {
                        reason,
                        message: message.clone(),
                        attempts: 0,
                        retry_at: Instant::now() + WAIT_FOR_IMAGE_POLL,
                        generation: None,
                    }
                } else {
                    let attempts = previous.as_ref().map_or(0, |f| f.attempts) + 1;
                    self.exec
                        .metrics
                        .failures
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    tracing::warn!(module = %key, reason = %reason, error = %message, attempts, "action failed");
                    // A spec the agent always refuses waits for the Module to change.
                    let wait = if reason == Reason::InvalidModuleSpec {
                        backoff(u32::MAX)
                    } else {
                        backoff(attempts)
                    };
                    Failure {
                        reason,
                        message: message.clone(),
                        attempts,
                        retry_at: Instant::now() + wait,
                        generation,
                    }
                };
                // One event per change of failure, not one per retry.
                let changed = previous
                    .as_ref()
                    .is_none_or(|p| p.reason != reason || p.message != message);
                failures.insert(key.clone(), failure);
                (changed && !e.is_wait()).then_some((reason, message))
            }
        };
        if let Some((reason, message)) = event {
            let regarding = match module {
                Some(m) => m.object_ref(&()),
                None => report::module_ref(&key, None),
            };
            let note = format!("node {}: {message}", self.exec.settings.node_name);
            self.exec
                .event(
                    regarding,
                    EventType::Warning,
                    reason.as_str(),
                    "Reconcile",
                    note,
                )
                .await;
        }
        lock(&self.running).remove(&key);
        self.memory_to_release.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// After a worker finished, at the end of the pass (after the image
    /// collection, which frees too): a pull and an extraction leave megabytes
    /// of freed heap in the allocator's per-thread arenas, which an agent
    /// idle until the next load should not keep.
    fn release_memory(&self) {
        if self.memory_to_release.swap(false, Ordering::SeqCst) {
            let released = (self.release_memory)();
            tracing::debug!(released, "freed heap given back to the OS");
        }
    }

    /// Checks every record not being worked on against the kernel: a module that
    /// left the kernel (or was replaced by another build) behind our back loses
    /// its record, so the Module loads again (or reports the foreign module).
    /// Returns the Modules whose state could not be read: nothing is done for
    /// them this pass (never unloaded, never reloaded on a guess).
    async fn recheck_kernel(&self) -> Vec<ModuleKey> {
        let busy: Vec<ModuleKey> = lock(&self.running).keys().cloned().collect();
        let records: Vec<_> = self
            .exec
            .journal
            .snapshot()
            .modules
            .into_iter()
            .filter(|(k, _)| !busy.contains(k))
            .collect();
        if records.is_empty() {
            return Vec::new();
        }
        let kernel = self.exec.kernel.clone();
        let checked = tokio::task::spawn_blocking(move || {
            records
                .into_iter()
                .map(|(k, r)| {
                    let p = presence(kernel.as_ref(), &r);
                    (k, p)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut unknown = Vec::new();
        for (key, p) in checked {
            match p {
                Ok(Presence::Ours) => {}
                Ok(gone) => {
                    if lock(&self.running).contains_key(&key) {
                        continue;
                    }
                    tracing::warn!(module = %key, presence = ?gone,
                        "the module left the kernel without this agent (or was replaced by another build); forgetting the record");
                    if let Err(e) = self.exec.journal.update(|s| {
                        s.modules.remove(&key);
                    }) {
                        tracing::warn!(module = %key, error = %e, "could not record it");
                    }
                }
                Err(e) => {
                    tracing::warn!(module = %key, error = %e, "cannot read the module's state in the kernel; leaving it as it is");
                    unknown.push(key);
                }
            }
        }
        unknown
    }

    /// Writes the NMC status, then the labels (so a `.ready` label is always
    /// explained by the status already there).
    async fn publish(&self, node: &Node, modules: &BTreeMap<ModuleKey, Arc<Module>>) {
        // Taken before the snapshot: a load finished after it is published next pass.
        let loads: Vec<ModuleKey> = lock(&self.unpublished).keys().cloned().collect();
        let state = self.exec.journal.snapshot();
        let failures: BTreeMap<ModuleKey, (String, String)> = lock(&self.failures)
            .iter()
            .map(|(k, f)| (k.clone(), (f.reason.to_string(), f.message.clone())))
            .collect();
        let status = report::node_status(&state, &failures, modules);
        let written = self
            .exec
            .reporter
            .status(status)
            .instrument(tracing::debug_span!("status"))
            .await;
        if let Err(e) = written {
            self.exec
                .metrics
                .failures
                .with_label_values(&[crate::metrics::PUBLISH_FAILURES[0]])
                .inc();
            tracing::warn!(error = %e, "could not write NodeModulesConfig status");
        } else {
            let mut unpublished = lock(&self.unpublished);
            for key in &loads {
                if let Some(p) = unpublished.get_mut(key)
                    && !p.has(Phase::Status)
                {
                    p.mark(Phase::Status);
                }
            }
        }
        let current = node.labels().clone();
        let withheld = self.exec.plugin_stop.withheld();
        let wanted = report::wanted_labels(&current, &state, &withheld);
        let written = self
            .exec
            .reporter
            .labels(current, wanted)
            .instrument(tracing::debug_span!("label"))
            .await;
        if let Err(e) = written {
            self.exec
                .metrics
                .failures
                .with_label_values(&[crate::metrics::PUBLISH_FAILURES[1]])
                .inc();
            tracing::warn!(error = %e, "could not update node labels");
        } else {
            let mut unpublished = lock(&self.unpublished);
            for key in &loads {
                if let Some(mut p) = unpublished.remove(key) {
                    if !p.has(Phase::Status) {
                        // Its status is not written yet: the label phase waits for it.
                        unpublished.insert(key.clone(), p);
                        continue;
                    }
                    p.mark(Phase::Label);
                    p.observe(&self.exec.metrics);
                }
            }
        }
    }

    /// Removes cached images no record uses (the boot path loads from them), only
    /// while no worker runs (a pulled image is not recorded until loaded): always
    /// after an unload or replace, else only when the cache is over its limit.
    async fn collect_images(&self) {
        if self.busy() > 0 {
            return;
        }
        let state = self.exec.journal.snapshot();
        // Staged images too: the next boot loads them from the cache.
        let keep: Vec<String> = state
            .modules
            .values()
            .chain(state.staged.values())
            .map(|r| r.digest.clone())
            .collect();
        let freed = self.images_freed.swap(false, Ordering::SeqCst);
        let pulled = self.images_pulled.swap(false, Ordering::SeqCst);
        let unmeasured = self.cache_unmeasured.swap(false, Ordering::SeqCst);
        if (freed || pulled || unmeasured)
            && let Some(bytes) = self.exec.images.collect(&keep, !freed).await
        {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            self.exec.metrics.image_cache_bytes.set(bytes);
        }
    }

    /// Sets each Module's state and last error on this node in the metrics.
    fn show_module_states(&self, desired: &DesiredSet, kernel: &str) {
        let running: HashMap<ModuleKey, bool> = lock(&self.running)
            .iter()
            .map(|(k, r)| (k.clone(), r.unload))
            .collect();
        let failures = lock(&self.failures).clone();
        let state = self.exec.journal.snapshot();
        let series = module_state::module_series(&module_state::Facts {
            kernel,
            desired,
            state: &state,
            running: &running,
            failures: &failures,
        });
        self.exec.metrics.set_module_series(series);
    }

    /// Logs why a Module does not apply to this node, once per change of reason.
    fn log_reasons(&self, desired: &DesiredSet) {
        let mut reasons = lock(&self.reasons);
        let mut seen = Vec::new();
        for (key, d) in &desired.map {
            if let Desired::Absent(why) | Desired::Keep(why) = d {
                seen.push(key.clone());
                if reasons.get(key) != Some(why) {
                    tracing::info!(module = %key, reason = %why, "Module does not apply to this node");
                    reasons.insert(key.clone(), why.clone());
                }
            }
        }
        reasons.retain(|k, _| seen.contains(k));
    }
}
