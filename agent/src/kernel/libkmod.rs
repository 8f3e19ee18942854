//! The real kernel: libkmod through the safe `kmod` crate API, as [`KernelOps`]
//! (the `modprobe` algorithm above it is `modprobe.rs`).
//!
//! This is the agent's only FFI-facing module, and it contains no `unsafe`
//! itself: the `kmod` crate wraps libkmod. What the crate does not wrap
//! (`kmod_module_get_initstate`, `kmod_module_get_info`) is read here in Rust:
//! module state from `/sys/module/<name>` (as libkmod itself does), a file's
//! `srcversion` from its ELF `.modinfo` section.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use kmod::{Context, Errno};
use nix::errno::Errno as E;

use super::ops::{Inserted, KernelOps, ModuleFile, ModuleState, Removed};
use super::{Error, LoadedModule, Result};

/// libkmod-backed kernel operations for the running kernel; a [`super::Kernel`].
#[derive(Debug, Clone)]
pub struct LibKmod {
    sys_module: PathBuf,
    /// The running kernel's `modules.builtin` (built-ins without parameters have
    /// no `/sys/module` entry).
    builtin: BTreeSet<String>,
}

impl LibKmod {
    /// The running kernel (`/sys/module`, `/proc/modules`).
    ///
    /// # Errors
    /// [`Error::NoModuleSupport`] if the kernel has no module support (no
    /// `/proc/modules`); [`Error::Kmod`] if libkmod cannot set up a context.
    pub fn new() -> Result<Self> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let kernel = Self::open(
            Path::new("/proc/modules"),
            Path::new("/lib/modules"),
            release.trim(),
            "/sys/module",
        )?;
        Context::new().map_err(kmod_error)?;
        Ok(kernel)
    }

    /// [`LibKmod::new`] with the paths as arguments (tests give a fake root).
    fn open(
        proc_modules: &Path,
        lib_modules: &Path,
        release: &str,
        sys_module: &str,
    ) -> Result<Self> {
        match std::fs::metadata(proc_modules) {
            Ok(_) => {}
            // A kernel built without CONFIG_MODULES: say so, and what to do,
            // rather than a bare ENOENT the agent would crash-loop on.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NoModuleSupport {
                    path: proc_modules.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(Error::Io {
                    path: proc_modules.to_path_buf(),
                    source,
                });
            }
        }
        let tree = lib_modules.join(release);
        let mut kernel = Self::with_sys_module(sys_module);
        // A node without the list still works: built-ins with parameters show
        // in sysfs; those without are then taken for loadable modules.
        match std::fs::read_to_string(tree.join("modules.builtin")) {
            Ok(text) => kernel.builtin = builtin_names(&text),
            Err(e) => tracing::warn!(
                "cannot read {}: {e}; built-in modules without parameters will not be recognised \
                 as built in. Is the host's {} mounted into the agent (deploy/ mounts it \
                 read-only) and does it hold the running kernel's directory {release}?",
                tree.join("modules.builtin").display(),
                lib_modules.display(),
            ),
        }
        Ok(kernel)
    }

    fn with_sys_module(dir: impl Into<PathBuf>) -> Self {
        Self {
            sys_module: dir.into(),
            builtin: BTreeSet::new(),
        }
    }

    fn read_state(&self, name: &str) -> Result<ModuleState> {
        if self.builtin.contains(name) {
            return Ok(ModuleState::Builtin);
        }
        let dir = self.sys_module.join(name);
        if !dir.exists() {
            return Ok(ModuleState::NotLoaded);
        }
        if !dir.join("initstate").exists() {
            return Ok(ModuleState::Builtin);
        }
        let refcnt_path = dir.join("refcnt");
        let refcount = read_trimmed(&refcnt_path)?
            .parse::<i64>()
            .map_err(|e| Error::Io {
                path: refcnt_path,
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?;
        let holders_dir = dir.join("holders");
        let mut holders = Vec::new();
        match std::fs::read_dir(&holders_dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|source| Error::Io {
                        path: holders_dir.clone(),
                        source,
                    })?;
                    holders.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
            // raced with the module going away
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ModuleState::NotLoaded),
            Err(source) => {
                return Err(Error::Io {
                    path: holders_dir,
                    source,
                });
            }
        }
        holders.sort();
        Ok(ModuleState::Loaded { refcount, holders })
    }
}

impl KernelOps for LibKmod {
    type Dir = Context;

    fn list_modules(&self) -> Result<Vec<LoadedModule>> {
        let ctx = Context::new().map_err(kmod_error)?;
        let mut out = Vec::new();
        for module in ctx.modules_loaded().map_err(kmod_error)? {
            out.push(LoadedModule {
                name: module.name().to_string_lossy().into_owned(),
                refcount: i64::from(module.refcount()),
                holders: module
                    .holders()
                    .map(|h| h.name().to_string_lossy().into_owned())
                    .collect(),
            });
        }
        Ok(out)
    }

    fn state(&self, name: &str) -> Result<ModuleState> {
        self.read_state(name)
    }

