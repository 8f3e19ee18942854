//! End to end on a real kernel: a Module applied to the real API server ends as
//! modules loaded by the real `kmm-agent` inside a QEMU guest booting Debian's
//! kernel, from a kmod image `kmmctl package` built and pushed to the real
//! registry; and deleting it unloads them.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use kmm_common::NodeModuleStatus;
use kmm_tests::cluster::{
    delete_module, delete_node_and_status, ensure_crds, node_module_status, set_node_label,
    wait_for,
};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::module::ModuleBuilder;
use kmm_tests::vm_agent::{AgentVm, guest_registry, push_kernel_modules};
use kube::Client;
use kube::api::Api;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

struct E2e {
    cp: &'static ControlPlane,
    client: Client,
    ns: TestNamespace,
    node: AgentVm,
}

impl E2e {
    async fn new(prefix: &str, labels: &[(&str, &str)]) -> Result<Self> {
        let cp = ControlPlane::shared().await?;
        ensure_crds(cp).await?;
        let client = cp.client();
        let ns = cp.temp_namespace(prefix).await?;
        // Agents of tests running in parallel watch every Module: each test's
        // Modules select only its own node.
        let name = format!("{}-vm", ns.name());
        let mut labels = labels.to_vec();
        labels.push(("kmm-test/node", &name));
        let node = AgentVm::start(cp, &client, &name, &labels).await?;
        Ok(Self {
            cp,
            client,
            ns,
            node,
        })
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    async fn apply(&self, yaml: &str) -> Result<()> {
        kmm_tests::cluster::apply_yaml(self.cp, self.ns(), yaml)
    }

    async fn has_label(&self, key: &str) -> Result<bool> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        Ok(nodes
            .get(&self.node.node)
            .await?
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(key))
    }

    async fn wait_ready(&self, name: &str, present: bool) -> Result<Duration> {
        let t = Instant::now();
        let key = kmm_common::ready_label(self.ns(), name);
        if let Err(e) = wait_for(WAIT, || async {
            Ok(self.has_label(&key).await? == present)
        })
        .await
        {
            return self
                .node
                .fail(format!("label {key} present={present}: {e}"));
        }
        Ok(t.elapsed())
    }

    async fn status_of(&self, name: &str) -> Result<Option<NodeModuleStatus>> {
        node_module_status(&self.client, &self.node.node, self.ns(), name).await
    }

    async fn delete_module(&self, name: &str) -> Result<()> {
        delete_module(&self.client, self.ns(), name).await
    }

    async fn finish(self) -> Result<()> {
        let node = self.node.node.clone();
        self.node.shutdown().await?;
        delete_node_and_status(&self.client, &node).await;
        self.ns.cleanup().await
    }
}

/// A Module for the VM node (its own `kmm-test/node` label selected), loading
/// kernel module `module_name` from `image` in the plain-HTTP test registry.
fn module(node: &str, name: &str, module_name: &str, image: &str) -> ModuleBuilder {
    ModuleBuilder::new(name)
        .module_name(module_name)
        .own_node(node)
        .insecure_mapping("^.+-amd64$", image)
}

#[tokio::test]
async fn brd_loads_with_parameters_and_firmware_then_unloads_on_delete() -> Result<()> {
    let e = E2e::new("e2e-brd", &[("kmm-test/e2e", "yes")]).await?;
    let kver = e.node.kernel.release.clone();
    let digest = push_kernel_modules(
        &e.node.kernel,
        &format!("{}/brd", e.ns()),
        &kver,
        &["brd"],
        &[("kmm-e2e/fw.bin", b"firmware-bytes")],
    )
    .await?;
    // Variables in the image, as users write them; the guest reaches the registry at 10.0.2.2.
    let image = format!(
        "{}/${{MOD_NAMESPACE}}/${{MOD_NAME}}:${{KERNEL_FULL_VERSION}}",
        guest_registry()
    );
    e.apply(
        &module(&e.node.node, "brd", "brd", &image)
            .parameters(&["rd_nr=3", "rd_size=2048"])
            .merge(json!({"spec": {"moduleLoader": {"container": {"modprobe": {"firmwarePath": "/firmware"}}}}}))
            .selector("kmm-test/e2e", "yes")
            .manifest(),
    )
    .await?;
    let took = e.wait_ready("brd", true).await?;
    println!("phase apply -> ready label: {took:.1?}");

    assert_eq!(
        e.node
            .read("/sys/module/brd/parameters/rd_nr")
            .await?
            .as_deref(),
        Some("3")
    );
    assert_eq!(
        e.node
            .read("/sys/module/brd/parameters/rd_size")
            .await?
            .as_deref(),
        Some("2048")
    );
    assert_eq!(
        e.node
            .read("/var/lib/firmware/kmm-e2e/fw.bin")
            .await?
            .as_deref(),
        Some("firmware-bytes"),
        "firmware delivered"
    );
    assert_eq!(
        e.node
            .read("/sys/module/firmware_class/parameters/path")
            .await?
            .as_deref(),
        Some("/var/lib/firmware")
    );
    let st = e.status_of("brd").await?.unwrap();
    assert_eq!(st.digest, digest);
    assert_eq!(st.kernel, kver);
    assert_eq!(
        st.image,
        format!("{}/{}/brd:{kver}", guest_registry(), e.ns())
    );

    e.delete_module("brd").await?;
    let took = e.wait_ready("brd", false).await?;
    println!("phase delete -> label removed: {took:.1?}");
    assert!(
        !e.node.module_loaded("brd").await?,
        "brd unloaded from the kernel"
    );
    assert!(e.status_of("brd").await?.is_none());
    e.finish().await
}

