//! Pulling kmod images from a real registry (Debian's docker-registry on
//! 127.0.0.1, started by hack/registry/start.sh when needed).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod extract_support;
mod image_support;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use extract_support::{Tar, gzip};
use image_support::{
    Counting, GZIP_LAYER, PushLayer, TAR_LAYER, push_image, registry, unique_repo,
};
use kmm_agent::image::{
    DockerConfig, ImageCache, ImageError, OciSource, Platform, PullOptions, PullPolicy, RegistryTls,
};
use oci_client::secrets::RegistryAuth;

const KVER: &str = "6.1.0-56-amd64";

fn kmod_layer(module: &str, content: &[u8]) -> PushLayer {
    let base = format!("opt/lib/modules/{KVER}");
    let tar = Tar::new()
        .file(&format!("{base}/kernel/drivers/{module}.ko"), content)
        .file(
            &format!("{base}/modules.dep"),
            format!("kernel/drivers/{module}.ko:\n").as_bytes(),
        )
        .finish();
    PushLayer {
        bytes: gzip(&tar),
        media_type: GZIP_LAYER,
    }
}

fn insecure() -> PullOptions {
    PullOptions {
        tls: RegistryTls {
            insecure: true,
            insecure_skip_tls_verify: false,
        },
        ..PullOptions::default()
    }
}

fn with_policy(policy: PullPolicy) -> PullOptions {
    PullOptions {
        policy: Some(policy),
        ..insecure()
    }
}

fn new_cache() -> (tempfile::TempDir, ImageCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(&dir.path().join("images"), 1 << 30).unwrap();
    (dir, cache)
}

fn source(registry: &str) -> Counting<OciSource> {
    Counting::new(OciSource::new(
        registry,
        RegistryTls {
            insecure: true,
            insecure_skip_tls_verify: false,
        },
        RegistryAuth::Anonymous,
    ))
}

fn module_path(root: &Path, module: &str) -> std::path::PathBuf {
    root.join(format!("opt/lib/modules/{KVER}/kernel/drivers/{module}.ko"))
}

