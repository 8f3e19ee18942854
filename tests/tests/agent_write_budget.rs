//! kmm-agent's API budget per node, counted from the API server's audit log
//! (by its User-Agent), so it cannot grow unnoticed: a load costs at most 3
//! writes (the label, the NodeModulesConfig status, one event: upstream's, on
//! the Node), an unload at most 3, and a node with nothing to do costs nothing (over a minute of
//! heartbeats) however often its kubelet updates the Node's status or the controller the Module's status
//! (not a write, not even a read of its NodeModulesConfig). In an ordered
//! upgrade, the Module moving to the new version costs nothing (the node keeps
//! the version its label names, as upstream), and the admin moving the node's
//! label replaces it: at most 5 writes (docs/upgrade.md).
//!
//! Needs the control plane (`hack/controlplane/start.sh` with its audit log)
//! and the registry.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kmm_tests::agent::{AgentOptions, AgentProcess, metric_value};
use kmm_tests::audit::{AuditLog, Mark, Request, agent_request_for, is_write};
use kmm_tests::cluster::{
    apply_yaml, crd_namespace, create_node, delete_module, delete_node_and_status, set_node_label,
    wait_for,
};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::module::ModuleBuilder;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const KVER: &str = "6.1.0-91-sim-amd64";
const WAIT: Duration = Duration::from_secs(60);

fn describe(requests: &[Request]) -> Vec<String> {
    requests.iter().map(Request::describe).collect()
}

/// A Node, its agent (simulated kernel) and a namespace, on the shared
/// control plane with its audit log.
struct Budget {
    audit: AuditLog,
    cp: &'static ControlPlane,
    client: Client,
    ns: TestNamespace,
    node: String,
    nodes: Api<Node>,
    agent: AgentProcess,
    _dir: tempfile::TempDir,
}

impl Budget {
    async fn start(prefix: &str) -> Result<Self> {
        let audit = AuditLog::open()?;
        let (cp, client, ns) = crd_namespace(prefix).await?;
        let node = format!("{}-node", ns.name());
        create_node(&client, &node, &[("kmm-test/node", &node)], KVER).await?;
        let nodes: Api<Node> = Api::all(client.clone());
        heartbeat(&nodes, &node).await?;
        let dir = tempfile::tempdir()?;
        let agent = AgentProcess::start(&AgentOptions::new(
            cp,
            &node,
            KVER,
            dir.path().join("state"),
        ))?;
        Ok(Self {
            audit,
            cp,
            client,
            ns,
            node,
            nodes,
            agent,
            _dir: dir,
        })
    }

    /// The agent's writes about its Node, its NodeModulesConfig and events in the namespace since `mark`.
    fn agent_writes(&self, mark: Mark) -> Result<Vec<Request>> {
        let ns = self.ns.name();
        self.audit.since(mark, |r| {
            is_write(r) && agent_request_for(r, &self.node, ns)
        })
    }

    /// Cleans up, and returns `result` with the agent's log when it failed.
    async fn finish(self, result: Result<()>) -> Result<()> {
        let log = self.agent.log();
        drop(self.agent);
        delete_node_and_status(&self.client, &self.node).await;
        self.ns.cleanup().await?;
        result.map_err(|e| e.context(format!("agent log:\n{log}")))
    }
}

