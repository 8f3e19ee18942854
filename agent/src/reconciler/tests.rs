//! In-process tests of the executor and its workers: the real planning, journal,
//! kernel algorithm (simulated kernel) and load sequence, with a recording
//! reporter and an image source serving prepared trees. No API server.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Node;
use kmm_common::Module;
use tokio::sync::Notify;

use super::report::RecordingReporter;
use super::*;
use crate::image::{DockerConfig, ImageError, PullOptions, PulledImage};
use crate::kernel::{self as k, Fault, SimulatedKernel};
use crate::state::{LoadedModule, NodeState, Unloading};

const KVER: &str = "6.1.0-56-amd64";
const BOOT: &str = "boot-1";

/// Images as prepared trees; a pull of a held image waits until released.
#[derive(Default)]
struct FakeImages {
    trees: Mutex<HashMap<String, (String, PathBuf)>>,
    held: Mutex<HashMap<String, Arc<Notify>>>,
    pulls: Mutex<Vec<String>>,
}

impl FakeImages {
    fn add(&self, image: &str, digest: &str, root: PathBuf) {
        lock(&self.trees).insert(image.into(), (digest.into(), root));
    }
    fn hold(&self, image: &str) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        lock(&self.held).insert(image.into(), n.clone());
        n
    }
}

impl Images for FakeImages {
    fn pull<'a>(
        &'a self,
        image: &'a str,
        _opts: &'a PullOptions,
    ) -> BoxFuture<'a, Result<PulledImage, ImageError>> {
        Box::pin(async move {
            lock(&self.pulls).push(image.to_string());
            let gate = lock(&self.held).get(image).cloned();
            if let Some(gate) = gate {
                gate.notified().await;
            }
            let Some((digest, root)) = lock(&self.trees).get(image).cloned() else {
                return Err(ImageError::NotFound {
                    reference: image.to_string(),
                });
            };
            Ok(PulledImage {
                reference: image.into(),
                digest: digest.clone(),
                resolved_digest: digest,
                root,
                bytes_downloaded: 0,
                blobs_downloaded: 0,
                unpacked: false,
                from_cache: true,
                unpack_time: Duration::ZERO,
            })
        })
    }
    /// The cache "holds" 1 KiB per image kept, so its gauge shows what was kept.
    fn collect<'a>(&'a self, keep: &'a [String], _over: bool) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move { Some(1024 * keep.len() as u64) })
    }
}

struct NoSecrets;
impl PullSecrets for NoSecrets {
    fn docker_config<'a>(
        &'a self,
        _m: &'a ModuleKey,
        _s: &'a str,
    ) -> BoxFuture<'a, Result<DockerConfig, String>> {
        Box::pin(async { Ok(DockerConfig::default()) })
    }
}

/// A kernel whose state reads fail for some modules (a sysfs read error).
struct UnreadableKernel {
    inner: SimulatedKernel,
    unreadable: Mutex<Vec<String>>,
}

impl k::Kernel for UnreadableKernel {
    fn loaded_modules(&self) -> k::Result<Vec<k::LoadedModule>> {
        self.inner.loaded_modules()
    }
    fn is_loaded(&self, name: &str) -> k::Result<bool> {
        if lock(&self.unreadable).iter().any(|m| m == name) {
            return Err(k::Error::Io {
                path: PathBuf::from(format!("/sys/module/{name}/refcnt")),
                source: std::io::Error::other("read error"),
            });
        }
        self.inner.is_loaded(name)
    }
    fn load(&self, req: &k::LoadRequest) -> k::Result<k::LoadOutcome> {
        self.inner.load(req)
    }
    fn unload(&self, req: &k::UnloadRequest) -> k::Result<k::UnloadOutcome> {
        self.inner.unload(req)
    }
    fn srcversion(&self, name: &str) -> k::Result<Option<String>> {
        self.inner.srcversion(name)
    }
    fn file_srcversion(&self, dir: &Path, name: &str) -> k::Result<Option<String>> {
        self.inner.file_srcversion(dir, name)
    }
}

