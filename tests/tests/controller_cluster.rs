//! The real `kmm-controller` binary against the real API server (etcd,
//! kube-controller-manager, scheduler; no kubelet). Each test has its own
//! namespace (the controller is scoped to it), its own Node names and a
//! selector label only its Nodes carry. The tests play the agent: they write
//! NodeModulesConfig statuses and `.ready` labels themselves.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kmm_common::{
    MODULE_FINALIZER, Module, NAMESPACE_CONTAINS_MODULES_LABEL, NodeModulesConfig,
    device_plugin_ready_label, ready_label,
};
use kmm_tests::cluster::{
    crd_namespace, create_node, delete_node, set_node_label, wait_for, wait_module,
};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::module::ModuleBuilder;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const KVER: &str = "6.1.0-90-sim-amd64";
const OTHER_KVER: &str = "6.1.0-90-sim-arm64";
const WAIT: Duration = Duration::from_secs(60);

struct Fixture {
    cp: &'static ControlPlane,
    client: Client,
    ns: TestNamespace,
    nodes: Vec<String>,
    controller: ControllerProcess,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(prefix: &str) -> Result<Self> {
        let (cp, client, ns) = crd_namespace(prefix).await?;
        let dir = tempfile::tempdir()?;
        let controller = ControllerProcess::start(&ControllerOptions::for_namespace(
            cp,
            ns.name(),
            dir.path(),
            vec!["--nmc-gc-seconds".into(), "1".into()],
        ))?;
        controller.wait_leader(WAIT).await?;
        Ok(Self {
            cp,
            client,
            ns,
            nodes: Vec::new(),
            controller,
            _dir: dir,
        })
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// The selector label only this test's Nodes carry.
    fn sel(&self) -> String {
        format!("kmm-test/{}", self.ns())
    }

    async fn node(&mut self, suffix: &str, selected: bool, kernel: &str) -> Result<String> {
        let name = format!("{}-{suffix}", self.ns());
        let sel = self.sel();
        let labels: Vec<(&str, &str)> = if selected {
            vec![(sel.as_str(), "yes")]
        } else {
            vec![(sel.as_str(), "no")]
        };
        create_node(&self.client, &name, &labels, kernel).await?;
        self.nodes.push(name.clone());
        Ok(name)
    }

    async fn apply(&self, yaml: &str) -> Result<()> {
        kmm_tests::cluster::apply_yaml(self.cp, self.ns(), yaml)
    }

    fn modules(&self) -> Api<Module> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    async fn module(&self, name: &str) -> Result<Option<Module>> {
        Ok(self.modules().get_opt(name).await?)
    }

    /// Waits until `check` holds for the Module, with the controller log on failure.
    async fn wait_module<F>(&self, name: &str, what: &str, check: F) -> Result<()>
    where
        F: Fn(Option<&Module>) -> bool,
    {
        wait_module(&self.modules(), name, WAIT, check)
            .await
            .with_context(|| format!("{what}; controller log:\n{}", self.controller.log()))
    }

    /// Creates or replaces the NMC of `node` with `entries` as its status (as the agent would).
    async fn set_nmc_status(&self, node: &str, entries: serde_json::Value) -> Result<()> {
        let api: Api<NodeModulesConfig> = Api::all(self.client.clone());
        if api.get_opt(node).await?.is_none() {
            let nmc = NodeModulesConfig::new(node, Default::default());
            api.create(&PostParams::default(), &nmc).await?;
        }
        let patch = serde_json::json!({ "status": { "modules": entries } });
        api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    fn loaded_entry(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "namespace": self.ns(), "serviceAccountName": "",
            "config": {
                "kernelVersion": KVER, "containerImage": "r/x:1",
                "modprobe": {"moduleName": name}
            },
            "image": "r/x:1", "digest": "sha256:0000", "kernel": KVER
        })
    }

