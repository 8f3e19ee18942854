//! Shared test helpers: a fake module tree and a real docker-registry process.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kmmctl::depmod::Depmod;
use kmmctl::package::{PackageRequest, Packaged, package};

pub const KVER: &str = "6.1.0-99-test";

/// A fake kernel tree in a temp dir:
/// alpha -> beta -> gamma, alpha -> gamma, foo-bar (xz) standalone,
/// zeta unrelated, ext4 built in. Module files start with an ELF magic.
pub struct FakeTree {
    pub dir: tempfile::TempDir,
}

impl FakeTree {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tree = Self { dir };
        let m = tree.moddir();
        std::fs::create_dir_all(&m).unwrap();
        tree.module("kernel/drivers/misc/alpha.ko", b"alpha");
        tree.module("kernel/drivers/misc/beta.ko", b"beta");
        tree.module("kernel/lib/gamma.ko", b"gamma");
        tree.module("kernel/drivers/misc/zeta.ko", b"zeta");
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &elf(b"foo-bar")[..], &mut xz).unwrap();
        write(&m.join("kernel/fs/foo-bar.ko.xz"), &xz);
        write(
            &m.join("modules.dep"),
            b"kernel/drivers/misc/alpha.ko: kernel/drivers/misc/beta.ko kernel/lib/gamma.ko\n\
              kernel/drivers/misc/beta.ko: kernel/lib/gamma.ko\n\
              kernel/lib/gamma.ko:\n\
              kernel/fs/foo-bar.ko.xz:\n\
              kernel/drivers/misc/zeta.ko:\n",
        );
        write(
            &m.join("modules.order"),
            b"kernel/lib/gamma.ko\nkernel/drivers/misc/zeta.ko\nkernel/fs/foo-bar.ko\n\
              kernel/drivers/misc/beta.ko\nkernel/drivers/misc/alpha.ko\n",
        );
        write(&m.join("modules.builtin"), b"kernel/fs/ext4/ext4.ko\n");
        write(&m.join("modules.builtin.modinfo"), b"ext4.license=GPL\0");
        tree
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn moddir(&self) -> PathBuf {
        self.dir.path().join("lib/modules").join(KVER)
    }

    pub fn module(&self, rel: &str, body: &[u8]) {
        write(&self.moddir().join(rel), &elf(body));
    }

    pub fn request(&self, names: &[&str]) -> PackageRequest {
        let mut req = PackageRequest::new(KVER);
        req.module_tree = Some(self.root().to_path_buf());
        req.module_names = names.iter().map(|s| s.to_string()).collect();
        req
    }
}

/// Fake module contents: an ELF magic and a body.
pub fn elf(body: &[u8]) -> Vec<u8> {
    [b"\x7fELF".as_slice(), body].concat()
}

pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

pub fn depmod() -> Depmod {
    Depmod::find().expect("depmod is needed (apt-get install kmod)")
}

pub fn build(req: &PackageRequest) -> Packaged {
    package(req, &depmod()).unwrap()
}

/// The layer's files as (name, contents), directories as (name/, empty).
pub fn layer_files(blob: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(blob)
        .read_to_end(&mut tar)
        .unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let name = if e.header().entry_type().is_dir() && !name.ends_with('/') {
                format!("{name}/")
            } else {
                name
            };
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

/// A docker-registry (Debian package `docker-registry`) on 127.0.0.1 with a
/// free port and temp storage; killed on drop. If `hack/registry/start.sh`
/// appears later it can replace this, the interface used here is just "a URL".
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with_auth(None)
    }

    /// With `Some((user, password))` the registry requires HTTP basic auth
    /// (htpasswd file made with `htpasswd -B`, Debian package apache2-utils).
    pub fn start_with_auth(auth: Option<(&str, &str)>) -> Self {
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("docker-registry not installed (apt-get install docker-registry)");
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let auth_yaml = match auth {
            None => String::new(),
            Some((user, password)) => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd not installed (apt-get install apache2-utils)");
                assert!(out.status.success());
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: kmmctl-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&reg.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {}",
                reg.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        reg
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
