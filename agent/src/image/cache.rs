//! The on-disk cache: content-addressed blobs, unpacked trees and a
//! reference → digest map, all under one directory:
//!
//! ```text
//! <dir>/blobs/sha256/<hex>       layer blobs and raw manifests/indexes
//! <dir>/unpacked/sha256/<hex>/   image root per platform manifest digest
//! <dir>/refs.json                reference -> {digest, manifest, pulled_at}
//! ```
//!
//! Every file appears by rename, so a crash leaves either the old or the new
//! content plus stray temp entries (`.tmp-*` blobs, `.<hex>.partial-*`
//! staging trees, `.refs.json.tmp-*`); [`ImageCache::open`] removes those
//! (and `gc` would too). A name without the leading dot is always complete.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, RwLock};

use super::ImageError;
use super::manifest::{Manifest, check_digest};
use super::source::BlobStream;

/// What a reference resolved to when it was last pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefEntry {
    /// The digest the reference pointed at (an index digest for multi-arch images).
    pub digest: String,
    /// The platform manifest digest: the unpacked tree's key.
    pub manifest: String,
    /// Unix seconds of the pull.
    pub pulled_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RefsFile {
    version: u32,
    refs: BTreeMap<String, RefEntry>,
}

/// What [`ImageCache::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Unpacked trees removed (their manifest digests).
    pub unpacked_removed: Vec<String>,
    /// Blobs removed.
    pub blobs_removed: usize,
    /// References forgotten.
    pub refs_removed: Vec<String>,
    /// Bytes freed (apparent sizes).
    pub bytes_freed: u64,
}

/// The local image cache. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ImageCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Serialises read-modify-write of refs.json.
    refs_lock: Mutex<()>,
    /// Pulls hold it shared, gc exclusively: gc never deletes a blob a pull
    /// has just downloaded and not yet unpacked.
    gc_lock: RwLock<()>,
}

