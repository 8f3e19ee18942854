//! The agent's ValidatingAdmissionPolicies (deploy/base/rbac/agent-admission-policy.yaml)
//! with a REAL kmm-agent token: a TokenRequest bound to a Pod on node A, as the
//! kubelet would mount it. With it the agent may set its kmm.node.kubernetes.io/
//! labels on A and write A's NodeModulesConfig, and nothing else: not node B,
//! not other labels, not the spec, not the admin's or the controller's labels.
//! A token not bound to a Pod (no node name) is refused outright.
//!
//! Needs the binaries from `bash hack/controlplane/build.sh`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kmm_common::NodeModulesConfig;
use kmm_tests::cluster::create_node;
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::deploy::install_deploy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "kmm-system";
const SA: &str = "kmm-agent";
const READY: &str = "kmm.node.kubernetes.io/x.y.ready";

/// The admission denial of a kube error: (code, message).
fn denial(result: Result<impl std::fmt::Debug, kube::Error>) -> Result<(u16, String)> {
    match result {
        Err(kube::Error::Api(s)) => Ok((s.code, s.message)),
        Err(e) => bail!("expected an API rejection, got {e}"),
        Ok(v) => bail!("expected a rejection, the request was admitted: {v:?}"),
    }
}

fn assert_denied_by(result: Result<impl std::fmt::Debug, kube::Error>, policy: &str, why: &str) {
    match denial(result) {
        Ok((code, msg)) => {
            assert_eq!(code, 403, "{msg}");
            assert!(
                msg.contains(&format!("ValidatingAdmissionPolicy '{policy}'")) && msg.contains(why),
                "expected {policy} to deny with {why:?}, got: {msg}"
            );
        }
        Err(e) => panic!("{why}: {e:#}"),
    }
}

fn merge(v: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Merge(v)
}

fn labels(pairs: &[(&str, Option<&str>)]) -> Patch<serde_json::Value> {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    merge(json!({ "metadata": { "labels": map } }))
}

fn nmc(name: &str) -> Result<NodeModulesConfig> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "NodeModulesConfig",
        "metadata": { "name": name },
        "spec": {},
    }))?)
}

/// A token for kmm-agent bound to `pod` (so it names the pod's node), or not
/// bound at all.
async fn agent_token(client: &Client, bound_to: Option<&Pod>) -> Result<String> {
    let bound = match bound_to {
        Some(pod) => json!({
            "kind": "Pod", "apiVersion": "v1",
            "name": pod.metadata.name, "uid": pod.metadata.uid,
        }),
        None => serde_json::Value::Null,
    };
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": [], "expirationSeconds": 600, "boundObjectRef": bound },
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create_token_request(SA, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")
}

struct Names {
    a: String,
    b: String,
    pod: String,
}

#[tokio::test]
async fn agent_token_bound_to_node_a_may_only_label_a_and_write_a_s_nmc() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_deploy(cp).await?;
    let tag = format!("deploy-vap-{}", std::process::id());
    let names = Names {
        a: format!("{tag}-a"),
        b: format!("{tag}-b"),
        pod: format!("{tag}-agent"),
    };
    let admin = cp.client();
    let result = policy_checks(cp, &admin, &names).await;

    // Cluster-scoped objects and the pod are ours alone: always remove them.
    let dp = DeleteParams::default();
    let _ = Api::<Pod>::namespaced(admin.clone(), NS)
        .delete(&names.pod, &DeleteParams::default().grace_period(0))
        .await;
    let nmcs: Api<NodeModulesConfig> = Api::all(admin.clone());
    let nodes: Api<Node> = Api::all(admin);
    for name in [&names.a, &names.b] {
        let _ = nmcs.delete(name, &dp).await;
        let _ = nodes.delete(name, &dp).await;
    }
    result
}

