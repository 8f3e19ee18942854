//! Labels the controller puts on the objects it creates (device-plugin and
//! DRA DaemonSets and pods, DeviceClasses, build and sign Jobs) and selects
//! them by.

/// `app.kubernetes.io/managed-by` value on everything this controller creates.
pub const MANAGED_BY: &str = "kmm-rs-controller";
/// Label naming the Module an object belongs to (same namespace).
pub const MODULE_NAME_LABEL: &str = "kmm.node.kubernetes.io/module.name";
/// Label naming the namespace of the Module a cluster-scoped object (a
/// DeviceClass) belongs to.
pub const MODULE_NAMESPACE_LABEL: &str = "kmm.node.kubernetes.io/module.namespace";
/// Label marking node-plugin objects (DaemonSet and its pods) by kind.
pub const ROLE_LABEL: &str = "kmm.node.kubernetes.io/role";
/// Value of [`ROLE_LABEL`] on device-plugin objects.
pub const ROLE_DEVICE_PLUGIN: &str = "device-plugin";
/// Value of [`ROLE_LABEL`] on DRA kubelet-plugin objects.
pub const ROLE_DRA: &str = "dra";
