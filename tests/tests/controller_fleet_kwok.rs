//! Issue 6 acceptance: the real `kmm-controller` with a fleet of fake Nodes
//! whose kubelets kwok simulates, on the real control plane (kube-scheduler
//! binds the device-plugin Pods, kube-controller-manager runs the DaemonSet,
//! Job and garbage collectors). A simulated `kmm-agent` serves each fake Node
//! that should load modules, so NodeModulesConfig statuses and `.ready`
//! labels are the agents' own; the fake kmod images are in the real registry.
//!
//! Each test has its own namespace (the controller is scoped to it), its own
//! Nodes and a selector value only its Nodes carry.
//!
//! Needs the control-plane binaries, kwok (`bash hack/kwok/build.sh`) and the
//! registry (`hack/registry/start.sh`).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::resource::v1::DeviceClass;
use kmm_common::{
    MODULE_FINALIZER, Module, device_plugin_ready_label, dra_ready_label, ready_label,
};
use kmm_tests::agent::{AgentOptions, AgentProcess};
use kmm_tests::cluster::{
    crd_namespace, delete_node_and_status, node_module_status, wait_for, wait_module,
};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::kwok::{Kwok, TOLERATION_YAML};
use kmm_tests::module::ModuleBuilder;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Mapped by the Modules' kernel mapping.
const KVER: &str = "6.1.0-90-sim-amd64";
/// Not mapped: the Node matches the selector but gets nothing.
const UNMAPPED_KVER: &str = "6.1.0-90-sim-arm64";
/// Generous: two cores, other engineers building, several processes per test.
const WAIT: Duration = Duration::from_secs(180);
const SELECTOR_KEY: &str = "kmm-test/node";
const MODULE_NAME_LABEL: &str = "kmm.node.kubernetes.io/module.name";

