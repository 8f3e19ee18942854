//! The node-plugin DaemonSets of a Module, as pure builders: the device plugin
//! (`spec.devicePlugin`) and the DRA kubelet plugin (`spec.dra`) are one algorithm
//! with a [`Kind`] choosing the names, labels and presets (upstream builds both
//! alike: `setDevicePluginAsDesired`, `setDRAAsDesired`).
//!
//! One DaemonSet per Module and kind, `<module>-device-plugin` or `<module>-dra`
//! in the Module's namespace, on the nodes that match the selector and carry
//! the Module's `.ready` label (the agent sets it once the kernel module is
//! loaded; a Module without a module loader runs on the selector alone). The
//! kind's presets come first, the Module's volumes, mounts and env after them.

pub mod device_class;
mod presets;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Container, LocalObjectReference, Pod, PodSpec, PodTemplateSpec, SecurityContext,
    ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kmm_common::{
    CommonContainerSpec, Module, device_plugin_ready_label, dra_ready_label, ready_label,
};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::labels::{MANAGED_BY, MODULE_NAME_LABEL, ROLE_DEVICE_PLUGIN, ROLE_DRA, ROLE_LABEL};
use presets::Presets;

pub use presets::{
    CDI_PATH, DRA_HEALTHCHECK_PORT, KUBELET_DEVICE_PLUGINS, KUBELET_PLUGINS,
    KUBELET_PLUGINS_REGISTRY,
};

/// Hash of the DaemonSet's pod template, so a changed spec is visible on the object.
pub const SPEC_HASH_LABEL: &str = "kmm.node.kubernetes.io/device-plugin-hash";

/// Which node plugin of a Module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `spec.devicePlugin`: a kubelet device plugin.
    DevicePlugin,
    /// `spec.dra`: a DRA kubelet plugin.
    Dra,
}

impl Kind {
    /// Both kinds.
    pub const ALL: [Kind; 2] = [Kind::DevicePlugin, Kind::Dra];

    /// Value of [`ROLE_LABEL`] on its objects, and the suffix of their names.
    pub fn role(self) -> &'static str {
        match self {
            Kind::DevicePlugin => ROLE_DEVICE_PLUGIN,
            Kind::Dra => ROLE_DRA,
        }
    }

    /// `<module>-device-plugin` or `<module>-dra`: the DaemonSet, and the
    /// ServiceAccount the controller creates when the Module names none.
    pub fn daemonset_name(self, module_name: &str) -> String {
        format!("{module_name}-{}", self.role())
    }

    /// The node label set where its pod is Ready (`.device-plugin-ready`, `.dra-ready`).
    pub fn ready_label(self, namespace: &str, module_name: &str) -> String {
        match self {
            Kind::DevicePlugin => device_plugin_ready_label(namespace, module_name),
            Kind::Dra => dra_ready_label(namespace, module_name),
        }
    }

    /// What status messages call it.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::DevicePlugin => "device plugin",
            Kind::Dra => "DRA driver",
        }
    }

    /// Whether the Module asks for this plugin.
    pub fn wanted(self, module: &Module) -> bool {
        self.pod(module).is_some()
    }

    /// The Module's pod-level settings for this plugin.
    fn pod(self, module: &Module) -> Option<PluginPod<'_>> {
        match self {
            Kind::DevicePlugin => module.spec.device_plugin.as_ref().map(|p| PluginPod {
                container: &p.container,
                init_container: p.init_container.as_ref(),
                service_account_name: &p.service_account_name,
                volumes: &p.volumes,
                automount_service_account_token: p.automount_service_account_token,
            }),
            Kind::Dra => module.spec.dra.as_ref().map(|p| PluginPod {
                container: &p.container,
                init_container: p.init_container.as_ref(),
                service_account_name: &p.service_account_name,
                volumes: &p.volumes,
                automount_service_account_token: p.automount_service_account_token,
            }),
        }
    }

    /// Labels selecting every object of this kind made by us for `module_name`.
    pub fn selector_labels(self, module_name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MODULE_NAME_LABEL.to_string(), module_name.to_string()),
            (ROLE_LABEL.to_string(), self.role().to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                MANAGED_BY.to_string(),
            ),
        ])
    }

    /// [`Kind::selector_labels`] as a list-call label selector.
    pub fn label_selector(self, module_name: &str) -> String {
        self.selector_labels(module_name)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ServiceAccount the pods run as: the Module's, or the DaemonSet's name
    /// (created by the controller) when the Module names none.
    pub fn service_account_name(self, module: &Module) -> String {
        self.pod(module)
            .map(|p| p.service_account_name.to_string())
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| self.daemonset_name(&module.name_any()))
    }

    /// Whether the controller must create the ServiceAccount (the Module names none).
    pub fn creates_service_account(self, module: &Module) -> bool {
        self.pod(module)
            .is_some_and(|p| p.service_account_name.is_empty())
    }
}