    fn error_entry(&self, name: &str, reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "namespace": self.ns(), "serviceAccountName": "",
            "lastError": {"reason": reason, "message": message}
        })
    }

    async fn finish(self) -> Result<()> {
        // Strip finalizers so the namespace can go even if a test failed midway.
        for m in self.modules().list(&ListParams::default()).await? {
            let patch = serde_json::json!({ "metadata": { "finalizers": null } });
            let _ = self
                .modules()
                .patch(
                    &m.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        }
        let nmcs: Api<NodeModulesConfig> = Api::all(self.client.clone());
        for n in &self.nodes {
            delete_node(&self.client, n).await;
            let _ = nmcs.delete(n, &DeleteParams::default()).await;
        }
        self.ns.cleanup().await
    }
}

/// A Module selecting the nodes labelled `selector_key: "yes"`, mapped to an
/// image nobody pulls (no agent runs here: the test plays the nodes).
fn a_module(name: &str, selector_key: &str) -> ModuleBuilder {
    ModuleBuilder::new(name)
        .selector(selector_key, "yes")
        .mapping(
            "^.+-amd64$",
            &format!("registry.example/kmm/{name}:${{KERNEL_FULL_VERSION}}"),
        )
}

fn condition<'a>(
    m: &'a Module,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    m.status.as_ref()?.conditions.iter().find(|c| c.type_ == t)
}

fn loader_counts(m: &Module) -> (i32, i32, i32) {
    m.status.as_ref().map_or((-1, -1, -1), |s| {
        (
            s.module_loader.nodes_matching_selector_number,
            s.module_loader.desired_number,
            s.module_loader.available_number,
        )
    })
}

async fn ns_label(client: &Client, ns: &str) -> Result<Option<String>> {
    let api: Api<Namespace> = Api::all(client.clone());
    Ok(api
        .get(ns)
        .await?
        .labels()
        .get(NAMESPACE_CONTAINS_MODULES_LABEL)
        .cloned())
}

#[tokio::test]
async fn finalizer_and_namespace_label_are_added_to_every_module() -> Result<()> {
    let f = Fixture::new("ctl-fin").await?;
    f.apply(&a_module("fin", &f.sel()).manifest()).await?;
    f.wait_module("fin", "finalizer added", |m| {
        m.is_some_and(|m| m.finalizers().iter().any(|x| x == MODULE_FINALIZER))
    })
    .await?;
    wait_for(WAIT, || async {
        Ok(ns_label(&f.client, f.ns()).await?.as_deref() == Some(""))
    })
    .await?;
    // No Node is selected: nothing to do, so the Module is Available.
    f.wait_module("fin", "Available with no targets", |m| {
        m.and_then(|m| condition(m, "Available"))
            .is_some_and(|c| c.status == "True" && c.reason == "NoNodesTargeted")
    })
    .await?;
    assert!(f.controller.metric("kmm_controller_reconciles_total") >= 1.0);
    // Upstream KMM's fleet gauge, under its name: at least this Module (set
    // right after the reconcile that wrote the status seen above).
    wait_for(WAIT, || async {
        Ok(f.controller.metric("kmm_module_num") >= 1.0)
    })
    .await?;
    assert_eq!(f.controller.get("/healthz")?, "ok");
    assert_eq!(f.controller.get("/readyz")?, "ready");
    let metrics = f.controller.metrics()?;
    for family in [
        "kmm_controller_reconciles_total",
        "kmm_controller_reconcile_duration_seconds_bucket",
        "kmm_controller_is_leader 1",
        "kmm_in_cluster_build_num ",
        "kmm_in_cluster_sign_num ",
        "kmm_device_plugin_num ",
    ] {
        assert!(metrics.contains(family), "missing {family} in\n{metrics}");
    }
    f.finish().await
}

