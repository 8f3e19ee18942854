//! `deploy/` as the cluster tests install it: rendered by `kubectl kustomize`
//! (as is, or through an overlay) and applied WITHOUT its admission webhook
//! configuration.
//!
//! The webhooks of `deploy/` have `failurePolicy: Fail` and are served by the
//! controller Pods, which never run here (the test control plane has no
//! kubelet). Installed, that configuration would make the API server refuse
//! every Module write and the deletion of every namespace that held Modules,
//! for all tests sharing the API server. [`without_webhook`] is the one place
//! that leaves it out; tests that need webhooks run a real controller
//! (`webhook_cluster`, `webhook_service_mode`).

use std::process::Output;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::cluster::ensure_crds;
use crate::controlplane::{ControlPlane, repo_root};

/// Kind of the object [`without_webhook`] leaves out.
pub const WEBHOOK_KIND: &str = "ValidatingWebhookConfiguration";
/// Name of `deploy/`'s webhook configuration (without an overlay's prefix).
pub const WEBHOOK_CONFIG: &str = "kmm-webhook";

/// Installs `deploy/` without its webhook configuration (server-side apply of
/// [`render_deploy`] through [`without_webhook`]), the CRDs first under the
/// tests' field manager so the two never conflict. A `kmm-webhook`
/// configuration already there (a manual `kubectl apply -k deploy/` onto the
/// test control plane, or a run from before the webhooks failed closed) is
/// deleted, since it would block every other test's Module writes.
///
/// # Errors
/// Render or kubectl failures.
pub async fn install_deploy(cp: &ControlPlane) -> Result<()> {
    ensure_crds(cp).await?;
    let out = apply_deploy(cp)?;
    ensure!(
        out.status.success(),
        "kubectl apply of deploy/ failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `kubectl apply --server-side -f -` of `deploy/` without its webhook
/// configuration (the same objects, in the same order, as
/// `kubectl apply --server-side -k deploy/` minus that one), after deleting a
/// leftover `kmm-webhook` configuration. Returns kubectl's output; check its
/// status yourself.
///
/// # Errors
/// Render failures, or if kubectl cannot be run.
pub fn apply_deploy(cp: &ControlPlane) -> Result<Output> {
    delete_webhook_config(cp)?;
    let yaml = to_yaml(&without_webhook(render_deploy(cp)?)?)?;
    cp.kubectl_with_stdin(["apply", "--server-side", "-f", "-"], &yaml)
}

/// Deletes `deploy/`'s webhook configuration if there is one.
///
/// # Errors
/// If kubectl fails.
pub fn delete_webhook_config(cp: &ControlPlane) -> Result<()> {
    cp.kubectl_ok([
        "delete",
        "validatingwebhookconfiguration",
        WEBHOOK_CONFIG,
        "--ignore-not-found",
    ])
    .map(drop)
}

/// `docs` without the webhook configuration, in the same order. Fails unless
/// exactly one was there, so a renamed or split configuration cannot slip
/// through onto the shared API server.
///
/// # Errors
/// If `docs` holds no or several webhook configurations.
pub fn without_webhook(docs: Vec<Value>) -> Result<Vec<Value>> {
    let before = docs.len();
    let kept: Vec<Value> = docs
        .into_iter()
        .filter(|d| d["kind"] != WEBHOOK_KIND)
        .collect();
    match before - kept.len() {
        1 => Ok(kept),
        n => bail!("expected one {WEBHOOK_KIND} in the rendered deploy/, found {n}"),
    }
}

/// `kubectl kustomize deploy/`: one JSON value per object, everything
/// included (the webhook configuration too).
///
/// # Errors
/// Kustomize or YAML failures.
pub fn render_deploy(cp: &ControlPlane) -> Result<Vec<Value>> {
    render(cp, &repo_root().join("deploy"))
}

/// `deploy/` rendered (`kubectl kustomize`) by an overlay that sets only
/// `namespace: ns` and `namePrefix: prefix`, as a user installing it twice
/// would; one JSON value per object, everything included.
///
/// # Errors
/// Copy, kustomize or YAML failures.
pub fn render_deploy_overlay(cp: &ControlPlane, ns: &str, prefix: &str) -> Result<Vec<Value>> {
    render_deploy_dir_overlay(cp, "", ns, prefix)
}

/// Like [`render_deploy_overlay`] for the kustomization `deploy/<sub>` (e.g.
/// `overlays/monitoring`); an empty `prefix` sets no `namePrefix`.
///
/// # Errors
/// Copy, kustomize or YAML failures.
pub fn render_deploy_dir_overlay(
    cp: &ControlPlane,
    sub: &str,
    ns: &str,
    prefix: &str,
) -> Result<Vec<Value>> {
    let (_dir, overlay) = overlay_dir(sub, ns, prefix)?;
    render(cp, &overlay)
}

/// A kustomization of a user's own over `deploy/<sub>` (`sub` empty: `deploy/`) that sets
/// `namespace: ns` and, unless `prefix` is empty, `namePrefix`: in a temporary directory
/// beside a copy of `deploy/` (kustomize loads bases relative to the overlay). Returns the
/// directory (removed on drop) and the overlay's path in it.
///
/// # Errors
/// Copy or write failures.
pub fn overlay_dir(
    sub: &str,
    ns: &str,
    prefix: &str,
) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("deploy"))
        .arg(dir.path().join("deploy"))
        .status()?;
    ensure!(copy.success(), "copying deploy/");
    let overlay = dir.path().join("overlay");
    std::fs::create_dir(&overlay)?;
    let base = if sub.is_empty() {
        "../deploy".to_string()
    } else {
        format!("../deploy/{}", sub.trim_matches('/'))
    };
    let name_prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("namePrefix: {prefix}\n")
    };
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: {ns}\n{name_prefix}resources:\n- {base}\n"
        ),
    )?;
    Ok((dir, overlay))
}

/// Objects as one YAML stream, for `kubectl ... -f -`.
///
/// # Errors
/// YAML serialization failures.
pub fn to_yaml(docs: &[Value]) -> Result<String> {
    Ok(docs
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?
        .join("---\n"))
}

fn render(cp: &ControlPlane, dir: &std::path::Path) -> Result<Vec<Value>> {
    let rendered = cp.kubectl_ok(["kustomize", dir.to_str().context("non-UTF-8 path")?])?;
    Ok(rendered
        .split("\n---\n")
        .map(serde_yaml::from_str)
        .collect::<Result<_, _>>()?)
}
