//! Simulated kubelets for fake Nodes: [kwok](https://kwok.sigs.k8s.io)
//! (`sigs.k8s.io/kwok`, built from source by `hack/kwok/build.sh`) runs
//! against the shared control plane, where the real kube-scheduler and
//! kube-controller-manager run. On a fake Node it plays the kubelet's part:
//!
//! - the Node turns `Ready` and stays so (heartbeats, Lease);
//! - a Pod bound to it becomes `Running` and `Ready` (once: a later
//!   [`Kwok::set_pods_ready`] sticks);
//! - a `Running` Pod owned by a Job becomes `Succeeded`;
//! - a deleted Pod goes at once (no grace period).
//!
//! Only Nodes made by [`Kwok::create_fake_node`] are managed (annotation
//! [`FAKE_NODE_ANNOTATION`]`=fake`); other tests' Node objects are left alone.
//! Fake Nodes carry the `NoSchedule` taint [`FAKE_NODE_TAINT`], so only Pods
//! that tolerate it ([`TOLERATION_YAML`], [`toleration`]) land there: a
//! Module's `spec.tolerations` carries it to its device-plugin Pods. For Pods
//! that cannot carry it (e.g. Jobs a controller makes without the Module's
//! tolerations), [`Kwok::remove_fake_taint`]. `deploy/`'s agent DaemonSet
//! tolerates every taint, so its Pods "run" on fake Nodes too: look for your
//! Pods by namespace or label, not by Node alone.
//!
//! ```no_run
//! # async fn t() -> anyhow::Result<()> {
//! use kmm_tests::controlplane::ControlPlane;
//! use kmm_tests::kwok::Kwok;
//! let cp = ControlPlane::shared().await?;
//! let kwok = Kwok::shared().await?;
//! let client = cp.client();
//! kwok.create_fake_node(&client, "my-test-n1", "6.1.0-90-sim-amd64", &[("kmm-test/node", "my-test")])
//!     .await?;
//! // ... Pods tolerating the taint and selecting the node run there ...
//! kmm_tests::cluster::delete_node_and_status(&client, "my-test-n1").await;
//! # Ok(()) }
//! ```
//!
//! Environment: as [`crate::controlplane`], plus `KMM_KWOK_BIN` / `KMM_CACHE`
//! (where the binary is) and `KMM_KWOK_PORT` (kwok's /healthz, default 10261).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::OnceCell;

use crate::cluster::wait_for;
use crate::controlplane::{ControlPlane, repo_root, run_dir};

/// Annotation (value `fake`) that makes kwok manage a Node.
pub const FAKE_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Key of the `NoSchedule` taint (value `fake`) on every fake Node. It keeps
/// Pods that do not expect a fake node off them, notably the controller
/// Deployment of `deploy/` (installed by the deploy tests): run by kwok, its
/// fake Pod IP would become the webhook Service's endpoint.
pub const FAKE_NODE_TAINT: &str = "kwok.x-k8s.io/node";
/// A toleration of [`FAKE_NODE_TAINT`] as a YAML flow map, for a Module's
/// `spec.tolerations` or a Pod template's `tolerations`.
pub const TOLERATION_YAML: &str =
    "{key: kwok.x-k8s.io/node, operator: Equal, value: fake, effect: NoSchedule}";
/// How long [`Kwok::create_fake_node`] waits for kwok to make a Node Ready.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Taint kube-controller-manager puts on a Node until it reports Ready.
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

/// [`TOLERATION_YAML`] as an object.
pub fn toleration() -> Toleration {
    Toleration {
        key: Some(FAKE_NODE_TAINT.into()),
        operator: Some("Equal".into()),
        value: Some("fake".into()),
        effect: Some("NoSchedule".into()),
        toleration_seconds: None,
    }
}

/// The kwok process serving the shared control plane.
#[derive(Debug)]
pub struct Kwok {
    log: PathBuf,
}

static SHARED: OnceCell<Kwok> = OnceCell::const_new();

