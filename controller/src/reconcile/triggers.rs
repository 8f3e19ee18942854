//! What wakes the Module reconciler besides Module changes: Node changes that
//! matter (labels, kernel, add/remove), NodeModulesConfig statuses, and the
//! device-plugin pods, and build/sign Jobs.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kmm_common::{Module, NodeModulesConfig, node_kernel_version};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

use crate::labels::MODULE_NAME_LABEL;

/// Remembers, per Node, a hash of what Module decisions read (labels and
/// kernel), so heartbeat-only status updates do not re-reconcile every Module.
#[derive(Debug, Default)]
pub struct NodeFingerprints {
    seen: HashMap<String, u64>,
}

fn fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    node_kernel_version(node).hash(&mut h);
    h.finish()
}

impl NodeFingerprints {
    /// Whether this watch event can change any Module's status or labels.
    pub fn relevant(&mut self, event: &Event<Node>) -> bool {
        match event {
            Event::Apply(n) | Event::InitApply(n) => {
                let fp = fingerprint(n);
                self.seen.insert(n.name_any(), fp) != Some(fp)
            }
            Event::Delete(n) => {
                self.seen.remove(&n.name_any());
                true
            }
            // A relist may have dropped Nodes we never saw deleted.
            Event::InitDone => true,
            Event::Init => false,
        }
    }
}

/// The Modules an NMC reports on (its status entries).
pub fn modules_of_nmc(nmc: NodeModulesConfig) -> Vec<ObjectRef<Module>> {
    nmc.status
        .map(|s| s.modules)
        .unwrap_or_default()
        .into_iter()
        .map(|m| ObjectRef::new(&m.item.name).within(&m.item.namespace))
        .collect()
}

/// The Module a device-plugin pod belongs to (its label, in its namespace).
pub fn module_of_pod(pod: Pod) -> Option<ObjectRef<Module>> {
    let ns = pod.namespace()?;
    let name = pod.labels().get(MODULE_NAME_LABEL)?.clone();
    Some(ObjectRef::new(&name).within(&ns))
}

/// The Module a build or sign Job belongs to (its label, in its namespace).
pub fn module_of_job(job: Job) -> Option<ObjectRef<Module>> {
    let ns = job.namespace()?;
    let name = job.labels().get(MODULE_NAME_LABEL)?.clone();
    Some(ObjectRef::new(&name).within(&ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: serde_json::Value, kernel: &str, heartbeat: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": labels},
            "status": {
                "nodeInfo": {"kernelVersion": kernel, "architecture": "", "bootID": "",
                    "containerRuntimeVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                    "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""},
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn heartbeats_are_ignored_labels_kernel_and_deletion_are_not() {
        let mut fp = NodeFingerprints::default();
        let a = node(serde_json::json!({"x": "1"}), "6.1", "2026-01-01T00:00:00Z");
        assert!(fp.relevant(&Event::Apply(a.clone())));
        let beat = node(serde_json::json!({"x": "1"}), "6.1", "2026-01-01T00:01:00Z");
        assert!(!fp.relevant(&Event::Apply(beat)));
        let relabelled = node(serde_json::json!({"x": "2"}), "6.1", "2026-01-01T00:01:00Z");
        assert!(fp.relevant(&Event::Apply(relabelled.clone())));
        let upgraded = node(serde_json::json!({"x": "2"}), "6.2", "2026-01-01T00:01:00Z");
        assert!(fp.relevant(&Event::Apply(upgraded.clone())));
        assert!(fp.relevant(&Event::Delete(upgraded.clone())));
        assert!(fp.relevant(&Event::Apply(upgraded)));
    }

    #[test]
    fn nmc_maps_to_the_modules_in_its_status() {
        let nmc: NodeModulesConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "NodeModulesConfig",
            "metadata": {"name": "n1"}, "spec": {},
            "status": {"modules": [
                {"name": "a", "namespace": "ns1", "serviceAccountName": ""},
                {"name": "b", "namespace": "ns2", "serviceAccountName": ""}]}
        }))
        .unwrap();
        let refs = modules_of_nmc(nmc);
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[1], ObjectRef::new("b").within("ns2"));
    }

    #[test]
    fn pod_maps_to_its_module_by_label() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns1", "labels": {MODULE_NAME_LABEL: "brd"}}
        }))
        .unwrap();
        assert_eq!(
            module_of_pod(pod),
            Some(ObjectRef::new("brd").within("ns1"))
        );
    }
}