struct Fixture {
    cp: &'static ControlPlane,
    kwok: &'static Kwok,
    client: Client,
    // Before `ns`: fields drop in order, and this must run before the
    // namespace's own best-effort deletion.
    leftovers: Leftovers,
    ns: TestNamespace,
    controller: ControllerProcess,
    agents: BTreeMap<String, AgentProcess>,
    kernels: BTreeMap<String, String>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(prefix: &str) -> Result<Self> {
        let (cp, client, ns) = crd_namespace(prefix).await?;
        let kwok = Kwok::shared().await?;
        let dir = tempfile::tempdir()?;
        let controller = ControllerProcess::start(&ControllerOptions::for_namespace(
            cp,
            ns.name(),
            dir.path(),
            vec![],
        ))?;
        controller.wait_leader(WAIT).await?;
        Ok(Self {
            cp,
            kwok,
            client,
            leftovers: Leftovers::new(cp),
            ns,
            controller,
            agents: BTreeMap::new(),
            kernels: BTreeMap::new(),
            dir,
        })
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// A fake Node `<ns>-<suffix>` reporting `kernel`; `selected` decides
    /// whether it carries the value this test's Modules select.
    async fn node(&mut self, suffix: &str, kernel: &str, selected: bool) -> Result<String> {
        let name = format!("{}-{suffix}", self.ns());
        let value = if selected {
            self.ns().to_string()
        } else {
            format!("{}-not", self.ns())
        };
        self.leftovers.nodes.push(name.clone());
        self.kwok
            .create_fake_node(&self.client, &name, kernel, &[(SELECTOR_KEY, &value)])
            .await?;
        self.kernels.insert(name.clone(), kernel.to_string());
        Ok(name)
    }

    /// Starts (or restarts, keeping its state dir) the simulated agent of `node`.
    async fn start_agent(&mut self, node: &str) -> Result<()> {
        if let Some(mut old) = self.agents.remove(node) {
            old.kill();
        }
        let agent = AgentProcess::start(&AgentOptions::new(
            self.cp,
            node,
            &self.kernels[node],
            self.dir.path().join(node),
        ))?;
        agent.wait_ready(WAIT).await?;
        self.agents.insert(node.to_string(), agent);
        Ok(())
    }

    /// Pushes the fake kmod image of Module `name` for [`KVER`].
    async fn push_image(&self, name: &str) -> Result<()> {
        let image = format!("{}/{}/{name}:{KVER}", registry_addr(), self.ns());
        push_fake_kmod(&image, KVER, &[(name, &[])], &[]).await?;
        Ok(())
    }

    /// Module `name` selecting this test's Nodes, tolerating the fake Nodes'
    /// taint, with a device plugin whose image is `dp_image` (none if empty).
    fn module_yaml(&self, name: &str, dp_image: &str) -> String {
        let m = ModuleBuilder::new(name)
            .selector(SELECTOR_KEY, self.ns())
            .tolerations(json!([kmm_tests::kwok::toleration()]))
            .insecure_mapping(
                "^.+-sim-amd64$",
                &format!(
                    "{}/${{MOD_NAMESPACE}}/${{MOD_NAME}}:${{KERNEL_FULL_VERSION}}",
                    registry_addr()
                ),
            );
        if dp_image.is_empty() {
            m.manifest()
        } else {
            m.device_plugin(dp_image).manifest()
        }
    }

    async fn apply(&self, yaml: &str) -> Result<()> {
        kmm_tests::cluster::apply_yaml(self.cp, self.ns(), yaml)
    }

    async fn module(&self, name: &str) -> Result<Option<Module>> {
        let api: Api<Module> = Api::namespaced(self.client.clone(), self.ns());
        Ok(api.get_opt(name).await?)
    }

    /// What the controller, kwok and the agents said, for failure messages.
    fn logs(&self) -> String {
        let tail = |text: String, n: usize| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut out = format!(
            "--- controller log (tail):\n{}\n--- kwok log (tail):\n{}\n",
            tail(self.controller.log(), 60),
            self.kwok.log_tail(20)
        );
        for (node, agent) in &self.agents {
            out.push_str(&format!(
                "--- agent {node} log (tail):\n{}\n",
                tail(agent.log(), 20)
            ));
        }
        out
    }

    /// Polls `check` until it holds; the error names `what` and carries the logs.
    async fn wait<F, Fut>(&self, what: &str, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        wait_for(WAIT, check)
            .await
            .with_context(|| format!("waiting for: {what}\n{}", self.logs()))
    }

    /// Waits until `check` holds for Module `name` (the last one seen is in the error).
    async fn wait_module<F>(&self, name: &str, what: &str, check: F) -> Result<()>
    where
        F: Fn(Option<&Module>) -> bool,
    {
        let modules: Api<Module> = Api::namespaced(self.client.clone(), self.ns());
        wait_module(&modules, name, WAIT, check)
            .await
            .with_context(|| format!("waiting for: {what}\n{}", self.logs()))
    }

    async fn labels(&self, node: &str) -> Result<BTreeMap<String, String>> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        Ok(nodes.get(node).await?.metadata.labels.unwrap_or_default())
    }

    async fn has_label(&self, node: &str, key: &str) -> Result<bool> {
        Ok(self.labels(node).await?.contains_key(key))
    }

    /// Pods of Module `name`'s device plugin (any DaemonSet of it), not being deleted.
    async fn dp_pods(&self, name: &str) -> Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.ns());
        Ok(pods
            .list(&ListParams::default().labels(&format!("{MODULE_NAME_LABEL}={name}")))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// Waits until the Module's device-plugin Pods run on exactly `nodes`
    /// (bound by the scheduler, `Running` through kwok; Ready or not).
    async fn wait_dp_pods_on(&self, name: &str, nodes: &[&str]) -> Result<()> {
        let mut want: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        want.sort();
        self.wait(
            &format!("device-plugin Pods Running on {want:?}"),
            || async {
                let pods = self.dp_pods(name).await?;
                let mut on: Vec<String> = pods.iter().filter_map(bound_node).collect();
                on.sort();
                Ok(on == want && pods.iter().all(running))
            },
        )
        .await
    }

    /// Whether the device-plugin Pod of Module `name` on `node` is Ready.
    async fn dp_pod_ready(&self, name: &str, node: &str) -> Result<bool> {
        let pods = self.dp_pods(name).await?;
        Ok(pods
            .iter()
            .any(|p| bound_node(p).as_deref() == Some(node) && running(p) && ready(p)))
    }

    async fn finish(mut self) -> Result<()> {
        for (_, mut agent) in std::mem::take(&mut self.agents) {
            agent.kill();
        }
        // The namespace's cleanup releases Modules left behind finalizers.
        for n in &self.leftovers.nodes {
            delete_node_and_status(&self.client, n).await;
        }
        self.leftovers.disarm();
        self.ns.cleanup().await
    }
}

