//! The kernel behind a trait: loading and unloading modules.
//!
//! [`Kernel`] is what the agent calls (synchronously; wrap calls in
//! `tokio::task::spawn_blocking`). It is implemented once, in `modprobe.rs`
//! (semantics of `modprobe -d <dir>` / `modprobe -r` as upstream KMM's worker
//! uses them), for every [`KernelOps`], the thin trait over what a kernel does:
//! * [`LibKmod`]: the real one, libkmod through the `kmod` crate (the only
//!   FFI-facing code of the agent, see `libkmod.rs`);
//! * `SimulatedKernel` (cargo feature `simulated`, and unit tests): in memory,
//!   fed by the same module directories (`modules.dep`), with fault injection.
//!   For scale and fault tests only; the proof that loading works is the VM
//!   test (`tests/tests/vm_kernel.rs`).
//!
//! [`firmware`] holds the firmware copy done before loading.

pub mod confine;
pub mod firmware;
mod libkmod;
pub mod moddep;
pub mod modinfo;
mod modprobe;
mod ops;
#[cfg(any(test, feature = "simulated"))]
mod simulated;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

pub use libkmod::LibKmod;
pub use moddep::normalize;
pub use ops::{Inserted, KernelOps, ModuleFile, ModuleState, Removed};
#[cfg(any(test, feature = "simulated"))]
pub use simulated::{Fault, SimulatedKernel, fake_elf};

/// Errors of kernel operations; messages are meant to be shown to users as-is
/// (they end up in events / status conditions).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The module directory has no `modules.dep` (and so libkmod cannot resolve anything).
    #[error("image has no modules.dep under {}; was depmod run when building it?", .0.display())]
    NoModulesDep(PathBuf),
    /// `modules.dep` without the binary index libkmod reads (hand-made, not depmod's).
    #[error(
        "image has modules.dep but no modules.dep.bin under {}; run depmod when building it",
        .0.display()
    )]
    NoModulesDepIndex(PathBuf),
    /// `dirName` or a module name is not usable.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What was invalid ("module name", "dirName", ...).
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// `modulesLoadingOrder` does not start with the module name.
    #[error("modulesLoadingOrder must start with the module name {name:?}, got {first:?}")]
    BadLoadingOrder {
        /// The module name.
        name: String,
        /// The first entry of the order.
        first: String,
    },
    /// The module is not in the image's `modules.dep` (nor built into the kernel).
    #[error("module {module} not found in {}", dir.display())]
    NotFound {
        /// The module that was asked for.
        module: String,
        /// The module directory that was searched.
        dir: PathBuf,
    },
    /// A `modules.dep` entry (absolute, `../`, or through a symlink) resolves to a
    /// file outside the module directory (or image root): never handed to the kernel.
    #[error(
        "refusing to insert {module}: its modules.dep entry {} resolves to {}, outside the image directory {}",
        entry.display(), resolved.display(), root.display()
    )]
    PathEscape {
        /// The module.
        module: String,
        /// The path as `modules.dep` made it (module directory joined with the entry).
        entry: PathBuf,
        /// Where it resolves.
        resolved: PathBuf,
        /// The canonical module directory.
        root: PathBuf,
    },
    /// The kernel refused the module signature (`EKEYREJECTED`).
    #[error(
        "could not insert {module}: Key was rejected by service (the module signature is not trusted by this kernel)"
    )]
    KeyRejected {
        /// The module.
        module: String,
    },
    /// The kernel refused a parameter value (`EINVAL`).
    #[error("could not insert {module}: Invalid parameters [{}]", parameters.join(" "))]
    InvalidParameters {
        /// The module.
        module: String,
        /// The parameters that were passed.
        parameters: Vec<String>,
    },
    /// `ENOENT` from `init_module`: an unknown parameter name or an unresolved symbol.
    #[error(
        "could not insert {module}: Unknown symbol in module, or unknown parameter (see dmesg)"
    )]
    UnknownSymbolOrParameter {
        /// The module.
        module: String,
    },
    /// The module is used by other modules or has a non-zero refcount.
    #[error("could not remove {module}: {}", in_use_reason(holders, *refcount))]
    InUse {
        /// The module.
        module: String,
        /// Modules holding it.
        holders: Vec<String>,
        /// Its reference count.
        refcount: i64,
    },
    /// `--first-time`: a module to load is already in the kernel (modprobe's
    /// `KMOD_PROBE_FAIL_ON_LOADED`).
    #[error("could not insert {module}: Module already in kernel (--first-time)")]
    AlreadyLoaded {
        /// The module.
        module: String,
    },
    /// `--first-time`: a module to remove is not in the kernel.
    #[error("could not remove {module}: Module is not in kernel (--first-time)")]
    NotLoaded {
        /// The module.
        module: String,
    },
    /// Removal of a module that is built into the kernel (e.g. in `inTreeModulesToRemove`).
    #[error("could not remove {module}: it is built into the kernel")]
    Builtin {
        /// The module.
        module: String,
    },
    /// Any other insert failure.
    #[error("could not insert {module}: {source}")]
    Insert {
        /// The module.
        module: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Any other remove failure.
    #[error("could not remove {module}: {source}")]
    Remove {
        /// The module.
        module: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The running kernel has no loadable-module support (no `/proc/modules`).
    #[error(
        "this kernel has no loadable-module support ({} does not exist), so kmm-agent cannot \
         load modules on this node. Keep the agent off such nodes with a nodeSelector or node \
         affinity on the kmm-agent DaemonSet (docs/install.md, \"Nodes the agent runs on\"); \
         `--kernel simulated` (KMM_KERNEL=simulated) is for tests only",
        path.display()
    )]
    NoModuleSupport {
        /// The missing file.
        path: PathBuf,
    },
    /// libkmod could not set up a context or list modules.
    #[error("libkmod: {0}")]
    Kmod(String),
    /// Reading kernel state (`/proc/modules`, `/sys/module`) failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A fault injected into [`SimulatedKernel`].
    #[error("simulated failure: {0}")]
    Simulated(String),
}