impl ImageCache {
    /// Opens (creating) the cache in `dir` with a size limit in bytes
    /// (enforced by [`ImageCache::enforce_limit`]).
    ///
    /// Leftovers of a pull interrupted by a crash (temp blobs, staging trees,
    /// a half-written refs file) are removed; complete blobs and unpacked
    /// trees are never touched. Call it once per process, before any pull.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, ImageError> {
        for sub in ["blobs/sha256", "unpacked/sha256"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| ImageError::cache(&p, e))?;
        }
        let removed = remove_leftovers(dir)?;
        if removed > 0 {
            tracing::info!(dir = %dir.display(), removed, "removed partial downloads and staging trees left by an interrupted pull");
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            refs_lock: Mutex::new(()),
            gc_lock: RwLock::new(()),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join("blobs/sha256").join(check_digest(digest)?))
    }

    /// Where the tree of a platform manifest is (or would be) unpacked.
    pub fn unpacked_path(&self, manifest_digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self
            .dir
            .join("unpacked/sha256")
            .join(check_digest(manifest_digest)?))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> Result<bool, ImageError> {
        Ok(self.blob_path(digest)?.is_file())
    }

    pub(crate) fn is_unpacked(&self, manifest_digest: &str) -> Result<bool, ImageError> {
        Ok(self.unpacked_path(manifest_digest)?.is_dir())
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(|e| ImageError::cache(&p, e))
    }

    /// Stores bytes already verified against `digest`.
    pub(crate) fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.blob_path(digest)?;
        if path.is_file() {
            return Ok(());
        }
        let dir = self.dir.join("blobs/sha256");
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(|e| ImageError::cache(&dir, e))?;
        io::Write::write_all(&mut tmp, bytes).map_err(|e| ImageError::cache(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| ImageError::cache(&path, e.error))?;
        Ok(())
    }

    /// Streams a blob to disk, hashing as it goes; keeps it only if it is
    /// exactly `len` bytes and its sha256 matches `digest`. Adds what
    /// arrives to `received`; returns the number of bytes.
    pub(crate) async fn store_stream(
        &self,
        digest: &str,
        mut stream: BlobStream,
        len: u64,
        received: &AtomicU64,
        registry_error: impl Fn(io::Error) -> ImageError,
    ) -> Result<u64, ImageError> {
        let max_len = len;
        let path = self.blob_path(digest)?;
        let dir = self.dir.join("blobs/sha256");
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(|e| ImageError::cache(&dir, e))?;
        let (std_file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(&registry_error)?;
            received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            got += chunk.len() as u64;
            if got > max_len {
                return Err(ImageError::BlobTooLarge {
                    digest: digest.to_owned(),
                    limit: max_len,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ImageError::cache(&*tmp_path, e))?;
        }
        file.flush()
            .await
            .map_err(|e| ImageError::cache(&*tmp_path, e))?;
        drop(file);
        if got != len {
            return Err(ImageError::SizeMismatch {
                what: format!("blob {digest}"),
                expected: len,
                actual: got,
            });
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {digest}"),
                expected: digest.to_owned(),
                actual,
            });
        }
        tmp_path
            .persist(&path)
            .map_err(|e| ImageError::cache(&path, e.error))?;
        Ok(got)
    }

    fn refs_path(&self) -> PathBuf {
        self.dir.join("refs.json")
    }

    fn load_refs(&self) -> Result<RefsFile, ImageError> {
        let path = self.refs_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::cache(&path, io::Error::new(io::ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RefsFile::default()),
            Err(e) => Err(ImageError::cache(&path, e)),
        }
    }

    fn save_refs(&self, refs: &RefsFile) -> Result<(), ImageError> {
        let path = self.refs_path();
        let mut tmp = tempfile::Builder::new()
            .prefix(".refs.json.tmp-")
            .tempfile_in(&self.dir)
            .map_err(|e| ImageError::cache(&self.dir, e))?;
        let bytes = serde_json::to_vec_pretty(refs)
            .map_err(|e| ImageError::cache(&path, io::Error::other(e)))?;
        io::Write::write_all(&mut tmp, &bytes).map_err(|e| ImageError::cache(&path, e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::cache(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| ImageError::cache(&path, e.error))?;
        Ok(())
    }

    /// What `reference` (normalised, e.g. `docker.io/library/x:1`) was last pulled as.
    pub async fn lookup(&self, reference: &str) -> Result<Option<RefEntry>, ImageError> {
        let _guard = self.refs_lock.lock().await;
        Ok(self.load_refs()?.refs.get(reference).cloned())
    }

    pub(crate) async fn record(&self, reference: &str, entry: RefEntry) -> Result<(), ImageError> {
        let _guard = self.refs_lock.lock().await;
        let mut refs = self.load_refs()?;
        refs.version = 1;
        refs.refs.insert(reference.to_owned(), entry);
        self.save_refs(&refs)
    }

    pub(crate) async fn pull_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gc_lock.read().await
    }

    /// Bytes used by the cache (apparent file sizes).
    pub fn usage(&self) -> Result<u64, ImageError> {
        dir_size(&self.dir).map_err(|e| ImageError::cache(&self.dir, e))
    }

    /// Removes every unpacked tree, blob and reference that none of `keep`
    /// needs. `keep` holds digests: a platform manifest digest or the digest a
    /// reference resolved to (an index digest) both keep that image.
    pub async fn gc(&self, keep: &[&str]) -> Result<GcReport, ImageError> {
        let _exclusive = self.gc_lock.write().await;
        let _refs = self.refs_lock.lock().await;
        let mut refs = self.load_refs()?;
        let keep: BTreeSet<&str> = keep.iter().copied().collect();
        let mut kept_manifests: BTreeSet<String> = BTreeSet::new();
        let mut needed_blobs: BTreeSet<String> = BTreeSet::new();
        for entry in refs.refs.values() {
            if keep.contains(entry.manifest.as_str()) || keep.contains(entry.digest.as_str()) {
                kept_manifests.insert(entry.manifest.clone());
                needed_blobs.insert(entry.digest.clone());
            }
        }
        kept_manifests.extend(
            keep.iter()
                .filter(|d| check_digest(d).is_ok())
                .map(|d| (*d).to_owned()),
        );
        for manifest in &kept_manifests {
            needed_blobs.insert(manifest.clone());
            if let Ok(bytes) = self.read_blob(manifest)
                && let Ok(Manifest::Image { layers }) = Manifest::parse(&bytes, manifest)
            {
                needed_blobs.extend(layers.into_iter().map(|l| l.digest));
            }
        }
        let mut report = GcReport::default();
        refs.refs.retain(|reference, entry| {
            let keep_it = kept_manifests.contains(&entry.manifest);
            if !keep_it {
                report.refs_removed.push(reference.clone());
            }
            keep_it
        });
        let unpacked = self.dir.join("unpacked/sha256");
        for name in list(&unpacked)? {
            let digest = format!("sha256:{name}");
            if !kept_manifests.contains(&digest) {
                let p = unpacked.join(&name);
                report.bytes_freed += dir_size(&p).unwrap_or(0);
                remove_any(&p)?;
                if check_digest(&digest).is_ok() {
                    report.unpacked_removed.push(digest);
                }
            }
        }
        let blobs = self.dir.join("blobs/sha256");
        for name in list(&blobs)? {
            if !needed_blobs.contains(&format!("sha256:{name}")) {
                let p = blobs.join(&name);
                report.bytes_freed += fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
                remove_any(&p)?;
                report.blobs_removed += 1;
            }
        }
        self.save_refs(&refs)?;
        Ok(report)
    }

    /// Runs [`ImageCache::gc`] with `keep` when the cache is over its size
    /// limit. Returns the report if it ran. Images in `keep` are never removed,
    /// so the cache can stay above the limit if they alone exceed it.
    pub async fn enforce_limit(&self, keep: &[&str]) -> Result<Option<GcReport>, ImageError> {
        if self.usage()? <= self.max_bytes {
            return Ok(None);
        }
        let report = self.gc(keep).await?;
        let usage = self.usage()?;
        if usage > self.max_bytes {
            tracing::warn!(
                usage,
                limit = self.max_bytes,
                "image cache over its limit with only in-use images left"
            );
        }
        Ok(Some(report))
    }
}

