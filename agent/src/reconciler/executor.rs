//! Executing one planned action for one Module: pull (cancellable, outside any
//! lock), then the kernel steps under the node's kernel lock, each announced in
//! the journal first. Replacing is make-before-break: the new image is pulled and
//! checked before the loaded version is touched, and put back if the new one
//! fails to load.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::ObjectReference;
use kmm_common::Module;
use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tokio::sync::watch;
use tracing::{Instrument, instrument};

use super::error::ActionError;
use super::journal::Journal;
use super::phases::{LoadPhases, Phase};
use super::plugin_stop::PluginStop;
use super::report::{self, Report};
use super::sources::{Images, PullSecrets};
use super::{Settings, lock};
use crate::image::{DockerConfig, PullOptions, PullPolicy, PulledImage, RegistryTls};
use crate::kernel::{
    self, DepPolicy, Kernel, LoadRequest, UnloadOutcome, UnloadRequest, moddep::ModulesDep,
    normalize,
};
use crate::load_sequence::{self, FirmwareTarget, LoadSteps};
use crate::metrics::Metrics;
use crate::plan::{Action, DesiredLoad};
use crate::state::{LoadedModule, Loading, ModuleKey, NodeState, Unloading};

type Result<T, E = ActionError> = std::result::Result<T, E>;

/// Set to `true` when the action's pull, or its wait for a device plugin to
/// stop, should end (the Module is no longer wanted, or changed while waiting).
pub type Cancel = watch::Receiver<bool>;

/// Everything one node's actions need.
pub struct Executor {
    pub(super) settings: Settings,
    pub(super) kernel: Arc<dyn Kernel>,
    /// Kernel steps of different Modules never interleave (shared modules,
    /// reference counting across records); pulls never hold it.
    kernel_lock: tokio::sync::Mutex<()>,
    pub(super) images: Arc<dyn Images>,
    secrets: Arc<dyn PullSecrets>,
    pub(super) reporter: Arc<dyn Report>,
    pub(super) journal: Journal,
    pub(super) metrics: Metrics,
    verified_at: std::sync::Mutex<HashMap<ModuleKey, Instant>>,
    /// Device plugins stopped before a swap.
    pub(super) plugin_stop: PluginStop,
    /// This Node's uid, as last seen: events on the Node name it, since
    /// `kubectl describe node` finds a Node's events by uid.
    pub(super) node_uid: std::sync::Mutex<Option<String>>,
}

/// An image pulled and checked, ready for the kernel steps.
#[derive(Debug, Clone)]
struct Prepared {
    request: LoadRequest,
    module_dir: PathBuf,
    firmware_source: Option<PathBuf>,
    digest: String,
}

impl Executor {
    /// An executor over these parts; `state` is the recovered node state.
    pub fn new(
        settings: Settings,
        kernel: Arc<dyn Kernel>,
        images: Arc<dyn Images>,
        secrets: Arc<dyn PullSecrets>,
        reporter: Arc<dyn Report>,
        journal: Journal,
        metrics: Metrics,
    ) -> Self {
        Self {
            plugin_stop: PluginStop::new(settings.plugin_stop_timeout),
            settings,
            kernel,
            kernel_lock: tokio::sync::Mutex::new(()),
            images,
            secrets,
            reporter,
            journal,
            metrics,
            verified_at: std::sync::Mutex::new(HashMap::new()),
            node_uid: std::sync::Mutex::new(None),
        }
    }

    /// Executes one action; a load's phases are marked in `phases`.
    ///
    /// # Errors
    /// The first failing step; nothing after it runs. A failed load leaves nothing
    /// of its attempt in the kernel; a failed replace leaves the loaded version.
    #[instrument(skip_all, fields(module = %action.key(), action = action.kind()))]
    pub async fn execute(
        self: &Arc<Self>,
        action: &Action,
        module: Option<Arc<Module>>,
        cancel: Cancel,
        phases: &mut LoadPhases,
    ) -> Result<()> {
        match action {
            Action::Load { key, want } => {
                self.load(key, want, module.as_deref(), cancel, phases)
                    .await
            }
            Action::Replace { key, want } => {
                let pulled = self.pull(key, want, cancel.clone(), phases).await?;
                self.swap(
                    key,
                    want,
                    &pulled,
                    module.as_deref(),
                    "the Module's spec, version or the node's kernel changed",
                    (cancel, phases),
                )
                .await
            }
            Action::Verify { key, want } => {
                self.verify(key, want, module.as_deref(), cancel, phases)
                    .await
            }
            Action::Stage { key, want } => {
                let pulled = self.pull(key, want, cancel, phases).await?;
                self.stage(key, want, &pulled, module.as_deref())
            }
            Action::Unload { key, reason } => self.unload(key, reason, module.as_deref()).await,
        }
    }

