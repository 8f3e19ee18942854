//! Real workload identities for the deploy tests: a Pod scheduled on a node
//! (no kubelet needed, it only has to exist) and a service-account token
//! bound to it through the TokenRequest API, as the kubelet would mount it.
//! Such a token carries the node's name in the user extra
//! `authentication.kubernetes.io/node-name`.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

/// Creates Pod `name` in `ns` on `node`, running as service account `sa`.
///
/// # Errors
/// API errors.
pub async fn pod_on_node(
    admin: &Client,
    ns: &str,
    name: &str,
    node: &str,
    sa: &str,
) -> Result<Pod> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [{ "name": "agent", "image": "registry.invalid/kmm-rs:dev" }],
        },
    }))?;
    Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {ns}/{name} on {node}"))
}

/// A token of service account `ns/sa`, bound to `pod` when given, for
/// `audiences` (empty: the API server's own).
///
/// # Errors
/// API errors, or no token in the answer.
pub async fn sa_token(
    admin: &Client,
    ns: &str,
    sa: &str,
    pod: Option<&Pod>,
    audiences: &[&str],
) -> Result<String> {
    let bound = pod.map_or(serde_json::Value::Null, |p| {
        json!({ "kind": "Pod", "apiVersion": "v1", "name": p.metadata.name, "uid": p.metadata.uid })
    });
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": { "audiences": audiences, "expirationSeconds": 3600, "boundObjectRef": bound },
    }))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")
}

/// The (code, message) of a refused request; an error if it was admitted.
///
/// # Errors
/// When the request succeeded or failed otherwise than with an API status.
pub fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Result<(u16, String)> {
    match result {
        Err(kube::Error::Api(s)) => Ok((s.code, s.message)),
        Err(e) => bail!("expected an API rejection, got {e}"),
        Ok(v) => bail!("expected a rejection, the request was admitted: {v:?}"),
    }
}

/// Checks that `result` was refused with 403 by a ValidatingAdmissionPolicy
/// whose name ends with `policy` (an install with a name prefix has
/// `<prefix>kmm-agent-own-node`) with a message containing `why`.
///
/// # Errors
/// Describes what happened instead.
pub fn expect_policy_denial<T: std::fmt::Debug>(
    result: Result<T, kube::Error>,
    policy: &str,
    why: &str,
) -> Result<()> {
    let (code, msg) = refusal(result).with_context(|| format!("{policy}: {why}"))?;
    let by_policy = msg.contains("ValidatingAdmissionPolicy '")
        && msg
            .split("ValidatingAdmissionPolicy '")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .is_some_and(|name| name.ends_with(policy));
    if code != 403 || !by_policy || !msg.contains(why) {
        bail!("expected 403 from policy *{policy} with {why:?}, got {code}: {msg}");
    }
    Ok(())
}

/// A kubeconfig file in `dir` with only `token` (no client certificate) for
/// the test API server, e.g. to run a binary as a service account.
///
/// # Errors
/// I/O or serialisation errors.
pub fn token_kubeconfig(
    cp: &crate::controlplane::ControlPlane,
    dir: &std::path::Path,
    who: &str,
    token: &str,
) -> Result<std::path::PathBuf> {
    let server = cp.config().cluster_url.to_string();
    let ca = crate::controlplane::run_dir().join("pki/ca.crt");
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kmm", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": who, "user": {"token": token}}],
        "contexts": [{"name": who, "context": {"cluster": "kmm", "user": who}}],
        "current-context": who,
    });
    let path = dir.join(format!("{who}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}