/// A kmod image tree: `<root>/opt/lib/modules/KVER` with `modules.dep` lines.
fn tree(root: &Path, dep: &str) -> PathBuf {
    let dir = k::module_dir(root, "/opt", KVER).unwrap();
    std::fs::create_dir_all(dir.join("kernel")).unwrap();
    std::fs::write(dir.join("modules.dep"), dep).unwrap();
    for line in dep.lines() {
        let (ko, deps) = line.split_once(':').unwrap();
        for f in std::iter::once(ko).chain(deps.split_whitespace()) {
            std::fs::write(dir.join(f), b"\x7fELF").unwrap();
        }
    }
    root.to_path_buf()
}

fn module(ns: &str, name: &str, image: &str, modprobe: &str) -> Arc<Module> {
    module_with(ns, name, image, modprobe, "")
}

/// With `extra` lines at the container level (indented by the caller's YAML).
fn module_with(ns: &str, name: &str, image: &str, modprobe: &str, extra: &str) -> Arc<Module> {
    let yaml = format!(
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {{name: {name}, namespace: {ns}, uid: uid-{name}, generation: 1}}
spec:
  selector: {{role: test}}
  moduleLoader:
    container:
      imagePullPolicy: IfNotPresent
      {extra}
      modprobe: {modprobe}
      kernelMappings:
        - regexp: '^.*$'
          containerImage: {image}
"#
    );
    Arc::new(serde_yaml::from_str(&yaml).unwrap())
}

struct Harness {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    kernel: Arc<dyn k::Kernel>,
    sim: SimulatedKernel,
    images: Arc<FakeImages>,
    reporter: Arc<RecordingReporter>,
    workers: Arc<Workers>,
    modules: Vec<Arc<Module>>,
    node: Node,
    /// Calls of the workers' memory release.
    releases: Arc<AtomicU32>,
}

fn settings() -> Settings {
    Settings {
        node_name: "n1".into(),
        kernel_release: KVER.into(),
        boot_id: BOOT.into(),
        firmware_dir: PathBuf::from("/nonexistent-firmware"),
        set_firmware_class_path: false,
        resync: Duration::from_secs(300),
        verify_interval: Duration::from_secs(300),
        pull: PullOptions::default(),
        plugin_stop_timeout: Duration::from_secs(300),
        reboot_sentinel: None,
    }
}

impl Harness {
    fn new() -> Self {
        let sim = SimulatedKernel::new();
        Self::with_kernel(sim.clone(), Arc::new(sim), NodeState::default())
    }

    fn with_kernel(sim: SimulatedKernel, kernel: Arc<dyn k::Kernel>, state: NodeState) -> Self {
        Self::with_settings(sim, kernel, state, settings())
    }

