//! The simulated fleet: N agents, either as many instances of the agent
//! reconciler in one `kmm-agent-fleet` process (what fits 1,000 nodes on a
//! small machine) or as N `kmm-agent` processes (one per node, as deployed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::agent::{AgentOptions, AgentProcess};
use crate::controlplane::ControlPlane;
use crate::vm::artifacts::cargo_artifact;

/// How the agents run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FleetKind {
    /// One process holding every agent (`kmm-agent-fleet`).
    InProcess,
    /// One `kmm-agent` process per node.
    Processes,
}

/// Running agents; stopped on drop.
#[derive(Debug)]
pub enum Fleet {
    /// `kmm-agent-fleet`.
    InProcess {
        /// The process.
        child: Child,
        /// Its state dir (where it writes `ready`).
        dir: PathBuf,
    },
    /// `kmm-agent` processes.
    Processes(Vec<AgentProcess>),
}

/// Builds the binary of `kind` (cargo: a no-op when current), so that
/// timings start with the binary there.
///
/// # Errors
/// If cargo fails.
pub fn binary(kind: FleetKind) -> Result<PathBuf> {
    match kind {
        FleetKind::InProcess => cargo_artifact(
            "kmm-agent-fleet",
            &["-p", "kmm-tests", "--bin", "kmm-agent-fleet"],
        ),
        FleetKind::Processes => crate::agent::agent_binary(),
    }
}

impl Fleet {
    /// Starts agents for nodes `<prefix>0..<prefix>{n-1}`, state under `dir`.
    ///
    /// # Errors
    /// If a binary cannot be built or started.
    pub fn start(
        kind: FleetKind,
        cp: &ControlPlane,
        prefix: &str,
        n: usize,
        kernel: &str,
        dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        match kind {
            FleetKind::InProcess => {
                let bin = binary(kind)?;
                let log = std::fs::File::create(dir.join("fleet.log"))?;
                let child = Command::new(bin)
                    .arg("--kubeconfig")
                    .arg(cp.kubeconfig_path())
                    .args(["--node-prefix", prefix, "--count", &n.to_string()])
                    .args(["--kernel-release", kernel])
                    .arg("--state-dir")
                    .arg(dir)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::from(log.try_clone()?))
                    .stderr(Stdio::from(log))
                    .spawn()
                    .context("spawning kmm-agent-fleet")?;
                Ok(Self::InProcess {
                    child,
                    dir: dir.to_path_buf(),
                })
            }
            FleetKind::Processes => {
                let mut agents = Vec::with_capacity(n);
                for i in 0..n {
                    let node = format!("{prefix}{i}");
                    let mut opts = AgentOptions::new(cp, &node, kernel, dir.join(&node));
                    opts.resync_seconds = 300;
                    agents.push(AgentProcess::start(&opts)?);
                }
                Ok(Self::Processes(agents))
            }
        }
    }

    /// The last `lines` lines of the agents' logs (all processes' together).
    pub fn log_tail(&self, lines: usize) -> String {
        let all = match self {
            Self::InProcess { dir, .. } => {
                std::fs::read_to_string(dir.join("fleet.log")).unwrap_or_default()
            }
            Self::Processes(agents) => agents.iter().map(AgentProcess::log).collect(),
        };
        let v: Vec<&str> = all.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until every agent has synced its watches.
    ///
    /// # Errors
    /// On timeout, or when the fleet process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        match self {
            Self::InProcess { child, dir } => {
                let t = Instant::now();
                while !dir.join("ready").is_file() {
                    if let Some(status) = child.try_wait()? {
                        anyhow::bail!(
                            "kmm-agent-fleet exited ({status}):\n{}",
                            std::fs::read_to_string(dir.join("fleet.log")).unwrap_or_default()
                        );
                    }
                    anyhow::ensure!(t.elapsed() < timeout, "fleet not ready after {timeout:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(())
            }
            Self::Processes(agents) => {
                for a in agents.iter() {
                    a.wait_ready(timeout).await?;
                }
                Ok(())
            }
        }
    }

    /// The processes' ids.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::InProcess { child, .. } => vec![child.id()],
            Self::Processes(agents) => agents.iter().map(AgentProcess::pid).collect(),
        }
    }

    /// Resident memory of all agents, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(super::procstat::rss_kib)
            .sum()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Self::InProcess { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