    /// Records `want`, pulled and checked like a load, for the next boot (the boot path loads
    /// it instead of what runs now) and raises the reboot sentinel. What runs stays: a module
    /// in use (a filesystem, a storage driver) cannot be unloaded; a reboot replaces it.
    fn stage(
        &self,
        key: &ModuleKey,
        want: &DesiredLoad,
        pulled: &PulledImage,
        module: Option<&Module>,
    ) -> Result<()> {
        if let Some(reason) = &want.rejected {
            return Err(ActionError::InvalidSpec(reason.clone()));
        }
        let prepared = prepare(want, pulled)?;
        let record = LoadedModule {
            image: want.image.clone(),
            digest: prepared.digest,
            kernel: want.kernel.clone(),
            module_name: want.module_name.clone(),
            modules_loading_order: want.modules_loading_order.clone(),
            srcversions: Default::default(),
            inserted: Vec::new(),
            parameters: want.parameters.clone(),
            version: want.version.clone(),
            in_tree_removed: want.in_tree_to_remove.clone(),
            module_dir: prepared.module_dir,
            firmware_files: Vec::new(),
            firmware_source: prepared.firmware_source,
            loaded_at: report::now_rfc3339(),
            module_uid: module.and_then(|m| m.metadata.uid.clone()),
            first_time: want.first_time,
        };
        self.journal.update(|s| s.stage(key, record))?;
        if let Some(sentinel) = &self.settings.reboot_sentinel {
            std::fs::write(sentinel, format!("kmm-agent: {key}\n")).map_err(|source| {
                kernel::Error::Io {
                    path: sentinel.clone(),
                    source,
                }
            })?;
        }
        tracing::info!(module = %key, image = %want.image, version = ?want.version,
            "staged for the next boot: the running version stays until the node reboots");
        Ok(())
    }

    /// Whether a `Verify` has anything to do now (digest check of an `Always` image due).
    pub fn verify_due(&self, key: &ModuleKey, want: &DesiredLoad) -> bool {
        effective_policy(want).is_ok_and(|p| p == PullPolicy::Always)
            && lock(&self.verified_at)
                .get(key)
                .is_none_or(|t| t.elapsed() >= self.settings.verify_interval)
    }

    async fn load(
        self: &Arc<Self>,
        key: &ModuleKey,
        want: &DesiredLoad,
        module: Option<&Module>,
        cancel: Cancel,
        phases: &mut LoadPhases,
    ) -> Result<()> {
        if let Some(why) = &want.rejected {
            return Err(ActionError::InvalidSpec(why.clone()));
        }
        let pulled = self.pull(key, want, cancel.clone(), phases).await?;
        // With nothing recorded, the swap's unload is a no-op: one kernel path.
        self.swap(
            key,
            want,
            &pulled,
            module,
            "a previous load was recorded",
            (cancel, phases),
        )
        .await
    }

    async fn verify(
        self: &Arc<Self>,
        key: &ModuleKey,
        want: &DesiredLoad,
        module: Option<&Module>,
        cancel: Cancel,
        phases: &mut LoadPhases,
    ) -> Result<()> {
        if !self.verify_due(key, want) {
            return Ok(());
        }
        let pulled = self.pull(key, want, cancel.clone(), phases).await?;
        lock(&self.verified_at).insert(key.clone(), Instant::now());
        let current = self
            .journal
            .snapshot()
            .modules
            .get(key)
            .map(|r| r.digest.clone());
        if current.as_deref() == Some(pulled.digest.as_str()) {
            return Ok(());
        }
        tracing::info!(module = %key, old = ?current, new = %pulled.digest, "image digest moved; replacing");
        self.swap(
            key,
            want,
            &pulled,
            module,
            "the image digest changed (imagePullPolicy: Always)",
            (cancel, phases),
        )
        .await
    }

