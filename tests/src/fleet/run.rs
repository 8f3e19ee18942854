//! The fleet benchmark's run: N nodes, a controller, one versioned Module
//! taken through load, a status-only change, an ordered upgrade and an unload;
//! for each, the time until every node is there, the requests of every client
//! (from the audit log) and the CPU of the API server, etcd, agents and
//! controller.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use kmm_common::{Module, NodeModulesConfig};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::agents::{Fleet, FleetKind};
use super::count::Tally;
use super::procstat::{cpu_seconds, rss_kib, total_cpu_seconds};
use super::progress::{Labels, Progress, Timeline};
use crate::audit::{AuditLog, Mark, client_of, is_write};
use crate::cluster::{create_node, ensure_crds};
use crate::controller::{ControllerOptions, ControllerProcess};
use crate::controlplane::{ControlPlane, run_dir};
use crate::images::{push_fake_kmod, registry_addr};

/// Kernel release every simulated node runs.
const KVER: &str = "6.1.0-90-fleet-amd64";
/// The Module's name.
const MODULE: &str = "fleetmod";

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Nodes (and agents).
    pub nodes: usize,
    /// How the agents run.
    pub fleet: FleetKind,
    /// Quiet time after each operation before its requests are counted.
    pub settle: Duration,
    /// Longest wait for one operation.
    pub timeout: Duration,
    /// Where the agents' state dirs and logs go.
    pub work_dir: PathBuf,
}

/// Requests per node of one operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PerNode {
    /// Writes by kmm-agent.
    pub agent_writes: f64,
    /// Reads (GET, LIST) by kmm-agent.
    pub agent_reads: f64,
    /// Writes by kmm-controller.
    pub controller_writes: f64,
    /// Reads by kmm-controller.
    pub controller_reads: f64,
}

/// CPU seconds used during one operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cpu {
    /// kube-apiserver.
    pub apiserver: Option<f64>,
    /// etcd.
    pub etcd: Option<f64>,
    /// All agents.
    pub agents: f64,
    /// kmm-controller.
    pub controller: Option<f64>,
}

/// One measured operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    /// `load`, `status-only change`, `ordered upgrade`, `unload`.
    pub name: String,
    /// From the change until every node was there (none for a change no node acts on).
    pub seconds: Option<f64>,
    /// When kmm-agent's last write of the operation happened, from the change.
    pub last_agent_write_s: Option<f64>,
    /// Per node.
    pub per_node: PerNode,
    /// CPU used from the change until the end of the settle time.
    pub cpu_s: Cpu,
    /// Nodes there over time.
    pub timeline: Timeline,
    /// Every request of the operation, by client, verb and resource.
    pub requests: Tally,
}

/// Resident memory, MiB.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    /// All agents, idle (watches synced, nothing loaded).
    pub agents_idle_total: f64,
    /// All agents after the load.
    pub agents_after_load_total: f64,
    /// Per agent, idle (total / N: in-process agents share one runtime).
    pub agent_idle: f64,
    /// Per agent, after the load.
    pub agent_after_load: f64,
    /// The controller after the load.
    pub controller_after_load: Option<f64>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// What this is.
    pub benchmark: String,
    /// When it ran.
    pub date: String,
    /// CPUs of the machine.
    pub cpus: usize,
    /// Nodes.
    pub nodes: usize,
    /// How the agents ran.
    pub fleet: FleetKind,
    /// From starting the agents until all had synced their watches, written
    /// their first status and gone quiet (2 s without a request).
    pub startup_s: f64,
    /// The operations, in order.
    pub operations: Vec<Operation>,
    /// Memory.
    pub memory_mib: Memory,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Runs the benchmark on `cp`.
///
/// # Errors
/// If the cluster, the registry or a binary fails, or an operation times out.
pub async fn run(cp: &'static ControlPlane, opts: &BenchOptions) -> Result<BenchResult> {
    ensure_crds(cp).await?;
    let mut config = cp.config();
    kmm_runtime::identify(&mut config, "kmm-fleet-bench", env!("CARGO_PKG_VERSION"));
    let client = Client::try_from(config)?;
    let ns = cp.temp_namespace("kmm-fleet").await?;
    let run = ns.name().to_string();
    let result = measure(cp, &client, &run, opts).await;
    remove_nodes(&client, &run, opts.nodes).await;
    ns.cleanup().await?;
    result
}

/// Everything the operations share.
struct Bench<'a> {
    client: &'a Client,
    audit: AuditLog,
    fleet: Fleet,
    controller: ControllerProcess,
    progress: Progress,
    nodes: usize,
    settle: Duration,
    timeout: Duration,
    modules: Api<Module>,
}

/// An operation under way.
struct Started {
    name: &'static str,
    mark: Mark,
    at: Instant,
    wall: Timestamp,
    cpu: Cpu,
}