fn in_use_reason(holders: &[String], refcount: i64) -> String {
    if holders.is_empty() {
        format!("in use (refcount {refcount})")
    } else {
        format!("in use by {}", holders.join(", "))
    }
}

impl Error {
    /// A short, stable label for metrics (`failures{kind=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::NoModulesDep(_) | Error::NoModulesDepIndex(_) => "no_modules_dep",
            Error::Invalid { .. } | Error::BadLoadingOrder { .. } => "invalid_request",
            Error::NotFound { .. } => "not_found",
            Error::PathEscape { .. } => "path_escape",
            Error::KeyRejected { .. } => "key_rejected",
            Error::InvalidParameters { .. } | Error::UnknownSymbolOrParameter { .. } => {
                "invalid_parameters"
            }
            Error::InUse { .. } => "in_use",
            Error::Builtin { .. } => "builtin",
            Error::AlreadyLoaded { .. } => "already_loaded",
            Error::NotLoaded { .. } => "not_loaded",
            Error::Insert { .. } => "insert",
            Error::Remove { .. } => "remove",
            Error::NoModuleSupport { .. } => "no_module_support",
            Error::Kmod(_) => "libkmod",
            Error::Io { .. } => "io",
            Error::Simulated(_) => "simulated",
        }
    }
}

/// Result of kernel operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A module currently in the kernel (one line of `/proc/modules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModule {
    /// Normalized name (`_`, not `-`).
    pub name: String,
    /// Reference count.
    pub refcount: i64,
    /// Modules that use this one.
    pub holders: Vec<String>,
}

/// What to load: the `modprobe -d` part of a Module's `moduleLoader.container.modprobe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadRequest {
    /// Directory holding `modules.dep`: `<image root>/<dirName>/lib/modules/<kernel>`
    /// (see [`module_dir`]).
    pub module_dir: PathBuf,
    /// `moduleName`.
    pub name: String,
    /// `parameters` (`k=v`), passed to `name` only.
    pub parameters: Vec<String>,
    /// Modules to load before `name`, in load order (from `modulesLoadingOrder`).
    pub load_first: Vec<String>,
    /// Every inserted file must resolve inside this directory: the image root
    /// if set ([`Self::within_image`]), else `module_dir`.
    pub image_root: Option<PathBuf>,
    /// `--first-time`: fail, before any insert, if a module of the load order is in the kernel.
    pub fail_if_loaded: bool,
}