    /// Make-before-break: `pulled` is checked first; only then is the loaded
    /// version unloaded and the new one loaded. If the new one fails to load, the
    /// old record is loaded back from the cache. A Module with a device plugin
    /// has it stopped before the unload ([`Executor::stop_plugin`]).
    async fn swap(
        self: &Arc<Self>,
        key: &ModuleKey,
        want: &DesiredLoad,
        pulled: &PulledImage,
        module: Option<&Module>,
        why: &str,
        (mut cancel, phases): (Cancel, &mut LoadPhases),
    ) -> Result<()> {
        if let Some(reason) = &want.rejected {
            return Err(ActionError::InvalidSpec(reason.clone()));
        }
        let prepared = prepare(want, pulled)?;
        // Labels stay off until the worker ends; the next publish puts them back.
        let _withheld = if want.stops_plugin && self.journal.snapshot().modules.contains_key(key) {
            Some(self.stop_plugin(key, module, &mut cancel).await?)
        } else {
            None
        };
        let started = Instant::now();
        let uid = module.and_then(|m| m.metadata.uid.clone());
        let (k, w, p) = (key.clone(), want.clone(), prepared);
        let (old, record) = self
            .kernel_step(move |ex| {
                let old = ex.unload_now(&k)?;
                match ex.load_now(&k, &w, &p, uid) {
                    Ok(record) => Ok((old, record)),
                    Err(e) => {
                        if let Some((old, _)) = &old {
                            ex.restore(&k, old);
                        }
                        Err(e)
                    }
                }
            })
            .instrument(tracing::info_span!("kernel"))
            .await?;
        phases.mark(Phase::Kernel);
        if let Some((old, outcome)) = old {
            tracing::info!(module = %key, removed = ?outcome.removed, why, "previous version unloaded");
            self.unloaded_event(key, module, &old, why).await;
        }
        self.loaded(key, want, module, &record, started).await;
        Ok(())
    }

    async fn unload(
        self: &Arc<Self>,
        key: &ModuleKey,
        why: &str,
        module: Option<&Module>,
    ) -> Result<()> {
        let started = Instant::now();
        let k = key.clone();
        let Some((record, outcome)) = self.kernel_step(move |ex| ex.unload_now(&k)).await? else {
            return Ok(());
        };
        self.metrics
            .unload_duration
            .observe(started.elapsed().as_secs_f64());
        let _ = self
            .metrics
            .modules_loaded
            .remove_label_values(&[&key.namespace, &key.name]);
        lock(&self.verified_at).remove(key);
        tracing::info!(module = %key, removed = ?outcome.removed, why, "module unloaded");
        self.unloaded_event(key, module, &record, why).await;
        Ok(())
    }

