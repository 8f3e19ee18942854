//! The agent's real `LibKmod` against Debian's real 6.1 kernel, in a QEMU guest.
//!
//! `kmodctl` (agent/examples/kmodctl.rs, a thin CLI over `kmm_agent::kernel`) runs
//! inside the guest; module trees are staged on the host exactly as a kmod image
//! lays them out and shared over 9p. Needs qemu-system-x86, busybox-static, kmod,
//! cpio and apt access to the Debian archive (kernel package, cached).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Result;
use kmm_tests::vm::artifacts::cargo_artifact;
use kmm_tests::vm::stage::{stage_modules, strip_signature};
use kmm_tests::vm::{InitramfsSpec, KernelArtifacts, VmNode, VmOptions};

/// Kernel, initramfs and the host's kmodctl, prepared once for all tests of this file.
struct Prepared {
    kernel: KernelArtifacts,
    initramfs: PathBuf,
    kmodctl: PathBuf,
}

fn prepared() -> &'static Prepared {
    static PREPARED: OnceLock<Prepared> = OnceLock::new();
    PREPARED.get_or_init(|| {
        let t = Instant::now();
        let kernel = KernelArtifacts::fetch().unwrap();
        let kmodctl = cargo_artifact(
            "examples/kmodctl",
            &["-p", "kmm-agent", "--example", "kmodctl"],
        )
        .unwrap();
        let initramfs = InitramfsSpec {
            binaries: vec![kmodctl.clone()],
            ..InitramfsSpec::default()
        }
        .build(&kernel)
        .unwrap();
        println!("prepare (kernel, kmodctl, initramfs): {:.1?}", t.elapsed());
        Prepared {
            kernel,
            initramfs,
            kmodctl,
        }
    })
}

/// Stages images under `share/images/<name>/opt` and boots a guest sharing them.
struct Lab {
    vm: VmNode,
    release: String,
    share: tempfile::TempDir,
}

impl Lab {
    async fn boot(
        images: &[(&str, &[&str])],
        setup: impl FnOnce(&Path),
        append: &[&str],
        forward: &[(u16, u16)],
    ) -> Result<Self> {
        let Prepared {
            kernel, initramfs, ..
        } = tokio::task::spawn_blocking(prepared).await?;
        let share = tempfile::tempdir()?;
        for (name, modules) in images {
            stage_modules(
                kernel,
                &share.path().join("images").join(name),
                "/opt",
                modules,
            )?;
        }
        setup(share.path());
        let mut opts = VmOptions::new(kernel.clone(), initramfs.clone());
        opts.share = Some(share.path().to_path_buf());
        opts.forward = forward.to_vec();
        opts.append = append.iter().map(|s| (*s).to_owned()).collect();
        let vm = VmNode::boot(opts).await?;
        println!("boot to ready: {:.1?}", vm.boot_time());
        Ok(Self {
            vm,
            release: kernel.release.clone(),
            share,
        })
    }

    /// The module directory of image `name` as the guest sees it.
    fn dir(&self, name: &str) -> String {
        format!("/host/images/{name}/opt/lib/modules/{}", self.release)
    }

    /// Runs a command that must succeed, timing it.
    async fn ok(&self, phase: &str, script: &str) -> String {
        let t = Instant::now();
        let out = self.vm.run_ok(script).await.unwrap();
        println!("{phase}: {:.0?} (host wall) | {}", t.elapsed(), out.trim());
        out
    }

    /// Runs a command that must fail; returns its output.
    async fn fails(&self, script: &str) -> String {
        let out = self.vm.run(script).await.unwrap();
        assert_ne!(
            out.rc, 0,
            "expected a failure from {script}, got:\n{}",
            out.output
        );
        out.output
    }

