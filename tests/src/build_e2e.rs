//! The fixture of the in-cluster build and sign end-to-end tests: Module
//! `brd` (from the QEMU node's own kernel tree) built and/or signed by the
//! controller's Jobs, executed here, and loaded by the real agent in the VM.
//! The node, its namespace and the controller are set up and torn down the
//! same way for each recipe; what the Jobs do is the test's.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, PodSpec};
use kmm_common::{Module, NodeModuleStatus};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::time::Duration;

use crate::cluster::{
    crd_namespace, delete_module, delete_node_and_status, node_module_status, wait_for,
};
use crate::controller::{ControllerOptions, ControllerProcess};
use crate::controlplane::{ControlPlane, TestNamespace};
use crate::images::registry_addr;
use crate::vm_agent::{AgentVm, push_kernel_modules};

/// How long each step may take.
pub const WAIT: Duration = Duration::from_secs(120);
/// The Module every test of this kind deploys.
pub const MODULE: &str = "brd";

/// A namespace, a QEMU node running the agent (Node `<ns>-vm`, selected by
/// `kmm-test/node=<ns>-vm`) and brd's module tree for its kernel pushed as
/// `<registry>/<ns>/brd-src:<kernel>`.
pub struct BrdE2e {
    /// The shared control plane.
    pub cp: &'static ControlPlane,
    /// Admin client.
    pub client: Client,
    /// The test's namespace (Modules, Jobs, Secrets).
    pub ns: TestNamespace,
    /// Its name.
    pub ns_name: String,
    /// The VM's Node name.
    pub node_name: String,
    /// The VM.
    pub node: AgentVm,
    /// The VM's kernel release.
    pub kver: String,
    /// Scratch space (controller log, keys, unpacked images).
    pub dir: tempfile::TempDir,
}

impl BrdE2e {
    /// Boots the node in a fresh namespace named after `prefix` and pushes
    /// brd's tree for its kernel.
    ///
    /// # Errors
    /// Control plane, boot or push failures.
    pub async fn start(prefix: &str) -> Result<Self> {
        let (cp, client, ns) = crd_namespace(prefix).await?;
        let ns_name = ns.name().to_string();
        let node_name = format!("{ns_name}-vm");
        let node =
            AgentVm::start(cp, &client, &node_name, &[("kmm-test/node", &node_name)]).await?;
        let kver = node.kernel.release.clone();
        push_kernel_modules(
            &node.kernel,
            &format!("{ns_name}/brd-src"),
            &kver,
            &["brd"],
            &[],
        )
        .await?;
        Ok(Self {
            cp,
            client,
            ns,
            ns_name,
            node_name,
            node,
            kver,
            dir: tempfile::tempdir()?,
        })
    }

    /// Starts the controller for the namespace (`extra_args` added) and
    /// waits until it leads. It asks the registry by the guest's name
    /// (10.0.2.2:5000), which on the host is not the registry: plain-HTTP
    /// lookups go through the registry itself as proxy (it serves
    /// absolute-form requests by path).
    ///
    /// # Errors
    /// Spawn failures or no leadership within [`WAIT`].
    pub async fn start_controller(&self, extra_args: Vec<String>) -> Result<ControllerProcess> {
        let proxy = format!("http://{}", registry_addr());
        let controller = ControllerProcess::start_with_env(
            &ControllerOptions::for_namespace(self.cp, &self.ns_name, self.dir.path(), extra_args),
            &[("http_proxy", &proxy), ("no_proxy", "127.0.0.1,localhost")],
        )?;
        controller.wait_leader(WAIT).await?;
        Ok(controller)
    }