/// What a kubelet does every few seconds: a new heartbeat in the Ready condition.
async fn heartbeat(nodes: &Api<Node>, node: &str) -> Result<()> {
    let now = Timestamp::now().to_string();
    let status = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now, "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_load_and_an_unload_cost_three_writes_and_status_updates_cost_nothing() -> Result<()> {
    let b = Budget::start("budget").await?;
    let (cp, client, node, nodes, agent, audit) =
        (b.cp, &b.client, &b.node, &b.nodes, &b.agent, &b.audit);
    let ns_name = b.ns.name().to_string();
    let result = async {
        agent.wait_ready(WAIT).await?;
        agent.wait_passes(2, WAIT).await?;
        let agent_writes = |mark| b.agent_writes(mark);
        let ready = kmm_common::ready_label(&ns_name, "bud");
        let has_label = |want: bool| {
            let (nodes, node, ready) = (&nodes, &node, &ready);
            async move {
                let n = nodes.get(node).await?;
                Ok(n.metadata.labels.unwrap_or_default().contains_key(ready) == want)
            }
        };

        let image = format!("{}/{ns_name}/bud:{KVER}", registry_addr());
        push_fake_kmod(&image, KVER, &[("bud", &[])], &[]).await?;
        let mark = audit.mark()?;
        let module = ModuleBuilder::new("bud")
            .own_node(node)
            .insecure_mapping("^.+-sim-amd64$", &image);
        apply_yaml(cp, &ns_name, &module.manifest())?;
        wait_for(WAIT, || has_label(true)).await?;
        agent.wait_passes(3, WAIT).await?;
        let load = agent_writes(mark)?;
        println!("load: {:#?}", describe(&load));
        anyhow::ensure!(
            load.len() <= 3,
            "a load wrote {}: {:#?}",
            load.len(),
            describe(&load)
        );
        // Its phases, watch event to label, were each observed once.
        let metrics = agent.metrics()?;
        let sums: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("kmm_agent_load_phase_seconds_sum"))
            .collect();
        println!("load phases: {sums:#?}");
        for phase in [
            "watch", "decide", "pull", "extract", "kernel", "status", "label", "total",
        ] {
            let series = format!("kmm_agent_load_phase_seconds_count{{phase=\"{phase}\"}}");
            anyhow::ensure!(
                metric_value(&metrics, &series) == Some(1.0),
                "{series} is not 1:\n{metrics}"
            );
        }

        // A minute of a kubelet's heartbeats (every 5 s) over resync passes
        // (every 2 s): the agent has nothing to write, nor to read.
        let mark = audit.mark()?;
        let minute = std::time::Instant::now();
        while minute.elapsed() < Duration::from_secs(60) {
            heartbeat(nodes, node).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        agent.wait_passes(1, WAIT).await?;
        let idle = audit.since(mark, |r| agent_request_for(r, node, &ns_name))?;
        anyhow::ensure!(
            idle.is_empty(),
            "a minute of heartbeats made the agent call: {:#?}",
            describe(&idle)
        );

        // The controller writes the Module's status: the agent reads and
        // writes nothing for it (no GET of its NodeModulesConfig either).
        let modules: Api<kmm_common::Module> = Api::namespaced(client.clone(), &ns_name);
        let mark = audit.mark()?;
        for n in 0..3 {
            let status = json!({"status": {"moduleLoader": {
                "nodesMatchingSelectorNumber": 1, "desiredNumber": 1, "availableNumber": n % 2,
            }}});
            modules
                .patch_status("bud", &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            agent.wait_passes(1, WAIT).await?;
        }
        let status_only = audit.since(mark, |r| agent_request_for(r, node, &ns_name))?;
        anyhow::ensure!(
            status_only.is_empty(),
            "Module status writes made the agent call: {:#?}",
            describe(&status_only)
        );

        let mark = audit.mark()?;
        delete_module(client, &ns_name, "bud").await?;
        wait_for(WAIT, || has_label(false)).await?;
        agent.wait_passes(3, WAIT).await?;
        let unload = agent_writes(mark)?;
        println!("unload: {:#?}", describe(&unload));
        anyhow::ensure!(
            unload.len() <= 3,
            "an unload wrote {}: {:#?}",
            unload.len(),
            describe(&unload)
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    b.finish(result).await
}

#[tokio::test]
async fn an_ordered_upgrade_costs_nothing_until_the_label_moves_then_five_writes() -> Result<()> {
    let b = Budget::start("budget-upg").await?;
    let (cp, client, node, nodes, agent, audit) =
        (b.cp, &b.client, &b.node, &b.nodes, &b.agent, &b.audit);
    let ns_name = b.ns.name().to_string();
    let result = async {
        agent.wait_ready(WAIT).await?;
        let agent_writes = |mark| b.agent_writes(mark);
        let version_ready = kmm_common::version_ready_label(&ns_name, "upg");
        let version_is = |want: Option<&'static str>| {
            let (nodes, node, label) = (&nodes, &node, &version_ready);
            async move {
                let n = nodes.get(node).await?;
                let labels = n.metadata.labels.unwrap_or_default();
                Ok(labels.get(label).map(String::as_str) == want)
            }
        };
        let image = |v: &str| format!("{}/{ns_name}/upg:{v}", registry_addr());
        push_fake_kmod(&image("v1"), KVER, &[("upg", &[])], &[]).await?;
        push_fake_kmod(&image("v2"), KVER, &[("upg", &[]), ("upgdep", &[])], &[]).await?;
        let module = |v: &str| {
            ModuleBuilder::new("upg")
                .own_node(node)
                .insecure_mapping("^.+-sim-amd64$", &image(v))
                .version(v)
                .manifest()
        };
        let version_label = kmm_common::version_module_label(&ns_name, "upg");
        set_node_label(client, node, &version_label, Some("v1")).await?;
        apply_yaml(cp, &ns_name, &module("v1"))?;
        wait_for(WAIT, || version_is(Some("v1"))).await?;
        agent.wait_passes(3, WAIT).await?;

        // The Module moves to v2; the node still says v1: v1 stays, nothing is written.
        let mark = audit.mark()?;
        apply_yaml(cp, &ns_name, &module("v2"))?;
        agent.wait_passes(3, WAIT).await?;
        anyhow::ensure!(version_is(Some("v1")).await?, "v1 did not stay loaded");
        let kept = agent_writes(mark)?;
        println!("upgrade, Module to v2: {:#?}", describe(&kept));

        // The admin moves the node to v2: v1 is replaced by v2.
        let mark = audit.mark()?;
        set_node_label(client, node, &version_label, Some("v2")).await?;
        wait_for(WAIT, || version_is(Some("v2"))).await?;
        agent.wait_passes(3, WAIT).await?;
        let replace = agent_writes(mark)?;
        println!("upgrade, label to v2: {:#?}", describe(&replace));
        anyhow::ensure!(
            kept.is_empty() && replace.len() <= 5,
            "an ordered upgrade wrote {} when the Module changed and {} when the label moved: {:#?} {:#?}",
            kept.len(),
            replace.len(),
            describe(&kept),
            describe(&replace)
        );
        delete_module(client, &ns_name, "upg").await?;
        wait_for(WAIT, || version_is(None)).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    b.finish(result).await
}