impl Bench<'_> {
    fn cpu(&self) -> Cpu {
        let pid_of = |name: &str| -> Option<u32> {
            std::fs::read_to_string(run_dir().join(format!("{name}.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        Cpu {
            apiserver: pid_of("kube-apiserver").and_then(cpu_seconds),
            etcd: pid_of("etcd").and_then(cpu_seconds),
            agents: total_cpu_seconds(&self.fleet.pids()),
            controller: cpu_seconds(self.controller.pid()),
        }
    }

    fn begin(&self, name: &'static str) -> Result<Started> {
        Ok(Started {
            name,
            mark: self.audit.mark()?,
            at: Instant::now(),
            wall: Timestamp::now(),
            cpu: self.cpu(),
        })
    }

    /// Waits for `wanted` on every node, then the settle time, and counts.
    async fn finish(
        &mut self,
        op: Started,
        wanted: Option<&dyn Fn(&Labels) -> bool>,
    ) -> Result<Operation> {
        let (seconds, timeline) = match wanted {
            Some(w) => {
                let timeline = self
                    .progress
                    .wait_for(self.nodes, w, op.at, self.timeout)
                    .await
                    .with_context(|| {
                        format!(
                            "{}: not every node got there; agents' log ends:\n{}",
                            op.name,
                            self.fleet.log_tail(40)
                        )
                    })?;
                (Some(op.at.elapsed().as_secs_f64()), timeline)
            }
            None => (None, Vec::new()),
        };
        tokio::time::sleep(self.settle).await;
        let end = self.cpu();
        let requests = self.audit.since(op.mark, |_| true)?;
        let last_agent_write_s = requests
            .iter()
            .filter(|r| is_write(r) && client_of(r) == "kmm-agent")
            .filter_map(|r| r.stage_timestamp.parse::<Timestamp>().ok())
            .max()
            .map(|t| t.duration_since(op.wall).as_secs_f64());
        let tally = Tally::of(&requests);
        let per = self.nodes.max(1) as f64;
        let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let op_result = Operation {
            name: op.name.to_string(),
            seconds,
            last_agent_write_s,
            per_node: PerNode {
                agent_writes: tally.writes("kmm-agent") as f64 / per,
                agent_reads: tally.reads("kmm-agent") as f64 / per,
                controller_writes: tally.writes("kmm-controller") as f64 / per,
                controller_reads: tally.reads("kmm-controller") as f64 / per,
            },
            cpu_s: Cpu {
                apiserver: diff(op.cpu.apiserver, end.apiserver),
                etcd: diff(op.cpu.etcd, end.etcd),
                agents: end.agents - op.cpu.agents,
                controller: diff(op.cpu.controller, end.controller),
            },
            timeline,
            requests: tally,
        };
        print_summary(&op_result, self.nodes);
        Ok(op_result)
    }
}

fn print_summary(op: &Operation, nodes: usize) {
    println!(
        "{nodes} nodes, {}: {} s; per node: agent {:.2} writes {:.2} reads, controller {:.2} writes",
        op.name,
        op.seconds.map_or("-".into(), |s| format!("{s:.2}")),
        op.per_node.agent_writes,
        op.per_node.agent_reads,
        op.per_node.controller_writes,
    );
}

/// The Module's `spec.moduleLoader.container` for `version` in `image`.
fn container(version: &str, image: &str) -> serde_json::Value {
    json!({
        "version": version,
        "modprobe": {"moduleName": MODULE},
        "kernelMappings": [{
            "regexp": "^.+-fleet-amd64$",
            "containerImage": image,
            "registryTLS": {"insecure": true},
        }],
    })
}

fn module_manifest(run: &str, version: &str, image: &str) -> Result<Module> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": MODULE, "namespace": run},
        "spec": {
            "selector": {"kmm-fleet": run},
            "moduleLoader": {"container": container(version, image)},
        },
    }))?)
}

/// Waits until kmm-agent has sent no request for 2 s.
async fn quiet(audit: &AuditLog, timeout: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        let mark = audit.mark()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if audit
            .since(mark, |r| client_of(r) == "kmm-agent")?
            .is_empty()
        {
            return Ok(());
        }
        anyhow::ensure!(t.elapsed() < timeout, "agents still busy after {timeout:?}");
    }
}

/// Runs `f` over `items` with `width` at a time.
async fn each<T, F, Fut>(items: Vec<T>, width: usize, f: F) -> Result<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    futures::stream::iter(items.into_iter().map(f))
        .buffer_unordered(width)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

fn node_names(run: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{run}-{i}")).collect()
}

