//! Multi-layer unpacking: whiteouts, opaque directories, and the
//! all-or-nothing replacement of the destination.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod extract_support;

use std::fs;
use std::path::Path;

use extract_support::{Tar, gzip};
use kmm_agent::extract::{Compression, ExtractError, Layer, Limits, unpack_image};

fn layer(name: &str, bytes: Vec<u8>) -> Layer<'static> {
    Layer {
        name: name.to_owned(),
        compression: Compression::Auto,
        reader: Box::new(std::io::Cursor::new(bytes)),
    }
}

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

fn siblings(dest: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn whiteouts_delete_files_and_directories_of_lower_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    let lower = Tar::new()
        .file("a/file1", b"1")
        .file("a/file2", b"2")
        .file("b/x", b"x")
        .file("c", b"c")
        .finish();
    let upper = Tar::new()
        .file("a/.wh.file1", b"")
        .file(".wh.b", b"")
        .file(".wh.nothing", b"")
        .finish();
    let stats = unpack_image(
        [layer("l0", gzip(&lower)), layer("l1", upper)],
        &dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(listing(&dest), ["a", "a/file2", "c"]);
    assert_eq!(stats.whiteouts, 3);
}

#[test]
fn whiteout_does_not_hide_a_file_of_its_own_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    let lower = Tar::new().file("d/f", b"old").finish();
    let upper = Tar::new().file("d/f", b"new").file("d/.wh.f", b"").finish();
    unpack_image(
        [layer("l0", lower), layer("l1", upper)],
        &dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(fs::read(dest.join("d/f")).unwrap(), b"new");
}

#[test]
fn opaque_whiteout_hides_lower_content_but_keeps_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    let lower = Tar::new()
        .file("d/old1", b"1")
        .file("d/sub/old2", b"2")
        .file("keep/me", b"k")
        .finish();
    // The new entry comes before the marker: order within a layer must not matter.
    let upper = Tar::new()
        .file("d/sub/new2", b"n2")
        .file("d/.wh..wh..opq", b"")
        .file("d/new1", b"n1")
        .finish();
    unpack_image(
        [layer("l0", lower), layer("l1", gzip(&upper))],
        &dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        listing(&dest),
        ["d", "d/new1", "d/sub", "d/sub/new2", "keep", "keep/me"]
    );
}

#[test]
fn whiteout_under_a_symlink_does_not_delete_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    let lower = Tar::new()
        .file("important", b"i")
        .symlink("l", ".")
        .finish();
    let upper = Tar::new()
        .file("l/.wh.important", b"")
        .file("l/.wh..wh..opq", b"")
        .finish();
    unpack_image(
        [layer("l0", lower), layer("l1", upper)],
        &dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(fs::read(dest.join("important")).unwrap(), b"i");
}

#[test]
fn later_layer_replaces_file_with_directory_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    let l0 = Tar::new()
        .file("x", b"file")
        .dir("y/")
        .file("y/inner", b"i")
        .finish();
    let l1 = Tar::new()
        .dir("x/")
        .file("x/in", b"1")
        .file("y", b"now a file")
        .finish();
    unpack_image(
        [layer("l0", l0), layer("l1", l1)],
        &dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(listing(&dest), ["x", "x/in", "y"]);
    assert_eq!(fs::read(dest.join("y")).unwrap(), b"now a file");
}

#[test]
fn a_bad_layer_leaves_the_previous_tree_and_no_partial_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    unpack_image(
        [layer("good", Tar::new().file("v1", b"1").finish())],
        &dest,
        &Limits::default(),
    )
    .unwrap();
    let good = gzip(&Tar::new().file("v2", b"2").finish());
    let mut truncated = gzip(&extract_support::kmod_layer("6.1"));
    truncated.truncate(truncated.len() / 2);
    let err = unpack_image(
        [layer("sha256:good", good), layer("sha256:bad", truncated)],
        &dest,
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "layer 1 (sha256:bad): gzip stream truncated"
    );
    assert!(matches!(err.root_cause(), ExtractError::GzipTruncated));
    assert_eq!(listing(&dest), ["v1"], "the previous good copy stays");
    assert_eq!(siblings(&dest), ["img"], "no temp dir left behind");
}

#[test]
fn a_bad_first_unpack_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    let err = unpack_image(
        [layer(
            "l0",
            Tar::new().file("ok", b"1").file("../escape", b"x").finish(),
        )],
        &dest,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("escapes the image root"), "{err}");
    assert!(!dest.exists());
    assert!(siblings(&dest).is_empty());
}

#[test]
fn a_successful_unpack_replaces_the_previous_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    unpack_image(
        [layer("a", Tar::new().file("v1", b"1").finish())],
        &dest,
        &Limits::default(),
    )
    .unwrap();
    unpack_image(
        [layer("b", Tar::new().file("v2", b"2").finish())],
        &dest,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(listing(&dest), ["v2"]);
    assert_eq!(siblings(&dest), ["img"]);
}

#[test]
fn limits_count_over_all_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    let l = || {
        Tar::new()
            .file("a", b"")
            .file("b", b"")
            .file("c", b"")
            .finish()
    };
    let limits = Limits {
        max_entries: 5,
        ..Limits::default()
    };
    let err = unpack_image([layer("l0", l()), layer("l1", l())], &dest, &limits).unwrap_err();
    assert!(
        matches!(err.root_cause(), ExtractError::TooManyEntries { max: 5 }),
        "{err}"
    );
    assert!(!dest.exists());
}
