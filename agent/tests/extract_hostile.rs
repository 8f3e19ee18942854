//! Hostile layers: each must be refused (or defused) without anything being
//! written outside the extraction root.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod extract_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use extract_support::{Tar, gzip};
use kmm_agent::extract::{Compression, ExtractError, Limits, extract_layer};
use tar::EntryType;

/// A sandbox: `<tmp>/a/b/root` is the extraction root, so an escape of one or
/// two levels lands in a directory this test can inspect.
struct Sandbox {
    _tmp: tempfile::TempDir,
    top: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().to_path_buf();
        let root = top.join("a/b/root");
        fs::create_dir_all(&root).unwrap();
        Self {
            _tmp: tmp,
            top,
            root,
        }
    }

    fn extract(&self, layer: &[u8]) -> Result<kmm_agent::extract::Stats, ExtractError> {
        extract_layer(layer, Compression::Auto, &self.root, &Limits::default())
    }

    /// Only `a/b/root` exists above the root.
    fn assert_nothing_outside(&self) {
        for (dir, only) in [
            (&self.top, "a"),
            (&self.top.join("a"), "b"),
            (&self.top.join("a/b"), "root"),
        ] {
            let names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(
                names,
                vec![only.to_owned()],
                "unexpected entries in {}",
                dir.display()
            );
        }
    }
}

fn read_link(p: &Path) -> String {
    fs::read_link(p).unwrap().to_string_lossy().into_owned()
}