    fn with_settings(
        sim: SimulatedKernel,
        kernel: Arc<dyn k::Kernel>,
        state: NodeState,
        settings: Settings,
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let file = crate::state::StateFile::in_dir(&dir.join("state"));
        file.save(&state).unwrap();
        let images = Arc::new(FakeImages::default());
        let reporter = Arc::new(RecordingReporter::default());
        let exec = Arc::new(Executor::new(
            settings,
            kernel.clone(),
            images.clone(),
            Arc::new(NoSecrets),
            reporter.clone(),
            Journal::new(state, file),
            crate::metrics::Metrics::new().unwrap(),
        ));
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        node.metadata.labels = Some(BTreeMap::from([("role".into(), "test".into())]));
        let releases = Arc::new(AtomicU32::new(0));
        let counter = releases.clone();
        let workers =
            Workers::new(exec, Arc::new(Notify::new())).with_release_memory(Arc::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                false
            }));
        Self {
            _tmp: tmp,
            dir,
            kernel,
            sim,
            images,
            reporter,
            workers: Arc::new(workers),
            modules: Vec::new(),
            node,
            releases,
        }
    }

    /// An image `image` holding `dep` (a modules.dep text).
    fn image(&self, image: &str, digest: &str, dep: &str) {
        let root = tree(&self.dir.join(digest.replace(':', "-")), dep);
        self.images.add(image, digest, root);
    }

    fn apply(&mut self, m: Arc<Module>) {
        self.modules.retain(|x| {
            x.metadata.name != m.metadata.name || x.metadata.namespace != m.metadata.namespace
        });
        self.modules.push(m);
    }

    fn delete(&mut self, name: &str) {
        self.modules
            .retain(|x| x.metadata.name.as_deref() != Some(name));
    }

    async fn pass(&self) {
        self.pass_woken_at(None).await;
    }

    /// A pass woken by a watch event seen at `event_at`.
    async fn pass_woken_at(&self, event_at: Option<std::time::Instant>) {
        let by_key = self
            .modules
            .iter()
            .map(|m| {
                (
                    ModuleKey::new(
                        m.metadata.namespace.clone().unwrap(),
                        m.metadata.name.clone().unwrap(),
                    ),
                    m.clone(),
                )
            })
            .collect();
        // The node's labels as the recorded changes left them.
        let mut node = self.node.clone();
        let mut labels = node.metadata.labels.take().unwrap_or_default();
        labels.extend(lock(&self.reporter.node_labels).clone());
        node.metadata.labels = Some(labels);
        self.workers
            .reconcile(&self.modules, &by_key, &node, KVER, event_at)
            .await;
    }

    /// Passes until no worker runs (at most a few seconds).
    async fn settle(&self) {
        for _ in 0..200 {
            self.pass().await;
            if self.workers.busy() == 0 {
                self.pass().await;
                if self.workers.busy() == 0 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("workers did not settle");
    }

    /// Waits until `cond` holds, running passes meanwhile.
    async fn until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        for _ in 0..300 {
            if cond(self) {
                return;
            }
            self.pass().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn state(&self) -> NodeState {
        self.workers.executor().journal.snapshot()
    }

    fn loaded(&self, m: &str) -> bool {
        self.kernel.is_loaded(m).unwrap()
    }

    fn ready(&self, ns: &str, name: &str) -> bool {
        lock(&self.reporter.node_labels).contains_key(&kmm_common::ready_label(ns, name))
    }

    fn last_error(&self, name: &str) -> Option<(String, String)> {
        self.reporter.last_status().and_then(|s| {
            s.modules
                .into_iter()
                .find(|m| m.item.name == name)
                .and_then(|m| m.last_error)
                .map(|e| (e.reason, e.message))
        })
    }
}

const BRD: &str = "{moduleName: brd, parameters: [rd_nr=2]}";

/// How many times each load phase was observed.
fn phase_counts(h: &Harness) -> Vec<(&'static str, u64)> {
    let metrics = &h.workers.executor().metrics;
    phases::Phase::ALL
        .iter()
        .map(|p| {
            let n = metrics
                .load_phase
                .with_label_values(&[p.as_str()])
                .get_sample_count();
            (p.as_str(), n)
        })
        .collect()
}

#[tokio::test]
async fn each_phase_of_a_load_is_observed_once_per_load() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.image("reg/brd:2", "sha256:2", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    assert!(h.ready("ns", "brd"));
    let once = phase_counts(&h);
    assert!(once.iter().all(|(_, n)| *n == 1), "{once:?}");
    // Passes with nothing to do observe nothing; a replace is a load.
    h.settle().await;
    assert_eq!(phase_counts(&h), once);
    h.apply(module("ns", "brd", "reg/brd:2", BRD));
    h.settle().await;
    assert_eq!(
        h.state().modules[&ModuleKey::new("ns", "brd")].digest,
        "sha256:2"
    );
    let twice = phase_counts(&h);
    assert!(twice.iter().all(|(_, n)| *n == 2), "{twice:?}");
    // Neither an unload nor a failed load is a load.
    h.delete("brd");
    h.apply(module("ns", "gone", "reg/gone:1", BRD));
    h.settle().await;
    assert!(!h.loaded("brd"));
    assert!(h.last_error("gone").is_some());
    assert_eq!(phase_counts(&h), twice);
}

#[tokio::test]
async fn a_load_is_timed_from_the_watch_event_that_woke_its_pass() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    let seen = std::time::Instant::now()
        .checked_sub(Duration::from_secs(10))
        .unwrap();
    h.pass_woken_at(Some(seen)).await;
    h.settle().await;
    assert!(h.ready("ns", "brd"));
    let metrics = &h.workers.executor().metrics;
    let sum = |p: phases::Phase| {
        metrics
            .load_phase
            .with_label_values(&[p.as_str()])
            .get_sample_sum()
    };
    assert!(sum(phases::Phase::Watch) >= 10.0);
    assert!(sum(phases::Phase::Total) >= 10.0);
    // The phases add up to the whole.
    let parts: f64 = phases::Phase::ALL[..7].iter().map(|p| sum(*p)).sum();
    assert!((parts - sum(phases::Phase::Total)).abs() < 1e-6, "{parts}");
}

#[tokio::test]
async fn a_module_loads_reports_and_unloads_in_process() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    assert!(h.loaded("brd"));
    assert_eq!(h.sim.parameters("brd").unwrap(), ["rd_nr=2"]);
    assert!(h.ready("ns", "brd"));
    let status = h.reporter.last_status().unwrap();
    assert_eq!(status.modules[0].digest, "sha256:1");
    // One event, upstream's: on the Node, its text, `related` naming the Module.
    let loaded = h.reporter.events_with("ModuleLoaded");
    assert_eq!(
        loaded,
        [(
            "n1".to_string(),
            "Module ns/brd loaded into the kernel".to_string()
        )]
    );
    assert_eq!(
        h.reporter.events_related("ModuleLoaded"),
        [("n1".to_string(), Some("brd".to_string()))]
    );
    assert_eq!(h.state().boot_id, None, "set by recovery, not by loads");

    h.delete("brd");
    h.settle().await;
    assert!(!h.loaded("brd"));
    assert!(!h.ready("ns", "brd"));
    assert!(h.state().modules.is_empty());
    assert_eq!(
        h.reporter.events_with("ModuleUnloaded"),
        [(
            "n1".to_string(),
            "Module ns/brd unloaded from the kernel".to_string()
        )]
    );
    assert_eq!(
        h.reporter.events_related("ModuleUnloaded"),
        [("n1".to_string(), Some("brd".to_string()))]
    );
}

