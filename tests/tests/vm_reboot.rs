//! Reboots on a real kernel, upstream KMM's #1083: after a reboot a module of the
//! same name may already be in the kernel (udev loads the in-tree driver, the usual
//! reason for an out-of-tree one). The agent must not take it for the module it
//! loaded before the reboot: its state names the boot it describes
//! (`/proc/sys/kernel/random/boot_id`) and what it inserted (`srcversion`).
//!
//! The node is a QEMU guest whose agent state dir and image cache live on the 9p
//! share; a reboot is a new QEMU on that share (new `boot_id`, same kernel, an
//! empty kernel). The image's brd is Debian's with another `srcversion`
//! ([`kmm_tests::vm::modinfo::with_srcversion`]), so the guest tells it from its
//! in-tree brd by `/sys/module/brd/srcversion` (the in-tree one has none on
//! Debian's 6.1).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_common::NodeModuleStatus;
use kmm_tests::cluster::{
    delete_module, delete_node_and_status, ensure_crds, node_module_status, wait_for,
};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::module::ModuleBuilder;
use kmm_tests::vm::{VmNode, VmOptions};
use kmm_tests::vm_agent::{AgentVm, AgentVmOptions, guest_registry, push_module_with_srcversion};
use kube::Client;
use kube::api::Api;
use serde_json::json;

/// Generous: three TCG guests at once on a busy 2-core host took 70 s for a first load.
const WAIT: Duration = Duration::from_secs(180);
/// On the share: it outlives each boot, as a node's disk does.
const STATE_DIR: &str = "/host/state";
/// `srcversion` of the image's brd.
const OURS: &str = "C0FFEE00C0FFEE00C0FFEE01";
/// The NMC `lastError.reason` for a same-name module the agent did not insert.
const FOREIGN: &str = "ForeignModuleLoaded";

struct Fixture {
    cp: &'static ControlPlane,
    client: Client,
    ns: TestNamespace,
    vm: AgentVm,
    /// `srcversion` of the guest's in-tree brd (`None`: it has none).
    in_tree: Option<String>,
    started: Instant,
}

impl Fixture {
    /// A node with the agent, and the image with our brd pushed.
    async fn new(prefix: &str) -> Result<Self> {
        let started = Instant::now();
        let cp = ControlPlane::shared().await?;
        ensure_crds(cp).await?;
        let client = cp.client();
        let ns = cp.temp_namespace(prefix).await?;
        let node = format!("{}-vm", ns.name());
        let options = AgentVmOptions {
            state_dir: STATE_DIR.into(),
            ..AgentVmOptions::default()
        };
        let vm =
            AgentVm::start_with(cp, &client, &node, &[("kmm-test/node", &node)], options).await?;
        let (ko, _) = kmm_tests::vm::stage::module_file(&vm.kernel, "brd")?;
        let in_tree = kmm_tests::vm::modinfo::srcversion(&std::fs::read(ko)?)?;
        ensure!(in_tree.as_deref() != Some(OURS), "in-tree brd is ours?");
        let kver = vm.kernel.release.clone();
        push_module_with_srcversion(
            &vm.kernel,
            &format!("{}/brd", ns.name()),
            &kver,
            "brd",
            OURS,
        )
        .await?;
        Ok(Self {
            cp,
            client,
            ns,
            vm,
            in_tree,
            started,
        })
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    fn phase(&self, what: &str, took: Duration) {
        println!(
            "[{}] {what}: {took:.1?} (test time {:.1?})",
            self.ns(),
            self.started.elapsed()
        );
    }

    /// Module `brd` (moduleName brd, rd_nr=2) for this node, from our image.
    fn apply_module(&self, in_tree_modules_to_remove: bool) -> Result<()> {
        self.apply_module_with(in_tree_modules_to_remove, "rd_nr=2")
    }

    /// Module `brd` with `parameter`.
    fn apply_module_with(&self, in_tree_modules_to_remove: bool, parameter: &str) -> Result<()> {
        let image = format!(
            "{}/{}/brd:{}",
            guest_registry(),
            self.ns(),
            self.vm.kernel.release
        );
        let mut module = ModuleBuilder::new("brd")
            .own_node(&self.vm.node)
            .parameters(&[parameter])
            .insecure_mapping("^.+-amd64$", &image);
        if in_tree_modules_to_remove {
            module = module.merge(json!({"spec": {"moduleLoader": {"container": {"inTreeModulesToRemove": ["brd"]}}}}));
        }
        let yaml = module.manifest();
        kmm_tests::cluster::apply_yaml(self.cp, self.ns(), &yaml)
    }

    async fn has_ready_label(&self) -> Result<bool> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let key = kmm_common::ready_label(self.ns(), "brd");
        Ok(nodes
            .get(&self.vm.node)
            .await?
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(&key))
    }

