//! Firmware: copy `<image>/<firmwarePath>/*` into the node's firmware directory
//! before loading, remove it again before unloading (upstream KMM's
//! `worker.setFirmwareClassPath`).
//!
//! The copy is safe against hostile images: every file copied is proved to be
//! inside the image's firmware tree where it resolves (canonical path check,
//! then opened without following a symlink); a symlink in the image is copied
//! as the file it resolves to when that is inside the tree, and skipped
//! otherwise (symlinks are never recreated on the host, where their meaning
//! would depend on the host's tree); no existing symlink on the host side is
//! written through, and every file appears atomically (written to a temporary
//! name in the same directory, then renamed).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tracing::warn;

use super::confine::{Confined, confine_canonical};

/// Where the kernel's firmware loader looks first, besides its built-in paths.
pub const FIRMWARE_CLASS_PATH: &str = "/sys/module/firmware_class/parameters/path";

/// Firmware copy errors.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The image's firmware directory is missing.
    #[error("image has no firmware directory {}", .0.display())]
    NoSource(PathBuf),
    /// The firmware directory resolves outside the image.
    #[error("firmware directory {} resolves to {}, outside the image {}", path.display(), resolved.display(), root.display())]
    Escape {
        /// The firmware directory.
        path: PathBuf,
        /// Where it resolves.
        resolved: PathBuf,
        /// The image root.
        root: PathBuf,
    },
    /// A host path that must be a directory is a symlink or a file.
    #[error("refusing to write through {}: not a plain directory", .0.display())]
    NotADirectory(PathBuf),
    /// I/O error on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, FirmwareError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FirmwareError + '_ {
    move |source| FirmwareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a copy did, as paths relative to the firmware directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FirmwareCopy {
    /// Files and symlinks written.
    pub installed: Vec<PathBuf>,
    /// Entries not copied (symlinks resolving outside the tree or to a
    /// directory, sockets, ...).
    pub skipped: Vec<PathBuf>,
}

/// [`install_firmware`] of `src` (`<image>/<firmwarePath>`), after proving that
/// `src` itself resolves inside `image_root`.
///
/// # Errors
/// [`FirmwareError::Escape`], and those of [`install_firmware`].
pub fn install_firmware_from_image(
    image_root: &Path,
    src: &Path,
    host_dir: &Path,
) -> Result<FirmwareCopy> {
    let root = image_root.canonicalize().map_err(io_err(image_root))?;
    match confine_canonical(&root, src) {
        Confined::Inside(_) => install_firmware(src, host_dir),
        Confined::Outside(resolved) => Err(FirmwareError::Escape {
            path: src.to_path_buf(),
            resolved,
            root,
        }),
        Confined::Unresolved(_) => Err(FirmwareError::NoSource(src.to_path_buf())),
    }
}

/// Copies every file under `src` into `host_dir` (created if needed), recursively.
///
/// # Errors
/// [`FirmwareError::NoSource`] if `src` is not a directory; I/O errors; a host
/// directory on the way that is a symlink ([`FirmwareError::NotADirectory`]).
pub fn install_firmware(src: &Path, host_dir: &Path) -> Result<FirmwareCopy> {
    if !fs::symlink_metadata(src).is_ok_and(|m| m.is_dir()) {
        return Err(FirmwareError::NoSource(src.to_path_buf()));
    }
    let root = src.canonicalize().map_err(io_err(src))?;
    ensure_dir(host_dir)?;
    let mut copy = FirmwareCopy::default();
    copy_dir(&root, src, host_dir, Path::new(""), &mut copy)?;
    Ok(copy)
}

/// Removes from `host_dir` every file the image's `src` directory provides, then
/// the directories this leaves empty. Missing files are fine.
///
/// # Errors
/// I/O errors other than "not found".
pub fn remove_firmware(src: &Path, host_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if fs::symlink_metadata(src).is_ok_and(|m| m.is_dir()) {
        remove_dir(src, host_dir, Path::new(""), &mut removed)?;
    }
    Ok(removed)
}