    /// Runs `step` on a blocking thread while holding the kernel lock.
    async fn kernel_step<T: Send + 'static>(
        self: &Arc<Self>,
        step: impl FnOnce(&Executor) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let _guard = self.kernel_lock.lock().await;
        let ex = self.clone();
        tokio::task::spawn_blocking(move || step(&ex)).await?
    }

    /// The kernel part of a load, under the kernel lock: refuse a foreign module
    /// of the same name, journal the attempt, run the shared load sequence, record it.
    fn load_now(
        &self,
        key: &ModuleKey,
        want: &DesiredLoad,
        prepared: &Prepared,
        module_uid: Option<String>,
    ) -> Result<LoadedModule> {
        let state = self.journal.snapshot();
        self.refuse_foreign(key, want, prepared, &state)?;
        let order: Vec<String> = prepared.request.load_order().map(str::to_owned).collect();
        let mut already_loaded = Vec::new();
        for m in &order {
            if self.kernel.is_loaded(m)? {
                already_loaded.push(m.clone());
            }
        }
        self.journal.update(|s| {
            s.begin_load(
                key,
                Loading {
                    kernel: want.kernel.clone(),
                    load_order: order,
                    already_loaded,
                },
            )
        })?;
        let steps = LoadSteps {
            request: &prepared.request,
            in_tree_to_remove: &want.in_tree_to_remove,
            firmware_source: prepared.firmware_source.as_deref(),
        };
        let done = match load_sequence::run(self.kernel.as_ref(), &steps, &self.firmware_target()) {
            Ok(done) => done,
            Err(e) => {
                self.journal.update(|s| s.abort_load(key))?;
                return Err(e.into());
            }
        };
        if done.outcome.already_loaded && !want.parameters.is_empty() {
            // modprobe behaves the same: a loaded module keeps its parameters.
            tracing::warn!(module = %key, name = %want.module_name, parameters = ?want.parameters,
                "module was already in the kernel; its parameters were not applied");
        }
        let record = LoadedModule {
            image: want.image.clone(),
            digest: prepared.digest.clone(),
            kernel: want.kernel.clone(),
            module_name: want.module_name.clone(),
            modules_loading_order: want.modules_loading_order.clone(),
            srcversions: done.outcome.srcversions.clone(),
            inserted: done.outcome.inserted,
            parameters: want.parameters.clone(),
            version: want.version.clone(),
            in_tree_removed: done.in_tree_removed,
            module_dir: prepared.module_dir.clone(),
            firmware_files: done.firmware_files,
            firmware_source: prepared.firmware_source.clone(),
            loaded_at: report::now_rfc3339(),
            module_uid,
            first_time: want.first_time,
        };
        self.journal
            .update(|s| s.commit_load(key, record.clone()))?;
        Ok(record)
    }

    /// A module of the wanted name already in the kernel is used only if it is the
    /// same build (srcversion) as the image's, or if the Module replaces it
    /// (`inTreeModulesToRemove`). Without srcversions on both sides it is used as
    /// before (modprobe's behaviour), never unloaded since not inserted by us.
    fn refuse_foreign(
        &self,
        key: &ModuleKey,
        want: &DesiredLoad,
        prepared: &Prepared,
        state: &NodeState,
    ) -> Result<()> {
        let main = normalize(&want.module_name);
        if want.in_tree_to_remove.iter().any(|m| normalize(m) == main) {
            return Ok(());
        }
        if !self.kernel.is_loaded(&main)? {
            return Ok(());
        }
        let loaded = self.kernel.srcversion(&main)?;
        let wanted = self.kernel.file_srcversion(&prepared.module_dir, &main)?;
        let none = || "none".to_string();
        let (loaded, wanted) = match (loaded, wanted) {
            (Some(l), Some(w)) if l == w => return Ok(()),
            // One side has a srcversion and the other not: two different builds.
            (Some(l), w @ (Some(_) | None)) => (l, w.unwrap_or_else(none)),
            (None, Some(w)) => (none(), w),
            // No srcversion to compare: used as before, unless this agent had it
            // loaded before a reboot and someone else loaded it since (upstream #1083).
            (None, None) if state.not_ours.contains(&main) => (
                "unknown, loaded by someone else after a reboot".to_string(),
                none(),
            ),
            (None, None) => return Ok(()),
        };
        Err(ActionError::Foreign {
            module: main.clone(),
            loaded,
            wanted,
            owner: state.other_user_of(key, &main).map(ToString::to_string),
        })
    }

    /// The kernel part of an unload, under the kernel lock: only modules this agent
    /// inserted and no other record needs; the unloading intent is journaled first.
    fn unload_now(&self, key: &ModuleKey) -> Result<Option<(LoadedModule, UnloadOutcome)>> {
        let state = self.journal.snapshot();
        let Some(record) = state.modules.get(key).cloned() else {
            return Ok(None);
        };
        let intent = unload_intent(&state, key, &record);
        self.journal
            .update(|s| s.begin_unload(key, intent.clone()))?;
        let request = UnloadRequest {
            fail_if_not_loaded: record.first_time.unload,
            ..intent.request()
        };
        let outcome = match self.kernel.unload(&request) {
            Ok(o) => o,
            Err(e) => {
                self.journal.update(|s| s.abort_unload(key))?;
                return Err(ActionError::Unload(e));
            }
        };
        self.journal.update(|s| finish_unload(s, key))?;
        Ok(Some((record, outcome)))
    }

    /// After a failed replace, loads the previous record again from the cache.
    fn restore(&self, key: &ModuleKey, old: &LoadedModule) {
        let result = LoadRequest::new(&old.module_dir, &old.module_name)
            .with_parameters(old.parameters.iter().cloned())
            .first_time(old.first_time.load)
            .with_loading_order(&old.modules_loading_order)
            .map_err(load_sequence::StepError::from)
            .and_then(|req| {
                let steps = LoadSteps {
                    request: &req,
                    in_tree_to_remove: &[],
                    firmware_source: old.firmware_source.as_deref(),
                };
                load_sequence::run(self.kernel.as_ref(), &steps, &self.firmware_target())
            });
        match result {
            Ok(done) => {
                let mut back = old.clone();
                back.srcversions = done.outcome.srcversions.clone();
                back.inserted = done.outcome.inserted;
                if let Err(e) = self.journal.update(|s| s.commit_load(key, back)) {
                    tracing::error!(module = %key, error = %e, "previous version loaded back but not recorded");
                }
                tracing::warn!(module = %key, "new version failed to load; the previous version was loaded back");
            }
            Err(e) => {
                tracing::error!(module = %key, error = %e, "new version failed to load and the previous one could not be loaded back")
            }
        }
    }

    fn firmware_target(&self) -> FirmwareTarget {
        FirmwareTarget {
            dir: self.settings.firmware_dir.clone(),
            set_class_path: self.settings.set_firmware_class_path,
            class_path: kernel::firmware::FIRMWARE_CLASS_PATH.into(),
        }
    }

    #[instrument(skip_all, fields(image = %want.image))]
    async fn pull(
        &self,
        key: &ModuleKey,
        want: &DesiredLoad,
        mut cancel: Cancel,
        phases: &mut LoadPhases,
    ) -> Result<PulledImage> {
        let credentials = match &want.pull_secret {
            Some(name) => self
                .secrets
                .docker_config(key, name)
                .await
                .map_err(|message| ActionError::PullSecret {
                    name: name.clone(),
                    message,
                })?,
            None => DockerConfig::default(),
        };
        let opts = PullOptions {
            policy: Some(effective_policy(want)?),
            credentials,
            tls: RegistryTls {
                insecure: want.registry.insecure,
                insecure_skip_tls_verify: want.registry.insecure_skip_tls_verify,
            },
            ..self.settings.pull.clone()
        };
        let started = Instant::now();
        let pulled = tokio::select! {
            r = self.images.pull(&want.image, &opts) => r,
            _ = cancel.wait_for(|c| *c) => return Err(ActionError::Cancelled),
        }
        .map_err(|source| match source {
            crate::image::ImageError::NotFound { .. } if want.built_in_cluster => {
                ActionError::WaitingForImage {
                    image: want.image.clone(),
                }
            }
            source => ActionError::Pull {
                image: want.image.clone(),
                source,
            },
        })?;
        self.metrics
            .pull_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.pulled_bytes.inc_by(pulled.bytes_downloaded);
        phases.mark_pull(pulled.unpack_time);
        Ok(pulled)
    }

    async fn loaded(
        &self,
        key: &ModuleKey,
        want: &DesiredLoad,
        module: Option<&Module>,
        record: &LoadedModule,
        started: Instant,
    ) {
        lock(&self.verified_at).insert(key.clone(), Instant::now());
        self.metrics
            .load_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .modules_loaded
            .with_label_values(&[&key.namespace, &key.name])
            .set(1);
        tracing::info!(module = %key, image = %want.image, digest = %record.digest,
            inserted = ?record.inserted, "module loaded");
        let Some(m) = module else { return };
        self.node_event(
            m.object_ref(&()),
            key,
            "ModuleLoaded",
            "Load",
            "loaded into",
        )
        .await;
        let main = normalize(&want.module_name);
        let shared = !record.inserted.iter().any(|m| normalize(m) == main);
        if let Some(other) = shared
            .then(|| self.journal.snapshot().other_user_of(key, &main).cloned())
            .flatten()
        {
            let note = format!(
                "kernel module {main} on node {} is also loaded by Module {other}: it stays until neither Module needs it, and this Module's parameters were not applied",
                self.settings.node_name
            );
            self.event(
                m.object_ref(&()),
                EventType::Warning,
                "ModuleShared",
                "Load",
                note,
            )
            .await;
        }
    }

    async fn unloaded_event(
        &self,
        key: &ModuleKey,
        module: Option<&Module>,
        record: &LoadedModule,
        why: &str,
    ) {
        let reference = match module {
            Some(m) => m.object_ref(&()),
            None => report::module_ref(key, record.module_uid.as_deref()),
        };
        tracing::debug!(module = %key, kernel_module = %record.module_name, why, "unload reported");
        self.node_event(reference, key, "ModuleUnloaded", "Unload", "unloaded from")
            .await;
    }

    /// One event per load or unload (the per-node write budget holds one):
    /// upstream's, on the Node (`kubectl describe node` shows which drivers
    /// came and went) with upstream's reason and text, and `related` naming
    /// the Module, so a tool can find a Module's loads without a second event.
    async fn node_event(
        &self,
        module: ObjectReference,
        key: &ModuleKey,
        reason: &str,
        action: &str,
        what: &str,
    ) {
        let node = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.settings.node_name.clone()),
            uid: lock(&self.node_uid).clone(),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: reason.to_string(),
            note: Some(format!(
                "Module {}/{} {what} the kernel",
                key.namespace, key.name
            )),
            action: action.to_string(),
            secondary: Some(module),
        };
        self.reporter.event(node, event).await;
    }

    /// Publishes an event through the reporter.
    pub(super) async fn event(
        &self,
        regarding: ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        self.reporter.event(regarding, event).await;
    }
}