    async fn loaded(&self, module: &str) -> bool {
        self.vm
            .run(&format!("test -e /sys/module/{module}/initstate"))
            .await
            .unwrap()
            .rc
            == 0
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn libkmod_loads_and_unloads_real_modules_in_a_real_kernel() {
    let total = Instant::now();
    let forward_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lab = Lab::boot(
        &[
            ("brd", &["brd"]),
            ("nullblk", &["null_blk"]),
            ("pair", &["brd", "dummy"]),
        ],
        |share| {
            let fw = share.join("images/fw/firmware/kmm-test");
            std::fs::create_dir_all(fw.join("sub")).unwrap();
            std::fs::write(fw.join("blob.bin"), b"kmm firmware blob\n").unwrap();
            std::fs::write(fw.join("sub/nested.bin"), b"nested\n").unwrap();
        },
        &[],
        &[(forward_port, 9090)],
    )
    .await
    .unwrap();

    // brd with parameters, read back from sysfs
    let out = lab
        .ok(
            "load brd",
            &format!(
                "kmodctl load --dir {} brd rd_nr=3 rd_size=2048",
                lab.dir("brd")
            ),
        )
        .await;
    assert!(out.contains("inserted=brd "), "{out}");
    assert_eq!(
        lab.ok("read params", "cat /sys/module/brd/parameters/rd_nr")
            .await
            .trim(),
        "3"
    );
    assert_eq!(
        lab.vm
            .run_ok("cat /sys/module/brd/parameters/rd_size")
            .await
            .unwrap()
            .trim(),
        "2048"
    );
    lab.ok(
        "devices",
        "ls /dev/ram0 /dev/ram1 /dev/ram2 && ! test -e /dev/ram3",
    )
    .await;
    // idempotent
    let out = lab
        .ok(
            "load brd again",
            &format!("kmodctl load --dir {} brd", lab.dir("brd")),
        )
        .await;
    assert!(out.contains("inserted= already_loaded=true"), "{out}");

    let out = lab.ok("unload brd", "kmodctl unload brd").await;
    assert!(out.contains("removed=brd "), "{out}");
    assert!(!lab.loaded("brd").await);
    lab.ok(
        "brd gone",
        "! test -e /sys/module/brd && ! grep -q '^brd ' /proc/modules",
    )
    .await;

    // a dependency resolved by libkmod from the image's modules.dep
    let out = lab
        .ok(
            "load null_blk",
            &format!(
                "kmodctl load --dir {} null_blk nr_devices=1",
                lab.dir("nullblk")
            ),
        )
        .await;
    assert!(out.contains("inserted=configfs,null_blk "), "{out}");
    assert_eq!(
        lab.vm
            .run_ok("ls /sys/module/configfs/holders")
            .await
            .unwrap()
            .trim(),
        "null_blk"
    );
    // in use: a removal request for the dependency names its user
    let err = lab.fails("kmodctl remove-in-tree configfs").await;
    assert!(
        err.contains("could not remove configfs: in use by null_blk"),
        "{err}"
    );
    let out = lab.ok("unload null_blk", "kmodctl unload null_blk").await;
    assert!(out.contains("removed=null_blk,configfs "), "{out}");
    assert!(!lab.loaded("configfs").await && !lab.loaded("null_blk").await);

    // a dependency that was there before us stays when we unload only what we inserted
    lab.ok(
        "configfs first",
        &format!("kmodctl load --dir {} configfs", lab.dir("nullblk")),
    )
    .await;
    let out = lab
        .ok(
            "load null_blk over configfs",
            &format!("kmodctl load --dir {} null_blk", lab.dir("nullblk")),
        )
        .await;
    assert!(out.contains("inserted=null_blk "), "{out}");
    let out = lab
        .ok(
            "unload only ours",
            "kmodctl unload --only-deps null_blk null_blk",
        )
        .await;
    assert!(out.contains("removed=null_blk "), "{out}");
    assert!(lab.loaded("configfs").await && !lab.loaded("null_blk").await);
    lab.ok("unload configfs", "kmodctl unload configfs").await;

    // modulesLoadingOrder [dummy, brd]: brd first, then dummy; unload in list order
    let out = lab
        .ok(
            "load order",
            &format!(
                "kmodctl load --dir {} --order dummy,brd dummy",
                lab.dir("pair")
            ),
        )
        .await;
    assert!(out.contains("inserted=brd,dummy "), "{out}");
    // /proc/modules lists the newest first
    let order = lab
        .vm
        .run_ok("grep -E '^(brd|dummy) ' /proc/modules | cut -d' ' -f1")
        .await
        .unwrap();
    assert_eq!(
        order.split_whitespace().collect::<Vec<_>>(),
        ["dummy", "brd"]
    );
    let out = lab.ok("unload order", "kmodctl unload dummy brd").await;
    assert!(out.contains("removed=dummy,brd "), "{out}");

    // inTreeModulesToRemove: loop comes from the guest's own /lib/modules
    lab.ok(
        "modprobe loop (in-tree)",
        "/sbin/modprobe loop && test -e /sys/module/loop/initstate",
    )
    .await;
    let out = lab
        .ok("remove in-tree loop", "kmodctl remove-in-tree loop")
        .await;
    assert!(out.contains("removed=loop "), "{out}");
    assert!(!lab.loaded("loop").await);
    let out = lab
        .ok("remove in-tree again", "kmodctl remove-in-tree loop")
        .await;
    assert!(out.contains("removed= "), "{out}");
    // loading and unloading our module does not bring it back
    lab.ok(
        "load+unload brd",
        &format!(
            "kmodctl load --dir {} brd && kmodctl unload brd",
            lab.dir("brd")
        ),
    )
    .await;
    assert!(!lab.loaded("loop").await);

    // firmware into the node's firmware dir, and the loader pointed at it
    let out = lab
        .ok(
            "firmware",
            "kmodctl firmware /host/images/fw/firmware /var/lib/firmware --class-path",
        )
        .await;
    assert!(out.contains("firmware installed=2 skipped=0"), "{out}");
    assert_eq!(
        lab.vm
            .run_ok("cat /var/lib/firmware/kmm-test/blob.bin")
            .await
            .unwrap(),
        "kmm firmware blob\n"
    );
    assert_eq!(
        lab.vm
            .run_ok("cat /var/lib/firmware/kmm-test/sub/nested.bin")
            .await
            .unwrap(),
        "nested\n"
    );
    assert_eq!(
        lab.vm
            .run_ok("cat /sys/module/firmware_class/parameters/path")
            .await
            .unwrap()
            .trim(),
        "/var/lib/firmware"
    );

    // the host's loopback is 10.0.2.2 for the guest (where the API server and the
    // registry of the e2e tests listen); a background process logs to /tmp
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut conn, _) = listener.accept().await.unwrap();
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nfrom-host")
            .await
            .unwrap();
    });
    lab.vm
        .spawn_background("fetch", &format!("wget -q -O- http://10.0.2.2:{port}/"))
        .await
        .unwrap();
    server.await.unwrap();
    let mut fetched = String::new();
    for _ in 0..50 {
        fetched = lab.vm.log_of("fetch").await.unwrap();
        if !fetched.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        fetched, "from-host",
        "guest could not reach the host at 10.0.2.2"
    );

    // and a guest port forwarded to the host (how a test reaches the agent's server)
    lab.vm
        .spawn_background("serve", "echo from-guest | nc -l -p 9090")
        .await
        .unwrap();
    let mut got = String::new();
    for _ in 0..50 {
        if let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", forward_port)).await {
            use tokio::io::AsyncReadExt;
            got.clear();
            let _ = conn.read_to_string(&mut got).await;
            if !got.is_empty() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        got, "from-guest\n",
        "host could not reach the forwarded guest port"
    );

    let lsmod = lab
        .ok(
            "lsmod",
            "kmodctl lsmod | cut -d' ' -f1 | sort | tr '\\n' ' '",
        )
        .await;
    for gone in ["brd", "dummy", "null_blk", "configfs", "loop"] {
        assert!(
            !lsmod.split_whitespace().any(|m| m == gone),
            "{gone} still loaded: {lsmod}"
        );
    }
    let t = Instant::now();
    lab.vm.shutdown().await.unwrap();
    println!(
        "shutdown: {:.1?}; total: {:.1?}",
        t.elapsed(),
        total.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn libkmod_errors_from_a_real_kernel_are_readable() {
    let lab = Lab::boot(
        &[("brd", &["brd"]), ("nullblk", &["null_blk"])],
        |share| {
            // an unsigned copy of brd: what an unsigned out-of-tree build looks like
            let kernel = &prepared().kernel;
            let dir = share
                .join("images/unsigned/opt/lib/modules")
                .join(&kernel.release);
            let ko = "kernel/drivers/block/brd.ko";
            let signed = std::fs::read(kernel.modules_dir().join(ko)).unwrap();
            std::fs::create_dir_all(dir.join("kernel/drivers/block")).unwrap();
            std::fs::write(dir.join(ko), strip_signature(&signed).unwrap()).unwrap();
            kmm_tests::vm::stage::depmod(&share.join("images/unsigned/opt"), &kernel.release)
                .unwrap();
            // an image built without depmod
            std::fs::create_dir_all(
                share
                    .join("images/nodep/opt/lib/modules")
                    .join(&kernel.release),
            )
            .unwrap();
        },
        &["module.sig_enforce=1"],
        &[],
    )
    .await
    .unwrap();

    let err = lab
        .fails(&format!("kmodctl load --dir {} brd", lab.dir("unsigned")))
        .await;
    assert!(
        err.contains("could not insert brd: Key was rejected by service"),
        "{err}"
    );

    let err = lab
        .fails(&format!(
            "kmodctl load --dir {} brd rd_nr=many",
            lab.dir("brd")
        ))
        .await;
    assert!(
        err.contains("could not insert brd: Invalid parameters [rd_nr=many]"),
        "{err}"
    );

    // unknown parameter names are not an error for the kernel: ignored, with a warning
    lab.ok(
        "unknown param",
        &format!(
            "kmodctl load --dir {} brd no_such_param=1 && kmodctl unload brd",
            lab.dir("brd")
        ),
    )
    .await;
    let dmesg = lab.vm.run_ok("dmesg | grep no_such_param").await.unwrap();
    assert!(
        dmesg.contains("unknown parameter 'no_such_param' ignored"),
        "{dmesg}"
    );

    let err = lab
        .fails(&format!("kmodctl load --dir {} dummy", lab.dir("brd")))
        .await;
    assert!(
        err.contains(&format!("module dummy not found in {}", lab.dir("brd"))),
        "{err}"
    );

    let err = lab
        .fails(&format!("kmodctl load --dir {} brd", lab.dir("nodep")))
        .await;
    assert!(
        err.contains(&format!(
            "image has no modules.dep under {}; was depmod run when building it?",
            lab.dir("nodep")
        )),
        "{err}"
    );

    // inTreeModulesToRemove naming a built-in module (unix is =y in Debian's 6.1)
    let err = lab.fails("kmodctl remove-in-tree unix").await;
    assert!(
        err.contains("could not remove unix: it is built into the kernel"),
        "{err}"
    );
    // ... and loading a built-in one is a no-op, like modprobe
    let out = lab
        .ok(
            "builtin",
            &format!("kmodctl load --dir {} unix", lab.dir("brd")),
        )
        .await;
    assert!(out.contains("inserted= already_loaded=true"), "{out}");

    // a failed main module rolls back the dependency this load inserted
    let err = lab
        .fails(&format!(
            "kmodctl load --dir {} null_blk gb=notanumber",
            lab.dir("nullblk")
        ))
        .await;
    assert!(err.contains("Invalid parameters [gb=notanumber]"), "{err}");
    assert!(
        !lab.loaded("configfs").await,
        "configfs left behind after a failed load"
    );
    assert!(!lab.loaded("brd").await);

    // the signed module from the same kernel build still loads under sig_enforce
    lab.ok(
        "signed brd",
        &format!(
            "kmodctl load --dir {} brd && kmodctl unload brd",
            lab.dir("brd")
        ),
    )
    .await;
    lab.vm.shutdown().await.unwrap();
}

/// Replaces `from` with `to` (same length) in `<dir>/modules.dep` and in the
/// binary index libkmod reads, as a hostile image could ship them.
fn patch_modules_dep(dir: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len(), "{to:?} must be as long as {from:?}");
    for f in ["modules.dep", "modules.dep.bin"] {
        let path = dir.join(f);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap_or_else(|| panic!("{from} not in {}", path.display()));
        bytes[at..at + from.len()].copy_from_slice(to.as_bytes());
        std::fs::write(&path, bytes).unwrap();
    }
}

