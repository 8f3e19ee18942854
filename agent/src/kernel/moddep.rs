//! A parser for `modules.dep` (the text file `depmod` writes next to the modules).
//!
//! Each line is `path/of/mod.ko: path/of/dep1.ko path/of/dep2.ko`, paths relative
//! to the module directory (as depmod writes them; an image may write anything,
//! see `confine.rs`); the dependency list is the full closure. Self-contained
//! (std only) so the fuzz target can compile it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `modules.dep` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// Path of the module file, relative to the module directory.
    pub path: PathBuf,
    /// Normalized names of its dependencies, in file order.
    pub deps: Vec<String>,
}

/// `modules.dep`, indexed by normalized module name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    entries: BTreeMap<String, DepEntry>,
}

impl ModulesDep {
    /// Parses the text of a `modules.dep`; malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut entries = BTreeMap::new();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let Some(name) = module_name(module.trim()) else {
                continue;
            };
            let deps = deps.split_whitespace().filter_map(module_name).collect();
            entries.insert(
                name,
                DepEntry {
                    path: PathBuf::from(module.trim()),
                    deps,
                },
            );
        }
        Self { entries }
    }

    /// Reads and parses `<dir>/modules.dep`.
    ///
    /// # Errors
    /// I/O errors reading the file.
    pub fn read(dir: &Path) -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string(
            dir.join("modules.dep"),
        )?))
    }

    /// The entry for `name` (`-` and `_` are equivalent).
    pub fn get(&self, name: &str) -> Option<&DepEntry> {
        self.entries.get(&normalize(name))
    }

    /// Number of modules listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no module is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The kernel's name for a module: `-` becomes `_` (as libkmod does).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/configfs/configfs.ko.xz` -> `configfs`.
pub fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))?;
    (!stem.is_empty()).then(|| normalize(stem))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_dependency_closures() {
        let dep = ModulesDep::parse(
            "kernel/drivers/block/null_blk/null_blk.ko: kernel/fs/configfs/configfs.ko\n\
             kernel/fs/configfs/configfs.ko:\n\
             kernel/net/a-b.ko.xz: kernel/x/c.ko.zst kernel/x/d.ko\n\
             garbage line\n",
        );
        assert_eq!(dep.len(), 3);
        let nb = dep.get("null_blk").unwrap();
        assert_eq!(
            nb.path,
            Path::new("kernel/drivers/block/null_blk/null_blk.ko")
        );
        assert_eq!(nb.deps, ["configfs"]);
        assert!(dep.get("configfs").unwrap().deps.is_empty());
        assert_eq!(dep.get("a-b").unwrap().deps, ["c", "d"]);
        assert!(dep.get("missing").is_none());
    }
}
