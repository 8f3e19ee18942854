//! `spec.dra`: a Dynamic Resource Allocation driver for the devices a Module's kernel module
//! exposes, field for field upstream KMM's `DRASpec` and `DeviceClassSpec`
//! (`api/v1beta1/module_types.go`). Selectors and configurations are `resource.k8s.io/v1`
//! types, so the controller copies them into the DeviceClasses it manages unchanged.

use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::api::resource::v1::{
    DeviceClassConfiguration, DeviceSelector, OpaqueDeviceConfiguration,
};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel;
use super::module::CommonContainerSpec;

/// Most entries of `deviceClasses[].selectors` and `deviceClasses[].config` (upstream's
/// `MaxItems=32`, the limit of `resource.k8s.io/v1` DeviceClasses).
pub const MAX_DEVICE_CLASS_ITEMS: usize = 32;

/// A DNS subdomain (RFC 1123) as upstream's `deviceClasses[].name` pattern spells it; the
/// length limit (253) is checked separately.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Longest DNS subdomain.
pub const MAX_DNS_SUBDOMAIN_LENGTH: usize = 253;

/// DRASpec configures a DRA driver DaemonSet and optional DeviceClasses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DraSpec {
    /// The DRA kubelet plugin container. KMM mounts the kubelet plugin directories and the CDI
    /// directory and presets NODE_NAME, POD_UID, CDI_ROOT, KUBELET_REGISTRAR_DIRECTORY_PATH,
    /// KUBELET_PLUGINS_DIRECTORY_PATH and HEALTHCHECK_PORT.
    pub container: CommonContainerSpec,

    /// InitContainer defines the init container that will be used by the DRA driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_container: Option<CommonContainerSpec>,

    /// ServiceAccountName is the name of the ServiceAccount to use to run the DRA driver pods.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account_name: String,

    /// Volumes available to the DRA driver pods, besides the kubelet plugin and CDI
    /// directories KMM mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,

    /// AutomountServiceAccountToken is used to disable the auto-mounting of the projected
    /// volume into the DRA driver pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,

    /// DriverName is the DRA driver name registered with kubelet (a DNS subdomain).
    #[schemars(length(max = 253))]
    #[x_kube(validation = cel::dns_subdomain("spec.dra.driverName"))]
    pub driver_name: String,

    /// DeviceClasses lists DeviceClass resources to manage. KMM creates and updates them,
    /// labelled with the Module's name and namespace, and deletes those the list no longer
    /// names and all of them when the Module goes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_classes: Vec<DeviceClassSpec>,
}

/// DeviceClassSpec defines a DeviceClass managed by KMM on behalf of a Module.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct DeviceClassSpec {
    /// Name is the cluster-scoped DeviceClass metadata.name.
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,

    /// Selectors restrict which devices satisfy this class (resource.k8s.io/v1 DeviceSelector).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_DEVICE_CLASS_ITEMS))]
    pub selectors: Vec<DeviceSelector>,

    /// Config defines per-device configuration passed to the DRA driver
    /// (resource.k8s.io/v1 DeviceClassConfiguration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "config_schema")]
    pub config: Vec<DeviceClassConfiguration>,
}

/// The schema of `config`: k8s-openapi's, with `maxItems` and with
/// `x-kubernetes-preserve-unknown-fields` on `opaque.parameters`. Why: k8s-openapi types that
/// RawExtension as a bare `type: object`, which a structural schema prunes to `{}`; the
/// driver's parameters would be lost on the way into the API server.
fn config_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut opaque = OpaqueDeviceConfiguration::json_schema(generator);
    if let Some(parameters) = opaque
        .pointer_mut("/properties/parameters")
        .and_then(serde_json::Value::as_object_mut)
    {
        parameters.insert(
            "x-kubernetes-preserve-unknown-fields".into(),
            serde_json::Value::Bool(true),
        );
    }
    // Built here rather than through the generator, so `opaque` is inline whatever the
    // generator's settings (a `$ref` would escape the fix above).
    let mut item = DeviceClassConfiguration::json_schema(generator);
    if let Some(properties) = item
        .pointer_mut("/properties")
        .and_then(serde_json::Value::as_object_mut)
    {
        let mut opaque = opaque.to_value();
        // Keep the field's own description (the type's is generic).
        if let (Some(doc), Some(map)) = (
            properties
                .get("opaque")
                .and_then(|o| o.get("description"))
                .cloned(),
            opaque.as_object_mut(),
        ) {
            map.insert("description".into(), doc);
        }
        properties.insert("opaque".into(), opaque);
    }
    schemars::json_schema!({
        "type": "array",
        "maxItems": MAX_DEVICE_CLASS_ITEMS,
        "items": item,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn opaque_parameters_keep_unknown_fields_and_config_is_bounded() {
        let schema = schemars::SchemaGenerator::default().into_root_schema_for::<DeviceClassSpec>();
        let config = schema.pointer("/properties/config").unwrap();
        assert_eq!(config["maxItems"], 32);
        let parameters = &config["items"]["properties"]["opaque"]["properties"]["parameters"];
        // With any generator settings (the CRD's inline everything, the default refers).
        assert_eq!(parameters["x-kubernetes-preserve-unknown-fields"], true);
    }

    #[test]
    fn parameters_round_trip_through_the_type() {
        let yaml = r#"
name: gpu.example.com
selectors: [{cel: {expression: "device.driver == 'gpu.example.com'"}}]
config:
- opaque:
    driver: gpu.example.com
    parameters: {apiVersion: gpu.example.com/v1, kind: GpuConfig, sharing: {strategy: TimeSlicing}}
"#;
        let spec: DeviceClassSpec = serde_yaml::from_str(yaml).unwrap();
        let back = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            back["config"][0]["opaque"]["parameters"]["sharing"]["strategy"],
            "TimeSlicing"
        );
        assert_eq!(
            back["selectors"][0]["cel"]["expression"],
            "device.driver == 'gpu.example.com'"
        );
    }
}
