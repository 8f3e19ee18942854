//! The image cache on disk, without a registry: what `ImageCache::open`
//! cleans after a crash and what it must keep.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::fs;
use std::path::Path;

use kmm_agent::image::{ImageCache, sha256_digest};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn open_removes_partial_staging_trees_and_temp_blobs_left_by_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("images");
    drop(ImageCache::open(&dir, 1 << 30).unwrap());

    // What a finished pull leaves: a blob named by its digest, an unpacked tree, refs.json.
    let blob = b"layer bytes";
    let hex = sha256_digest(blob).trim_start_matches("sha256:").to_owned();
    fs::write(dir.join("blobs/sha256").join(&hex), blob).unwrap();
    let tree = dir.join("unpacked/sha256").join(&hex);
    fs::create_dir_all(tree.join("opt/lib/modules/6.1.0")).unwrap();
    fs::write(tree.join("opt/lib/modules/6.1.0/modules.dep"), "").unwrap();
    fs::write(dir.join("refs.json"), r#"{"version":1,"refs":{}}"#).unwrap();

    // What a SIGKILL in the middle of pulls leaves.
    fs::write(dir.join("blobs/sha256/.tmp-Ab12Cd"), vec![0u8; 4096]).unwrap();
    let staging = dir
        .join("unpacked/sha256")
        .join(format!(".{hex}.partial-XyZ123"));
    fs::create_dir_all(staging.join("opt/lib/modules/6.1.0/kernel")).unwrap();
    fs::write(staging.join("opt/lib/modules/6.1.0/kernel/half.ko"), b"ELF").unwrap();
    fs::write(dir.join(".refs.json.tmp-Q9w8e7"), b"{\"vers").unwrap();

    let cache = ImageCache::open(&dir, 1 << 30).unwrap();

    assert_eq!(names(&dir.join("blobs/sha256")), vec![hex.clone()]);
    assert_eq!(names(&dir.join("unpacked/sha256")), vec![hex.clone()]);
    assert_eq!(names(&dir), vec!["blobs", "refs.json", "unpacked"]);
    assert!(tree.join("opt/lib/modules/6.1.0/modules.dep").is_file());
    assert_eq!(
        cache.unpacked_path(&format!("sha256:{hex}")).unwrap(),
        tree,
        "the complete tree is still where pulls look for it"
    );
}

#[test]
fn open_keeps_everything_that_is_not_a_temp_entry_of_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("images");
    drop(ImageCache::open(&dir, 1 << 30).unwrap());
    // Dot-names the cache never writes are not its leftovers: left alone.
    fs::write(dir.join("blobs/sha256/.keep"), b"").unwrap();
    fs::create_dir_all(dir.join("unpacked/sha256/.snapshot")).unwrap();
    fs::write(dir.join(".operator-notes"), b"").unwrap();
    drop(ImageCache::open(&dir, 1 << 30).unwrap());
    assert_eq!(names(&dir.join("blobs/sha256")), vec![".keep"]);
    assert_eq!(names(&dir.join("unpacked/sha256")), vec![".snapshot"]);
    assert!(dir.join(".operator-notes").is_file());
}
