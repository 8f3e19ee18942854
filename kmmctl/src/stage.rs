//! Staging the image's file tree in a temporary directory:
//! `<dirName>/lib/modules/<kver>/...` with the modules, the builtin lists and a
//! filtered modules.order, the indexes `depmod -b` writes, and `/firmware/...`.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::decompress::{self, split_suffix};
use crate::depmod::{self, Depmod};

/// Errors while staging files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be written or read.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A module file could not be read or decompressed.
    #[error(transparent)]
    Module(#[from] decompress::Error),
    /// depmod failed on the staged tree.
    #[error("depmod on the staged tree failed")]
    Depmod(#[source] depmod::Error),
    /// Two inputs would land on the same path in the image.
    #[error("two inputs would both be written to /{0}")]
    Duplicate(String),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A module to put into the image.
#[derive(Debug, Clone)]
pub struct ModuleFile {
    /// Source file (may be compressed).
    pub source: PathBuf,
    /// Destination relative to `lib/modules/<kver>/`, always ending in `.ko`.
    pub dest: String,
}

impl ModuleFile {
    /// Destination for a source path relative to the tree's module dir:
    /// same relative path, compression suffix dropped.
    pub fn from_tree(moddir: &Path, rel_path: &str) -> Self {
        // Old depmod versions wrote absolute paths into modules.dep.
        let rel = Path::new(rel_path)
            .strip_prefix(moddir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| rel_path.trim_start_matches('/').to_string());
        Self {
            source: moddir.join(&rel),
            dest: split_suffix(&rel).0.to_string(),
        }
    }
}

/// A firmware file to put into the image.
#[derive(Debug, Clone)]
pub struct FirmwareFile {
    /// Source file.
    pub source: PathBuf,
    /// Destination relative to the firmware directory (e.g. `i915/x.bin`).
    pub dest: String,
}

/// Everything that goes into the layer.
#[derive(Debug, Clone)]
pub struct StagePlan {
    /// Kernel release.
    pub kver: String,
    /// The image's module root without the leading `/` (e.g. `opt`).
    pub dir_name: String,
    /// Firmware directory without the leading `/` (e.g. `firmware`).
    pub firmware_dir: String,
    /// Modules, in load order (dependencies first).
    pub modules: Vec<ModuleFile>,
    /// Firmware files.
    pub firmware: Vec<FirmwareFile>,
    /// The source tree's `lib/modules/<kver>`, for modules.order and modules.builtin*.
    pub tree_moddir: Option<PathBuf>,
}

/// Files copied from the tree so modprobe in the image knows the builtins.
const BUILTIN_FILES: [&str; 2] = ["modules.builtin", "modules.builtin.modinfo"];

/// Writes the plan under `stage` and runs depmod on it.
pub fn stage(plan: &StagePlan, depmod: &Depmod, stage: &Path) -> Result<()> {
    let base = stage.join(&plan.dir_name);
    let moddir = base.join("lib/modules").join(&plan.kver);
    mkdir(&moddir)?;
    let mut dests = BTreeSet::new();
    for m in &plan.modules {
        if !dests.insert(m.dest.clone()) {
            return Err(Error::Duplicate(format!(
                "{}/lib/modules/{}/{}",
                plan.dir_name, plan.kver, m.dest
            )));
        }
        let data = decompress::read_module(&m.source)?;
        write(&moddir.join(&m.dest), &data)?;
    }
    write(
        &moddir.join("modules.order"),
        modules_order(plan, &dests)?.as_bytes(),
    )?;
    if let Some(tree) = &plan.tree_moddir {
        for name in BUILTIN_FILES {
            let src = tree.join(name);
            if src.exists() {
                let data = std::fs::read(&src).map_err(io("read", &src))?;
                write(&moddir.join(name), &data)?;
            }
        }
    }
    let conf = tempfile::tempdir().map_err(io("create temp dir for", Path::new("depmod.d")))?;
    depmod
        .run_isolated(&base, &plan.kver, conf.path())
        .map_err(Error::Depmod)?;

    let mut fw_dests = BTreeSet::new();
    for f in &plan.firmware {
        if !fw_dests.insert(f.dest.clone()) {
            return Err(Error::Duplicate(format!(
                "{}/{}",
                plan.firmware_dir, f.dest
            )));
        }
        let data = std::fs::read(&f.source).map_err(io("read", &f.source))?;
        write(&stage.join(&plan.firmware_dir).join(&f.dest), &data)?;
    }
    Ok(())
}

/// The tree's modules.order restricted to the shipped modules (in its order),
/// then any module the tree does not list (explicit `--ko` files), in plan order.
fn modules_order(plan: &StagePlan, shipped: &BTreeSet<String>) -> Result<String> {
    let mut out = String::new();
    let mut listed = BTreeSet::new();
    if let Some(tree) = &plan.tree_moddir {
        let path = tree.join("modules.order");
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
            for line in text.lines().map(str::trim) {
                let rel = split_suffix(line).0;
                if shipped.contains(rel) && listed.insert(rel.to_string()) {
                    out.push_str(rel);
                    out.push('\n');
                }
            }
        }
    }
    for m in &plan.modules {
        if listed.insert(m.dest.clone()) {
            out.push_str(&m.dest);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Checks an image-relative destination: no `..`, no absolute part, not empty.
pub fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io("create directory", path))
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    std::fs::write(path, data).map_err(io("write", path))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_paths_keep_layout_and_drop_compression() {
        let m = ModuleFile::from_tree(Path::new("/k/lib/modules/6.1"), "kernel/fs/a.ko.xz");
        assert_eq!(m.source, Path::new("/k/lib/modules/6.1/kernel/fs/a.ko.xz"));
        assert_eq!(m.dest, "kernel/fs/a.ko");
        let abs = ModuleFile::from_tree(Path::new("/k/lib/modules/6.1"), "/k/lib/modules/6.1/b.ko");
        assert_eq!(abs.dest, "b.ko");
    }

    #[test]
    fn unsafe_destinations_are_rejected() {
        assert!(is_safe_relative("a/b.bin"));
        assert!(!is_safe_relative("../etc/passwd"));
        assert!(!is_safe_relative("/abs"));
        assert!(!is_safe_relative(""));
    }
}
