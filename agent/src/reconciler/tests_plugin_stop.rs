//! A replace of a Module with a device plugin or DRA driver stops the plugin
//! first (upstream's ordered upgrade): the `.ready` labels go, the unload waits
//! for the controller's `-ready` label to go (or a timeout), the labels come
//! back with the new version. The controller is played by editing the Node.

use super::*;

const GPU: &str = "{moduleName: gpu}";

fn with_timeout(timeout: Duration) -> Harness {
    let sim = SimulatedKernel::new();
    let settings = Settings {
        plugin_stop_timeout: timeout,
        reboot_sentinel: None,
        ..settings()
    };
    Harness::with_settings(sim.clone(), Arc::new(sim), NodeState::default(), settings)
}

/// Module `gpu` with `image`, a device plugin (or a DRA driver) if `plugin`.
fn gpu(image: &str, plugin: Option<&str>) -> Arc<Module> {
    with_plugin(&module("ns", "gpu", image, GPU), plugin)
}

/// Module `gpu` for an ordered upgrade: `version` `v`, image `reg/gpu:<v>`, a device plugin.
fn versioned(v: &str) -> Arc<Module> {
    let m = module_with(
        "ns",
        "gpu",
        &format!("reg/gpu:{v}"),
        GPU,
        &format!("version: '{v}'"),
    );
    with_plugin(&m, Some("dp"))
}

fn with_plugin(m: &Module, plugin: Option<&str>) -> Arc<Module> {
    let mut m = m.clone();
    match plugin {
        Some("dra") => {
            m.spec.dra = Some(
                serde_yaml::from_str(
                    "{driverName: gpu.example.com, container: {image: reg/dra:1}}",
                )
                .unwrap(),
            );
        }
        Some(_) => {
            m.spec.device_plugin =
                Some(serde_yaml::from_str("container: {image: reg/dp:1}").unwrap());
        }
        None => {}
    }
    Arc::new(m)
}

fn key() -> ModuleKey {
    ModuleKey::new("ns", "gpu")
}

impl Harness {
    /// Sets or removes a label the controller owns on the Node.
    fn controller_label(&mut self, label: &str, present: bool) {
        let labels = self.node.metadata.labels.get_or_insert_default();
        if present {
            labels.insert(label.to_string(), String::new());
        } else {
            labels.remove(label);
        }
    }

    /// The recorded digest (none between a swap's unload and its load).
    fn digest(&self) -> String {
        self.state()
            .modules
            .get(&key())
            .map_or_else(String::new, |r| r.digest.clone())
    }

    fn writes_since(&self, from: usize) -> Vec<crate::node_labels::LabelChanges> {
        lock(&self.reporter.label_writes)[from..].to_vec()
    }

    /// Loads `first` (image `reg/gpu:1`) and has its plugin running (`-ready` label set).
    async fn running_with_plugin(&mut self, first: Arc<Module>, ready_label: &str) {
        self.image("reg/gpu:1", "sha256:1", "kernel/gpu.ko:\n");
        self.image("reg/gpu:2", "sha256:2", "kernel/gpu.ko:\n");
        self.apply(first);
        self.settle().await;
        assert!(self.ready("ns", "gpu"), "{:?}", self.last_error("gpu"));
        self.controller_label(ready_label, true);
    }
}

fn removes_ready(w: &crate::node_labels::LabelChanges) -> bool {
    w.get(&kmm_common::ready_label("ns", "gpu")) == Some(&None)
}

fn sets_ready(w: &crate::node_labels::LabelChanges) -> bool {
    w.get(&kmm_common::ready_label("ns", "gpu")) == Some(&Some(String::new()))
}