/// Best-effort cleanup when a test fails before its `finish`: fake Nodes
/// would stay Ready forever (kwok keeps them alive, deploy/'s agent
/// DaemonSet runs Pods on them).
struct Leftovers {
    cp: &'static ControlPlane,
    nodes: Vec<String>,
    armed: bool,
}

impl Leftovers {
    fn new(cp: &'static ControlPlane) -> Self {
        Self {
            cp,
            nodes: Vec::new(),
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // No async in drop: kubectl, as TestNamespace (which releases the
        // Modules) does.
        for n in &self.nodes {
            let _ = self
                .cp
                .kubectl(["delete", "node", n, "--ignore-not-found", "--wait=false"]);
            let _ = self.cp.kubectl([
                "delete",
                "nodemodulesconfig",
                n,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
    }
}

/// The Node a Pod is bound to (by the scheduler).
fn bound_node(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// (nodesMatchingSelectorNumber, desiredNumber, availableNumber) of the
/// module loader and of the device plugin.
type Counts = ((i32, i32, i32), (i32, i32, i32));

fn counts(m: &Module) -> Counts {
    let Some(s) = m.status.as_ref() else {
        return ((-1, -1, -1), (-1, -1, -1));
    };
    let l = &s.module_loader;
    let d = &s.device_plugin;
    (
        (
            l.nodes_matching_selector_number,
            l.desired_number,
            l.available_number,
        ),
        (
            d.nodes_matching_selector_number,
            d.desired_number,
            d.available_number,
        ),
    )
}

fn condition<'a>(
    m: &'a Module,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    m.status.as_ref()?.conditions.iter().find(|c| c.type_ == t)
}

#[tokio::test]
async fn kwok_runs_a_job_pod_to_succeeded() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let kwok = Kwok::shared().await?;
    let client = cp.client();
    let ns = cp.temp_namespace("kw-job").await?;
    let mut leftovers = Leftovers::new(cp);
    let node = format!("{}-n", ns.name());
    leftovers.nodes.push(node.clone());
    kwok.create_fake_node(&client, &node, KVER, &[(SELECTOR_KEY, ns.name())])
        .await?;
    let job: Job = serde_yaml::from_str(&format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: smoke}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      nodeSelector: {{{SELECTOR_KEY}: {ns}}}
      tolerations: [{TOLERATION_YAML}]
      containers: [{{name: build, image: registry.example/kmm/build:1}}]
"#,
        ns = ns.name()
    ))?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    jobs.create(&PostParams::default(), &job).await?;

    // kube-controller-manager's Job controller makes the Pod, kube-scheduler
    // binds it to the fake Node, kwok runs it to completion.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let r = wait_for(WAIT, || async {
        let complete = jobs.get("smoke").await?.status.is_some_and(|s| {
            s.succeeded == Some(1)
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Complete" && c.status == "True")
        });
        Ok(complete)
    })
    .await;
    r.with_context(|| format!("Job not Complete; kwok log:\n{}", kwok.log_tail(30)))?;
    let list = pods
        .list(&ListParams::default().labels("job-name=smoke"))
        .await?
        .items;
    assert_eq!(list.len(), 1, "one Pod, no retries");
    let pod = &list[0];
    assert_eq!(bound_node(pod).as_deref(), Some(node.as_str()));
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let terminated = status.container_statuses.as_ref().unwrap()[0]
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!(terminated.exit_code, 0);

    delete_node_and_status(&client, &node).await;
    leftovers.disarm();
    ns.cleanup().await
}

