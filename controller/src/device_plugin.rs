//! The device-plugin DaemonSet and ServiceAccount of a Module, as pure builders.
//!
//! One DaemonSet per Module, named `<module>-device-plugin` in the Module's
//! namespace, targeting the nodes that match the selector and carry the
//! Module's `.ready` label (the agent sets it once the kernel module is loaded).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, LocalObjectReference, Pod, PodSpec, PodTemplateSpec,
    SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kmm_common::{DevicePluginContainerSpec, Module, ready_label};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::labels::{MANAGED_BY, MODULE_NAME_LABEL, ROLE_DEVICE_PLUGIN, ROLE_LABEL};

/// Hash of the DaemonSet's pod template, so a changed spec is visible on the object.
pub const SPEC_HASH_LABEL: &str = "kmm.node.kubernetes.io/device-plugin-hash";
/// Where kubelet looks for device-plugin sockets; mounted at the same path.
pub const KUBELET_DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";
const KUBELET_VOLUME: &str = "kubelet-device-plugins";

/// `<module>-device-plugin`.
pub fn daemonset_name(module_name: &str) -> String {
    format!("{module_name}-device-plugin")
}

/// The ServiceAccount the pods run as: the Module's, or `<module>-device-plugin`
/// (created by the controller) when the Module names none.
pub fn service_account_name(module: &Module) -> String {
    module
        .spec
        .device_plugin
        .as_ref()
        .map(|dp| dp.service_account_name.clone())
        .filter(|sa| !sa.is_empty())
        .unwrap_or_else(|| daemonset_name(&module.name_any()))
}

/// Whether the controller must create the ServiceAccount (the Module names none).
pub fn creates_service_account(module: &Module) -> bool {
    module
        .spec
        .device_plugin
        .as_ref()
        .is_some_and(|dp| dp.service_account_name.is_empty())
}

/// Labels selecting every device-plugin object of `module_name` made by us.
pub fn selector_labels(module_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MODULE_NAME_LABEL.to_string(), module_name.to_string()),
        (ROLE_LABEL.to_string(), ROLE_DEVICE_PLUGIN.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ])
}

/// `selector_labels` as a list-call label selector.
pub fn label_selector(module_name: &str) -> String {
    selector_labels(module_name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn owner(module: &Module) -> Result<OwnerReference> {
    module
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidModule("Module has no uid yet".into()))
}

fn namespace(module: &Module) -> Result<String> {
    module
        .namespace()
        .ok_or_else(|| Error::InvalidModule("Module has no namespace".into()))
}

/// The ServiceAccount `<module>-device-plugin`, owned by the Module.
///
/// # Errors
/// When the Module has no namespace or uid.
pub fn build_service_account(module: &Module) -> Result<ServiceAccount> {
    Ok(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(service_account_name(module)),
            namespace: Some(namespace(module)?),
            labels: Some(selector_labels(&module.name_any())),
            owner_references: Some(vec![owner(module)?]),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    })
}

fn container(name: &str, spec: &DevicePluginContainerSpec) -> Container {
    let mut mounts = spec.volume_mounts.clone();
    mounts.push(VolumeMount {
        name: KUBELET_VOLUME.into(),
        mount_path: KUBELET_DEVICE_PLUGINS.into(),
        ..VolumeMount::default()
    });
    Container {
        name: name.into(),
        image: Some(spec.image.clone()),
        command: (!spec.command.is_empty()).then(|| spec.command.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        image_pull_policy: (!spec.image_pull_policy.is_empty())
            .then(|| spec.image_pull_policy.clone()),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The device-plugin DaemonSet of `module`, or `None` without `spec.devicePlugin`.
///
/// # Errors
/// When the Module has no namespace or uid.
pub fn build_daemonset(module: &Module) -> Result<Option<DaemonSet>> {
    let Some(dp) = module.spec.device_plugin.as_ref() else {
        return Ok(None);
    };
    let name = module.name_any();
    let ns = namespace(module)?;
    let labels = selector_labels(&name);
    let mut node_selector = module.spec.selector.clone();
    node_selector.insert(ready_label(&ns, &name), String::new());

    let mut volumes = dp.volumes.clone();
    volumes.push(Volume {
        name: KUBELET_VOLUME.into(),
        host_path: Some(HostPathVolumeSource {
            path: KUBELET_DEVICE_PLUGINS.into(),
            type_: None,
        }),
        ..Volume::default()
    });
    let pod = PodSpec {
        containers: vec![container("device-plugin", &dp.container)],
        init_containers: dp
            .init_container
            .as_ref()
            .map(|c| vec![container("device-plugin-init", c)]),
        node_selector: Some(node_selector),
        volumes: Some(volumes),
        tolerations: (!module.spec.tolerations.is_empty()).then(|| module.spec.tolerations.clone()),
        image_pull_secrets: module
            .spec
            .image_repo_secret
            .as_ref()
            .filter(|s| !s.name.is_empty())
            .map(|s| {
                vec![LocalObjectReference {
                    name: s.name.clone(),
                }]
            }),
        service_account_name: Some(service_account_name(module)),
        automount_service_account_token: dp.automount_service_account_token,
        ..PodSpec::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    };
    let mut ds_labels = labels.clone();
    ds_labels.insert(SPEC_HASH_LABEL.into(), template_hash(&template));
    Ok(Some(DaemonSet {
        metadata: ObjectMeta {
            name: Some(daemonset_name(&name)),
            namespace: Some(ns),
            labels: Some(ds_labels),
            owner_references: Some(vec![owner(module)?]),
            ..ObjectMeta::default()
        },
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels),
                ..LabelSelector::default()
            },
            template,
            ..DaemonSetSpec::default()
        },
        status: None,
    }))
}

