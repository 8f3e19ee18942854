//! The fuzz seed corpus (`agent/fuzz/corpus/extract/`): the hostile layers of
//! `extract_hostile.rs` in the fuzz target's input format (a mode byte, then
//! the layer). This test fails when a committed seed is missing or stale;
//! `KMM_WRITE_FUZZ_CORPUS=1 cargo test -p kmm-agent --test extract_corpus`
//! rewrites them. It also checks each seed is refused or defused as expected.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod extract_support;

use std::fs;
use std::path::PathBuf;

use extract_support::{Tar, gzip};
use kmm_agent::extract::{Compression, Layer, Limits, extract_layer, unpack_image};
use tar::EntryType;

const GZIP: u8 = 0;
const PLAIN: u8 = 1;
const TWO_LAYERS: u8 = 2;

/// Expected outcome of a seed.
enum Want {
    Ok,
    Err(&'static str),
}

fn seeds() -> Vec<(&'static str, u8, Vec<u8>, Want)> {
    let kmod = extract_support::kmod_layer("6.1.0-56-amd64");
    let mut truncated = gzip(&kmod);
    truncated.truncate(truncated.len() / 2);
    let mut corrupt = gzip(&kmod);
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0xff;
    corrupt[mid + 1] ^= 0xff;
    // Three 3 MiB files: each under the 4 MiB file limit, together over 8 MiB.
    let zeros = vec![0u8; 3 << 20];
    let bomb = Tar::new()
        .file("z0", &zeros)
        .file("z1", &zeros)
        .file("z2", &zeros)
        .finish();
    let mut many = Tar::new();
    for i in 0..64 {
        many = many.file(&format!("d/f{i}"), b"x");
    }
    // Two layers: a split byte, then both layers; 128 splits in the middle,
    // so the shorter layer is padded with zeros (read as trailing padding).
    let two = |mut l0: Vec<u8>, mut l1: Vec<u8>| {
        let len = l0.len().max(l1.len());
        l0.resize(len, 0);
        l1.resize(len, 0);
        let mut body = vec![128u8];
        body.extend_from_slice(&l0);
        body.extend_from_slice(&l1);
        body
    };
    vec![
        ("kmod-ok.gz", GZIP, gzip(&kmod), Want::Ok),
        ("kmod-ok.tar", PLAIN, kmod.clone(), Want::Ok),
        (
            "traversal.tar",
            PLAIN,
            Tar::new().file("../../etc/passwd", b"x").finish(),
            Want::Err("escapes the image root"),
        ),
        (
            "absolute.tar",
            PLAIN,
            Tar::new().file("/etc/kmm-fuzz-abs", b"x").finish(),
            Want::Ok,
        ),
        (
            "symlink-escape.tar",
            PLAIN,
            Tar::new().symlink("a/evil", "../../../etc").finish(),
            Want::Err("points outside the image root"),
        ),
        (
            "symlink-parent.tar",
            PLAIN,
            Tar::new()
                .symlink("etc", "/")
                .file("etc/passwd", b"x")
                .finish(),
            Want::Err("through the symlink"),
        ),
        (
            "symlink-chain.tar",
            PLAIN,
            Tar::new()
                .dir("deep/")
                .symlink("deep/x", "..")
                .symlink("y", "deep/x/..")
                .file("y/z", b"z")
                .finish(),
            Want::Err("through the symlink"),
        ),
        (
            "hardlink-escape.tar",
            PLAIN,
            Tar::new().hardlink("shadow", "../../etc/shadow").finish(),
            Want::Err("escapes the image root"),
        ),
        (
            "hardlink-host.tar",
            PLAIN,
            Tar::new().hardlink("pw", "/etc/passwd").finish(),
            Want::Err("hard link 'pw'"),
        ),
        (
            "device.tar",
            PLAIN,
            Tar::new()
                .special("dev/mem", EntryType::Char)
                .special("p", EntryType::Fifo)
                .finish(),
            Want::Ok,
        ),
        (
            "setuid.tar",
            PLAIN,
            Tar::new()
                .file_mode("su", b"x", 0o4755)
                .dir_mode("t/", 0o1777)
                .finish(),
            Want::Ok,
        ),
        (
            "huge-header.tar",
            PLAIN,
            Tar::new().huge_header("big", 5 << 30).finish(),
            Want::Err("limit for one file"),
        ),
        ("many-entries.gz", GZIP, gzip(&many.finish()), Want::Ok),
        ("bomb.gz", GZIP, gzip(&bomb), Want::Err("uncompressed")),
        (
            "truncated.gz",
            GZIP,
            truncated,
            Want::Err("gzip stream truncated"),
        ),
        ("corrupt.gz", GZIP, corrupt, Want::Err("gzip")),
        (
            "whiteouts.layers",
            TWO_LAYERS,
            two(
                Tar::new()
                    .file("a/f1", b"1")
                    .file("a/f2", b"2")
                    .file("d/old", b"o")
                    .symlink("l", ".")
                    .finish(),
                Tar::new()
                    .file("a/.wh.f1", b"")
                    .file("d/.wh..wh..opq", b"")
                    .file("d/new", b"n")
                    .file("l/.wh.a", b"")
                    .finish(),
            ),
            Want::Ok,
        ),
        (
            "symlink-swap.layers",
            TWO_LAYERS,
            two(
                Tar::new().dir("x/").file("x/f", b"1").finish(),
                Tar::new().symlink("x", "/").file("x/passwd", b"x").finish(),
            ),
            Want::Err("through the symlink"),
        ),
    ]
}

fn corpus_dir() -> PathBuf {
    // KMM_AGENT_DIR: for running this file from outside the agent crate.
    let agent =
        std::env::var("KMM_AGENT_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    PathBuf::from(agent).join("fuzz/corpus/extract")
}

fn run(mode: u8, body: &[u8]) -> Result<(), String> {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("a/b/root");
    fs::create_dir_all(&root).unwrap();
    let limits = Limits {
        max_total_bytes: 8 << 20,
        max_entries: 2_000,
        max_file_bytes: 4 << 20,
        max_path_len: 4096,
        deadline: None,
    };
    let result = match mode {
        GZIP => extract_layer(body, Compression::Gzip, &root, &limits).map(drop),
        PLAIN => extract_layer(body, Compression::None, &root, &limits).map(drop),
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
            unpack_image(layers, &tmp.path().join("a/b/img"), &limits).map(drop)
        }
    };
    result.map_err(|e| e.to_string())
}

#[test]
fn seeds_behave_as_expected() {
    for (name, mode, body, want) in seeds() {
        match (run(mode, &body), want) {
            (Ok(()), Want::Ok) => {}
            (Err(e), Want::Err(part)) => assert!(e.contains(part), "{name}: '{e}' lacks '{part}'"),
            (Ok(()), Want::Err(part)) => panic!("{name}: extracted, wanted an error with '{part}'"),
            (Err(e), Want::Ok) => panic!("{name}: {e}"),
        }
    }
}

#[test]
fn committed_corpus_matches_the_seeds() {
    let seeds = seeds().into_iter().map(|(name, mode, body, _)| {
        let mut bytes = vec![mode];
        bytes.extend_from_slice(&body);
        (name, bytes)
    });
    extract_support::check_corpus(&corpus_dir(), seeds);
}
