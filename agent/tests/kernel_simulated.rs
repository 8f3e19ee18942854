//! `SimulatedKernel` behaviour on a fake module tree laid out as depmod leaves it:
//! concurrency, fault injection and load orders, the way the agent will drive it
//! in scale tests. (That real loading works is shown by tests/tests/vm_kernel.rs.)
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kmm_agent::kernel::{
    DepPolicy, Error, Fault, Kernel, LoadRequest, SimulatedKernel, UnloadRequest,
};

/// `core` <- `mid` <- `m0..m{n}`; plus `x`, `y` standalone.
fn tree(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("kernel/drivers/fake");
    std::fs::create_dir_all(&k).unwrap();
    let mut dep = String::from(
        "kernel/drivers/fake/core.ko:\n\
         kernel/drivers/fake/mid.ko: kernel/drivers/fake/core.ko\n\
         kernel/drivers/fake/x.ko:\nkernel/drivers/fake/y.ko:\n",
    );
    for m in ["core", "mid", "x", "y"] {
        std::fs::write(k.join(format!("{m}.ko")), b"\x7fELF").unwrap();
    }
    for i in 0..n {
        std::fs::write(k.join(format!("m{i}.ko")), b"\x7fELF").unwrap();
        dep.push_str(&format!(
            "kernel/drivers/fake/m{i}.ko: kernel/drivers/fake/mid.ko kernel/drivers/fake/core.ko\n"
        ));
    }
    std::fs::write(dir.path().join("modules.dep"), dep).unwrap();
    dir
}

fn load(k: &SimulatedKernel, dir: &Path, name: &str) -> Result<Vec<String>, Error> {
    k.load(&LoadRequest::new(dir, name)).map(|o| o.inserted)
}

#[test]
fn concurrent_loads_share_dependencies_and_insert_each_module_once() {
    let dir = Arc::new(tree(40));
    let k = SimulatedKernel::new();
    k.set_load_delay(Duration::from_millis(1));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (k, dir) = (k.clone(), dir.clone());
            std::thread::spawn(move || {
                // every thread loads every module, in a different order
                for i in 0..40 {
                    load(&k, dir.path(), &format!("m{}", (i * 7 + t * 13) % 40)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(k.insert_count(), 42, "40 modules + mid + core, each once");
    let loaded = k.loaded_modules().unwrap();
    let mid = loaded.iter().find(|m| m.name == "mid").unwrap();
    assert_eq!(mid.holders.len(), 40);
    assert_eq!(mid.refcount, 40);

    // unloading all of them releases the shared dependencies with the last one
    for i in 0..40 {
        let out = k.unload(&UnloadRequest::module(format!("m{i}"))).unwrap();
        if i < 39 {
            assert_eq!(out.removed, [format!("m{i}")]);
        } else {
            assert_eq!(out.removed, ["m39", "mid", "core"]);
        }
    }
    assert!(k.loaded_modules().unwrap().is_empty());
}

#[test]
fn faults_hit_only_the_named_module_and_only_once() {
    let dir = tree(3);
    let k = SimulatedKernel::new();
    k.fail_next_load(Some("m2"), Fault::InvalidParameters);
    assert_eq!(load(&k, dir.path(), "m0").unwrap(), ["core", "mid", "m0"]);
    assert_eq!(load(&k, dir.path(), "m1").unwrap(), ["m1"]);
    let err = load(&k, dir.path(), "m2").unwrap_err();
    assert_eq!(err.metric_label(), "invalid_parameters");
    assert!(!k.is_loaded("m2").unwrap());
    assert_eq!(load(&k, dir.path(), "m2").unwrap(), ["m2"]);

    // a failure in a dependency leaves nothing of this load behind
    let fresh = SimulatedKernel::new();
    fresh.fail_next_load(Some("mid"), Fault::KeyRejected);
    let err = load(&fresh, dir.path(), "m0").unwrap_err();
    assert!(
        err.to_string()
            .contains("could not insert mid: Key was rejected by service"),
        "{err}"
    );
    assert!(fresh.loaded_modules().unwrap().is_empty());
}

#[test]
fn loading_order_is_honoured_both_ways() {
    let dir = tree(1);
    let k = SimulatedKernel::new();
    let order = ["m0".to_owned(), "x".to_owned(), "y".to_owned()];
    let req = LoadRequest::new(dir.path(), "m0")
        .with_parameters(["debug=1".to_owned()])
        .with_loading_order(&order)
        .unwrap();
    let out = k.load(&req).unwrap();
    assert_eq!(out.inserted, ["y", "x", "core", "mid", "m0"]);
    assert_eq!(k.parameters("m0").unwrap(), ["debug=1"]);
    assert!(k.parameters("x").unwrap().is_empty());

    let unload = UnloadRequest::reverse_of(&req);
    assert_eq!(unload.modules, ["m0", "x", "y"]);
    let out = k.unload(&unload).unwrap();
    assert_eq!(out.removed, ["m0", "mid", "core", "x", "y"]);
}

#[test]
fn dependencies_loaded_before_us_survive_when_asked() {
    let dir = tree(1);
    let k = SimulatedKernel::new();
    load(&k, dir.path(), "mid").unwrap(); // someone else's
    let inserted = load(&k, dir.path(), "m0").unwrap();
    assert_eq!(inserted, ["m0"]);
    let out = k
        .unload(&UnloadRequest::module("m0").only_deps(inserted))
        .unwrap();
    assert_eq!(out.removed, ["m0"]);
    assert!(k.is_loaded("mid").unwrap() && k.is_loaded("core").unwrap());

    let none = UnloadRequest {
        modules: vec!["mid".into()],
        deps: DepPolicy::None,
        ..UnloadRequest::default()
    };
    assert_eq!(k.unload(&none).unwrap().removed, ["mid"]);
    assert!(k.is_loaded("core").unwrap());
}

#[test]
fn busy_removal_and_builtins() {
    let dir = tree(1);
    let k = SimulatedKernel::new();
    k.add_builtin("core");
    assert_eq!(load(&k, dir.path(), "m0").unwrap(), ["mid", "m0"]);
    k.fail_next_unload(Some("m0"), Fault::Busy);
    let err = k.unload(&UnloadRequest::module("m0")).unwrap_err();
    assert_eq!(err.metric_label(), "in_use");
    assert!(k.is_loaded("m0").unwrap());
    // builtins are never removed: an error when asked for, skipped as dependencies
    let err = k.remove_in_tree("core").unwrap_err();
    assert_eq!(err.metric_label(), "builtin");
    let out = k.unload(&UnloadRequest::module("m0")).unwrap();
    assert_eq!(out.removed, ["m0", "mid"]);
    assert!(k.is_loaded("core").unwrap());
}
