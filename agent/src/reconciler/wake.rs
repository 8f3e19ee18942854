//! Which watch events are worth a pass. The controller rewrites a Module's
//! status whenever a node's state changes, and kubelets rewrite their Node's
//! status (heartbeats, conditions, images); on a large fleet every agent would
//! otherwise run a full pass (kernel re-check, plan, publish) for each of
//! those writes. Only what the agent acts on wakes the loop: of a Module its
//! spec (its changes move `metadata.generation`), labels, annotations and
//! deletion; of its Node the labels and the kernel it reports. The
//! reflector's store is updated for every event either way.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_common::Module;
use kube::Resource;
use kube::runtime::watcher::Event;

/// What of a Module a pass depends on, besides its spec.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ModuleSeen {
    uid: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    deletion: Option<Time>,
}

impl ModuleSeen {
    fn of(m: &Module) -> Self {
        let meta = &m.metadata;
        Self {
            uid: meta.uid.clone(),
            generation: meta.generation,
            labels: meta.labels.clone(),
            annotations: meta.annotations.clone(),
            deletion: meta.deletion_timestamp.clone(),
        }
    }
}

/// What of its Node a pass depends on: the labels (selector, version label,
/// the agent's own labels), the taints (a load waits for one to go) and the
/// kernel the kubelet reports.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NodeSeen {
    uid: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    taints: Vec<(String, Option<String>, String)>,
    kernel: Option<String>,
}

impl NodeSeen {
    fn of(n: &Node) -> Self {
        Self {
            uid: n.metadata.uid.clone(),
            labels: n.metadata.labels.clone(),
            // Without timeAdded, which the node lifecycle controller rewrites.
            taints: kmm_common::node_taints(n)
                .iter()
                .map(|t| (t.key.clone(), t.value.clone(), t.effect.clone()))
                .collect(),
            kernel: n
                .status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kernel_version.clone()),
        }
    }
}

type Key = (Option<String>, Option<String>);

fn key<K: Resource>(o: &K) -> Key {
    (o.meta().namespace.clone(), o.meta().name.clone())
}

/// Remembers what each object looked like at its last event.
#[derive(Debug)]
pub(super) struct Wakes<K, S> {
    seen: HashMap<Key, S>,
    /// Built during a re-list, swapped in at its end.
    relist: HashMap<Key, S>,
    what: fn(&K) -> S,
}

/// The filter of Module events.
pub(super) type ModuleWakes = Wakes<Module, ModuleSeen>;
/// The filter of the Node's events.
pub(super) type NodeWakes = Wakes<Node, NodeSeen>;

impl Default for ModuleWakes {
    fn default() -> Self {
        Wakes::new(ModuleSeen::of)
    }
}

impl Default for NodeWakes {
    fn default() -> Self {
        Wakes::new(NodeSeen::of)
    }
}

impl<K: Resource, S: PartialEq> Wakes<K, S> {
    fn new(what: fn(&K) -> S) -> Self {
        Self {
            seen: HashMap::new(),
            relist: HashMap::new(),
            what,
        }
    }

    /// Records `event` and says whether it may change what the agent does.
    pub(super) fn wakes(&mut self, event: &Event<K>) -> bool {
        match event {
            Event::Apply(o) => {
                let now = (self.what)(o);
                let k = key(o);
                let changed = self.seen.get(&k) != Some(&now);
                self.seen.insert(k, now);
                changed
            }
            Event::Delete(o) => {
                self.seen.remove(&key(o));
                true
            }
            Event::Init => {
                self.relist.clear();
                false
            }
            Event::InitApply(o) => {
                self.relist.insert(key(o), (self.what)(o));
                false
            }
            // The store replaces its content now (objects deleted while the
            // watch was down vanish without a Delete): always a pass.
            Event::InitDone => {
                self.seen = std::mem::take(&mut self.relist);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

    use super::*;

    fn module(generation: i64, status_available: i32) -> Module {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "Module",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": generation},
            "spec": {"selector": {}, "moduleLoader": {"container": {
                "modprobe": {"moduleName": "m"},
                "kernelMappings": [{"regexp": ".*", "containerImage": "img"}]}}},
            "status": {"moduleLoader": {"nodesMatchingSelectorNumber": 1,
                "desiredNumber": 1, "availableNumber": status_available}},
        }))
        .unwrap()
    }