/// First 16 hex digits of the SHA-256 of the template's JSON (a valid label value).
fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    hex::encode(Sha256::digest(&json))[..16].to_string()
}

/// The node a DaemonSet pod is for: `spec.nodeName` once bound, else the node
/// the DaemonSet controller pinned it to through required node affinity
/// (`matchFields metadata.name`).
pub fn pod_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// Whether the pod reports the `Ready` condition `True` and is not being deleted.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(extra: &str) -> Module {
        let yaml = format!(
            r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {{name: brd, namespace: ns1, uid: 1234-abcd}}
spec:
  selector: {{role: gpu}}
  imageRepoSecret: {{name: pull}}
  tolerations: [{{key: dedicated, operator: Exists, effect: NoSchedule}}]
  moduleLoader:
    container:
      modprobe: {{moduleName: brd}}
      kernelMappings: [{{regexp: '.*', containerImage: 'r/brd:1'}}]
{extra}
"#
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    const DP: &str = r#"  devicePlugin:
    container:
      image: r/dp:1
      args: [--x]
      volumeMounts: [{name: cfg, mountPath: /cfg}]
    initContainer: {image: r/init:1}
    volumes: [{name: cfg, configMap: {name: dp-cfg}}]
"#;

    #[test]
    fn no_device_plugin_no_daemonset() {
        assert!(build_daemonset(&module("")).unwrap().is_none());
    }

    #[test]
    fn daemonset_targets_ready_nodes_of_the_selector() {
        let ds = build_daemonset(&module(DP)).unwrap().unwrap();
        assert_eq!(ds.metadata.name.as_deref(), Some("brd-device-plugin"));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("ns1"));
        let pod = ds.spec.template.spec.as_ref().unwrap();
        let sel = pod.node_selector.as_ref().unwrap();
        assert_eq!(sel.get("role").map(String::as_str), Some("gpu"));
        assert_eq!(
            sel.get("kmm.node.kubernetes.io/ns1.brd.ready")
                .map(String::as_str),
            Some("")
        );
        assert_eq!(sel.len(), 2);
    }

    #[test]
    fn pod_is_privileged_with_kubelet_socket_dir_and_module_volumes() {
        let ds = build_daemonset(&module(DP)).unwrap().unwrap();
        let pod = ds.spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("r/dp:1"));
        assert_eq!(c.args.as_deref(), Some(&["--x".to_string()][..]));
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        let mounts: Vec<_> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(
            mounts,
            [("cfg", "/cfg"), (KUBELET_VOLUME, KUBELET_DEVICE_PLUGINS)]
        );
        let vols = pod.volumes.unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!(
            vols[1].host_path.as_ref().unwrap().path,
            KUBELET_DEVICE_PLUGINS
        );
        assert_eq!(
            pod.init_containers.unwrap()[0].image.as_deref(),
            Some("r/init:1")
        );
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "pull");
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("brd-device-plugin")
        );
    }

    #[test]
    fn owner_is_the_module_as_controller() {
        let ds = build_daemonset(&module(DP)).unwrap().unwrap();
        let o = &ds.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("Module", "brd", "1234-abcd")
        );
        assert_eq!(o.controller, Some(true));
        let sa = build_service_account(&module(DP)).unwrap();
        assert_eq!(sa.metadata.name.as_deref(), Some("brd-device-plugin"));
        assert_eq!(
            sa.metadata.owner_references.unwrap()[0].controller,
            Some(true)
        );
    }

    #[test]
    fn named_service_account_is_used_not_created() {
        let m = module(&format!("{DP}    serviceAccountName: mine\n"));
        assert!(!creates_service_account(&m));
        assert_eq!(service_account_name(&m), "mine");
        assert!(creates_service_account(&module(DP)));
    }

    #[test]
    fn spec_change_changes_the_hash_label() {
        let a = build_daemonset(&module(DP)).unwrap().unwrap();
        let b = build_daemonset(&module(&DP.replace("r/dp:1", "r/dp:2")))
            .unwrap()
            .unwrap();
        let hash = |d: &DaemonSet| d.metadata.labels.as_ref().unwrap()[SPEC_HASH_LABEL].clone();
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 16);
    }

    #[test]
    fn pod_node_from_binding_or_daemonset_affinity() {
        let bound: Pod = serde_json::from_value(
            serde_json::json!({"spec": {"containers": [], "nodeName": "n1"}}),
        )
        .unwrap();
        assert_eq!(pod_node(&bound).as_deref(), Some("n1"));
        let pinned: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": [],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}}))
        .unwrap();
        assert_eq!(pod_node(&pinned).as_deref(), Some("n2"));
    }

    #[test]
    fn readiness_needs_ready_true() {
        let pod = |status: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"status": {"conditions": [
                {"type": "Ready", "status": status}]}}))
            .unwrap()
        };
        assert!(pod_ready(&pod("True")));
        assert!(!pod_ready(&pod("False")));
        assert!(!pod_ready(&Pod::default()));
    }
}
