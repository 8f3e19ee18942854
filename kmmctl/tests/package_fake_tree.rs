//! `kmmctl package` on a fake module tree: dependency closure, layer layout,
//! reproducibility, and error messages. Needs depmod (Debian package kmod).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

mod support;

use std::process::Command;

use kmmctl::package::{FirmwareInput, package};
use support::{FakeTree, KVER, build, depmod, elf, layer_files};

/// The error and all its causes, as `{:#}` of anyhow prints them.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out = format!("{out}: {e}");
        cur = e.source();
    }
    out
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<String> {
    files.iter().map(|(n, _)| n.clone()).collect()
}

#[test]
fn closure_includes_all_dependencies_once_deps_first() {
    let tree = FakeTree::new();
    let out = build(&tree.request(&["alpha", "foo_bar"]));
    assert_eq!(out.modules, ["gamma", "beta", "alpha", "foo_bar"]);
}

#[test]
fn layer_has_modules_indexes_and_builtins_under_dir_name() {
    let tree = FakeTree::new();
    let out = build(&tree.request(&["alpha", "foo-bar"]));
    let files = layer_files(&out.image.layer.blob);
    let m = format!("opt/lib/modules/{KVER}");
    let expected: Vec<String> = [
        "opt/".to_string(),
        "opt/lib/".into(),
        "opt/lib/modules/".into(),
        format!("{m}/"),
        format!("{m}/kernel/"),
        format!("{m}/kernel/drivers/"),
        format!("{m}/kernel/drivers/misc/"),
        format!("{m}/kernel/drivers/misc/alpha.ko"),
        format!("{m}/kernel/drivers/misc/beta.ko"),
        format!("{m}/kernel/fs/"),
        format!("{m}/kernel/fs/foo-bar.ko"),
        format!("{m}/kernel/lib/"),
        format!("{m}/kernel/lib/gamma.ko"),
        format!("{m}/modules.alias"),
        format!("{m}/modules.alias.bin"),
        format!("{m}/modules.builtin"),
        format!("{m}/modules.builtin.alias.bin"),
        format!("{m}/modules.builtin.bin"),
        format!("{m}/modules.builtin.modinfo"),
        format!("{m}/modules.dep"),
        format!("{m}/modules.dep.bin"),
        format!("{m}/modules.devname"),
        format!("{m}/modules.order"),
        format!("{m}/modules.softdep"),
        format!("{m}/modules.symbols"),
        format!("{m}/modules.symbols.bin"),
    ]
    .into();
    assert_eq!(names(&files), expected);
    assert_eq!(out.image.layer.entries, expected);

    let get = |name: &str| {
        files
            .iter()
            .find(|(n, _)| n == &format!("{m}/{name}"))
            .map(|(_, d)| d.clone())
            .unwrap()
    };
    // The .ko.xz was decompressed; the others are copied byte for byte.
    assert_eq!(get("kernel/fs/foo-bar.ko"), elf(b"foo-bar"));
    assert_eq!(get("kernel/drivers/misc/alpha.ko"), elf(b"alpha"));
    // modules.order keeps the tree's order, only for shipped modules, without .xz.
    assert_eq!(
        String::from_utf8(get("modules.order")).unwrap(),
        "kernel/lib/gamma.ko\nkernel/fs/foo-bar.ko\nkernel/drivers/misc/beta.ko\nkernel/drivers/misc/alpha.ko\n"
    );
    assert_eq!(get("modules.builtin"), b"kernel/fs/ext4/ext4.ko\n");
    // depmod indexed exactly the shipped modules.
    let dep = String::from_utf8(get("modules.dep")).unwrap();
    let mut indexed: Vec<&str> = dep.lines().map(|l| l.split(':').next().unwrap()).collect();
    indexed.sort();
    assert_eq!(
        indexed,
        [
            "kernel/drivers/misc/alpha.ko",
            "kernel/drivers/misc/beta.ko",
            "kernel/fs/foo-bar.ko",
            "kernel/lib/gamma.ko"
        ]
    );
}

#[test]
fn config_and_manifest_have_kmod_labels_and_oci_media_types() {
    let tree = FakeTree::new();
    let mut req = tree.request(&["alpha"]);
    req.labels.insert("team".into(), "storage".into());
    let out = build(&req);
    let config: serde_json::Value = serde_json::from_slice(&out.image.config).unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert!(
        config.get("created").is_none(),
        "no timestamp without SOURCE_DATE_EPOCH"
    );
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["io.k8s.kmod.kernel-release"], KVER);
    assert_eq!(labels["io.k8s.kmod.modules"], "alpha");
    assert_eq!(labels["io.k8s.kmod.path"], "/opt");
    assert_eq!(labels["team"], "storage");
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        out.image.layer.diff_id.as_str()
    );

    let manifest: serde_json::Value = serde_json::from_slice(&out.image.manifest).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(
        manifest["config"]["digest"],
        out.image.config_digest.as_str()
    );
    assert_eq!(manifest["config"]["size"], out.image.config.len());
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(layers[0]["digest"], out.image.layer.digest.as_str());
}

#[test]
fn same_inputs_give_the_same_manifest_digest() {
    let tree = FakeTree::new();
    let req = tree.request(&["alpha", "foo_bar"]);
    let first = build(&req);
    // Fresh mtimes on the sources must not leak into the image.
    let src = tree.moddir().join("kernel/lib/gamma.ko");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let second = build(&req);
    assert_eq!(first.image.manifest_digest, second.image.manifest_digest);
    assert_eq!(first.image.manifest, second.image.manifest);
    assert_eq!(first.image.layer.blob, second.image.layer.blob);
}