#[tokio::test]
async fn freed_memory_is_released_once_after_each_finished_worker_and_not_when_idle() {
    let mut h = Harness::new();
    let count = h.releases.clone();
    let releases = move || count.load(Ordering::SeqCst);
    h.pass().await;
    assert_eq!(
        releases(),
        1,
        "the first pass releases what startup allocated"
    );
    h.pass().await;
    assert_eq!(releases(), 1, "an idle pass does not");

    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    assert!(h.loaded("brd"));
    assert_eq!(releases(), 2, "one release after the load worker");
    h.pass().await;
    assert_eq!(releases(), 2);

    h.delete("brd");
    h.settle().await;
    assert!(!h.loaded("brd"));
    assert_eq!(releases(), 3, "one release after the unload worker");
}

#[tokio::test]
async fn a_slow_pull_delays_neither_other_loads_nor_unloads() {
    let mut h = Harness::new();
    h.image("reg/old:1", "sha256:o", "kernel/old.ko:\n");
    h.image("reg/fast:1", "sha256:f", "kernel/fast.ko:\n");
    h.image("reg/slow:1", "sha256:s", "kernel/slow.ko:\n");
    h.apply(module("ns", "old", "reg/old:1", "{moduleName: old}"));
    h.settle().await;
    assert!(h.loaded("old"));

    // The registry of `slow` never answers.
    let _gate = h.images.hold("reg/slow:1");
    h.apply(module("ns", "slow", "reg/slow:1", "{moduleName: slow}"));
    h.pass().await;
    h.apply(module("ns", "fast", "reg/fast:1", "{moduleName: fast}"));
    h.delete("old");
    h.until("fast loaded and old unloaded while slow pulls", |h| {
        h.loaded("fast") && !h.loaded("old") && h.ready("ns", "fast") && !h.ready("ns", "old")
    })
    .await;
    assert!(!h.loaded("slow"));
    // The finished workers deregister right after their kernel step.
    h.until("only the slow pull still running", |h| {
        h.workers.busy() == 1
    })
    .await;

    // Deleting the Module stops its pull; nothing is loaded for it.
    h.delete("slow");
    h.until("the slow pull cancelled", |h| h.workers.busy() == 0)
        .await;
    h.settle().await;
    assert!(!h.loaded("slow"));
    assert!(h.last_error("slow").is_none());
}

