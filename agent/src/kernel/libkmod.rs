//! The real [`Kernel`]: libkmod through the safe `kmod` crate API.
//!
//! This is the agent's only FFI-facing module, and it contains no `unsafe`
//! itself: the `kmod` crate wraps libkmod. What the crate does not wrap
//! (`kmod_module_probe_insert_module`, `kmod_module_get_initstate`) is done here
//! in Rust: dependencies are inserted by walking `dependencies()` depth-first, and
//! module state is read from `/sys/module/<name>` (as libkmod itself does).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use kmod::{Context, Errno};
use nix::errno::Errno as E;
use tracing::{debug, warn};

use super::{
    DepPolicy, Error, Kernel, LoadOutcome, LoadRequest, LoadedModule, Result, UnloadOutcome,
    UnloadRequest, normalize, validate_name,
};

/// libkmod-backed [`Kernel`] for the running kernel.
#[derive(Debug, Clone)]
pub struct LibKmod {
    sys_module: PathBuf,
    /// The running kernel's `modules.builtin` (built-ins without parameters have
    /// no `/sys/module` entry).
    builtin: BTreeSet<String>,
}

/// A module's state as `/sys/module/<name>` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    NotLoaded,
    /// Built into the kernel: present, but never inserted or removed.
    Builtin,
    Loaded {
        refcount: i64,
        holders: Vec<String>,
    },
}

impl LibKmod {
    /// The running kernel (`/sys/module`, `/proc/modules`).
    ///
    /// # Errors
    /// [`Error::Kmod`] if libkmod cannot set up a context; [`Error::Io`] if the
    /// kernel has no module support (no `/proc/modules`).
    pub fn new() -> Result<Self> {
        Context::new().map_err(kmod_error)?;
        let proc_modules = Path::new("/proc/modules");
        std::fs::metadata(proc_modules).map_err(|source| Error::Io {
            path: proc_modules.to_path_buf(),
            source,
        })?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let builtin_list = Path::new("/lib/modules")
            .join(release.trim())
            .join("modules.builtin");
        let mut kernel = Self::with_sys_module("/sys/module");
        // a node without the list still works: built-ins with parameters show in sysfs
        kernel.builtin = std::fs::read_to_string(builtin_list)
            .map(|text| builtin_names(&text))
            .unwrap_or_default();
        Ok(kernel)
    }

    fn with_sys_module(dir: impl Into<PathBuf>) -> Self {
        Self {
            sys_module: dir.into(),
            builtin: BTreeSet::new(),
        }
    }

    fn state(&self, name: &str) -> Result<State> {
        if self.builtin.contains(name) {
            return Ok(State::Builtin);
        }
        let dir = self.sys_module.join(name);
        if !dir.exists() {
            return Ok(State::NotLoaded);
        }
        if !dir.join("initstate").exists() {
            return Ok(State::Builtin);
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::NotLoaded),
            Err(source) => {
                return Err(Error::Io {
                    path: holders_dir,
                    source,
                });
            }
        }
        holders.sort();
        Ok(State::Loaded { refcount, holders })
    }

    /// Inserts `name` after its `modules.dep` dependencies, depth-first.
    fn insert_tree(
        &self,
        ctx: &Context,
        dir: &Path,
        name: &str,
        params: &[String],
        visited: &mut BTreeSet<String>,
        inserted: &mut Vec<String>,
    ) -> Result<()> {
        let name = normalize(name);
        if !visited.insert(name.clone()) || self.state(&name)? != State::NotLoaded {
            return Ok(());
        }
        let module = ctx.module_new_from_name(&name).map_err(kmod_error)?;
        if module.path().is_none() {
            return Err(Error::NotFound {
                module: name,
                dir: dir.to_path_buf(),
            });
        }
        let deps: Vec<String> = module
            .dependencies()
            .map(|d| d.name().to_string_lossy().into_owned())
            .collect();
        for dep in &deps {
            self.insert_tree(ctx, dir, dep, &[], visited, inserted)?;
        }
        let opts: Vec<&str> = params.iter().map(String::as_str).collect();
        match module.insert_module(0, &opts) {
            Ok(()) => {
                debug!(module = %name, ?params, "inserted");
                inserted.push(name);
                Ok(())
            }
            // loaded by someone else since we looked: what we wanted
            Err(kmod::Error::InsertModule(Errno(code))) if code == E::EEXIST as i32 => Ok(()),
            Err(e) => Err(insert_error(name, params, e)),
        }
    }

    /// Modules that `name` uses (those listing it as a holder).
    fn used_by(&self, ctx: &Context, name: &str) -> Result<Vec<String>> {
        let mut uses = Vec::new();
        for module in ctx.modules_loaded().map_err(kmod_error)? {
            if module.holders().any(|h| h.name() == name) {
                uses.push(module.name().to_string_lossy().into_owned());
            }
        }
        Ok(uses)
    }

    /// Removes `name`, then the modules it used as `policy` allows (once unused).
    /// Failures on dependencies (`explicit == false`) are logged, not returned.
    fn remove_tree(
        &self,
        ctx: &Context,
        name: &str,
        policy: &DepPolicy,
        explicit: bool,
        removed: &mut Vec<String>,
    ) -> Result<()> {
        let (refcount, holders) = match self.state(name)? {
            State::Loaded { refcount, holders } => (refcount, holders),
            State::NotLoaded => return Ok(()),
            State::Builtin if explicit => {
                return Err(Error::Builtin {
                    module: name.to_owned(),
                });
            }
            State::Builtin => return Ok(()),
        };
        if refcount > 0 || !holders.is_empty() {
            return if explicit {
                Err(Error::InUse {
                    module: name.to_owned(),
                    holders,
                    refcount,
                })
            } else {
                Ok(())
            };
        }
        let uses = self.used_by(ctx, name)?;
        let module = ctx.module_new_from_name(name).map_err(kmod_error)?;
        match module.remove_module(0) {
            Ok(()) => {
                debug!(module = %name, "removed");
                removed.push(name.to_owned());
            }
            Err(kmod::Error::RemoveModule(Errno(code))) if code == E::ENOENT as i32 => {}
            Err(e) if !explicit => {
                warn!(module = %name, error = %e, "could not remove unused dependency");
                return Ok(());
            }
            Err(kmod::Error::RemoveModule(Errno(code)))
                if code == E::EAGAIN as i32 || code == E::EBUSY as i32 =>
            {
                let (refcount, holders) = match self.state(name)? {
                    State::Loaded { refcount, holders } => (refcount, holders),
                    _ => (0, Vec::new()),
                };
                return Err(Error::InUse {
                    module: name.to_owned(),
                    holders,
                    refcount,
                });
            }
            Err(e) => {
                return Err(Error::Remove {
                    module: name.to_owned(),
                    source: os_error(e),
                });
            }
        }
        for dep in uses {
            if policy.allows(&dep) {
                self.remove_tree(ctx, &dep, policy, false, removed)?;
            }
        }
        Ok(())
    }
}

