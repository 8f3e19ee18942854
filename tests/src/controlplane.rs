//! A real control plane (etcd + kube-apiserver, built from source by
//! `hack/controlplane/build.sh`) for tests: started once per run or reused.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use kmm_tests::controlplane::ControlPlane;
//! let cp = ControlPlane::shared().await?;
//! let ns = cp.temp_namespace("my-test").await?;
//! let client = cp.client(); // one per test: a Client is tied to its runtime
//! // ... use client in ns.name() ...
//! ns.cleanup().await?;
//! # Ok(()) }
//! ```
//!
//! Environment: `KUBECONFIG_KMM` (use this cluster instead of starting one; it
//! must be healthy), `KMM_RUN` (run dir, default `/tmp/kmm-rs-cp`),
//! `KMM_CACHE`/`KMM_CP_BIN` (binaries), `START_CONTROLLERS` (default `1` here:
//! namespace deletion, garbage collection and default service accounts need
//! kube-controller-manager), plus the port variables of `start.sh`.

mod namespace;
mod paths;

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

pub use namespace::{PID_LABEL, TEMP_LABEL, TestNamespace};
pub use paths::{bin_dir, pinned_kubernetes_version, repo_root, run_dir};

/// A running, healthy kube-apiserver and the admin credentials for it.
#[derive(Debug)]
pub struct ControlPlane {
    kubeconfig: PathBuf,
    config: Config,
    bin_dir: PathBuf,
}

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();

impl ControlPlane {
    /// The control plane shared by every test in this process: `KUBECONFIG_KMM`
    /// if set, else the one in `$KMM_RUN`, started by `hack/controlplane/start.sh`
    /// if it is not already running (the script is idempotent and serializes
    /// concurrent test processes with `flock` on `$KMM_RUN/start.lock`).
    ///
    /// # Errors
    /// When the binaries are not built (the message says how to build them),
    /// when start.sh fails, or when the API server is not ready.
    pub async fn shared() -> Result<&'static ControlPlane> {
        SHARED.get_or_try_init(Self::connect_or_start).await
    }

    async fn connect_or_start() -> Result<ControlPlane> {
        let bin_dir = paths::bin_dir()?;
        paths::require_binaries(&bin_dir)?;
        let run_kubeconfig = paths::run_dir().join("admin.kubeconfig");

        if let Some(explicit) = std::env::var_os("KUBECONFIG_KMM").filter(|v| !v.is_empty()) {
            let explicit = PathBuf::from(explicit);
            match Self::connect(&explicit, &bin_dir).await {
                Ok(cp) => return Ok(cp),
                // Only our own run dir is ours to (re)start.
                Err(e) if explicit != run_kubeconfig => {
                    return Err(e.context(format!(
                        "KUBECONFIG_KMM={} is not a healthy API server",
                        explicit.display()
                    )));
                }
                Err(_) => {}
            }
        }

        tokio::task::spawn_blocking(run_start_script)
            .await
            .context("start.sh task panicked")??;
        Self::connect(&run_kubeconfig, &bin_dir).await
    }

    async fn connect(kubeconfig: &Path, bin_dir: &Path) -> Result<ControlPlane> {
        let kc = Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
        readyz(&config).await?;
        Ok(ControlPlane {
            kubeconfig: kubeconfig.to_path_buf(),
            config,
            bin_dir: bin_dir.to_path_buf(),
        })
    }

    /// Admin kubeconfig (cluster-admin through group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The directory with kubectl, kube-apiserver, etcd, ...
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The admin client configuration, e.g. to set up impersonation.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// A new admin client. Build one per test: a `kube::Client` belongs to
    /// the tokio runtime it was made on, and each `#[tokio::test]` has its own.
    /// Must be called inside a tokio runtime.
    ///
    /// # Panics
    /// If the client cannot be built from the already validated config.
    pub fn client(&self) -> Client {
        #[allow(clippy::expect_used, reason = "config was validated by shared()")]
        self.try_client()
            .expect("building a kube client from the admin kubeconfig")
    }

    /// Like [`ControlPlane::client`], returning the error instead.
    pub fn try_client(&self) -> Result<Client> {
        Client::try_from(self.config()).context("building kube client")
    }

    /// A client that impersonates `user` (with `groups`), for authorization tests.
    pub fn client_as(&self, user: &str, groups: &[&str]) -> Result<Client> {
        let mut config = self.config();
        config.auth_info.impersonate = Some(user.to_string());
        if !groups.is_empty() {
            config.auth_info.impersonate_groups =
                Some(groups.iter().map(|g| g.to_string()).collect());
        }
        Client::try_from(config).context("building impersonating kube client")
    }

    /// A client that authenticates with a bearer `token` only (e.g. a
    /// service-account token from the TokenRequest API), not the admin cert.
    pub fn client_with_token(&self, token: &str) -> Result<Client> {
        let mut config = self.config();
        config.auth_info = kube::config::AuthInfo::default();
        let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("token is not a valid header value")?;
        config.headers.push((http::header::AUTHORIZATION, value));
        Client::try_from(config).context("building token kube client")
    }

    /// Creates a uniquely named namespace for one test (labelled
    /// [`TEMP_LABEL`]`=true`); call [`TestNamespace::cleanup`] when done.
    pub async fn temp_namespace(&self, prefix: &str) -> Result<TestNamespace> {
        TestNamespace::create(
            self.try_client()?,
            prefix,
            self.kubectl_path(),
            self.kubeconfig.clone(),
        )
        .await
    }

    /// Path of the kubectl built with the control plane.
    pub fn kubectl_path(&self) -> PathBuf {
        self.bin_dir.join("kubectl")
    }

    fn kubectl_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(self.kubectl_path());
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }

    /// Runs kubectl with the admin kubeconfig and returns its output (check
    /// `status` yourself, or use [`ControlPlane::kubectl_ok`]).
    ///
    /// # Panics
    /// If kubectl cannot be spawned (its presence was checked by `shared()`).
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        #[allow(
            clippy::expect_used,
            reason = "kubectl presence was checked by shared()"
        )]
        self.kubectl_command(args)
            .output()
            .expect("spawning kubectl")
    }

    /// Runs kubectl with `stdin` as its standard input (e.g. `apply -f -`).
    pub fn kubectl_with_stdin<I, S>(&self, args: I, stdin: &str) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning kubectl")?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.as_bytes())
                .context("writing kubectl stdin")?;
        }
        child.wait_with_output().context("waiting for kubectl")
    }

    /// Runs kubectl and returns its stdout, failing with its stderr when it
    /// exits non-zero.
    pub fn kubectl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self
            .kubectl_command(&args)
            .output()
            .context("spawning kubectl")?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        stdout_if_ok("kubectl", &args, out, &stderr)
    }

    /// Deletes every namespace left by earlier test runs ([`TEMP_LABEL`]`=true`).
    pub fn sweep_temp_namespaces(&self) -> Result<()> {
        self.kubectl_ok([
            "delete",
            "namespace",
            "-l",
            &format!("{TEMP_LABEL}=true"),
            "--wait=false",
        ])
        .map(drop)
    }
}

