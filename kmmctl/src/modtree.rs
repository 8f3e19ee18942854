//! Reading a kernel module tree (`<root>/lib/modules/<kver>`): `modules.dep`,
//! `modules.builtin`, and the dependency closure of requested module names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::depmod::{self, Depmod};

/// Errors while reading or resolving a module tree.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `<root>/lib/modules/<kver>` does not exist.
    #[error("kernel module directory {0} does not exist (is --kernel-version right?)")]
    KernelDirMissing(PathBuf),
    /// A file of the tree could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A line of modules.dep is not `path: dep dep...`.
    #[error("{path}:{line}: malformed modules.dep line (expected 'module.ko: deps...')")]
    Malformed {
        /// The modules.dep file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// The requested name is not in modules.dep.
    #[error("module '{name}' not found in {dep_file}")]
    NotFound {
        /// The name as requested.
        name: String,
        /// The modules.dep that was searched.
        dep_file: PathBuf,
    },
    /// The requested module is compiled into the kernel, so there is nothing to ship.
    #[error(
        "module '{name}' is built into kernel {kver} (listed in modules.builtin); there is no .ko to package"
    )]
    Builtin {
        /// The name as requested.
        name: String,
        /// Kernel release.
        kver: String,
    },
    /// modules.dep names a dependency that has no line of its own.
    #[error("{dep_file}: '{module}' depends on '{dep}', which has no entry of its own")]
    DanglingDependency {
        /// The modules.dep file.
        dep_file: PathBuf,
        /// The depending module path.
        module: String,
        /// The missing dependency path.
        dep: String,
    },
    /// Running depmod to create a missing modules.dep failed.
    #[error("modules.dep is missing in {dir} and depmod failed")]
    Depmod {
        /// The module directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: depmod::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One module line of modules.dep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// Canonical module name (`-` replaced by `_`, no suffix).
    pub name: String,
    /// Path relative to the module directory, as in modules.dep (may end in `.ko.xz` etc.).
    pub rel_path: String,
    /// Direct dependencies, as relative paths.
    pub deps: Vec<String>,
}

/// Module suffixes depmod/modprobe understand, longest first.
const SUFFIXES: [&str; 4] = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// The kernel's module name for a name or path: basename, suffix stripped,
/// `-` → `_` (the kernel and kmod treat both the same).
pub fn canonical_name(name_or_path: &str) -> String {
    let base = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let stem = SUFFIXES
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    stem.replace('-', "_")
}

/// A parsed module tree for one kernel release.
#[derive(Debug)]
pub struct ModuleTree {
    kver: String,
    moddir: PathBuf,
    by_name: BTreeMap<String, DepEntry>,
    by_path: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Opens `<root>/lib/modules/<kver>`. If `modules.dep` is missing (Debian's
    /// linux-image .deb ships none) runs `depmod -b <root> <kver>` first.
    pub fn open(root: &Path, kver: &str, depmod: Option<&Depmod>) -> Result<Self> {
        let moddir = root.join("lib/modules").join(kver);
        if !moddir.is_dir() {
            return Err(Error::KernelDirMissing(moddir));
        }
        let dep_file = moddir.join("modules.dep");
        if !dep_file.exists() {
            tracing::info!(
                "{} is missing, running depmod -b {}",
                dep_file.display(),
                root.display()
            );
            let found;
            let depmod = match depmod {
                Some(d) => d,
                None => {
                    found = Depmod::find().map_err(|source| Error::Depmod {
                        dir: moddir.clone(),
                        source,
                    })?;
                    &found
                }
            };
            depmod.run(root, kver).map_err(|source| Error::Depmod {
                dir: moddir.clone(),
                source,
            })?;
        }
        let text = read(&dep_file)?;
        let entries = parse_modules_dep(&text, &dep_file)?;
        let builtin_file = moddir.join("modules.builtin");
        let builtin = if builtin_file.exists() {
            read(&builtin_file)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(canonical_name)
                .collect()
        } else {
            BTreeSet::new()
        };
        let by_path = entries
            .iter()
            .map(|e| (e.rel_path.clone(), e.name.clone()))
            .collect();
        let by_name = entries.into_iter().map(|e| (e.name.clone(), e)).collect();
        Ok(Self {
            kver: kver.to_string(),
            moddir,
            by_name,
            by_path,
            builtin,
        })
    }

    /// `<root>/lib/modules/<kver>`.
    pub fn moddir(&self) -> &Path {
        &self.moddir
    }

    /// Looks a module up by name (`-`/`_` and suffixes do not matter).
    pub fn get(&self, name: &str) -> Option<&DepEntry> {
        self.by_name.get(&canonical_name(name))
    }

    /// The requested modules and everything they depend on, each once,
    /// dependencies before the modules that need them.
    ///
    /// # Errors
    /// [`Error::NotFound`] / [`Error::Builtin`] for an unknown or built-in name,
    /// [`Error::DanglingDependency`] if modules.dep is inconsistent.
    pub fn resolve<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<&DepEntry>> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let name = name.as_ref();
            let Some(entry) = self.get(name) else {
                if self.builtin.contains(&canonical_name(name)) {
                    return Err(Error::Builtin {
                        name: name.to_string(),
                        kver: self.kver.clone(),
                    });
                }
                return Err(Error::NotFound {
                    name: name.to_string(),
                    dep_file: self.moddir.join("modules.dep"),
                });
            };
            self.visit(entry, &mut seen, &mut out)?;
        }
        Ok(out)
    }

    /// Post-order walk; `seen` also breaks cycles (depmod refuses them, but a
    /// hand-written modules.dep might have one).
    fn visit<'a>(
        &'a self,
        entry: &'a DepEntry,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<&'a DepEntry>,
    ) -> Result<()> {
        if !seen.insert(entry.name.clone()) {
            return Ok(());
        }
        for dep in &entry.deps {
            let dep_entry = self
                .by_path
                .get(dep)
                .and_then(|n| self.by_name.get(n))
                .ok_or_else(|| Error::DanglingDependency {
                    dep_file: self.moddir.join("modules.dep"),
                    module: entry.rel_path.clone(),
                    dep: dep.clone(),
                })?;
            self.visit(dep_entry, seen, out)?;
        }
        out.push(entry);
        Ok(())
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses modules.dep text. Absolute paths (old depmod) are kept as given.
pub fn parse_modules_dep(text: &str, path: &Path) -> Result<Vec<DepEntry>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (module, deps) = line.split_once(':').ok_or_else(|| Error::Malformed {
            path: path.to_path_buf(),
            line: i + 1,
        })?;
        let module = module.trim();
        if module.is_empty() {
            return Err(Error::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
            });
        }
        out.push(DepEntry {
            name: canonical_name(module),
            rel_path: module.to_string(),
            deps: deps.split_whitespace().map(str::to_string).collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_name_strips_suffix_and_dashes() {
        assert_eq!(
            canonical_name("kernel/drivers/block/null_blk/null_blk.ko"),
            "null_blk"
        );
        assert_eq!(canonical_name("kernel/fs/x/foo-bar.ko.xz"), "foo_bar");
        assert_eq!(canonical_name("a.ko.zst"), "a");
        assert_eq!(canonical_name("b.ko.gz"), "b");
        assert_eq!(canonical_name("null-blk"), "null_blk");
    }

    #[test]
    fn malformed_line_is_reported_with_its_number() {
        let err =
            parse_modules_dep("a.ko:\nno colon here\n", Path::new("/x/modules.dep")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/x/modules.dep:2: malformed modules.dep line (expected 'module.ko: deps...')"
        );
    }
}