    async fn status(&self) -> Result<Option<NodeModuleStatus>> {
        node_module_status(&self.client, &self.vm.node, self.ns(), "brd").await
    }

    /// Polls the node until `check` holds; on timeout fails with what was last
    /// seen and the agent's log.
    async fn wait<F, Fut>(&self, what: &str, check: F) -> Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        let t = Instant::now();
        if let Err(e) = wait_for(WAIT, check).await {
            let seen = format!(
                "ready label: {:?}, brd loaded: {:?}, srcversion: {:?}, status: {:?}",
                self.has_ready_label().await.ok(),
                self.vm.module_loaded("brd").await.ok(),
                self.vm.srcversion("brd").await.ok(),
                self.status().await.ok().flatten()
            );
            return self.vm.fail(format!("{what}: {e}\nlast seen: {seen}"));
        }
        let took = t.elapsed();
        self.phase(what, took);
        Ok(took)
    }

    /// Our brd in the kernel, the ready label and a status entry without error
    /// whose load time is not `loaded_before` (the label and the status of the
    /// previous boot stay until the agent reports again).
    async fn ours_is_ready(&self, loaded_before: Option<&Time>) -> Result<bool> {
        Ok(self.vm.srcversion("brd").await?.as_deref() == Some(OURS)
            && self.has_ready_label().await?
            && self.status().await?.is_some_and(|s| {
                s.last_error.is_none()
                    && s.load_time.is_some()
                    && s.load_time.as_ref() != loaded_before
            }))
    }

    /// Waits for [`Self::ours_is_ready`]; returns the load time reported.
    async fn wait_ours_ready(&self, what: &str, loaded_before: Option<&Time>) -> Result<Time> {
        self.wait(what, || self.ours_is_ready(loaded_before))
            .await?;
        Ok(self.status().await?.and_then(|s| s.load_time).unwrap())
    }

    /// Reboots the node; with `in_tree_brd`, the guest's in-tree brd is loaded
    /// (`modprobe brd`, as udev would) before the agent starts. Returns the new boot_id.
    async fn reboot(mut self, in_tree_brd: bool) -> Result<(Self, String)> {
        let before = self.vm.boot_id().await?;
        let t = Instant::now();
        self.vm = self.vm.reboot(false).await?;
        let after = self.vm.boot_id().await?;
        ensure!(before != after, "boot_id {after} did not change");
        ensure!(
            self.vm.vm.run_ok("uname -r").await?.trim() == self.vm.kernel.release,
            "rebooted into another kernel"
        );
        ensure!(
            !self.vm.module_loaded("brd").await?,
            "brd in a fresh kernel"
        );
        if in_tree_brd {
            self.vm.vm.run_ok("/sbin/modprobe brd").await?;
            ensure!(self.vm.module_loaded("brd").await?, "in-tree brd loaded");
            ensure!(
                self.vm.srcversion("brd").await? == self.in_tree,
                "the in-tree brd is the guest's"
            );
        }
        self.vm.start_agent().await?;
        self.phase("reboot to agent ready", t.elapsed());
        Ok((self, after))
    }

    /// The state file names the running boot and our srcversion.
    fn assert_state_describes(&self, boot_id: &str) -> Result<()> {
        // compared without dashes and case: how the agent spells them is its business
        let norm = |s: &str| s.replace('-', "").to_ascii_lowercase();
        let state = norm(&self.vm.state_file()?.unwrap_or_default());
        ensure!(
            state.contains(&norm(boot_id)),
            "the state file does not name the running boot {boot_id}:\n{}",
            self.vm.state_file()?.unwrap_or_default()
        );
        ensure!(
            state.contains(&norm(OURS)),
            "the state file does not record brd's srcversion {OURS}:\n{}",
            self.vm.state_file()?.unwrap_or_default()
        );
        Ok(())
    }

    async fn finish(self) -> Result<()> {
        let node = self.vm.node.clone();
        println!("[{}] total: {:.1?}", self.ns(), self.started.elapsed());
        self.vm.shutdown().await?;
        delete_node_and_status(&self.client, &node).await;
        self.ns.cleanup().await
    }
}

