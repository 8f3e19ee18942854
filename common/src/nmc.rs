//! How a `NodeModulesConfig` status is read: one contract for the controller
//! (Module status counts, the nodes a deletion waits for) and `kmmctl
//! explain`, matching what the agent writes.

use crate::api::nmc::{NodeModuleStatus, NodeModulesConfig};

/// The status entry of Module `namespace`/`name` in `nmc`, if the agent wrote one.
pub fn module_status<'a>(
    nmc: &'a NodeModulesConfig,
    namespace: &str,
    name: &str,
) -> Option<&'a NodeModuleStatus> {
    nmc.status
        .as_ref()?
        .modules
        .iter()
        .find(|m| m.item.namespace == namespace && m.item.name == name)
}

/// Whether the entry reports the Module loaded on the node.
///
/// The agent writes `config` and the image digest for every module it has
/// loaded, and an entry with only `lastError` for one it has not. Either field
/// counts, so a deletion never stops waiting for a node that reports a digest.
pub fn is_loaded(entry: &NodeModuleStatus) -> bool {
    entry.config.is_some() || !entry.digest.is_empty()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::api::nmc::{ModuleConfig, ModuleError, ModuleItem, NodeModulesConfigStatus};

    fn entry(namespace: &str, name: &str) -> NodeModuleStatus {
        NodeModuleStatus {
            item: ModuleItem {
                namespace: namespace.into(),
                name: name.into(),
                ..ModuleItem::default()
            },
            ..NodeModuleStatus::default()
        }
    }

    #[test]
    fn config_or_digest_means_loaded_an_error_alone_does_not() {
        let failed = NodeModuleStatus {
            last_error: Some(ModuleError {
                reason: "ImagePullFailed".into(),
                message: "m".into(),
            }),
            ..entry("ns", "m")
        };
        assert!(!is_loaded(&failed));
        let with_config = NodeModuleStatus {
            config: Some(ModuleConfig::default()),
            ..failed.clone()
        };
        assert!(is_loaded(&with_config));
        let with_digest = NodeModuleStatus {
            digest: "sha256:00".into(),
            ..failed
        };
        assert!(is_loaded(&with_digest));
    }

    #[test]
    fn the_entry_is_found_by_namespace_and_name() {
        let mut nmc = NodeModulesConfig::new("node-1", Default::default());
        assert!(module_status(&nmc, "ns", "m").is_none());
        nmc.status = Some(NodeModulesConfigStatus {
            modules: vec![entry("other", "m"), entry("ns", "x"), entry("ns", "m")],
        });
        let found = module_status(&nmc, "ns", "m").unwrap();
        assert_eq!(
            (found.item.namespace.as_str(), found.item.name.as_str()),
            ("ns", "m")
        );
        assert!(module_status(&nmc, "ns", "y").is_none());
    }
}