#[tokio::test]
async fn two_modules_sharing_a_kernel_module_keep_it_until_both_are_gone() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("a", "first", "reg/brd:1", BRD));
    h.settle().await;
    h.apply(module("b", "second", "reg/brd:1", BRD));
    h.settle().await;
    assert!(h.ready("a", "first") && h.ready("b", "second"));
    let shared = h.reporter.events_with("ModuleShared");
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert!(
        shared[0].1.contains("also loaded by Module a/first"),
        "{shared:?}"
    );

    h.delete("first");
    h.settle().await;
    assert!(h.loaded("brd"), "the second Module still needs brd");
    assert!(h.ready("b", "second"));
    assert_eq!(
        h.state().modules[&ModuleKey::new("b", "second")].inserted,
        ["brd"],
        "the remaining Module now owns the module"
    );

    h.delete("second");
    h.settle().await;
    assert!(!h.loaded("brd"));
    assert!(!h.ready("b", "second"));
}

#[tokio::test]
async fn a_module_that_left_the_kernel_behind_the_agent_is_loaded_again() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    // Someone ran rmmod.
    h.kernel.unload(&k::UnloadRequest::module("brd")).unwrap();
    h.settle().await;
    assert!(h.loaded("brd"));
    assert_eq!(h.sim.insert_count(), 2);
    assert!(h.ready("ns", "brd"));
}

#[tokio::test]
/// Upstream #1271: an unloader looping for ever on an in-use module, silently.
async fn upstream_1271_an_unload_of_a_module_in_use_backs_off_reports_once_and_keeps_the_record() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    h.sim.add_user("brd"); // a mounted filesystem
    h.delete("brd");
    for _ in 0..5 {
        h.settle().await;
    }
    assert!(h.loaded("brd"));
    assert_eq!(h.sim.remove_count(), 0);
    let (reason, message) = h.last_error("brd").expect("lastError in the NMC status");
    assert_eq!(reason, "UnloadFailed");
    assert!(message.contains("in use"), "{message}");
    assert_eq!(
        h.reporter.events_with("UnloadFailed").len(),
        1,
        "one event, not one per pass"
    );
    let failure = &h.workers.failures()[&ModuleKey::new("ns", "brd")];
    assert_eq!(failure.attempts, 1, "backed off: not retried on every pass");
    assert!(h.ready("ns", "brd"), "still loaded, so still ready");

    // Once free, the retry after the backoff unloads it.
    h.sim.remove_user("brd");
    let key = ModuleKey::new("ns", "brd");
    lock(&h.workers.failures).get_mut(&key).unwrap().retry_at = std::time::Instant::now();
    h.settle().await;
    assert!(!h.loaded("brd"));
    assert!(h.last_error("brd").is_none());
}

#[tokio::test]
async fn a_bad_image_edit_keeps_the_loaded_module_and_says_why() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    h.apply(module("ns", "brd", "reg/brd:typo", BRD));
    h.settle().await;
    assert!(h.loaded("brd"), "make-before-break: the old module stays");
    assert_eq!(h.sim.remove_count(), 0);
    assert!(h.ready("ns", "brd"));
    assert_eq!(
        h.state().modules[&ModuleKey::new("ns", "brd")].image,
        "reg/brd:1"
    );
    let (reason, message) = h.last_error("brd").unwrap();
    assert_eq!(reason, "ImagePullFailed");
    assert!(
        message.contains("the loaded version stays loaded"),
        "{message}"
    );

    // An image without the module is refused before anything is unloaded, too.
    h.image("reg/brd:empty", "sha256:e", "kernel/other.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:empty", BRD));
    lock(&h.workers.failures).clear();
    h.settle().await;
    assert!(h.loaded("brd"));
    assert_eq!(h.last_error("brd").unwrap().0, "ModprobeFailed");
}