fn unpacked_entries(cache: &ImageCache) -> Vec<String> {
    fs::read_dir(cache.dir().join("unpacked/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn pull_unpacks_a_kmod_image() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("basic"));
    let layer = kmod_layer("brd", b"\x7fELF brd");
    let layer_len = layer.bytes.len() as u64;
    let digest = push_image(&reference, &[layer], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    let pulled = cache.pull(&reference, &insecure()).await.unwrap();
    assert_eq!(pulled.digest, digest);
    assert_eq!(pulled.resolved_digest, digest);
    assert_eq!(
        fs::read(module_path(&pulled.root, "brd")).unwrap(),
        b"\x7fELF brd"
    );
    assert!(
        pulled
            .root
            .join(format!("opt/lib/modules/{KVER}/modules.dep"))
            .is_file()
    );
    assert_eq!(
        (pulled.bytes_downloaded, pulled.blobs_downloaded),
        (layer_len, 1)
    );
    assert!(pulled.unpacked && !pulled.from_cache);
    assert_eq!(
        pulled.root,
        cache.dir().join("unpacked/sha256").join(&digest[7..])
    );
    let refs: serde_json::Value =
        serde_json::from_slice(&fs::read(cache.dir().join("refs.json")).unwrap()).unwrap();
    assert_eq!(refs["refs"][&reference]["manifest"], digest.as_str());
    assert!(
        cache
            .dir()
            .join("blobs/sha256")
            .join(&digest[7..])
            .is_file(),
        "manifest kept"
    );
}

#[tokio::test]
async fn always_repull_of_an_unchanged_digest_downloads_nothing() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("always"));
    push_image(&reference, &[kmod_layer("brd", b"v1")], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    let src = source(&reg);
    let first = cache
        .pull_with(&src, &reference, &with_policy(PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!(first.blobs_downloaded, 1);
    assert_eq!(src.counts(), (1, 1, 1));
    let again = cache
        .pull_with(&src, &reference, &with_policy(PullPolicy::Always))
        .await
        .unwrap();
    assert_eq!((again.bytes_downloaded, again.blobs_downloaded), (0, 0));
    assert!(!again.unpacked && !again.from_cache);
    assert_eq!(again.digest, first.digest);
    // Only one more request: the digest check.
    assert_eq!(src.counts(), (2, 1, 1));
}

#[tokio::test]
async fn a_new_digest_under_the_same_tag_is_picked_up_and_shared_layers_are_not_refetched() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:latest", unique_repo("retag"));
    let base = PushLayer {
        bytes: gzip(&Tar::new().file("opt/README", b"base").finish()),
        media_type: GZIP_LAYER,
    };
    let base2 = PushLayer {
        bytes: base.bytes.clone(),
        media_type: GZIP_LAYER,
    };
    let d1 = push_image(
        &reference,
        &[base, kmod_layer("brd", b"v1")],
        "amd64",
        false,
    )
    .await;
    let (_tmp, cache) = new_cache();
    // No policy: `:latest` defaults to Always.
    let first = cache.pull(&reference, &insecure()).await.unwrap();
    assert_eq!(
        (first.digest.as_str(), first.blobs_downloaded),
        (d1.as_str(), 2)
    );
    let v2 = kmod_layer("brd", b"v2");
    let v2_len = v2.bytes.len() as u64;
    let d2 = push_image(&reference, &[base2, v2], "amd64", false).await;
    assert_ne!(d1, d2);
    let second = cache.pull(&reference, &insecure()).await.unwrap();
    assert_eq!(second.digest, d2);
    assert!(second.unpacked);
    assert_eq!(
        (second.blobs_downloaded, second.bytes_downloaded),
        (1, v2_len),
        "base layer reused"
    );
    assert_eq!(fs::read(module_path(&second.root, "brd")).unwrap(), b"v2");
    assert_eq!(fs::read(second.root.join("opt/README")).unwrap(), b"base");
    // The old tree is still there until gc.
    assert_eq!(fs::read(module_path(&first.root, "brd")).unwrap(), b"v1");
}

#[tokio::test]
async fn if_not_present_does_not_contact_the_registry_when_cached() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("ifnp"));
    push_image(&reference, &[kmod_layer("brd", b"x")], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    // A tagged reference defaults to IfNotPresent.
    let first = cache.pull(&reference, &insecure()).await.unwrap();
    assert!(first.unpacked);
    let src = source(&reg);
    let second = cache
        .pull_with(&src, &reference, &insecure())
        .await
        .unwrap();
    assert_eq!(src.counts(), (0, 0, 0), "no request at all");
    assert!(second.from_cache);
    assert_eq!(second.root, first.root);
    // Even with the registry unreachable (a port where nothing listens).
    let dead = Counting::new(OciSource::new(
        "127.0.0.1:9",
        RegistryTls {
            insecure: true,
            ..Default::default()
        },
        RegistryAuth::Anonymous,
    ));
    let third = cache
        .pull_with(&dead, &reference, &with_policy(PullPolicy::IfNotPresent))
        .await
        .unwrap();
    assert_eq!(third.digest, first.digest);
}

#[tokio::test]
async fn never_with_an_empty_cache_is_a_clear_error() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("never"));
    push_image(&reference, &[kmod_layer("brd", b"x")], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    let src = source(&reg);
    let err = cache
        .pull_with(&src, &reference, &with_policy(PullPolicy::Never))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("image {reference} is not in the local cache and imagePullPolicy is Never")
    );
    assert_eq!(src.counts(), (0, 0, 0));
    // Once pulled, Never works from the cache.
    cache.pull(&reference, &insecure()).await.unwrap();
    let cached = cache
        .pull_with(&src, &reference, &with_policy(PullPolicy::Never))
        .await
        .unwrap();
    assert!(cached.from_cache);
}

#[tokio::test]
async fn missing_tag_says_not_found() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:6.1.0", unique_repo("missing"));
    let (_tmp, cache) = new_cache();
    let err = cache.pull(&reference, &insecure()).await.unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("image {reference} not found in registry (manifest unknown)")
    );
}

#[tokio::test]
async fn a_layer_that_is_not_gzip_fails_and_leaves_no_tree() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("notgz"));
    let bogus = PushLayer {
        bytes: b"this is not gzip at all, just text".repeat(20),
        media_type: GZIP_LAYER,
    };
    push_image(&reference, &[kmod_layer("ok", b"1"), bogus], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    let err = cache.pull(&reference, &insecure()).await.unwrap_err();
    assert!(matches!(err, ImageError::Layer { .. }), "{err}");
    assert!(err.to_string().starts_with("layer sha256:"), "{err}");
    assert!(err.to_string().contains("corrupt gzip stream"), "{err}");
    assert!(
        unpacked_entries(&cache).is_empty(),
        "no tree, no partial dir: {:?}",
        unpacked_entries(&cache)
    );
    assert!(
        cache.lookup(&reference).await.unwrap().is_none(),
        "not recorded"
    );
}

