//! `kmm-vm-latency-bench`: apply → ready on a real kernel, broken into the
//! agent's own phases (`kmm_agent_load_phase_seconds{phase}`: watch event,
//! decide, pull, extract, kernel, status, label). A QEMU node running Debian's
//! kernel and the agent loads `brd` from the registry: first with the image
//! not cached (a load after an unload, which removes it), then cached (a
//! parameter change replaces the module from the same image). Writes
//! `vm-latency.json` and `vm-latency.md`. Run by `benches/cluster.sh`
//! (`make bench`), which sets up the kernel and the network namespace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kmm_tests::cluster::{
    apply_yaml, delete_module, delete_node_and_status, ensure_crds, wait_for,
};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::module::ModuleBuilder;
use kmm_tests::vm_agent::{AgentVm, guest_registry, push_kernel_modules};
use kube::Api;
use serde::Serialize;

/// The agent's phases, in order (`agent/src/reconciler/phases.rs`).
const PHASES: [&str; 8] = [
    "watch", "decide", "pull", "extract", "kernel", "status", "label", "total",
];
const WAIT: Duration = Duration::from_secs(180);

#[derive(Debug, Parser)]
struct Args {
    /// Loads of each kind.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the results go.
    #[arg(long, default_value = "benches/results")]
    out_dir: PathBuf,
}

/// One load as the agent timed it, and as seen from the host.
#[derive(Debug, Serialize)]
struct Load {
    /// `uncached` or `cached`.
    kind: &'static str,
    /// Seconds per phase (and `total`), from the agent's histogram.
    phases: BTreeMap<String, f64>,
    /// From `kubectl apply` returning to the agent having counted the load,
    /// polled from the host through the VM's command channel (adds its latency).
    host_seconds: f64,
}

/// The histogram's sums and the count of totals, from the guest's /metrics.
async fn sums(vm: &AgentVm) -> Result<(BTreeMap<String, f64>, f64)> {
    let mut out = BTreeMap::new();
    for p in PHASES {
        let v = vm
            .metric(&format!(
                "kmm_agent_load_phase_seconds_sum{{phase=\"{p}\"}}"
            ))
            .await?
            .unwrap_or(0.0);
        out.insert(p.to_string(), v);
    }
    let count = vm
        .metric("kmm_agent_load_phase_seconds_count{phase=\"total\"}")
        .await?
        .unwrap_or(0.0);
    Ok((out, count))
}

/// Applies `yaml` and waits until the agent counted one more load; returns its phases.
async fn timed_load(
    cp: &ControlPlane,
    vm: &AgentVm,
    ns: &str,
    kind: &'static str,
    yaml: &str,
) -> Result<Load> {
    let (before, count) = sums(vm).await?;
    let t = Instant::now();
    apply_yaml(cp, ns, yaml)?;
    wait_for(WAIT, || async { Ok(sums(vm).await?.1 > count) })
        .await
        .with_context(|| format!("the agent did not count the load; log:\n{}", vm.agent_log()))?;
    let host_seconds = t.elapsed().as_secs_f64();
    let (after, _) = sums(vm).await?;
    let phases = after
        .iter()
        .map(|(p, v)| (p.clone(), v - before.get(p).copied().unwrap_or(0.0)))
        .collect();
    let load = Load {
        kind,
        phases,
        host_seconds,
    };
    println!(
        "{kind}: {:?} (host {:.2} s)",
        load.phases, load.host_seconds
    );
    Ok(load)
}

fn markdown(loads: &[Load], kernel: &str) -> String {
    let mut s = format!(
        "# apply → ready on a real kernel, by phase\n\n\
         Written by `benches/cluster.sh`: QEMU (TCG) node, Debian kernel {kernel}, \
         kmm-agent loading `brd`; seconds per phase from `kmm_agent_load_phase_seconds`.\n\n\
         | load | {} | host-observed |\n|---|{}---|\n",
        PHASES.join(" | "),
        "---|".repeat(PHASES.len())
    );
    for l in loads {
        let cells: Vec<String> = PHASES
            .iter()
            .map(|p| format!("{:.3}", l.phases.get(*p).copied().unwrap_or(0.0)))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {:.2} |\n",
            l.kind,
            cells.join(" | "),
            l.host_seconds
        ));
    }
    s
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let client = cp.client();
    let ns = cp.temp_namespace("kmm-vmlat").await?;
    let node_name = format!("{}-vm", ns.name());
    let vm = AgentVm::start(cp, &client, &node_name, &[("kmm-test/node", &node_name)]).await?;
    let result = async {
        let repo = format!("{}/brd", ns.name());
        push_kernel_modules(&vm.kernel, &repo, "v1", &["brd"], &[]).await?;
        let image = format!("{}/{repo}:v1", guest_registry());
        let module = |rd_nr: usize| {
            ModuleBuilder::new("brd")
                .module_name("brd")
                .own_node(&node_name)
                .insecure_mapping("^.+-amd64$", &image)
                .parameters(&[&format!("rd_nr={rd_nr}")])
                .manifest()
        };
        let nodes: Api<Node> = Api::all(client.clone());
        let ready = kmm_common::ready_label(ns.name(), "brd");
        let mut loads = Vec::new();
        for round in 0..args.rounds {
            // Not cached: the unload before it removed the image.
            loads.push(timed_load(cp, &vm, ns.name(), "uncached", &module(1)).await?);
            // Cached: the same image, another parameter: a replace.
            loads.push(timed_load(cp, &vm, ns.name(), "cached", &module(2)).await?);
            delete_module(&client, ns.name(), "brd").await?;
            wait_for(WAIT, || async {
                let n = nodes.get(&node_name).await?;
                Ok(!n.metadata.labels.unwrap_or_default().contains_key(&ready))
            })
            .await
            .with_context(|| format!("round {round}: not unloaded"))?;
            anyhow::ensure!(!vm.module_loaded("brd").await?, "brd still loaded");
        }
        Ok::<_, anyhow::Error>(loads)
    }
    .await;
    let kernel = vm.kernel.release.clone();
    vm.shutdown().await?;
    delete_node_and_status(&client, &node_name).await;
    ns.cleanup().await?;
    let loads = result?;
    std::fs::create_dir_all(&args.out_dir)?;
    let json = serde_json::json!({
        "benchmark": "apply -> ready on a real kernel (QEMU TCG), by agent phase",
        "date": k8s_openapi::jiff::Timestamp::now().to_string(),
        "kernel": kernel,
        "loads": loads,
    });
    let out = args.out_dir.join("vm-latency.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)? + "\n")?;
    let md = markdown(&loads, &kernel);
    std::fs::write(args.out_dir.join("vm-latency.md"), &md)?;
    print!("{md}");
    println!("wrote {}", out.display());
    Ok(())
}