#[tokio::test]
async fn device_plugin_lands_only_on_ready_nodes_and_its_label_follows_pod_readiness() -> Result<()>
{
    let mut f = Fixture::new("kw-dp").await?;
    let a = f.node("a", KVER, true).await?;
    let late = f.node("late", KVER, true).await?; // its agent starts later
    let unmapped = f.node("unmapped", UNMAPPED_KVER, true).await?;
    let other = f.node("other", KVER, false).await?;
    for n in [&a, &unmapped, &other] {
        f.start_agent(n).await?;
    }
    f.push_image("gpu").await?;
    f.apply(&f.module_yaml("gpu", "registry.example/kmm/dp:1"))
        .await?;

    let ready = ready_label(f.ns(), "gpu");
    let dp_ready = device_plugin_ready_label(f.ns(), "gpu");
    f.wait(&format!("{a} has {ready}"), || async {
        f.has_label(&a, &ready).await
    })
    .await?;
    // Scheduled by kube-scheduler, Running and Ready through kwok: on `a` only.
    f.wait_dp_pods_on("gpu", &[&a]).await?;
    f.wait(&format!("{a} has {dp_ready}"), || async {
        f.has_label(&a, &dp_ready).await
    })
    .await?;
    assert!(f.dp_pod_ready("gpu", &a).await?);
    f.wait_module(
        "gpu",
        "devicePlugin 3 matching, 1 desired, 1 available",
        |m| m.is_some_and(|m| counts(m).1 == (3, 1, 1)),
    )
    .await?;
    for n in [&late, &unmapped, &other] {
        let labels = f.labels(n).await?;
        assert!(!labels.contains_key(&ready), "{n}: {labels:?}");
        assert!(!labels.contains_key(&dp_ready), "{n}: {labels:?}");
    }

    // `late`'s agent comes up and loads the module: the DaemonSet follows.
    f.start_agent(&late).await?;
    f.wait_dp_pods_on("gpu", &[&a, &late]).await?;
    f.wait(&format!("{late} has {dp_ready}"), || async {
        f.has_label(&late, &dp_ready).await
    })
    .await?;

    // The device plugin on `a` fails its readiness probe: the label goes
    // from `a` only, and the DaemonSet counts one Pod fewer available.
    let changed = f
        .kwok
        .set_pods_ready(&f.client, f.ns(), &a, false, WAIT)
        .await?;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(!f.dp_pod_ready("gpu", &a).await?);
    f.wait(&format!("{dp_ready} removed from {a}"), || async {
        Ok(!f.has_label(&a, &dp_ready).await?)
    })
    .await?;
    assert!(f.has_label(&late, &dp_ready).await?);
    assert!(f.has_label(&a, &ready).await?, "the module stays loaded");
    f.wait_module("gpu", "devicePlugin 1 available", |m| {
        m.is_some_and(|m| counts(m).1 == (3, 2, 1))
    })
    .await?;

    // Ready again: the label comes back.
    f.kwok
        .set_pods_ready(&f.client, f.ns(), &a, true, WAIT)
        .await?;
    f.wait(&format!("{dp_ready} back on {a}"), || async {
        f.has_label(&a, &dp_ready).await
    })
    .await?;
    f.finish().await
}

/// What of a Node's labels an ordered upgrade of Module `gpu` moves.
#[derive(Debug, Clone, PartialEq)]
struct UpgradeLabels {
    ready: bool,
    version_ready: Option<String>,
    dp_ready: bool,
}

/// Records every distinct [`UpgradeLabels`] state of `node`, from a watch
/// (each Node update is one event: no state is missed, unlike polling).
fn record_upgrade_labels(
    client: &Client,
    node: &str,
    ns: &str,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<UpgradeLabels>>>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<UpgradeLabels>::new()));
    let nodes: Api<Node> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let (ready, version_ready, dp_ready) = (
        ready_label(ns, "gpu"),
        kmm_common::version_ready_label(ns, "gpu"),
        device_plugin_ready_label(ns, "gpu"),
    );
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(nodes, config).applied_objects());
        while let Some(event) = stream.next().await {
            let Ok(n) = event else { continue };
            let labels = n.labels();
            let state = UpgradeLabels {
                ready: labels.contains_key(&ready),
                version_ready: labels.get(&version_ready).cloned(),
                dp_ready: labels.contains_key(&dp_ready),
            };
            let mut seen = out.lock().unwrap();
            if seen.last() != Some(&state) {
                seen.push(state);
            }
        }
    });
    (seen, task)
}

