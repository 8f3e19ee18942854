//! Module trees laid out as a kmod image has them, from the Debian kernel's own
//! modules: `<image root>/<dirName>/lib/modules/<kver>/<path>.ko` for each module
//! and its `modules.dep` dependencies, then `depmod -b <image root>/<dirName>`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::KernelArtifacts;

/// The kernel's `modules.dep`: module name -> (relative path, dependency paths).
fn read_modules_dep(kernel: &KernelArtifacts) -> Result<HashMap<String, (String, Vec<String>)>> {
    let path = kernel.modules_dir().join("modules.dep");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut map = HashMap::new();
    for line in text.lines() {
        let Some((ko, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_owned).collect();
        map.insert(module_name(ko), (ko.to_owned(), deps));
    }
    Ok(map)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The `.ko` file of the kernel's module `name` and the files it depends on
/// (relative to the kernel's module directory), from `modules.dep`.
///
/// # Errors
/// An unknown module, an unreadable `modules.dep`.
pub fn module_file(kernel: &KernelArtifacts, name: &str) -> Result<(PathBuf, Vec<String>)> {
    let (ko, deps) = read_modules_dep(kernel)?
        .remove(&name.replace('-', "_"))
        .with_context(|| format!("{name} is not a module of {}", kernel.release))?;
    Ok((kernel.modules_dir().join(ko), deps))
}

/// Stages `modules` (and their dependencies) from `kernel` under
/// `<image_root>/<dir_name>` and runs depmod there. Returns the module directory
/// (`<image_root>/<dir_name>/lib/modules/<kver>`), what the agent's `LoadRequest` takes.
///
/// # Errors
/// Unknown module names, I/O errors, depmod failures.
pub fn stage_modules(
    kernel: &KernelArtifacts,
    image_root: &Path,
    dir_name: &str,
    modules: &[&str],
) -> Result<PathBuf> {
    let deps = read_modules_dep(kernel)?;
    let base = image_root.join(dir_name.trim_start_matches('/'));
    let dest = base.join("lib/modules").join(&kernel.release);
    let mut files = BTreeSet::new();
    for m in modules {
        let (ko, ko_deps) = deps
            .get(&m.replace('-', "_"))
            .with_context(|| format!("{m} is not a module of {}", kernel.release))?;
        files.insert(ko.clone());
        files.extend(ko_deps.iter().cloned());
    }
    for rel in &files {
        let to = dest.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(kernel.modules_dir().join(rel), &to)
            .with_context(|| format!("copying {rel}"))?;
    }
    // what images built with depmod carry, so that builtins are known
    for f in ["modules.builtin", "modules.builtin.modinfo"] {
        std::fs::copy(kernel.modules_dir().join(f), dest.join(f))?;
    }
    depmod(&base, &kernel.release)?;
    Ok(dest)
}

/// `depmod -b <base> <kver>`.
///
/// # Errors
/// If depmod fails.
pub fn depmod(base: &Path, release: &str) -> Result<()> {
    let out = Command::new("depmod")
        .arg("-b")
        .arg(base)
        .arg(release)
        .output()
        .context("running depmod")?;
    if !out.status.success() {
        bail!(
            "depmod -b {} failed: {}",
            base.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// The module without its appended signature (`None` if it has none): what an
/// unsigned out-of-tree build looks like to the kernel.
pub fn strip_signature(ko: &[u8]) -> Option<Vec<u8>> {
    let body = ko.strip_suffix(SIG_MAGIC)?;
    // struct module_signature (12 bytes) ends with the big-endian signature length
    let info_start = body.len().checked_sub(12)?;
    let len_bytes: [u8; 4] = body.get(info_start + 8..info_start + 12)?.try_into().ok()?;
    let sig_len = u32::from_be_bytes(len_bytes) as usize;
    let end = info_start.checked_sub(sig_len)?;
    Some(body[..end].to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn signature_is_cut_at_its_declared_length() {
        let mut ko = b"ELFDATA".to_vec();
        ko.extend_from_slice(b"SIGNATURE");
        ko.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        ko.extend_from_slice(&9u32.to_be_bytes());
        ko.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&ko).unwrap(), b"ELFDATA");
        assert!(strip_signature(b"ELFDATA").is_none());
    }

    #[test]
    fn module_names_are_normalized() {
        assert_eq!(
            module_name("kernel/drivers/block/null_blk/null_blk.ko"),
            "null_blk"
        );
        assert_eq!(module_name("kernel/x/a-b.ko.xz"), "a_b");
    }
}