#[tokio::test]
async fn each_modules_state_last_error_and_the_cache_size_are_in_the_metrics() {
    let mut h = Harness::new();
    let metrics = h.workers.executor().metrics.clone();
    let state = |s: &str| {
        format!(
            r#"kmm_agent_module_state{{kernel="{KVER}",name="brd",namespace="ns",state="{s}"}} 1"#
        )
    };
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    let text = metrics.render();
    assert!(text.contains(&state("loaded")), "{text}");
    assert!(text.contains("kmm_agent_image_cache_bytes 1024"), "{text}");
    assert!(!text.contains("kmm_agent_module_last_error{"), "{text}");

    h.apply(module("ns", "brd", "reg/brd:typo", BRD));
    h.settle().await;
    let text = metrics.render();
    assert!(text.contains(&state("failed")), "{text}");
    assert!(
        !text.contains(&state("loaded")),
        "one state per Module:\n{text}"
    );
    let error =
        r#"kmm_agent_module_last_error{name="brd",namespace="ns",reason="ImagePullFailed"} 1"#;
    assert!(text.contains(error), "{text}");

    h.delete("brd");
    h.settle().await;
    let text = metrics.render();
    assert!(!text.contains("kmm_agent_module_state{"), "{text}");
    assert!(!text.contains("kmm_agent_module_last_error{"), "{text}");
    assert!(text.contains("kmm_agent_image_cache_bytes 0"), "{text}");
}

#[tokio::test]
async fn a_new_version_that_fails_to_load_puts_the_previous_one_back() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.image("reg/brd:2", "sha256:2", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    h.sim.fail_next_load(Some("brd"), Fault::KeyRejected);
    h.apply(module("ns", "brd", "reg/brd:2", BRD));
    h.settle().await;
    assert!(h.loaded("brd"));
    let rec = &h.state().modules[&ModuleKey::new("ns", "brd")];
    assert_eq!(rec.image, "reg/brd:1");
    assert_eq!(
        rec.inserted,
        ["brd"],
        "the restored module is ours to unload"
    );
    assert_eq!(h.last_error("brd").unwrap().0, "ModprobeFailed");
}

#[tokio::test]
async fn an_invalid_spec_is_not_retried_until_the_module_changes() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module(
        "ns",
        "brd",
        "reg/brd:1",
        "{moduleName: brd, modulesLoadingOrder: [other, brd]}",
    ));
    for _ in 0..5 {
        h.settle().await;
    }
    assert_eq!(h.last_error("brd").unwrap().0, "InvalidModuleSpec");
    assert_eq!(lock(&h.images.pulls).len(), 1, "no retry loop");
    // A new generation is retried at once.
    let mut fixed = (*module("ns", "brd", "reg/brd:1", BRD)).clone();
    fixed.metadata.generation = Some(2);
    h.apply(Arc::new(fixed));
    h.settle().await;
    assert!(h.loaded("brd"));
    assert!(h.last_error("brd").is_none());
}

/// Upstream #1333: a Module re-created while its unload is in progress must end
/// up loaded, with its label, and not be unloaded after the re-create.
#[tokio::test]
async fn upstream_1333_a_module_recreated_during_its_unload_is_loaded_again() {
    let mut h = Harness::new();
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    h.sim.set_unload_delay(Duration::from_millis(300));
    h.delete("brd");
    h.pass().await;
    assert_eq!(h.workers.busy(), 1, "the unload is in progress");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    assert!(h.loaded("brd"));
    assert!(h.ready("ns", "brd"));
    assert_eq!((h.sim.insert_count(), h.sim.remove_count()), (2, 1));
    for _ in 0..3 {
        h.settle().await;
    }
    assert!(h.loaded("brd"), "nothing unloads it after the re-create");
}

#[tokio::test]
async fn a_foreign_build_of_the_same_name_is_reported_never_adopted_nor_unloaded() {
    let mut h = Harness::new();
    h.sim.preload_build("brd", &[], Some("INTREE0000"));
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    assert!(!h.ready("ns", "brd"));
    let (reason, message) = h.last_error("brd").unwrap();
    assert_eq!(reason, "ForeignModuleLoaded");
    assert!(message.contains("INTREE0000"), "{message}");
    h.delete("brd");
    h.settle().await;
    assert_eq!(
        h.sim.srcversion("brd").unwrap().as_deref(),
        Some("INTREE0000")
    );

    // Listed in inTreeModulesToRemove, it is replaced by the Module's build.
    h.apply(module_with(
        "ns",
        "brd",
        "reg/brd:1",
        BRD,
        "inTreeModulesToRemove: [brd]",
    ));
    lock(&h.workers.failures).clear();
    h.settle().await;
    assert!(h.ready("ns", "brd"), "{:?}", h.last_error("brd"));
    let ours = h.sim.srcversion("brd").unwrap();
    assert!(ours.is_some() && ours.as_deref() != Some("INTREE0000"));
}