/// The first boot: the Module loads our brd.
/// Returns the load time reported.
async fn first_load(prefix: &str, in_tree_modules_to_remove: bool) -> Result<(Fixture, Time)> {
    let f = Fixture::new(prefix).await?;
    f.apply_module(in_tree_modules_to_remove)?;
    let loaded = f
        .wait_ours_ready("first boot: apply -> our brd ready", None)
        .await?;
    assert_eq!(
        f.vm.read("/sys/module/brd/parameters/rd_nr")
            .await?
            .as_deref(),
        Some("2")
    );
    Ok((f, loaded))
}

#[tokio::test]
async fn reboot_with_inbox_module_of_same_name_loads_ours_when_listed_in_tree_to_remove()
-> Result<()> {
    let (f, loaded_before) = first_load("reboot-intree", true).await?;
    let (f, boot_id) = f.reboot(true).await?;

    // The agent removes the in-tree brd (listed in inTreeModulesToRemove) and
    // loads ours: adopting the in-tree one would leave the srcversion theirs.
    f.wait_ours_ready(
        "after reboot: in-tree brd replaced by ours",
        Some(&loaded_before),
    )
    .await?;
    assert_eq!(
        f.vm.read("/sys/module/brd/parameters/rd_nr")
            .await?
            .as_deref(),
        Some("2"),
        "ours, with its parameters"
    );
    f.assert_state_describes(&boot_id)?;

    delete_module(&f.client, f.ns(), "brd").await?;
    f.wait("delete -> label and status gone", || async {
        Ok(!f.has_ready_label().await? && f.status().await?.is_none())
    })
    .await?;
    assert!(!f.vm.module_loaded("brd").await?, "our brd unloaded");
    f.finish().await
}

#[tokio::test]
async fn reboot_with_foreign_module_of_same_name_is_never_adopted_nor_unloaded() -> Result<()> {
    let (f, _) = first_load("reboot-foreign", false).await?;
    let (f, _) = f.reboot(true).await?;

    // Not ours and not to be removed: no ready label, the reason in the status.
    f.wait(
        "after reboot: foreign brd reported, label removed",
        || async {
            let reason = f
                .status()
                .await?
                .and_then(|s| s.last_error)
                .map(|e| e.reason);
            Ok(!f.has_ready_label().await? && reason.as_deref() == Some(FOREIGN))
        },
    )
    .await?;
    println!(
        "reported as: {:?}",
        f.status().await?.and_then(|s| s.last_error)
    );
    assert!(f.vm.module_loaded("brd").await?, "the in-tree brd stays");
    assert_eq!(f.vm.srcversion("brd").await?, f.in_tree, "and is not ours");

    delete_module(&f.client, f.ns(), "brd").await?;
    f.wait("delete -> status gone", || async {
        Ok(f.status().await?.is_none() && !f.has_ready_label().await?)
    })
    .await?;
    assert!(
        f.vm.module_loaded("brd").await?,
        "the in-tree brd, never inserted by the agent, is still loaded"
    );
    assert_eq!(f.vm.srcversion("brd").await?, f.in_tree);
    f.finish().await
}

#[tokio::test]
async fn reboot_without_anything_loaded_reloads_the_module() -> Result<()> {
    let (f, loaded_before) = first_load("reboot-plain", false).await?;
    let (f, boot_id) = f.reboot(false).await?;

    f.wait_ours_ready("after reboot: our brd loaded again", Some(&loaded_before))
        .await?;
    assert_eq!(
        f.vm.metric("kmm_agent_load_duration_seconds_count").await?,
        Some(1.0),
        "one load after the reboot"
    );
    f.assert_state_describes(&boot_id)?;

    delete_module(&f.client, f.ns(), "brd").await?;
    f.wait("delete -> label and status gone", || async {
        Ok(!f.has_ready_label().await? && f.status().await?.is_none())
    })
    .await?;
    assert!(!f.vm.module_loaded("brd").await?, "brd unloaded");
    f.finish().await
}