/// What unloading `key` removes: its modules in reverse load order and the
/// dependencies it inserted, only those this agent inserted and no other record
/// relies on.
pub(super) fn unload_intent(
    state: &NodeState,
    key: &ModuleKey,
    record: &LoadedModule,
) -> Unloading {
    let others = state.needed_by_others(key);
    let ours: BTreeSet<String> = record
        .inserted
        .iter()
        .map(|m| normalize(m))
        .filter(|m| !others.contains(m))
        .collect();
    let mut order: Vec<String> = record
        .modules_loading_order
        .iter()
        .skip(1)
        .rev()
        .cloned()
        .collect();
    order.push(record.module_name.clone());
    order.reverse();
    Unloading {
        modules: order
            .into_iter()
            .map(|m| normalize(&m))
            .filter(|m| ours.contains(m))
            .collect(),
        deps: ours.into_iter().collect(),
    }
}

impl Unloading {
    /// The kernel request this intent stands for (without `--first-time`: finishing an
    /// interrupted unload must not fail on what it removed before the crash).
    pub fn request(&self) -> UnloadRequest {
        UnloadRequest {
            modules: self.modules.clone(),
            deps: DepPolicy::OnlyThese(self.deps.iter().cloned().collect()),
            fail_if_not_loaded: false,
        }
    }
}

