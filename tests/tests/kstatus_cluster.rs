//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) and `status.observedGeneration`
//! written by the real `kmm-controller`, read by the real `kubectl wait`, with real
//! `kmm-agent` processes (simulated kernel, real registry) loading the Module on two nodes:
//!
//! - `kubectl wait --for=condition=Ready module/<m>` returns once both agents loaded it,
//!   with `Reconciling=False`, `Stalled=False` and `observedGeneration == generation`, and
//!   the controller exports `kmm_controller_module_condition{type="Ready"} 1` for it;
//! - a Module whose image is not in the registry is `Stalled=True` (`ImagePullFailed`, what
//!   the agents report) and `Ready=False`; `kubectl wait --for=condition=Stalled` sees it;
//! - editing the spec moves `observedGeneration` with `metadata.generation`.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kmm_common::Module;
use kmm_tests::agent::AgentProcess;
use kmm_tests::cluster::{crd_namespace, delete_node_and_status, group_nodes, wait_module};
use kmm_tests::controller::leader_and_agents;
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::module::ModuleBuilder;
use kube::api::{Api, Patch, PatchParams};

const KVER: &str = "6.1.0-93-sim-amd64";
const WAIT: Duration = Duration::from_secs(90);

fn condition<'a>(m: &'a Module, type_: &str) -> Option<(&'a str, &'a str)> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// `kubectl wait --for=condition=<cond> module/<name>`; fails with kubectl's stderr.
fn kubectl_wait(cp: &ControlPlane, ns: &str, name: &str, cond: &str) -> Result<String> {
    cp.kubectl_ok([
        "wait",
        "-n",
        ns,
        &format!("--for=condition={cond}"),
        "--timeout=90s",
        &format!("module/{name}"),
    ])
}

#[tokio::test]
async fn kubectl_wait_sees_ready_once_loaded_and_stalled_when_the_image_is_missing() -> Result<()> {
    let t = std::time::Instant::now();
    let (cp, client, ns) = crd_namespace("kstatus").await?;
    let ns_name = ns.name().to_string();
    let group = ("kmm-test/kstatus", ns_name.as_str());
    let nodes = group_nodes(&client, &ns_name, group, &["a", "b"], KVER).await?;
    let image = format!("{}/{ns_name}/kst:{KVER}", registry_addr());
    push_fake_kmod(&image, KVER, &[("kst", &[])], &[]).await?;

    let dir = tempfile::tempdir()?;
    let (controller, agents) =
        leader_and_agents(cp, &ns_name, &nodes, KVER, dir.path(), WAIT).await?;
    println!("controller and agents ready: {:.1?}", t.elapsed());

    let reg = registry_addr();
    let loads = ModuleBuilder::new("kst")
        .selector(group.0, group.1)
        .insecure_mapping(
            "-sim-amd64$",
            &format!("{reg}/{ns_name}/kst:${{KERNEL_FULL_VERSION}}"),
        )
        .manifest();
    // The same, but its image was never pushed.
    let missing = ModuleBuilder::new("kstmiss")
        .selector(group.0, group.1)
        .insecure_mapping(
            "-sim-amd64$",
            &format!("{reg}/{ns_name}/never:${{KERNEL_FULL_VERSION}}"),
        )
        .manifest();
    for yaml in [&loads, &missing] {
        let out = cp.kubectl_with_stdin(["apply", "-n", &ns_name, "-f", "-"], yaml)?;
        ensure!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let logs = || {
        format!(
            "controller log:\n{}\nagent logs:\n{}",
            controller.log(),
            agents
                .iter()
                .map(AgentProcess::log)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let out = kubectl_wait(cp, &ns_name, "kst", "Ready").with_context(logs)?;
    println!("{}: Ready after {:.1?}", out.trim(), t.elapsed());
    let modules: Api<Module> = Api::namespaced(client.clone(), &ns_name);
    let m = modules.get("kst").await?;
    let status = m.status.as_ref().context("no status")?;
    assert_eq!(status.module_loader.available_number, 2, "{status:?}");
    assert_eq!(condition(&m, "Ready"), Some(("True", "AllNodesLoaded")));
    assert_eq!(condition(&m, "Reconciling"), Some(("False", "Complete")));
    assert_eq!(condition(&m, "Stalled"), Some(("False", "NoErrors")));
    assert_eq!(status.observed_generation, m.metadata.generation);

    let out = kubectl_wait(cp, &ns_name, "kstmiss", "Stalled").with_context(logs)?;
    println!("{}: Stalled after {:.1?}", out.trim(), t.elapsed());
    let m = modules.get("kstmiss").await?;
    assert_eq!(condition(&m, "Stalled"), Some(("True", "ImagePullFailed")));
    assert_eq!(condition(&m, "Ready"), Some(("False", "ImagePullFailed")));
    assert_eq!(condition(&m, "Reconciling"), Some(("False", "Stalled")));
    // `kubectl wait --for=condition=Ready` on it gives up (kstatus: Failed, not InProgress).
    let out = cp.kubectl([
        "wait",
        "-n",
        &ns_name,
        "--for=condition=Ready",
        "--timeout=2s",
        "module/kstmiss",
    ]);
    assert!(!out.status.success(), "kstmiss became Ready");

    // The alertable gauge, as the leader exports it (recounted after each reconcile).
    let series = format!(
        r#"kmm_controller_module_condition{{name="kst",namespace="{ns_name}",reason="AllNodesLoaded",type="Ready"}} 1"#
    );
    let stalled = format!(
        r#"kmm_controller_module_condition{{name="kstmiss",namespace="{ns_name}",reason="ImagePullFailed",type="Stalled"}} 1"#
    );
    kmm_tests::cluster::wait_for(WAIT, || async {
        let text = controller.metrics()?;
        Ok(text.contains(&series) && text.contains(&stalled))
    })
    .await
    .with_context(|| format!("metrics:\n{}", controller.metrics().unwrap_or_default()))?;

    // A spec edit: observedGeneration follows the generation.
    let patch = serde_json::json!({"spec": {"moduleLoader": {"container": {"modprobe": {"parameters": ["x=1"]}}}}});
    let edited = modules
        .patch("kstmiss", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let generation = edited.metadata.generation;
    wait_module(&modules, "kstmiss", WAIT, |m| {
        m.and_then(|m| m.status.as_ref())
            .is_some_and(|s| s.observed_generation == generation)
    })
    .await
    .with_context(logs)?;

    drop(agents);
    for node in &nodes {
        delete_node_and_status(&client, node).await;
    }
    ns.cleanup().await
}