#[tokio::test]
async fn loading_order_and_in_tree_removal_on_a_real_kernel() -> Result<()> {
    let e = E2e::new("e2e-order", &[]).await?;
    let kver = e.node.kernel.release.clone();
    let repo = format!("{}/order", e.ns());
    push_kernel_modules(&e.node.kernel, &repo, &kver, &["null_blk", "brd"], &[]).await?;
    // An in-tree module is loaded on the node before the Module arrives.
    e.node
        .vm
        .run_ok("/sbin/modprobe dummy && test -d /sys/module/dummy")
        .await?;

    let image = format!("{}/{repo}:{kver}", guest_registry());
    e.apply(
        &module(&e.node.node, "order", "null_blk", &image)
            .parameters(&["nr_devices=1"])
            .loading_order(&["null_blk", "brd"])
            .merge(json!({"spec": {"moduleLoader": {"container": {"inTreeModulesToRemove": ["dummy"]}}}}))
            .manifest(),
    )
        .await?;
    e.wait_ready("order", true).await?;
    for m in ["brd", "configfs", "null_blk"] {
        assert!(e.node.module_loaded(m).await?, "{m} loaded");
    }
    assert!(
        !e.node.module_loaded("dummy").await?,
        "in-tree dummy removed"
    );
    // brd (loaded first) is not held by null_blk: the order came from modulesLoadingOrder.
    assert_eq!(
        e.node
            .read("/sys/module/null_blk/parameters/nr_devices")
            .await?
            .as_deref(),
        Some("1")
    );

    e.delete_module("order").await?;
    e.wait_ready("order", false).await?;
    for m in ["null_blk", "brd", "configfs"] {
        assert!(!e.node.module_loaded(m).await?, "{m} unloaded");
    }
    assert!(
        !e.node.module_loaded("dummy").await?,
        "the in-tree module is not brought back"
    );
    e.finish().await
}

/// A Module of `modprobe.rawArgs` only (no moduleName), as upstream's worker runs them.
fn raw_args_module(node: &str, name: &str, image: &str, load: &[&str], unload: &[&str]) -> String {
    ModuleBuilder::new(name)
        .own_node(node)
        .insecure_mapping("^.+-amd64$", image)
        .merge(json!({"spec": {"moduleLoader": {"container": {"modprobe": {
            "moduleName": null,
            "rawArgs": {"load": load, "unload": unload},
        }}}}}))
        .manifest()
}