    fn open_dir(&self, module_dir: &Path) -> Result<Context> {
        super::require_modules_dep(module_dir)?;
        // libkmod reads the binary index; without it every lookup is "not found"
        if !module_dir.join("modules.dep.bin").is_file() {
            return Err(Error::NoModulesDepIndex(module_dir.to_path_buf()));
        }
        Context::new_with_dirname(module_dir).map_err(kmod_error)
    }

    fn resolve(&self, ctx: &Context, name: &str) -> Result<Option<ModuleFile>> {
        let module = ctx.module_new_from_name(name).map_err(kmod_error)?;
        // libkmod joins a relative modules.dep.bin entry to the dirname and uses
        // an absolute one as written: this is the path insert_module opens.
        let Some(path) = module.path() else {
            return Ok(None);
        };
        let deps = module
            .dependencies()
            .map(|d| d.name().to_string_lossy().into_owned())
            .collect();
        Ok(Some(ModuleFile {
            name: name.to_owned(),
            path: PathBuf::from(path),
            deps,
        }))
    }

    fn insert(&self, ctx: &Context, file: &ModuleFile, params: &[String]) -> Result<Inserted> {
        let module = ctx.module_new_from_name(&file.name).map_err(kmod_error)?;
        // insert_module opens module.path(): it must be the path that was checked
        if module.path() != Some(file.path.as_os_str()) {
            return Err(Error::Insert {
                module: file.name.clone(),
                source: io::Error::other(format!(
                    "libkmod resolved {} to {:?}, not the checked {}",
                    file.name,
                    module.path().map(OsStr::to_string_lossy),
                    file.path.display()
                )),
            });
        }
        let opts: Vec<&str> = params.iter().map(String::as_str).collect();
        match module.insert_module(0, &opts) {
            Ok(()) => Ok(Inserted::Inserted),
            Err(kmod::Error::InsertModule(Errno(code))) if code == E::EEXIST as i32 => {
                Ok(Inserted::AlreadyLoaded)
            }
            Err(e) => Err(insert_error(file.name.clone(), params, e)),
        }
    }

    fn remove(&self, name: &str) -> Result<Removed> {
        let ctx = Context::new().map_err(kmod_error)?;
        let module = ctx.module_new_from_name(name).map_err(kmod_error)?;
        match module.remove_module(0) {
            Ok(()) => Ok(Removed::Removed),
            Err(kmod::Error::RemoveModule(Errno(code))) if code == E::ENOENT as i32 => {
                Ok(Removed::NotLoaded)
            }
            Err(kmod::Error::RemoveModule(Errno(code)))
                if code == E::EAGAIN as i32 || code == E::EBUSY as i32 =>
            {
                Ok(Removed::Busy)
            }
            Err(e) => Err(Error::Remove {
                module: name.to_owned(),
                source: os_error(e),
            }),
        }
    }

    fn loaded_srcversion(&self, name: &str) -> Result<Option<String>> {
        let path = self.sys_module.join(name).join("srcversion");
        match std::fs::read_to_string(&path) {
            Ok(v) => Ok(Some(v.trim().to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    fn srcversion_of_file(&self, path: &Path) -> Result<Option<String>> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(super::modinfo::srcversion(&bytes))
    }
}

/// Module names from a `modules.builtin` (one `kernel/.../name.ko` per line).
fn builtin_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| super::moddep::module_name(l.trim()))
        .collect()
}

fn read_trimmed(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn kmod_error(e: kmod::Error) -> Error {
    Error::Kmod(e.to_string())
}

fn os_error(e: kmod::Error) -> io::Error {
    match e {
        kmod::Error::InsertModule(Errno(code))
        | kmod::Error::RemoveModule(Errno(code))
        | kmod::Error::ModuleFromPath(Errno(code)) => io::Error::from_raw_os_error(code),
        other => io::Error::other(other.to_string()),
    }
}

/// Maps `init_module` errors to the reasons users need to see.
fn insert_error(module: String, params: &[String], e: kmod::Error) -> Error {
    let code = match &e {
        kmod::Error::InsertModule(Errno(code)) => *code,
        kmod::Error::Null(_) => {
            return Error::Invalid {
                what: "parameters",
                value: params.join(" "),
                reason: "contain NUL",
            };
        }
        _ => 0,
    };
    match E::from_raw(code) {
        E::EKEYREJECTED => Error::KeyRejected { module },
        E::EINVAL => Error::InvalidParameters {
            module,
            parameters: params.to_vec(),
        },
        E::ENOENT => Error::UnknownSymbolOrParameter { module },
        _ => Error::Insert {
            module,
            source: os_error(e),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::kernel::{Kernel, LoadRequest, UnloadRequest};

    fn sysfs() -> (tempfile::TempDir, LibKmod) {
        let dir = tempfile::tempdir().unwrap();
        let kernel = LibKmod::with_sys_module(dir.path());
        (dir, kernel)
    }

    #[test]
    fn a_kernel_without_module_support_is_named_with_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let err = LibKmod::open(
            &root.path().join("proc/modules"),
            &root.path().join("lib/modules"),
            "6.1.0-test",
            "/sys/module",
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoModuleSupport { .. }), "{err:?}");
        let msg = err.to_string();
        for needle in [
            "no loadable-module support",
            "proc/modules",
            "nodeSelector",
            "--kernel simulated",
        ] {
            assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
        }
    }

    #[test]
    fn a_node_without_lib_modules_still_opens() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("proc")).unwrap();
        std::fs::write(root.path().join("proc/modules"), "").unwrap();
        let k = LibKmod::open(
            &root.path().join("proc/modules"),
            &root.path().join("lib/modules"),
            "6.1.0-test",
            "/sys/module",
        )
        .unwrap();
        assert!(k.builtin.is_empty());
    }

