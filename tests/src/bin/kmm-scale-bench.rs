//! Scale benchmark: N real `kmm-agent` processes (simulated kernel: this
//! measures the control path, not module loading) against the real API server
//! and registry. One Module targets all N nodes; it measures the time until
//! every node carries the ready label, the time until every label is gone after
//! deletion, and the agents' memory. Results go to a JSON file
//! (`benches/scale.sh` writes `benches/results/scale.json`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kmm_common::NodeModulesConfig;
use kmm_tests::agent::{AgentOptions, AgentProcess};
use kmm_tests::cluster::{create_node, delete_node, ensure_crds, wait_for};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kube::api::{Api, DeleteParams, ListParams};

const KVER: &str = "6.1.0-80-scale-amd64";

#[derive(Debug, Parser)]
struct Args {
    /// Number of agents (and Node objects).
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "benches/results/scale.json")]
    out: std::path::PathBuf,
}

/// How long after the last ready label the settled memory is read.
const SETTLE: Duration = Duration::from_secs(15);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Average and maximum, in MiB.
fn stats(v: &[u64]) -> serde_json::Value {
    let max = v.iter().copied().max().unwrap_or(0);
    let avg = if v.is_empty() {
        0
    } else {
        v.iter().sum::<u64>() / v.len() as u64
    };
    serde_json::json!({ "avg_mib": mib(avg), "max_mib": mib(max) })
}

/// The agents' memory at one moment (KiB per agent, from /proc/<pid>/status).
struct Memory {
    rss: Vec<u64>,
    anon: Vec<u64>,
    file: Vec<u64>,
}

impl Memory {
    fn of(agents: &[AgentProcess]) -> Self {
        let field = |f: &str| agents.iter().filter_map(|a| a.status_kib(f)).collect();
        Self {
            rss: field("VmRSS"),
            anon: field("RssAnon"),
            file: field("RssFile"),
        }
    }

    fn rss(&self) -> serde_json::Value {
        stats(&self.rss)
    }

    /// RSS split into anonymous memory (heap, stacks) and file pages (the binary).
    fn kinds(&self) -> serde_json::Value {
        serde_json::json!({ "anon": stats(&self.anon), "file": stats(&self.file) })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.agents;
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let client = cp.client();
    let ns = cp.temp_namespace("kmm-scale").await?;
    let run = ns.name().to_string();
    let image = format!("{}/{run}/scalemod:{KVER}", registry_addr());
    push_fake_kmod(&image, KVER, &[("scalemod", &[])], &[]).await?;

    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let node = format!("{run}-{i}");
        create_node(&client, &node, &[("kmm-scale", &run)], KVER).await?;
        agents.push(AgentProcess::start(&AgentOptions {
            node: node.clone(),
            kernel_release: KVER.into(),
            state_dir: dir.path().join(&node),
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            resync_seconds: 300,
        })?);
    }
    for a in &agents {
        a.wait_ready(Duration::from_secs(300)).await?;
    }
    let startup = t.elapsed();
    let idle = Memory::of(&agents);
    println!("{n} agents ready in {startup:.1?}");

    let module = format!(
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {{name: scalemod}}
spec:
  selector: {{kmm-scale: {run}}}
  moduleLoader:
    container:
      modprobe: {{moduleName: scalemod}}
      kernelMappings:
        - regexp: '^.+-scale-amd64$'
          containerImage: {image}
          registryTLS: {{insecure: true}}
"#
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = kmm_common::ready_label(&run, "scalemod");
    let count_ready = || async {
        let lp = ListParams::default().labels(&format!("kmm-scale={run},{ready}"));
        Ok::<usize, anyhow::Error>(nodes.list_metadata(&lp).await?.items.len())
    };
    let t = Instant::now();
    let out = cp.kubectl_with_stdin(["apply", "-n", &run, "-f", "-"], &module)?;
    anyhow::ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Polled by hand (not `wait_for`) to also record when the first label appears.
    let mut first_ready = None;
    loop {
        let c = count_ready().await?;
        if c > 0 && first_ready.is_none() {
            first_ready = Some(t.elapsed());
        }
        if c == n {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "only {c} of {n} nodes got the ready label"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_ready = t.elapsed();
    let loaded = Memory::of(&agents);
    println!("apply -> {n} ready labels: {all_ready:.1?} (first after {first_ready:.1?})");
    // Again once the agents are idle: what a node keeps paying for after a load.
    tokio::time::sleep(SETTLE).await;
    let settled = Memory::of(&agents);

    let t = Instant::now();
    cp.kubectl_ok(["delete", "-n", &run, "module", "scalemod", "--wait=false"])?;
    wait_for(Duration::from_secs(600), || async {
        Ok(count_ready().await? == 0)
    })
    .await
    .context("labels not removed")?;
    let all_unloaded = t.elapsed();
    println!("delete -> all labels gone: {all_unloaded:.1?}");

    let result = serde_json::json!({
        "benchmark": "agents against one API server (simulated kernel)",
        "date": k8s_openapi::jiff::Timestamp::now().to_string(),
        "machine": { "cpus": std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0) },
        "agents": n,
        "startup_to_all_ready_s": startup.as_secs_f64(),
        "apply_to_first_ready_label_s": first_ready.map(|d| d.as_secs_f64()),
        "apply_to_all_ready_labels_s": all_ready.as_secs_f64(),
        "delete_to_all_labels_removed_s": all_unloaded.as_secs_f64(),
        "agent_rss_idle": idle.rss(),
        "agent_rss_after_load": loaded.rss(),
        "agent_rss_after_load_settled_s": SETTLE.as_secs(),
        "agent_rss_after_load_settled": settled.rss(),
        "agent_memory_kinds_mib": {
            "idle": idle.kinds(),
            "after_load": loaded.kinds(),
            "after_load_settled": settled.kinds(),
        },
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&result)?);

    drop(agents);
    for i in 0..n {
        let node = format!("{run}-{i}");
        delete_node(&client, &node).await;
        let _ = Api::<NodeModulesConfig>::all(client.clone())
            .delete(&node, &DeleteParams::default())
            .await;
    }
    ns.cleanup().await
}