#[tokio::test]
async fn an_ordered_upgrade_takes_the_labels_off_and_unloads_only_once_the_plugin_is_gone() {
    let mut h = with_timeout(Duration::from_secs(300));
    let dp_ready = kmm_common::device_plugin_ready_label("ns", "gpu");
    let version_label = kmm_common::version_module_label("ns", "gpu");
    let version_ready = kmm_common::version_ready_label("ns", "gpu");
    h.node
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(version_label.clone(), "1".into());
    h.running_with_plugin(versioned("1"), &dp_ready).await;
    assert_eq!(
        lock(&h.reporter.node_labels)
            .get(&version_ready)
            .map(String::as_str),
        Some("1")
    );
    // The Module moves first: nothing happens until the node's label moves.
    h.apply(versioned("2"));
    h.settle().await;
    let from = lock(&h.reporter.label_writes).len();

    h.node
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(version_label, "2".into());
    h.until("the ready labels removed", |h| !h.ready("ns", "gpu"))
        .await;
    assert!(!lock(&h.reporter.node_labels).contains_key(&version_ready));
    // The plugin still runs: the old version stays loaded, the worker waits.
    for _ in 0..20 {
        h.pass().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.digest(), "sha256:1");
    assert!(h.loaded("gpu"));
    assert!(
        !h.ready("ns", "gpu"),
        "no pass puts the label back meanwhile"
    );
    assert_eq!(h.workers.busy(), 1);
    assert!(h.reporter.events_with("ModuleUnloaded").is_empty());

    // The DaemonSet removed the Pod; the controller removes its label.
    h.controller_label(&dp_ready, false);
    h.until("the new version loaded and labelled", |h| {
        h.digest() == "sha256:2" && h.ready("ns", "gpu")
    })
    .await;
    h.settle().await;
    let writes = h.writes_since(from);
    assert!(removes_ready(&writes[0]), "{writes:?}");
    assert_eq!(writes[0].get(&version_ready), Some(&None), "{writes:?}");
    assert!(writes[1..].iter().any(sets_ready), "{writes:?}");
    assert_eq!(
        lock(&h.reporter.node_labels)
            .get(&version_ready)
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(h.reporter.events_with("ModuleUnloaded").len(), 1);
    assert!(h.reporter.events_with("PluginStopTimedOut").is_empty());
    assert!(h.workers.failures().is_empty());
}

#[tokio::test]
async fn a_plugin_that_does_not_stop_delays_the_replace_only_until_the_timeout() {
    let mut h = with_timeout(Duration::from_millis(300));
    let dra_ready = kmm_common::dra_ready_label("ns", "gpu");
    h.running_with_plugin(gpu("reg/gpu:1", Some("dra")), &dra_ready)
        .await;
    let from = lock(&h.reporter.label_writes).len();

    let started = std::time::Instant::now();
    h.apply(gpu("reg/gpu:2", Some("dra")));
    h.until("the new version loaded and labelled", |h| {
        h.digest() == "sha256:2" && h.ready("ns", "gpu")
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let writes = h.writes_since(from);
    assert!(removes_ready(&writes[0]), "{writes:?}");
    let timed_out = h.reporter.events_with("PluginStopTimedOut");
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    assert_eq!(timed_out[0].0, "gpu");
}

#[tokio::test]
async fn a_module_without_a_plugin_is_replaced_without_waiting() {
    let mut h = with_timeout(Duration::from_secs(300));
    h.image("reg/gpu:1", "sha256:1", "kernel/gpu.ko:\n");
    h.image("reg/gpu:2", "sha256:2", "kernel/gpu.ko:\n");
    h.apply(gpu("reg/gpu:1", None));
    h.settle().await;
    // Even a leftover plugin label is not waited for.
    h.controller_label(&kmm_common::device_plugin_ready_label("ns", "gpu"), true);

    // Settles in a few seconds: no 300 s wait.
    h.apply(gpu("reg/gpu:2", None));
    h.settle().await;
    assert_eq!(h.digest(), "sha256:2");
    assert!(h.ready("ns", "gpu"));
    assert!(h.reporter.events_with("PluginStopTimedOut").is_empty());
}

#[tokio::test]
async fn a_module_changed_back_during_the_wait_keeps_its_version_and_gets_its_label_back() {
    let mut h = with_timeout(Duration::from_secs(300));
    let dp_ready = kmm_common::device_plugin_ready_label("ns", "gpu");
    h.running_with_plugin(gpu("reg/gpu:1", Some("dp")), &dp_ready)
        .await;

    h.apply(gpu("reg/gpu:2", Some("dp")));
    h.until("the ready label removed", |h| !h.ready("ns", "gpu"))
        .await;
    // The admin undoes the edit: the wait ends, nothing is swapped.
    h.apply(gpu("reg/gpu:1", Some("dp")));
    h.settle().await;
    assert_eq!(h.digest(), "sha256:1");
    assert!(h.ready("ns", "gpu"));
    assert!(h.reporter.events_with("ModuleUnloaded").is_empty());
    assert!(h.workers.failures().is_empty());
}

#[tokio::test]
async fn an_agent_restarted_mid_wait_keeps_the_old_version_and_finishes_the_replace() {
    let mut h = with_timeout(Duration::from_secs(300));
    let dp_ready = kmm_common::device_plugin_ready_label("ns", "gpu");
    h.running_with_plugin(gpu("reg/gpu:1", Some("dp")), &dp_ready)
        .await;
    h.apply(gpu("reg/gpu:2", Some("dp")));
    h.until("the ready label removed", |h| !h.ready("ns", "gpu"))
        .await;

    // A new agent over the same kernel and state file; the Node keeps its labels.
    let state = crate::state::StateFile::in_dir(&h.dir.join("state"))
        .load()
        .unwrap();
    let mut r = Harness::with_settings(
        h.sim.clone(),
        h.kernel.clone(),
        state,
        Settings {
            plugin_stop_timeout: Duration::from_secs(300),
            reboot_sentinel: None,
            ..settings()
        },
    );
    r.node = h.node.clone();
    *lock(&r.reporter.node_labels) = lock(&h.reporter.node_labels).clone();
    r.image("reg/gpu:2", "sha256:2", "kernel/gpu.ko:\n");
    assert_eq!(r.digest(), "sha256:1");
    r.apply(gpu("reg/gpu:2", Some("dp")));
    for _ in 0..20 {
        r.pass().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.digest(), "sha256:1", "the loaded version stays");
    assert!(r.loaded("gpu"));
    r.controller_label(&dp_ready, false);
    r.until("the new version loaded and labelled", |r| {
        r.digest() == "sha256:2" && r.ready("ns", "gpu")
    })
    .await;
}