/// `prefix`, then as many `/` as make it `len` long with `suffix` (a path
/// that reads the same).
fn padded(prefix: &str, suffix: &str, len: usize) -> String {
    format!(
        "{prefix}{}{suffix}",
        "/".repeat(len - prefix.len() - suffix.len())
    )
}

/// Images whose `modules.dep.bin` names a file outside the image (absolute,
/// `../`), or whose module is a symlink out of it: libkmod would open the host
/// file as written, so the agent must refuse before `insert_module`. And the
/// srcversion the agent reads of a loaded module and of an image's file.
#[tokio::test(flavor = "multi_thread")]
async fn libkmod_refuses_module_files_outside_the_image_and_reads_srcversions() {
    const BRD: &str = "kernel/drivers/block/brd.ko";
    let lab = Lab::boot(
        &[
            ("abs", &["brd"]),
            ("dotdot", &["brd"]),
            ("link", &["brd"]),
            ("nullblk", &["null_blk"]),
        ],
        |share| {
            let kernel = &prepared().kernel;
            let brd = kernel.modules_dir().join(BRD);
            // host files (the guest sees the share at /host): /host/out/brd.ko, /host/images/brd.ko
            std::fs::create_dir_all(share.join("out")).unwrap();
            std::fs::copy(&brd, share.join("out/brd.ko")).unwrap();
            std::fs::copy(&brd, share.join("images/brd.ko")).unwrap();
            let dir = |img: &str| {
                share
                    .join("images")
                    .join(img)
                    .join("opt/lib/modules")
                    .join(&kernel.release)
            };
            // absolute: /host/out////...brd.ko
            patch_modules_dep(&dir("abs"), BRD, &padded("/host/out/", "brd.ko", BRD.len()));
            std::fs::remove_file(dir("abs").join(BRD)).unwrap();
            // ../ from /host/images/dotdot/opt/lib/modules/<kver> up to /host/images
            patch_modules_dep(
                &dir("dotdot"),
                BRD,
                &padded("../../../../../", "brd.ko", BRD.len()),
            );
            std::fs::remove_file(dir("dotdot").join(BRD)).unwrap();
            // the image's module is a symlink to a host file
            std::fs::remove_file(dir("link").join(BRD)).unwrap();
            std::os::unix::fs::symlink("/host/out/brd.ko", dir("link").join(BRD)).unwrap();
        },
        &[],
        &[],
    )
    .await
    .unwrap();

    for img in ["abs", "dotdot", "link"] {
        let err = lab
            .fails(&format!("kmodctl load --dir {} brd", lab.dir(img)))
            .await;
        assert!(
            err.contains("refusing to insert brd: its modules.dep entry")
                && err.contains("outside the image directory"),
            "{img}: {err}"
        );
        assert!(!lab.loaded("brd").await, "{img}: brd was inserted");
        let err = lab
            .fails(&format!(
                "kmodctl file-srcversion --dir {} brd",
                lab.dir(img)
            ))
            .await;
        assert!(err.contains("refusing to insert brd"), "{img}: {err}");
    }

    // configfs carries a srcversion (MODULE_VERSION), null_blk does not
    let configfs = prepared()
        .kernel
        .modules_dir()
        .join("kernel/fs/configfs/configfs.ko");
    let want = kmm_agent::kernel::modinfo::srcversion(&std::fs::read(configfs).unwrap())
        .expect("Debian's configfs.ko has a srcversion");
    let file = lab
        .ok(
            "file srcversion",
            &format!(
                "kmodctl file-srcversion --dir {} configfs",
                lab.dir("nullblk")
            ),
        )
        .await;
    assert!(
        file.contains(&format!("configfs file-srcversion={want} ")),
        "{file}"
    );
    lab.ok(
        "load null_blk",
        &format!("kmodctl load --dir {} null_blk", lab.dir("nullblk")),
    )
    .await;
    let loaded = lab.ok("srcversion", "kmodctl srcversion configfs").await;
    assert!(
        loaded.contains(&format!("configfs srcversion={want} ")),
        "{loaded}"
    );
    assert_eq!(
        lab.ok("sysfs", "cat /sys/module/configfs/srcversion")
            .await
            .trim(),
        want
    );
    let none = lab.ok("no srcversion", "kmodctl srcversion null_blk").await;
    assert!(none.contains("null_blk srcversion=none "), "{none}");
    lab.ok("unload", "kmodctl unload null_blk").await;
    lab.vm.shutdown().await.unwrap();
}

