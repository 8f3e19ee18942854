//! Safe extraction of kmod image layers (tar, optionally gzip) into a directory.
//!
//! # Guarantees
//! * Nothing is created outside the extraction root: names with `..` are
//!   refused, absolute names are made relative, no write or delete goes through
//!   a symlink, hard links must point at a regular file already extracted.
//! * Symlinks are stored normalised as `(../)*name/...`, never climbing above
//!   the root, so the tree can be used from the host (it is not a chroot):
//!   an absolute target `/x` becomes a relative link to `<root>/x`, and a
//!   target above the root is an error.
//! * Device nodes and fifos are skipped (listed in [`Stats::skipped`]);
//!   setuid, setgid and sticky bits are dropped; ownership is not applied.
//! * [`Limits`] cap the uncompressed size, the entry count, one file's size
//!   and name lengths, so a tar or gzip bomb stops early.
//! * [`unpack_image`] works in a temp dir next to the destination and renames
//!   it into place only when every layer succeeded: a corrupt or truncated
//!   layer leaves the previous tree untouched and no partial one.

mod error;
mod fsops;
mod layer;
mod path;
mod stream;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

pub use error::ExtractError;
pub use stream::Compression;

use layer::Extractor;

/// Default [`Limits::max_entries`]: ten times a full distro module tree.
pub const DEFAULT_MAX_ENTRIES: u64 = 50_000;

/// Bounds on what one image may contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Total decompressed tar bytes over all layers (headers included).
    pub max_total_bytes: u64,
    /// Total tar entries over all layers.
    pub max_entries: u64,
    /// Size of one regular file.
    pub max_file_bytes: u64,
    /// Length of one entry name or link target, in bytes.
    pub max_path_len: usize,
    /// Extraction stops with [`ExtractError::DeadlineExceeded`] once this
    /// has passed (checked per entry and per 64 KiB written), so a pull
    /// that timed out does not keep a blocking thread busy.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    /// Generous for kmod images (a full distro module tree is ~400 MB and
    /// ~5k files), tight enough to stop a bomb: 2 GiB, 50k entries,
    /// 1 GiB per file, 4096-byte names, no deadline.
    fn default() -> Self {
        Self {
            max_total_bytes: 2 << 30,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_file_bytes: 1 << 30,
            max_path_len: 4096,
            deadline: None,
        }
    }
}

/// What an extraction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tar entries read (all kinds).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Symlinks whose target was rewritten to its normalised relative form.
    pub symlinks_rewritten: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Whiteout and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes written to regular files.
    pub file_bytes: u64,
    /// Decompressed tar stream bytes read.
    pub stream_bytes: u64,
    /// Entries not created, with the reason (the first 100).
    pub skipped: Vec<Skipped>,
    /// Number of entries not created.
    pub skipped_count: u64,
}

impl Stats {
    fn add(&mut self, other: Stats) {
        self.entries += other.entries;
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.symlinks_rewritten += other.symlinks_rewritten;
        self.hardlinks += other.hardlinks;
        self.whiteouts += other.whiteouts;
        self.file_bytes += other.file_bytes;
        self.stream_bytes += other.stream_bytes;
        self.skipped_count += other.skipped_count;
        let room = 100usize.saturating_sub(self.skipped.len());
        self.skipped.extend(other.skipped.into_iter().take(room));
    }
}

/// An entry that was deliberately not created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The entry name as found in the layer.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// One layer of an image, in manifest order.
pub struct Layer<'a> {
    /// A name for messages, usually the blob digest.
    pub name: String,
    /// How the blob is compressed.
    pub compression: Compression,
    /// The blob bytes.
    pub reader: Box<dyn Read + 'a>,
}