/// Upstream #1083: after a reboot, udev loaded the in-tree module of the same
/// name (no srcversion to compare, as Debian's brd): the agent must neither
/// report it ready nor unload it when the Module goes.
#[tokio::test]
async fn upstream_1083_after_a_reboot_an_unprovable_module_of_the_same_name_is_not_adopted() {
    let sim = SimulatedKernel::new();
    let key = ModuleKey::new("ns", "brd");
    let mut before = NodeState {
        boot_id: Some("previous-boot".into()),
        ..NodeState::default()
    };
    before
        .modules
        .insert(key.clone(), record(Path::new("/x"), "brd", &["brd"]));
    sim.preload("brd", &[]); // the in-tree brd, loaded by udev
    let (state, _) = recover(&sim, before, KVER, BOOT).unwrap();
    assert!(state.not_ours.contains("brd"));
    let mut h = Harness::with_kernel(sim.clone(), Arc::new(sim.clone()), state);
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    // The image's brd has no srcversion either.
    let ko = k::module_dir(&h.dir.join("sha256-1"), "/opt", KVER)
        .unwrap()
        .join("kernel/brd.ko");
    std::fs::write(&ko, b"\x7fELF no modinfo").unwrap();
    h.sim.preload("brd", &[]);
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    assert!(!h.ready("ns", "brd"));
    assert_eq!(h.last_error("brd").unwrap().0, "ForeignModuleLoaded");
    h.delete("brd");
    h.settle().await;
    assert!(
        h.loaded("brd"),
        "never unloaded: this agent did not insert it"
    );
    assert_eq!(h.sim.remove_count(), 0);
}

fn record(module_dir: &Path, name: &str, inserted: &[&str]) -> LoadedModule {
    serde_json::from_value(serde_json::json!({
        "image": "reg/x:1", "digest": "sha256:1", "kernel": KVER, "moduleName": name,
        "inserted": inserted, "parameters": [], "moduleDir": module_dir, "loadedAt": "t",
    }))
    .unwrap()
}

#[test]
fn a_crash_during_an_unload_finishes_the_removals_on_restart() {
    let sim = SimulatedKernel::new();
    // `main` needs `dep`; the crash came after `main` was removed.
    sim.preload("dep", &[]);
    let key = ModuleKey::new("ns", "m");
    let mut state = NodeState {
        boot_id: Some(BOOT.into()),
        ..NodeState::default()
    };
    state.modules.insert(
        key.clone(),
        record(Path::new("/x"), "main", &["dep", "main"]),
    );
    state.begin_unload(
        &key,
        Unloading {
            modules: vec!["main".into()],
            deps: vec!["dep".into(), "main".into()],
        },
    );
    let (state, rec) = recover(&sim, state, KVER, BOOT).unwrap();
    assert!(
        !sim.is_loaded("dep").unwrap(),
        "the leftover dependency is removed"
    );
    assert!(state.modules.is_empty() && state.unloading.is_empty());
    assert_eq!(rec.finished_unloads, ["dep"]);
}

