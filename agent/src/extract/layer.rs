//! Applying one tar stream to an extraction root, entry by entry.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tar::{Archive, Entry, EntryType};

use super::fsops::{self, Slot, Touched};
use super::path::{self, EntryPath, display, join};
use super::stream::{self, Compression, Tap};
use super::{ExtractError, Limits, Stats};

/// Name of the OCI opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Prefix of OCI whiteout files.
const WHITEOUT: &[u8] = b".wh.";
/// Most skipped entries listed in [`Stats::skipped`]; the rest are only counted.
const MAX_LISTED_SKIPS: usize = 100;

/// Applies layers to one root, keeping the limits across all of them.
pub(crate) struct Extractor<'l> {
    root: PathBuf,
    limits: &'l Limits,
    /// Decompressed bytes consumed by earlier layers.
    stream_used: u64,
    /// Entries seen in earlier layers.
    entries_used: u64,
}

impl<'l> Extractor<'l> {
    pub(crate) fn new(root: &Path, limits: &'l Limits) -> Self {
        Self {
            root: root.to_path_buf(),
            limits,
            stream_used: 0,
            entries_used: 0,
        }
    }

    /// Applies one layer. On error the root is left in an undefined state
    /// (callers extract into a temp dir and throw it away).
    pub(crate) fn apply(
        &mut self,
        reader: impl Read,
        compression: Compression,
    ) -> Result<Stats, ExtractError> {
        self.run(reader, compression, true)
    }

    /// Reads one layer to its end, counting entries and bytes against the
    /// limits, and writes nothing: the cheap first pass that refuses an
    /// oversized layer before any of it is created.
    pub(crate) fn scan(
        &mut self,
        reader: impl Read,
        compression: Compression,
    ) -> Result<Stats, ExtractError> {
        self.run(reader, compression, false)
    }

    fn run(
        &mut self,
        reader: impl Read,
        compression: Compression,
        write: bool,
    ) -> Result<Stats, ExtractError> {
        let (decoded, gzip) = stream::open(reader, compression)?;
        let budget = self.limits.max_total_bytes.saturating_sub(self.stream_used);
        let mut tap = Tap::new(decoded, budget);
        let mut stats = Stats::default();
        let result = self.entries(&mut tap, &mut stats, write);
        let result = result.and_then(|()| {
            // Read to the very end so gzip checks its CRC and length trailer,
            // and a stream truncated after the tar end marker is still caught.
            io::copy(&mut tap, &mut io::sink())
                .map(drop)
                .map_err(Failure::Stream)
        });
        self.stream_used += tap.read;
        stats.stream_bytes = tap.read;
        match result {
            Ok(()) => Ok(stats),
            Err(Failure::Stream(e)) => {
                let err = tap.classify(e, gzip, self.limits.max_total_bytes);
                Err(root_cause(err, &mut tap, gzip, self.limits.max_total_bytes))
            }
            Err(Failure::Extract(
                e @ (ExtractError::TarTruncated | ExtractError::TarCorrupt { .. }),
            )) => Err(root_cause(e, &mut tap, gzip, self.limits.max_total_bytes)),
            Err(Failure::Extract(e)) => Err(e),
        }
    }

    fn check_deadline(&self) -> Result<(), ExtractError> {
        match self.limits.deadline {
            Some(deadline) if std::time::Instant::now() >= deadline => {
                Err(ExtractError::DeadlineExceeded)
            }
            _ => Ok(()),
        }
    }

    fn entries(
        &mut self,
        tap: &mut Tap<'_>,
        stats: &mut Stats,
        write: bool,
    ) -> Result<(), Failure> {
        let mut archive = Archive::new(tap);
        let mut touched = Touched::new();
        for entry in archive.entries().map_err(Failure::Stream)? {
            let mut entry = entry.map_err(Failure::Stream)?;
            self.entries_used += 1;
            stats.entries += 1;
            if self.entries_used > self.limits.max_entries {
                return Err(ExtractError::TooManyEntries {
                    max: self.limits.max_entries,
                }
                .into());
            }
            self.check_deadline()?;
            if write {
                self.entry(&mut entry, stats, &mut touched)?;
            }
        }
        Ok(())
    }