/// Issue 15: moving a node's version label stops the device plugin before the
/// unload (upstream's ordered upgrade): the agent takes `.ready` and
/// `.version.ready` off, the DaemonSet removes the Pod, the controller removes
/// `.device-plugin-ready`; only then is the new version loaded and labelled,
/// and the DaemonSet brings the Pod back.
#[tokio::test]
async fn an_ordered_upgrade_stops_the_device_plugin_before_the_unload_and_restarts_it_after()
-> Result<()> {
    let mut f = Fixture::new("kw-up").await?;
    let a = f.node("a", KVER, true).await?;
    let version_label = kmm_common::version_module_label(f.ns(), "gpu");
    let nodes: Api<Node> = Api::all(f.client.clone());
    let label_version = |v: &str| json!({"metadata": {"labels": {version_label.clone(): v}}});
    nodes
        .patch(
            &a,
            &PatchParams::default(),
            &Patch::Merge(label_version("1")),
        )
        .await?;
    f.start_agent(&a).await?;
    f.push_image("gpu").await?;
    let versioned = |v: &str| {
        let yaml = f.module_yaml("gpu", "registry.example/kmm/dp:1");
        let mut m: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        m["spec"]["moduleLoader"]["container"]["version"] = json!(v);
        serde_json::to_string(&m).unwrap()
    };
    f.apply(&versioned("1")).await?;
    let dp_ready = device_plugin_ready_label(f.ns(), "gpu");
    f.wait(&format!("{a} has {dp_ready}"), || async {
        f.has_label(&a, &dp_ready).await
    })
    .await?;
    // The Module moves first; the node keeps version 1 until its label moves.
    f.apply(&versioned("2")).await?;
    let (seen, watch) = record_upgrade_labels(&f.client, &a, f.ns());
    let state = |ready, v: Option<&str>, dp| UpgradeLabels {
        ready,
        version_ready: v.map(str::to_string),
        dp_ready: dp,
    };
    f.wait("the watch saw the starting point", || async {
        Ok(seen.lock().unwrap().last() == Some(&state(true, Some("1"), true)))
    })
    .await?;

    nodes
        .patch(
            &a,
            &PatchParams::default(),
            &Patch::Merge(label_version("2")),
        )
        .await?;
    f.wait("version 2 loaded and the device plugin back", || async {
        Ok(seen.lock().unwrap().last() == Some(&state(true, Some("2"), true)))
    })
    .await?;
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    // Exactly this order (each step one write of its own).
    assert_eq!(
        seen,
        [
            state(true, Some("1"), true),
            state(false, None, true),
            state(false, None, false),
            state(true, Some("2"), false),
            state(true, Some("2"), true),
        ],
        "{}",
        f.logs()
    );
    let status = node_module_status(&f.client, &a, f.ns(), "gpu").await?;
    assert!(status.is_some_and(|s| s.last_error.is_none()));
    f.finish().await
}

