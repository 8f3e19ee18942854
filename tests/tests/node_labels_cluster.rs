//! The agent's node label writer against the REAL kube-apiserver: a label key that cannot
//! exist (a Module whose `<ns>.<name>` is too long) is refused, and every other label change
//! still lands (before, the one merged patch was refused whole).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use kmm_agent::node_labels::{LabelChanges, LabelError, apply};
use kmm_tests::cluster::{create_node, delete_node};
use kmm_tests::controlplane::ControlPlane;
use kube::api::Api;

#[tokio::test(flavor = "multi_thread")]
async fn one_invalid_label_key_does_not_block_the_other_label_changes() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client();
    let ns = cp.temp_namespace("labels").await?;
    let node = format!("{}-node", ns.name());
    let stale = kmm_common::ready_label(ns.name(), "gone");
    let kept = kmm_common::ready_label(ns.name(), "kept");
    create_node(
        &client,
        &node,
        &[(&stale, ""), (&kept, "")],
        "6.1.0-9-amd64",
    )
    .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes.get(&node).await?.metadata.labels.unwrap_or_default();

    let good = kmm_common::ready_label(ns.name(), "good");
    let too_long = kmm_common::ready_label(ns.name(), &"m".repeat(63));
    let wanted: LabelChanges = BTreeMap::from([
        (good.clone(), Some(String::new())),
        (too_long.clone(), Some(String::new())),
        (stale.clone(), None),
    ]);
    let result = apply(&nodes, &node, &current, &wanted).await;
    let labels = nodes.get(&node).await?.metadata.labels.unwrap_or_default();
    delete_node(&client, &node).await;
    ns.cleanup().await?;

    let err = result.expect_err("the too-long key must be reported");
    let LabelError::Refused(refused) = &err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(
        refused.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        [&too_long],
        "{err}"
    );
    assert!(
        labels.contains_key(&good),
        "valid label not added: {labels:?}"
    );
    assert!(
        !labels.contains_key(&stale),
        "stale label not removed: {labels:?}"
    );
    assert!(labels.contains_key(&kept), "{labels:?}");
    assert!(!labels.contains_key(&too_long));
    Ok(())
}
