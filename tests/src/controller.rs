//! Runs the real `kmm-controller` binary as a process against the real API
//! server, scoped to one test namespace (its Modules, device-plugin pods and
//! leader Lease), so parallel tests do not see each other's Modules.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agent::{free_port, http_get};
use crate::controlplane::ControlPlane;
use crate::vm::artifacts::cargo_artifact;

/// Builds (once per test binary, cargo makes repeats cheap) and returns the controller binary.
///
/// # Errors
/// If cargo fails.
pub fn controller_binary() -> Result<PathBuf> {
    cargo_artifact(
        "kmm-controller",
        &["-p", "kmm-controller", "--bin", "kmm-controller"],
    )
}

/// How to start a controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Namespace of the Modules it reconciles and of its leader Lease.
    pub namespace: String,
    /// Lease identity.
    pub identity: String,
    /// Directory for the log file.
    pub log_dir: PathBuf,
    /// Extra arguments (e.g. `--lease-duration-seconds`).
    pub extra_args: Vec<String>,
}

impl ControllerOptions {
    /// A controller of namespace `ns` on `cp` (identity `<ns>-ctl`), logging
    /// under `log_dir`, with `extra_args`.
    pub fn for_namespace(
        cp: &ControlPlane,
        ns: &str,
        log_dir: &Path,
        extra_args: Vec<String>,
    ) -> Self {
        Self {
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            namespace: ns.to_string(),
            identity: format!("{ns}-ctl"),
            log_dir: log_dir.to_path_buf(),
            extra_args,
        }
    }

    /// One of several replicas of namespace `ns`'s controller (identity
    /// `<ns>-<replica>`, its log under `log_dir/<replica>`), with a short
    /// lease (6 s, renewed every 2 s) so a killed leader is replaced quickly.
    pub fn fast_lease_replica(
        cp: &ControlPlane,
        ns: &str,
        log_dir: &Path,
        replica: &str,
        extra_args: &[&str],
    ) -> Self {
        let args: Vec<String> = [
            "--lease-duration-seconds",
            "6",
            "--lease-renew-seconds",
            "2",
        ]
        .iter()
        .chain(extra_args)
        .map(ToString::to_string)
        .collect();
        Self {
            identity: format!("{ns}-{replica}"),
            ..Self::for_namespace(cp, ns, &log_dir.join(replica), args)
        }
    }
}

/// A running controller process; killed on drop.
#[derive(Debug)]
pub struct ControllerProcess {
    child: Child,
    /// Lease identity.
    pub identity: String,
    /// Port of /metrics, /healthz, /readyz.
    pub metrics_port: u16,
    log: PathBuf,
}

impl ControllerProcess {
    /// Starts `kmm-controller --namespace <ns> --lease-namespace <ns>`.
    ///
    /// # Errors
    /// If the binary cannot be built or spawned.
    pub fn start(opts: &ControllerOptions) -> Result<Self> {
        Self::start_with_env(opts, &[])
    }