async fn policy_checks(cp: &ControlPlane, admin: &Client, n: &Names) -> Result<()> {
    let kernel = "6.1.0-test";
    create_node(admin, &n.a, &[("keep", "x")], kernel).await?;
    create_node(admin, &n.b, &[], kernel).await?;
    // The admin's and the controller's labels on A, which the agent must not touch.
    Api::<Node>::all(admin.clone())
        .patch(
            &n.a,
            &PatchParams::default(),
            &labels(&[
                ("kmm.node.kubernetes.io/version-module.x.y", Some("1")),
                ("kmm.node.kubernetes.io/x.y.device-plugin-ready", Some("")),
            ]),
        )
        .await?;

    // The agent's pod on A (no kubelet: it only has to exist, scheduled).
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": n.pod },
        "spec": {
            "nodeName": n.a,
            "serviceAccountName": SA,
            "containers": [{ "name": "agent", "image": "registry.invalid/kmm-rs:dev" }],
        },
    }))?;
    let pod = Api::<Pod>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await?;
    let token = agent_token(admin, Some(&pod)).await?;
    let agent = cp.client_with_token(&token)?;

    // The API server put A's name into the token's user info.
    let review = Api::<SelfSubjectReview>::all(agent.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:kmm-system:kmm-agent")
    );
    let node_claim = user
        .extra
        .unwrap_or_default()
        .remove("authentication.kubernetes.io/node-name");
    assert_eq!(node_claim, Some(vec![n.a.clone()]));

    let nodes: Api<Node> = Api::all(agent.clone());
    let pp = PatchParams::default();
    const NODE_POLICY: &str = "kmm-agent-own-node";

    // The policy is compiled by an informer: it may take a moment after the
    // first install. Node B is the probe; undo a premature success and retry.
    let deadline = Instant::now() + Duration::from_secs(30);
    let on_b = loop {
        let r = nodes.patch(&n.b, &pp, &labels(&[(READY, Some(""))])).await;
        match r {
            Ok(_) if Instant::now() < deadline => {
                Api::<Node>::all(admin.clone())
                    .patch(&n.b, &pp, &labels(&[(READY, None)]))
                    .await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break other,
        }
    };
    assert_denied_by(on_b, NODE_POLICY, "may only change its own Node");

    // Its own ready labels on A: allowed, set and removed.
    nodes
        .patch(
            &n.a,
            &pp,
            &labels(&[
                (READY, Some("")),
                ("kmm.node.kubernetes.io/x.y.version.ready", Some("2")),
            ]),
        )
        .await
        .context("the agent could not set its own ready label on its own node")?;
    let a = Api::<Node>::all(admin.clone()).get(&n.a).await?;
    let a_labels = a.metadata.labels.unwrap_or_default();
    assert_eq!(a_labels.get(READY).map(String::as_str), Some(""));
    nodes
        .patch(&n.a, &pp, &labels(&[(READY, None)]))
        .await
        .context("the agent could not remove its own ready label")?;

    let outside = "may only change labels with the prefix kmm.node.kubernetes.io/";
    assert_denied_by(
        nodes
            .patch(&n.a, &pp, &labels(&[("other", Some("1"))]))
            .await,
        NODE_POLICY,
        outside,
    );
    assert_denied_by(
        nodes.patch(&n.a, &pp, &labels(&[("keep", None)])).await,
        NODE_POLICY,
        outside,
    );
    assert_denied_by(
        nodes
            .patch(&n.a, &pp, &labels(&[("keep", Some("changed"))]))
            .await,
        NODE_POLICY,
        outside,
    );
    let reserved = "may not change kmm.node.kubernetes.io/version-module.*";
    for (key, value) in [
        ("kmm.node.kubernetes.io/version-module.x.y", Some("2")),
        ("kmm.node.kubernetes.io/version-module.x.y", None),
        ("kmm.node.kubernetes.io/version-module.other.mod", Some("1")),
        ("kmm.node.kubernetes.io/x.y.device-plugin-ready", None),
        (
            "kmm.node.kubernetes.io/other.mod.device-plugin-ready",
            Some(""),
        ),
    ] {
        assert_denied_by(
            nodes.patch(&n.a, &pp, &labels(&[(key, value)])).await,
            NODE_POLICY,
            reserved,
        );
    }
    let labels_only = "may only change Node labels";
    assert_denied_by(
        nodes
            .patch(
                &n.a,
                &pp,
                &merge(json!({ "spec": { "unschedulable": true } })),
            )
            .await,
        NODE_POLICY,
        labels_only,
    );
    assert_denied_by(
        nodes
            .patch(
                &n.a,
                &pp,
                &merge(json!({ "spec": { "taints": [{ "key": "k", "effect": "NoSchedule" }] } })),
            )
            .await,
        NODE_POLICY,
        labels_only,
    );
    assert_denied_by(
        nodes
            .patch(
                &n.a,
                &pp,
                &merge(json!({ "metadata": { "annotations": { "a": "b" } } })),
            )
            .await,
        NODE_POLICY,
        labels_only,
    );
    // A label change smuggled together with a spec change is refused whole.
    assert_denied_by(
        nodes
            .patch(
                &n.a,
                &pp,
                &merge(json!({
                    "metadata": { "labels": { READY: "" } },
                    "spec": { "unschedulable": true },
                })),
            )
            .await,
        NODE_POLICY,
        labels_only,
    );
    let a = Api::<Node>::all(admin.clone()).get(&n.a).await?;
    assert_eq!(a.spec.and_then(|s| s.unschedulable), None);
    assert!(!a.metadata.annotations.unwrap_or_default().contains_key("a"));

    // NodeModulesConfigs: A's may be created and its status written, B's not.
    const NMC_POLICY: &str = "kmm-agent-own-nodemodulesconfig";
    let admin_nmcs: Api<NodeModulesConfig> = Api::all(admin.clone());
    admin_nmcs
        .create(&PostParams::default(), &nmc(&n.b)?)
        .await?;
    let nmcs: Api<NodeModulesConfig> = Api::all(agent.clone());
    let status = merge(json!({ "status": { "modules": [] } }));
    assert_denied_by(
        nmcs.patch_status(&n.b, &pp, &status).await,
        NMC_POLICY,
        "may only write the NodeModulesConfig of its own Node",
    );
    assert_denied_by(
        nmcs.create(&PostParams::default(), &nmc(&format!("{}-c", n.a))?)
            .await,
        NMC_POLICY,
        "may only write the NodeModulesConfig of its own Node",
    );
    nmcs.create(&PostParams::default(), &nmc(&n.a)?)
        .await
        .context("the agent could not create its own NodeModulesConfig")?;
    nmcs.patch_status(&n.a, &pp, &status)
        .await
        .context("the agent could not write its own NodeModulesConfig status")?;

    // A kmm-agent token that is not bound to a Pod names no node: refused.
    let unbound = cp.client_with_token(&agent_token(admin, None).await?)?;
    assert_denied_by(
        Api::<Node>::all(unbound.clone())
            .patch(&n.a, &pp, &labels(&[(READY, Some(""))]))
            .await,
        NODE_POLICY,
        "no authentication.kubernetes.io/node-name",
    );
    assert_denied_by(
        Api::<NodeModulesConfig>::all(unbound)
            .patch_status(&n.a, &pp, &status)
            .await,
        NMC_POLICY,
        "no authentication.kubernetes.io/node-name",
    );
    Ok(())
}