#[tokio::test]
async fn failed_reconciles_are_counted_by_reason_and_retried() -> Result<()> {
    let f = Fixture::new("ctl-err").await?;
    // A user volume named like the controller's own kubelet volume: the API
    // server rejects the DaemonSet.
    let clash = with_device_plugin(a_module("bad", &f.sel()), "kubelet-device-plugins");
    f.apply(&clash.manifest()).await?;
    let series = "kmm_controller_reconcile_errors_total{reason=\"kube_api\"}";
    wait_for(WAIT, || async { Ok(f.controller.metric(series) >= 2.0) })
        .await
        .with_context(|| f.controller.log())?;
    assert!(f.controller.log().contains("reconcile failed"));
    // Fixed spec: the next retry succeeds.
    f.apply(&with_device_plugin(a_module("bad", &f.sel()), "config").manifest())
        .await?;
    let dss: Api<DaemonSet> = Api::namespaced(f.client.clone(), f.ns());
    wait_for(WAIT, || async {
        Ok(dss.get_opt("bad-device-plugin").await?.is_some())
    })
    .await
    .with_context(|| f.controller.log())?;
    f.finish().await
}

#[tokio::test]
async fn deletion_waits_until_no_node_reports_the_module_loaded() -> Result<()> {
    let mut f = Fixture::new("ctl-del").await?;
    let n1 = f.node("n1", true, KVER).await?;
    let n2 = f.node("n2", true, KVER).await?;
    f.apply(&a_module("del", &f.sel()).manifest()).await?;
    f.wait_module("del", "finalizer added", |m| {
        m.is_some_and(|m| m.finalizers().iter().any(|x| x == MODULE_FINALIZER))
    })
    .await?;
    // n1 reports it loaded in its NMC; n2 only still carries the .ready label.
    f.set_nmc_status(&n1, serde_json::json!([f.loaded_entry("del")]))
        .await?;
    let ready = ready_label(f.ns(), "del");
    set_node_label(&f.client, &n2, &ready, Some("")).await?;
    f.wait_module("del", "available 1", |m| {
        m.is_some_and(|m| loader_counts(m) == (2, 2, 1))
    })
    .await?;

    f.modules().delete("del", &DeleteParams::default()).await?;
    f.wait_module("del", "Unloading names both nodes", |m| {
        m.and_then(|m| condition(m, "Unloading")).is_some_and(|c| {
            c.status == "True" && c.message.contains(&n1) && c.message.contains(&n2)
        })
    })
    .await?;
    // Still there after several retry rounds: the agent needs the Terminating Module.
    f.controller.wait_reconciles(2, WAIT).await?;
    let m = f
        .module("del")
        .await?
        .context("Module released too early")?;
    assert!(m.metadata.deletion_timestamp.is_some());
    assert_eq!(ns_label(&f.client, f.ns()).await?.as_deref(), Some(""));

    // n1's agent unloads (entry gone): n2's label still holds the finalizer.
    f.set_nmc_status(&n1, serde_json::json!([])).await?;
    f.wait_module("del", "Unloading names only n2", |m| {
        m.and_then(|m| condition(m, "Unloading"))
            .is_some_and(|c| !c.message.contains(&n1) && c.message.contains(&n2))
    })
    .await?;
    assert!(f.module("del").await?.is_some());

    set_node_label(&f.client, &n2, &ready, None).await?;
    f.wait_module("del", "Module gone", |m| m.is_none()).await?;
    // It was the namespace's last Module.
    wait_for(WAIT, || async {
        Ok(ns_label(&f.client, f.ns()).await?.is_none())
    })
    .await?;
    f.finish().await
}

