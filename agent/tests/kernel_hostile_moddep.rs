//! Images whose `modules.dep` names files outside the image: unpacked by the
//! real extractor, then loaded through the real `modprobe` algorithm (with the
//! simulated kernel, which resolves entries as libkmod does: relative to the
//! module directory, an absolute entry as written). Nothing outside the image
//! may be inserted. Also keeps the `moddep` fuzz target's seed corpus
//! (`agent/fuzz/corpus/moddep/`): `KMM_WRITE_FUZZ_CORPUS=1 cargo test -p
//! kmm-agent --test kernel_hostile_moddep` rewrites it.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

mod extract_support;

use std::fs;
use std::path::{Path, PathBuf};

use extract_support::Tar;
use kmm_agent::extract::{Compression, Layer, Limits, unpack_image};
use kmm_agent::kernel::{Error, Kernel, LoadRequest, SimulatedKernel, fake_elf};

const KVER: &str = "6.1.0-56-amd64";

/// A test area: `<top>/a/b/img` is the image, `<top>/a/evil.ko` and
/// `<top>/host/evil.ko` are host files a hostile `modules.dep` may name.
struct Area {
    top: tempfile::TempDir,
}

impl Area {
    fn new() -> Self {
        let top = tempfile::tempdir().unwrap();
        fs::create_dir_all(top.path().join("a/b")).unwrap();
        fs::create_dir_all(top.path().join("host")).unwrap();
        fs::write(top.path().join("a/evil.ko"), b"\x7fELF host").unwrap();
        fs::write(top.path().join("host/evil.ko"), b"\x7fELF host").unwrap();
        Self { top }
    }

    fn image(&self) -> PathBuf {
        self.top.path().join("a/b/img")
    }

    fn module_dir(&self) -> PathBuf {
        self.image().join("opt/lib/modules").join(KVER)
    }

    fn host_file(&self) -> String {
        self.top.path().join("host/evil.ko").display().to_string()
    }

    /// Unpacks one layer holding a module tree with `modules.dep` and `extra` entries.
    fn unpack(&self, modules_dep: &str, extra: impl FnOnce(Tar, &str) -> Tar) {
        let base = format!("opt/lib/modules/{KVER}");
        let tar = Tar::new()
            .dir("opt/")
            .dir("opt/lib/")
            .dir("opt/lib/modules/")
            .dir(&format!("{base}/"))
            .dir(&format!("{base}/kernel/"))
            .file(&format!("{base}/kernel/dep.ko"), b"\x7fELF dep")
            .file(&format!("{base}/modules.dep"), modules_dep.as_bytes());
        let layer = extra(tar, &base).finish();
        let layers = [Layer {
            name: "hostile".into(),
            compression: Compression::None,
            reader: Box::new(&layer[..]),
        }];
        unpack_image(layers, &self.image(), &Limits::default()).unwrap();
    }
}

/// Loads `evil` and expects the path check to refuse it with nothing inserted.
fn assert_refused(req: &LoadRequest) {
    let k = SimulatedKernel::new();
    let err = k.load(req).unwrap_err();
    assert!(matches!(err, Error::PathEscape { .. }), "{err}");
    assert_eq!(err.metric_label(), "path_escape");
    assert!(
        err.to_string()
            .starts_with("refusing to insert evil: its modules.dep entry"),
        "{err}"
    );
    assert_eq!(k.insert_count(), 0, "nothing inserted, not even dep");
}

#[test]
fn absolute_modules_dep_entry_naming_a_host_module_is_refused() {
    let area = Area::new();
    area.unpack(
        &format!("{}: kernel/dep.ko\nkernel/dep.ko:\n", area.host_file()),
        |t, _| t,
    );
    assert_refused(&LoadRequest::new(area.module_dir(), "evil"));
    // also when the whole image is allowed
    assert_refused(&LoadRequest::new(area.module_dir(), "evil").within_image(area.image()));
}

#[test]
fn dotdot_modules_dep_entry_climbing_out_of_the_image_is_refused() {
    let area = Area::new();
    // <top>/a/b/img/opt/lib/modules/<kver>: six levels up is <top>/a
    area.unpack(
        "../../../../../../evil.ko: kernel/dep.ko\nkernel/dep.ko:\n",
        |t, _| t,
    );
    assert_refused(&LoadRequest::new(area.module_dir(), "evil"));
    assert_refused(&LoadRequest::new(area.module_dir(), "evil").within_image(area.image()));
}

#[test]
fn module_symlink_is_judged_where_it_resolves() {
    let area = Area::new();
    // The extractor re-roots an absolute link in the image (/evil.ko is the
    // image's own file): outside the module directory, inside the image.
    area.unpack(
        "kernel/evil.ko: kernel/dep.ko\nkernel/dep.ko:\n",
        |t, base| {
            t.file("evil.ko", b"\x7fELF image root")
                .symlink(&format!("{base}/kernel/evil.ko"), "/evil.ko")
        },
    );
    let link = area.module_dir().join("kernel/evil.ko");
    assert_eq!(
        link.canonicalize().unwrap(),
        area.image().join("evil.ko").canonicalize().unwrap()
    );
    assert_refused(&LoadRequest::new(area.module_dir(), "evil"));
    let k = SimulatedKernel::new();
    let req = LoadRequest::new(area.module_dir(), "evil").within_image(area.image());
    assert_eq!(k.load(&req).unwrap().inserted, ["dep", "evil"]);

    // A link to the host (not made by the extractor, e.g. a tree changed after
    // extraction) is refused in both modes.
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(area.host_file(), &link).unwrap();
    assert_refused(&LoadRequest::new(area.module_dir(), "evil"));
    assert_refused(&LoadRequest::new(area.module_dir(), "evil").within_image(area.image()));
}

/// Seeds of the `moddep` fuzz target: a mode byte (even: `modules.dep`, odd:
/// a module file), then the body.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dep = |text: &str| [&[0u8][..], text.as_bytes()].concat();
    vec![
        (
            "ok",
            dep("kernel/x/c.ko:\nkernel/x/alias.ko: kernel/x/c.ko\n"),
        ),
        ("absolute", dep("/etc/hostname: kernel/x/c.ko\n")),
        ("dotdot", dep("../../../../host/evil.ko:\n")),
        ("symlink-out", dep("kernel/x/out.ko:\n")),
        ("dirlink-up", dep("kernel/up/host/evil.ko:\n")),
        (
            "garbage",
            dep("::\n:x.ko\n.ko:\nkernel/x/c.ko.xz: a.ko.zst\n"),
        ),
        (
            "modinfo-elf",
            [&[1u8][..], &fake_elf_with_srcversion()].concat(),
        ),
    ]
}

/// A tiny ELF64 with a `.modinfo` holding a srcversion (as in a real module).
fn fake_elf_with_srcversion() -> Vec<u8> {
    fake_elf(&[(
        ".modinfo",
        b"license=GPL\0srcversion=C49398E125FFAC361463008\0",
    )])
}

#[test]
fn moddep_fuzz_seed_with_a_modinfo_section_parses() {
    assert_eq!(
        kmm_agent::kernel::modinfo::srcversion(&fake_elf_with_srcversion()).as_deref(),
        Some("C49398E125FFAC361463008")
    );
}

#[test]
fn committed_moddep_corpus_matches_the_seeds() {
    extract_support::check_corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/moddep"),
        seeds(),
    );
}