/// Removes the files a copy installed (`FirmwareCopy::installed`, relative to
/// `host_dir`), then their parent directories up to `host_dir` when empty; for
/// unloading once the image is gone. Missing files are fine; absolute paths or
/// paths with `..` are refused.
///
/// # Errors
/// [`FirmwareError::Io`] for refused paths and I/O errors other than "not found".
pub fn remove_installed(host_dir: &Path, installed: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for rel in installed {
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(FirmwareError::Io {
                path: rel.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a relative path inside the firmware directory",
                ),
            });
        }
        let path = host_dir.join(rel);
        match fs::remove_file(&path) {
            Ok(()) => removed.push(rel.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        // prune now-empty directories, never host_dir itself
        let mut dir = rel.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            if fs::remove_dir(host_dir.join(d)).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
    Ok(removed)
}

/// Points the kernel's firmware loader at `host_dir` by writing `param_file`
/// (normally [`FIRMWARE_CLASS_PATH`]); skipped if it already holds that value.
///
/// # Errors
/// I/O errors writing the parameter.
pub fn set_firmware_class_path(param_file: &Path, host_dir: &Path) -> Result<()> {
    let want = host_dir.to_string_lossy();
    if fs::read_to_string(param_file).is_ok_and(|cur| cur.trim_end() == want) {
        return Ok(());
    }
    fs::write(param_file, want.as_bytes()).map_err(io_err(param_file))
}

fn ensure_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(FirmwareError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err(dir))
        }
        Err(e) => Err(io_err(dir)(e)),
    }
}

fn copy_dir(
    root: &Path,
    src: &Path,
    dst: &Path,
    rel: &Path,
    copy: &mut FirmwareCopy,
) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err(src))?
        .collect::<io::Result<_>>()
        .map_err(io_err(src))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let (from, to, rel) = (src.join(&name), dst.join(&name), rel.join(&name));
        let meta = fs::symlink_metadata(&from).map_err(io_err(&from))?;
        if meta.is_dir() {
            ensure_dir(&to)?;
            copy_dir(root, &from, &to, &rel, copy)?;
            continue;
        }
        if !meta.is_file() && !meta.file_type().is_symlink() {
            copy.skipped.push(rel);
            continue;
        }
        // where it resolves now, not what it claims: it must be a file in the tree
        match confine_canonical(root, &from) {
            Confined::Inside(real) if fs::metadata(&real).is_ok_and(|m| m.is_file()) => {
                copy_file(&real, &to)?;
                copy.installed.push(rel);
            }
            _ => {
                warn!(path = %rel.display(), "firmware entry does not resolve to a file inside the image; skipped");
                copy.skipped.push(rel);
            }
        }
    }
    Ok(())
}

fn tmp_name(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".kmm-tmp-{}", std::process::id()));
    to.with_file_name(name)
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let tmp = tmp_name(to);
    let write = || -> io::Result<()> {
        // `from` is canonical: a symlink there now was swapped in since the check
        let mut input = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(from)?;
        // create_new: never open through something planted at the temporary name
        let _ = fs::remove_file(&tmp);
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        io::copy(&mut input, &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(0o644))?;
        out.flush()?;
        out.sync_all()?;
        // rename replaces a symlink at `to` itself, never what it points to
        fs::rename(&tmp, to)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        FirmwareError::Io {
            path: to.to_path_buf(),
            source,
        }
    })
}

