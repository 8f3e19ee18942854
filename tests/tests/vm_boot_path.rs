//! The boot path on a real kernel: the in-cluster agent loads brd (parameters and
//! firmware) with its state dir on the host share; the VM goes down (the kernel
//! forgets everything); a second VM with NO network runs `kmm-agent boot` on the
//! same state dir and gets brd back as it was; a third VM runs the boot path, then
//! the in-cluster agent, which adopts brd without loading it again and unloads it
//! when the Module is deleted.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Node;
use kmm_common::{Module, NodeModulesConfig};
use kmm_tests::cluster::{delete_node, ensure_crds, wait_for};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::module::ModuleBuilder;
use kmm_tests::vm_agent::{AgentVm, AgentVmOptions, guest_registry, push_kernel_modules};
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
/// The agent's state dir on the 9p share: it outlives each VM, like a node's disk.
const STATE_DIR: &str = "/host/state";
/// What the systemd unit runs, with the guest's paths.
const BOOT_CMD: &str = "/bin/kmm-agent boot --state-dir /host/state \
     --firmware-dir /var/lib/firmware --set-firmware-class-path";

async fn has_label(client: &Client, node: &str, key: &str) -> Result<bool> {
    let nodes: Api<Node> = Api::all(client.clone());
    Ok(nodes
        .get(node)
        .await?
        .metadata
        .labels
        .unwrap_or_default()
        .contains_key(key))
}

async fn wait_label(vm: &AgentVm, client: &Client, key: &str, present: bool) -> Result<Duration> {
    let t = Instant::now();
    if let Err(e) = wait_for(WAIT, || async {
        Ok(has_label(client, &vm.node, key).await? == present)
    })
    .await
    {
        return vm.fail(format!("label {key} present={present}: {e}"));
    }
    Ok(t.elapsed())
}

/// `kmm_agent_load_duration_seconds_count` of the agent in the guest.
async fn load_count(vm: &AgentVm) -> Result<u64> {
    guest_metric(vm, "kmm_agent_load_duration_seconds_count").await
}

/// Waits until the agent in the guest has run `passes` whole passes.
async fn wait_passes(vm: &AgentVm, passes: u64) -> Result<()> {
    let start = guest_metric(vm, "kmm_agent_reconciles_total").await?;
    wait_for(WAIT, || async {
        Ok(guest_metric(vm, "kmm_agent_reconciles_total").await? > start + passes)
    })
    .await
}

/// A counter of the agent in the guest.
async fn guest_metric(vm: &AgentVm, series: &str) -> Result<u64> {
    let out = vm
        .vm
        .run_ok("wget -q -O - http://127.0.0.1:8081/metrics")
        .await?;
    out.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no {series} in /metrics:\n{out}"))?
        .trim()
        .parse()
        .with_context(|| format!("{series} is not a count"))
}

fn module_yaml(node: &str, image: &str) -> String {
    ModuleBuilder::new("brd")
        .own_node(node)
        .parameters(&["rd_nr=3", "rd_size=2048"])
        .merge(json!({"spec": {"moduleLoader": {"container": {"modprobe": {"firmwarePath": "/firmware"}}}}}))
        .insecure_mapping("^.+-amd64$", image)
        .manifest()
}

async fn assert_brd_as_loaded_by_the_agent(vm: &AgentVm) -> Result<()> {
    ensure!(
        vm.read("/sys/module/brd/parameters/rd_nr")
            .await?
            .as_deref()
            == Some("3"),
        "brd with rd_nr=3"
    );
    ensure!(
        vm.read("/sys/module/brd/parameters/rd_size")
            .await?
            .as_deref()
            == Some("2048"),
        "brd with rd_size=2048"
    );
    ensure!(
        vm.read("/var/lib/firmware/kmm-boot/fw.bin")
            .await?
            .as_deref()
            == Some("boot-firmware"),
        "firmware installed from the cached image"
    );
    ensure!(
        vm.read("/sys/module/firmware_class/parameters/path")
            .await?
            .as_deref()
            == Some("/var/lib/firmware"),
        "firmware search path set"
    );
    Ok(())
}

