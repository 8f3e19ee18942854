//! Pulling an image whose digest is already cached fetches no blob, whatever
//! the reference or policy that leads to it (a Module re-applied unchanged,
//! a `:latest` re-check, a tag moved back, the same digest pinned). An
//! in-memory registry counts the requests: no network, no cluster.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod extract_support;
mod image_support;

use std::collections::HashMap;
use std::sync::Mutex;

use extract_support::{Tar, gzip};
use image_support::{Counting, GZIP_LAYER};
use kmm_agent::image::{
    Body, ImageCache, ImageError, ImageSource, PullOptions, PullPolicy, sha256_digest,
};
use oci_client::Reference;

const KVER: &str = "6.1.0-56-amd64";
const REG: &str = "registry.invalid:5000";

/// Serves tags and content-addressed blobs (manifests included) from memory.
#[derive(Default)]
struct Memory {
    tags: Mutex<HashMap<String, String>>,
    blobs: Mutex<HashMap<String, Vec<u8>>>,
}

impl Memory {
    fn put(&self, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        self.blobs.lock().unwrap().insert(digest.clone(), bytes);
        digest
    }

    /// Pushes a one-layer kmod image under `tag`; returns the manifest digest.
    fn push(&self, tag: &str, module: &[u8]) -> String {
        let base = format!("opt/lib/modules/{KVER}");
        let layer = gzip(
            &Tar::new()
                .file(&format!("{base}/kernel/drivers/brd.ko"), module)
                .file(&format!("{base}/modules.dep"), b"kernel/drivers/brd.ko:\n")
                .finish(),
        );
        let (layer_len, layer_digest) = (layer.len(), self.put(layer));
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let (config_len, config) = (config.len(), self.put(config));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_len},
            "layers": [{"mediaType": GZIP_LAYER, "digest": layer_digest, "size": layer_len}],
        });
        let digest = self.put(serde_json::to_vec(&manifest).unwrap());
        self.tags
            .lock()
            .unwrap()
            .insert(tag.to_owned(), digest.clone());
        digest
    }

    fn not_found(reference: &Reference) -> ImageError {
        ImageError::NotFound {
            reference: reference.whole(),
        }
    }
}

impl ImageSource for Memory {
    async fn resolve(&self, reference: &Reference) -> Result<String, ImageError> {
        if let Some(digest) = reference.digest() {
            return Ok(digest.to_owned());
        }
        let tag = reference.tag().unwrap_or("latest");
        let tags = self.tags.lock().unwrap();
        tags.get(tag)
            .cloned()
            .ok_or_else(|| Self::not_found(reference))
    }

    async fn fetch_manifest(&self, reference: &Reference) -> Result<Body, ImageError> {
        let digest = self.resolve(reference).await?;
        self.fetch_blob(reference, &digest).await
    }

    async fn fetch_blob(&self, reference: &Reference, digest: &str) -> Result<Body, ImageError> {
        let blobs = self.blobs.lock().unwrap();
        let bytes = blobs
            .get(digest)
            .cloned()
            .ok_or_else(|| Self::not_found(reference))?;
        Ok(Body::from_bytes(bytes))
    }
}

fn options(policy: PullPolicy) -> PullOptions {
    PullOptions {
        policy: Some(policy),
        ..PullOptions::default()
    }
}

fn new_cache() -> (tempfile::TempDir, ImageCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(&dir.path().join("images"), 1 << 30).unwrap();
    (dir, cache)
}

#[tokio::test]
async fn repulling_a_cached_digest_fetches_no_blob() {
    let src = Counting::new(Memory::default());
    let v1 = src.inner.push(KVER, b"\x7fELF v1");
    let tag = format!("{REG}/kmods/brd:{KVER}");
    let (_tmp, cache) = new_cache();

    let first = cache
        .pull_with(&src, &tag, &options(PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!(
        (first.digest.as_str(), first.blobs_downloaded),
        (v1.as_str(), 1)
    );
    assert_eq!(src.counts(), (1, 1, 1), "(resolves, manifests, blobs)");

    // The Module applied again unchanged (Always re-checks the tag).
    let again = cache
        .pull_with(&src, &tag, &options(PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!((again.blobs_downloaded, again.bytes_downloaded), (0, 0));
    assert!(!again.unpacked);
    assert_eq!(src.counts(), (2, 1, 1), "one resolve, nothing else");

    // IfNotPresent does not even resolve.
    cache
        .pull_with(&src, &tag, &options(PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(src.counts(), (2, 1, 1));

    // The same digest under another reference: pinned, or another tag of it.
    let pinned = format!("{REG}/kmods/brd@{v1}");
    let other_tag = format!("{REG}/kmods/brd:stable");
    src.inner
        .tags
        .lock()
        .unwrap()
        .insert("stable".into(), v1.clone());
    for reference in [&pinned, &other_tag] {
        let pulled = cache
            .pull_with(&src, reference, &options(PullPolicy::Always))
            .await
            .unwrap();
        assert_eq!(pulled.digest, v1);
        assert_eq!(pulled.blobs_downloaded, 0, "{reference}");
        assert_eq!(pulled.root, first.root, "{reference}");
    }
    assert_eq!(
        src.counts(),
        (4, 1, 1),
        "{pinned} and {other_tag}: resolves only"
    );
}

#[tokio::test]
async fn a_tag_moved_away_and_back_refetches_nothing_the_second_time() {
    let src = Counting::new(Memory::default());
    let tag = format!("{REG}/kmods/brd:latest");
    let v1 = src.inner.push("latest", b"v1");
    let (_tmp, cache) = new_cache();
    let always = options(PullPolicy::Always);
    cache.pull_with(&src, &tag, &always).await.unwrap();
    let v2 = src.inner.push("latest", b"v2");
    let moved = cache.pull_with(&src, &tag, &always).await.unwrap();
    assert_eq!(
        (moved.digest.as_str(), moved.blobs_downloaded),
        (v2.as_str(), 1)
    );
    assert_eq!(src.counts(), (2, 2, 2));

    // Rolled back: v1's manifest and layer are still in the cache.
    src.inner
        .tags
        .lock()
        .unwrap()
        .insert("latest".into(), v1.clone());
    let back = cache.pull_with(&src, &tag, &always).await.unwrap();
    assert_eq!(back.digest, v1);
    assert_eq!((back.blobs_downloaded, back.unpacked), (0, false));
    assert_eq!(src.counts(), (3, 2, 2));
}
