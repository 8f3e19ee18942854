//! Which nodes a `ModuleRollout` upgrades: the Module's nodes (its selector and a kernel
//! mapping for the node's kernel) that also match the rollout's `nodeSelector`. The
//! `version-module` label is not looked at: moving it is the rollout's job. Written once here
//! so the controller's rollout and `kmmctl rollout status` agree on the scope.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use super::eligibility::{node_kernel_version, selector_matches};
use super::mapping::resolve_mapping;
use crate::Module;

/// Whether `node` is in the scope of a rollout of `module` restricted by `node_selector`.
///
/// A selector the API server would reject (an unknown operator, `In` without values) matches
/// no node: a rollout never widens to nodes it was not meant for.
pub fn in_rollout_scope(
    module: &Module,
    node_selector: Option<&LabelSelector>,
    node: &Node,
) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if selector_matches(&module.spec.selector, labels).is_err() {
        return false;
    }
    let Some(kernel) = node_kernel_version(node) else {
        return false;
    };
    if resolve_mapping(module, kernel).is_err() {
        return false;
    }
    match node_selector {
        None => true,
        Some(selector) => Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels)),
    }
}

#[cfg(test)]
#[path = "rollout_scope_tests.rs"]
mod tests;