/// An agent cannot delete the NMC of its own deleted Node: the controller
/// does, and only once the Node stayed gone (a Node registered again under
/// the same name keeps it).
#[tokio::test]
async fn the_nmc_of_a_deleted_node_is_collected() -> Result<()> {
    let mut f = Fixture::new("ctl-nmc-gc").await?;
    let kept = f.node("kept", true, KVER).await?;
    let gone = f.node("gone", true, KVER).await?;
    for n in [&kept, &gone] {
        f.set_nmc_status(n, serde_json::json!([f.loaded_entry("x")]))
            .await?;
    }
    delete_node(&f.client, &gone).await;
    let nmcs: Api<NodeModulesConfig> = Api::all(f.client.clone());
    wait_for(WAIT, || async { Ok(nmcs.get_opt(&gone).await?.is_none()) })
        .await
        .with_context(|| f.controller.log())?;
    // Several sweeps later the NMC of the live Node is still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        nmcs.get_opt(&kept).await?.is_some(),
        "{}",
        f.controller.log()
    );
    f.finish().await
}

#[tokio::test]
async fn status_counts_a_mixed_fleet_and_aggregates_errors() -> Result<()> {
    let mut f = Fixture::new("ctl-status").await?;
    let a = f.node("a", true, KVER).await?;
    let b = f.node("b", true, KVER).await?;
    let _c = f.node("c", true, OTHER_KVER).await?; // selected, no kernel mapping
    let d = f.node("d", false, KVER).await?; // not selected
    f.apply(&a_module("mix", &f.sel()).manifest()).await?;
    f.set_nmc_status(&a, serde_json::json!([f.loaded_entry("mix")]))
        .await?;
    f.set_nmc_status(
        &b,
        serde_json::json!([f.error_entry("mix", "ImagePullFailed", "manifest unknown")]),
    )
    .await?;
    f.wait_module("mix", "3 matching, 2 desired, 1 available, degraded", |m| {
        m.is_some_and(|m| {
            loader_counts(m) == (3, 2, 1)
                && condition(m, "Progressing").is_some_and(|c| c.status == "True")
                && condition(m, "Available").is_some_and(|c| c.status == "False")
                && condition(m, "Degraded").is_some_and(|c| {
                    c.status == "True"
                        && c.reason == "ImagePullFailed"
                        && c.message == "1 node: ImagePullFailed: manifest unknown"
                })
        })
    })
    .await?;

    // b's agent recovers.
    f.set_nmc_status(&b, serde_json::json!([f.loaded_entry("mix")]))
        .await?;
    f.wait_module("mix", "all loaded", |m| {
        m.is_some_and(|m| {
            loader_counts(m) == (3, 2, 2)
                && condition(m, "Available").is_some_and(|c| c.status == "True")
                && condition(m, "Degraded").is_some_and(|c| c.status == "False")
        })
    })
    .await?;

    // A Node change that does not alter the counts reconciles but writes nothing.
    let rv = f.module("mix").await?.unwrap().resource_version();
    let before = f.controller.metric("kmm_controller_reconciles_total");
    set_node_label(&f.client, &d, "unrelated", Some("1")).await?;
    wait_for(WAIT, || async {
        Ok(f.controller.metric("kmm_controller_reconciles_total") > before)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(f.module("mix").await?.unwrap().resource_version(), rv);

    // The not-selected node joins the selector: matching and desired grow.
    set_node_label(&f.client, &d, &f.sel(), Some("yes")).await?;
    f.wait_module("mix", "d selected", |m| {
        m.is_some_and(|m| loader_counts(m) == (4, 3, 2))
    })
    .await?;
    f.finish().await
}

/// A device plugin with a user volume named `volume`, a pull secret and a
/// toleration of every taint.
fn with_device_plugin(m: ModuleBuilder, volume: &str) -> ModuleBuilder {
    m.image_repo_secret("pull-secret")
        .tolerations(json!([{"operator": "Exists"}]))
        .merge(json!({"spec": {"devicePlugin": {
            "container": {
                "image": "registry.example/kmm/dp:1",
                "args": ["--verbose"],
                "volumeMounts": [{"name": volume, "mountPath": "/etc/dp"}],
            },
            "initContainer": {"image": "registry.example/kmm/dp-init:1"},
            "volumes": [{"name": volume, "configMap": {"name": "dp-config"}}],
        }}}))
}

#[tokio::test]
async fn device_plugin_daemonset_is_created_owned_and_collected() -> Result<()> {
    let f = Fixture::new("ctl-dp").await?;
    let yaml = with_device_plugin(a_module("gpu", &f.sel()), "config").manifest();
    f.apply(&yaml).await?;
    let dss: Api<DaemonSet> = Api::namespaced(f.client.clone(), f.ns());
    let sas: Api<ServiceAccount> = Api::namespaced(f.client.clone(), f.ns());
    wait_for(WAIT, || async {
        Ok(dss.get_opt("gpu-device-plugin").await?.is_some())
    })
    .await
    .with_context(|| f.controller.log())?;
    let ds = dss.get("gpu-device-plugin").await?;
    let module = f.module("gpu").await?.unwrap();

    let owner = &ds.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Module", "gpu")
    );
    assert_eq!(owner.uid, module.uid().unwrap());
    assert_eq!(owner.controller, Some(true));

    let pod = ds.spec.template.spec.as_ref().unwrap();
    let sel = pod.node_selector.as_ref().unwrap();
    assert_eq!(sel.get(&f.sel()).map(String::as_str), Some("yes"));
    assert_eq!(
        sel.get(&ready_label(f.ns(), "gpu")).map(String::as_str),
        Some("")
    );
    assert_eq!(sel.len(), 2);
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/kmm/dp:1"));
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert!(mounts.contains(&("config", "/etc/dp")), "{mounts:?}");
    assert!(
        mounts.contains(&("kubelet-device-plugins", "/var/lib/kubelet/device-plugins")),
        "{mounts:?}"
    );
    let host_paths: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
        .collect();
    assert_eq!(host_paths, ["/var/lib/kubelet/device-plugins"]);
    assert_eq!(
        pod.init_containers.as_ref().unwrap()[0].image.as_deref(),
        Some("registry.example/kmm/dp-init:1")
    );
    assert_eq!(
        pod.image_pull_secrets.as_ref().unwrap()[0].name,
        "pull-secret"
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("gpu-device-plugin")
    );
    let sa = sas.get("gpu-device-plugin").await?;
    assert_eq!(sa.owner_references()[0].uid, module.uid().unwrap());

    // A spec change updates the same DaemonSet in place.
    f.apply(&yaml.replace("dp:1", "dp:2")).await?;
    wait_for(WAIT, || async {
        let ds = dss.get("gpu-device-plugin").await?;
        Ok(ds.spec.template.spec.unwrap().containers[0]
            .image
            .as_deref()
            == Some("registry.example/kmm/dp:2"))
    })
    .await?;

    // devicePlugin removed: DaemonSet and ServiceAccount collected.
    f.apply(&a_module("gpu", &f.sel()).manifest()).await?;
    wait_for(WAIT, || async {
        Ok(dss.get_opt("gpu-device-plugin").await?.is_none()
            && sas.get_opt("gpu-device-plugin").await?.is_none())
    })
    .await
    .with_context(|| f.controller.log())?;
    f.finish().await
}

async fn pods_for_node(client: &Client, ns: &str, node: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels("kmm.node.kubernetes.io/module.name=gpu"))
        .await?
        .items
        .into_iter()
        .filter(|p| kmm_controller_pod_node(p).as_deref() == Some(node))
        .collect())
}

