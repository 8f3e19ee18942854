//! Cluster fixtures shared by integration tests: the kmm-rs CRDs, Node objects
//! standing in for nodes (no kubelet here: a test or the VM harness plays it),
//! and polling helpers.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use tokio::sync::OnceCell;

use crate::controlplane::{ControlPlane, TestNamespace, repo_root};

static CRDS: OnceCell<()> = OnceCell::const_new();

/// What a cluster test starts from: the shared control plane with the CRDs
/// installed, its admin client, and a fresh namespace named after `prefix`.
///
/// # Errors
/// Control plane start, CRD or namespace creation failures.
pub async fn crd_namespace(prefix: &str) -> Result<(&'static ControlPlane, Client, TestNamespace)> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let client = cp.client();
    let ns = cp.temp_namespace(prefix).await?;
    Ok((cp, client, ns))
}

/// Applies `deploy/crds` (server-side) once per process and waits until the API
/// server serves both resources.
///
/// # Errors
/// If kubectl fails or the CRDs do not become established within a minute.
pub async fn ensure_crds(cp: &ControlPlane) -> Result<()> {
    CRDS.get_or_try_init(|| async {
        let dir = repo_root().join("deploy/crds");
        cp.kubectl_ok([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=kmm-tests",
            "-k",
            dir.to_str().context("non-UTF-8 repo path")?,
        ])?;
        // Polled here: `kubectl wait --for=condition=Established` fails outright
        // on a CRD so new it has no conditions yet.
        let crds: Api<CustomResourceDefinition> = Api::all(cp.try_client()?);
        for name in [
            "modules.kmm.sigs.x-k8s.io",
            "nodemodulesconfigs.kmm.sigs.x-k8s.io",
            "preflightvalidations.kmm.sigs.x-k8s.io",
            "modulerollouts.rollout.kmm-rs.io",
        ] {
            wait_for(Duration::from_secs(60), || async {
                let crd = crds.get(name).await?;
                Ok(crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True"))
            })
            .await
            .with_context(|| format!("CRD {name} not established"))?;
        }
        Ok(())
    })
    .await
    .copied()
}

/// Deletes a ValidatingWebhookConfiguration when dropped, however a test ends,
/// so a dead webhook never blocks other tests.
pub struct WebhookConfigGuard {
    /// The control plane.
    pub cp: &'static ControlPlane,
    /// The configuration's name.
    pub name: String,
}

impl Drop for WebhookConfigGuard {
    fn drop(&mut self) {
        let _ = self.cp.kubectl([
            "delete",
            "validatingwebhookconfiguration",
            &self.name,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// `kubectl apply -n ns -f -` of `yaml`; fails with kubectl's stderr.
///
/// # Errors
/// kubectl failures.
pub fn apply_yaml(cp: &ControlPlane, ns: &str, yaml: &str) -> Result<()> {
    let out = cp.kubectl_with_stdin(["apply", "-n", ns, "-f", "-"], yaml)?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Nodes `<ns>-<suffix>` for each of `suffixes`, labelled `group` (a test's own selector), on
/// kernel `kver`, without kubelet. Returns their names.
///
/// # Errors
/// API errors.
pub async fn group_nodes(
    client: &Client,
    ns: &str,
    group: (&str, &str),
    suffixes: &[&str],
    kver: &str,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for s in suffixes {
        let node = format!("{ns}-{s}");
        create_node(client, &node, &[group], kver).await?;
        names.push(node);
    }
    Ok(names)
}

/// Creates (or replaces) a Node object named `name` with `labels`, reporting
/// `kernel` as `status.nodeInfo.kernelVersion`, as a kubelet would.
///
/// # Errors
/// API errors.
pub async fn create_node(
    client: &Client,
    name: &str,
    labels: &[(&str, &str)],
    kernel: &str,
) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    wait_for(Duration::from_secs(30), || async {
        Ok(nodes.get_opt(name).await?.is_none())
    })
    .await?;
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": name, "labels": labels },
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let status = serde_json::json!({ "status": { "nodeInfo": {
        "kernelVersion": kernel, "architecture": "amd64", "operatingSystem": "linux",
        "bootID": "", "containerRuntimeVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
        "machineID": "", "osImage": "Debian GNU/Linux 12", "systemUUID": ""
    }}});
    Ok(nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?)
}

/// Sets (`Some`) or removes (`None`) one label of a Node.
///
/// # Errors
/// API errors.
pub async fn set_node_label(
    client: &Client,
    node: &str,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "metadata": { "labels": { key: value } } });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// What `node`'s NodeModulesConfig status says about Module `ns/name`, if anything.
///
/// # Errors
/// API errors.
pub async fn node_module_status(
    client: &Client,
    node: &str,
    ns: &str,
    name: &str,
) -> Result<Option<kmm_common::NodeModuleStatus>> {
    let api: Api<kmm_common::NodeModulesConfig> = Api::all(client.clone());
    Ok(api
        .get_opt(node)
        .await?
        .and_then(|n| n.status)
        .and_then(|s| {
            s.modules
                .into_iter()
                .find(|m| m.item.name == name && m.item.namespace == ns)
        }))
}

/// Deletes Module `ns/name`.
///
/// # Errors
/// API errors (NotFound included).
pub async fn delete_module(client: &Client, ns: &str, name: &str) -> Result<()> {
    let api: Api<kmm_common::Module> = Api::namespaced(client.clone(), ns);
    api.delete(name, &DeleteParams::default()).await?;
    Ok(())
}

/// Deletes a Node object and its NodeModulesConfig (NotFound is fine).
pub async fn delete_node_and_status(client: &Client, name: &str) {
    delete_node(client, name).await;
    let api: Api<kmm_common::NodeModulesConfig> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// Deletes a Node object (NotFound is fine).
pub async fn delete_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(name, &DeleteParams::default()).await;
}

/// Polls Module `name` of `modules` until `check` holds for it (`None`:
/// there is no such Module).
///
/// # Errors
/// When `timeout` passes first (the error carries the last Module seen, as
/// YAML), or API errors.
pub async fn wait_module<F>(
    modules: &Api<kmm_common::Module>,
    name: &str,
    timeout: Duration,
    check: F,
) -> Result<()>
where
    F: Fn(Option<&kmm_common::Module>) -> bool,
{
    let mut last = None;
    let start = Instant::now();
    loop {
        let m = modules.get_opt(name).await?;
        if check(m.as_ref()) {
            return Ok(());
        }
        last = m.or(last);
        if start.elapsed() > timeout {
            bail!(
                "Module {name}: condition not met within {timeout:?}; last seen:\n{}",
                serde_yaml::to_string(&last).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls `check` every 250 ms until it returns `true`.
///
/// # Errors
/// When `timeout` passes first (the error says how long it waited), or `check` fails.
pub async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Plays the end of a builder: the Job controller's own terminal status,
/// failed (gave up) or succeeded.
///
/// # Errors
/// API errors.
pub async fn finish_job(jobs: &Api<Job>, name: &str, succeeded: bool) -> Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    // A finished Job must carry `startTime` (validated since 1.32). The Job
    // controller sets it once it sees the Job; a test that finishes the Job
    // before that happens sets it itself, as the controller would have.
    let started = jobs
        .get_status(name)
        .await?
        .status
        .and_then(|s| s.start_time)
        .map_or_else(|| now.clone(), |t| t.0.to_string());
    let cond = |t: &str, reason: &str, message: &str| {
        serde_json::json!({"type": t, "status": "True", "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now})
    };
    let patch = if succeeded {
        let (reason, message) = (
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        );
        serde_json::json!({"status": {
            "active": 0, "ready": 0, "terminating": 0, "succeeded": 1,
            "startTime": started, "completionTime": now,
            "conditions": [cond("SuccessCriteriaMet", reason, message), cond("Complete", reason, message)],
        }})
    } else {
        let (reason, message) = (
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        );
        serde_json::json!({"status": {
            "active": 0, "ready": 0, "terminating": 0, "failed": 3, "startTime": started,
            "conditions": [cond("FailureTarget", reason, message), cond("Failed", reason, message)],
        }})
    };
    jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