#[test]
fn path_traversal_is_refused() {
    let sb = Sandbox::new();
    let err = sb
        .extract(
            &Tar::new()
                .file("../../etc/passwd", b"root::0:0::/:/bin/sh\n")
                .finish(),
        )
        .unwrap_err();
    assert!(matches!(err, ExtractError::PathEscape { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "layer entry '../../etc/passwd' escapes the image root"
    );
    sb.assert_nothing_outside();
}

#[test]
fn traversal_in_the_middle_of_a_name_is_refused() {
    let sb = Sandbox::new();
    let err = sb
        .extract(&Tar::new().file("opt/../../x", b"x").finish())
        .unwrap_err();
    assert!(matches!(err, ExtractError::PathEscape { .. }), "{err}");
    sb.assert_nothing_outside();
}

#[test]
fn absolute_names_land_under_the_root() {
    let sb = Sandbox::new();
    sb.extract(&Tar::new().file("/kmm-test-abs/passwd", b"x").finish())
        .unwrap();
    assert_eq!(fs::read(sb.root.join("kmm-test-abs/passwd")).unwrap(), b"x");
    assert!(!Path::new("/kmm-test-abs").exists());
    sb.assert_nothing_outside();
}

#[test]
fn symlink_pointing_above_the_root_is_refused() {
    let sb = Sandbox::new();
    let err = sb
        .extract(
            &Tar::new()
                .dir("opt/")
                .symlink("opt/evil", "../../../../etc")
                .finish(),
        )
        .unwrap_err();
    assert!(matches!(err, ExtractError::SymlinkEscape { .. }), "{err}");
    assert!(
        err.to_string().contains("points outside the image root"),
        "{err}"
    );
    assert!(!sb.root.join("opt/evil").exists());
    sb.assert_nothing_outside();
}

#[test]
fn absolute_symlink_is_rebased_to_the_image_root() {
    let sb = Sandbox::new();
    let stats = sb
        .extract(&Tar::new().symlink("opt/lib/etc", "/etc").finish())
        .unwrap();
    // It names <root>/etc, not the host's /etc.
    assert_eq!(read_link(&sb.root.join("opt/lib/etc")), "../../etc");
    assert_eq!(stats.symlinks_rewritten, 1);
}

#[test]
fn symlink_as_parent_of_a_later_entry_is_refused() {
    let sb = Sandbox::new();
    // The link itself is legal (rebased inside), writing through it is not.
    let err = sb
        .extract(
            &Tar::new()
                .symlink("etc", "/")
                .file("etc/passwd", b"x")
                .finish(),
        )
        .unwrap_err();
    assert!(matches!(err, ExtractError::ThroughSymlink { .. }), "{err}");
    assert!(
        err.to_string().contains("through the symlink 'etc'"),
        "{err}"
    );
    sb.assert_nothing_outside();
}

#[test]
fn symlink_parent_planted_in_a_lower_layer_is_not_followed() {
    let sb = Sandbox::new();
    sb.extract(&Tar::new().dir("real/").symlink("lnk", "real").finish())
        .unwrap();
    let err = sb
        .extract(&Tar::new().file("lnk/x", b"x").finish())
        .unwrap_err();
    assert!(matches!(err, ExtractError::ThroughSymlink { .. }), "{err}");
    assert!(!sb.root.join("real/x").exists());
}

#[test]
fn symlink_chain_cannot_climb_out() {
    let sb = Sandbox::new();
    // deep/x -> .. is the root; y -> deep/x/.. would be the root's parent if
    // resolved by the kernel. It is stored normalised, so it stays inside.
    sb.extract(
        &Tar::new()
            .dir("deep/")
            .symlink("deep/x", "..")
            .symlink("y", "deep/x/..")
            .finish(),
    )
    .unwrap();
    assert_eq!(read_link(&sb.root.join("deep/x")), "..");
    assert_eq!(read_link(&sb.root.join("y")), "deep");
    let root = sb.root.canonicalize().unwrap();
    for link in ["deep/x", "y"] {
        let resolved = sb.root.join(link).canonicalize().unwrap();
        assert!(
            resolved.starts_with(&root),
            "{link} -> {}",
            resolved.display()
        );
    }
}

#[test]
fn file_replacing_a_symlink_does_not_write_through_it() {
    let sb = Sandbox::new();
    fs::write(sb.top.join("a/b/victim"), b"original").unwrap();
    // A relative link that would reach the victim is refused at creation, so
    // plant one by hand as if an earlier step had left it, then overwrite it.
    std::os::unix::fs::symlink("../victim", sb.root.join("f")).unwrap();
    sb.extract(&Tar::new().file("f", b"new").finish()).unwrap();
    assert_eq!(fs::read(sb.top.join("a/b/victim")).unwrap(), b"original");
    assert_eq!(fs::read(sb.root.join("f")).unwrap(), b"new");
    assert!(
        !fs::symlink_metadata(sb.root.join("f"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn hard_link_outside_the_root_is_refused() {
    let sb = Sandbox::new();
    let err = sb
        .extract(
            &Tar::new()
                .hardlink("shadow", "../../../etc/shadow")
                .finish(),
        )
        .unwrap_err();
    assert!(matches!(err, ExtractError::HardLinkEscape { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "hard link 'shadow' -> '../../../etc/shadow' escapes the image root"
    );
    sb.assert_nothing_outside();
}

#[test]
fn hard_link_to_an_absolute_host_path_is_not_the_host_file() {
    let sb = Sandbox::new();
    // /etc/passwd exists on the host but not in the image: refused.
    let err = sb
        .extract(&Tar::new().hardlink("pw", "/etc/passwd").finish())
        .unwrap_err();
    assert!(matches!(err, ExtractError::HardLinkTarget { .. }), "{err}");
    assert!(!sb.root.join("pw").exists());
}

#[test]
fn hard_link_through_a_symlink_or_to_a_symlink_is_refused() {
    let sb = Sandbox::new();
    let err = sb
        .extract(
            &Tar::new()
                .symlink("etc", "/")
                .hardlink("pw", "etc/passwd")
                .finish(),
        )
        .unwrap_err();
    assert!(matches!(err, ExtractError::HardLinkTarget { .. }), "{err}");
    let sb = Sandbox::new();
    let err = sb
        .extract(&Tar::new().symlink("l", "x").hardlink("h", "l").finish())
        .unwrap_err();
    assert!(matches!(err, ExtractError::HardLinkTarget { .. }), "{err}");
}

#[test]
fn hard_link_to_an_extracted_file_works() {
    let sb = Sandbox::new();
    let stats = sb
        .extract(
            &Tar::new()
                .file("opt/a.ko", b"ko")
                .hardlink("opt/b.ko", "opt/a.ko")
                .finish(),
        )
        .unwrap();
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(fs::read(sb.root.join("opt/b.ko")).unwrap(), b"ko");
}

#[test]
fn device_nodes_and_fifos_are_skipped_with_a_reason() {
    let sb = Sandbox::new();
    let stats = sb
        .extract(
            &Tar::new()
                .special("dev/sda", EntryType::Block)
                .special("dev/mem", EntryType::Char)
                .special("run/pipe", EntryType::Fifo)
                .file("ok", b"1")
                .finish(),
        )
        .unwrap();
    assert_eq!(stats.skipped_count, 3);
    assert!(
        stats.skipped[0].reason.contains("device node"),
        "{:?}",
        stats.skipped
    );
    assert!(
        stats.skipped[2].reason.contains("fifo"),
        "{:?}",
        stats.skipped
    );
    assert!(!sb.root.join("dev/sda").exists());
    assert!(!sb.root.join("dev/mem").exists());
    assert!(!sb.root.join("run/pipe").exists());
    assert!(sb.root.join("ok").exists());
}

#[test]
fn setuid_setgid_and_sticky_bits_are_stripped() {
    let sb = Sandbox::new();
    sb.extract(
        &Tar::new()
            .file_mode("bin/su", b"x", 0o4755)
            .file_mode("bin/sg", b"x", 0o2711)
            .dir_mode("tmp/", 0o1777)
            .finish(),
    )
    .unwrap();
    let mode = |p: &str| fs::metadata(sb.root.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/su"), 0o755);
    assert_eq!(mode("bin/sg"), 0o711);
    assert_eq!(mode("tmp"), 0o777);
}

#[test]
fn too_many_entries_is_refused() {
    let sb = Sandbox::new();
    let mut tar = Tar::new();
    for i in 0..50 {
        tar = tar.file(&format!("f{i}"), b"");
    }
    let limits = Limits {
        max_entries: 20,
        ..Limits::default()
    };
    let err = extract_layer(&tar.finish()[..], Compression::None, &sb.root, &limits).unwrap_err();
    assert!(
        matches!(err, ExtractError::TooManyEntries { max: 20 }),
        "{err}"
    );
}

#[test]
fn gzip_bomb_stops_at_the_total_size_limit() {
    let sb = Sandbox::new();
    let zeros = vec![0u8; 8 << 20];
    let layer = gzip(&Tar::new().file("bomb", &zeros).finish());
    assert!(
        layer.len() < 64 << 10,
        "the bomb compresses well: {}",
        layer.len()
    );
    let limits = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = extract_layer(&layer[..], Compression::Gzip, &sb.root, &limits).unwrap_err();
    assert!(matches!(err, ExtractError::TooLarge { .. }), "{err}");
    // Stopped early: at most the budget was written.
    let written = fs::metadata(sb.root.join("bomb"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 1 << 20, "{written}");
}

#[test]
fn single_file_over_the_limit_is_refused_before_reading_it() {
    let sb = Sandbox::new();
    let layer = Tar::new().huge_header("big.ko", 5 << 30).finish();
    let err =
        extract_layer(&layer[..], Compression::None, &sb.root, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, ExtractError::FileTooLarge { size, .. } if size == 5 << 30),
        "{err}"
    );
    assert!(!sb.root.join("big.ko").exists());
}

#[test]
fn overlong_names_are_refused() {
    let sb = Sandbox::new();
    let limits = Limits {
        max_path_len: 16,
        ..Limits::default()
    };
    let layer = Tar::new().file("opt/lib/modules/6.1/x.ko", b"x").finish();
    let err = extract_layer(&layer[..], Compression::None, &sb.root, &limits).unwrap_err();
    assert!(matches!(err, ExtractError::InvalidName { .. }), "{err}");
}

#[test]
fn truncated_gzip_is_reported_as_truncated() {
    let sb = Sandbox::new();
    let layer = gzip(&extract_support::kmod_layer("6.1.0"));
    for cut in [layer.len() - 4, layer.len() / 2, 12] {
        let err = sb.extract(&layer[..cut]).unwrap_err();
        assert!(
            matches!(err, ExtractError::GzipTruncated),
            "cut at {cut}: {err}"
        );
        assert_eq!(err.to_string(), "gzip stream truncated");
    }
}

#[test]
fn corrupt_gzip_is_reported_as_corrupt() {
    let sb = Sandbox::new();
    let mut layer = gzip(&extract_support::kmod_layer("6.1.0"));
    let mid = layer.len() / 2;
    for b in &mut layer[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let err = sb.extract(&layer).unwrap_err();
    assert!(matches!(err, ExtractError::GzipCorrupt { .. }), "{err}");
    // A damaged CRC trailer alone is caught too (the stream is read to its end).
    let mut layer = gzip(&extract_support::kmod_layer("6.1.0"));
    let n = layer.len();
    layer[n - 6] ^= 0xff;
    let err = Sandbox::new().extract(&layer).unwrap_err();
    assert!(matches!(err, ExtractError::GzipCorrupt { .. }), "{err}");
}

#[test]
fn declared_gzip_that_is_not_gzip_is_corrupt() {
    let sb = Sandbox::new();
    let layer = extract_support::kmod_layer("6.1.0");
    let err =
        extract_layer(&layer[..], Compression::Gzip, &sb.root, &Limits::default()).unwrap_err();
    assert!(matches!(err, ExtractError::GzipCorrupt { .. }), "{err}");
}

#[test]
fn truncated_plain_tar_is_reported() {
    let sb = Sandbox::new();
    let layer = Tar::new().file("x.ko", &[1u8; 4000]).finish();
    let err = extract_layer(
        &layer[..1500],
        Compression::None,
        &sb.root,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ExtractError::TarTruncated), "{err}");
}

#[test]
fn zstd_layers_are_refused_clearly() {
    let sb = Sandbox::new();
    let err = sb.extract(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "zstd-compressed layers are not supported (use gzip or plain tar)"
    );
}

#[test]
fn a_kmod_layer_extracts_completely() {
    let sb = Sandbox::new();
    let stats = sb
        .extract(&gzip(&extract_support::kmod_layer("6.1.0-56-amd64")))
        .unwrap();
    let base = sb.root.join("opt/lib/modules/6.1.0-56-amd64");
    assert_eq!(
        fs::read(base.join("kernel/drivers/x.ko")).unwrap(),
        b"\x7fELF fake module"
    );
    assert_eq!(
        fs::read(base.join("modules.dep")).unwrap(),
        b"kernel/drivers/x.ko:\n"
    );
    assert_eq!(
        read_link(&base.join("build")),
        "../../../../usr/src/linux-headers"
    );
    assert_eq!((stats.files, stats.symlinks), (2, 1));
    sb.assert_nothing_outside();
}
