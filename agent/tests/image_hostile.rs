//! Pulls from a hostile registry (tests/hostile_registry, loopback only):
//! every pull ends by its deadline, no body is buffered past its cap, sizes
//! are checked against descriptors, and nothing half-written stays behind.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod extract_support;
mod hostile_registry;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use extract_support::{Tar, gzip};
use hostile_registry::{Hostile, Payload, Reply};
use kmm_agent::image::{
    ImageCache, ImageError, Platform, PullOptions, PullPolicy, PulledImage, RegistryTls,
    sha256_digest,
};

const REPO: &str = "kmm/hostile";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An image as the registry holds it.
#[derive(Clone)]
struct Img {
    manifest: Vec<u8>,
    digest: String,
    layers: Vec<(String, Vec<u8>)>,
}

fn kmod_tar() -> Vec<u8> {
    let base = "opt/lib/modules/6.1.0-hostile";
    Tar::new()
        .file(&format!("{base}/kernel/drivers/evil.ko"), &[7u8; 2048])
        .file(&format!("{base}/modules.dep"), b"kernel/drivers/evil.ko:\n")
        .finish()
}

/// A manifest over gzip `layers` (digest, declared size) and a config descriptor.
fn manifest_json(config: (&str, u64), layers: &[(String, u64)]) -> Vec<u8> {
    manifest_of(config, layers, GZIP_LAYER)
}

fn manifest_of(config: (&str, u64), layers: &[(String, u64)], media_type: &str) -> Vec<u8> {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, size)| format!(r#"{{"mediaType":"{media_type}","digest":"{d}","size":{size}}}"#))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        config.0,
        config.1,
        layers.join(",")
    )
    .into_bytes()
}

const SMALL_CONFIG: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// One gzip kmod layer, declared with `declare(actual size)`.
fn image_declaring(declare: impl Fn(u64) -> u64) -> Img {
    let layer = gzip(&kmod_tar());
    let d = sha256_digest(&layer);
    let manifest = manifest_json(
        (SMALL_CONFIG, 2),
        &[(d.clone(), declare(layer.len() as u64))],
    );
    Img {
        digest: sha256_digest(&manifest),
        manifest,
        layers: vec![(d, layer)],
    }
}

fn image() -> Img {
    image_declaring(|n| n)
}

/// What a well-behaved registry answers for `img`; `None` for anything else.
fn honest(img: &Img, method: &str, path: &str) -> Option<Reply> {
    let manifests = format!("/v2/{REPO}/manifests/");
    let blobs = format!("/v2/{REPO}/blobs/");
    if let Some(target) = path.strip_prefix(&manifests) {
        if target != "v1" && target != img.digest {
            return Some(Reply::not_found());
        }
        let reply = Reply::ok(Payload::Bytes(img.manifest.clone()))
            .header("Content-Type", MANIFEST)
            .header("Docker-Content-Digest", img.digest.clone());
        return Some(reply);
    }
    if let Some(digest) = path.strip_prefix(&blobs) {
        let found = img.layers.iter().find(|(d, _)| d == digest);
        return Some(match (method, found) {
            (_, Some((_, bytes))) => Reply::ok(Payload::Bytes(bytes.clone())),
            _ => Reply::not_found(),
        });
    }
    None
}

fn reference(h: &Hostile) -> String {
    format!("{}/{REPO}:v1", h.addr)
}

fn options() -> PullOptions {
    PullOptions {
        policy: Some(PullPolicy::Always),
        tls: RegistryTls {
            insecure: true,
            insecure_skip_tls_verify: false,
        },
        ..PullOptions::default()
    }
}

fn new_cache() -> (tempfile::TempDir, ImageCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(&dir.path().join("images"), 1 << 30).unwrap();
    (dir, cache)
}

