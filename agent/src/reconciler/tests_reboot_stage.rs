//! A `ModuleRollout` with `strategy: Reboot` (modules that cannot be unloaded
//! while in use): the controller moves the version label and sets the node's
//! `upgrade-state` to `rebooting`; the agent stages the new version (pulled,
//! recorded, not loaded), keeps the running one and raises the reboot
//! sentinel; the boot path loads the staged version at the next boot.

use super::*;

const MOD: &str = "{moduleName: brd}";

fn versioned(v: &str) -> Arc<Module> {
    module_with(
        "ns",
        "brd",
        &format!("reg/brd:{v}"),
        MOD,
        &format!("version: '{v}'"),
    )
}

fn key() -> ModuleKey {
    ModuleKey::new("ns", "brd")
}

impl Harness {
    fn set_label(&mut self, label: String, value: &str) {
        self.node
            .metadata
            .labels
            .get_or_insert_default()
            .insert(label, value.to_string());
    }
}

#[tokio::test]
async fn a_reboot_rollout_stages_the_new_version_and_the_boot_path_loads_it() {
    let sentinel_dir = tempfile::tempdir().unwrap();
    let sentinel = sentinel_dir.path().join("reboot-required");
    let sim = SimulatedKernel::new();
    let settings = Settings {
        reboot_sentinel: Some(sentinel.clone()),
        ..settings()
    };
    let mut h = Harness::with_settings(
        sim.clone(),
        Arc::new(sim.clone()),
        NodeState::default(),
        settings,
    );
    h.image("reg/brd:1", "sha256:1", "kernel/brd.ko:\n");
    h.image("reg/brd:2", "sha256:2", "kernel/brd.ko:\n");
    h.set_label(kmm_common::version_module_label("ns", "brd"), "1");
    h.apply(versioned("1"));
    h.settle().await;
    assert!(
        h.loaded("brd") && h.ready("ns", "brd"),
        "{:?}",
        h.last_error("brd")
    );

    // The rollout moves the label with the node in `rebooting`.
    h.apply(versioned("2"));
    h.set_label(kmm_common::version_module_label("ns", "brd"), "2");
    h.set_label(kmm_common::upgrade_state_label("ns", "brd"), "rebooting");
    h.settle().await;
    let state = h.state();
    assert_eq!(state.modules[&key()].digest, "sha256:1", "v1 still runs");
    assert_eq!(state.staged[&key()].digest, "sha256:2", "v2 staged");
    assert_eq!(state.staged[&key()].version.as_deref(), Some("2"));
    assert!(h.loaded("brd") && h.ready("ns", "brd"));
    assert_eq!(sim.remove_count(), 0, "nothing unloaded");
    assert_eq!(
        lock(&h.reporter.node_labels)
            .get(&kmm_common::version_ready_label("ns", "brd"))
            .map(String::as_str),
        Some("1"),
        "the node reports what runs"
    );
    assert!(h.reporter.events_with("ModuleUnloaded").is_empty());
    assert!(
        std::fs::read_to_string(&sentinel)
            .unwrap()
            .contains("ns/brd")
    );
    // Staged once: more passes change nothing.
    let staged_at = state.staged[&key()].loaded_at.clone();
    h.settle().await;
    assert_eq!(h.state().staged[&key()].loaded_at, staged_at);

    // The reboot: an empty kernel, the boot path loads the staged version.
    let booted = SimulatedKernel::new();
    let file = crate::state::StateFile::in_dir(&h.dir.join("state"));
    let boot = crate::boot::BootSettings {
        firmware_dir: h.dir.join("fw"),
        set_firmware_class_path: false,
        firmware_class_path: h.dir.join("fw-class-path"),
    };
    let report = crate::boot::run(&file, KVER, "boot-2", &booted, &boot).unwrap();
    assert!(report.success(), "{}", report.summary());
    assert!(booted.is_loaded("brd").unwrap());
    let after = file.load().unwrap();
    assert_eq!(after.modules[&key()].digest, "sha256:2");
    assert_eq!(after.modules[&key()].inserted, ["brd"]);
    assert!(after.staged.is_empty());

    // The agent of the new boot finds v2 loaded, reports it, loads nothing.
    let mut h2 = Harness::with_kernel(booted.clone(), Arc::new(booted.clone()), after);
    h2.set_label(kmm_common::version_module_label("ns", "brd"), "2");
    h2.set_label(kmm_common::upgrade_state_label("ns", "brd"), "rebooting");
    h2.apply(versioned("2"));
    h2.settle().await;
    assert_eq!(booted.insert_count(), 1, "only the boot path's load");
    assert_eq!(
        lock(&h2.reporter.node_labels)
            .get(&kmm_common::version_ready_label("ns", "brd"))
            .map(String::as_str),
        Some("2")
    );
}

#[tokio::test]
async fn without_the_boot_path_the_agent_loads_the_staged_version_after_the_reboot() {
    let mut h = Harness::new();
    h.image("reg/brd:2", "sha256:2", "kernel/brd.ko:\n");
    h.set_label(kmm_common::version_module_label("ns", "brd"), "2");
    h.set_label(kmm_common::upgrade_state_label("ns", "brd"), "rebooting");
    h.apply(versioned("2"));
    // Nothing loaded (the node rebooted, no boot service): a plain load.
    h.settle().await;
    assert!(h.loaded("brd") && h.ready("ns", "brd"));
    assert_eq!(h.state().modules[&key()].digest, "sha256:2");
    assert!(h.state().staged.is_empty());
}
