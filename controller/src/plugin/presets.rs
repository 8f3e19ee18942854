//! What KMM adds to each kind of node-plugin pod (upstream's
//! `device_plugin_reconciler.go` and `dra_reconciler.go`): the kubelet's
//! directories as hostPath volumes, mounted at the same paths in the main
//! container, and for DRA the environment of the kubelet-plugin helpers,
//! a gRPC liveness probe and host networking.

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, GRPCAction, HostPathVolumeSource, ObjectFieldSelector, Probe, Volume,
    VolumeMount,
};

use super::Kind;

/// Where kubelet looks for device-plugin sockets.
pub const KUBELET_DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";
/// Where DRA kubelet plugins put their sockets.
pub const KUBELET_PLUGINS: &str = "/var/lib/kubelet/plugins/";
/// Where kubelet discovers plugins (registration sockets).
pub const KUBELET_PLUGINS_REGISTRY: &str = "/var/lib/kubelet/plugins_registry/";
/// Where DRA drivers write CDI specs for the container runtime.
pub const CDI_PATH: &str = "/var/run/cdi";
/// Port of the DRA plugin's gRPC health service (`HEALTHCHECK_PORT`).
pub const DRA_HEALTHCHECK_PORT: i32 = 51515;
/// Priority of every node-plugin pod: evicted last, as the devices depend on it.
pub const PRIORITY_CLASS: &str = "system-node-critical";

const DIRECTORY: &str = "Directory";
const DIRECTORY_OR_CREATE: &str = "DirectoryOrCreate";

/// The additions for one kind of plugin.
pub struct Presets {
    /// Volumes before the Module's.
    pub volumes: Vec<Volume>,
    /// Mounts of the main container, before the Module's.
    pub mounts: Vec<VolumeMount>,
    /// Environment of the main container, before the Module's.
    pub env: Vec<EnvVar>,
    /// Liveness probe of the main container.
    pub liveness_probe: Option<Probe>,
    /// Whether the pod uses the node's network.
    pub host_network: bool,
}

/// A hostPath volume `name` of `path`, with its mount at the same path.
fn host_dir(name: &str, path: &str, type_: &str) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some(type_.into()),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    };
    (volume, mount)
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The presets of `kind`.
pub fn of(kind: Kind) -> Presets {
    match kind {
        Kind::DevicePlugin => {
            let (volume, mount) =
                host_dir("kubelet-device-plugins", KUBELET_DEVICE_PLUGINS, DIRECTORY);
            Presets {
                volumes: vec![volume],
                mounts: vec![mount],
                env: Vec::new(),
                liveness_probe: None,
                host_network: false,
            }
        }
        Kind::Dra => {
            let (volumes, mounts) = [
                host_dir("kubelet-plugins", KUBELET_PLUGINS, DIRECTORY_OR_CREATE),
                host_dir(
                    "kubelet-plugins-registry",
                    KUBELET_PLUGINS_REGISTRY,
                    DIRECTORY,
                ),
                host_dir("cdi", CDI_PATH, DIRECTORY_OR_CREATE),
            ]
            .into_iter()
            .unzip();
            Presets {
                volumes,
                mounts,
                env: vec![
                    field_env("NODE_NAME", "spec.nodeName"),
                    field_env("POD_UID", "metadata.uid"),
                    value_env("CDI_ROOT", CDI_PATH),
                    value_env("KUBELET_REGISTRAR_DIRECTORY_PATH", KUBELET_PLUGINS_REGISTRY),
                    value_env("KUBELET_PLUGINS_DIRECTORY_PATH", KUBELET_PLUGINS),
                    value_env("HEALTHCHECK_PORT", &DRA_HEALTHCHECK_PORT.to_string()),
                ],
                liveness_probe: Some(Probe {
                    grpc: Some(GRPCAction {
                        port: DRA_HEALTHCHECK_PORT,
                        service: Some("liveness".into()),
                        ..GRPCAction::default()
                    }),
                    initial_delay_seconds: Some(30),
                    period_seconds: Some(10),
                    timeout_seconds: Some(5),
                    failure_threshold: Some(3),
                    ..Probe::default()
                }),
                host_network: true,
            }
        }
    }
}
