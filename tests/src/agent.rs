//! Runs the real `kmm-agent` binary as a process on this machine (with the
//! simulated kernel: scale and fault tests) against the real API server.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::vm::artifacts::cargo_artifact;

/// Builds the agent binary once per process and returns its path.
///
/// # Errors
/// If cargo fails.
pub fn agent_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = BUILT.get() {
        return Ok(p.clone());
    }
    let p = cargo_artifact(
        "kmm-agent",
        // the simulated kernel is a cargo feature: the shipped agent has none
        &[
            "-p",
            "kmm-agent",
            "--bin",
            "kmm-agent",
            "--features",
            "simulated",
        ],
    )?;
    Ok(BUILT.get_or_init(|| p).clone())
}

/// A running agent process; killed on drop.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    /// State dir (state file, image cache, simulated kernel).
    pub state_dir: PathBuf,
    /// Port of /metrics.
    pub metrics_port: u16,
    log: PathBuf,
}

/// How to start an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Node name.
    pub node: String,
    /// Kernel release the simulated kernel reports.
    pub kernel_release: String,
    /// State dir (kept across restarts of the same node).
    pub state_dir: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Resync and digest-check period.
    pub resync_seconds: u64,
}

impl AgentOptions {
    /// An agent for `node` of `cp` whose simulated kernel is `kernel_release`,
    /// state in `state_dir`, resyncing every 2 s (what most tests want).
    pub fn new(
        cp: &crate::controlplane::ControlPlane,
        node: &str,
        kernel_release: &str,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            node: node.to_string(),
            kernel_release: kernel_release.to_string(),
            state_dir,
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            resync_seconds: 2,
        }
    }
}

impl AgentProcess {
    /// Starts `kmm-agent --kernel simulated` for `opts.node`.
    ///
    /// # Errors
    /// If the binary cannot be built or spawned.
    pub fn start(opts: &AgentOptions) -> Result<Self> {
        Self::start_with_args(opts, &[])
    }

    /// [`Self::start`] with `extra` command-line arguments (e.g. `--sim-load-delay-ms`).
    ///
    /// # Errors
    /// If the binary cannot be built or spawned.
    pub fn start_with_args(opts: &AgentOptions, extra: &[&str]) -> Result<Self> {
        let bin = agent_binary()?;
        std::fs::create_dir_all(&opts.state_dir)?;
        let metrics_port = free_port()?;
        let log = opts.state_dir.join("agent.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(bin)
            .args(["--kernel", "simulated", "--node-name", &opts.node])
            .args(["--kernel-release", &opts.kernel_release])
            .arg("--state-dir")
            .arg(&opts.state_dir)
            .arg("--firmware-dir")
            .arg(opts.state_dir.join("firmware"))
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--resync-seconds", &opts.resync_seconds.to_string()])
            .args(["--verify-seconds", &opts.resync_seconds.to_string()])
            .args(extra)
            .env("KUBECONFIG", &opts.kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("spawning kmm-agent")?;
        Ok(Self {
            child,
            state_dir: opts.state_dir.clone(),
            metrics_port,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process in KiB (from /proc), if it is running.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::fleet::procstat::rss_kib(self.pid())
    }

    /// A KiB field of /proc/<pid>/status (`VmRSS`, `RssAnon`: heap and
    /// stacks, `RssFile`: mapped pages of the binary and libraries).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        crate::fleet::procstat::status_kib(self.pid(), field)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's /metrics text.
    ///
    /// # Errors
    /// If the endpoint does not answer.
    pub fn metrics(&self) -> Result<String> {
        http_get(self.metrics_port, "/metrics")
    }

    /// The agent's /healthz body (liveness).
    ///
    /// # Errors
    /// If the endpoint does not answer.
    pub fn health(&self) -> Result<String> {
        http_get(self.metrics_port, "/healthz")
    }

    /// Waits until /readyz says ready (watches synced, state recovered).
    ///
    /// # Errors
    /// On timeout, with the agent's log.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let port = self.metrics_port;
        crate::cluster::wait_for(timeout, || async move {
            Ok(http_get(port, "/readyz")
                .is_ok_and(|b| b.contains("ready") && !b.contains("not ready")))
        })
        .await
        .with_context(|| format!("agent not ready; log:\n{}", self.log()))
    }

    /// Waits until the agent has run `passes` whole reconcile passes after this
    /// call (its `kmm_agent_reconciles_total` grew by `passes + 1`): what a test
    /// asserting that nothing happens waits for, instead of a fixed sleep.
    ///
    /// # Errors
    /// On timeout, with the agent's log.
    pub async fn wait_passes(&self, passes: u32, timeout: Duration) -> Result<()> {
        wait_counter(
            self.metrics_port,
            "kmm_agent_reconciles_total",
            passes,
            timeout,
        )
        .await
        .with_context(|| format!("agent ran fewer than {passes} passes; log:\n{}", self.log()))
    }

    /// Kills the process (SIGKILL: as abrupt as a node losing the pod).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1 (for a process to bind next), never one this
/// process handed out before: the kernel may give a just-released port again,
/// and two servers of one test were once told the same port (CI: a controller's
/// webhook and its metrics server, "Address already in use").
///
/// # Errors
/// If no port can be bound.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

/// A minimal HTTP/1.0 GET against 127.0.0.1 (no client crate needed for two endpoints).
pub(crate) fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let (head, rest) = body
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(rest.to_string())
}

/// Waits until the counter `series` on the /metrics of `port` grew by more than
/// `by` from its value now: with a counter bumped when a pass starts, `by`
/// passes have then finished.
pub(crate) async fn wait_counter(
    port: u16,
    series: &str,
    by: u32,
    timeout: Duration,
) -> Result<()> {
    let read = || -> Result<f64> {
        metric_value(&http_get(port, "/metrics")?, series)
            .with_context(|| format!("no {series} in /metrics"))
    };
    let start = read()?;
    crate::cluster::wait_for(timeout, || async { Ok(read()? > start + f64::from(by)) }).await
}

/// Value of a metric line `name{labels} value` (or `name value`) in a text exposition.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Path helper for per-test state dirs.
pub fn state_dir(base: &Path, node: &str) -> PathBuf {
    base.join(node)
}

#[cfg(test)]
mod free_port_tests {
    #[test]
    fn free_port_never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..2000).map(|_| super::free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
