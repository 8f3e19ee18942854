//! Fuzzes what the agent reads from an image before it inserts a module:
//! `modules.dep` parsing with the path check, and a module file's `.modinfo`.
//!
//! First input byte: mode (even: the rest is a `modules.dep`; odd: the rest
//! is a module file). For `modules.dep`, every entry is resolved as the kernel
//! implementations do (module directory joined with the entry) in a fixed tree
//! that holds a host file, a symlink to it and a directory symlink climbing out;
//! whatever the entry, the check may call it inside only if it resolves under
//! the module directory. Parsing and `.modinfo` reading never panic.
#![no_main]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

// The agent's sources, compiled as modules of this crate (see Cargo.toml).
#[path = "../../src/kernel/confine.rs"]
#[allow(dead_code, unreachable_pub)]
mod confine;
#[path = "../../src/kernel/moddep.rs"]
#[allow(dead_code, unreachable_pub)]
mod moddep;
#[path = "../../src/kernel/modinfo.rs"]
#[allow(dead_code, unreachable_pub)]
mod modinfo;

use confine::{Confined, confine_canonical};

/// `<top>/img/lib/modules/k` with modules, and `<top>/host/evil.ko` outside it.
struct Tree {
    _top: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    host: PathBuf,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let top = tempfile::tempdir().expect("tempdir");
        let dir = top.path().join("img/lib/modules/k");
        fs::create_dir_all(dir.join("kernel/x")).expect("mkdir");
        fs::create_dir_all(top.path().join("host")).expect("mkdir");
        let host = top.path().join("host/evil.ko");
        fs::write(&host, b"host").expect("write");
        fs::write(dir.join("kernel/x/c.ko"), b"c").expect("write");
        symlink(&host, dir.join("kernel/x/out.ko")).expect("symlink");
        symlink("c.ko", dir.join("kernel/x/alias.ko")).expect("symlink");
        symlink("../../../..", dir.join("kernel/up")).expect("symlink");
        let root = dir.canonicalize().expect("canonical");
        let host = host.canonicalize().expect("canonical");
        Tree {
            _top: top,
            dir,
            root,
            host,
        }
    })
}

fn check_modules_dep(text: &str) {
    let t = tree();
    let dep = moddep::ModulesDep::parse(text);
    for line in text.lines() {
        let Some((module, _)) = line.split_once(':') else {
            continue;
        };
        let Some(name) = moddep::module_name(module.trim()) else {
            continue;
        };
        let Some(entry) = dep.get(&name) else {
            continue;
        };
        let path = t.dir.join(&entry.path);
        if let Confined::Inside(real) = confine_canonical(&t.root, &path) {
            assert!(real.starts_with(&t.root), "{} judged inside", real.display());
            assert_ne!(real, t.host, "{} reaches the host file", path.display());
            assert!(!Path::new(&real).starts_with(t.host.parent().expect("parent")));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(body) {
            check_modules_dep(text);
        }
    } else if let Some(v) = modinfo::srcversion(body) {
        assert!(!v.contains('\0'));
    }
});