/// Temp entries of the cache's own writers, per directory: only a dot-name
/// with one of these prefixes or infixes can be a leftover.
fn is_leftover(sub: &str, name: &str) -> bool {
    match sub {
        "" => name.starts_with(".refs.json.tmp-"),
        "blobs/sha256" => name.starts_with(".tmp-"),
        "unpacked/sha256" => name.starts_with('.') && name.contains(".partial-"),
        _ => false,
    }
}

/// Removes what a crash mid-pull leaves (see [`is_leftover`]); returns how many.
fn remove_leftovers(dir: &Path) -> Result<usize, ImageError> {
    let mut removed = 0;
    for sub in ["", "blobs/sha256", "unpacked/sha256"] {
        let parent = dir.join(sub);
        for name in list(&parent)? {
            if is_leftover(sub, &name) {
                remove_any(&parent.join(&name))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn list(dir: &Path) -> Result<Vec<String>, ImageError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| ImageError::cache(dir, e))? {
        let entry = entry.map_err(|e| ImageError::cache(dir, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn remove_any(p: &Path) -> Result<(), ImageError> {
    let meta = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImageError::cache(p, e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    result.map_err(|e| ImageError::cache(p, e))
}

fn dir_size(p: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(p)?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in fs::read_dir(p)? {
        total += dir_size(&entry?.path())?;
    }
    Ok(total)
}
