//! Node label keys, the finalizer and the namespace label shared by the controller and agent
//! (same strings as upstream KMM, so existing tooling and node selectors keep working).

/// Prefix of every node label KMM sets.
pub const NODE_LABEL_PREFIX: &str = "kmm.node.kubernetes.io";

/// Finalizer the controller puts on every Module so unloading happens before deletion.
pub const MODULE_FINALIZER: &str = "kmm.node.kubernetes.io/module-finalizer";

/// Label on namespaces that contain at least one Module (namespace deletion is refused while
/// it is set).
pub const NAMESPACE_CONTAINS_MODULES_LABEL: &str = "kmm.node.k8s.io/contains-modules";

/// `kmm.node.kubernetes.io/<ns>.<name>.ready`: the module is loaded on the node.
pub fn ready_label(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.version.ready`: the loaded module's version (ordered
/// upgrade).
pub fn version_ready_label(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.version.ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.device-plugin-ready`: the device plugin runs on the node.
pub fn device_plugin_ready_label(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.device-plugin-ready")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.dra-ready`: the DRA driver runs on the node.
pub fn dra_ready_label(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.dra-ready")
}

/// `kmm.node.kubernetes.io/version-module.<ns>.<name>`: set by the admin to the version a node
/// should run (ordered upgrade); a node is only targeted when it equals `container.version`.
pub fn version_module_label(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/version-module.{namespace}.{name}")
}

/// Whether the node agent owns `key`: the `.ready` and `.version.ready` labels of
/// Modules. The admin's `version-module.` labels and the controller's
/// `.device-plugin-ready` (and `.dra-ready`) are not the agent's to change.
pub fn is_agent_label(key: &str) -> bool {
    let Some(rest) = key
        .strip_prefix(NODE_LABEL_PREFIX)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return false;
    };
    rest.ends_with(".ready")
        && !rest.ends_with(".device-plugin-ready")
        && !rest.ends_with(".dra-ready")
        && !rest.starts_with("version-module.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_match_upstream() {
        let cases = [
            (ready_label("ns", "m"), "kmm.node.kubernetes.io/ns.m.ready"),
            (
                version_ready_label("ns", "m"),
                "kmm.node.kubernetes.io/ns.m.version.ready",
            ),
            (
                device_plugin_ready_label("ns", "m"),
                "kmm.node.kubernetes.io/ns.m.device-plugin-ready",
            ),
            (
                dra_ready_label("ns", "m"),
                "kmm.node.kubernetes.io/ns.m.dra-ready",
            ),
            (
                version_module_label("ns", "m"),
                "kmm.node.kubernetes.io/version-module.ns.m",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn the_agent_owns_only_ready_and_version_ready_labels() {
        assert!(is_agent_label(&ready_label("ns", "m")));
        assert!(is_agent_label(&version_ready_label("ns", "m")));
        assert!(!is_agent_label(&device_plugin_ready_label("ns", "m")));
        assert!(!is_agent_label("kmm.node.kubernetes.io/ns.m.dra-ready"));
        assert!(!is_agent_label(&version_module_label("ns", "m.ready")));
        assert!(!is_agent_label("example.com/ns.m.ready"));
    }
}
