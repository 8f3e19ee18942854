//! The Prometheus Operator CRDs (`monitoring.coreos.com`) that
//! `deploy/overlays/monitoring` needs, taken from the prometheus-operator Go
//! module by `hack/monitoring/fetch-crds.sh`, installed on the test API server.
//!
//! Tests never download: `make test` runs the script before it enters the
//! network namespace the cluster tests run in and exports its output directory
//! as `KMM_MONITORING_CRDS`. Without that variable (a developer running one
//! test) the script is run here; with a warm cache it does not touch the
//! network.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use tokio::sync::OnceCell;

use crate::controlplane::{ControlPlane, repo_root};

/// The environment variable naming the directory with the CRD files.
pub const CRDS_ENV: &str = "KMM_MONITORING_CRDS";

/// The ServiceMonitor CRD's file name in that directory.
pub const SERVICEMONITOR_CRD: &str = "monitoring.coreos.com_servicemonitors.yaml";

/// The PrometheusRule CRD's file name in that directory.
pub const PROMETHEUSRULE_CRD: &str = "monitoring.coreos.com_prometheusrules.yaml";

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// The directory holding the CRD files: `$KMM_MONITORING_CRDS`, else the last
/// line of `bash hack/monitoring/fetch-crds.sh`.
///
/// # Errors
/// When the script fails or the directory lacks one of the CRDs.
pub fn crds_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os(CRDS_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = repo_root().join("hack/monitoring/fetch-crds.sh");
            let out = Command::new("bash")
                .arg(&script)
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            if !out.status.success() {
                bail!(
                    "{} failed ({}) and {CRDS_ENV} is not set (run the script where the Go \
                     module proxy is reachable and export its last line as {CRDS_ENV}):\n{}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let stdout = String::from_utf8(out.stdout).context("script output is not UTF-8")?;
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .context("fetch-crds.sh printed no directory")?,
            )
        }
    };
    for crd in [SERVICEMONITOR_CRD, PROMETHEUSRULE_CRD] {
        anyhow::ensure!(
            dir.join(crd).is_file(),
            "{} has no {crd} (from {CRDS_ENV} or hack/monitoring/fetch-crds.sh)",
            dir.display()
        );
    }
    Ok(dir)
}

/// Applies every CRD file of [`crds_dir`] (server-side, under the tests' field
/// manager, so concurrent test processes converge on the same object) once per
/// process, and waits until the API server serves them. The CRDs are
/// cluster-scoped and shared: they are never deleted.
///
/// # Errors
/// kubectl failures, or a CRD not Established within a minute.
pub async fn ensure_crds(cp: &ControlPlane) -> Result<()> {
    INSTALLED
        .get_or_try_init(|| async {
            let dir = crds_dir()?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            files.retain(|p| p.extension().is_some_and(|x| x == "yaml"));
            files.sort();
            let mut args = vec![
                "apply".to_string(),
                "--server-side".to_string(),
                "--force-conflicts".to_string(),
                "--field-manager=kmm-tests".to_string(),
            ];
            for f in &files {
                args.push("-f".to_string());
                args.push(f.to_str().context("non-UTF-8 CRD path")?.to_string());
            }
            let applied = cp.kubectl_ok(&args)?;
            let names: Vec<String> = applied
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect();
            anyhow::ensure!(!names.is_empty(), "no CRD applied from {}", dir.display());
            let mut wait = vec![
                "wait".to_string(),
                "--for=condition=Established".to_string(),
                "--timeout=60s".to_string(),
            ];
            wait.extend(names);
            cp.kubectl_ok(&wait)?;
            Ok(())
        })
        .await
        .copied()
}