/// Runs `hack/controlplane/start.sh` (blocking). The daemons it starts write
/// to log files, so capturing its output does not wait for them.
fn run_start_script() -> Result<()> {
    let script = paths::scripts_dir().join("start.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if std::env::var_os("START_CONTROLLERS").is_none() {
        cmd.env("START_CONTROLLERS", "1");
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            log.trim()
        );
    }
    eprint!("{log}");
    Ok(())
}

/// `GET /readyz` must answer `ok` within a few seconds.
async fn readyz(config: &Config) -> Result<()> {
    let mut config = config.clone();
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(Duration::from_secs(10));
    let url = config.cluster_url.clone();
    let client = Client::try_from(config).context("building kube client")?;
    let request = http::Request::get("/readyz")
        .body(Vec::new())
        .context("building /readyz request")?;
    let body = client
        .request_text(request)
        .await
        .with_context(|| format!("GET {url}readyz"))?;
    if body.trim() != "ok" {
        bail!("GET {url}readyz answered {body:?}");
    }
    Ok(())
}

/// `tool`'s stdout (UTF-8) when it exited 0; else an error naming `args`, the exit status and
/// `stderr` (as the caller wants it shown).
///
/// # Errors
/// A non-zero exit, or output that is not UTF-8.
pub fn stdout_if_ok(
    tool: &str,
    args: &[std::ffi::OsString],
    out: Output,
    stderr: &str,
) -> Result<String> {
    if !out.status.success() {
        bail!("{tool} {args:?} failed ({}): {stderr}", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("{tool} output is not UTF-8"))
}