#[tokio::test]
async fn obsolete_device_plugin_daemonsets_are_collected() -> Result<()> {
    let mut f = Fixture::new("kw-gc").await?;
    let a = f.node("a", KVER, true).await?;
    f.start_agent(&a).await?;
    f.push_image("gc").await?;

    // A device-plugin DaemonSet of Module `gc` under another name (what an
    // older controller or a rename leaves behind), running on `a`.
    let stale: DaemonSet = serde_yaml::from_str(&format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: gc-device-plugin-old
  labels: &l
    {MODULE_NAME_LABEL}: gc
    kmm.node.kubernetes.io/role: device-plugin
    app.kubernetes.io/managed-by: kmm-rs-controller
spec:
  selector: {{matchLabels: *l}}
  template:
    metadata: {{labels: *l}}
    spec:
      nodeSelector: {{{SELECTOR_KEY}: {ns}}}
      tolerations: [{TOLERATION_YAML}]
      containers: [{{name: device-plugin, image: registry.example/kmm/dp:0}}]
"#,
        ns = f.ns()
    ))?;
    let dss: Api<DaemonSet> = Api::namespaced(f.client.clone(), f.ns());
    dss.create(&PostParams::default(), &stale).await?;
    f.wait_dp_pods_on("gc", &[&a]).await?;

    // The Module comes: the stale DaemonSet and its Pod go, the current one runs.
    f.apply(&f.module_yaml("gc", "registry.example/kmm/dp:1"))
        .await?;
    f.wait("stale DaemonSet deleted", || async {
        Ok(dss.get_opt("gc-device-plugin-old").await?.is_none())
    })
    .await?;
    f.wait_dp_pods_on("gc", &[&a]).await?;
    let pods = f.dp_pods("gc").await?;
    let owner = &pods[0].owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("DaemonSet", "gc-device-plugin")
    );
    let dp_ready = device_plugin_ready_label(f.ns(), "gc");
    f.wait(&format!("{a} has {dp_ready}"), || async {
        f.has_label(&a, &dp_ready).await
    })
    .await?;

    // devicePlugin removed from the Module: its DaemonSet is obsolete.
    f.apply(&f.module_yaml("gc", "")).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(f.client.clone(), f.ns());
    f.wait("DaemonSet, ServiceAccount and Pod collected", || async {
        Ok(dss.get_opt("gc-device-plugin").await?.is_none()
            && sas.get_opt("gc-device-plugin").await?.is_none()
            && f.dp_pods("gc").await?.is_empty())
    })
    .await?;
    f.wait(&format!("{dp_ready} removed from {a}"), || async {
        Ok(!f.has_label(&a, &dp_ready).await?)
    })
    .await?;
    f.wait_module("gc", "devicePlugin counts zero, module still loaded", |m| {
        m.is_some_and(|m| counts(m) == ((1, 1, 1), (0, 0, 0)))
    })
    .await?;
    assert!(f.has_label(&a, &ready_label(f.ns(), "gc")).await?);
    f.finish().await
}