    fn entry<R: Read>(
        &self,
        entry: &mut Entry<'_, R>,
        stats: &mut Stats,
        touched: &mut Touched,
    ) -> Result<(), Failure> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let Some(path) = EntryPath::parse(&raw, self.limits.max_path_len)? else {
            return Ok(()); // the root itself ("./"): nothing to create
        };
        if path.file_name().starts_with(WHITEOUT) {
            return self.whiteout(&path, stats, touched).map_err(Failure::from);
        }
        // Only permission bits: setuid/setgid/sticky are dropped, owners never applied.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&path, entry, mode, stats, touched)
            }
            EntryType::Directory => self.dir(&path, mode, stats, touched).map_err(Failure::from),
            EntryType::Symlink => {
                let target = link_name(entry, &path)?;
                self.symlink(&path, &target, stats, touched)
                    .map_err(Failure::from)
            }
            EntryType::Link => {
                let target = link_name(entry, &path)?;
                self.hardlink(&path, &target, stats, touched)
                    .map_err(Failure::from)
            }
            EntryType::Char | EntryType::Block => {
                skip(stats, &raw, "device node (not created)");
                Ok(())
            }
            EntryType::Fifo => {
                skip(stats, &raw, "fifo (not created)");
                Ok(())
            }
            other => {
                skip(
                    stats,
                    &raw,
                    &format!("unsupported tar entry type {:?}", other.as_byte() as char),
                );
                Ok(())
            }
        }
    }

    fn file<R: Read>(
        &self,
        path: &EntryPath,
        entry: &mut Entry<'_, R>,
        mode: u32,
        stats: &mut Stats,
        touched: &mut Touched,
    ) -> Result<(), Failure> {
        let size = entry.size();
        if size > self.limits.max_file_bytes {
            return Err(ExtractError::FileTooLarge {
                path: display(&join(path.components())),
                size,
                max: self.limits.max_file_bytes,
            }
            .into());
        }
        fsops::ensure_parents(&self.root, path, touched)?;
        let abs = path.under(&self.root);
        fsops::clear_slot(&abs, false)?;
        // create_new: O_CREAT|O_EXCL, which never follows a symlink.
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&abs)
            .map_err(|e| ExtractError::io(&abs, e))?;
        touched.insert(path.rel());
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(Failure::Stream)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| ExtractError::io(&abs, e))?;
            written += n as u64;
            self.check_deadline()?;
        }
        drop(out);
        // The tar reader returns a short file at EOF instead of an error.
        if written < size && entry.header().entry_type() != EntryType::GNUSparse {
            return Err(ExtractError::TarTruncated.into());
        }
        fsops::set_mode(&abs, mode)?;
        stats.files += 1;
        stats.file_bytes += written;
        Ok(())
    }

    fn dir(
        &self,
        path: &EntryPath,
        mode: u32,
        stats: &mut Stats,
        touched: &mut Touched,
    ) -> Result<(), ExtractError> {
        fsops::ensure_parents(&self.root, path, touched)?;
        let abs = path.under(&self.root);
        if let Slot::Free = fsops::clear_slot(&abs, true)? {
            fs::create_dir(&abs).map_err(|e| ExtractError::io(&abs, e))?;
        }
        touched.insert(path.rel());
        // Owner keeps rwx so later entries and layers (and cleanup) can write here.
        fsops::set_mode(&abs, mode | 0o700)?;
        stats.dirs += 1;
        Ok(())
    }

    fn symlink(
        &self,
        path: &EntryPath,
        raw_target: &[u8],
        stats: &mut Stats,
        touched: &mut Touched,
    ) -> Result<(), ExtractError> {
        let target = path::symlink_target(path, raw_target, self.limits.max_path_len)?;
        fsops::ensure_parents(&self.root, path, touched)?;
        let abs = path.under(&self.root);
        fsops::clear_slot(&abs, false)?;
        let target_os = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&target);
        std::os::unix::fs::symlink(target_os, &abs).map_err(|e| ExtractError::io(&abs, e))?;
        touched.insert(path.rel());
        stats.symlinks += 1;
        if target != raw_target {
            stats.symlinks_rewritten += 1;
        }
        Ok(())
    }

    fn hardlink(
        &self,
        path: &EntryPath,
        raw_target: &[u8],
        stats: &mut Stats,
        touched: &mut Touched,
    ) -> Result<(), ExtractError> {
        let target = path::hardlink_target(path, raw_target, self.limits.max_path_len)?;
        let invalid = |reason| ExtractError::HardLinkTarget {
            path: display(&join(path.components())),
            target: display(raw_target),
            reason,
        };
        if &target == path {
            return Ok(()); // a link to itself: the file is already there
        }
        let source = match fsops::lookup_no_follow(&self.root, &target)? {
            Some((abs, meta)) if meta.is_file() => abs,
            Some(_) => return Err(invalid("the target is not a regular file")),
            None => return Err(invalid("the target was not extracted before the link")),
        };
        fsops::ensure_parents(&self.root, path, touched)?;
        let abs = path.under(&self.root);
        fsops::clear_slot(&abs, false)?;
        // link(2) does not follow a symlink source; the source was checked to be a file anyway.
        fs::hard_link(&source, &abs).map_err(|e| ExtractError::io(&abs, e))?;
        touched.insert(path.rel());
        stats.hardlinks += 1;
        Ok(())
    }

    /// OCI whiteouts: `.wh.<name>` deletes `<name>` from lower layers,
    /// `.wh..wh..opq` hides everything lower layers put in its directory.
    fn whiteout(
        &self,
        path: &EntryPath,
        stats: &mut Stats,
        touched: &Touched,
    ) -> Result<(), ExtractError> {
        let name = path.file_name();
        let parent = EntryPath::from_components(path.parent_components().to_vec());
        let parent_rel = parent.rel();
        let parent_is_dir = parent.components().is_empty()
            || matches!(fsops::lookup_no_follow(&self.root, &parent)?, Some((_, m)) if m.is_dir());
        stats.whiteouts += 1;
        if name == OPAQUE {
            if parent_is_dir {
                fsops::remove_lower_children(&self.root, &parent_rel, touched)?;
            }
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            skip(stats, &join(path.components()), "aufs metadata entry");
            return Ok(());
        }
        let hidden = &name[WHITEOUT.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ExtractError::InvalidName {
                path: display(&join(path.components())),
                reason: "whiteout for an invalid name".to_owned(),
            });
        }
        if parent_is_dir {
            let rel = parent_rel
                .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(hidden));
            fsops::remove_lower(&self.root, &rel, touched)?;
        }
        Ok(())
    }
}