impl LoadRequest {
    /// A request for `name` from `module_dir`, no parameters, no extra modules.
    pub fn new(module_dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            module_dir: module_dir.into(),
            name: name.into(),
            parameters: Vec::new(),
            load_first: Vec::new(),
            image_root: None,
            fail_if_loaded: false,
        }
    }

    /// `--first-time` when `on`: see [`Self::fail_if_loaded`].
    pub fn first_time(mut self, on: bool) -> Self {
        self.fail_if_loaded = on;
        self
    }

    /// Allows module files anywhere inside `image_root` (e.g. a `modules.dep`
    /// entry that is a symlink to elsewhere in the image), not only under
    /// `module_dir`.
    pub fn within_image(mut self, image_root: impl Into<PathBuf>) -> Self {
        self.image_root = Some(image_root.into());
        self
    }

    /// The directory every inserted file must resolve inside.
    pub fn confinement_root(&self) -> &Path {
        self.image_root.as_deref().unwrap_or(&self.module_dir)
    }

    /// Sets `parameters`.
    pub fn with_parameters(mut self, parameters: impl IntoIterator<Item = String>) -> Self {
        self.parameters = parameters.into_iter().collect();
        self
    }

    /// Applies `modulesLoadingOrder` as the API gives it: `[moduleName, dep_a, dep_b]`
    /// means load `dep_b`, then `dep_a`, then `moduleName`. An empty order is a no-op.
    ///
    /// # Errors
    /// [`Error::BadLoadingOrder`] if the first entry is not the module name,
    /// [`Error::Invalid`] if a module is listed twice.
    pub fn with_loading_order(mut self, order: &[String]) -> Result<Self> {
        let Some((first, rest)) = order.split_first() else {
            return Ok(self);
        };
        if normalize(first) != normalize(&self.name) {
            return Err(Error::BadLoadingOrder {
                name: self.name,
                first: first.clone(),
            });
        }
        let mut seen = BTreeSet::new();
        if order.iter().any(|m| !seen.insert(normalize(m))) {
            return Err(Error::Invalid {
                what: "modulesLoadingOrder",
                value: order.join(","),
                reason: "lists a module twice",
            });
        }
        self.load_first = rest.iter().rev().cloned().collect();
        Ok(self)
    }

    /// Every module of the request in load order (`load_first`, then `name`).
    pub fn load_order(&self) -> impl Iterator<Item = &str> {
        self.load_first
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(self.name.as_str()))
    }
}

/// Which dependencies [`Kernel::unload`] may remove after a module is gone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DepPolicy {
    /// Like `modprobe -r`: every dependency whose refcount drops to 0.
    #[default]
    Unused,
    /// Only unused dependencies in this set (e.g. what [`LoadOutcome::inserted`]
    /// reported), so that modules loaded before us stay.
    OnlyThese(BTreeSet<String>),
    /// Never remove dependencies.
    None,
}

impl DepPolicy {
    fn allows(&self, name: &str) -> bool {
        match self {
            DepPolicy::Unused => true,
            DepPolicy::OnlyThese(set) => set.contains(name),
            DepPolicy::None => false,
        }
    }
}

/// What to unload: modules in unload order, and what to do with their dependencies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnloadRequest {
    /// Modules to remove, in this order. Modules not loaded are skipped.
    pub modules: Vec<String>,
    /// Dependencies to remove once unused.
    pub deps: DepPolicy,
    /// `--first-time`: fail, before any removal, if one of `modules` is not in the kernel.
    pub fail_if_not_loaded: bool,
}

impl UnloadRequest {
    /// `modprobe -r name`.
    pub fn module(name: impl Into<String>) -> Self {
        Self {
            modules: vec![name.into()],
            ..Self::default()
        }
    }

