use k8s_openapi::api::core::v1::Node;
use kmm_common::{Module, NodeModulesConfig};
use serde_json::{Value, json};

use super::*;

const KVER: &str = "6.1.0-56-amd64";
const IMAGE: &str = "reg:5000/kmm-demo/brd:6.1.0-56-amd64";
const READY: &str = "kmm.node.kubernetes.io/kmm-demo.brd.ready";

/// A Module `kmm-demo/brd`: mapping 0 for arm64 (literal), mapping 1 for amd64 (regexp,
/// image with variables); `container` is merged into `spec.moduleLoader.container`.
fn module(selector: Value, container: Value) -> Module {
    let mut c = json!({
        "modprobe": {"moduleName": "brd"},
        "kernelMappings": [
            {"literal": "6.1.0-56-arm64", "containerImage": "reg:5000/arm/brd"},
            {"regexp": "^.+-amd64$",
             "containerImage": "reg:5000/${MOD_NAMESPACE}/${MOD_NAME}:${KERNEL_FULL_VERSION}"}
        ]
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), container.as_object()) {
        c.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": "brd", "namespace": "kmm-demo"},
        "spec": {"selector": selector, "moduleLoader": {"container": c}}
    }))
    .unwrap()
}

fn plain_module() -> Module {
    module(json!({}), json!({}))
}

fn node(labels: Value, kernel: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": "w1", "labels": labels},
        "status": {"nodeInfo": {
            "kernelVersion": kernel, "architecture": "amd64", "operatingSystem": "linux",
            "bootID": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
            "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""
        }}
    }))
    .unwrap()
}

fn nmc(entries: Value) -> NodeModulesConfig {
    serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "NodeModulesConfig",
        "metadata": {"name": "w1"},
        "spec": {},
        "status": {"modules": entries}
    }))
    .unwrap()
}

fn loaded_entry(image: &str, kernel: &str) -> Value {
    json!({
        "name": "brd", "namespace": "kmm-demo", "serviceAccountName": "",
        "config": {"kernelVersion": kernel, "containerImage": image,
                   "modprobe": {"moduleName": "brd"}},
        "image": image, "digest": "sha256:abc", "kernel": kernel,
        "loadTime": "2026-11-25T21:00:00Z"
    })
}

fn error_entry(reason: &str, message: &str) -> Value {
    json!({
        "name": "brd", "namespace": "kmm-demo", "serviceAccountName": "",
        "lastError": {"reason": reason, "message": message}
    })
}

fn ready() -> Value {
    json!({ READY: "" })
}

#[test]
fn selector_mismatch_is_not_targeted_with_the_label_named() {
    let m = module(json!({"role": "gpu"}), json!({}));
    let e = explain_node(&m, &node(json!({"role": "storage"}), KVER), None);
    assert_eq!(e.state, NodeState::NotTargeted);
    assert_eq!(e.reason, "SelectorMismatch");
    assert!(!e.applies);
    assert!(e.target.is_none());
    assert_eq!(
        e.message,
        "node selector label role is storage, Module wants gpu"
    );
}

#[test]
fn kernel_without_mapping_is_not_targeted() {
    let e = explain_node(&plain_module(), &node(json!({}), "6.1.0-56-s390x"), None);
    assert_eq!(e.state, NodeState::NotTargeted);
    assert_eq!(e.reason, "NoKernelMapping");
    assert_eq!(e.message, "kernel 6.1.0-56-s390x matches no kernelMapping");
}

#[test]
fn version_label_mismatch_is_not_targeted() {
    let m = module(json!({}), json!({"version": "2"}));
    let label = "kmm.node.kubernetes.io/version-module.kmm-demo.brd";
    let e = explain_node(&m, &node(json!({ label: "1" }), KVER), None);
    assert_eq!(e.state, NodeState::NotTargeted);
    assert_eq!(e.reason, "VersionMismatch");
    assert!(
        e.message.contains(label) && e.message.contains("wants 2"),
        "{}",
        e.message
    );
}