/// Runs a pull that must end by itself well within `limit`.
async fn pull_within(
    cache: &ImageCache,
    reference: &str,
    options: &PullOptions,
    limit: Duration,
) -> (Result<PulledImage, ImageError>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(limit, cache.pull(reference, options))
        .await
        .unwrap_or_else(|_| panic!("the pull of {reference} was still running after {limit:?}"));
    (result, started.elapsed())
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing of a failed pull is in the cache: no temp blob, no tree, no
/// staging dir, no reference.
async fn assert_nothing_half_written(cache: &ImageCache, img: &Img, reference: &str) {
    let blobs = entries(&cache.dir().join("blobs/sha256"));
    assert!(
        blobs.iter().all(|n| !n.starts_with('.')),
        "temp blobs left: {blobs:?}"
    );
    for (layer, _) in &img.layers {
        let hex = layer.trim_start_matches("sha256:");
        assert!(!blobs.iter().any(|n| n == hex), "layer {layer} kept");
    }
    assert_eq!(
        entries(&cache.dir().join("unpacked/sha256")),
        Vec::<String>::new()
    );
    assert_eq!(cache.lookup(reference).await.unwrap(), None);
}

#[tokio::test]
async fn a_registry_trickling_a_blob_fails_at_the_pull_deadline_and_keeps_nothing() {
    let img = image();
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        if path.contains("/blobs/") {
            let bytes = served.layers[0].1.clone();
            return Reply::ok(Payload::Trickle(bytes, Duration::from_millis(50)));
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let opts = PullOptions {
        deadline: Duration::from_secs(2),
        ..options()
    };
    let r = reference(&h);
    let (result, took) = pull_within(&cache, &r, &opts, Duration::from_secs(20)).await;
    let err = result.unwrap_err();
    let ImageError::DeadlineExceeded {
        what,
        seconds,
        bytes,
    } = &err
    else {
        panic!("expected DeadlineExceeded, got {err}")
    };
    assert_eq!(what, &format!("pull of {r}"));
    assert_eq!(*seconds, 2);
    assert!(
        *bytes > img.manifest.len() as u64 && *bytes < img.manifest.len() as u64 + 100,
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("pull of {r} exceeded its deadline of 2 s after ")),
        "{err}"
    );
    assert_eq!(err.metric_label(), "deadline");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_nothing_half_written(&cache, &img, &r).await;
}

#[tokio::test]
async fn a_registry_trickling_the_manifest_fails_at_the_manifest_deadline() {
    let img = image();
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        if method == "GET" && path.contains("/manifests/sha256:") {
            let reply = Reply::ok(Payload::Trickle(
                served.manifest.clone(),
                Duration::from_millis(100),
            ));
            return reply.header("Content-Type", MANIFEST);
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let opts = PullOptions {
        manifest_deadline: Duration::from_secs(1),
        deadline: Duration::from_secs(60),
        ..options()
    };
    let r = reference(&h);
    let (result, took) = pull_within(&cache, &r, &opts, Duration::from_secs(20)).await;
    let err = result.unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "manifest fetch of {r} exceeded its deadline of 1 s after "
        )),
        "{err}"
    );
    assert_eq!(err.metric_label(), "deadline");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        entries(&cache.dir().join("blobs/sha256")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_manifest_announced_larger_than_the_cap_is_refused_before_its_body_is_read() {
    let img = image();
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        if method == "GET" && path.contains("/manifests/sha256:") {
            // 1.5 GB announced; 64 KiB sent, then the connection just waits.
            let reply = Reply::ok(Payload::Announce(1_500_000_000, vec![b' '; 64 << 10]));
            return reply.header("Content-Type", MANIFEST);
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let (result, took) = pull_within(&cache, &r, &options(), Duration::from_secs(20)).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::ManifestTooLarge {
                limit: 4_194_304,
                announced: Some(1_500_000_000),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("manifest of {r} is 1500000000 bytes, more than the 4194304-byte limit")
    );
    assert_eq!(err.metric_label(), "too_large");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn a_chunked_manifest_past_the_cap_is_cut_while_reading() {
    let img = image();
    let served = img.clone();
    // 256 MiB in 64 KiB chunks with no length: the cap must stop the read.
    let h = Hostile::start(move |method, path| {
        if method == "GET" && path.contains("/manifests/sha256:") {
            let reply = Reply::ok(Payload::Chunked(vec![b' '; 64 << 10], 4096));
            return reply.header("Content-Type", MANIFEST);
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let opts = PullOptions {
        max_manifest_bytes: 1 << 20,
        ..options()
    };
    let r = reference(&h);
    let (result, _) = pull_within(&cache, &r, &opts, Duration::from_secs(60)).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::ManifestTooLarge {
                limit: 1_048_576,
                announced: None,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("manifest of {r} is larger than the 1048576-byte limit")
    );
    // Give the server a moment to notice the closed connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = h.body_bytes_written();
    assert!(
        written < 64 << 20,
        "the client read {written} bytes of a manifest capped at 1 MiB"
    );
}

#[tokio::test]
async fn layers_declaring_more_than_the_image_cap_are_refused_before_any_download() {
    let one = gzip(&kmod_tar());
    let other = gzip(&Tar::new().file("opt/x", b"x").finish());
    let (d1, d2) = (sha256_digest(&one), sha256_digest(&other));
    // Each under the cap of one layer, together 3 GiB.
    let manifest = manifest_json(
        (SMALL_CONFIG, 2),
        &[(d1.clone(), 3 << 29), (d2.clone(), 3 << 29)],
    );
    let img = Img {
        digest: sha256_digest(&manifest),
        manifest,
        layers: vec![(d1, one), (d2, other)],
    };
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let (result, _) = pull_within(&cache, &r, &options(), Duration::from_secs(20)).await;
    let err = result.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "image {r} declares 3221225472 bytes of layers, more than the 2147483648-byte limit"
        )
    );
    assert_eq!(err.metric_label(), "too_large");
    let blob_requests: Vec<String> = h
        .requests()
        .into_iter()
        .filter(|r| r.contains("/blobs/"))
        .collect();
    assert_eq!(blob_requests, Vec::<String>::new(), "downloaded anyway");
    assert_nothing_half_written(&cache, &img, &r).await;
}

#[tokio::test]
async fn a_blob_shorter_than_its_descriptor_is_refused_announced_or_not() {
    for chunked in [false, true] {
        let img = image_declaring(|n| n + 10);
        let served = img.clone();
        let h = Hostile::start(move |method, path| {
            if chunked && path.contains("/blobs/") {
                return Reply::ok(Payload::Chunked(served.layers[0].1.clone(), 1));
            }
            honest(&served, method, path).unwrap_or_else(Reply::not_found)
        })
        .await;
        let (_dir, cache) = new_cache();
        let r = reference(&h);
        let (result, _) = pull_within(&cache, &r, &options(), Duration::from_secs(20)).await;
        let err = result.unwrap_err();
        let real = img.layers[0].1.len() as u64;
        assert!(
            matches!(err, ImageError::SizeMismatch { expected, actual, .. } if expected == real + 10 && actual == real),
            "chunked={chunked}: {err}"
        );
        assert_eq!(err.metric_label(), "bad_content");
        assert_nothing_half_written(&cache, &img, &r).await;
    }
}

#[tokio::test]
async fn an_index_entry_larger_than_the_manifest_cap_is_never_fetched() {
    let img = image();
    let platform = Platform::current();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{{"mediaType":"{MANIFEST}","digest":"{}","size":{},"platform":{{"os":"{}","architecture":"{}"}}}}]}}"#,
        img.digest,
        100u64 << 20,
        platform.os,
        platform.architecture
    )
    .into_bytes();
    let index_digest = sha256_digest(&index);
    let served = img.clone();
    let idx = (index.clone(), index_digest.clone());
    let h = Hostile::start(move |method, path| {
        if path.ends_with("/manifests/v1") || path.ends_with(&format!("/manifests/{}", idx.1)) {
            return Reply::ok(Payload::Bytes(idx.0.clone()))
                .header("Content-Type", INDEX)
                .header("Docker-Content-Digest", idx.1.clone());
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let (result, _) = pull_within(&cache, &r, &options(), Duration::from_secs(20)).await;
    let err = result.unwrap_err();
    assert!(
        matches!(err, ImageError::ManifestTooLarge { announced: Some(n), .. } if n == 100 << 20),
        "{err}"
    );
    assert!(
        !h.requests().iter().any(|q| q.contains(&img.digest)),
        "fetched: {:?}",
        h.requests()
    );
}

#[tokio::test]
async fn an_error_response_with_an_endless_body_is_read_only_in_part() {
    let img = image();
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        if path.contains("/blobs/") {
            let mut reply = Reply::ok(Payload::Chunked(vec![b'e'; 64 << 10], 4096));
            reply.status = 500;
            return reply;
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let (result, took) = pull_within(&cache, &r, &options(), Duration::from_secs(60)).await;
    let err = result.unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert!(
        err.to_string().len() < 8192,
        "the whole body in the message"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = h.body_bytes_written();
    assert!(
        written < 64 << 20,
        "the client read {written} bytes of an error body"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_nothing_half_written(&cache, &img, &r).await;
}

#[tokio::test]
async fn a_config_blob_declared_huge_is_never_downloaded() {
    // The agent needs only the layers: the config (which may be any size) is not fetched.
    let layer = gzip(&kmod_tar());
    let d = sha256_digest(&layer);
    let config = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
    let manifest = manifest_json((config, 10 << 30), &[(d.clone(), layer.len() as u64)]);
    let img = Img {
        digest: sha256_digest(&manifest),
        manifest,
        layers: vec![(d, layer)],
    };
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let (result, _) =
        pull_within(&cache, &reference(&h), &options(), Duration::from_secs(20)).await;
    let pulled = result.unwrap();
    assert!(
        pulled
            .root
            .join("opt/lib/modules/6.1.0-hostile/modules.dep")
            .is_file()
    );
    assert!(!h.requests().iter().any(|q| q.contains(config)));
}

#[tokio::test]
async fn a_pull_killed_mid_download_by_its_deadline_can_be_retried_cleanly() {
    // The first pull times out half-way; the retry against an honest
    // registry succeeds from scratch (no stale partial blob in the way).
    let img = image();
    let served = img.clone();
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let slow_route = slow.clone();
    let h = Hostile::start(move |method, path| {
        if path.contains("/blobs/") && slow_route.load(std::sync::atomic::Ordering::SeqCst) {
            let bytes = served.layers[0].1.clone();
            return Reply::ok(Payload::Trickle(bytes, Duration::from_millis(20)));
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let opts = PullOptions {
        deadline: Duration::from_secs(1),
        ..options()
    };
    let (first, _) = pull_within(&cache, &r, &opts, Duration::from_secs(20)).await;
    assert!(matches!(first, Err(ImageError::DeadlineExceeded { .. })));
    slow.store(false, std::sync::atomic::Ordering::SeqCst);
    let (second, _) = pull_within(&cache, &r, &opts, Duration::from_secs(20)).await;
    let pulled = second.unwrap();
    assert_eq!(pulled.digest, img.digest);
    assert!(pulled.unpacked);
}

#[tokio::test]
async fn a_layer_of_100k_entries_fails_the_pull_in_seconds_without_writing_them() {
    let mut tar = Tar::new();
    for i in 0..100_000 {
        tar = tar.file(&format!("opt/d{}/f{i}", i % 100), b"");
    }
    let layer = tar.finish();
    let d = sha256_digest(&layer);
    let manifest = manifest_of(
        (SMALL_CONFIG, 2),
        &[(d.clone(), layer.len() as u64)],
        "application/vnd.oci.image.layer.v1.tar",
    );
    let img = Img {
        digest: sha256_digest(&manifest),
        manifest,
        layers: vec![(d, layer)],
    };
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    // Today's code writes all 100k files (over a minute in a debug build).
    let (result, took) = pull_within(&cache, &r, &options(), Duration::from_secs(45)).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ImageError::Layer { source, .. } if matches!(source, kmm_agent::extract::ExtractError::TooManyEntries { max: 50_000 })),
        "{err}"
    );
    assert_eq!(err.metric_label(), "layer");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(
        entries(&cache.dir().join("unpacked/sha256")),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_tag_resolved_without_a_digest_header_is_read_with_the_manifest_cap() {
    // No Docker-Content-Digest on HEAD: the tag is resolved by hashing the
    // manifest, and that read is capped too.
    let img = image();
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        if path.ends_with("/manifests/v1") {
            return match method {
                "HEAD" => Reply::ok(Payload::Bytes(Vec::new())),
                _ => Reply::ok(Payload::Chunked(vec![b' '; 64 << 10], 4096)),
            };
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let (result, _) = pull_within(&cache, &r, &options(), Duration::from_secs(60)).await;
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::ManifestTooLarge {
                announced: None,
                ..
            }
        ),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = h.body_bytes_written();
    assert!(written < 64 << 20, "the client read {written} bytes");
}

#[tokio::test]
async fn a_tag_resolved_without_a_digest_header_still_pulls_from_an_honest_registry() {
    let img = image();
    let served = img.clone();
    let h = Hostile::start(move |method, path| {
        if path.ends_with("/manifests/v1") {
            return Reply::ok(Payload::Bytes(served.manifest.clone()))
                .header("Content-Type", MANIFEST);
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let (result, _) =
        pull_within(&cache, &reference(&h), &options(), Duration::from_secs(20)).await;
    assert_eq!(result.unwrap().digest, img.digest);
}

/// A registry that hands out `token` at `/token` (with the Basic
/// credentials `kmm:secret` when `basic`) and asks for it everywhere.
fn bearer_route(
    img: Img,
    addr: Arc<std::sync::OnceLock<String>>,
    token_reply: impl Fn() -> Reply + Send + Sync + 'static,
) -> impl Fn(&str, &str) -> Reply + Send + Sync + 'static {
    move |method, path| {
        if path == "/v2/" {
            let realm = format!("http://{}/token", addr.get().unwrap());
            let mut reply = Reply::ok(Payload::Bytes(b"{}".to_vec())).header(
                "WWW-Authenticate",
                format!(r#"Bearer realm="{realm}",service="hostile""#),
            );
            reply.status = 401;
            return reply;
        }
        if path.starts_with("/token") {
            return token_reply();
        }
        honest(&img, method, path).unwrap_or_else(Reply::not_found)
    }
}

async fn bearer_registry(
    token_reply: impl Fn() -> Reply + Send + Sync + 'static,
) -> (Hostile, Img) {
    let img = image();
    let addr = Arc::new(std::sync::OnceLock::new());
    let h = Hostile::start(bearer_route(img.clone(), addr.clone(), token_reply)).await;
    addr.set(h.addr.clone()).unwrap();
    (h, img)
}

#[tokio::test]
async fn a_bearer_token_is_fetched_once_with_the_credentials_and_sent_on_every_request() {
    let (h, img) = bearer_registry(|| {
        Reply::ok(Payload::Bytes(
            br#"{"token":"T0K3N","expires_in":300}"#.to_vec(),
        ))
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let secret = kmm_agent::image::DockerConfig::from_secret(
        Some("kubernetes.io/dockerconfigjson"),
        &[(
            ".dockerconfigjson".to_owned(),
            format!(
                r#"{{"auths":{{"{}":{{"username":"kmm","password":"secret"}}}}}}"#,
                h.addr
            )
            .into_bytes(),
        )]
        .into_iter()
        .collect(),
    )
    .unwrap();
    let opts = PullOptions {
        credentials: secret,
        ..options()
    };
    let (result, _) = pull_within(&cache, &r, &opts, Duration::from_secs(20)).await;
    assert_eq!(result.unwrap().digest, img.digest);
    let heads = h.heads();
    let token_requests: Vec<&String> = heads
        .iter()
        .filter(|h| h.starts_with("GET /token"))
        .collect();
    assert_eq!(token_requests.len(), 1, "{heads:#?}");
    assert!(
        token_requests[0].contains("scope=repository%3Akmm%2Fhostile%3Apull"),
        "{}",
        token_requests[0]
    );
    assert!(
        token_requests[0].contains("service=hostile"),
        "{}",
        token_requests[0]
    );
    // kmm:secret
    assert!(
        token_requests[0]
            .to_ascii_lowercase()
            .contains("authorization: basic a21tonnly3jlda=="),
        "{}",
        token_requests[0]
    );
    for head in heads.iter().filter(|h| h.contains(&format!("/v2/{REPO}/"))) {
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer t0k3n"),
            "{head}"
        );
    }
}

#[tokio::test]
async fn a_token_endpoint_with_an_endless_body_is_read_only_in_part() {
    let (h, _img) =
        bearer_registry(|| Reply::ok(Payload::Chunked(vec![b' '; 64 << 10], 4096))).await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let (result, _) = pull_within(&cache, &r, &options(), Duration::from_secs(60)).await;
    let err = result.unwrap_err();
    assert!(
        err.to_string()
            .contains("token response over 1048576 bytes"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let written = h.body_bytes_written();
    assert!(
        written < 64 << 20,
        "the client read {written} bytes of a token response"
    );
}

#[tokio::test]
async fn a_token_endpoint_refusing_the_credentials_is_unauthorized() {
    let (h, _img) = bearer_registry(|| {
        let mut reply = Reply::ok(Payload::Bytes(b"denied".to_vec()));
        reply.status = 401;
        reply
    })
    .await;
    let (_dir, cache) = new_cache();
    let r = reference(&h);
    let (result, _) = pull_within(&cache, &r, &options(), Duration::from_secs(20)).await;
    let err = result.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn a_registry_answering_a_pinned_digest_with_another_is_refused() {
    let img = image();
    let other = image_declaring(|n| n + 1);
    let served = img.clone();
    let lie = other.digest.clone();
    let h = Hostile::start(move |method, path| {
        if method == "HEAD" && path.contains("/manifests/") {
            return Reply::ok(Payload::Bytes(Vec::new()))
                .header("Docker-Content-Digest", lie.clone());
        }
        honest(&served, method, path).unwrap_or_else(Reply::not_found)
    })
    .await;
    let (_dir, cache) = new_cache();
    let pinned = format!("{}/{REPO}@{}", h.addr, img.digest);
    let (result, _) = pull_within(&cache, &pinned, &options(), Duration::from_secs(20)).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { expected, actual, .. } if *expected == img.digest && *actual == other.digest),
        "{err}"
    );
}