/// `spec.dra` (issue 15): the DRA kubelet plugin runs where the module is
/// loaded and its Pod is Ready there (`.dra-ready`), the listed DeviceClasses
/// exist with the Module's labels, one dropped from the list is collected, and
/// the Module's deletion takes the DaemonSet and every DeviceClass with it.
#[tokio::test]
async fn dra_driver_and_device_classes_follow_the_module() -> Result<()> {
    let mut f = Fixture::new("kw-dra").await?;
    let a = f.node("a", KVER, true).await?;
    let unmapped = f.node("unmapped", UNMAPPED_KVER, true).await?;
    for n in [&a, &unmapped] {
        f.start_agent(n).await?;
    }
    f.push_image("drv").await?;
    // Cluster-scoped names: unique to this test's namespace.
    let gpu = format!("gpu.{}.example.com", f.ns());
    let small = format!("small.{}.example.com", f.ns());
    let module = |classes: Vec<serde_json::Value>| {
        ModuleBuilder::new("drv")
            .selector(SELECTOR_KEY, f.ns())
            .tolerations(json!([kmm_tests::kwok::toleration()]))
            .insecure_mapping(
                "^.+-sim-amd64$",
                &format!(
                    "{}/${{MOD_NAMESPACE}}/${{MOD_NAME}}:${{KERNEL_FULL_VERSION}}",
                    registry_addr()
                ),
            )
            .merge(json!({"spec": {"dra": {
                "driverName": "gpu.example.com",
                "container": {"image": "registry.example/kmm/dra:1"},
                "deviceClasses": classes,
            }}}))
            .manifest()
    };
    let gpu_class = json!({
        "name": gpu,
        "selectors": [{"cel": {"expression": "device.driver == 'gpu.example.com'"}}],
        "config": [{"opaque": {"driver": "gpu.example.com",
                               "parameters": {"kind": "GpuConfig", "sharing": {"strategy": "TimeSlicing"}}}}],
    });
    f.apply(&module(vec![gpu_class.clone(), json!({"name": small})]))
        .await?;

    let dra_ready = dra_ready_label(f.ns(), "drv");
    f.wait_dp_pods_on("drv", &[&a]).await?;
    f.wait(&format!("{a} has {dra_ready}"), || async {
        f.has_label(&a, &dra_ready).await
    })
    .await?;
    assert!(!f.has_label(&unmapped, &dra_ready).await?);
    let dss: Api<DaemonSet> = Api::namespaced(f.client.clone(), f.ns());
    let ds = dss.get("drv-dra").await?;
    let pod = ds.spec.template.spec.context("pod spec")?;
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let pods = f.dp_pods("drv").await?;
    assert_eq!(pods[0].owner_references()[0].name, "drv-dra");
    f.wait_module(
        "drv",
        "status.dra 2 matching, 1 desired, 1 available",
        |m| {
            m.and_then(|m| m.status.as_ref()?.dra.clone())
                .is_some_and(|d| {
                    (
                        d.nodes_matching_selector_number,
                        d.desired_number,
                        d.available_number,
                    ) == (2, 1, 1)
                })
        },
    )
    .await?;

    let classes: Api<DeviceClass> = Api::all(f.client.clone());
    let stored = classes.get(&gpu).await?;
    let labels = stored.labels();
    assert_eq!(
        labels.get(MODULE_NAME_LABEL).map(String::as_str),
        Some("drv")
    );
    assert_eq!(
        labels
            .get("kmm.node.kubernetes.io/module.namespace")
            .map(String::as_str),
        Some(f.ns())
    );
    let spec = serde_json::to_value(stored.spec)?;
    assert_eq!(
        spec["config"][0]["opaque"]["parameters"]["sharing"]["strategy"],
        "TimeSlicing"
    );
    assert_eq!(
        spec["selectors"][0]["cel"]["expression"],
        "device.driver == 'gpu.example.com'"
    );
    assert!(classes.get_opt(&small).await?.is_some());

    // `small` dropped from the list: collected; `gpu` stays.
    f.apply(&module(vec![gpu_class])).await?;
    f.wait(&format!("DeviceClass {small} collected"), || async {
        Ok(classes.get_opt(&small).await?.is_none())
    })
    .await?;
    assert!(classes.get_opt(&gpu).await?.is_some());

    // The Module deleted: the DaemonSet, its Pods, the label and every class go.
    let api: Api<Module> = Api::namespaced(f.client.clone(), f.ns());
    api.delete("drv", &DeleteParams::default()).await?;
    f.wait("DRA DaemonSet, Pods and DeviceClasses gone", || async {
        Ok(dss.get_opt("drv-dra").await?.is_none()
            && f.dp_pods("drv").await?.is_empty()
            && classes.get_opt(&gpu).await?.is_none())
    })
    .await?;
    f.wait(&format!("{dra_ready} removed from {a}"), || async {
        Ok(!f.has_label(&a, &dra_ready).await?)
    })
    .await?;
    f.wait_module("drv", "Module released once unloaded", |m| m.is_none())
        .await?;
    f.finish().await
}