/// The node a DaemonSet pod is for (bound, or pinned by the DaemonSet controller's affinity).
fn kmm_controller_pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let json = serde_json::to_value(spec.affinity.as_ref()?).ok()?;
    json.pointer("/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0/values/0")
        .and_then(|v| v.as_str())
        .map(String::from)
}

async fn set_pod_ready(client: &Client, ns: &str, pod: &str, ready: bool) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let s = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({ "status": {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": s, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": s, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ]
    }});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn node_labels(
    client: &Client,
    node: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    Ok(nodes.get(node).await?.metadata.labels.unwrap_or_default())
}

#[tokio::test]
async fn device_plugin_ready_label_follows_pod_readiness() -> Result<()> {
    let mut f = Fixture::new("ctl-dpready").await?;
    let n1 = f.node("n1", true, KVER).await?;
    let n2 = f.node("n2", true, KVER).await?;
    // The agent loaded the module on n1 only.
    set_node_label(&f.client, &n1, &ready_label(f.ns(), "gpu"), Some("")).await?;
    f.apply(&with_device_plugin(a_module("gpu", &f.sel()), "config").manifest())
        .await?;

    // kube-controller-manager's DaemonSet controller creates a pod for n1 only.
    let found = std::sync::Mutex::new(String::new());
    wait_for(Duration::from_secs(90), || async {
        let pods = pods_for_node(&f.client, f.ns(), &n1).await?;
        if let Some(p) = pods.first() {
            *found.lock().unwrap() = p.name_any();
        }
        Ok(!pods.is_empty())
    })
    .await
    .with_context(|| {
        format!(
            "no device-plugin pod for {n1}; log:\n{}",
            f.controller.log()
        )
    })?;
    let pod_name = found.lock().unwrap().clone();
    assert!(pods_for_node(&f.client, f.ns(), &n2).await?.is_empty());
    f.wait_module("gpu", "devicePlugin desired 1", |m| {
        m.and_then(|m| m.status.as_ref())
            .is_some_and(|s| s.device_plugin.desired_number == 1)
    })
    .await?;

    let dp_label = device_plugin_ready_label(f.ns(), "gpu");
    assert!(!node_labels(&f.client, &n1).await?.contains_key(&dp_label));

    // Play the kubelet: the pod becomes Ready, then not.
    set_pod_ready(&f.client, f.ns(), &pod_name, true).await?;
    wait_for(WAIT, || async {
        Ok(node_labels(&f.client, &n1)
            .await?
            .get(&dp_label)
            .map(String::as_str)
            == Some(""))
    })
    .await
    .with_context(|| f.controller.log())?;
    assert!(!node_labels(&f.client, &n2).await?.contains_key(&dp_label));

    set_pod_ready(&f.client, f.ns(), &pod_name, false).await?;
    wait_for(WAIT, || async {
        Ok(!node_labels(&f.client, &n1).await?.contains_key(&dp_label))
    })
    .await
    .with_context(|| f.controller.log())?;
    f.finish().await
}