    /// The reverse of a load: `name` first, then `load_first` backwards
    /// (`modulesLoadingOrder` order), dependencies removed `modprobe -r` style.
    pub fn reverse_of(load: &LoadRequest) -> Self {
        let mut modules: Vec<String> = load.load_order().map(str::to_owned).collect();
        modules.reverse();
        Self {
            modules,
            ..Self::default()
        }
    }

    /// Restricts dependency removal to `inserted` (what a load reported).
    pub fn only_deps(mut self, inserted: impl IntoIterator<Item = String>) -> Self {
        self.deps = DepPolicy::OnlyThese(inserted.into_iter().map(|m| normalize(&m)).collect());
        self
    }
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadOutcome {
    /// Modules inserted by this call, in insertion order (dependencies first).
    pub inserted: Vec<String>,
    /// The requested module was already in the kernel (its parameters were not applied).
    pub already_loaded: bool,
    /// `srcversion` of each inserted module that has one (read from
    /// `/sys/module/<m>/srcversion` right after its insert).
    pub srcversions: BTreeMap<String, String>,
}

/// What an unload or in-tree removal did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnloadOutcome {
    /// Modules removed, in removal order.
    pub removed: Vec<String>,
}

/// Loading and unloading kernel modules on this node.
///
/// Implementations are blocking; call them from `spawn_blocking`.
pub trait Kernel: Send + Sync {
    /// Modules currently in the kernel.
    ///
    /// # Errors
    /// If the module list cannot be read.
    fn loaded_modules(&self) -> Result<Vec<LoadedModule>>;

    /// Whether `name` (`-` and `_` are equivalent) is loaded (built-ins count as loaded).
    ///
    /// # Errors
    /// If kernel state cannot be read.
    fn is_loaded(&self, name: &str) -> Result<bool>;

    /// Loads `req.load_first` then `req.name` from `req.module_dir`, each after the
    /// dependencies `modules.dep` lists for it.
    ///
    /// # Guarantees
    /// Idempotent: modules already loaded are skipped (`File exists` is success),
    /// unless [`LoadRequest::fail_if_loaded`].
    /// If a module fails, the modules this call inserted are removed again.
    ///
    /// # Errors
    /// [`Error::NoModulesDep`], [`Error::NotFound`], [`Error::PathEscape`] and
    /// [`Error::AlreadyLoaded`] (checked for every module before the first insert), [`Error::KeyRejected`],
    /// [`Error::InvalidParameters`], [`Error::UnknownSymbolOrParameter`], [`Error::Insert`].
    fn load(&self, req: &LoadRequest) -> Result<LoadOutcome>;

    /// Removes `req.modules` in order, then their dependencies as `req.deps` allows
    /// (only those whose refcount dropped to 0).
    ///
    /// # Guarantees
    /// Idempotent: modules not loaded are skipped, unless
    /// [`UnloadRequest::fail_if_not_loaded`]. Failing to remove a dependency
    /// is not an error (as with `modprobe -r`).
    ///
    /// # Errors
    /// [`Error::NotLoaded`] (before any removal), [`Error::InUse`] (nothing more is
    /// removed after it), [`Error::Builtin`], [`Error::Remove`].
    fn unload(&self, req: &UnloadRequest) -> Result<UnloadOutcome>;

    /// `inTreeModulesToRemove`: removes `name` if loaded (`modprobe -r name`).
    /// A module that is not loaded is success with nothing removed.
    ///
    /// # Errors
    /// [`Error::InUse`] with the holders, [`Error::Builtin`], [`Error::Remove`].
    fn remove_in_tree(&self, name: &str) -> Result<UnloadOutcome> {
        self.unload(&UnloadRequest::module(name))
    }

    /// `srcversion` of the loaded module `name` (`/sys/module/<name>/srcversion`);
    /// `None` if it is not loaded or has none (built without `MODULE_VERSION`).
    ///
    /// # Errors
    /// If it exists but cannot be read.
    fn srcversion(&self, name: &str) -> Result<Option<String>>;

    /// `srcversion` of the file that [`Kernel::load`] would insert for `name`
    /// from `module_dir` (from its `.modinfo`); `None` if it has none, or the
    /// file is compressed (`.ko.xz`, ...).
    ///
    /// # Errors
    /// [`Error::NoModulesDep`], [`Error::NotFound`], [`Error::PathEscape`], I/O.
    fn file_srcversion(&self, module_dir: &Path, name: &str) -> Result<Option<String>>;
}