fn remove_dir(src: &Path, dst: &Path, rel: &Path, removed: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(src).map_err(io_err(src))? {
        let entry = entry.map_err(io_err(src))?;
        let name = entry.file_name();
        let (from, to, rel) = (src.join(&name), dst.join(&name), rel.join(&name));
        let meta = fs::symlink_metadata(&from).map_err(io_err(&from))?;
        if meta.is_dir() {
            if fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
                remove_dir(&from, &to, &rel, removed)?;
                // only if empty: other firmware may live there
                if fs::remove_dir(&to).is_ok() {
                    removed.push(rel);
                }
            }
        } else {
            match fs::remove_file(&to) {
                Ok(()) => removed.push(rel),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&to)(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn image() -> tempfile::TempDir {
        let src = tempfile::tempdir().unwrap();
        let p = src.path();
        fs::create_dir_all(p.join("vendor/sub")).unwrap();
        fs::write(p.join("top.bin"), b"top").unwrap();
        fs::write(p.join("vendor/sub/fw.bin"), b"firmware").unwrap();
        symlink("sub/fw.bin", p.join("vendor/alias.bin")).unwrap();
        symlink("../../../etc/shadow", p.join("vendor/evil.bin")).unwrap();
        symlink("/etc/passwd", p.join("abs.bin")).unwrap();
        src
    }

    #[test]
    fn copies_recursively_and_keeps_symlinks_inside_the_tree() {
        let src = image();
        let host = tempfile::tempdir().unwrap();
        let dst = host.path().join("lib/firmware");
        let copy = install_firmware(src.path(), &dst).unwrap();

        assert_eq!(fs::read(dst.join("top.bin")).unwrap(), b"top");
        assert_eq!(
            fs::read(dst.join("vendor/sub/fw.bin")).unwrap(),
            b"firmware"
        );
        assert_eq!(fs::read(dst.join("vendor/alias.bin")).unwrap(), b"firmware");
        assert!(fs::symlink_metadata(dst.join("vendor/evil.bin")).is_err());
        assert!(fs::symlink_metadata(dst.join("abs.bin")).is_err());
        assert_eq!(
            copy.skipped,
            [PathBuf::from("abs.bin"), PathBuf::from("vendor/evil.bin")]
        );
        assert_eq!(copy.installed.len(), 3);
        let mode = fs::metadata(dst.join("top.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // no temporary files left behind
        let leftovers = fs::read_dir(&dst)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("kmm-tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn firmware_symlinks_whose_host_copy_would_resolve_outside_are_not_installed() {
        // Lexically each link stays inside, but `sub/d -> ..` makes
        // `x.bin -> sub/d/sub/d/../../outside.bin` climb two levels.
        let src = tempfile::tempdir().unwrap();
        let p = src.path();
        fs::create_dir_all(p.join("sub")).unwrap();
        symlink("..", p.join("sub/d")).unwrap();
        symlink("sub/d/sub/d/../../outside.bin", p.join("x.bin")).unwrap();
        fs::write(p.join("ok.bin"), b"ok").unwrap();
        let host = tempfile::tempdir().unwrap();
        fs::write(host.path().join("outside.bin"), b"host secret").unwrap();
        let dst = host.path().join("lib/fw");

        let copy = install_firmware(p, &dst).unwrap();
        assert_no_entry_resolves_outside(&dst);
        assert_eq!(copy.installed, [PathBuf::from("ok.bin")]);
    }

    #[test]
    fn firmware_dir_resolving_outside_the_image_is_refused() {
        let top = tempfile::tempdir().unwrap();
        let image = top.path().join("img");
        fs::create_dir_all(top.path().join("host-fw")).unwrap();
        fs::write(top.path().join("host-fw/secret.bin"), b"host").unwrap();
        fs::create_dir_all(&image).unwrap();
        symlink(top.path().join("host-fw"), image.join("fw")).unwrap();
        let dst = top.path().join("dst");
        let err = install_firmware_from_image(&image, &image.join("fw/"), &dst).unwrap_err();
        assert!(matches!(err, FirmwareError::Escape { .. }), "{err}");
        assert!(!dst.join("secret.bin").exists());
        // inside: copied
        fs::create_dir_all(image.join("lib/firmware")).unwrap();
        fs::write(image.join("lib/firmware/a.bin"), b"a").unwrap();
        let copy = install_firmware_from_image(&image, &image.join("lib/firmware"), &dst).unwrap();
        assert_eq!(copy.installed, [PathBuf::from("a.bin")]);
    }

    /// Every entry under `dir` resolves inside it.
    fn assert_no_entry_resolves_outside(dir: &Path) {
        let root = dir.canonicalize().unwrap();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if let Ok(real) = path.canonicalize() {
                assert!(
                    real.starts_with(&root),
                    "{} resolves to {}",
                    path.display(),
                    real.display()
                );
            }
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                assert_no_entry_resolves_outside(&path);
            }
        }
    }

    #[test]
    fn copy_replaces_a_host_symlink_instead_of_writing_through_it() {
        let src = image();
        let host = tempfile::tempdir().unwrap();
        let outside = host.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        let dst = host.path().join("fw");
        fs::create_dir_all(&dst).unwrap();
        symlink(&outside, dst.join("top.bin")).unwrap();

        install_firmware(src.path(), &dst).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        assert_eq!(fs::read(dst.join("top.bin")).unwrap(), b"top");
    }

    #[test]
    fn host_dir_that_is_a_symlink_is_refused() {
        let src = image();
        let host = tempfile::tempdir().unwrap();
        fs::create_dir(host.path().join("real")).unwrap();
        symlink(host.path().join("real"), host.path().join("link")).unwrap();
        let err = install_firmware(src.path(), &host.path().join("link")).unwrap_err();
        assert!(matches!(err, FirmwareError::NotADirectory(_)), "{err}");
    }

    #[test]
    fn missing_source_is_reported() {
        let host = tempfile::tempdir().unwrap();
        let err = install_firmware(&host.path().join("nope"), host.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("image has no firmware directory"),
            "{err}"
        );
    }

    #[test]
    fn remove_takes_back_only_what_the_image_provided() {
        let src = image();
        let host = tempfile::tempdir().unwrap();
        let dst = host.path().join("fw");
        install_firmware(src.path(), &dst).unwrap();
        fs::write(dst.join("vendor/other.bin"), b"not ours").unwrap();

        remove_firmware(src.path(), &dst).unwrap();
        assert!(!dst.join("top.bin").exists());
        assert!(!dst.join("vendor/sub").exists());
        assert_eq!(fs::read(dst.join("vendor/other.bin")).unwrap(), b"not ours");
    }

    #[test]
    fn installed_files_can_be_removed_without_the_image() {
        let src = image();
        let host = tempfile::tempdir().unwrap();
        let dst = host.path().join("fw");
        let copy = install_firmware(src.path(), &dst).unwrap();
        drop(src);
        fs::write(dst.join("vendor/other.bin"), b"not ours").unwrap();

        let removed = remove_installed(&dst, &copy.installed).unwrap();
        assert_eq!(removed.len(), 3);
        assert!(!dst.join("top.bin").exists() && !dst.join("vendor/sub").exists());
        assert_eq!(fs::read(dst.join("vendor/other.bin")).unwrap(), b"not ours");
        assert!(dst.is_dir());
        // idempotent, and nothing outside the directory can be named
        assert!(remove_installed(&dst, &copy.installed).unwrap().is_empty());
        assert!(remove_installed(&dst, &[PathBuf::from("../outside")]).is_err());
        assert!(remove_installed(&dst, &[PathBuf::from("/etc/passwd")]).is_err());
    }

    #[test]
    fn firmware_class_path_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let param = dir.path().join("path");
        fs::write(&param, "\n").unwrap();
        set_firmware_class_path(&param, Path::new("/var/lib/firmware")).unwrap();
        assert_eq!(fs::read_to_string(&param).unwrap(), "/var/lib/firmware");
        set_firmware_class_path(&param, Path::new("/var/lib/firmware")).unwrap();
    }
}