async fn measure(
    cp: &'static ControlPlane,
    client: &Client,
    run: &str,
    opts: &BenchOptions,
) -> Result<BenchResult> {
    let n = opts.nodes;
    let image = |v: &str| format!("{}/{run}/{MODULE}:{KVER}-{v}", registry_addr());
    push_fake_kmod(&image("v1"), KVER, &[(MODULE, &[])], &[]).await?;
    // v2 differs in content, so it is a different digest, as a new driver is.
    push_fake_kmod(&image("v2"), KVER, &[(MODULE, &[])], &[("fleet.fw", b"v2")]).await?;
    let version_label = kmm_common::version_module_label(run, MODULE);
    let started = Instant::now();
    each(node_names(run, n), 16, |node| {
        let version_label = version_label.clone();
        async move {
            create_node(
                client,
                &node,
                &[("kmm-fleet", run), (&version_label, "v1")],
                KVER,
            )
            .await
            .map(drop)
        }
    })
    .await?;
    println!("{n} nodes created in {:.1?}", started.elapsed());

    let work = opts.work_dir.join(run);
    super::agents::binary(opts.fleet)?;
    crate::controller::controller_binary()?;
    let controller =
        ControllerProcess::start(&ControllerOptions::for_namespace(cp, run, &work, vec![]))?;
    let started = Instant::now();
    let mut fleet = Fleet::start(opts.fleet, cp, &format!("{run}-"), n, KVER, &work)?;
    fleet.wait_ready(opts.timeout).await?;
    controller.wait_leader(opts.timeout).await?;
    // Ready means watches synced; each agent then writes its first (empty)
    // status. The operations start once the agents are quiet, so none of
    // those first writes is counted against the load.
    let audit = AuditLog::open()?;
    quiet(&audit, opts.timeout).await?;
    let startup_s = started.elapsed().as_secs_f64();
    println!("{n} agents ready and quiet in {startup_s:.1} s");
    let agents_idle = fleet.rss_kib();

    let mut bench = Bench {
        client,
        audit,
        fleet,
        controller,
        progress: Progress::watch(client.clone(), &format!("kmm-fleet={run}")),
        nodes: n,
        settle: opts.settle,
        timeout: opts.timeout,
        modules: Api::namespaced(client.clone(), run),
    };
    let ready = kmm_common::ready_label(run, MODULE);
    let version_ready = kmm_common::version_ready_label(run, MODULE);
    let has = |v: &'static str| {
        let (ready, version_ready) = (ready.clone(), version_ready.clone());
        move |l: &Labels| {
            l.contains_key(&ready) && l.get(&version_ready).map(String::as_str) == Some(v)
        }
    };
    let mut operations = Vec::new();

    let op = bench.begin("load")?;
    bench
        .modules
        .create(
            &PostParams::default(),
            &module_manifest(run, "v1", &image("v1"))?,
        )
        .await?;
    let loaded_v1 = has("v1");
    operations.push(bench.finish(op, Some(&loaded_v1)).await?);
    let agents_after_load = bench.fleet.rss_kib();
    let controller_after_load = rss_kib(bench.controller.pid());

    // What a controller's status write looks like to the nodes: nothing changes for them.
    let op = bench.begin("status-only change")?;
    for i in 0..3 {
        let status = json!({"status": {"moduleLoader": {
            "nodesMatchingSelectorNumber": n, "desiredNumber": n, "availableNumber": n - i % 2,
        }}});
        bench
            .modules
            .patch_status(MODULE, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    operations.push(bench.finish(op, None).await?);

    // Upstream's ordered upgrade: the Module gets v2, then the admin moves
    // every node's version label to v2.
    let op = bench.begin("ordered upgrade")?;
    let patch = json!({"spec": {"moduleLoader": {"container": container("v2", &image("v2"))}}});
    bench
        .modules
        .patch(MODULE, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(bench.client.clone());
    each(node_names(run, n), 32, |node| {
        let (nodes, version_label) = (&nodes, &version_label);
        async move {
            let patch = json!({"metadata": {"labels": {version_label.as_str(): "v2"}}});
            nodes
                .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            Ok(())
        }
    })
    .await?;
    let loaded_v2 = has("v2");
    operations.push(bench.finish(op, Some(&loaded_v2)).await?);

    let op = bench.begin("unload")?;
    bench
        .modules
        .delete(MODULE, &DeleteParams::default())
        .await?;
    let unloaded = {
        let ready = ready.clone();
        move |l: &Labels| !l.contains_key(&ready)
    };
    operations.push(bench.finish(op, Some(&unloaded)).await?);

    let per = n.max(1) as f64;
    Ok(BenchResult {
        benchmark: "kmm-rs fleet: simulated-kernel agents against one API server".into(),
        date: Timestamp::now().to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |p| p.get()),
        nodes: n,
        fleet: opts.fleet,
        startup_s,
        operations,
        memory_mib: Memory {
            agents_idle_total: mib(agents_idle),
            agents_after_load_total: mib(agents_after_load),
            agent_idle: mib(agents_idle) / per,
            agent_after_load: mib(agents_after_load) / per,
            controller_after_load: controller_after_load.map(mib),
        },
    })
}

async fn remove_nodes(client: &Client, run: &str, n: usize) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let nmcs: Api<NodeModulesConfig> = Api::all(client.clone());
    let _ = each(node_names(run, n), 32, |node| {
        let (nodes, nmcs) = (&nodes, &nmcs);
        async move {
            let _ = nodes.delete(&node, &DeleteParams::default()).await;
            let _ = nmcs.delete(&node, &DeleteParams::default()).await;
            Ok(())
        }
    })
    .await;
}

/// Whether `path` names a result of this benchmark (`fleet-<N>.json`).
pub fn is_result_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("fleet-") && n.ends_with(".json"))
}
