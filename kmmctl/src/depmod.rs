//! The external `depmod` binary (Debian package `kmod`), which writes the
//! `modules.*` indexes modprobe reads.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors from locating or running depmod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No depmod in `$PATH`, `/usr/sbin` or `/sbin`.
    #[error("depmod not found in PATH, /usr/sbin or /sbin (install it: apt-get install kmod)")]
    NotFound,
    /// depmod could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// depmod ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A located depmod binary.
#[derive(Debug, Clone)]
pub struct Depmod {
    program: PathBuf,
}

impl Depmod {
    /// Uses the given binary.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    /// Finds `depmod` in `$PATH`, then `/usr/sbin` and `/sbin` (root's
    /// directories are often missing from a user's PATH).
    pub fn find() -> Result<Self> {
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        path_dirs
            .into_iter()
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join("depmod"))
            .find(|p| p.is_file())
            .map(Self::with_program)
            .ok_or(Error::NotFound)
    }

    /// The binary in use.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Runs `depmod -b <base> <kver>`, which (re)writes
    /// `<base>/lib/modules/<kver>/modules.*`.
    pub fn run(&self, base: &Path, kver: &str) -> Result<()> {
        self.run_args(base, kver, &[])
    }

    /// Like [`Depmod::run`] but with the host's `/etc/depmod.d` ignored
    /// (`-C <empty dir>`), so the output depends only on the staged files.
    pub fn run_isolated(&self, base: &Path, kver: &str, empty_conf_dir: &Path) -> Result<()> {
        let conf = empty_conf_dir.as_os_str().to_string_lossy().into_owned();
        self.run_args(base, kver, &["-C".to_string(), conf])
    }

    fn run_args(&self, base: &Path, kver: &str, extra: &[String]) -> Result<()> {
        let mut cmd = Command::new(&self.program);
        cmd.args(extra).arg("-b").arg(base).arg(kver);
        let command = format!("{cmd:?}").replace('"', "");
        tracing::debug!(%command, "running depmod");
        let out = cmd.output().map_err(|source| Error::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            return Err(Error::Failed {
                command,
                status: out.status,
                stderr,
            });
        }
        // Warnings such as "needs unknown symbol" mean a dependency is missing
        // from the image; show them, modprobe would fail the same way.
        for line in stderr.lines() {
            // No modules.builtin* is normal for --ko-only images.
            if line.contains("could not open modules.builtin") {
                tracing::debug!("{line}");
            } else {
                tracing::warn!("{line}");
            }
        }
        Ok(())
    }
}
