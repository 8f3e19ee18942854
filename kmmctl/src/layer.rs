//! The image layer: a reproducible tar (sorted entries, fixed mtime, uid/gid 0,
//! 0644 files / 0755 dirs, no user names) compressed with gzip without a
//! timestamp or file name.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

use crate::digest::sha256_digest;
use crate::progress::Progress;

/// Errors while building the layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Walking or reading the staged tree failed.
    #[error("cannot read staged path {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the archive failed.
    #[error("cannot write tar entry {entry}")]
    Tar {
        /// The entry.
        entry: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Something other than a file or a directory was staged.
    #[error("staged path {0} is neither a regular file nor a directory")]
    Unsupported(PathBuf),
    /// A staged name is not UTF-8.
    #[error("staged path {0} is not valid UTF-8")]
    NotUtf8(PathBuf),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// OCI media type of the layer.
pub const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A built layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// gzip-compressed tar (the blob).
    pub blob: Vec<u8>,
    /// `sha256:` digest of `blob`.
    pub digest: String,
    /// `sha256:` digest of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// Entry names in archive order (directories end in `/`).
    pub entries: Vec<String>,
}

/// Archives everything below `root` (entry names relative to it, so `opt/...`).
pub fn build(root: &Path, mtime: u64) -> Result<Layer> {
    let mut paths = Vec::new();
    walk(root, root, &mut paths)?;
    // Byte order of the relative names: a parent always precedes its children.
    paths.sort_by(|a, b| a.0.cmp(&b.0));

    let mut tar = tar::Builder::new(Vec::new());
    let mut entries = Vec::with_capacity(paths.len());
    for (name, path, is_dir) in &paths {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        let tar_err = |source| Error::Tar {
            entry: name.clone(),
            source,
        };
        if *is_dir {
            let entry = format!("{name}/");
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &entry, std::io::empty())
                .map_err(tar_err)?;
            entries.push(entry);
        } else {
            let data = std::fs::read(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, name, data.as_slice())
                .map_err(tar_err)?;
            entries.push(name.clone());
        }
    }
    let tar_bytes = tar.into_inner().map_err(|source| Error::Tar {
        entry: "end of archive".into(),
        source,
    })?;
    compress(tar_bytes, entries)
}

/// Turns a finished tar archive into a layer: gzip without timestamp or file
/// name, and both digests. `entries` are the archive's names, in order.
pub fn compress(tar_bytes: Vec<u8>, entries: Vec<String>) -> Result<Layer> {
    // GzBuilder writes mtime 0 and no file name unless told otherwise.
    let mut gz = GzBuilder::new().write(Vec::new(), Compression::best());
    let gz_err = |source| Error::Tar {
        entry: "gzip stream".into(),
        source,
    };
    let progress = Progress::bytes("compressing layer", tar_bytes.len() as u64);
    for piece in tar_bytes.chunks(crate::progress::CHUNK) {
        gz.write_all(piece).map_err(gz_err)?;
        progress.inc(piece.len() as u64);
    }
    progress.finish();
    let blob = gz.finish().map_err(gz_err)?;
    Ok(Layer {
        digest: sha256_digest(&blob),
        diff_id: sha256_digest(&tar_bytes),
        tar_size: tar_bytes.len() as u64,
        blob,
        entries,
    })
}

/// Collects (relative name, path, is_dir) for everything below `dir`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, bool)>) -> Result<()> {
    let read_err = |source| Error::Read {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let rel = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| Error::NotUtf8(path.clone()))?
            .to_string();
        if kind.is_dir() {
            out.push((rel, path.clone(), true));
            walk(root, &path, out)?;
        } else if kind.is_file() {
            out.push((rel, path, false));
        } else {
            return Err(Error::Unsupported(path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn entries_are_sorted_normalised_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("opt/b")).unwrap();
        std::fs::write(dir.path().join("opt/b/z.ko"), b"z").unwrap();
        std::fs::write(dir.path().join("opt/a.ko"), b"a").unwrap();
        let long = "x".repeat(120);
        std::fs::write(dir.path().join("opt/b").join(&long), b"long").unwrap();

        let one = build(dir.path(), 0).unwrap();
        let two = build(dir.path(), 0).unwrap();
        assert_eq!(one.digest, two.digest);
        assert_eq!(
            one.entries,
            vec![
                "opt/".to_string(),
                "opt/a.ko".into(),
                "opt/b/".into(),
                format!("opt/b/{long}"),
                "opt/b/z.ko".into()
            ]
        );

        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(one.blob.as_slice())
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(sha256_digest(&tar_bytes), one.diff_id);
        // gzip header: no mtime (bytes 4..8), no FNAME flag.
        assert_eq!(&one.blob[4..8], &[0, 0, 0, 0]);
        assert_eq!(one.blob[3] & 0x08, 0);
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            let want = if h.entry_type().is_dir() {
                0o755
            } else {
                0o644
            };
            assert_eq!(h.mode().unwrap(), want);
        }

        let later = build(dir.path(), 1_700_000_000).unwrap();
        assert_ne!(later.digest, one.digest, "mtime must be part of the layer");
    }
}
