//! Shared helpers of the `crd_*` integration tests: install the committed CRDs into the real
//! control plane and apply/read Modules through kubectl.

#![allow(
    dead_code,
    reason = "shared by several crd_* test binaries; each uses a subset"
)]
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kmm_common::crd::{MODULE_CRD_FILE, NMC_CRD_FILE};
use kmm_tests::controlplane::{ControlPlane, repo_root};

/// Field manager of the CRD installs done by these tests.
const MANAGER: &str = "kmm-rs-crd-tests";

/// `deploy/crds/<file>`.
pub fn crd_path(file: &str) -> PathBuf {
    repo_root().join("deploy/crds").join(file)
}

/// `examples/<file>`.
pub fn example_path(file: &str) -> PathBuf {
    repo_root().join("examples").join(file)
}

/// Server-side applies both committed CRDs and waits until they are established. Returns
/// kubectl's stderr of the applies (warnings would show up there).
pub async fn install_crds(cp: &ControlPlane) -> Result<String> {
    let mut stderr = String::new();
    for file in [MODULE_CRD_FILE, NMC_CRD_FILE] {
        let path = crd_path(file);
        let out = cp.kubectl([
            "apply",
            "--server-side",
            "--force-conflicts",
            &format!("--field-manager={MANAGER}"),
            "-f",
            &path.to_string_lossy(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() {
            bail!("applying {}: {err}", path.display());
        }
        stderr.push_str(&err);
    }
    cp.kubectl_ok([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/modules.kmm.sigs.x-k8s.io",
        "crd/nodemodulesconfigs.kmm.sigs.x-k8s.io",
    ])?;
    // Discovery of a fresh CRD lags a little behind Established.
    retry(Duration::from_secs(30), || {
        cp.kubectl_ok(["get", "modules", "-A"]).map(drop)
    })
    .await?;
    Ok(stderr)
}

/// Retries `f` until it succeeds or `timeout` passes (returning the last error).
pub async fn retry<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > timeout => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Result of `kubectl apply` of a manifest: success flag and combined output.
pub struct Applied {
    /// kubectl exited 0.
    pub ok: bool,
    /// stdout followed by stderr.
    pub output: String,
}

/// `kubectl apply --server-side -n <ns> -f -` with `manifest` on stdin.
pub fn apply(cp: &ControlPlane, ns: &str, manifest: &str) -> Result<Applied> {
    let out = cp
        .kubectl_with_stdin(
            [
                "apply",
                "--server-side",
                "--field-manager=crd-test",
                "-n",
                ns,
                "-f",
                "-",
            ],
            manifest,
        )
        .context("kubectl apply")?;
    Ok(Applied {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// The Module as JSON, as stored by the API server.
pub fn get_module_json(cp: &ControlPlane, ns: &str, name: &str) -> Result<serde_json::Value> {
    let out = cp.kubectl_ok(["get", "module", name, "-n", ns, "-o", "json"])?;
    serde_json::from_str(&out).context("parsing kubectl get output")
}

/// The documents of a multi-document YAML file, as JSON values.
/// (Documents are separated by lines that are exactly `---`.)
pub fn yaml_documents(text: &str) -> Result<Vec<serde_json::Value>> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter()
        .map(|doc| serde_yaml::from_str::<serde_json::Value>(doc).context("parsing YAML document"))
        .filter(|v| !matches!(v, Ok(serde_json::Value::Null)))
        .collect()
}

/// Paths present in `want` that are missing or different in `got` (`got` may have more, e.g.
/// defaults the API server added).
pub fn missing_fields(
    path: &str,
    want: &serde_json::Value,
    got: &serde_json::Value,
) -> Vec<String> {
    use serde_json::Value;
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .flat_map(|(k, v)| match g.get(k) {
                Some(gv) => missing_fields(&format!("{path}.{k}"), v, gv),
                None => vec![format!("{path}.{k} missing")],
            })
            .collect(),
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .flat_map(|(i, (wv, gv))| missing_fields(&format!("{path}[{i}]"), wv, gv))
            .collect(),
        _ if want == got => Vec::new(),
        _ => vec![format!("{path}: sent {want}, stored {got}")],
    }
}
