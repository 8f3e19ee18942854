//! Where things are: the repo root, the pinned versions and the binaries that
//! `hack/controlplane/build.sh` produced. The shell scripts are the source of
//! truth; this module asks them instead of re-deriving cache paths.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

/// Binaries a usable control plane needs in [`bin_dir`].
pub const REQUIRED_BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// The workspace root (parent of the `tests` crate).
pub fn repo_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest.parent().unwrap_or(manifest).to_path_buf()
    })
}

/// `hack/controlplane/` in the repo.
pub fn scripts_dir() -> PathBuf {
    repo_root().join("hack").join("controlplane")
}

/// The run dir used by `start.sh` (`$KMM_RUN`, default `/tmp/kmm-rs-cp`).
pub fn run_dir() -> PathBuf {
    std::env::var_os("KMM_RUN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/kmm-rs-cp"))
}

/// The directory holding the control-plane binaries, as computed by
/// `hack/controlplane/build.sh --print-bin-dir` (honours `KMM_CACHE` and
/// `KMM_CP_BIN`). Does not check that the binaries exist; see
/// [`require_binaries`].
pub fn bin_dir() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| ask_build_script().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn ask_build_script() -> Result<PathBuf> {
    let script = scripts_dir().join("build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-bin-dir")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} --print-bin-dir failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let dir = String::from_utf8(out.stdout).context("bin dir is not UTF-8")?;
    Ok(PathBuf::from(dir.trim()))
}

/// Fails with a message telling how to build when any binary is missing.
pub fn require_binaries(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = REQUIRED_BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "control-plane binaries missing in {}: {}. Build them first (from source; about 8-11 min cold on 2 cores): \
             `bash hack/controlplane/build.sh`",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The Kubernetes version pinned in `hack/controlplane/gomod/go.mod`
/// (e.g. `v1.35.4`), which the API server reports as its `gitVersion`.
pub fn pinned_kubernetes_version() -> Result<String> {
    let go_mod = scripts_dir().join("gomod").join("go.mod");
    let text = std::fs::read_to_string(&go_mod)
        .with_context(|| format!("reading {}", go_mod.display()))?;
    parse_pinned(&text, "k8s.io/kubernetes")
        .with_context(|| format!("k8s.io/kubernetes is not required in {}", go_mod.display()))
}

/// Finds `module version` in a go.mod, both as `require m v` and inside a
/// `require ( ... )` block. Replace directives (`m => m v`) are ignored.
fn parse_pinned(go_mod: &str, module: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let mut words = line.split_whitespace().peekable();
        if words.peek() == Some(&"require") {
            words.next();
        }
        match (words.next(), words.next()) {
            (Some(m), Some(v)) if m == module && v.starts_with('v') => Some(v.to_string()),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_pinned;

    #[test]
    fn parses_single_line_and_block_requires_but_not_replaces() {
        let go_mod = "module x\n\nrequire k8s.io/kubernetes v1.35.4\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 v3.6.16\n)\n\nreplace (\n\tk8s.io/api => k8s.io/api v0.35.4\n)\n";
        assert_eq!(
            parse_pinned(go_mod, "k8s.io/kubernetes").as_deref(),
            Some("v1.35.4")
        );
        assert_eq!(
            parse_pinned(go_mod, "go.etcd.io/etcd/server/v3").as_deref(),
            Some("v3.6.16")
        );
        assert_eq!(parse_pinned(go_mod, "k8s.io/api"), None);
    }
}