#[tokio::test]
async fn a_rollout_to_many_nodes_costs_few_status_writes() -> Result<()> {
    const NODES: usize = 30;
    let mut f = Fixture::new("ctl-rollout").await?;
    let mut names = Vec::new();
    for i in 0..NODES {
        names.push(f.node(&format!("r{i}"), true, KVER).await?);
    }
    f.apply(&a_module("roll", &f.sel()).manifest()).await?;
    for n in &names {
        f.set_nmc_status(n, serde_json::json!([])).await?;
    }
    let n = i32::try_from(NODES)?;
    f.wait_module("roll", "all desired, none loaded", |m| {
        m.is_some_and(|m| loader_counts(m) == (n, n, 0))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let series = "kmm_controller_status_writes_total";
    let before = f.controller.metric(series);

    // Every agent reports the module loaded, one NMC write per node.
    for n in &names {
        f.set_nmc_status(n, serde_json::json!([f.loaded_entry("roll")]))
            .await?;
    }
    f.wait_module("roll", "all loaded", |m| {
        m.is_some_and(|m| loader_counts(m) == (n, n, n))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = f.controller.metric(series) - before;
    eprintln!("{NODES} NMC updates -> {writes} status writes");
    assert!(writes >= 1.0);
    assert!(
        writes <= (NODES / 3) as f64,
        "{writes} status writes for {NODES} node events"
    );
    f.finish().await
}