/// A damaged gzip stream usually still inflates to garbage, which the tar
/// reader rejects before gzip's CRC trailer is reached. The gzip damage is
/// the real cause, so read on to the trailer and prefer its error.
fn root_cause(err: ExtractError, tap: &mut Tap<'_>, gzip: bool, max_total: u64) -> ExtractError {
    let tar_error = matches!(
        err,
        ExtractError::TarTruncated | ExtractError::TarCorrupt { .. }
    );
    if !gzip || !tar_error {
        return err;
    }
    match io::copy(tap, &mut io::sink()) {
        Err(e) => match tap.classify(e, gzip, max_total) {
            gz @ (ExtractError::GzipCorrupt { .. } | ExtractError::GzipTruncated) => gz,
            _ => err,
        },
        Ok(_) => err,
    }
}

fn link_name<R: Read>(entry: &Entry<'_, R>, path: &EntryPath) -> Result<Vec<u8>, ExtractError> {
    entry
        .link_name_bytes()
        .map(|c| c.into_owned())
        .ok_or_else(|| ExtractError::InvalidName {
            path: display(&join(path.components())),
            reason: "link without a target".to_owned(),
        })
}

fn skip(stats: &mut Stats, raw: &[u8], reason: &str) {
    stats.skipped_count += 1;
    if stats.skipped.len() < MAX_LISTED_SKIPS {
        stats.skipped.push(super::Skipped {
            path: display(raw),
            reason: reason.to_owned(),
        });
    }
}

/// Errors inside the entry loop: either already precise, or an `io::Error`
/// from the tar stream that [`Tap::classify`] must interpret.
enum Failure {
    Extract(ExtractError),
    Stream(io::Error),
}

impl From<ExtractError> for Failure {
    fn from(e: ExtractError) -> Self {
        Self::Extract(e)
    }
}