#[tokio::test]
async fn deleting_a_module_waits_for_every_node_to_unload() -> Result<()> {
    let mut f = Fixture::new("kw-del").await?;
    let a = f.node("a", KVER, true).await?;
    let b = f.node("b", KVER, true).await?;
    f.start_agent(&a).await?;
    f.start_agent(&b).await?;
    f.push_image("del").await?;
    f.apply(&f.module_yaml("del", "registry.example/kmm/dp:1"))
        .await?;
    f.wait_module(
        "del",
        "loaded on both, device plugin available on both",
        |m| {
            m.is_some_and(|m| {
                counts(m) == ((2, 2, 2), (2, 2, 2))
                    && m.finalizers().iter().any(|x| x == MODULE_FINALIZER)
            })
        },
    )
    .await?;

    // b's agent is down when the Module is deleted: b cannot unload yet.
    f.agents.remove(&b).unwrap().kill();
    let api: Api<Module> = Api::namespaced(f.client.clone(), f.ns());
    api.delete("del", &DeleteParams::default()).await?;
    let ready = ready_label(f.ns(), "del");
    f.wait(&format!("{a} unloaded"), || async {
        Ok(!f.has_label(&a, &ready).await?
            && node_module_status(&f.client, &a, f.ns(), "del")
                .await?
                .is_none())
    })
    .await?;
    f.wait_module("del", "Unloading names b only", |m| {
        m.and_then(|m| condition(m, "Unloading")).is_some_and(|c| {
            c.status == "True" && c.message.contains(&b) && !c.message.contains(&a)
        })
    })
    .await?;
    // The device plugin stops at once; the Module waits for b.
    let dss: Api<DaemonSet> = Api::namespaced(f.client.clone(), f.ns());
    f.wait("device plugin gone", || async {
        Ok(dss.get_opt("del-device-plugin").await?.is_none() && f.dp_pods("del").await?.is_empty())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = f
        .module("del")
        .await?
        .context("Module released before b unloaded")?;
    assert!(m.metadata.deletion_timestamp.is_some());
    assert!(f.has_label(&b, &ready).await?);
    let events: Api<Event> = Api::namespaced(f.client.clone(), f.ns());
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Unloading"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("del"))
        .filter_map(|e| e.note)
        .collect();
    assert!(notes.iter().any(|n| n.contains(&b)), "{notes:?}");

    // b's agent comes back, sees the Terminating Module and unloads: it goes.
    f.start_agent(&b).await?;
    f.wait_module("del", "Module gone", |m| m.is_none()).await?;
    assert!(!f.has_label(&b, &ready).await?);
    assert!(
        node_module_status(&f.client, &b, f.ns(), "del")
            .await?
            .is_none()
    );
    f.finish().await
}

#[tokio::test]
async fn status_counts_a_mixed_fleet_exactly() -> Result<()> {
    let mut f = Fixture::new("kw-mix").await?;
    let a = f.node("a", KVER, true).await?;
    let b = f.node("b", KVER, true).await?;
    let unmapped = f.node("unmapped", UNMAPPED_KVER, true).await?;
    let other = f.node("other", KVER, false).await?;
    for n in [&a, &b, &unmapped, &other] {
        f.start_agent(n).await?;
    }
    f.push_image("mix").await?;
    f.apply(&f.module_yaml("mix", "registry.example/kmm/dp:1"))
        .await?;

    // moduleLoader: 3 match the selector (a, b, unmapped), 2 have a kernel
    // mapping, both load. devicePlugin: 3 match, 2 carry `.ready`, 2 Pods
    // available.
    f.wait_module(
        "mix",
        "moduleLoader (3,2,2), devicePlugin (3,2,2), Available",
        |m| {
            m.is_some_and(|m| {
                counts(m) == ((3, 2, 2), (3, 2, 2))
                    && condition(m, "Available").is_some_and(|c| c.status == "True")
                    && condition(m, "Degraded").is_none_or(|c| c.status == "False")
            })
        },
    )
    .await?;
    f.wait_dp_pods_on("mix", &[&a, &b]).await?;
    let ready = ready_label(f.ns(), "mix");
    for (n, loaded) in [(&a, true), (&b, true), (&unmapped, false), (&other, false)] {
        assert_eq!(f.has_label(n, &ready).await?, loaded, "{n}");
        let st = node_module_status(&f.client, n, f.ns(), "mix").await?;
        assert_eq!(st.is_some_and(|s| s.kernel == KVER), loaded, "{n}");
    }

    // b's device plugin turns unready: only its availability changes.
    f.kwok
        .set_pods_ready(&f.client, f.ns(), &b, false, WAIT)
        .await?;
    f.wait_module("mix", "devicePlugin (3,2,1)", |m| {
        m.is_some_and(|m| counts(m) == ((3, 2, 2), (3, 2, 1)))
    })
    .await?;

    // The not-selected node joins the selector: it loads, gets a device plugin.
    let nodes: Api<Node> = Api::all(f.client.clone());
    let patch = serde_json::json!({ "metadata": { "labels": { SELECTOR_KEY: f.ns() } } });
    nodes
        .patch(&other, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    f.wait_module("mix", "moduleLoader (4,3,3), devicePlugin (4,3,2)", |m| {
        m.is_some_and(|m| counts(m) == ((4, 3, 3), (4, 3, 2)))
    })
    .await?;
    f.wait_dp_pods_on("mix", &[&a, &b, &other]).await?;
    f.finish().await
}