/// The same command script, run by `LibKmod` in the guest and by
/// `SimulatedKernel` on the host against the same staged images, must print
/// the same results: the simulation is only as useful as it is faithful.
#[tokio::test(flavor = "multi_thread")]
async fn simulated_kernel_matches_libkmod_on_the_same_images() {
    let lab = Lab::boot(
        &[
            ("brd", &["brd"]),
            ("nullblk", &["null_blk"]),
            ("pair", &["brd", "dummy"]),
        ],
        |share| {
            let kernel = &prepared().kernel;
            std::fs::create_dir_all(
                share
                    .join("images/nodep/opt/lib/modules")
                    .join(&kernel.release),
            )
            .unwrap();
        },
        &[],
        &[],
    )
    .await
    .unwrap();
    let k = &lab.release;
    let script = format!(
        "load --dir @IMG@/nullblk/opt/lib/modules/{k} null_blk nr_devices=1
         load --dir @IMG@/nullblk/opt/lib/modules/{k} null_blk
         is-loaded configfs
         srcversion configfs
         srcversion null_blk
         file-srcversion --dir @IMG@/nullblk/opt/lib/modules/{k} configfs
         remove-in-tree configfs
         unload configfs
         load --dir @IMG@/pair/opt/lib/modules/{k} --order dummy,brd dummy
         unload brd
         unload dummy brd
         load --dir @IMG@/nullblk/opt/lib/modules/{k} configfs
         unload --only-deps null_blk null_blk
         is-loaded configfs
         unload configfs
         unload null_blk
         load --dir @IMG@/brd/opt/lib/modules/{k} null_blk
         load --dir @IMG@/nodep/opt/lib/modules/{k} brd
         load --dir @IMG@/pair/opt/lib/modules/{k} --order brd,dummy dummy
         load --dir @IMG@/pair/opt/lib/modules/{k} --order dummy,brd,dummy dummy
         unload dummy brd
         remove-in-tree not_loaded_anywhere
         is-loaded brd
         load --dir @IMG@/brd/opt/lib/modules/{k} bad/name
         remove-in-tree unix
"
    );
    let guest_script = script.replace("@IMG@", "/host/images");
    let guest = lab
        .vm
        .run_ok(&format!(
            "kmodctl script <<'KMM_EOF'\n{guest_script}KMM_EOF"
        ))
        .await
        .unwrap()
        .replace("/host/images", "@IMG@");

    let host_images = lab.share.path().join("images");
    let host_images = host_images.to_str().unwrap();
    let host_script = script.replace("@IMG@", host_images);
    let kmodctl = prepared().kmodctl.clone();
    let host = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(kmodctl)
            .args(["--simulated", "script"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(host_script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
    .replace(host_images, "@IMG@");
    println!("--- libkmod in the guest ---\n{guest}");
    // built-ins: the guest knows unix from modules.builtin, the simulation only
    // from add_builtin, which kmodctl does not call; compare everything else
    let (guest_main, guest_builtin) = guest.split_once("> remove-in-tree unix").unwrap();
    let (host_main, _) = host.split_once("> remove-in-tree unix").unwrap();
    assert_eq!(
        guest_main, host_main,
        "simulated kernel diverges from libkmod"
    );
    assert!(
        guest_builtin.contains("it is built into the kernel"),
        "{guest_builtin}"
    );
    assert_eq!(guest_main.matches("error: ").count(), 7, "{guest_main}");
    lab.vm.shutdown().await.unwrap();
}
