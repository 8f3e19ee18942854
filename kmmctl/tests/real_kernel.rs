//! `kmmctl package` on a real Debian kernel tree: `brd` and `null_blk`
//! (which depends on `configfs`), checked with the real modprobe and pushed
//! to a real registry.
//!
//! Ignored by default (it needs a Debian kernel tree); `make test` fetches the
//! tree with tests/vm/fetch-kernel.sh and runs it with `--include-ignored`.
//! Run, a missing tree is a failure, never a skip.
//! Tree: `$KMM_KERNEL_TREE` (default `/tmp/lab/kernel`); release:
//! `$KMM_KERNEL_VERSION`, else the only directory under `lib/modules`.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use kmmctl::registry::{RegistryOptions, fetch_manifest, parse_reference};
use support::{Registry, build, layer_files};

struct RealTree {
    root: PathBuf,
    kver: String,
}

fn real_tree() -> RealTree {
    let root = PathBuf::from(
        std::env::var("KMM_KERNEL_TREE").unwrap_or_else(|_| "/tmp/lab/kernel".into()),
    );
    let modules = root.join("lib/modules");
    assert!(
        modules.is_dir(),
        "{} does not exist: fetch the kernel (tests/vm/fetch-kernel.sh) and set KMM_KERNEL_TREE",
        modules.display()
    );
    let kver = std::env::var("KMM_KERNEL_VERSION").unwrap_or_else(|_| {
        let mut dirs: Vec<String> = std::fs::read_dir(&modules)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            dirs.len(),
            1,
            "several kernels in {}: set KMM_KERNEL_VERSION",
            modules.display()
        );
        dirs.remove(0)
    });
    RealTree { root, kver }
}

#[tokio::test]
#[ignore = "needs a Debian kernel tree in $KMM_KERNEL_TREE; make test runs it"]
async fn brd_and_null_blk_with_configfs_package_load_order_and_push() {
    let tree = real_tree();
    let kver = &tree.kver;
    let mut req = kmmctl::package::PackageRequest::new(kver.clone());
    req.module_tree = Some(tree.root.clone());
    req.module_names = vec!["brd".into(), "null-blk".into()];

    let out = build(&req);
    assert_eq!(out.modules, ["brd", "configfs", "null_blk"]);
    assert_eq!(
        build(&req).image.manifest_digest,
        out.image.manifest_digest,
        "not reproducible"
    );

    // Unpack the layer and ask the real modprobe what it would load.
    let files = layer_files(&out.image.layer.blob);
    let unpacked = tempfile::tempdir().unwrap();
    for (name, data) in &files {
        if !name.ends_with('/') {
            support::write(&unpacked.path().join(name), data);
        }
    }
    let m = unpacked.path().join("opt/lib/modules").join(kver);
    let dep = std::fs::read_to_string(m.join("modules.dep")).unwrap();
    assert!(
        dep.lines()
            .any(|l| l
                == "kernel/drivers/block/null_blk/null_blk.ko: kernel/fs/configfs/configfs.ko"),
        "{dep}"
    );
    for f in [
        "modules.dep.bin",
        "modules.alias.bin",
        "modules.symbols.bin",
        "modules.builtin.bin",
    ] {
        assert!(m.join(f).exists(), "{f} missing");
    }
    // Signed modules are shipped unchanged.
    let src = tree
        .root
        .join("lib/modules")
        .join(kver)
        .join("kernel/drivers/block/brd.ko");
    assert_eq!(
        std::fs::read(m.join("kernel/drivers/block/brd.ko")).unwrap(),
        std::fs::read(src).unwrap()
    );
    let show = Command::new("modprobe")
        .arg("-d")
        .arg(unpacked.path().join("opt"))
        .args(["-S", kver, "--show-depends", "null_blk"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let insmods: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|p| p.trim().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(insmods, ["configfs.ko", "null_blk.ko"], "{text}");

    // Package + push through the CLI, timed, then read back.
    let registry = Registry::start();
    let target = format!("{}/kmod/blk:{kver}", registry.addr);
    let started = Instant::now();
    let cli = Command::new(env!("CARGO_BIN_EXE_kmmctl"))
        .args(["package", "-k", kver, "--module-tree"])
        .arg(&tree.root)
        .args(["brd", "null-blk", "--push", &target, "--insecure"])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let stdout = String::from_utf8(cli.stdout).unwrap();
    let digest = stdout.lines().last().unwrap();
    eprintln!(
        "package+push brd,null_blk: {:.3}s -> {digest}",
        elapsed.as_secs_f64()
    );
    assert_eq!(digest, out.image.manifest_digest);
    let opts = RegistryOptions {
        insecure: true,
        ..Default::default()
    };
    let (manifest, remote) = fetch_manifest(&parse_reference(&target, kver).unwrap(), &opts)
        .await
        .unwrap();
    assert_eq!(remote, digest);
    assert_eq!(manifest, out.image.manifest);
}
