//! The demo (`make demo`): a real control plane, a real registry, `kmm-controller`
//! and a QEMU node booting Debian's kernel with `kmm-agent` inside. It applies
//! `examples/brd.yaml`, shows the module loaded (labels, per-node status, the
//! module's parameters read from the guest's sysfs), then deletes the Module and
//! shows the unload. `hack/demo.sh` prepares everything and calls this.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kmm_common::{Module, NodeModulesConfig};
use kmm_tests::cluster::{delete_node, ensure_crds, wait_for};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::{ControlPlane, repo_root};
use kmm_tests::vm_agent::AgentVm;
use kube::api::{Api, DeleteParams, PostParams};

const NS: &str = "kmm-demo";
const NODE: &str = "kmm-demo-node";

fn say(msg: &str) {
    println!("\n\x1b[1m==> {msg}\x1b[0m");
}

fn show(cp: &ControlPlane, args: &[&str]) -> Result<()> {
    println!("$ kubectl {}", args.join(" "));
    print!("{}", cp.kubectl_ok(args)?);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let client = cp.client();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(NS).await?.is_none() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }

    say("Starting kmm-controller (finalizer, Module status, device plugins)");
    let logs = tempfile::tempdir()?;
    let controller = ControllerProcess::start(&ControllerOptions::for_namespace(
        cp,
        NS,
        logs.path(),
        Vec::new(),
    ))?;
    controller.wait_leader(Duration::from_secs(60)).await?;
    println!("leader elected");

    say("Booting the VM node (QEMU, Debian's kernel, kmm-agent inside)");
    let node = AgentVm::start(cp, &client, NODE, &[("kmm-demo", "true")]).await?;
    println!(
        "guest kernel: {}",
        node.read("/proc/sys/kernel/osrelease")
            .await?
            .unwrap_or_default()
    );
    let result = run(cp, &client, &node).await;
    if result.is_err() {
        eprintln!("--- agent log ---\n{}", node.agent_log());
        eprintln!("--- controller log ---\n{}", controller.log());
    }
    drop(controller);
    say("Cleaning up");
    node.shutdown().await?;
    delete_node(&client, NODE).await;
    let _ = Api::<NodeModulesConfig>::all(client.clone())
        .delete(NODE, &DeleteParams::default())
        .await;
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
    result
}

async fn run(cp: &ControlPlane, client: &kube::Client, node: &AgentVm) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = kmm_common::ready_label(NS, "brd");
    let has_ready = || async {
        Ok(nodes
            .get(NODE)
            .await?
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(&ready))
    };

    let example = repo_root().join("examples/brd.yaml");
    let example = example.to_str().context("non-UTF-8 path")?;
    say("Applying examples/brd.yaml");
    println!("{}", std::fs::read_to_string(example)?);
    let t = Instant::now();
    show(cp, &["apply", "-n", NS, "-f", example])?;
    wait_for(Duration::from_secs(180), || async { has_ready().await })
        .await
        .context("the ready label did not appear")?;
    let took = t.elapsed();
    say(&format!(
        "Module loaded: {took:.1?} from `kubectl apply` to the node's ready label"
    ));

    // The controller counts the node in the Module's status.
    let modules: Api<Module> = Api::namespaced(client.clone(), NS);
    wait_for(Duration::from_secs(60), || async {
        Ok(modules
            .get("brd")
            .await?
            .status
            .is_some_and(|s| s.module_loader.available_number == 1))
    })
    .await
    .context("the controller did not count the loaded node in the Module's status")?;
    show(cp, &["get", "modules", "-n", NS, "-o", "wide"])?;
    say("The node's labels");
    show(
        cp,
        &["get", "node", NODE, "-o", "jsonpath={.metadata.labels}"],
    )?;
    println!();
    say("Per-node status (NodeModulesConfig)");
    show(
        cp,
        &[
            "get",
            "nodemodulesconfigs",
            NODE,
            "-o",
            "jsonpath={.status}",
        ],
    )?;
    println!();
    say("Inside the guest");
    let out = node
        .vm
        .run_ok("grep ^brd /proc/modules; for p in rd_nr rd_size; do echo \"/sys/module/brd/parameters/$p = $(cat /sys/module/brd/parameters/$p)\"; done; ls /dev/ram*")
        .await?;
    print!("{out}");
    if node
        .read("/sys/module/brd/parameters/rd_nr")
        .await?
        .as_deref()
        != Some("3")
    {
        bail!("brd is not loaded with rd_nr=3 in the guest");
    }

    say("Deleting the Module: the agent unloads brd");
    let t = Instant::now();
    show(cp, &["delete", "-n", NS, "module", "brd"])?;
    wait_for(Duration::from_secs(120), || async {
        Ok(!has_ready().await?)
    })
    .await
    .context("the ready label was not removed")?;
    println!(
        "unloaded: {:.1?} from `kubectl delete` to the label's removal",
        t.elapsed()
    );
    let gone = !node.module_loaded("brd").await?;
    println!("/sys/module/brd present in the guest: {}", !gone);
    if !gone {
        bail!("brd is still loaded in the guest");
    }
    show(
        cp,
        &["get", "node", NODE, "-o", "jsonpath={.metadata.labels}"],
    )?;
    println!();
    say("Agent log (last lines)");
    for line in node
        .agent_log()
        .lines()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        println!("{line}");
    }
    say("Demo done: loaded and unloaded a real kernel module from a Module YAML");
    Ok(())
}