/// Records that `key`'s unload finished: modules it inserted that others still
/// need are handed over to them, and its record goes.
pub(super) fn finish_unload(state: &mut NodeState, key: &ModuleKey) {
    let others = state.needed_by_others(key);
    let shared: Vec<String> = state
        .modules
        .get(key)
        .map(|r| {
            r.inserted
                .iter()
                .map(|m| normalize(m))
                .filter(|m| others.contains(m))
                .collect()
        })
        .unwrap_or_default();
    state.hand_over_shared(key, &shared);
    state.commit_unload(key);
}

/// `imagePullPolicy` of `want`, or Kubernetes' default for its tag.
fn effective_policy(want: &DesiredLoad) -> Result<PullPolicy> {
    let err = |source| ActionError::Pull {
        image: want.image.clone(),
        source,
    };
    match PullPolicy::parse(&want.pull_policy).map_err(err)? {
        Some(p) => Ok(p),
        None => Ok(PullPolicy::default_for(
            &crate::image::parse_reference(&want.image).map_err(err)?,
        )),
    }
}

/// Checks that the pulled image holds what `want` loads (module directory,
/// `modules.dep` entries and their files) before anything loaded is touched.
fn prepare(want: &DesiredLoad, pulled: &PulledImage) -> Result<Prepared> {
    let module_dir = kernel::module_dir(&pulled.root, &want.dir_name, &want.kernel)?;
    let request = LoadRequest::new(&module_dir, &want.module_name)
        .with_parameters(want.parameters.iter().cloned())
        .first_time(want.first_time.load)
        .with_loading_order(&want.modules_loading_order)?;
    if !module_dir.join("modules.dep").is_file() {
        return Err(kernel::Error::NoModulesDep(module_dir).into());
    }
    let dep = ModulesDep::read(&module_dir).map_err(|source| kernel::Error::Io {
        path: module_dir.join("modules.dep"),
        source,
    })?;
    for name in request.load_order() {
        let present = dep
            .get(name)
            .is_some_and(|e| module_dir.join(&e.path).is_file());
        if !present {
            return Err(kernel::Error::NotFound {
                module: name.to_string(),
                dir: module_dir.clone(),
            }
            .into());
        }
    }
    let firmware_source = if want.firmware_path.is_empty() {
        None
    } else {
        Some(image_path(&pulled.root, &want.firmware_path)?)
    };
    Ok(Prepared {
        request,
        module_dir,
        firmware_source,
        digest: pulled.digest.clone(),
    })
}

/// `<root>/<path>` for an absolute path inside the image (`/firmware` → `<root>/firmware`).
///
/// # Errors
/// A path with `..` could name host files outside the image.
fn image_path(root: &Path, path: &str) -> Result<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ActionError::InvalidSpec(format!(
            "firmwarePath '{path}' must be a path inside the image without '..'"
        )));
    }
    Ok(root.join(rel))
}
