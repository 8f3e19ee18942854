use serde_json::{Value, json};

use super::*;

const NS: &str = "drivers";
const STATE: &str = "kmm.node.kubernetes.io/drivers.mydrv.upgrade-state";
const SINCE: &str = "kmm.node.kubernetes.io/drivers.mydrv.upgrade-since";
const MESSAGE: &str = "kmm.node.kubernetes.io/drivers.mydrv.upgrade-message";
const CORDONED: &str = "kmm.node.kubernetes.io/drivers.mydrv.upgrade-cordoned";
const VERSION: &str = "kmm.node.kubernetes.io/drivers.mydrv.version.ready";

fn module() -> Module {
    serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": "mydrv", "namespace": NS},
        "spec": {
            "selector": {"role": "gpu"},
            "moduleLoader": {"container": {
                "version": "2.0",
                "modprobe": {"moduleName": "mydrv"},
                "kernelMappings": [{"regexp": "-amd64$", "containerImage": "reg/mydrv:2.0"}]
            }}
        }
    }))
    .unwrap()
}

fn rollout(status: Value) -> ModuleRollout {
    serde_json::from_value(json!({
        "apiVersion": "rollout.kmm-rs.io/v1alpha1", "kind": "ModuleRollout",
        "metadata": {"name": "to-2.0", "namespace": NS},
        "spec": {"moduleName": "mydrv", "maxUnavailable": "10%", "maxParallel": 2},
        "status": status,
    }))
    .unwrap()
}

pub(crate) fn node(name: &str, labels: Value, annotations: Value, cordoned: bool) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"unschedulable": cordoned},
        "status": {"nodeInfo": {
            "kernelVersion": "6.1.0-56-amd64", "architecture": "amd64", "operatingSystem": "linux",
            "bootID": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
            "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""
        }}
    }))
    .unwrap()
}