/// `rawArgs` on a real kernel: `brd` with parameters; with `-a` (and `-d` in the form
/// upstream's worker uses, `/tmp/opt` for the image's `/opt`) two modules, one with a
/// dependency; deleting the Modules unloads everything their loads inserted.
#[tokio::test]
async fn raw_args_load_with_parameters_and_several_modules_then_unload_on_a_real_kernel()
-> Result<()> {
    let e = E2e::new("e2e-raw", &[]).await?;
    let kver = e.node.kernel.release.clone();
    let repo = format!("{}/raw", e.ns());
    push_kernel_modules(
        &e.node.kernel,
        &repo,
        &kver,
        &["brd", "null_blk", "dummy"],
        &[],
    )
    .await?;
    let image = format!("{}/{repo}:{kver}", guest_registry());
    e.apply(&raw_args_module(
        &e.node.node,
        "raw",
        &image,
        &["-v", "brd", "rd_nr=2", "rd_size=4096"],
        &["-rv", "brd"],
    ))
    .await?;
    e.apply(&raw_args_module(
        &e.node.node,
        "raw-all",
        &image,
        &[
            "-va",
            "--first-time",
            "--dirname=/tmp/opt",
            "null_blk",
            "dummy",
        ],
        &["-r", "null_blk", "dummy"],
    ))
    .await?;
    e.wait_ready("raw", true).await?;
    e.wait_ready("raw-all", true).await?;
    for (param, value) in [("rd_nr", "2"), ("rd_size", "4096")] {
        assert_eq!(
            e.node
                .read(&format!("/sys/module/brd/parameters/{param}"))
                .await?
                .as_deref(),
            Some(value),
            "{param}"
        );
    }
    for m in ["brd", "null_blk", "configfs", "dummy"] {
        assert!(e.node.module_loaded(m).await?, "{m} loaded");
    }

    e.delete_module("raw").await?;
    e.delete_module("raw-all").await?;
    e.wait_ready("raw", false).await?;
    e.wait_ready("raw-all", false).await?;
    for m in ["brd", "null_blk", "configfs", "dummy"] {
        assert!(!e.node.module_loaded(m).await?, "{m} unloaded");
    }
    e.finish().await
}

#[tokio::test]
async fn ordered_upgrade_selector_change_and_missing_image_on_a_real_kernel() -> Result<()> {
    let e = E2e::new("e2e-upgrade", &[("kmm-test/e2e", "yes")]).await?;
    let kver = e.node.kernel.release.clone();
    let repo = format!("{}/upg", e.ns());
    push_kernel_modules(&e.node.kernel, &repo, "v1", &["brd"], &[]).await?;
    push_kernel_modules(&e.node.kernel, &repo, "v2", &["brd"], &[]).await?;
    let version_label = kmm_common::version_module_label(e.ns(), "upg");
    set_node_label(&e.client, &e.node.node, &version_label, Some("1")).await?;
    let v = |n: &str| {
        module(
            &e.node.node,
            "upg",
            "brd",
            &format!("{}/{repo}:v{n}", guest_registry()),
        )
        .parameters(&[&format!("rd_nr={n}")])
        .version(n)
        .selector("kmm-test/e2e", "yes")
        .manifest()
    };
    e.apply(&v("1")).await?;
    e.wait_ready("upg", true).await?;
    assert_eq!(
        e.node
            .read("/sys/module/brd/parameters/rd_nr")
            .await?
            .as_deref(),
        Some("1")
    );

    // Version 2 published; the node is still labelled 1: version 1 stays
    // loaded (upstream's ordered upgrade), label and parameters unchanged.
    e.apply(&v("2")).await?;
    e.node.wait_passes(3).await?;
    assert!(e.node.module_loaded("brd").await?);
    assert_eq!(
        e.node
            .read("/sys/module/brd/parameters/rd_nr")
            .await?
            .as_deref(),
        Some("1")
    );
    // The admin moves the node: version 2 replaces it (the ready label stays
    // through the replace; the version label says when it is done).
    set_node_label(&e.client, &e.node.node, &version_label, Some("2")).await?;
    let version_ready = kmm_common::version_ready_label(e.ns(), "upg");
    let nodes: Api<Node> = Api::all(e.client.clone());
    wait_for(WAIT, || async {
        let n = nodes.get(&e.node.node).await?;
        Ok(n.metadata
            .labels
            .unwrap_or_default()
            .get(&version_ready)
            .map(String::as_str)
            == Some("2"))
    })
    .await?;
    assert_eq!(
        e.node
            .read("/sys/module/brd/parameters/rd_nr")
            .await?
            .as_deref(),
        Some("2")
    );

    // The node stops matching the selector: unloaded.
    set_node_label(&e.client, &e.node.node, "kmm-test/e2e", None).await?;
    e.wait_ready("upg", false).await?;
    assert!(!e.node.module_loaded("brd").await?);

    // A Module whose image does not exist: a clear status error, nothing loaded.
    let missing = module(
        &e.node.node,
        "missing",
        "loop",
        &format!("{}/{}/nothing-here:{kver}", guest_registry(), e.ns()),
    )
    .manifest();
    e.apply(&missing).await?;
    wait_for(WAIT, || async {
        Ok(e.status_of("missing")
            .await?
            .and_then(|s| s.last_error)
            .is_some())
    })
    .await?;
    let err = e.status_of("missing").await?.unwrap().last_error.unwrap();
    assert_eq!(err.reason, "ImagePullFailed");
    println!("missing image reported as: {}", err.message);
    assert!(!e.node.module_loaded("loop").await?);
    e.finish().await
}