#[tokio::test]
async fn a_blob_corrupted_in_the_registry_is_a_digest_mismatch() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("corrupt"));
    // Unique content: a blob shared with an earlier run would already be damaged.
    let layer = kmod_layer("brd", reference.as_bytes());
    let layer_digest = kmm_agent::image::sha256_digest(&layer.bytes);
    push_image(&reference, &[layer], "amd64", false).await;
    // Flip bytes of the stored blob (same length) behind the registry's back.
    let hex = &layer_digest[7..];
    let data = image_support::storage_candidates(false)
        .into_iter()
        .map(|s| {
            s.join(format!(
                "docker/registry/v2/blobs/sha256/{}/{hex}/data",
                &hex[..2]
            ))
        })
        .find(|p| p.is_file())
        .expect("blob data of the registry on 127.0.0.1:5000 (started by hack/registry/start.sh)");
    let mut bytes = fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let (_tmp, cache) = new_cache();
    let err = cache.pull(&reference, &insecure()).await.unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("digest mismatch for blob {layer_digest}")),
        "{err}"
    );
    assert!(unpacked_entries(&cache).is_empty());
    let blobs: Vec<_> = fs::read_dir(cache.dir().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !blobs.iter().any(|b| b.to_string_lossy() == hex),
        "the bad blob is not kept"
    );
}

#[tokio::test]
async fn plain_tar_layers_and_multiple_layers_apply_in_order() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("plain"));
    let l0 = PushLayer {
        bytes: Tar::new().file("opt/a", b"0").file("opt/b", b"0").finish(),
        media_type: TAR_LAYER,
    };
    let l1 = PushLayer {
        bytes: gzip(
            &Tar::new()
                .file("opt/.wh.a", b"")
                .file("opt/b", b"1")
                .finish(),
        ),
        media_type: GZIP_LAYER,
    };
    push_image(&reference, &[l0, l1], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    let pulled = cache.pull(&reference, &insecure()).await.unwrap();
    assert!(!pulled.root.join("opt/a").exists());
    assert_eq!(fs::read(pulled.root.join("opt/b")).unwrap(), b"1");
}

fn secret(user: &str, password: &str, registry: &str) -> DockerConfig {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#);
    let data = BTreeMap::from([(".dockerconfigjson".to_owned(), json.into_bytes())]);
    DockerConfig::from_secret(Some("kubernetes.io/dockerconfigjson"), &data).unwrap()
}

#[tokio::test]
async fn auth_registry_needs_the_right_secret() {
    let reg = registry(true);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("auth"));
    push_image(
        &reference,
        &[kmod_layer("brd", b"secret module")],
        "amd64",
        true,
    )
    .await;
    let (_tmp, cache) = new_cache();
    let good = PullOptions {
        credentials: secret(image_support::USER, image_support::PASSWORD, &reg),
        ..insecure()
    };
    let pulled = cache.pull(&reference, &good).await.unwrap();
    assert_eq!(
        fs::read(module_path(&pulled.root, "brd")).unwrap(),
        b"secret module"
    );

    let (_tmp2, cache2) = new_cache();
    let wrong = PullOptions {
        credentials: secret(image_support::USER, "wrong", &reg),
        ..insecure()
    };
    let err = cache2.pull(&reference, &wrong).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().starts_with("unauthorized"), "{err}");
    // No secret at all, and a secret for another registry: unauthorized as well.
    let err = cache2.pull(&reference, &insecure()).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    let other = PullOptions {
        credentials: secret(
            image_support::USER,
            image_support::PASSWORD,
            "127.0.0.1:5999",
        ),
        ..insecure()
    };
    let err = cache2.pull(&reference, &other).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(unpacked_entries(&cache2).is_empty());
}

