//! [`KernelOps`]: the few things a kernel does, and nothing of how `modprobe`
//! combines them (that is `modprobe.rs`, written once above this trait).
//!
//! Implemented by [`super::LibKmod`] (libkmod and sysfs) and, in builds for
//! tests and benches, by the in-memory `SimulatedKernel`.

use std::path::{Path, PathBuf};

use super::{LoadedModule, Result};

/// A module's state in the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleState {
    /// Not in the kernel.
    NotLoaded,
    /// Built into the kernel: present, but never inserted or removed.
    Builtin,
    /// Inserted.
    Loaded {
        /// Reference count.
        refcount: i64,
        /// Modules using this one, sorted.
        holders: Vec<String>,
    },
}

/// A module as a module directory's `modules.dep` resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Normalized module name.
    pub name: String,
    /// The file the kernel implementation will open, as it will open it: the
    /// module directory joined with the `modules.dep` entry (an absolute entry
    /// is used as written, as libkmod does). Not yet proved to be inside the
    /// module directory: the caller does that before inserting.
    pub path: PathBuf,
    /// Normalized names of its dependencies (the full closure, in `modules.dep` order).
    pub deps: Vec<String>,
}

/// Result of inserting one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// This call put it in the kernel.
    Inserted,
    /// It was already there (`EEXIST`): someone else won a race.
    AlreadyLoaded,
}

/// Result of removing one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// This call took it out of the kernel.
    Removed,
    /// It was not loaded (`ENOENT`).
    NotLoaded,
    /// The kernel refused: in use (`EBUSY`/`EAGAIN`).
    Busy,
}

/// What a kernel does, one module at a time. Blocking.
///
/// Every type implementing it is a [`super::Kernel`] (the dependency walk,
/// idempotence, rollback and dependency removal come from `modprobe.rs`).
pub trait KernelOps: Send + Sync {
    /// A module directory opened for resolving names (libkmod: a context).
    type Dir;

    /// Modules currently in the kernel.
    ///
    /// # Errors
    /// If the module list cannot be read.
    fn list_modules(&self) -> Result<Vec<LoadedModule>>;

    /// The state of `name` (normalized).
    ///
    /// # Errors
    /// If kernel state cannot be read (never "not loaded" on a read error).
    fn state(&self, name: &str) -> Result<ModuleState>;

    /// Opens `module_dir` (the directory holding `modules.dep`).
    ///
    /// # Errors
    /// [`super::Error::NoModulesDep`], [`super::Error::NoModulesDepIndex`], I/O.
    fn open_dir(&self, module_dir: &Path) -> Result<Self::Dir>;

    /// `name` (normalized) in `dir`: its file and dependencies; `None` if not listed.
    ///
    /// # Errors
    /// If the index cannot be read.
    fn resolve(&self, dir: &Self::Dir, name: &str) -> Result<Option<ModuleFile>>;

    /// Inserts `module` (resolved from `dir`, its path checked) with `params`.
    ///
    /// # Errors
    /// The kernel's refusal, mapped to the [`super::Error`] users need to see.
    fn insert(&self, dir: &Self::Dir, module: &ModuleFile, params: &[String]) -> Result<Inserted>;

    /// Removes `name` (normalized).
    ///
    /// # Errors
    /// Failures other than "in use" and "not loaded".
    fn remove(&self, name: &str) -> Result<Removed>;

    /// `/sys/module/<name>/srcversion` of the loaded module; `None` if it has none.
    ///
    /// # Errors
    /// If it exists but cannot be read.
    fn loaded_srcversion(&self, name: &str) -> Result<Option<String>>;

    /// The `srcversion` a module file carries in its `.modinfo`; `None` if it
    /// has none (or is not a plain ELF file).
    ///
    /// # Errors
    /// If the file cannot be read.
    fn srcversion_of_file(&self, path: &Path) -> Result<Option<String>>;
}