#[test]
fn an_interrupted_load_is_rolled_back_but_modules_that_were_there_stay() {
    let k = SimulatedKernel::new();
    // The crashed attempt inserted dep and main; pre was loaded before it.
    k.preload("pre", &[]);
    k.preload("dep", &[]);
    k.preload("main", &[]);
    let interrupted = BTreeMap::from([(
        ModuleKey::new("ns", "m"),
        crate::state::Loading {
            kernel: KVER.into(),
            load_order: vec!["pre".into(), "dep".into(), "main".into()],
            already_loaded: vec!["pre".into()],
        },
    )]);
    let removed = roll_back_interrupted(&k, KVER, &interrupted).unwrap();
    assert_eq!(removed, ["main", "dep"]);
    assert!(k.is_loaded("pre").unwrap());
    assert!(
        roll_back_interrupted(&k, "5.14.0", &interrupted)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn after_a_reboot_a_record_that_cannot_be_proved_ours_is_dropped() {
    let sim = SimulatedKernel::new();
    sim.preload("brd", &[]); // e.g. udev loaded the in-tree brd at boot
    let key = ModuleKey::new("ns", "brd");
    let mut state = NodeState {
        boot_id: Some("previous-boot".into()),
        ..NodeState::default()
    };
    state
        .modules
        .insert(key.clone(), record(Path::new("/x"), "brd", &["brd"]));
    let (after, rec) = recover(&sim, state.clone(), KVER, BOOT).unwrap();
    assert!(after.modules.is_empty(), "{rec:?}");
    assert_eq!(after.boot_id.as_deref(), Some(BOOT));
    assert!(sim.is_loaded("brd").unwrap(), "never unloaded: not ours");
    // The same boot (an agent restart) keeps it.
    state.boot_id = Some(BOOT.into());
    let (after, _) = recover(&sim, state, KVER, BOOT).unwrap();
    assert!(after.modules.contains_key(&key));
}

#[test]
fn recovery_refuses_to_guess_when_the_kernel_cannot_be_read() {
    let sim = SimulatedKernel::new();
    sim.preload("brd", &[]);
    let kernel = UnreadableKernel {
        inner: sim.clone(),
        unreadable: Mutex::new(vec!["brd".into()]),
    };
    let mut state = NodeState {
        boot_id: Some(BOOT.into()),
        ..NodeState::default()
    };
    state.modules.insert(
        ModuleKey::new("ns", "brd"),
        record(Path::new("/x"), "brd", &["brd"]),
    );
    assert!(recover(&kernel, state, KVER, BOOT).is_err());
}

#[tokio::test]
async fn a_kernel_read_error_neither_unloads_nor_forgets() {
    let sim = SimulatedKernel::new();
    let kernel = Arc::new(UnreadableKernel {
        inner: sim.clone(),
        unreadable: Mutex::new(Vec::new()),
    });
    let mut h = Harness::with_kernel(sim.clone(), kernel.clone(), NodeState::default());
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.apply(module("ns", "brd", "reg/brd:1", BRD));
    h.settle().await;
    assert!(sim.is_loaded("brd").unwrap());
    lock(&kernel.unreadable).push("brd".into());
    h.delete("brd");
    for _ in 0..3 {
        h.settle().await;
    }
    assert!(sim.is_loaded("brd").unwrap(), "no unload on a guess");
    assert!(h.state().modules.contains_key(&ModuleKey::new("ns", "brd")));
    lock(&kernel.unreadable).clear();
    h.settle().await;
    assert!(!sim.is_loaded("brd").unwrap());
}

#[test]
fn the_watch_caches_drop_what_the_agent_never_reads() {
    let mut node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "n1",
            "labels": {"role": "gpu"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "1"},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}],
        },
        "status": {
            "nodeInfo": {"kernelVersion": KVER, "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "operatingSystem": "linux",
                "osImage": "", "systemUUID": ""},
            "images": [{"names": ["reg/big:1"], "sizeBytes": 1}],
        },
    }))
    .unwrap();
    super::slim_node(&mut node);
    assert!(node.metadata.managed_fields.unwrap_or_default().is_empty());
    let annotations = node.metadata.annotations.unwrap();
    assert_eq!(annotations.keys().collect::<Vec<_>>(), ["keep"]);
    assert_eq!(node.metadata.labels.unwrap()["role"], "gpu");
    let status = node.status.unwrap();
    assert_eq!(status.images, None);
    assert_eq!(status.node_info.unwrap().kernel_version, KVER);

    let mut m = (*module("ns", "brd", "reg/brd:1", BRD)).clone();
    m.metadata.managed_fields = Some(vec![Default::default()]);
    m.metadata.annotations = Some(BTreeMap::from([(
        "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
        "{}".to_owned(),
    )]));
    let spec = serde_json::to_value(&m.spec).unwrap();
    super::slim_module(&mut m);
    assert!(m.metadata.managed_fields.unwrap_or_default().is_empty());
    assert!(m.metadata.annotations.unwrap_or_default().is_empty());
    assert_eq!(serde_json::to_value(&m.spec).unwrap(), spec);
}

#[path = "tests_modprobe_args.rs"]
mod modprobe_args;
#[path = "tests_plugin_stop.rs"]
mod plugin_stop_tests;
#[path = "tests_reboot_stage.rs"]
mod reboot_stage_tests;