#[tokio::test]
async fn modules_come_back_at_boot_without_network_and_the_agent_adopts_them() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let client = cp.client();
    let ns = cp.temp_namespace("boot-path").await?;
    let node = format!("{}-vm", ns.name());
    let share = tempfile::Builder::new()
        .prefix("kmm-boot-path-")
        .tempdir()?;
    let labels = [("kmm-test/node", node.as_str())];
    let ready = kmm_common::ready_label(ns.name(), "brd");
    let shared = |net: bool, start_agent: bool, create_node: bool| AgentVmOptions {
        share: Some(share.path().to_path_buf()),
        state_dir: STATE_DIR.into(),
        net,
        start_agent,
        create_node,
    };

    // VM 1: the in-cluster agent loads brd; state file and image cache on the share.
    let t = Instant::now();
    let vm1 = AgentVm::start_with(cp, &client, &node, &labels, shared(true, true, true)).await?;
    let kver = vm1.kernel.release.clone();
    push_kernel_modules(
        &vm1.kernel,
        &format!("{}/brd", ns.name()),
        &kver,
        &["brd"],
        &[("kmm-boot/fw.bin", b"boot-firmware")],
    )
    .await?;
    let image = format!("{}/{}/brd:{kver}", guest_registry(), ns.name());
    let out = cp.kubectl_with_stdin(
        ["apply", "-n", ns.name(), "-f", "-"],
        &module_yaml(&node, &image),
    )?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = wait_label(&vm1, &client, &ready, true).await?;
    println!("phase vm1 apply -> ready label: {took:.1?}");
    assert_brd_as_loaded_by_the_agent(&vm1).await?;
    let state = std::fs::read_to_string(share.path().join("state/state.json"))?;
    assert!(state.contains("\"firmwareSource\""), "{state}");
    vm1.shutdown().await?;
    println!("phase vm1 total: {:.1?}", t.elapsed());

    // VM 2: a reboot with no network at all; only the boot path runs.
    let t = Instant::now();
    let vm2 = AgentVm::start_with(cp, &client, &node, &labels, shared(false, false, false)).await?;
    println!("phase vm2 boot: {:.1?}", t.elapsed());
    assert_eq!(
        vm2.vm.run_ok("ls /sys/class/net").await?.trim(),
        "lo",
        "the guest has no network interface"
    );
    assert!(
        !vm2.module_loaded("brd").await?,
        "a fresh kernel has no brd"
    );
    let t = Instant::now();
    let out = vm2.vm.run(&format!("{BOOT_CMD} 2>&1")).await?;
    println!("phase vm2 kmm-agent boot: {:.1?}", t.elapsed());
    println!("{}", out.output.trim());
    assert_eq!(out.rc, 0, "boot mode failed:\n{}", out.output);
    assert!(
        out.output.contains("1 loaded, 0 failed, 0 skipped"),
        "{}",
        out.output
    );
    assert_brd_as_loaded_by_the_agent(&vm2).await?;
    // Run again: idempotent, nothing inserted twice, still success.
    let again = vm2.vm.run(&format!("{BOOT_CMD} 2>&1")).await?;
    assert_eq!(again.rc, 0, "{}", again.output);
    // A record whose image is gone from the cache fails the run (the unit fails).
    let out = vm2
        .vm
        .run(
            "mkdir -p /tmp/gone && sed 's#\"moduleDir\": \"#\"moduleDir\": \"/gone#' \
             /host/state/state.json > /tmp/gone/state.json && \
             /bin/kmm-agent boot --state-dir /tmp/gone 2>&1",
        )
        .await?;
    assert_ne!(out.rc, 0, "{}", out.output);
    assert!(
        out.output.contains("0 loaded, 0 failed, 1 skipped")
            && out.output.contains("is not in the cache"),
        "{}",
        out.output
    );
    vm2.shutdown().await?;

    // VM 3: boot path first, then the in-cluster agent, which adopts brd.
    let t = Instant::now();
    let vm3 = AgentVm::start_with(cp, &client, &node, &labels, shared(true, false, false)).await?;
    let out = vm3.vm.run(&format!("{BOOT_CMD} 2>&1")).await?;
    assert_eq!(out.rc, 0, "boot mode failed:\n{}", out.output);
    assert!(vm3.module_loaded("brd").await?);
    println!("phase vm3 boot + boot path: {:.1?}", t.elapsed());
    let t = Instant::now();
    vm3.start_agent().await?;
    println!("phase vm3 agent ready: {:.1?}", t.elapsed());
    assert_eq!(load_count(&vm3).await?, 0, "no load right after start");
    // Several passes later the agent still has not loaded anything.
    wait_passes(&vm3, 2).await?;
    let loads = load_count(&vm3).await?;
    if loads != 0 {
        return vm3.fail(format!(
            "the agent loaded {loads} time(s) after the boot path"
        ));
    }
    assert!(has_label(&client, &node, &ready).await?);
    let log = vm3.agent_log();
    assert!(
        log.lines()
            .any(|l| l.contains("node state recovered") && l.contains("loaded=1")),
        "the record was kept on start:\n{log}"
    );
    assert_brd_as_loaded_by_the_agent(&vm3).await?;

    // And it is the agent's module: deleting the Module unloads it.
    let api: Api<Module> = Api::namespaced(client.clone(), ns.name());
    api.delete("brd", &DeleteParams::default()).await?;
    let took = wait_label(&vm3, &client, &ready, false).await?;
    println!("phase vm3 delete -> label removed: {took:.1?}");
    assert!(!vm3.module_loaded("brd").await?, "brd unloaded");

    vm3.shutdown().await?;
    delete_node(&client, &node).await;
    let nmc: Api<NodeModulesConfig> = Api::all(client.clone());
    let _ = nmc.delete(&node, &DeleteParams::default()).await;
    ns.cleanup().await
}
