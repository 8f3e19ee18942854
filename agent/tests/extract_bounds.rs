//! Extraction bounds that keep one hostile image from holding a pull (and
//! a blocking thread) for minutes: the entry cap, checked by a scan that
//! writes nothing, and the pull's deadline.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod extract_support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use extract_support::{Tar, gzip};
use kmm_agent::extract::{
    Compression, DEFAULT_MAX_ENTRIES, ExtractError, Layer, Limits, scan_image, unpack_image,
};

/// A plain tar layer of `n` empty files spread over 100 directories.
fn many_entries(n: usize) -> Vec<u8> {
    let mut tar = Tar::new();
    for i in 0..n {
        tar = tar.file(&format!("opt/d{}/f{i}", i % 100), b"");
    }
    tar.finish()
}

fn layer(bytes: Vec<u8>, compression: Compression) -> Layer<'static> {
    Layer {
        name: "sha256:many".to_owned(),
        compression,
        reader: Box::new(std::io::Cursor::new(bytes)),
    }
}

fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_default_entry_cap_is_50k() {
    assert_eq!(DEFAULT_MAX_ENTRIES, 50_000);
    assert_eq!(Limits::default().max_entries, DEFAULT_MAX_ENTRIES);
}

#[test]
fn a_100k_entry_layer_is_refused_by_the_scan_in_seconds_and_nothing_is_written() {
    let bytes = many_entries(100_000);
    let started = Instant::now();
    let err = scan_image([layer(bytes, Compression::None)], &Limits::default()).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err.root_cause(),
            ExtractError::TooManyEntries { max: 50_000 }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "layer 0 (sha256:many): image has more than 50000 entries (limit)"
    );
    assert_eq!(err.metric_label(), "limit");
    // Writing 50k files takes ~30 s in a debug build; counting them, ~1 s.
    assert!(took < Duration::from_secs(10), "scan took {took:?}");
}

#[test]
fn the_scan_counts_what_unpack_extracts_and_catches_corruption() {
    let tar = Tar::new()
        .file("opt/lib/modules/6.1/a.ko", b"a")
        .file("opt/lib/modules/6.1/modules.dep", b"a.ko:\n")
        .finish();
    let limits = Limits::default();
    let scanned = scan_image([layer(gzip(&tar), Compression::Gzip)], &limits).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let unpacked = unpack_image(
        [layer(gzip(&tar), Compression::Gzip)],
        &tmp.path().join("img"),
        &limits,
    )
    .unwrap();
    assert_eq!(scanned.entries, unpacked.entries);
    assert_eq!(scanned.stream_bytes, unpacked.stream_bytes);
    assert_eq!(scanned.files, 0, "the scan writes nothing");
    let mut truncated = gzip(&tar);
    truncated.truncate(truncated.len() - 4);
    let err = scan_image([layer(truncated, Compression::Gzip)], &limits).unwrap_err();
    assert!(
        matches!(err.root_cause(), ExtractError::GzipTruncated),
        "{err}"
    );
}

#[test]
fn extraction_stops_at_its_deadline_and_leaves_no_tree() {
    let bytes = many_entries(20_000);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("img");
    let limits = Limits {
        deadline: Some(Instant::now() + Duration::from_millis(300)),
        ..Limits::default()
    };
    let started = Instant::now();
    let err = unpack_image([layer(bytes, Compression::None)], &dest, &limits).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err.root_cause(), ExtractError::DeadlineExceeded),
        "{err}"
    );
    assert_eq!(err.metric_label(), "deadline");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!dest.exists());
    assert_eq!(names(tmp.path()), Vec::<String>::new(), "staging dir left");
}
