use serde_json::json;

use super::*;
use crate::test_support::module;

const SPEC: &str = r#"
selector: {role: worker}
moduleLoader:
  container:
    version: "2"
    modprobe: {moduleName: brd}
    kernelMappings: [{regexp: '-amd64$', containerImage: 'reg/brd:${KERNEL_FULL_VERSION}'}]
"#;

fn node(labels: serde_json::Value, kernel: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": "n", "labels": labels},
        "status": {"nodeInfo": {
            "kernelVersion": kernel, "architecture": "amd64", "operatingSystem": "linux",
            "bootID": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
            "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""
        }}
    }))
    .unwrap()
}

fn selector(value: serde_json::Value) -> LabelSelector {
    serde_json::from_value(value).unwrap()
}

#[test]
fn the_scope_is_the_modules_nodes_whatever_their_version_label() {
    let m = module("ns", "brd", SPEC);
    let on_v1 = json!({"role": "worker", "kmm.node.kubernetes.io/version-module.ns.brd": "1"});
    assert!(in_rollout_scope(&m, None, &node(on_v1, "6.1.0-56-amd64")));
    assert!(in_rollout_scope(
        &m,
        None,
        &node(json!({"role": "worker"}), "6.1.0-56-amd64")
    ));
    // Not the Module's: selector, kernel mapping, no kernel reported.
    assert!(!in_rollout_scope(
        &m,
        None,
        &node(json!({"role": "db"}), "6.1.0-56-amd64")
    ));
    assert!(!in_rollout_scope(
        &m,
        None,
        &node(json!({"role": "worker"}), "6.1.0-56-arm64")
    ));
    assert!(!in_rollout_scope(
        &m,
        None,
        &node(json!({"role": "worker"}), "")
    ));
}

#[test]
fn the_rollout_node_selector_narrows_the_scope_and_a_bad_one_matches_nothing() {
    let m = module("ns", "brd", SPEC);
    let canary = node(json!({"role": "worker", "canary": "yes"}), "6.1.0-56-amd64");
    let other = node(json!({"role": "worker"}), "6.1.0-56-amd64");
    let only_canary = selector(json!({"matchLabels": {"canary": "yes"}}));
    assert!(in_rollout_scope(&m, Some(&only_canary), &canary));
    assert!(!in_rollout_scope(&m, Some(&only_canary), &other));
    let not_canary =
        selector(json!({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}));
    assert!(in_rollout_scope(&m, Some(&not_canary), &other));
    assert!(!in_rollout_scope(&m, Some(&not_canary), &canary));
    let bad = selector(json!({"matchExpressions": [{"key": "canary", "operator": "Near"}]}));
    assert!(!in_rollout_scope(&m, Some(&bad), &canary));
}