impl Kernel for LibKmod {
    fn loaded_modules(&self) -> Result<Vec<LoadedModule>> {
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

    fn is_loaded(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        Ok(self.state(&normalize(name))? != State::NotLoaded)
    }

    fn load(&self, req: &LoadRequest) -> Result<LoadOutcome> {
        for name in req.load_order() {
            validate_name(name)?;
        }
        super::require_modules_dep(&req.module_dir)?;
        // libkmod reads the binary index; without it every lookup is "not found"
        if !req.module_dir.join("modules.dep.bin").is_file() {
            return Err(Error::NoModulesDepIndex(req.module_dir.clone()));
        }
        let ctx = Context::new_with_dirname(&req.module_dir).map_err(kmod_error)?;
        let main = normalize(&req.name);
        let already_loaded = self.state(&main)? != State::NotLoaded;
        let mut visited = BTreeSet::new();
        let mut inserted = Vec::new();
        let mut result = Ok(());
        for name in req.load_order() {
            let params: &[String] = if normalize(name) == main {
                &req.parameters
            } else {
                &[]
            };
            result = self.insert_tree(
                &ctx,
                &req.module_dir,
                name,
                params,
                &mut visited,
                &mut inserted,
            );
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result {
            // leave the kernel as we found it
            for name in inserted.iter().rev() {
                let module = ctx.module_new_from_name(name).map_err(kmod_error)?;
                if let Err(undo) = module.remove_module(0) {
                    warn!(module = %name, error = %undo, "could not roll back after a failed load");
                }
            }
            return Err(e);
        }
        Ok(LoadOutcome {
            inserted,
            already_loaded,
        })
    }

    fn unload(&self, req: &UnloadRequest) -> Result<UnloadOutcome> {
        for name in &req.modules {
            validate_name(name)?;
        }
        let ctx = Context::new().map_err(kmod_error)?;
        let mut removed = Vec::new();
        for name in &req.modules {
            self.remove_tree(&ctx, &normalize(name), &req.deps, true, &mut removed)?;
        }
        Ok(UnloadOutcome { removed })
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

    fn sysfs() -> (tempfile::TempDir, LibKmod) {
        let dir = tempfile::tempdir().unwrap();
        let kernel = LibKmod::with_sys_module(dir.path());
        (dir, kernel)
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
            State::Loaded {
                refcount: 1,
                holders: vec!["null_blk".into()]
            }
        );
        assert_eq!(k.state("printk").unwrap(), State::Builtin);
        assert_eq!(k.state("brd").unwrap(), State::NotLoaded);
        assert!(k.is_loaded("printk").unwrap());
        assert!(!k.is_loaded("brd").unwrap());
    }

    #[test]
    fn builtins_come_from_modules_builtin_and_cannot_be_removed() {
        let (_dir, mut k) = sysfs();
        k.builtin = builtin_names("kernel/fs/configfs/configfs.ko\nkernel/lib/crc32c.ko\n");
        assert_eq!(k.state("configfs").unwrap(), State::Builtin);
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
        let ctx = Context::new().unwrap();
        let err = k
            .remove_tree(&ctx, "configfs", &DepPolicy::Unused, true, &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not remove configfs: in use by null_blk"
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
