//! Push to a real registry (Debian's docker-registry, started per test on a free
//! port) and read everything back with oci-client. Needs the `docker-registry`
//! and `kmod` Debian packages.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

mod support;

use std::process::Command;

use kmmctl::digest::sha256_digest;
use kmmctl::registry::{RegistryOptions, fetch_blob, fetch_manifest, parse_reference, push};
use support::{FakeTree, KVER, Registry, build, layer_files};

fn insecure() -> RegistryOptions {
    RegistryOptions {
        insecure: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn pushed_manifest_and_blobs_read_back_identical() {
    let registry = Registry::start();
    let tree = FakeTree::new();
    let image = build(&tree.request(&["alpha"])).image;
    let reference = parse_reference(&format!("{}/kmod/alpha", registry.addr), KVER).unwrap();
    assert_eq!(reference.tag(), Some(KVER));

    let digest = push(&image, &reference, &insecure()).await.unwrap();
    assert_eq!(digest, image.manifest_digest);

    let (manifest, remote_digest) = fetch_manifest(&reference, &insecure()).await.unwrap();
    assert_eq!(remote_digest, image.manifest_digest);
    assert_eq!(manifest, image.manifest);

    let config = fetch_blob(&reference, &image.config_digest, &insecure())
        .await
        .unwrap();
    assert_eq!(config, image.config);
    let layer = fetch_blob(&reference, &image.layer.digest, &insecure())
        .await
        .unwrap();
    assert_eq!(sha256_digest(&layer), image.layer.digest);
    let files = layer_files(&layer);
    assert!(
        files
            .iter()
            .any(|(n, _)| n == &format!("opt/lib/modules/{KVER}/kernel/lib/gamma.ko")),
        "dependency missing from pulled layer"
    );

    // By digest too, and a second push (blobs already there) changes nothing.
    let by_digest = reference.clone_with_digest(digest.clone());
    let (_, d2) = fetch_manifest(&by_digest, &insecure()).await.unwrap();
    assert_eq!(d2, digest);
    assert_eq!(push(&image, &reference, &insecure()).await.unwrap(), digest);
}

#[tokio::test]
async fn https_to_a_plain_http_registry_fails_with_the_registry_named() {
    let registry = Registry::start();
    let tree = FakeTree::new();
    let image = build(&tree.request(&["zeta"])).image;
    let reference = parse_reference(&format!("{}/kmod/zeta:x", registry.addr), KVER).unwrap();
    let err = push(&image, &reference, &RegistryOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&registry.addr), "{err}");
}

#[tokio::test]
async fn cli_push_prints_the_registry_digest_last() {
    let registry = Registry::start();
    let tree = FakeTree::new();
    let target = format!("{}/ns/beta", registry.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_kmmctl"))
        .args(["package", "-k", KVER, "--module-tree"])
        .arg(tree.root())
        .args(["beta", "--push", &target, "--insecure"])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pushed"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let digest = stdout.lines().last().unwrap();

    // The tag defaulted to the kernel version.
    let reference = parse_reference(&format!("{target}:{KVER}"), KVER).unwrap();
    let (manifest, remote) = fetch_manifest(&reference, &insecure()).await.unwrap();
    assert_eq!(remote, digest);
    assert_eq!(sha256_digest(&manifest), digest);
    assert_eq!(
        build(&tree.request(&["beta"])).image.manifest_digest,
        digest
    );
}

#[tokio::test]
async fn auth_file_credentials_are_used_and_missing_ones_rejected() {
    let registry = Registry::start_with_auth(Some(("kmm", "s3cret")));
    let tree = FakeTree::new();
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("config.json");
    // base64("kmm:s3cret")
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"a21tOnMzY3JldA=="}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    let target = format!("{}/private/gamma:v1", registry.addr);
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kmmctl"))
            .args(["package", "-k", KVER, "--module-tree"])
            .arg(tree.root())
            .args(["gamma", "--push", &target, "--insecure"])
            .args(extra)
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("KMMCTL_USERNAME")
            .env_remove("KMMCTL_PASSWORD")
            .output()
            .unwrap()
    };

    let anonymous = run(&[]);
    assert!(
        !anonymous.status.success(),
        "push without credentials must fail"
    );
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    eprintln!("anonymous push: {stderr}");
    assert!(
        stderr.contains(&format!("registry {}", registry.addr)),
        "{stderr}"
    );

    let with_file = run(&["--auth-file", auth_file.to_str().unwrap()]);
    assert!(
        with_file.status.success(),
        "{}",
        String::from_utf8_lossy(&with_file.stderr)
    );
    let digest = String::from_utf8(with_file.stdout).unwrap();
    let digest = digest.lines().last().unwrap().to_string();

    let with_flags = run(&["--username", "kmm", "--password", "s3cret"]);
    assert!(
        with_flags.status.success(),
        "{}",
        String::from_utf8_lossy(&with_flags.stderr)
    );
    assert_eq!(
        String::from_utf8(with_flags.stdout).unwrap().lines().last(),
        Some(digest.as_str())
    );

    let opts = RegistryOptions {
        insecure: true,
        auth: oci_client::secrets::RegistryAuth::Basic("kmm".into(), "s3cret".into()),
        ..Default::default()
    };
    let (_, remote) = fetch_manifest(&parse_reference(&target, KVER).unwrap(), &opts)
        .await
        .unwrap();
    assert_eq!(remote, digest);
}