#[test]
fn invalid_regexp_is_not_targeted_and_names_the_mapping() {
    let mut m = plain_module();
    if let Some(l) = m.spec.module_loader.as_mut() {
        l.container.kernel_mappings[0].literal = String::new();
        l.container.kernel_mappings[0].regexp = "([".into();
    }
    let e = explain_node(&m, &node(json!({}), KVER), None);
    assert_eq!(e.state, NodeState::NotTargeted);
    assert_eq!(e.reason, "InvalidRegexp");
    assert!(e.message.contains("kernelMappings[0]"), "{}", e.message);
}

#[test]
fn node_without_kernel_version_is_not_targeted() {
    let e = explain_node(&plain_module(), &node(json!({}), ""), None);
    assert_eq!(e.reason, "NoKernelVersion");
    assert_eq!(e.kernel, None);
}

#[test]
fn applies_without_nmc_is_pending_and_asks_about_the_agent() {
    let e = explain_node(&plain_module(), &node(json!({}), KVER), None);
    assert_eq!(e.state, NodeState::Pending);
    assert_eq!(e.reason, "NoNodeModulesConfig");
    assert!(e.message.contains("kmm-agent"));
    let t = e.target.unwrap();
    assert_eq!((t.mapping_index, t.image.as_str()), (1, IMAGE));
}

#[test]
fn applies_without_status_entry_is_pending_not_reported() {
    let other = json!([{"name": "brd", "namespace": "elsewhere", "lastError":
        {"reason": "ModprobeFailed", "message": "not ours"}}]);
    let e = explain_node(&plain_module(), &node(json!({}), KVER), Some(&nmc(other)));
    assert_eq!(e.state, NodeState::Pending);
    assert_eq!(e.reason, "NotReported");
    assert!(
        e.last_error.is_none(),
        "another namespace's entry is not ours"
    );
}