    fn synced(m: &Module) -> ModuleWakes {
        let mut w = ModuleWakes::default();
        assert!(!w.wakes(&Event::Init));
        assert!(!w.wakes(&Event::InitApply(m.clone())));
        assert!(w.wakes(&Event::InitDone));
        w
    }

    #[test]
    fn a_status_only_change_does_not_wake_the_loop() {
        let mut w = synced(&module(1, 0));
        assert!(!w.wakes(&Event::Apply(module(1, 1))));
        assert!(!w.wakes(&Event::Apply(module(1, 0))));
    }

    #[test]
    fn spec_metadata_deletion_and_new_modules_wake_the_loop() {
        let mut w = synced(&module(1, 0));
        assert!(w.wakes(&Event::Apply(module(2, 0))), "spec (generation)");
        let mut labelled = module(2, 0);
        labelled.metadata.labels = Some(BTreeMap::from([("a".into(), "b".into())]));
        assert!(w.wakes(&Event::Apply(labelled.clone())), "labels");
        let mut annotated = labelled.clone();
        annotated.metadata.annotations = Some(BTreeMap::from([("a".into(), "b".into())]));
        assert!(w.wakes(&Event::Apply(annotated.clone())), "annotations");
        let mut deleting = annotated.clone();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(w.wakes(&Event::Apply(deleting.clone())), "deletion");
        assert!(w.wakes(&Event::Delete(deleting.clone())), "deleted");
        // Re-created with the same name: new to the filter.
        assert!(w.wakes(&Event::Apply(module(1, 0))), "re-created");
        let mut other = module(1, 0);
        other.metadata.name = Some("other".into());
        assert!(w.wakes(&Event::Apply(other)), "another Module");
    }

    fn node(heartbeat: &str, labels: serde_json::Value, kernel: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n", "uid": "u1", "labels": labels},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}],
                "nodeInfo": {"kernelVersion": kernel, "architecture": "", "bootID": "",
                    "containerRuntimeVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                    "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""},
            },
        }))
        .unwrap()
    }

    #[test]
    fn node_heartbeats_do_not_wake_the_loop_labels_and_kernel_do() {
        let labels = serde_json::json!({"role": "gpu"});
        let first = node("2026-12-06T10:00:00Z", labels.clone(), "6.1.0-57-amd64");
        let mut w = NodeWakes::default();
        assert!(!w.wakes(&Event::Init));
        assert!(!w.wakes(&Event::InitApply(first)));
        assert!(w.wakes(&Event::InitDone));
        let beat = node("2026-12-06T10:00:10Z", labels.clone(), "6.1.0-57-amd64");
        assert!(!w.wakes(&Event::Apply(beat)), "a heartbeat");
        let relabelled = node(
            "2026-12-06T10:00:20Z",
            serde_json::json!({}),
            "6.1.0-57-amd64",
        );
        assert!(w.wakes(&Event::Apply(relabelled)), "labels");
        let rebooted = node(
            "2026-12-06T10:00:30Z",
            serde_json::json!({}),
            "6.1.0-58-amd64",
        );
        assert!(w.wakes(&Event::Apply(rebooted.clone())), "kernel");
        let mut cordoned = rebooted;
        cordoned.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(vec![k8s_openapi::api::core::v1::Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(w.wakes(&Event::Apply(cordoned.clone())), "a taint");
        assert!(!w.wakes(&Event::Apply(cordoned)), "the same taint again");
    }

    #[test]
    fn a_relist_always_ends_in_a_pass_and_replaces_what_was_seen() {
        let mut w = synced(&module(1, 0));
        assert!(!w.wakes(&Event::Init));
        assert!(w.wakes(&Event::InitDone), "the store may have lost Modules");
        // The Module was not listed again: its next event is new.
        assert!(w.wakes(&Event::Apply(module(1, 0))));
    }
}