impl Kwok {
    /// kwok for [`ControlPlane::shared`], started by `hack/kwok/start.sh` if it
    /// is not already running (the script is idempotent and serializes
    /// concurrent test processes with `flock`; kwok outlives the test process
    /// like the control plane does).
    ///
    /// # Errors
    /// When the control plane is not available, the kwok binary is not built
    /// (the message says how to build it), or kwok does not become healthy.
    pub async fn shared() -> Result<&'static Kwok> {
        SHARED
            .get_or_try_init(|| async {
                let cp = ControlPlane::shared().await?;
                let kubeconfig = cp.kubeconfig_path().to_path_buf();
                tokio::task::spawn_blocking(move || run_start_script(&kubeconfig))
                    .await
                    .context("kwok start.sh task panicked")??;
                Ok(Kwok {
                    log: run_dir().join("logs").join("kwok.log"),
                })
            })
            .await
    }

    /// The last `lines` lines of kwok's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Creates (or replaces) a fake Node `name` with `labels`, reporting
    /// `kernel` as `status.nodeInfo.kernelVersion`, tainted with
    /// [`FAKE_NODE_TAINT`], and waits until kwok made it Ready and
    /// kube-controller-manager lifted its not-ready taint (so the scheduler
    /// binds Pods to it right away). Delete it with
    /// [`crate::cluster::delete_node_and_status`].
    ///
    /// # Errors
    /// API errors, or the Node not becoming Ready within two minutes.
    pub async fn create_fake_node(
        &self,
        client: &Client,
        name: &str,
        kernel: &str,
        labels: &[(&str, &str)],
    ) -> Result<Node> {
        let nodes: Api<Node> = Api::all(client.clone());
        let _ = nodes.delete(name, &DeleteParams::default()).await;
        wait_for(Duration::from_secs(30), || async {
            Ok(nodes.get_opt(name).await?.is_none())
        })
        .await
        .with_context(|| format!("old Node {name} not gone"))?;
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        // Status in the create itself: kwok's first update keeps the nodeInfo
        // it sees, so a later patch could race with it.
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": { FAKE_NODE_ANNOTATION: "fake" },
            },
            "spec": { "taints": [
                { "key": FAKE_NODE_TAINT, "value": "fake", "effect": "NoSchedule" }
            ]},
            "status": { "nodeInfo": {
                "kernelVersion": kernel, "architecture": "amd64", "operatingSystem": "linux",
                "bootID": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
                "kubeletVersion": "", "machineID": "", "osImage": "Debian GNU/Linux 12",
                "systemUUID": ""
            }},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        let last = std::sync::Mutex::new(None);
        let ready = wait_for(NODE_READY_TIMEOUT, || async {
            let node = nodes.get(name).await?;
            let ok = node_ready(&node);
            *last.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(node);
            Ok(ok)
        })
        .await;
        let node = last
            .into_inner()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .context("Node never read")?;
        ready.with_context(|| {
            format!(
                "fake Node {name} not Ready (status {:?}, taints {:?}); kwok log:\n{}",
                node.status.as_ref().and_then(|s| s.conditions.as_ref()),
                node.spec.as_ref().and_then(|s| s.taints.as_ref()),
                self.log_tail(30)
            )
        })?;
        let reported = node
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.kernel_version.as_str());
        if reported != Some(kernel) {
            bail!("fake Node {name} reports kernel {reported:?}, not {kernel}");
        }
        Ok(node)
    }

    /// Removes [`FAKE_NODE_TAINT`] from a fake Node, for Pods that cannot
    /// carry the toleration. While it is off, any pending Pod of the cluster
    /// may land (and "run") there, e.g. `deploy/`'s controller Deployment.
    ///
    /// # Errors
    /// API errors.
    pub async fn remove_fake_taint(&self, client: &Client, name: &str) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        // The resourceVersion makes each attempt a compare-and-swap with the
        // controller-manager's own taint updates; retry when it lost.
        for _ in 0..10 {
            let node = nodes.get(name).await?;
            let taints: Vec<_> = node
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.key != FAKE_NODE_TAINT)
                .collect();
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": node.metadata.resource_version },
                "spec": { "taints": taints },
            });
            match nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        bail!("Node {name} kept changing; its fake taint is still on")
    }

    /// Plays a kubelet whose probes fail (`ready == false`) or pass again on
    /// fake Node `node`: sets the `Ready` and `ContainersReady` conditions and
    /// the containers' `ready` of every Pod of namespace `ns` bound there.
    /// First waits (up to `timeout`) until kwok has started each of them, as
    /// kwok would otherwise make a not-yet-started Pod Ready afterwards.
    /// Returns the names of the Pods changed.
    ///
    /// # Errors
    /// API errors; no Pod of `ns` on `node`, or one not started in time.
    pub async fn set_pods_ready(
        &self,
        client: &Client,
        ns: &str,
        node: &str,
        ready: bool,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let started = |p: &Pod| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .is_some_and(|ip| !ip.is_empty())
        };
        wait_for(timeout, || async {
            let list = pods.list(&lp).await?.items;
            Ok(!list.is_empty() && list.iter().all(started))
        })
        .await
        .with_context(|| format!("Pods of {ns} on {node} not started by kwok"))?;

        let status = if ready { "True" } else { "False" };
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut changed = Vec::new();
        for pod in pods.list(&lp).await?.items {
            let containers: Vec<serde_json::Value> = pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .map(|c| serde_json::json!({ "name": c.name, "ready": ready }))
                .collect();
            // Strategic merge: conditions merge by type, containers by name.
            let patch = serde_json::json!({ "status": {
                "conditions": [
                    { "type": "Ready", "status": status, "lastTransitionTime": now },
                    { "type": "ContainersReady", "status": status, "lastTransitionTime": now },
                ],
                "containerStatuses": containers,
            }});
            let name = pod.name_any();
            pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .with_context(|| format!("patching status of Pod {ns}/{name}"))?;
            changed.push(name);
        }
        Ok(changed)
    }
}

/// Ready condition True and kube-controller-manager's not-ready taint gone.
fn node_ready(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == NOT_READY_TAINT));
    ready && !tainted
}

/// Runs `hack/kwok/start.sh` (blocking) for the control plane of `kubeconfig`.
fn run_start_script(kubeconfig: &std::path::Path) -> Result<()> {
    let script = repo_root().join("hack/kwok/start.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("KMM_KWOK_KUBECONFIG", kubeconfig)
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