/// Label selector of every plugin object of any Module made by us (watches).
pub fn all_plugins_selector() -> String {
    format!(
        "{ROLE_LABEL} in ({},{}),app.kubernetes.io/managed-by={MANAGED_BY}",
        Kind::DevicePlugin.role(),
        Kind::Dra.role()
    )
}

/// What the two plugin specs have in common.
struct PluginPod<'a> {
    container: &'a CommonContainerSpec,
    init_container: Option<&'a CommonContainerSpec>,
    service_account_name: &'a str,
    volumes: &'a [Volume],
    automount_service_account_token: Option<bool>,
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

/// The ServiceAccount of `kind` the controller creates, owned by the Module.
///
/// # Errors
/// When the Module has no namespace or uid.
pub fn build_service_account(module: &Module, kind: Kind) -> Result<ServiceAccount> {
    Ok(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(kind.service_account_name(module)),
            namespace: Some(namespace(module)?),
            labels: Some(kind.selector_labels(&module.name_any())),
            owner_references: Some(vec![owner(module)?]),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    })
}

/// A privileged container of `spec`, after `presets` (upstream's
/// `generatePodContainerSpec`).
fn container(name: &str, spec: &CommonContainerSpec, presets: Option<&Presets>) -> Container {
    let mounts: Vec<_> = presets
        .map(|p| p.mounts.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.volume_mounts.iter().cloned())
        .collect();
    let env: Vec<_> = presets
        .map(|p| p.env.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.env.iter().cloned())
        .collect();
    Container {
        name: name.into(),
        image: Some(spec.image.clone()),
        command: (!spec.command.is_empty()).then(|| spec.command.clone()),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env: (!env.is_empty()).then_some(env),
        image_pull_policy: (!spec.image_pull_policy.is_empty())
            .then(|| spec.image_pull_policy.clone()),
        resources: spec.resources.clone(),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        liveness_probe: presets.and_then(|p| p.liveness_probe.clone()),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Where the plugin runs: the selector, plus the `.ready` label when the Module
/// loads a kernel module (the plugin needs it loaded).
fn node_selector(module: &Module, ns: &str, name: &str) -> BTreeMap<String, String> {
    let mut selector = module.spec.selector.clone();
    if module.spec.module_loader.is_some() {
        selector.insert(ready_label(ns, name), String::new());
    }
    selector
}

/// The DaemonSet of `kind` for `module`, or `None` when the Module does not ask for it.
///
/// # Errors
/// When the Module has no namespace or uid.
pub fn build_daemonset(module: &Module, kind: Kind) -> Result<Option<DaemonSet>> {
    let Some(plugin) = kind.pod(module) else {
        return Ok(None);
    };
    let name = module.name_any();
    let ns = namespace(module)?;
    let labels = kind.selector_labels(&name);
    let presets = presets::of(kind);
    let role = kind.role();
    let volumes: Vec<Volume> = presets
        .volumes
        .iter()
        .chain(plugin.volumes)
        .cloned()
        .collect();
    let pod = PodSpec {
        containers: vec![container(role, plugin.container, Some(&presets))],
        init_containers: plugin
            .init_container
            .map(|c| vec![container(&format!("{role}-init"), c, None)]),
        node_selector: Some(node_selector(module, &ns, &name)),
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
        service_account_name: Some(kind.service_account_name(module)),
        automount_service_account_token: plugin.automount_service_account_token,
        priority_class_name: Some(presets::PRIORITY_CLASS.into()),
        host_network: presets.host_network.then_some(true),
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
            name: Some(kind.daemonset_name(&name)),
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
#[allow(clippy::unwrap_used, reason = "tests")]
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

    const DRA: &str = r#"  dra:
    driverName: gpu.example.com
    container:
      image: r/dra:1
      env: [{name: DRIVER_NAME, value: gpu.example.com}]
      volumeMounts: [{name: cfg, mountPath: /cfg}]
    initContainer: {image: r/dra-init:1}
    volumes: [{name: cfg, configMap: {name: dra-cfg}}]
    serviceAccountName: dra-sa
    automountServiceAccountToken: false
"#;

    fn pod(ds: &DaemonSet) -> &PodSpec {
        ds.spec.template.spec.as_ref().unwrap()
    }

    fn mounts(c: &Container) -> Vec<(&str, &str)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect()
    }

    #[test]
    fn no_spec_no_daemonset() {
        for kind in Kind::ALL {
            assert!(build_daemonset(&module(""), kind).unwrap().is_none());
        }
        assert!(build_daemonset(&module(DP), Kind::Dra).unwrap().is_none());
        assert!(
            build_daemonset(&module(DRA), Kind::DevicePlugin)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn both_kinds_target_ready_nodes_of_the_selector() {
        for (kind, spec, name) in [
            (Kind::DevicePlugin, DP, "brd-device-plugin"),
            (Kind::Dra, DRA, "brd-dra"),
        ] {
            let ds = build_daemonset(&module(spec), kind).unwrap().unwrap();
            assert_eq!(ds.metadata.name.as_deref(), Some(name));
            assert_eq!(ds.metadata.namespace.as_deref(), Some("ns1"));
            let sel = pod(&ds).node_selector.as_ref().unwrap();
            assert_eq!(sel.get("role").map(String::as_str), Some("gpu"));
            assert_eq!(
                sel.get("kmm.node.kubernetes.io/ns1.brd.ready")
                    .map(String::as_str),
                Some("")
            );
            assert_eq!(sel.len(), 2);
            assert_eq!(
                ds.metadata.labels.as_ref().unwrap()[ROLE_LABEL],
                kind.role()
            );
            assert_eq!(
                pod(&ds).priority_class_name.as_deref(),
                Some("system-node-critical")
            );
        }
    }

    #[test]
    fn without_a_module_loader_the_selector_alone_targets() {
        let mut m = module(DRA);
        m.spec.module_loader = None;
        let ds = build_daemonset(&m, Kind::Dra).unwrap().unwrap();
        assert_eq!(
            pod(&ds).node_selector.as_ref().unwrap(),
            &BTreeMap::from([("role".to_string(), "gpu".to_string())])
        );
    }

    #[test]
    fn device_plugin_pod_is_privileged_with_kubelet_socket_dir_first() {
        let ds = build_daemonset(&module(DP), Kind::DevicePlugin)
            .unwrap()
            .unwrap();
        let pod = pod(&ds);
        let c = &pod.containers[0];
        assert_eq!(c.name, "device-plugin");
        assert_eq!(c.image.as_deref(), Some("r/dp:1"));
        assert_eq!(c.args.as_deref(), Some(&["--x".to_string()][..]));
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        assert_eq!(
            mounts(c),
            [
                ("kubelet-device-plugins", KUBELET_DEVICE_PLUGINS),
                ("cfg", "/cfg")
            ]
        );
        let vols = pod.volumes.as_ref().unwrap();
        assert_eq!(vols.len(), 2);
        let host = vols[0].host_path.as_ref().unwrap();
        assert_eq!(
            (host.path.as_str(), host.type_.as_deref()),
            (KUBELET_DEVICE_PLUGINS, Some("Directory"))
        );
        assert_eq!(pod.host_network, None);
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            (init.name.as_str(), init.image.as_deref()),
            ("device-plugin-init", Some("r/init:1"))
        );
        assert!(
            init.volume_mounts.is_none(),
            "presets are for the main container"
        );
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "pull");
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("brd-device-plugin")
        );
    }

    #[test]
    fn dra_pod_has_upstreams_dirs_env_probe_and_host_network() {
        let ds = build_daemonset(&module(DRA), Kind::Dra).unwrap().unwrap();
        let pod = pod(&ds);
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("dra-sa"));
        let c = &pod.containers[0];
        assert_eq!(c.name, "dra");
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        assert_eq!(
            mounts(c),
            [
                ("kubelet-plugins", KUBELET_PLUGINS),
                ("kubelet-plugins-registry", KUBELET_PLUGINS_REGISTRY),
                ("cdi", CDI_PATH),
                ("cfg", "/cfg"),
            ]
        );
        let host: Vec<_> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.host_path.as_ref())
            .map(|h| (h.path.as_str(), h.type_.as_deref().unwrap()))
            .collect();
        assert_eq!(
            host,
            [
                ("/var/lib/kubelet/plugins/", "DirectoryOrCreate"),
                ("/var/lib/kubelet/plugins_registry/", "Directory"),
                ("/var/run/cdi", "DirectoryOrCreate"),
            ]
        );
        assert_eq!(pod.volumes.as_ref().unwrap().len(), 4);
        let env: Vec<_> = c
            .env
            .iter()
            .flatten()
            .map(|e| {
                let value = e.value.clone().or_else(|| {
                    e.value_from
                        .as_ref()
                        .and_then(|f| f.field_ref.as_ref())
                        .map(|f| format!("field:{}", f.field_path))
                });
                (e.name.as_str(), value.unwrap_or_default())
            })
            .collect();
        assert_eq!(
            env,
            [
                ("NODE_NAME", "field:spec.nodeName".to_string()),
                ("POD_UID", "field:metadata.uid".into()),
                ("CDI_ROOT", "/var/run/cdi".into()),
                (
                    "KUBELET_REGISTRAR_DIRECTORY_PATH",
                    "/var/lib/kubelet/plugins_registry/".into()
                ),
                (
                    "KUBELET_PLUGINS_DIRECTORY_PATH",
                    "/var/lib/kubelet/plugins/".into()
                ),
                ("HEALTHCHECK_PORT", "51515".into()),
                ("DRIVER_NAME", "gpu.example.com".into()),
            ]
        );
        let probe = c.liveness_probe.as_ref().unwrap();
        let grpc = probe.grpc.as_ref().unwrap();
        assert_eq!(
            (grpc.port, grpc.service.as_deref()),
            (DRA_HEALTHCHECK_PORT, Some("liveness"))
        );
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.name, "dra-init");
        assert!(init.env.is_none() && init.liveness_probe.is_none());
        assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn owner_is_the_module_as_controller() {
        for (kind, spec) in [(Kind::DevicePlugin, DP), (Kind::Dra, DRA)] {
            let ds = build_daemonset(&module(spec), kind).unwrap().unwrap();
            let o = &ds.metadata.owner_references.unwrap()[0];
            assert_eq!(
                (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
                ("Module", "brd", "1234-abcd")
            );
            assert_eq!(o.controller, Some(true));
        }
        let sa = build_service_account(&module(DP), Kind::DevicePlugin).unwrap();
        assert_eq!(sa.metadata.name.as_deref(), Some("brd-device-plugin"));
        assert_eq!(
            sa.metadata.owner_references.unwrap()[0].controller,
            Some(true)
        );
    }

    #[test]
    fn named_service_account_is_used_not_created() {
        let m = module(&format!("{DP}    serviceAccountName: mine\n"));
        assert!(!Kind::DevicePlugin.creates_service_account(&m));
        assert_eq!(Kind::DevicePlugin.service_account_name(&m), "mine");
        assert!(Kind::DevicePlugin.creates_service_account(&module(DP)));
        assert!(!Kind::Dra.creates_service_account(&module(DRA)));
        let unnamed = module(&DRA.replace("    serviceAccountName: dra-sa\n", ""));
        assert!(Kind::Dra.creates_service_account(&unnamed));
        assert_eq!(Kind::Dra.service_account_name(&unnamed), "brd-dra");
        assert!(!Kind::Dra.creates_service_account(&module(DP)));
    }

    #[test]
    fn spec_change_changes_the_hash_label() {
        let hash = |m: &Module, kind| {
            build_daemonset(m, kind)
                .unwrap()
                .unwrap()
                .metadata
                .labels
                .unwrap()[SPEC_HASH_LABEL]
                .clone()
        };
        let a = hash(&module(DP), Kind::DevicePlugin);
        let b = hash(&module(&DP.replace("r/dp:1", "r/dp:2")), Kind::DevicePlugin);
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_ne!(
            hash(&module(DRA), Kind::Dra),
            hash(&module(&DRA.replace("r/dra:1", "r/dra:2")), Kind::Dra)
        );
    }

    #[test]
    fn ready_labels_and_selectors_per_kind() {
        assert_eq!(
            Kind::Dra.ready_label("ns1", "brd"),
            "kmm.node.kubernetes.io/ns1.brd.dra-ready"
        );
        assert_eq!(
            Kind::DevicePlugin.ready_label("ns1", "brd"),
            "kmm.node.kubernetes.io/ns1.brd.device-plugin-ready"
        );
        assert!(
            Kind::Dra
                .label_selector("brd")
                .contains("kmm.node.kubernetes.io/role=dra")
        );
        assert_eq!(
            all_plugins_selector(),
            "kmm.node.kubernetes.io/role in (device-plugin,dra),app.kubernetes.io/managed-by=kmm-rs-controller"
        );
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
