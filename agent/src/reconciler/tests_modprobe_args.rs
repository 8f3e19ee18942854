//! `modprobe.rawArgs` and `args` through the real workers, executor, journal and boot path,
//! on the simulated kernel.

use super::*;
use crate::boot::{self, BootSettings};
use crate::state::{FirstTime, StateFile};

/// `main` needs `lib`; `other` and `brd` stand alone.
const DEP: &str =
    "kernel/main.ko: kernel/lib.ko\nkernel/lib.ko:\nkernel/other.ko:\nkernel/brd.ko:\n";

fn raw(load: &str, unload: &str) -> String {
    format!("{{rawArgs: {{load: {load}, unload: {unload}}}}}")
}

#[tokio::test]
async fn raw_args_load_several_modules_with_parameters_and_unload_what_they_loaded() {
    let mut h = Harness::new();
    h.image("reg/raw:1", "sha256:1", DEP);
    h.sim.preload("keep", &[]);
    // One module with parameters; -d in upstream's worker form (/tmp/opt is the image's /opt).
    h.apply(module(
        "ns",
        "params",
        "reg/raw:1",
        &raw(
            "[-v, --dirname=/tmp/opt, brd, rd_nr=2, rd_size=4096]",
            "[-rv, brd]",
        ),
    ));
    // Several modules with -a, in the order written, dependencies first; the unload names
    // only one of them, and still everything the load inserted goes.
    h.apply(module(
        "ns",
        "all",
        "reg/raw:1",
        &raw("[-va, other, main]", "[-r, main]"),
    ));
    h.settle().await;
    assert!(h.ready("ns", "params"), "{:?}", h.last_error("params"));
    assert!(h.ready("ns", "all"), "{:?}", h.last_error("all"));
    assert_eq!(
        h.sim.parameters("brd").unwrap(),
        ["rd_nr=2", "rd_size=4096"]
    );
    for m in ["other", "lib", "main"] {
        assert!(h.loaded(m), "{m}");
        assert!(h.sim.parameters(m).unwrap().is_empty(), "{m}");
    }
    let state = h.state();
    let all = &state.modules[&ModuleKey::new("ns", "all")];
    assert_eq!(
        (
            all.module_name.as_str(),
            all.modules_loading_order.as_slice()
        ),
        ("main", &["main".to_string(), "other".to_string()][..])
    );
    assert_eq!(all.inserted, ["other", "lib", "main"]);
    let params = &state.modules[&ModuleKey::new("ns", "params")];
    assert_eq!(params.parameters, ["rd_nr=2", "rd_size=4096"]);

    // Nothing reloads on later passes.
    h.settle().await;
    assert_eq!(h.sim.insert_count(), 4);

    h.delete("all");
    h.delete("params");
    h.settle().await;
    for m in ["other", "lib", "main", "brd"] {
        assert!(!h.loaded(m), "{m} unloaded");
    }
    assert!(h.loaded("keep"), "a module the agent did not load stays");
    assert!(h.state().modules.is_empty());
    // One each, on the Node.
    assert_eq!(h.reporter.events_with("ModuleUnloaded").len(), 2);
}

#[tokio::test]
async fn the_boot_path_loads_a_raw_args_record_as_the_agent_did() {
    let mut h = Harness::new();
    h.image("reg/raw:1", "sha256:1", DEP);
    h.apply(module(
        "ns",
        "all",
        "reg/raw:1",
        &raw(
            "[--first-time, -a, other, main]",
            "[-r, --first-time, main, other]",
        ),
    ));
    h.apply(module(
        "ns",
        "params",
        "reg/raw:1",
        &raw("[brd, rd_nr=7]", "[-r, brd]"),
    ));
    h.settle().await;
    let recorded = h.state();
    assert_eq!(
        recorded.modules[&ModuleKey::new("ns", "all")].first_time,
        FirstTime {
            load: true,
            unload: true
        }
    );
    // The node reboots: an empty kernel, the same state file.
    let file = StateFile::in_dir(&h.dir.join("boot-state"));
    file.save(&recorded).unwrap();
    let after = SimulatedKernel::new();
    let settings = BootSettings {
        firmware_dir: h.dir.join("fw"),
        set_firmware_class_path: false,
        firmware_class_path: h.dir.join("class_path"),
    };
    let report = boot::run(&file, KVER, "boot-2", &after, &settings).unwrap();
    assert!(report.success(), "{}", report.summary());
    for m in ["other", "lib", "main", "brd"] {
        assert!(after.is_loaded(m).unwrap(), "{m}");
    }
    assert_eq!(after.parameters("brd").unwrap(), ["rd_nr=7"]);
    let back = file.load().unwrap();
    assert_eq!(
        back.modules[&ModuleKey::new("ns", "all")].inserted,
        ["other", "lib", "main"]
    );
}

#[tokio::test]
async fn first_time_refuses_a_module_already_in_the_kernel_and_a_refused_flag_is_invalid() {
    let mut h = Harness::new();
    h.image("reg/raw:1", "sha256:1", DEP);
    h.apply(module(
        "ns",
        "first",
        "reg/raw:1",
        &raw("[brd]", "[-r, brd]"),
    ));
    h.settle().await;
    assert!(h.ready("ns", "first"));
    // The same build is in the kernel already (another Module loaded it).
    h.apply(module(
        "ns",
        "strict",
        "reg/raw:1",
        &raw("[--first-time, brd]", "[-r, brd]"),
    ));
    h.apply(module(
        "ns",
        "forced",
        "reg/raw:1",
        &raw("[-v, --force, other]", "[-r, other]"),
    ));
    h.settle().await;
    let (reason, message) = h.last_error("strict").unwrap();
    assert_eq!(reason, "ModprobeFailed");
    assert!(
        message.contains("brd: Module already in kernel (--first-time)"),
        "{message}"
    );
    assert!(!h.ready("ns", "strict"));
    let (reason, message) = h.last_error("forced").unwrap();
    assert_eq!(reason, "InvalidModuleSpec");
    assert!(
        message.contains("modprobe.rawArgs.load[1]: --force is not supported"),
        "{message}"
    );
    assert!(!h.loaded("other"), "nothing of a refused Module is loaded");
    // Once the other Module took brd out, the retry inserts it: the first time.
    h.delete("first");
    h.settle().await;
    lock(&h.workers.failures).clear();
    h.settle().await;
    assert!(h.ready("ns", "strict"), "{:?}", h.last_error("strict"));
    assert_eq!(
        h.state().modules[&ModuleKey::new("ns", "strict")].inserted,
        ["brd"]
    );
}

#[tokio::test]
async fn first_time_on_unload_fails_while_a_module_to_remove_is_gone() {
    let mut h = Harness::new();
    h.image("reg/raw:1", "sha256:1", DEP);
    h.apply(module(
        "ns",
        "all",
        "reg/raw:1",
        &raw("[-a, other, brd]", "[-r, --first-time, brd, other]"),
    ));
    h.settle().await;
    assert!(h.ready("ns", "all"));
    // Someone removes `other` (not the Module's last module, which the agent rechecks).
    h.kernel.unload(&k::UnloadRequest::module("other")).unwrap();
    h.delete("all");
    h.settle().await;
    let (reason, message) = h.last_error("all").unwrap();
    assert_eq!(reason, "UnloadFailed");
    assert!(
        message.contains("other: Module is not in kernel (--first-time)"),
        "{message}"
    );
    assert!(h.loaded("brd"), "nothing removed by the failed unload");
}