#[test]
fn digest_changes_when_an_input_changes() {
    let tree = FakeTree::new();
    let req = tree.request(&["alpha"]);
    let base = build(&req).image.manifest_digest;

    // A dependency's bytes.
    tree.module("kernel/lib/gamma.ko", b"gamma v2");
    let changed_module = build(&req).image.manifest_digest;
    assert_ne!(base, changed_module);

    // A label.
    let mut labelled = req.clone();
    labelled.labels.insert("x".into(), "y".into());
    assert_ne!(build(&labelled).image.manifest_digest, changed_module);

    // The dirName.
    let mut dir = req.clone();
    dir.dir_name = "/usr/lib/kmm".into();
    let out = build(&dir);
    assert_ne!(out.image.manifest_digest, changed_module);
    assert!(
        out.image
            .layer
            .entries
            .iter()
            .any(|e| e == "usr/lib/kmm/lib/modules/")
    );

    // SOURCE_DATE_EPOCH sets mtimes and `created`.
    let mut dated = req.clone();
    dated.source_date_epoch = Some(1_700_000_000);
    let out = build(&dated);
    assert_ne!(out.image.manifest_digest, changed_module);
    let config: serde_json::Value = serde_json::from_slice(&out.image.config).unwrap();
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        build(&dated).image.manifest_digest,
        out.image.manifest_digest
    );
}

#[test]
fn unknown_module_error_names_the_modules_dep_file() {
    let tree = FakeTree::new();
    let err = package(&tree.request(&["alpha", "nosuch"]), &depmod()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "module 'nosuch' not found in {}",
            tree.moddir().join("modules.dep").display()
        )
    );
}

#[test]
fn builtin_module_error_says_it_is_built_in() {
    let tree = FakeTree::new();
    let err = package(&tree.request(&["ext4"]), &depmod()).unwrap_err();
    assert!(err.to_string().contains("built into kernel"), "{err}");
}

#[test]
fn missing_modules_dep_is_generated_with_depmod() {
    let tree = FakeTree::new();
    std::fs::remove_file(tree.moddir().join("modules.dep")).unwrap();
    let out = build(&tree.request(&["zeta"]));
    assert!(tree.moddir().join("modules.dep").exists());
    assert_eq!(out.modules, ["zeta"]);
}

#[test]
fn missing_depmod_binary_is_a_clear_error() {
    let tree = FakeTree::new();
    let bogus = kmmctl::depmod::Depmod::with_program("/nonexistent/depmod");
    let err = package(&tree.request(&["zeta"]), &bogus).unwrap_err();
    let chain = error_chain(&err);
    assert!(chain.contains("cannot run /nonexistent/depmod"), "{chain}");
}

#[test]
fn explicit_ko_files_and_firmware_land_in_their_directories() {
    let dir = tempfile::tempdir().unwrap();
    let ko = dir.path().join("my-mod.ko");
    std::fs::write(&ko, elf(b"mine")).unwrap();
    let fw = dir.path().join("fw.bin");
    std::fs::write(&fw, b"firmware").unwrap();
    let mut req = kmmctl::package::PackageRequest::new(KVER);
    req.ko_files = vec![ko];
    req.firmware = vec![
        FirmwareInput {
            source: fw.clone(),
            dest: None,
        },
        format!("{}=vendor/dev.bin", fw.display()).parse().unwrap(),
    ];
    let out = build(&req);
    assert_eq!(out.modules, ["my_mod"]);
    let files = layer_files(&out.image.layer.blob);
    let names = names(&files);
    let m = format!("opt/lib/modules/{KVER}");
    for want in [
        format!("{m}/extra/my-mod.ko"),
        format!("{m}/modules.dep"),
        "firmware/".into(),
        "firmware/fw.bin".into(),
        "firmware/vendor/dev.bin".into(),
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // No tree, so no builtin lists to copy (depmod still writes its empty .bin indexes).
    assert!(
        !names.contains(&format!("{m}/modules.builtin")),
        "{names:?}"
    );
    assert!(
        !names.contains(&format!("{m}/modules.builtin.modinfo")),
        "{names:?}"
    );
    let order = files
        .iter()
        .find(|(n, _)| n == &format!("{m}/modules.order"))
        .unwrap();
    assert_eq!(order.1, b"extra/my-mod.ko\n");
}

#[test]
fn cli_writes_oci_layout_and_prints_the_digest_last() {
    let tree = FakeTree::new();
    let oci = tempfile::tempdir().unwrap();
    let layout = oci.path().join("img");
    let out = Command::new(env!("CARGO_BIN_EXE_kmmctl"))
        .args(["package", "--kernel-version", KVER, "--module-tree"])
        .arg(tree.root())
        .args(["beta", "--label", "a=b", "--oci-dir"])
        .arg(&layout)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let digest = stdout.lines().last().unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{stdout}"
    );

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        KVER
    );
    let blob = layout.join("blobs/sha256").join(&digest[7..]);
    let manifest = std::fs::read(blob).unwrap();
    assert_eq!(kmmctl::digest::sha256_digest(&manifest), digest);
    assert!(layout.join("oci-layout").exists());

    // Same request through the library gives the same digest as the CLI.
    let mut req = tree.request(&["beta"]);
    req.labels.insert("a".into(), "b".into());
    assert_eq!(build(&req).image.manifest_digest, digest);
}

#[test]
fn cli_reports_unknown_module_on_stderr_and_fails() {
    let tree = FakeTree::new();
    let out = Command::new(env!("CARGO_BIN_EXE_kmmctl"))
        .args(["package", "-k", KVER, "--module-tree"])
        .arg(tree.root())
        .arg("foo")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "module 'foo' not found in {}",
            tree.moddir().join("modules.dep").display()
        )),
        "{stderr}"
    );
}
