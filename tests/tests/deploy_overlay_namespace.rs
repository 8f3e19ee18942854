//! `deploy/` installed into ANOTHER namespace by a kustomize overlay still
//! confines its agents to their own node. The overlay sets `namespace:` (and a
//! `namePrefix`, so its cluster-scoped objects do not replace those of the
//! shared kmm-system install the other deploy tests use); with a kmm-agent
//! token of that namespace, bound to a Pod on node A, the agent may label A and
//! write A's NodeModulesConfig and is denied for node B. Policies that named
//! `system:serviceaccount:kmm-system:kmm-agent` literally admitted it all.
//!
//! The overlay's CRDs (shared, same content), webhook configuration (it fails
//! closed, and no controller runs here) and workloads (no kubelet here) are
//! left out of the apply; everything else of
//! the rendered install is applied and removed again at the end.
//!
//! Needs the binaries from `bash hack/controlplane/build.sh`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Node;
use kmm_common::NodeModulesConfig;
use kmm_tests::cluster::create_node;
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::deploy::{install_deploy, render_deploy_overlay, to_yaml, without_webhook};
use kmm_tests::identity::{expect_policy_denial, pod_on_node, sa_token};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const READY: &str = "kmm.node.kubernetes.io/ovl.m.ready";
const SKIPPED_KINDS: [&str; 3] = ["CustomResourceDefinition", "DaemonSet", "Deployment"];

/// `deploy/` rendered by an overlay with `namespace: ns` and `namePrefix: prefix`,
/// without the webhook configuration and the skipped kinds.
fn render_overlay(cp: &ControlPlane, ns: &str, prefix: &str) -> Result<Vec<serde_json::Value>> {
    Ok(without_webhook(render_deploy_overlay(cp, ns, prefix)?)?
        .into_iter()
        .filter(|d| !SKIPPED_KINDS.iter().any(|k| d["kind"] == *k))
        .collect())
}

fn kubectl_docs(cp: &ControlPlane, args: &[&str], docs: &[serde_json::Value]) -> Result<()> {
    let out = cp.kubectl_with_stdin(args, &to_yaml(docs)?)?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn labels(pairs: &[(&str, Option<&str>)]) -> Patch<serde_json::Value> {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    Patch::Merge(json!({ "metadata": { "labels": map } }))
}

fn nmc(name: &str) -> Result<NodeModulesConfig> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "NodeModulesConfig",
        "metadata": { "name": name },
        "spec": {},
    }))?)
}

#[tokio::test]
async fn overlay_into_another_namespace_still_confines_agents_to_their_own_node() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    // The CRDs (and the shared install, whose policies coexist with the overlay's).
    install_deploy(cp).await?;
    let pid = std::process::id();
    let ns = format!("kmm-ovl-{pid}");
    let prefix = format!("ovl{pid}-");
    let docs = render_overlay(cp, &ns, &prefix)?;

    // The overlay moved every namespaced object and the agent's binding.
    let sa = format!("{prefix}kmm-agent");
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding" && d["metadata"]["name"] == sa.as_str())
        .context("no ClusterRoleBinding of the overlay's agent")?;
    assert_eq!(binding["subjects"][0]["namespace"], ns.as_str());
    assert_eq!(binding["subjects"][0]["name"], sa.as_str());

    let admin = cp.client();
    let (a, b) = (format!("{ns}-a"), format!("{ns}-b"));
    let applied = kubectl_docs(cp, &["apply", "--server-side", "-f", "-"], &docs);
    let result = match applied {
        Ok(()) => checks(cp, &admin, &ns, &sa, &a, &b).await,
        Err(e) => Err(e),
    };

    let _ = kubectl_docs(
        cp,
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        &docs,
    );
    let dp = DeleteParams::default();
    let nmcs: Api<NodeModulesConfig> = Api::all(admin.clone());
    let nodes: Api<Node> = Api::all(admin);
    for name in [&a, &b] {
        let _ = nmcs.delete(name, &dp).await;
        let _ = nodes.delete(name, &dp).await;
    }
    result
}

async fn checks(
    cp: &ControlPlane,
    admin: &Client,
    ns: &str,
    sa: &str,
    a: &str,
    b: &str,
) -> Result<()> {
    create_node(admin, a, &[], "6.1.0-test").await?;
    create_node(admin, b, &[], "6.1.0-test").await?;
    let pod = pod_on_node(admin, ns, "agent", a, sa).await?;
    let agent = cp.client_with_token(&sa_token(admin, ns, sa, Some(&pod), &[]).await?)?;

    let review = Api::<SelfSubjectReview>::all(agent.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:{sa}").as_str())
    );

    let nodes: Api<Node> = Api::all(agent.clone());
    let pp = PatchParams::default();
    // Policies and bindings reach the admission plugin through informers: probe
    // with node B and undo a premature success.
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_b = loop {
        match nodes.patch(b, &pp, &labels(&[(READY, Some(""))])).await {
            Ok(_) if Instant::now() < deadline => {
                Api::<Node>::all(admin.clone())
                    .patch(b, &pp, &labels(&[(READY, None)]))
                    .await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other,
        }
    };
    expect_policy_denial(on_b, "kmm-agent-own-node", "may only change its own Node")?;
    nodes
        .patch(a, &pp, &labels(&[(READY, Some(""))]))
        .await
        .context("the agent could not label its own node")?;
    expect_policy_denial(
        nodes.patch(a, &pp, &labels(&[("other", Some("1"))])).await,
        "kmm-agent-own-node",
        "may only change labels with the prefix kmm.node.kubernetes.io/",
    )?;

    let admin_nmcs: Api<NodeModulesConfig> = Api::all(admin.clone());
    admin_nmcs.create(&PostParams::default(), &nmc(b)?).await?;
    let nmcs: Api<NodeModulesConfig> = Api::all(agent.clone());
    let status = Patch::Merge(json!({ "status": { "modules": [] } }));
    expect_policy_denial(
        nmcs.patch_status(b, &pp, &status).await,
        "kmm-agent-own-nodemodulesconfig",
        "may only write the NodeModulesConfig of its own Node",
    )?;
    nmcs.create(&PostParams::default(), &nmc(a)?)
        .await
        .context("the agent could not create its own NodeModulesConfig")?;

    // A token of that agent bound to no Pod names no node: refused.
    let unbound = cp.client_with_token(&sa_token(admin, ns, sa, None, &[]).await?)?;
    expect_policy_denial(
        Api::<Node>::all(unbound)
            .patch(a, &pp, &labels(&[(READY, None)]))
            .await,
        "kmm-agent-own-node",
        "no authentication.kubernetes.io/node-name",
    )?;
    Ok(())
}
