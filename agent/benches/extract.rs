//! Unpacking a gzip layer: the agent's extractor against `tar xzf` of the
//! same blob. Target: the pull path (scan, then unpack) at 80 % or more of
//! tar's speed. The layer (~80 MiB of tar, generated once under
//! target/kmm-extract-bench/) mixes a few large `.ko`-like files (half random,
//! half repetitive: about as compressible as real modules) with a couple of
//! thousand small text files, as a driver image with firmware and docs does.
//!
//! Criterion writes its estimates under target/criterion/; the median of a
//! few plain runs of each goes to benches/results/extract.json (MB/s of the
//! uncompressed tar stream).

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput};
use kmm_agent::extract::{Compression, Layer, Limits, scan_image, unpack_image};

/// Large module files and their size.
const BIG_FILES: usize = 6;
const BIG_BYTES: usize = 12 << 20;
/// Small files (docs, firmware blobs, modules.* indexes) and their sizes.
const SMALL_FILES: usize = 2000;
/// Plain runs per tool for the JSON summary.
const RUNS: usize = 5;

/// A deterministic xorshift generator: no rand dependency, same layer every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `.ko`-like bytes: 4 KiB blocks alternating random (code) and repetitive
/// (symbol and string tables).
fn module_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, block) in out.chunks_mut(4096).enumerate() {
        if i % 2 == 0 {
            rng.fill(block);
        } else {
            let text = format!("__ksymtab_driver_symbol_{:08x}\0", rng.next() % 4096);
            for (j, b) in block.iter_mut().enumerate() {
                *b = text.as_bytes()[j % text.len()];
            }
        }
    }
    out
}

/// Writes the layer once; returns its path and uncompressed tar size.
fn layer(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("layer.tar.gz");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tar = tar::Builder::new(Vec::new());
    let add = |tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, data)
            .expect("tar entry in memory");
    };
    let base = "opt/lib/modules/6.1.0-bench-amd64";
    for i in 0..BIG_FILES {
        let data = module_bytes(&mut rng, BIG_BYTES);
        add(&mut tar, &format!("{base}/kernel/drivers/big{i}.ko"), &data);
    }
    for i in 0..SMALL_FILES {
        let len = 512 + (rng.next() % 8192) as usize;
        let line = format!("firmware table {i} entry {:016x}\n", rng.next());
        let data: Vec<u8> = line.bytes().cycle().take(len).collect();
        add(
            &mut tar,
            &format!("opt/lib/firmware/vendor/d{}/f{i}.bin", i % 40),
            &data,
        );
    }
    let raw = tar.into_inner().expect("tar in memory");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).expect("gzip in memory");
    let gz = gz.finish().expect("gzip in memory");
    std::fs::write(&path, &gz).expect("layer written");
    (path, raw.len() as u64)
}

/// One way of unpacking the layer (its path) into a new directory.
type Unpack = fn(&Path, &Path);

fn open(path: &Path) -> Layer<'static> {
    Layer {
        name: "bench".to_owned(),
        compression: Compression::Gzip,
        reader: Box::new(std::fs::File::open(path).expect("layer readable")),
    }
}

/// What `ImageCache::unpack` does: a counting pass, then the unpack.
fn pull_path(layer: &Path, dest: &Path) {
    let limits = Limits::default();
    scan_image([open(layer)], &limits).expect("scan");
    unpack_image([open(layer)], dest, &limits).expect("unpack");
}

fn unpack_only(layer: &Path, dest: &Path) {
    unpack_image([open(layer)], dest, &Limits::default()).expect("unpack");
}

fn tar_xzf(layer: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).expect("dest dir");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(layer)
        .arg("-C")
        .arg(dest)
        .status()
        .expect("tar runs");
    assert!(status.success(), "tar xzf failed");
}

fn scratch(work: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(work).expect("scratch dir");
    let dest = dir.path().join("root");
    (dir, dest)
}

/// Median seconds of [`RUNS`] runs (the tree's deletion not timed).
fn median(work: &Path, run: impl Fn(&Path)) -> f64 {
    let mut secs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let (_dir, dest) = scratch(work);
            let t = Instant::now();
            run(&dest);
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    secs[RUNS / 2]
}

fn main() {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let work = target.join("kmm-extract-bench");
    std::fs::create_dir_all(&work).expect("work dir");
    let (layer_path, tar_bytes) = layer(&work);
    let gz_bytes = std::fs::metadata(&layer_path).expect("layer").len();

    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .configure_from_args();
    let mut group = c.benchmark_group("extract_gzip_layer");
    group.throughput(Throughput::Bytes(tar_bytes));
    let cases: [(&str, Unpack); 3] = [
        ("tar_xzf", tar_xzf),
        ("kmm_unpack_image", unpack_only),
        ("kmm_pull_path_scan_and_unpack", pull_path),
    ];
    for (name, run) in cases {
        group.bench_function(name, |b| {
            b.iter_batched(
                || scratch(&work),
                |(dir, dest)| {
                    run(&layer_path, black_box(&dest));
                    dir // dropped (the tree deleted) outside the timing
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
    c.final_summary();

    let mbps = |secs: f64| tar_bytes as f64 / secs / 1e6;
    let tar = mbps(median(&work, |d| tar_xzf(&layer_path, d)));
    let unpack = mbps(median(&work, |d| unpack_only(&layer_path, d)));
    let pull = mbps(median(&work, |d| pull_path(&layer_path, d)));
    let result = serde_json::json!({
        "benchmark": "unpack one gzip layer: kmm-agent extractor vs tar xzf",
        "layer": {
            "tar_mib": tar_bytes as f64 / 1048576.0,
            "gzip_mib": gz_bytes as f64 / 1048576.0,
            "big_files": BIG_FILES,
            "small_files": SMALL_FILES,
        },
        "machine": { "cpus": std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0) },
        "runs": RUNS,
        "tar_xzf_mb_s": tar,
        "kmm_unpack_image_mb_s": unpack,
        "kmm_pull_path_mb_s": pull,
        "pull_path_vs_tar": pull / tar,
        "unpack_image_vs_tar": unpack / tar,
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/results/extract.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&result).expect("json") + "\n",
    )
    .expect("results written");
    println!("{}", serde_json::to_string_pretty(&result).expect("json"));
}