    #[test]
    fn state_is_read_from_sys_module() {
        let (dir, k) = sysfs();
        let m = dir.path().join("configfs");
        std::fs::create_dir_all(m.join("holders/null_blk")).unwrap();
        std::fs::write(m.join("initstate"), "live\n").unwrap();
        std::fs::write(m.join("refcnt"), "1\n").unwrap();
        std::fs::create_dir_all(dir.path().join("printk/parameters")).unwrap();

        assert_eq!(
            k.state("configfs").unwrap(),
            ModuleState::Loaded {
                refcount: 1,
                holders: vec!["null_blk".into()]
            }
        );
        assert_eq!(k.state("printk").unwrap(), ModuleState::Builtin);
        assert_eq!(k.state("brd").unwrap(), ModuleState::NotLoaded);
        assert!(k.is_loaded("printk").unwrap());
        assert!(!k.is_loaded("brd").unwrap());
    }

    #[test]
    fn builtins_come_from_modules_builtin_and_cannot_be_removed() {
        let (_dir, mut k) = sysfs();
        k.builtin = builtin_names("kernel/fs/configfs/configfs.ko\nkernel/lib/crc32c.ko\n");
        assert_eq!(k.state("configfs").unwrap(), ModuleState::Builtin);
        assert!(k.is_loaded("crc32c").unwrap());
        let err = k.remove_in_tree("configfs").unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not remove configfs: it is built into the kernel"
        );
    }

    #[test]
    fn remove_of_a_module_with_holders_is_in_use() {
        let (dir, k) = sysfs();
        let m = dir.path().join("configfs");
        std::fs::create_dir_all(m.join("holders/null_blk")).unwrap();
        std::fs::write(m.join("initstate"), "live\n").unwrap();
        std::fs::write(m.join("refcnt"), "1\n").unwrap();
        let err = k.unload(&UnloadRequest::module("configfs")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not remove configfs: in use by null_blk"
        );
    }

    #[test]
    fn srcversion_of_a_loaded_module_and_of_a_file() {
        let (dir, k) = sysfs();
        let m = dir.path().join("configfs");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("srcversion"), "C49398E125FFAC361463008\n").unwrap();
        assert_eq!(
            k.srcversion("configfs").unwrap().as_deref(),
            Some("C49398E125FFAC361463008")
        );
        assert_eq!(k.srcversion("brd").unwrap(), None);

        let ko = dir.path().join("configfs.ko");
        let elf = crate::kernel::fake_elf(&[(".modinfo", b"srcversion=ABC123\0")]);
        std::fs::write(&ko, elf).unwrap();
        assert_eq!(
            k.srcversion_of_file(&ko).unwrap().as_deref(),
            Some("ABC123")
        );
    }

    #[test]
    fn load_without_depmod_output_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let req = LoadRequest::new(dir.path(), "brd");
        let err = LibKmod::with_sys_module("/sys/module")
            .load(&req)
            .unwrap_err();
        assert!(matches!(err, Error::NoModulesDep(_)), "{err}");
        assert!(err.to_string().contains("was depmod run"), "{err}");
    }

    #[test]
    fn load_with_a_hand_made_modules_dep_asks_for_depmod() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.dep"), "kernel/brd.ko:\n").unwrap();
        let req = LoadRequest::new(dir.path(), "brd");
        let err = LibKmod::with_sys_module("/sys/module")
            .load(&req)
            .unwrap_err();
        assert!(matches!(err, Error::NoModulesDepIndex(_)), "{err}");
        assert!(err.to_string().contains("no modules.dep.bin"), "{err}");
    }

    #[test]
    fn insert_errors_carry_readable_reasons() {
        let e = |code| {
            insert_error(
                "m".into(),
                &["a=1".into()],
                kmod::Error::InsertModule(Errno(code)),
            )
        };
        assert!(
            e(E::EKEYREJECTED as i32)
                .to_string()
                .contains("Key was rejected by service")
        );
        assert!(
            e(E::EINVAL as i32)
                .to_string()
                .contains("Invalid parameters [a=1]")
        );
        assert!(
            e(E::ENOENT as i32)
                .to_string()
                .contains("unknown parameter")
        );
        assert!(
            e(E::ENOEXEC as i32)
                .to_string()
                .contains("Exec format error")
        );
    }
}
