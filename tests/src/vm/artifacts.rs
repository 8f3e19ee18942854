//! Kernel and initramfs for the VM node, built by the scripts in `tests/vm/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `$KMM_CACHE/vm`, default `~/.cache/kmm-rs/vm`.
pub fn cache_dir() -> PathBuf {
    let root = std::env::var_os("KMM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/kmm-rs")
        });
    root.join("vm")
}

/// Runs a script from `tests/vm/` and returns the last line of its stdout.
fn run_script(name: &str, args: &[&Path], envs: &[(&str, String)]) -> Result<String> {
    let script = repo_root().join("tests/vm").join(name);
    let mut cmd = Command::new(&script);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            script.display(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .last()
        .map(str::to_owned)
        .with_context(|| format!("{} printed nothing", script.display()))
}

/// A prepared Debian kernel: the ELF vmlinux and the unpacked package tree.
#[derive(Debug, Clone)]
pub struct KernelArtifacts {
    /// Kernel release (`uname -r`), e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `$KMM_CACHE/vm/<release>`.
    pub dir: PathBuf,
    /// The uncompressed kernel, booted through PVH.
    pub vmlinux: PathBuf,
    /// The unpacked `linux-image` package (depmod'ed).
    pub root: PathBuf,
}

impl KernelArtifacts {
    /// Fetches and prepares the kernel (`tests/vm/fetch-kernel.sh`): about 10 s
    /// the first time, 1-2 s once cached. `KMM_KERNEL_ABI` pins the version.
    ///
    /// # Errors
    /// If the script fails (no apt access, missing tools).
    pub fn fetch() -> Result<Self> {
        let dir = PathBuf::from(run_script("fetch-kernel.sh", &[], &[])?);
        Self::at(&dir)
    }

    /// A kernel prepared earlier in `dir`.
    ///
    /// # Errors
    /// If `dir` is not a prepared kernel.
    pub fn at(dir: &Path) -> Result<Self> {
        let release = std::fs::read_to_string(dir.join("kver"))
            .with_context(|| format!("{} is not a prepared kernel", dir.display()))?
            .trim()
            .to_owned();
        Ok(Self {
            vmlinux: dir.join("vmlinux"),
            root: dir.join("root"),
            dir: dir.to_path_buf(),
            release,
        })
    }

    /// `<root>/lib/modules/<release>`: every module of the kernel, with modules.dep.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// What goes into the initramfs besides busybox, kmod and the guest's own modules.
#[derive(Debug, Clone, Default)]
pub struct InitramfsSpec {
    /// Host binaries copied to `/bin/<file name>`, with the libraries ldd lists.
    pub binaries: Vec<PathBuf>,
    /// Extra in-tree modules for `/lib/modules` (default: `loop dummy`).
    pub modules: Vec<String>,
    /// A directory copied over the root (kubeconfig, certificates, ...).
    pub extra_dir: Option<PathBuf>,
}

impl InitramfsSpec {
    /// Builds (or reuses: cached by content) the initramfs; returns its path.
    ///
    /// # Errors
    /// If `tests/vm/make-initramfs.sh` fails.
    pub fn build(&self, kernel: &KernelArtifacts) -> Result<PathBuf> {
        let mut envs = vec![("KMM_VM_KERNEL_DIR", kernel.dir.display().to_string())];
        if !self.modules.is_empty() {
            envs.push(("MODULES", self.modules.join(" ")));
        }
        if let Some(extra) = &self.extra_dir {
            envs.push(("EXTRA_DIR", extra.display().to_string()));
        }
        let args: Vec<&Path> = self.binaries.iter().map(PathBuf::as_path).collect();
        Ok(PathBuf::from(run_script(
            "make-initramfs.sh",
            &args,
            &envs,
        )?))
    }
}

/// `cargo build <args>` in the workspace, then the path of `target/<profile>/<rel>`.
///
/// The profile directory is the one the running test binary lives in, so a
/// `cargo test` and the binaries it boots come from the same build.
///
/// # Errors
/// If cargo fails or the artifact is not where expected.
pub fn cargo_artifact(rel: &str, build_args: &[&str]) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/<profile>/deps/<test binary>
    // target/<profile>/deps/<test binary>, or target/<profile>/<bin> (the demo).
    let parent = exe.parent().context("binary has no parent dir")?;
    let profile_dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().context("deps dir has no parent")?
    } else {
        parent
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").args(build_args).current_dir(repo_root());
    if let Some(target_dir) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build {} failed:\n{}",
            build_args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = profile_dir.join(rel);
    if !path.is_file() {
        bail!("cargo built, but {} is missing", path.display());
    }
    Ok(path)
}