/// Four nodes of the Module in four situations, and one node that is not the Module's.
pub(crate) fn snapshot() -> Snapshot {
    let status = json!({
        "targetVersion": "2.0",
        "nodes": {"total": 4, "required": 1, "inProgress": 1, "done": 1, "failed": 1,
                  "skipped": 0, "unavailable": 0},
        "wave": ["n-evicting"],
        "blocked": [{"node": "n-evicting", "state": "evicting", "message": "from status"}],
        "conditions": [{"type": "Progressing", "status": "True", "reason": "Upgrading",
                        "message": "1 node in progress", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    });
    Snapshot {
        rollout: rollout(status),
        module: module(),
        nodes: vec![
            node(
                "n-done",
                json!({"role": "gpu", STATE: "done", VERSION: "2.0"}),
                json!({SINCE: "2026-01-01T10:00:00Z"}),
                false,
            ),
            node(
                "n-evicting",
                json!({"role": "gpu", STATE: "evicting", VERSION: "1.0"}),
                json!({SINCE: "2026-01-01T11:59:00Z", CORDONED: "true",
                        MESSAGE: "PodDisruptionBudget app/db allows no eviction"}),
                true,
            ),
            node(
                "n-failed",
                json!({"role": "gpu", STATE: "failed", VERSION: "2.0"}),
                json!({SINCE: "2026-01-01T11:00:00Z", MESSAGE: "validation Job failed"}),
                true,
            ),
            node(
                "n-new",
                json!({"role": "gpu", VERSION: "1.0"}),
                json!({}),
                false,
            ),
            node("n-other", json!({"role": "db"}), json!({}), false),
        ],
    }
}

#[test]
fn rows_come_from_the_node_labels_and_unlabelled_nodes_in_scope_are_required() {
    let r = build(&snapshot());
    let names: Vec<_> = r.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(
        names,
        ["n-done", "n-evicting", "n-failed", "n-new"],
        "n-other is not the Module's"
    );

    let evicting = &r.nodes[1];
    assert_eq!(evicting.state, "evicting");
    assert_eq!(evicting.cordoned, Some(CordonedBy::Rollout));
    assert_eq!(evicting.version.as_deref(), Some("1.0"));
    assert_eq!(evicting.since.as_deref(), Some("2026-01-01T11:59:00Z"));
    // The annotation is the node's own word; status.blocked is only a fallback.
    assert_eq!(
        evicting.message.as_deref(),
        Some("PodDisruptionBudget app/db allows no eviction")
    );

    let failed = &r.nodes[2];
    assert_eq!(
        failed.cordoned,
        Some(CordonedBy::Other),
        "cordoned, but not by the rollout"
    );
    assert_eq!(failed.message.as_deref(), Some("validation Job failed"));

    let new = &r.nodes[3];
    assert_eq!(
        (new.state.as_str(), new.labelled, new.in_scope),
        ("required", false, true)
    );
    assert_eq!(new.message.as_deref(), Some(NOT_STARTED));
    assert_eq!(new.since, None);
}

#[test]
fn the_summary_carries_the_spec_with_defaults_and_the_controllers_status() {
    let r = build(&snapshot());
    assert_eq!(
        (r.namespace.as_str(), r.rollout.as_str(), r.module.as_str()),
        (NS, "to-2.0", "mydrv")
    );
    assert_eq!(r.target_version.as_deref(), Some("2.0"));
    assert_eq!(r.strategy, "Unload");
    assert_eq!(
        r.limits,
        Limits {
            max_unavailable: "10%".into(),
            max_parallel: 2,
            max_failed: 1
        }
    );
    assert_eq!(r.wave, ["n-evicting"]);
    assert_eq!(r.counts.as_ref().map(|c| c.failed), Some(1));
    let tally: Vec<_> = r.tally.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(
        tally,
        [("done", 1), ("evicting", 1), ("failed", 1), ("required", 1)]
    );
    assert!(r.needs_attention(), "a node failed");
}

#[test]
fn without_a_status_the_target_is_the_modules_version_and_blocked_fills_missing_messages() {
    let mut s = snapshot();
    s.rollout.status = None;
    let r = build(&s);
    assert_eq!(r.target_version.as_deref(), Some("2.0"));
    assert_eq!(r.counts, None);
    assert!(r.conditions.is_empty() && r.wave.is_empty());

    let mut s = snapshot();
    s.nodes[1].metadata.annotations = None;
    let r = build(&s);
    assert_eq!(r.nodes[1].message.as_deref(), Some("from status"));
    assert_eq!(
        r.nodes[1].cordoned,
        Some(CordonedBy::Other),
        "no annotation: not ours"
    );
}

#[test]
fn a_labelled_node_that_left_the_scope_is_still_shown_and_the_node_selector_narrows_it() {
    let mut s = snapshot();
    s.nodes.push(node(
        "n-moved",
        json!({"role": "db", STATE: "done"}),
        json!({}),
        false,
    ));
    s.rollout.spec.node_selector =
        serde_json::from_value(json!({"matchLabels": {"canary": "yes"}})).unwrap();
    let r = build(&s);
    let rows: Vec<_> = r
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.in_scope))
        .collect();
    assert_eq!(
        rows,
        [
            ("n-done", false),
            ("n-evicting", false),
            ("n-failed", false),
            ("n-moved", false)
        ],
        "labelled nodes stay visible; n-new is neither labelled nor in scope"
    );
}

#[test]
fn only_failed_nodes_or_a_stopped_rollout_need_attention() {
    let mut s = snapshot();
    s.nodes.remove(2);
    assert!(!build(&s).needs_attention());
    s.rollout.status.as_mut().unwrap().conditions[0].type_ = "Stopped".into();
    assert!(build(&s).needs_attention());
}

#[test]
fn json_field_names_are_the_documented_ones() {
    let doc = serde_json::to_value(build(&snapshot())).unwrap();
    assert_eq!(doc["schemaVersion"], 1);
    assert_eq!(doc["targetVersion"], "2.0");
    assert_eq!(doc["limits"]["maxUnavailable"], "10%");
    assert_eq!(doc["counts"]["inProgress"], 1);
    assert_eq!(doc["conditions"][0]["type"], "Progressing");
    assert_eq!(doc["nodes"][1]["cordoned"], "rollout");
    assert_eq!(doc["nodes"][3]["labelled"], false);
    assert_eq!(
        doc["nodes"][3].get("since"),
        None,
        "absent fields are omitted"
    );
}