    /// [`ControllerProcess::start`] with extra environment variables (e.g. a
    /// proxy through which the controller reaches the registry by the name
    /// the VM guest uses).
    ///
    /// # Errors
    /// If the binary cannot be built or spawned.
    pub fn start_with_env(opts: &ControllerOptions, env: &[(&str, &str)]) -> Result<Self> {
        let bin = controller_binary()?;
        std::fs::create_dir_all(&opts.log_dir)?;
        let metrics_port = free_port()?;
        let log = opts
            .log_dir
            .join(format!("controller-{}.log", opts.identity));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(bin)
            .args(["--namespace", &opts.namespace])
            .args(["--lease-namespace", &opts.namespace])
            .args(["--identity", &opts.identity])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(&opts.extra_args)
            .env("KUBECONFIG", &opts.kubeconfig)
            // KMM_TEST_CONTROLLER_LOG=debug to see every reconcile in its log.
            .env(
                "RUST_LOG",
                std::env::var("KMM_TEST_CONTROLLER_LOG")
                    .unwrap_or_else(|_| "info,kube=warn".into()),
            )
            // Parallel controllers cannot share :9443 nor one webhook configuration;
            // webhook tests opt in with `--webhook true` (flags beat env).
            .env("KMM_WEBHOOK", "false")
            .envs(env.iter().copied())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("spawning kmm-controller")?;
        Ok(Self {
            child,
            identity: opts.identity.clone(),
            metrics_port,
            log,
        })
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The controller's /metrics text.
    ///
    /// # Errors
    /// If the endpoint does not answer.
    pub fn metrics(&self) -> Result<String> {
        http_get(self.metrics_port, "/metrics")
    }

    /// Waits until the controller has finished `reconciles` more Module
    /// reconciles (any Module) than when called: what a test asserting that
    /// nothing more happens waits for, instead of a fixed sleep.
    ///
    /// # Errors
    /// On timeout, with the controller's log.
    pub async fn wait_reconciles(&self, reconciles: u32, timeout: Duration) -> Result<()> {
        crate::agent::wait_counter(
            self.metrics_port,
            "kmm_controller_reconciles_total",
            reconciles,
            timeout,
        )
        .await
        .with_context(|| {
            format!(
                "controller ran fewer than {reconciles} reconciles; log:\n{}",
                self.log()
            )
        })
    }

    /// GET one of the controller's endpoints (`/healthz`, `/readyz`, `/metrics`).
    ///
    /// # Errors
    /// If the endpoint does not answer 200.
    pub fn get(&self, path: &str) -> Result<String> {
        http_get(self.metrics_port, path)
    }

    /// Value of one series of /metrics (0 when absent or unreachable).
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .ok()
            .and_then(|t| crate::agent::metric_value(&t, series))
            .unwrap_or(0.0)
    }

    /// Whether /metrics says this replica leads.
    pub fn is_leader(&self) -> bool {
        self.metric("kmm_controller_is_leader") == 1.0
    }

    /// Waits until /readyz answers 200.
    ///
    /// # Errors
    /// On timeout, with the log.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let port = self.metrics_port;
        crate::cluster::wait_for(
            timeout,
            || async move { Ok(http_get(port, "/readyz").is_ok()) },
        )
        .await
        .with_context(|| format!("controller not ready; log:\n{}", self.log()))
    }

    /// Waits until this replica leads.
    ///
    /// # Errors
    /// On timeout, with the log.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<()> {
        crate::cluster::wait_for(timeout, || async { Ok(self.is_leader()) })
            .await
            .with_context(|| {
                format!(
                    "{} did not become leader; log:\n{}",
                    self.identity,
                    self.log()
                )
            })
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the leader dies without releasing anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a clean pod shutdown) and wait for the exit.
    ///
    /// # Errors
    /// If `kill` cannot be run.
    pub fn terminate(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let _ = self.child.wait();
        Ok(())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Path of a per-test log dir.
pub fn log_dir(base: &Path) -> PathBuf {
    base.join("controller")
}

/// A controller of namespace `ns` (its leader, logs under `dir`) and one agent per node of
/// `nodes` (simulated kernel `kver`, state under `dir/<node>`), each ready within `wait`.
///
/// # Errors
/// Start failures, or a timeout (with the process's log).
pub async fn leader_and_agents(
    cp: &ControlPlane,
    ns: &str,
    nodes: &[String],
    kver: &str,
    dir: &Path,
    wait: Duration,
) -> Result<(ControllerProcess, Vec<crate::agent::AgentProcess>)> {
    use crate::agent::{AgentOptions, AgentProcess};
    let controller =
        ControllerProcess::start(&ControllerOptions::for_namespace(cp, ns, dir, Vec::new()))?;
    controller.wait_leader(wait).await?;
    let mut agents = Vec::new();
    for node in nodes {
        let agent = AgentProcess::start(&AgentOptions::new(cp, node, kver, dir.join(node)))?;
        agent.wait_ready(wait).await?;
        agents.push(agent);
    }
    Ok((controller, agents))
}
