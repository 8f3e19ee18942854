//! Memory stays flat while pulling a large layer: blobs stream to disk and
//! extraction reads from the file with fixed buffers. Alone in its binary so
//! no other test moves the process's peak RSS.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod hostile_registry;

use std::sync::Arc;
use std::time::Duration;

use hostile_registry::{Hostile, Payload, Reply};
use kmm_agent::image::{ImageCache, PullOptions, PullPolicy, RegistryTls, sha256_digest};

const LAYER_MIB: u64 = 128;

/// `VmRSS` or `VmHWM` of this process, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A plain tar with one file of `mib` MiB (not compressible away: each
/// 4 KiB block differs).
fn big_tar(mib: u64) -> Vec<u8> {
    let size = mib << 20;
    let mut header = tar::Header::new_gnu();
    header
        .set_path("opt/lib/modules/6.1.0/kernel/big.ko")
        .unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap() + 2048);
    out.extend_from_slice(header.as_bytes());
    for block in 0..(size / 4096) {
        let mut chunk = [0u8; 4096];
        chunk[..8].copy_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&chunk);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[tokio::test]
async fn pulling_a_128_mib_layer_does_not_grow_memory_with_its_size() {
    let layer = Arc::new(big_tar(LAYER_MIB));
    let layer_digest = sha256_digest(&layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        layer.len()
    )
    .into_bytes();
    let manifest_digest = sha256_digest(&manifest);
    let served = layer.clone();
    let h = Hostile::start(move |_method, path| {
        if path.contains("/manifests/") {
            return Reply::ok(Payload::Bytes(manifest.clone()))
                .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                .header("Docker-Content-Digest", manifest_digest.clone());
        }
        if path.ends_with(&layer_digest) {
            let served = served.clone();
            let len = served.len() as u64;
            // Served from the copy already in memory: no second copy.
            return Reply::ok(Payload::Generated(
                len,
                Arc::new(move |offset, buf| {
                    let at = usize::try_from(offset).unwrap();
                    buf.copy_from_slice(&served[at..at + buf.len()]);
                }),
            ));
        }
        Reply::not_found()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(&dir.path().join("images"), 1 << 40).unwrap();
    let options = PullOptions {
        policy: Some(PullPolicy::Always),
        tls: RegistryTls {
            insecure: true,
            insecure_skip_tls_verify: false,
        },
        ..PullOptions::default()
    };

    // Reset the peak to now: what follows is the pull's own growth.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let pulled = tokio::time::timeout(
        Duration::from_secs(300),
        cache.pull(&format!("{}/kmm/big:v1", h.addr), &options),
    )
    .await
    .unwrap()
    .unwrap();
    let peak = status_kib("VmHWM:");
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("peak RSS growth: {growth_mib} MiB (RSS before {before} KiB)");

    let file = pulled.root.join("opt/lib/modules/6.1.0/kernel/big.ko");
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        LAYER_MIB << 20,
        "the layer was not unpacked whole"
    );
    assert!(
        growth_mib < LAYER_MIB / 4,
        "peak RSS grew by {growth_mib} MiB while pulling a {LAYER_MIB} MiB layer"
    );
}