/// Checks a module name before it goes anywhere near a path or the kernel.
///
/// # Errors
/// [`Error::Invalid`] for empty names, path separators, whitespace or NUL.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.contains(['/', '\0']) || name.chars().any(char::is_whitespace) {
        Some("contains '/', whitespace or NUL")
    } else if name.len() > 55 {
        // MODULE_NAME_LEN is 64 - sizeof(unsigned long) - 1
        Some("longer than 55 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Invalid {
            what: "module name",
            value: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `<image_root>/<dir_name>/lib/modules/<kernel_release>`, with `dir_name` (e.g.
/// `/opt`) kept inside the image root.
///
/// # Errors
/// [`Error::Invalid`] if `dir_name` or `kernel_release` would leave the image root.
pub fn module_dir(image_root: &Path, dir_name: &str, kernel_release: &str) -> Result<PathBuf> {
    let mut dir = image_root.to_path_buf();
    for c in Path::new(dir_name).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => dir.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Invalid {
                    what: "dirName",
                    value: dir_name.to_owned(),
                    reason: "must not contain '..'",
                });
            }
        }
    }
    if kernel_release.is_empty() || kernel_release.contains('/') || kernel_release == ".." {
        return Err(Error::Invalid {
            what: "kernel release",
            value: kernel_release.to_owned(),
            reason: "must be a single path component",
        });
    }
    Ok(dir.join("lib/modules").join(kernel_release))
}

/// Fails with [`Error::NoModulesDep`] unless `<dir>/modules.dep` exists.
fn require_modules_dep(dir: &Path) -> Result<()> {
    if dir.join("modules.dep").is_file() {
        Ok(())
    } else {
        Err(Error::NoModulesDep(dir.to_path_buf()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn loading_order_is_reversed_and_must_start_with_the_module() {
        let order = ["a".to_owned(), "dep_a".to_owned(), "dep_b".to_owned()];
        let req = LoadRequest::new("/m", "a")
            .with_loading_order(&order)
            .unwrap();
        assert_eq!(
            req.load_order().collect::<Vec<_>>(),
            ["dep_b", "dep_a", "a"]
        );
        assert_eq!(
            UnloadRequest::reverse_of(&req).modules,
            ["a", "dep_a", "dep_b"]
        );

        let err = LoadRequest::new("/m", "a")
            .with_loading_order(&["b".to_owned()])
            .unwrap_err();
        assert!(
            err.to_string().contains("must start with the module name"),
            "{err}"
        );
        let err = LoadRequest::new("/m", "a")
            .with_loading_order(&["a".to_owned(), "b".to_owned(), "a".to_owned()])
            .unwrap_err();
        assert!(err.to_string().contains("lists a module twice"), "{err}");
        // '-' and '_' are the same module
        assert!(
            LoadRequest::new("/m", "my-mod")
                .with_loading_order(&["my_mod".to_owned()])
                .is_ok()
        );
    }

    #[test]
    fn module_dir_stays_inside_the_image() {
        let root = Path::new("/img");
        assert_eq!(
            module_dir(root, "/opt", "6.1.0-56-amd64").unwrap(),
            Path::new("/img/opt/lib/modules/6.1.0-56-amd64")
        );
        assert_eq!(
            module_dir(root, "/", "k").unwrap(),
            Path::new("/img/lib/modules/k")
        );
        assert!(module_dir(root, "/opt/../../etc", "k").is_err());
        assert!(module_dir(root, "/opt", "../k").is_err());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("null_blk").is_ok());
        for bad in ["", "a/b", "a b", "a\0"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn in_use_error_names_the_holders() {
        let e = Error::InUse {
            module: "configfs".into(),
            holders: vec!["null_blk".into()],
            refcount: 1,
        };
        assert_eq!(
            e.to_string(),
            "could not remove configfs: in use by null_blk"
        );
        assert_eq!(e.metric_label(), "in_use");
    }
}
