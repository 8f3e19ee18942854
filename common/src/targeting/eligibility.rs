//! Node eligibility: selector, kernel mapping and ordered-upgrade version label.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use super::Ineligible;
use super::mapping::{ResolvedMapping, resolve_mapping};
use super::taints::check_node_taints;
use crate::Module;
use crate::labels::version_module_label;

/// Whether `labels` satisfy `selector` (every key present with an equal value). An empty
/// selector matches every node.
///
/// # Errors
/// [`Ineligible::SelectorMismatch`] for the first selector entry (in key order) that fails.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Result<(), Ineligible> {
    for (key, wanted) in selector {
        let actual = labels.get(key);
        if actual != Some(wanted) {
            return Err(Ineligible::SelectorMismatch {
                key: key.clone(),
                wanted: wanted.clone(),
                actual: actual.cloned(),
            });
        }
    }
    Ok(())
}

/// The node's kernel from `status.nodeInfo.kernelVersion` (`None` when absent or empty).
pub fn node_kernel_version(node: &Node) -> Option<&str> {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kernel_version.as_str())
        .filter(|k| !k.is_empty())
}

/// Decides whether `module` targets a node with these `labels` running `kernel`, and what to
/// load there. Checks, in order: selector, kernel mapping, then (when `container.version` is
/// set) the node label `kmm.node.kubernetes.io/version-module.<ns>.<name>`.
///
/// # Errors
/// An [`Ineligible`] reason; never panics.
pub fn target_node(
    module: &Module,
    labels: &BTreeMap<String, String>,
    kernel: &str,
) -> Result<ResolvedMapping, Ineligible> {
    selector_matches(&module.spec.selector, labels)?;
    if kernel.is_empty() {
        return Err(Ineligible::NoKernelVersion);
    }
    let resolved = resolve_mapping(module, kernel)?;
    if let Some(wanted) = &resolved.version {
        let label = version_module_label(
            module.metadata.namespace.as_deref().unwrap_or_default(),
            module.metadata.name.as_deref().unwrap_or_default(),
        );
        let actual = labels.get(&label);
        if actual != Some(wanted) {
            return Err(Ineligible::VersionMismatch {
                label,
                wanted: wanted.clone(),
                actual: actual.cloned(),
            });
        }
    }
    Ok(resolved)
}

/// [`target_node`] for a `Node` object (labels from metadata, kernel from status), then its
/// taints ([`check_node_taints`]): whether a load would happen there now.
///
/// # Errors
/// An [`Ineligible`] reason; never panics.
pub fn node_eligibility(module: &Module, node: &Node) -> Result<ResolvedMapping, Ineligible> {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let target = target_node(
        module,
        labels,
        node_kernel_version(node).unwrap_or_default(),
    )?;
    check_node_taints(module, node)?;
    Ok(target)
}

#[cfg(test)]
#[path = "eligibility_tests.rs"]
mod tests;