/// What the tests above rest on: in the guest, the image's brd shows [`OURS`] in
/// `/sys/module/brd/srcversion` and the in-tree brd shows its own (none on
/// Debian's 6.1). Needs no API server.
#[tokio::test]
async fn image_brd_and_in_tree_brd_differ_by_srcversion_in_the_guest() -> Result<()> {
    let (kernel, initramfs) = kmm_tests::vm_agent::prepare().await?;
    let (ko, _) = kmm_tests::vm::stage::module_file(&kernel, "brd")?;
    let original = std::fs::read(ko)?;
    let in_tree = kmm_tests::vm::modinfo::srcversion(&original)?;
    let share = tempfile::tempdir()?;
    std::fs::write(
        share.path().join("brd.ko"),
        kmm_tests::vm::modinfo::with_srcversion(&original, OURS)?,
    )?;
    let mut opts = VmOptions::new(kernel, initramfs);
    opts.net = false;
    opts.share = Some(share.path().to_path_buf());
    let vm = VmNode::boot(opts).await?;
    let srcversion = || async {
        let out = vm.run("cat /sys/module/brd/srcversion").await?;
        anyhow::Ok((out.rc == 0).then(|| out.output.trim().to_string()))
    };

    vm.run_ok("/sbin/insmod /host/brd.ko rd_nr=1").await?;
    assert_eq!(srcversion().await?.as_deref(), Some(OURS));
    println!(
        "image brd taint: {}",
        vm.run_ok("cat /sys/module/brd/taint").await?.trim()
    );
    vm.run_ok("/sbin/rmmod brd && /sbin/modprobe brd").await?;
    assert_eq!(
        vm.run_ok("cat /sys/module/brd/parameters/rd_nr")
            .await?
            .trim(),
        "16",
        "the in-tree brd, with its defaults"
    );
    assert_eq!(srcversion().await?, in_tree);
    vm.shutdown().await
}

/// Kills the agent in the guest (SIGKILL) and starts it again.
async fn kill_and_restart_agent(f: &Fixture, after: Duration) -> Result<()> {
    tokio::time::sleep(after).await;
    f.vm.vm
        .run_ok("killall -9 kmm-agent 2>/dev/null || pkill -9 kmm-agent || true")
        .await?;
    f.phase("agent SIGKILLed", after);
    f.vm.start_agent().await
}

/// A pseudo-random kill point in `0..max_ms` (the clock's nanoseconds).
fn kill_point(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    Duration::from_millis(nanos % max_ms)
}

/// The SIGKILL test on a real kernel: the agent in the guest is killed during a
/// replace (a new parameter: unload, then load) and during an unload; after each
/// restart the kernel, the state file and the node's labels and status agree,
/// with no load or unload intent left behind.
#[tokio::test]
async fn agent_sigkilled_in_the_vm_during_a_replace_and_an_unload_converges() -> Result<()> {
    let (f, loaded_before) = first_load("vm-sigkill", false).await?;
    f.apply_module_with(false, "rd_nr=3")?;
    kill_and_restart_agent(&f, kill_point(1500)).await?;
    f.wait(
        "after a kill during the replace: brd with rd_nr=3, ready",
        || async {
            Ok(f.vm
                .read("/sys/module/brd/parameters/rd_nr")
                .await?
                .as_deref()
                == Some("3")
                && f.ours_is_ready(Some(&loaded_before)).await?)
        },
    )
    .await?;
    let state = f.vm.state_file()?.unwrap_or_default();
    ensure!(
        !state.contains("\"loading\"") && !state.contains("\"unloading\""),
        "an intent was left behind:\n{state}"
    );
    ensure!(
        state.contains("rd_nr=3"),
        "the record has the new spec:\n{state}"
    );

    delete_module(&f.client, f.ns(), "brd").await?;
    kill_and_restart_agent(&f, kill_point(1500)).await?;
    f.wait(
        "after a kill during the unload: brd gone, no label, no status",
        || async {
            Ok(!f.vm.module_loaded("brd").await?
                && !f.has_ready_label().await?
                && f.status().await?.is_none())
        },
    )
    .await?;
    let state = f.vm.state_file()?.unwrap_or_default();
    ensure!(
        !state.contains("rd_nr") && !state.contains("\"unloading\""),
        "the record or the intent is still there:\n{state}"
    );
    f.finish().await
}
