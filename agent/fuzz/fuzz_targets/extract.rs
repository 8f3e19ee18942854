//! Fuzzes layer extraction: arbitrary bytes as a gzip layer, a plain tar
//! layer, or two layers unpacked in order. Whatever happens (success or a
//! clean error), nothing may appear outside the extraction root and no
//! symlink in the result may resolve outside it.
//!
//! First input byte: mode (0 gzip, 1 plain tar, 2 two auto-detected layers
//! split at the position given by the second byte, as a fraction of the rest).
//! The rest is the layer.
#![no_main]

use std::fs;
use std::path::{Component, Path, PathBuf};

use libfuzzer_sys::fuzz_target;

// The extractor's sources, compiled as a module of this crate (see Cargo.toml).
#[path = "../../src/extract/mod.rs"]
#[allow(dead_code, unreachable_pub)]
mod extract;

use extract::{Compression, Layer, Limits, extract_layer, unpack_image};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let top = tmp.path();
    // Nested so that escapes of one, two or three levels land where we look.
    let parent = top.join("a/b");
    let root = parent.join("root");
    fs::create_dir_all(&root).expect("mkdir");
    // Small limits keep each run fast and the disk bounded.
    let limits = Limits {
        max_total_bytes: 8 << 20,
        max_entries: 2_000,
        max_file_bytes: 4 << 20,
        max_path_len: 4096,
        deadline: None,
    };
    let dest = parent.join("img");
    match mode % 3 {
        0 => {
            let _ = extract_layer(body, Compression::Gzip, &root, &limits);
        }
        1 => {
            let _ = extract_layer(body, Compression::None, &root, &limits);
        }
        _ => {
            let (split, rest) = body.split_first().map_or((0, body), |(b, rest)| {
                (*b as usize * rest.len() / 256, rest)
            });
            let (l0, l1) = rest.split_at(split.min(rest.len()));
            let layers = [l0, l1].into_iter().enumerate().map(|(i, bytes)| Layer {
                name: format!("l{i}"),
                compression: Compression::Auto,
                reader: Box::new(bytes),
            });
            let _ = unpack_image(layers, &dest, &limits);
        }
    }
    assert_only(top, &["a"]);
    assert_only(&top.join("a"), &["b"]);
    let mut allowed = vec!["root"];
    if dest.exists() {
        allowed.push("img");
    }
    assert_only(&parent, &allowed);
    check_tree(&root, &root);
    if dest.exists() {
        check_tree(&dest, &dest);
    }
});

/// `dir` holds exactly the names in `allowed` (a subset is fine for `img`).
fn assert_only(dir: &Path, allowed: &[&str]) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            allowed.contains(&name.as_ref()),
            "'{name}' appeared outside the extraction root in {}",
            dir.display()
        );
    }
}

/// Every symlink under `root` is relative and resolves inside it, both
/// lexically and as the kernel resolves it.
fn check_tree(root: &Path, dir: &Path) {
    let canon_root = root.canonicalize().expect("canonical root");
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        let kind = entry.file_type().expect("file type");
        if kind.is_symlink() {
            let target = fs::read_link(&path).expect("readlink");
            assert!(
                target.is_relative(),
                "absolute symlink {} -> {}",
                path.display(),
                target.display()
            );
            let rel_dir = path
                .parent()
                .and_then(|p| p.strip_prefix(root).ok())
                .expect("inside");
            assert!(
                lexically_inside(rel_dir, &target),
                "symlink {} -> {} climbs above the root",
                path.display(),
                target.display()
            );
            if let Ok(resolved) = path.canonicalize() {
                assert!(
                    resolved.starts_with(&canon_root),
                    "symlink {} resolves to {} outside the root",
                    path.display(),
                    resolved.display()
                );
            }
        } else if kind.is_dir() {
            check_tree(root, &path);
        } else {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &entry.metadata().expect("meta").permissions(),
            );
            assert_eq!(mode & 0o7000, 0, "special bits kept on {}", path.display());
            assert!(kind.is_file(), "non-regular file {}", path.display());
        }
    }
}

fn lexically_inside(dir: &Path, target: &Path) -> bool {
    let mut depth: PathBuf = dir.to_path_buf();
    for c in target.components() {
        match c {
            Component::ParentDir => {
                if !depth.pop() {
                    return false;
                }
            }
            Component::Normal(n) => depth.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}