#[test]
fn loaded_image_for_the_node_kernel_is_loaded() {
    let status = nmc(json!([loaded_entry(IMAGE, KVER)]));
    let e = explain_node(&plain_module(), &node(ready(), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Loaded);
    assert_eq!(e.reason, "Loaded");
    let l = e.loaded.unwrap();
    assert_eq!(l.image, IMAGE);
    assert_eq!(l.digest.as_deref(), Some("sha256:abc"));
    assert_eq!(l.kernel, KVER);
    assert_eq!(l.since.as_deref(), Some("2026-11-25T21:00:00Z"));
    assert!(e.ready_label.present);
    assert_eq!(e.ready_label.key, READY);
    assert!(e.notes.is_empty(), "{:?}", e.notes);
}

/// The controller counts an entry with a digest but no config as loaded (a
/// deletion waits for it); explain must say the same (one contract,
/// `kmm_common::nmc::is_loaded`).
#[test]
fn an_entry_with_only_a_digest_is_loaded_as_the_controller_counts_it() {
    let entry = json!({
        "name": "brd", "namespace": "kmm-demo", "serviceAccountName": "",
        "image": IMAGE, "digest": "sha256:abc", "kernel": KVER
    });
    let status = nmc(json!([entry]));
    let e = explain_node(&plain_module(), &node(ready(), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Loaded, "{}: {}", e.reason, e.message);
    let l = e.loaded.unwrap();
    assert_eq!((l.image.as_str(), l.kernel.as_str()), (IMAGE, KVER));
    assert_eq!(l.digest.as_deref(), Some("sha256:abc"));
    assert!(e.notes.is_empty(), "{:?}", e.notes);
}

#[test]
fn loaded_without_ready_label_gets_a_note() {
    let status = nmc(json!([loaded_entry(IMAGE, KVER)]));
    let e = explain_node(&plain_module(), &node(json!({}), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Loaded);
    assert!(!e.ready_label.present);
    assert_eq!(e.notes.len(), 1);
    assert!(e.notes[0].contains("no label"));
}

#[test]
fn image_pull_failure_is_failing_with_the_agents_reason_and_message() {
    let msg = "pulling reg:5000/kmm-demo/brd: manifest unknown";
    let status = nmc(json!([error_entry("ImagePullFailed", msg)]));
    let e = explain_node(&plain_module(), &node(json!({}), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Failing);
    assert_eq!(e.reason, "ImagePullFailed");
    assert_eq!(e.message, msg);
    assert!(e.loaded.is_none());
    assert!(e.applies);
}

#[test]
fn waiting_for_an_in_cluster_build_is_pending_not_failing() {
    let msg = "waiting for reg:5000/kmm-demo/brd:6.1 to be built or signed in the cluster";
    let status = nmc(json!([error_entry("WaitingForImage", msg)]));
    let e = explain_node(&plain_module(), &node(json!({}), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Pending);
    assert_eq!(e.reason, "WaitingForImage");
    assert_eq!(e.message, msg);
}

#[test]
fn modprobe_failure_is_failing() {
    let status = nmc(json!([error_entry(
        "ModprobeFailed",
        "brd: Invalid argument"
    )]));
    let e = explain_node(&plain_module(), &node(json!({}), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Failing);
    assert_eq!(e.reason, "ModprobeFailed");
    assert_eq!(e.last_error.unwrap().message, "brd: Invalid argument");
}

#[test]
fn a_stuck_unload_says_what_the_operator_can_do() {
    let mut entry = loaded_entry("reg:5000/kmm-demo/brd:1", KVER);
    entry["lastError"] = json!({"reason": "UnloadFailed", "message": "unloading: could not remove brd: in use (refcount 1)"});
    let status = nmc(json!([entry]));
    let e = explain_node(&plain_module(), &node(ready(), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Failing);
    assert_eq!(e.reason, "UnloadFailed");
    assert!(
        e.notes
            .iter()
            .any(|n| n.starts_with("what to do:") && n.contains("holders")),
        "{:?}",
        e.notes
    );
}

#[test]
fn failure_while_an_older_image_is_loaded_is_failing_and_shows_both() {
    let mut entry = loaded_entry("reg:5000/old:1", KVER);
    entry["lastError"] = json!({"reason": "ImagePullFailed", "message": "not found"});
    let status = nmc(json!([entry]));
    let e = explain_node(&plain_module(), &node(ready(), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Failing);
    assert_eq!(e.loaded.unwrap().image, "reg:5000/old:1");
    assert_eq!(e.notes.len(), 1, "{:?}", e.notes);
}

#[test]
fn other_image_loaded_is_pending_upgrade() {
    let status = nmc(json!([loaded_entry("reg:5000/old:1", KVER)]));
    let e = explain_node(&plain_module(), &node(ready(), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Pending);
    assert_eq!(e.reason, "Upgrading");
    assert!(e.message.contains("reg:5000/old:1") && e.message.contains(IMAGE));
}

#[test]
fn loaded_for_another_kernel_is_pending_upgrade() {
    let status = nmc(json!([loaded_entry(IMAGE, "6.1.0-55-amd64")]));
    let e = explain_node(&plain_module(), &node(ready(), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Pending);
    assert_eq!(e.reason, "Upgrading");
}

#[test]
fn loaded_but_no_longer_targeted_is_pending_unload() {
    let m = module(json!({"role": "gpu"}), json!({}));
    let status = nmc(json!([loaded_entry(IMAGE, KVER)]));
    let e = explain_node(&m, &node(ready(), KVER), Some(&status));
    assert_eq!(e.state, NodeState::Pending);
    assert_eq!(e.reason, "Unloading");
    assert!(!e.applies);
    assert_eq!(e.not_targeted.unwrap().reason, "SelectorMismatch");
}

#[test]
fn the_version_a_node_is_labelled_for_stays_loaded_after_the_module_moves_on() {
    let m = module(json!({}), json!({"version": "2"}));
    let label = "kmm.node.kubernetes.io/version-module.kmm-demo.brd";
    let status = nmc(json!([loaded_entry(IMAGE, KVER)]));
    let labels = json!({ label: "1", "kmm.node.kubernetes.io/kmm-demo.brd.ready": "" });
    let e = explain_node(&m, &node(labels, KVER), Some(&status));
    assert_eq!(e.state, NodeState::Loaded);
    assert_eq!(e.reason, "KeptUntilVersionLabelMoves");
    assert!(e.message.contains("wants 2"), "{}", e.message);
    // Without the label the node is no longer targeted: that unloads.
    let e = explain_node(&m, &node(ready(), KVER), Some(&status));
    assert_eq!(e.reason, "Unloading");
}

#[test]
fn a_taint_blocks_a_load_by_name_and_keeps_what_is_loaded() {
    let mut n = node(json!({}), KVER);
    n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        taints: Some(vec![k8s_openapi::api::core::v1::Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let e = explain_node(&plain_module(), &n, Some(&nmc(json!([]))));
    assert_eq!(e.state, NodeState::NotTargeted);
    assert_eq!(e.reason, "UntoleratedTaint");
    assert!(
        e.message.contains("dedicated=db:NoSchedule"),
        "{}",
        e.message
    );
    let status = nmc(json!([loaded_entry(IMAGE, KVER)]));
    let e = explain_node(&plain_module(), &n, Some(&status));
    assert_eq!(e.state, NodeState::Loaded);
    assert_eq!(e.reason, "KeptWhileTainted");
    assert!(
        e.message.contains("dedicated=db:NoSchedule"),
        "{}",
        e.message
    );
}

#[test]
fn ready_label_without_status_gets_a_note() {
    let e = explain_node(&plain_module(), &node(ready(), KVER), Some(&nmc(json!([]))));
    assert_eq!(e.state, NodeState::Pending);
    assert!(e.notes.iter().any(|n| n.contains("reports nothing loaded")));
}

#[test]
fn summary_counts_each_state() {
    let m = plain_module();
    let loaded = nmc(json!([loaded_entry(IMAGE, KVER)]));
    let failing = nmc(json!([error_entry("ModprobeFailed", "x")]));
    let nodes = vec![
        explain_node(&m, &node(ready(), KVER), Some(&loaded)),
        explain_node(&m, &node(json!({}), KVER), Some(&failing)),
        explain_node(&m, &node(json!({}), KVER), None),
        explain_node(&m, &node(json!({}), "5.10-s390x"), None),
        explain_node(&m, &node(json!({}), "5.10-ppc64"), None),
    ];
    let s = summarize(&nodes);
    assert_eq!(
        (s.nodes, s.loaded, s.failing, s.pending, s.not_targeted),
        (5, 1, 1, 1, 2)
    );
    assert_eq!(
        super::super::text::summary_line(&s),
        "5 nodes: 1 loaded, 1 pending, 1 failing, 2 not targeted"
    );
}

#[test]
fn json_field_names_are_the_documented_ones() {
    let status = nmc(json!([loaded_entry(IMAGE, KVER)]));
    let e = explain_node(&plain_module(), &node(ready(), KVER), Some(&status));
    let v = serde_json::to_value(&e).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = [
        "node",
        "kernel",
        "state",
        "reason",
        "message",
        "applies",
        "target",
        "loaded",
        "readyLabel",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(v["state"], "Loaded");
    assert_eq!(v["target"]["mappingIndex"], 1);
    assert_eq!(v["loaded"]["since"], "2026-11-25T21:00:00Z");
    assert_eq!(v["readyLabel"]["present"], true);
    let not = explain_node(&plain_module(), &node(json!({}), "x"), None);
    let v = serde_json::to_value(&not).unwrap();
    assert_eq!(v["state"], "NotTargeted");
    assert_eq!(v["notTargeted"]["reason"], "NoKernelMapping");
}

#[test]
fn explain_pairs_each_node_with_its_own_nmc_and_counts() {
    let mut other = node(json!({}), KVER);
    other.metadata.name = Some("w2".into());
    let snapshot = crate::explain::fetch::Snapshot {
        module: plain_module(),
        nodes: vec![node(ready(), KVER), other],
        // Only w1 has a NodeModulesConfig; w2 must not borrow it.
        nmcs: vec![nmc(json!([loaded_entry(IMAGE, KVER)]))],
    };
    let e = crate::explain::explain(&snapshot);
    assert_eq!(e.module.namespace, "kmm-demo");
    assert_eq!(e.module.name, "brd");
    assert_eq!(e.nodes[0].state, NodeState::Loaded);
    assert_eq!(e.nodes[1].reason, "NoNodeModulesConfig");
    assert_eq!((e.summary.loaded, e.summary.pending), (1, 1));
}
