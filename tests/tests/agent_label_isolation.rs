//! Defect 5 with the real `kmm-agent` binary and the real API server: a Module whose
//! `.ready` label key cannot exist (admitted without the webhook: CEL cannot see the
//! namespace) must not keep another Module's label on the same node from appearing and
//! disappearing. Before, every label change went in one merged patch that the API server
//! refused whole.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use kmm_tests::agent::{AgentOptions, AgentProcess};
use kmm_tests::cluster::{
    apply_yaml, create_node, delete_module, delete_node_and_status, ensure_crds, wait_for,
};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::module::ModuleBuilder;
use kube::api::Api;

const KVER: &str = "6.1.0-90-sim-amd64";
const WAIT: Duration = Duration::from_secs(60);

fn module_yaml(node: &str, name: &str, kmod: &str, image: &str) -> String {
    ModuleBuilder::new(name)
        .module_name(kmod)
        .own_node(node)
        .insecure_mapping("^.+-sim-amd64$", image)
        .manifest()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_whose_label_cannot_exist_does_not_block_other_labels() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let client = cp.client();
    let ns = cp.temp_namespace("lbl").await?;
    let node = format!("{}-node", ns.name());
    create_node(&client, &node, &[("kmm-test/node", &node)], KVER).await?;
    let dir = tempfile::tempdir()?;
    let agent = AgentProcess::start(&AgentOptions::new(
        cp,
        &node,
        KVER,
        dir.path().join("state"),
    ))?;
    let result = async {
        agent.wait_ready(WAIT).await?;
        // <ns>.<long>.ready is longer than 63 characters; the name alone passes CEL (<= 55).
        let long = "l".repeat(63 - 7 - ns.name().len() + 5);
        assert!(long.len() <= 55);
        for (name, kmod) in [(long.as_str(), "lblbad"), ("good", "lblgood")] {
            let image = format!("{}/{}/{kmod}:{KVER}", registry_addr(), ns.name());
            push_fake_kmod(&image, KVER, &[(kmod, &[])], &[]).await?;
            apply_yaml(cp, ns.name(), &module_yaml(&node, name, kmod, &image))?;
        }
        let nodes: Api<Node> = Api::all(client.clone());
        let labels = || async {
            Ok::<_, anyhow::Error>(nodes.get(&node).await?.metadata.labels.unwrap_or_default())
        };
        let good = kmm_common::ready_label(ns.name(), "good");
        wait_for(WAIT, || async { Ok(labels().await?.contains_key(&good)) })
            .await
            .context("the good Module's label never appeared")?;
        wait_for(WAIT, || async {
            Ok(agent.log().contains("node label refused"))
        })
        .await
        .context("the refused key is not logged")?;
        assert!(agent.log().contains(&format!("{}.{long}.ready", ns.name())));
        // Removing a label works too while the bad key is still wanted.
        delete_module(&client, ns.name(), "good").await?;
        wait_for(WAIT, || async { Ok(!labels().await?.contains_key(&good)) })
            .await
            .context("the good Module's label was never removed")?;
        anyhow::Ok(())
    }
    .await;
    let log = agent.log();
    drop(agent);
    delete_node_and_status(&client, &node).await;
    ns.cleanup().await?;
    result.with_context(|| format!("agent log:\n{log}"))
}
