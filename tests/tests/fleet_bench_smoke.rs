//! The fleet benchmark at a small N (what `make bench` runs at 50, 200 and
//! 1,000 nodes), so CI keeps it working, and the per-node API budgets it
//! measures cannot regress: from the audit log, per node, a load costs at most
//! 3 writes (label, status, upstream's event on the Node), an unload at most
//! 3, an ordered upgrade at most 5, none of them a read, and a Module status
//! change nothing at all.
//!
//! Needs the control plane (with its audit log) and the registry.

use std::time::Duration;

use anyhow::Result;
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::fleet::{BenchOptions, FleetKind, Operation, report};

const NODES: usize = 4;

fn op<'a>(ops: &'a [Operation], name: &str) -> Result<&'a Operation> {
    ops.iter()
        .find(|o| o.name == name)
        .ok_or_else(|| anyhow::anyhow!("no operation {name}"))
}

#[tokio::test]
async fn the_fleet_bench_runs_and_each_node_stays_within_its_api_budget() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let work = tempfile::tempdir()?;
    let opts = BenchOptions {
        nodes: NODES,
        fleet: FleetKind::InProcess,
        settle: Duration::from_secs(3),
        timeout: Duration::from_secs(180),
        work_dir: work.path().join("work"),
    };
    let result = kmm_tests::fleet::run(cp, &opts).await?;
    let out = work.path().join("results");
    let written = report::write(&out, &result)?;
    let png = std::fs::read(&written[1])?;
    anyhow::ensure!(png.starts_with(b"\x89PNG"), "not a PNG");
    let md = std::fs::read_to_string(&written[2])?;
    anyhow::ensure!(
        md.contains(&format!("| {NODES} | InProcess | ordered upgrade |")),
        "{md}"
    );

    let ops = &result.operations;
    let budgets = [("load", 3.0), ("ordered upgrade", 5.0), ("unload", 3.0)];
    for (name, writes) in budgets {
        let o = op(ops, name)?;
        println!("{name}: {:?}", o.requests.requests.get("kmm-agent"));
        anyhow::ensure!(o.seconds.is_some(), "{name}: no time");
        anyhow::ensure!(
            o.per_node.agent_writes <= writes,
            "{name}: {} agent writes per node (budget {writes}): {:?}",
            o.per_node.agent_writes,
            o.requests.requests.get("kmm-agent")
        );
        anyhow::ensure!(
            o.per_node.agent_reads == 0.0,
            "{name}: {} agent reads per node: {:?}",
            o.per_node.agent_reads,
            o.requests.requests.get("kmm-agent")
        );
        // Counted from the timeline too: every node got there.
        anyhow::ensure!(
            o.timeline.last().map(|p| p.1) == Some(NODES),
            "{name}: {:?}",
            o.timeline
        );
    }
    // Every node wrote its label and its status: the budget is met by doing
    // the work, not by skipping it.
    let load = op(ops, "load")?;
    let agent = load.requests.requests.get("kmm-agent");
    let count = |verb: &str, resource: &str| {
        agent
            .and_then(|v| v.get(verb))
            .and_then(|r| r.get(resource))
            .copied()
            .unwrap_or(0)
    };
    // One event per node: upstream's, on the Node.
    anyhow::ensure!(
        count("patch", "nodes") == NODES as u64
            && count("patch", "nodemodulesconfigs/status") == NODES as u64
            && count("create", "events") == NODES as u64,
        "load: {agent:?}"
    );
    let status_only = op(ops, "status-only change")?;
    anyhow::ensure!(
        !status_only.requests.requests.contains_key("kmm-agent"),
        "a Module status change made the agents call: {:?}",
        status_only.requests.requests.get("kmm-agent")
    );
    Ok(())
}