#[tokio::test]
async fn multi_arch_index_picks_the_node_platform() {
    let reg = registry(false);
    let repo = unique_repo("multiarch");
    let reference = format!("{reg}/{repo}:{KVER}");
    let (amd, amd_digest) = image_support::push_manifest_parts(
        &reference,
        &[kmod_layer("brd", b"amd64 build")],
        "amd64",
        false,
    )
    .await;
    let (arm, arm_digest) = image_support::push_manifest_parts(
        &reference,
        &[kmod_layer("brd", b"arm64 build")],
        "arm64",
        false,
    )
    .await;
    let (amd_len, arm_len) = (amd.len(), arm.len());
    image_support::push_manifest_by_digest(&reference, arm, &arm_digest, false).await;
    image_support::push_manifest_by_digest(&reference, amd, &amd_digest, false).await;
    // arm64 first, so taking the first entry would be wrong.
    let index = image_support::push_index(
        &reference,
        &[
            (&arm_digest, arm_len, "arm64"),
            (&amd_digest, amd_len, "amd64"),
        ],
    )
    .await;

    let (_tmp, cache) = new_cache();
    let amd64 = Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    };
    let pulled = cache
        .pull(
            &reference,
            &PullOptions {
                platform: Some(amd64),
                ..insecure()
            },
        )
        .await
        .unwrap();
    assert_eq!(pulled.digest, amd_digest);
    assert_eq!(pulled.resolved_digest, index);
    assert_eq!(
        fs::read(module_path(&pulled.root, "brd")).unwrap(),
        b"amd64 build"
    );
    if cfg!(target_arch = "x86_64") {
        // The default platform is the running one.
        let (_t, c) = new_cache();
        assert_eq!(
            c.pull(&reference, &insecure()).await.unwrap().digest,
            amd_digest
        );
    }
    let (_t, c) = new_cache();
    let arm64 = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: None,
    };
    let pulled = c
        .pull(
            &reference,
            &PullOptions {
                platform: Some(arm64),
                ..insecure()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        fs::read(module_path(&pulled.root, "brd")).unwrap(),
        b"arm64 build"
    );
    let (_t, c) = new_cache();
    let s390 = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    let err = c
        .pull(
            &reference,
            &PullOptions {
                platform: Some(s390),
                policy: Some(PullPolicy::Always),
                ..insecure()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn gc_keeps_in_use_images_and_removes_the_rest() {
    let reg = registry(false);
    let keep_ref = format!("{reg}/{}:{KVER}", unique_repo("gc-keep"));
    let drop_ref = format!("{reg}/{}:{KVER}", unique_repo("gc-drop"));
    push_image(&keep_ref, &[kmod_layer("keep", b"k")], "amd64", false).await;
    push_image(&drop_ref, &[kmod_layer("gone", b"g")], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    let kept = cache.pull(&keep_ref, &insecure()).await.unwrap();
    let dropped = cache.pull(&drop_ref, &insecure()).await.unwrap();
    let before = cache.usage().unwrap();
    let report = cache.gc(&[kept.digest.as_str()]).await.unwrap();
    assert_eq!(report.unpacked_removed, vec![dropped.digest.clone()]);
    assert_eq!(report.refs_removed, vec![drop_ref.clone()]);
    assert_eq!(report.blobs_removed, 2, "its manifest and its layer");
    assert!(cache.usage().unwrap() < before);
    assert!(module_path(&kept.root, "keep").is_file());
    assert!(!dropped.root.exists());
    // The kept image is still served from the cache; the dropped one is gone.
    assert!(
        cache
            .pull(&keep_ref, &with_policy(PullPolicy::Never))
            .await
            .unwrap()
            .from_cache
    );
    let err = cache
        .pull(&drop_ref, &with_policy(PullPolicy::Never))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotCached { .. }), "{err}");
    // Over the size limit, enforce_limit runs gc with the in-use set.
    let small = ImageCache::open(cache.dir(), 1).unwrap();
    let report = small.enforce_limit(&[kept.digest.as_str()]).await.unwrap();
    assert!(report.is_some());
    assert!(module_path(&kept.root, "keep").is_file());
}

#[tokio::test]
async fn never_rebuilds_an_unpacked_tree_from_cached_blobs() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("offline"));
    push_image(&reference, &[kmod_layer("brd", b"offline")], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    let pulled = cache.pull(&reference, &insecure()).await.unwrap();
    fs::remove_dir_all(&pulled.root).unwrap();
    let src = source(&reg);
    let again = cache
        .pull_with(&src, &reference, &with_policy(PullPolicy::Never))
        .await
        .unwrap();
    assert_eq!(src.counts(), (0, 0, 0));
    assert!(again.unpacked && again.from_cache);
    assert_eq!(
        fs::read(module_path(&again.root, "brd")).unwrap(),
        b"offline"
    );
}

#[tokio::test]
async fn https_is_used_unless_the_registry_is_marked_insecure() {
    let reg = registry(false);
    let reference = format!("{reg}/{}:{KVER}", unique_repo("tls"));
    push_image(&reference, &[kmod_layer("brd", b"x")], "amd64", false).await;
    let (_tmp, cache) = new_cache();
    // The test registry speaks plain HTTP: without `insecure` the TLS handshake fails.
    let err = cache
        .pull(&reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(
        err.to_string().starts_with(&format!("registry {reg}")),
        "{err}"
    );
}

#[tokio::test]
async fn insecure_skip_tls_verify_accepts_a_self_signed_registry() {
    let reg = image_support::registry_tls();
    let reference = format!("{reg}/{}:{KVER}", unique_repo("selfsigned"));
    image_support::push_image_tls(&reference, &[kmod_layer("brd", b"over tls")]).await;
    let (_tmp, cache) = new_cache();
    // Verification on (the default): the self-signed certificate is refused.
    let err = cache
        .pull(&reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // insecureSkipTLSVerify: HTTPS without verification.
    let skip = PullOptions {
        tls: RegistryTls {
            insecure: false,
            insecure_skip_tls_verify: true,
        },
        ..PullOptions::default()
    };
    let pulled = cache.pull(&reference, &skip).await.unwrap();
    assert_eq!(
        fs::read(module_path(&pulled.root, "brd")).unwrap(),
        b"over tls"
    );
}