/// Extracts one layer into `dest_root` (created if missing), in place.
///
/// Whiteouts in the layer delete from what is already in `dest_root`.
///
/// # Errors
/// Any [`ExtractError`]. `dest_root` may then hold part of the layer; use
/// [`unpack_image`] when that must not happen.
pub fn extract_layer(
    reader: impl Read,
    compression: Compression,
    dest_root: &Path,
    limits: &Limits,
) -> Result<Stats, ExtractError> {
    fs::create_dir_all(dest_root).map_err(|e| ExtractError::io(dest_root, e))?;
    Extractor::new(dest_root, limits).apply(reader, compression)
}

/// Reads the layers of an image, in order, to their end and writes nothing:
/// fails as [`unpack_image`] would on the entry count and the size limits
/// (and on a corrupt stream), in the time it takes to decompress them. Run
/// it first so a layer with far too many entries is refused at once rather
/// than after creating tens of thousands of files.
///
/// # Errors
/// The first layer that fails, as [`ExtractError::InLayer`].
pub fn scan_image<'a>(
    layers: impl IntoIterator<Item = Layer<'a>>,
    limits: &Limits,
) -> Result<Stats, ExtractError> {
    let mut scanner = Extractor::new(Path::new("/nonexistent"), limits);
    let mut total = Stats::default();
    for (index, layer) in layers.into_iter().enumerate() {
        let stats = scanner
            .scan(layer.reader, layer.compression)
            .map_err(|source| ExtractError::InLayer {
                index,
                name: layer.name.clone(),
                source: Box::new(source),
            })?;
        total.add(stats);
    }
    Ok(total)
}

/// Unpacks the layers of an image, in order, into `dest`.
///
/// The layers are applied in a private temp dir in `dest`'s parent, which
/// replaces `dest` only once all of them succeeded. The limits count over the
/// whole image.
///
/// # Errors
/// The first layer that fails, as [`ExtractError::InLayer`]; `dest` is then
/// unchanged (still the previous tree, or still absent).
pub fn unpack_image<'a>(
    layers: impl IntoIterator<Item = Layer<'a>>,
    dest: &Path,
    limits: &Limits,
) -> Result<Stats, ExtractError> {
    let (parent, name) = match (dest.parent(), dest.file_name()) {
        (Some(parent), Some(name)) => (parent, name.to_string_lossy()),
        _ => {
            return Err(ExtractError::io(
                dest,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "destination has no parent",
                ),
            ));
        }
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    fs::create_dir_all(parent).map_err(|e| ExtractError::io(parent, e))?;
    // TempDir removes itself on drop, i.e. on every error path below.
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(parent)
        .map_err(|e| ExtractError::io(parent, e))?;
    let mut extractor = Extractor::new(staging.path(), limits);
    let mut total = Stats::default();
    for (index, layer) in layers.into_iter().enumerate() {
        let stats = extractor
            .apply(layer.reader, layer.compression)
            .map_err(|source| ExtractError::InLayer {
                index,
                name: layer.name.clone(),
                source: Box::new(source),
            })?;
        total.add(stats);
    }
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .map_err(|e| ExtractError::io(staging.path(), e))?;
    install(staging, dest)?;
    Ok(total)
}

/// Puts the finished staging dir at `dest`: a plain rename when `dest` is
/// absent, otherwise an atomic exchange (renameat2 RENAME_EXCHANGE) and the
/// old tree is deleted afterwards, so readers see either tree, never a mix.
fn install(staging: tempfile::TempDir, dest: &Path) -> Result<(), ExtractError> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::rename(staging.path(), dest).map_err(|e| ExtractError::io(dest, e))?;
            // Renamed away: nothing left for the TempDir guard to delete.
            let _ = staging.keep();
            Ok(())
        }
        Err(e) => Err(ExtractError::io(dest, e)),
        Ok(_) => {
            use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
            renameat2(
                AT_FDCWD,
                staging.path(),
                AT_FDCWD,
                dest,
                RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|errno| ExtractError::io(dest, std::io::Error::from(errno)))?;
            // `staging` now holds the previous tree; dropping it deletes it.
            drop(staging);
            Ok(())
        }
    }
}
