//! Filesystem steps that never follow a symlink.
//!
//! Every path is built from the extraction root plus checked components, and
//! each existing component is looked at with `symlink_metadata`, so a symlink
//! planted by an earlier entry or layer is never traversed while writing or
//! deleting. The root is a private temp dir (mode 0700) that only this process
//! writes to, so the check-then-act window is not reachable by others.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ExtractError;
use super::path::{EntryPath, display, join};

/// Mode for directories created implicitly (a file's parent with no entry of its own).
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Paths (relative to the root) written by the layer being applied. Whiteouts
/// only hide content from lower layers, so these are spared.
pub(crate) type Touched = HashSet<PathBuf>;

/// What was at an entry's own path before it was written.
pub(crate) enum Slot {
    /// Nothing (or it was removed to make room).
    Free,
    /// A real directory, kept so layers can merge into it.
    Dir,
}

/// Makes sure every parent of `entry` is a real directory, creating missing
/// ones. Returns the absolute parent path.
pub(crate) fn ensure_parents(
    root: &Path,
    entry: &EntryPath,
    touched: &mut Touched,
) -> Result<PathBuf, ExtractError> {
    let mut abs = root.to_path_buf();
    let mut rel = PathBuf::new();
    for (i, comp) in entry.parent_components().iter().enumerate() {
        let name = OsStr::from_bytes(comp);
        abs.push(name);
        rel.push(name);
        match fs::symlink_metadata(&abs) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ExtractError::ThroughSymlink {
                    path: display(&join(entry.components())),
                    link: display(&join(&entry.components()[..=i])),
                });
            }
            Ok(_) => {
                return Err(ExtractError::NotADirectory {
                    path: display(&join(entry.components())),
                    parent: display(&join(&entry.components()[..=i])),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(IMPLICIT_DIR_MODE)
                    .create(&abs)
                    .map_err(|e| ExtractError::io(&abs, e))?;
            }
            Err(e) => return Err(ExtractError::io(&abs, e)),
        }
        // A parent holds content of this layer, so whiteouts must descend
        // into it rather than delete it whole.
        touched.insert(rel.clone());
    }
    Ok(abs)
}

/// Clears the entry's own path. A directory is kept when `keep_dir` (a
/// directory entry over a directory merges); anything else is removed,
/// without following symlinks (`remove_dir_all` does not follow them).
pub(crate) fn clear_slot(abs: &Path, keep_dir: bool) -> Result<Slot, ExtractError> {
    match fs::symlink_metadata(abs) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Slot::Free),
        Err(e) => Err(ExtractError::io(abs, e)),
        Ok(meta) if meta.is_dir() => {
            if keep_dir {
                Ok(Slot::Dir)
            } else {
                fs::remove_dir_all(abs).map_err(|e| ExtractError::io(abs, e))?;
                Ok(Slot::Free)
            }
        }
        Ok(_) => {
            fs::remove_file(abs).map_err(|e| ExtractError::io(abs, e))?;
            Ok(Slot::Free)
        }
    }
}

/// Sets permission bits (never setuid/setgid/sticky: callers pass `mode & 0o777`).
pub(crate) fn set_mode(abs: &Path, mode: u32) -> Result<(), ExtractError> {
    fs::set_permissions(abs, fs::Permissions::from_mode(mode)).map_err(|e| ExtractError::io(abs, e))
}

/// Finds `entry` under `root` without following symlinks in its parents.
/// `None` when a parent is missing, a symlink or not a directory: then the
/// path does not exist as far as this image is concerned.
pub(crate) fn lookup_no_follow(
    root: &Path,
    entry: &EntryPath,
) -> Result<Option<(PathBuf, fs::Metadata)>, ExtractError> {
    let mut abs = root.to_path_buf();
    let comps = entry.components();
    for (i, comp) in comps.iter().enumerate() {
        abs.push(OsStr::from_bytes(comp));
        let meta = match fs::symlink_metadata(&abs) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ExtractError::io(&abs, e)),
        };
        let last = i + 1 == comps.len();
        if last {
            return Ok(Some((abs, meta)));
        }
        if !meta.is_dir() {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Removes what lower layers left at `rel` (relative to `root`), keeping
/// anything the current layer wrote: a touched directory is descended into,
/// a touched non-directory is left alone. Never follows symlinks.
pub(crate) fn remove_lower(root: &Path, rel: &Path, touched: &Touched) -> Result<(), ExtractError> {
    let abs = root.join(rel);
    let meta = match fs::symlink_metadata(&abs) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ExtractError::io(&abs, e)),
    };
    if touched.contains(rel) {
        if meta.is_dir() {
            remove_lower_children(root, rel, touched)?;
        }
        return Ok(());
    }
    let result = if meta.is_dir() {
        fs::remove_dir_all(&abs)
    } else {
        fs::remove_file(&abs)
    };
    result.map_err(|e| ExtractError::io(&abs, e))
}

/// [`remove_lower`] for each child of the directory `rel`.
pub(crate) fn remove_lower_children(
    root: &Path,
    rel: &Path,
    touched: &Touched,
) -> Result<(), ExtractError> {
    let abs = root.join(rel);
    let children = fs::read_dir(&abs).map_err(|e| ExtractError::io(&abs, e))?;
    for child in children {
        let child = child.map_err(|e| ExtractError::io(&abs, e))?;
        remove_lower(root, &rel.join(child.file_name()), touched)?;
    }
    Ok(())
}
