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

/// `kmm.node.kubernetes.io/<ns>.<name>.upgrade-state`: where a `ModuleRollout` has this node
/// (one of [`UpgradeState`]), set by the controller's rollout; the admin may set `skip`.
pub fn upgrade_state_label(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.upgrade-state")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.upgrade-cordoned`: annotation set when the rollout
/// cordoned the node, so it uncordons only nodes it cordoned.
pub fn upgrade_cordoned_annotation(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.upgrade-cordoned")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.upgrade-since`: annotation, RFC 3339 time the node
/// entered its current `upgrade-state` (timeouts survive a leader change).
pub fn upgrade_since_annotation(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.upgrade-since")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.upgrade-message`: annotation, what the node waits for
/// or why it failed (shown by `kmmctl rollout status`).
pub fn upgrade_message_annotation(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.upgrade-message")
}

/// `kmm.node.kubernetes.io/<ns>.<name>.upgrade-boot-id`: annotation, the node's boot ID when a
/// `Reboot` rollout marked it; the rollout continues once it has changed.
pub fn upgrade_boot_id_annotation(namespace: &str, name: &str) -> String {
    format!("{NODE_LABEL_PREFIX}/{namespace}.{name}.upgrade-boot-id")
}

/// `kmm.node.kubernetes.io/reboot-required`: label on a node a `Reboot` rollout wants
/// rebooted (value: the Modules, `<ns>.<name>`), for a reboot operator such as kured
/// (`--blocking-pod-selector`/`--reboot-sentinel-command` can test it).
pub const REBOOT_REQUIRED_LABEL: &str = "kmm.node.kubernetes.io/reboot-required";

/// A node's place in a `ModuleRollout`, the value of [`upgrade_state_label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpgradeState {
    /// On another version, waiting for its turn.
    Required,
    /// Cordoned by the rollout.
    Cordoned,
    /// Waiting for the `waitForPods` Pods to finish.
    WaitingForPods,
    /// Evicting the `eviction` Pods (a PodDisruptionBudget may hold it here).
    Evicting,
    /// The version label moved; waiting for the agent to report the new version.
    Upgrading,
    /// `Reboot` strategy: waiting for the node to boot again with the new version.
    Rebooting,
    /// Running the validation (plugin Ready, validation Job).
    Validating,
    /// Uncordoning (only if the rollout cordoned it).
    Uncordoning,
    /// On the target version.
    Done,
    /// The upgrade failed on this node (see the message annotation); `kmmctl rollout retry`.
    Failed,
    /// Set by the admin: the rollout leaves this node alone.
    Skip,
}

impl UpgradeState {
    /// Every state, in the order a node goes through them.
    pub const ALL: [Self; 11] = [
        Self::Required,
        Self::Cordoned,
        Self::WaitingForPods,
        Self::Evicting,
        Self::Upgrading,
        Self::Rebooting,
        Self::Validating,
        Self::Uncordoning,
        Self::Done,
        Self::Failed,
        Self::Skip,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Cordoned => "cordoned",
            Self::WaitingForPods => "waiting-for-pods",
            Self::Evicting => "evicting",
            Self::Upgrading => "upgrading",
            Self::Rebooting => "rebooting",
            Self::Validating => "validating",
            Self::Uncordoning => "uncordoning",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Skip => "skip",
        }
    }

    /// Parses a label value.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Between cordon and uncordon (counts against `maxParallel`).
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            Self::Cordoned
                | Self::WaitingForPods
                | Self::Evicting
                | Self::Upgrading
                | Self::Rebooting
                | Self::Validating
                | Self::Uncordoning
        )
    }
}

impl std::fmt::Display for UpgradeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    fn upgrade_states_round_trip_and_only_the_middle_ones_are_in_progress() {
        for s in UpgradeState::ALL {
            assert_eq!(UpgradeState::parse(s.as_str()), Some(s));
        }
        assert_eq!(UpgradeState::parse("Done"), None);
        let in_progress: Vec<_> = UpgradeState::ALL
            .into_iter()
            .filter(|s| s.in_progress())
            .collect();
        assert_eq!(in_progress.len(), 7);
        assert!(!UpgradeState::Required.in_progress() && !UpgradeState::Failed.in_progress());
        assert_eq!(
            upgrade_state_label("ns", "m"),
            "kmm.node.kubernetes.io/ns.m.upgrade-state"
        );
        assert!(!is_agent_label(&upgrade_state_label("ns", "m")));
    }

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
