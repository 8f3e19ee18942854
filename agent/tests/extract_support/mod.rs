//! Builds tar layers byte by byte, so tests can write names the `tar` crate's
//! own builder would refuse (`..`, absolute paths, hostile links).
#![allow(dead_code)] // each test crate uses a different subset
#![allow(clippy::unwrap_used)] // test support: a panic is the failure report

use std::io::Write;

use flate2::Compression as Level;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

/// An in-memory tar stream.
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(mut self, kind: EntryType, name: &str, link: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        {
            let old = h.as_old_mut();
            assert!(
                name.len() <= 100 && link.len() <= 100,
                "test names must fit the v7 header"
            );
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(EntryType::Regular, name, "", 0o644, data)
    }

    pub fn file_mode(self, name: &str, data: &[u8], mode: u32) -> Self {
        self.entry(EntryType::Regular, name, "", mode, data)
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(EntryType::Directory, name, "", 0o755, b"")
    }

    pub fn dir_mode(self, name: &str, mode: u32) -> Self {
        self.entry(EntryType::Directory, name, "", mode, b"")
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(EntryType::Symlink, name, target, 0o777, b"")
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(EntryType::Link, name, target, 0o644, b"")
    }

    pub fn special(self, name: &str, kind: EntryType) -> Self {
        self.entry(kind, name, "", 0o666, b"")
    }

    /// A regular file whose header claims `size` bytes but carries no data
    /// (only useful to trip a size limit before any data is read).
    pub fn huge_header(mut self, name: &str, size: u64) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self
    }

    /// The stream with its end-of-archive marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Level::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A kmod-like layer: a module, modules.dep and a symlink, as in real images.
pub fn kmod_layer(kver: &str) -> Vec<u8> {
    let base = format!("opt/lib/modules/{kver}");
    Tar::new()
        .dir("opt/")
        .dir("opt/lib/")
        .dir("opt/lib/modules/")
        .dir(&format!("{base}/"))
        .file(
            &format!("{base}/kernel/drivers/x.ko"),
            b"\x7fELF fake module",
        )
        .file(&format!("{base}/modules.dep"), b"kernel/drivers/x.ko:\n")
        .symlink(&format!("{base}/build"), "/usr/src/linux-headers")
        .finish()
}

/// Checks that the committed fuzz seeds in `dir` are exactly `seeds` (name,
/// bytes); with `KMM_WRITE_FUZZ_CORPUS` set, writes them instead.
pub fn check_corpus<'a>(
    dir: &std::path::Path,
    seeds: impl IntoIterator<Item = (&'a str, Vec<u8>)>,
) {
    let write = std::env::var_os("KMM_WRITE_FUZZ_CORPUS").is_some();
    if write {
        std::fs::create_dir_all(dir).unwrap();
    }
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; regenerate with KMM_WRITE_FUZZ_CORPUS=1",
                    path.display()
                )
            });
            assert!(
                committed == bytes,
                "{} is stale; regenerate with KMM_WRITE_FUZZ_CORPUS=1",
                path.display()
            );
        }
    }
}
