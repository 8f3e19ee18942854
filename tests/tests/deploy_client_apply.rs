//! Client-side `kubectl apply` of `deploy/` is stable: applied a second time,
//! every object is reported `unchanged`, so GitOps tools and users see no
//! drift. The API server defaults fields inside lists (a ValidatingAdmission-
//! Policy's `resourceRules[].scope`); client-side apply replaces such a list
//! whenever the manifest lacks a defaulted field, and so re-reported the
//! admission policies as `configured` on every run until the manifests spelt
//! the defaults out.
//!
//! Rendered through an overlay with its own namespace and `namePrefix`, so its
//! cluster-scoped objects do not touch the shared kmm-system install the other
//! deploy tests use. The CRDs (shared), the webhook configuration (its
//! `failurePolicy: Fail` with no controller running would block other tests'
//! Module writes) and the workloads (no kubelet here) are left out, as in
//! deploy_overlay_namespace; everything else is applied twice and removed again.
//!
//! Needs the binaries from `bash hack/controlplane/build.sh`.

use anyhow::{Result, ensure};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::deploy::{render_deploy_overlay, to_yaml, without_webhook};

const SKIPPED_KINDS: [&str; 3] = ["CustomResourceDefinition", "DaemonSet", "Deployment"];

/// `deploy/` rendered by an overlay with `namespace: ns` and `namePrefix: prefix`,
/// as one YAML stream without the webhook configuration and the skipped kinds.
fn render(cp: &ControlPlane, ns: &str, prefix: &str) -> Result<String> {
    let kept: Vec<_> = without_webhook(render_deploy_overlay(cp, ns, prefix)?)?
        .into_iter()
        .filter(|d| !SKIPPED_KINDS.iter().any(|k| d["kind"] == *k))
        .collect();
    to_yaml(&kept)
}

fn kubectl_stdin(cp: &ControlPlane, args: &[&str], yaml: &str) -> Result<String> {
    let out = cp.kubectl_with_stdin(args, yaml)?;
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_second_client_side_apply_reports_every_object_unchanged() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let pid = std::process::id();
    let ns = format!("kmm-csa-{pid}");
    let prefix = format!("csa{pid}-");
    let yaml = render(cp, &ns, &prefix)?;
    ensure!(
        yaml.contains("kind: ValidatingAdmissionPolicy\n"),
        "the admission policies are part of what is applied"
    );

    let result = (|| -> Result<()> {
        kubectl_stdin(cp, &["apply", "-f", "-"], &yaml)?;
        let second = kubectl_stdin(cp, &["apply", "-f", "-"], &yaml)?;
        let changed: Vec<&str> = second
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.ends_with(" unchanged"))
            .collect();
        ensure!(
            changed.is_empty(),
            "a second client-side apply changed objects:\n{}",
            changed.join("\n")
        );
        ensure!(
            second.contains("validatingadmissionpolicy.admissionregistration.k8s.io/"),
            "no admission policy in the output:\n{second}"
        );
        Ok(())
    })();
    // Remove what was applied whatever the outcome (the namespace goes in the
    // background).
    let cleanup = kubectl_stdin(
        cp,
        &["delete", "--wait=false", "--ignore-not-found", "-f", "-"],
        &yaml,
    );
    result?;
    cleanup.map(|_| ())
}