    /// The namespace's Jobs.
    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns_name)
    }

    /// The namespace's Modules.
    pub fn modules(&self) -> Api<Module> {
        Api::namespaced(self.client.clone(), &self.ns_name)
    }

    /// What the node's NodeModulesConfig says about brd.
    ///
    /// # Errors
    /// API errors.
    pub async fn status(&self) -> Result<Option<NodeModuleStatus>> {
        node_module_status(&self.client, &self.node_name, &self.ns_name, MODULE).await
    }

    /// Waits until the node reports brd `WaitingForImage`.
    ///
    /// # Errors
    /// Not within [`WAIT`] (with the agent log).
    pub async fn wait_waiting_for_image(&self) -> Result<()> {
        wait_for(WAIT, || async {
            Ok(self.status().await?.is_some_and(|s| {
                s.last_error
                    .as_ref()
                    .is_some_and(|e| e.reason == "WaitingForImage")
            }))
        })
        .await
        .or_else(|e| self.node.fail(format!("brd not WaitingForImage: {e}")))
    }

    /// Waits until the node waits for brd's image (nothing loaded) while
    /// the Module says its images are being built.
    ///
    /// # Errors
    /// Not within [`WAIT`], a loaded brd or another ImagesReady condition.
    pub async fn wait_building(&self) -> Result<()> {
        self.wait_waiting_for_image().await?;
        ensure!(
            !self.node.module_loaded(MODULE).await?,
            "brd loaded before its image exists"
        );
        let images_ready = condition(&self.modules().get(MODULE).await?, "ImagesReady");
        ensure!(
            images_ready == Some(("False".into(), "Building".into())),
            "ImagesReady {images_ready:?}, not Building"
        );
        Ok(())
    }

    /// Waits until brd's ready label is on the node (`present`) or gone.
    ///
    /// # Errors
    /// Not within [`WAIT`] (with the agent log; `what` says after what).
    pub async fn wait_ready_label(&self, present: bool, what: &str) -> Result<()> {
        let key = kmm_common::ready_label(&self.ns_name, MODULE);
        let nodes: Api<Node> = Api::all(self.client.clone());
        wait_for(WAIT, || async {
            Ok(nodes
                .get(&self.node_name)
                .await?
                .labels()
                .contains_key(&key)
                == present)
        })
        .await
        .or_else(|e| self.node.fail(format!("{key} {what}: {e}")))
    }

    /// Checks brd is loaded in the guest with `rd_nr`, and the node reports
    /// `image@digest` for its kernel, without an error.
    ///
    /// # Errors
    /// Channel or API errors (mismatches panic, as assertions).
    pub async fn assert_loaded(&self, rd_nr: &str, image: &str, digest: &str) -> Result<()> {
        assert!(self.node.module_loaded(MODULE).await?);
        assert_eq!(
            self.node
                .read("/sys/module/brd/parameters/rd_nr")
                .await?
                .as_deref(),
            Some(rd_nr)
        );
        // The label can be written in a pass that already sees the load
        // recorded but still the wait it ended (the worker clears it when it
        // finishes, after its ModuleLoaded event): the next pass writes the
        // status without it.
        wait_for(WAIT, || async {
            Ok(self.status().await?.is_some_and(|s| s.last_error.is_none()))
        })
        .await
        .or_else(|e| self.node.fail(format!("brd's status keeps an error: {e}")))?;
        let st = self.status().await?.context("no status for brd")?;
        assert_eq!(
            (st.image.as_str(), st.digest.as_str(), st.kernel.as_str()),
            (image, digest, self.kver.as_str())
        );
        Ok(())
    }

    /// Deletes brd, waits for the unload, stops the controller and the VM,
    /// and removes the Node and the namespace.
    ///
    /// # Errors
    /// No unload within [`WAIT`], shutdown or cleanup failures.
    pub async fn finish(self, controller: ControllerProcess) -> Result<()> {
        delete_module(&self.client, &self.ns_name, MODULE).await?;
        self.wait_ready_label(false, "unload after delete").await?;
        assert!(!self.node.module_loaded(MODULE).await?);
        drop(controller);
        self.node.shutdown().await?;
        delete_node_and_status(&self.client, &self.node_name).await;
        self.ns.cleanup().await
    }
}

/// (status, reason) of a Module condition.
pub fn condition(module: &Module, type_: &str) -> Option<(String, String)> {
    module
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Waits for brd's one Job of `kind` (`build`, `sign`) in `jobs`.
///
/// # Errors
/// None within [`WAIT`] (with the controller log), or more than one.
pub async fn wait_job(jobs: &Api<Job>, kind: &str, controller: &ControllerProcess) -> Result<Job> {
    let lp = ListParams::default().labels(&format!(
        "kmm.node.kubernetes.io/module.name={MODULE},kmm.node.kubernetes.io/job.type={kind}"
    ));
    wait_for(WAIT, || async {
        Ok(!jobs.list(&lp).await?.items.is_empty())
    })
    .await
    .with_context(|| format!("no {kind} Job; controller log:\n{}", controller.log()))?;
    let mut found = jobs.list(&lp).await?.items;
    ensure!(found.len() == 1, "one {kind} Job for one kernel: {found:?}");
    Ok(found.remove(0))
}

/// Waits until brd is ImagesReady in `modules` and every one of `done` is
/// collected from `jobs`.
///
/// # Errors
/// Not within [`WAIT`] (with the controller log).
pub async fn wait_images_ready_and_jobs_collected(
    modules: &Api<Module>,
    jobs: &Api<Job>,
    done: &[&Job],
    controller: &ControllerProcess,
) -> Result<()> {
    wait_for(WAIT, || async {
        let m = modules.get(MODULE).await?;
        let mut gone = true;
        for j in done {
            gone &= jobs
                .get_opt(&j.name_any())
                .await?
                .is_none_or(|j| j.metadata.deletion_timestamp.is_some());
        }
        Ok(condition(&m, "ImagesReady").is_some_and(|(s, _)| s == "True") && gone)
    })
    .await
    .with_context(|| {
        format!(
            "ImagesReady / Jobs collected; controller log:\n{}",
            controller.log()
        )
    })
}

/// The pod template of `job`.
///
/// # Errors
/// A Job without one.
pub fn pod(job: &Job) -> Result<&PodSpec> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("Job has no pod template")
}

/// The pod template of `job`, to edit.
///
/// # Errors
/// A Job without one.
pub fn pod_mut(job: &mut Job) -> Result<&mut PodSpec> {
    job.spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("Job has no pod template")
}
