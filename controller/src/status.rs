//! A Module's status from the fleet, as pure functions: counts from Nodes and
//! NodeModulesConfig statuses, conditions, and the nodes a deletion waits for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kmm_common::{
    DaemonSetStatus, Module, NodeModulesConfig, node_eligibility, ready_label, selector_matches,
};
use kube::ResourceExt;

use crate::plugin::Kind;

/// Condition types the controller writes.
pub const AVAILABLE: &str = "Available";
/// See [`AVAILABLE`].
pub const PROGRESSING: &str = "Progressing";
/// See [`AVAILABLE`].
pub const DEGRADED: &str = "Degraded";
/// Set while a deletion waits for nodes to unload.
pub const UNLOADING: &str = "Unloading";
/// Condition type: the images of kernels that build or sign are in the registry.
pub const IMAGES_READY: &str = "ImagesReady";

/// What the cluster looks like, from the controller's caches.
#[derive(Clone, Copy)]
pub struct Fleet<'a> {
    /// All Nodes.
    pub nodes: &'a [Arc<Node>],
    /// All NodeModulesConfigs (one per node, named after it).
    pub nmcs: &'a [Arc<NodeModulesConfig>],
}

pub use kmm_common::nmc::{is_loaded, module_status as module_entry};

fn labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

fn node_names(fleet: Fleet<'_>) -> BTreeSet<String> {
    fleet.nodes.iter().map(|n| n.name_any()).collect()
}

/// Nodes whose NMC status reports the Module loaded (only Nodes that exist:
/// an NMC left behind by a deleted Node has no agent to act on it).
pub fn loaded_nodes(module: &Module, fleet: Fleet<'_>) -> BTreeSet<String> {
    let (ns, name) = (module.namespace().unwrap_or_default(), module.name_any());
    let existing = node_names(fleet);
    fleet
        .nmcs
        .iter()
        .filter(|nmc| existing.contains(&nmc.name_any()))
        .filter(|nmc| module_entry(nmc, &ns, &name).is_some_and(is_loaded))
        .map(|nmc| nmc.name_any())
        .collect()
}

/// Nodes a deletion still waits for: loaded per NMC status, or still carrying
/// the Module's `.ready` label.
pub fn nodes_still_loaded(module: &Module, fleet: Fleet<'_>) -> Vec<String> {
    let (ns, name) = (module.namespace().unwrap_or_default(), module.name_any());
    let label = ready_label(&ns, &name);
    let mut nodes = loaded_nodes(module, fleet);
    nodes.extend(
        fleet
            .nodes
            .iter()
            .filter(|n| labels(n).contains_key(&label))
            .map(|n| n.name_any()),
    );
    nodes.into_iter().collect()
}

/// `status.moduleLoader`: nodes matching the selector; of those, the eligible
/// ones (kernel mapping + ordered-upgrade version); nodes reporting it loaded.
pub fn loader_counts(module: &Module, fleet: Fleet<'_>) -> DaemonSetStatus {
    let matching: Vec<&Arc<Node>> = fleet
        .nodes
        .iter()
        .filter(|n| selector_matches(&module.spec.selector, &labels(n)).is_ok())
        .collect();
    let desired = matching
        .iter()
        .filter(|n| node_eligibility(module, n).is_ok())
        .count();
    DaemonSetStatus {
        nodes_matching_selector_number: count(matching.len()),
        desired_number: count(desired),
        available_number: count(loaded_nodes(module, fleet).len()),
    }
}

/// `status.devicePlugin` / `status.dra`: nodes matching the selector; of those,
/// the ones where the DaemonSet wants a pod (with the `.ready` label, or all
/// without a module loader); the DaemonSet's `numberAvailable`. Zero when the
/// Module does not ask for `kind`.
pub fn plugin_counts(
    module: &Module,
    kind: Kind,
    fleet: Fleet<'_>,
    ds: Option<&DaemonSet>,
) -> DaemonSetStatus {
    if !kind.wanted(module) {
        return DaemonSetStatus::default();
    }
    let label = ready_label(&module.namespace().unwrap_or_default(), &module.name_any());
    let needs_ready = module.spec.module_loader.is_some();
    let matching: Vec<BTreeMap<String, String>> = fleet
        .nodes
        .iter()
        .map(|n| labels(n))
        .filter(|l| selector_matches(&module.spec.selector, l).is_ok())
        .collect();
    DaemonSetStatus {
        nodes_matching_selector_number: count(matching.len()),
        desired_number: count(
            matching
                .iter()
                .filter(|l| !needs_ready || l.contains_key(&label))
                .count(),
        ),
        available_number: ds
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.number_available)
            .unwrap_or(0),
    }
}

/// Whether the node's `Ready` condition is `True` (a node without one is not Ready: its
/// kubelet never reported).
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Most node names a condition message lists.
const MAX_LISTED_NODES: usize = 10;

/// Nodes the Module should be loaded on that have not reported it loaded, and of those the
/// ones that are not Ready (a dead node's agent will not report: waiting on it is silent
/// otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waiting {
    /// How many eligible nodes have not reported the Module loaded.
    pub nodes: usize,
    /// Those of them whose `Ready` condition is not `True`, by name.
    pub not_ready: Vec<String>,
}

/// [`Waiting`] for `module` in `fleet`.
pub fn waiting_for(module: &Module, fleet: Fleet<'_>) -> Waiting {
    let loaded = loaded_nodes(module, fleet);
    let mut waiting: Vec<&Arc<Node>> = fleet
        .nodes
        .iter()
        .filter(|n| !loaded.contains(&n.name_any()))
        .filter(|n| selector_matches(&module.spec.selector, &labels(n)).is_ok())
        .filter(|n| node_eligibility(module, n).is_ok())
        .collect();
    waiting.sort_by_key(|n| n.name_any());
    Waiting {
        nodes: waiting.len(),
        not_ready: waiting
            .iter()
            .filter(|n| !node_ready(n))
            .map(|n| n.name_any())
            .collect(),
    }
}

impl Waiting {
    /// `"; waiting for 2 nodes; 1 of them not Ready: node-x"`, empty when no waiting node is
    /// NotReady.
    fn describe(&self) -> String {
        if self.not_ready.is_empty() {
            return String::new();
        }
        let plural = if self.nodes == 1 { "node" } else { "nodes" };
        let mut names = self
            .not_ready
            .iter()
            .take(MAX_LISTED_NODES)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.not_ready.len() > MAX_LISTED_NODES {
            names.push_str(&format!(
                " and {} more",
                self.not_ready.len() - MAX_LISTED_NODES
            ));
        }
        format!(
            "; waiting for {} {plural}; {} of them not Ready: {names}",
            self.nodes,
            self.not_ready.len()
        )
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Nodes whose agent reports an error for this Module, by reason: (nodes in name order,
/// the first node's message). A node waiting for an in-cluster build is progress, not an
/// error, and is left out.
fn errors_by_reason(module: &Module, fleet: Fleet<'_>) -> BTreeMap<String, (Vec<String>, String)> {
    let (ns, name) = (module.namespace().unwrap_or_default(), module.name_any());
    let mut by_reason: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
    let mut nmcs: Vec<&Arc<NodeModulesConfig>> = fleet.nmcs.iter().collect();
    nmcs.sort_by_key(|n| n.name_any());
    for nmc in nmcs {
        let Some(err) = module_entry(nmc, &ns, &name).and_then(|e| e.last_error.as_ref()) else {
            continue;
        };
        if err.reason == kmm_common::REASON_WAITING_FOR_IMAGE {
            continue;
        }
        let slot = by_reason
            .entry(err.reason.clone())
            .or_insert_with(|| (Vec::new(), err.message.clone()));
        slot.0.push(nmc.name_any());
    }
    by_reason
}

/// Errors the agents report for this Module, grouped by reason:
/// `("ImagePullFailed", "2 nodes: ImagePullFailed: <message of the first node>")`.
/// `None` when no node reports an error.
pub fn degraded(module: &Module, fleet: Fleet<'_>) -> Option<(String, String)> {
    let by_reason = errors_by_reason(module, fleet);
    if by_reason.is_empty() {
        return None;
    }
    let reason = if by_reason.len() == 1 {
        by_reason.keys().next().cloned().unwrap_or_default()
    } else {
        "MultipleErrors".to_string()
    };
    let message = by_reason
        .iter()
        .map(|(reason, (nodes, msg))| {
            let n = nodes.len();
            let plural = if n == 1 { "node" } else { "nodes" };
            format!("{n} {plural}: {reason}: {msg}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    Some((reason, message))
}

/// A Module's nodes per state, for `kmm_controller_module_nodes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounts {
    /// Nodes matching the selector.
    pub matching: usize,
    /// Of those, the eligible ones (kernel mapping, version label).
    pub desired: usize,
    /// Nodes reporting the Module loaded.
    pub loaded: usize,
    /// Eligible nodes not reporting it loaded yet.
    pub waiting: usize,
    /// Of the waiting nodes, those not Ready.
    pub not_ready: usize,
    /// Nodes reporting an error for it (a failed replace keeps the old version loaded,
    /// so such a node counts as loaded too).
    pub failed: usize,
}

impl NodeCounts {
    /// The `state` label values with their counts.
    pub fn by_state(&self) -> [(&'static str, usize); 6] {
        [
            ("matching", self.matching),
            ("desired", self.desired),
            ("loaded", self.loaded),
            ("waiting", self.waiting),
            ("not_ready", self.not_ready),
            ("failed", self.failed),
        ]
    }
}

/// [`NodeCounts`] of `module` in `fleet`, from the same functions as its status.
pub fn node_counts(module: &Module, fleet: Fleet<'_>) -> NodeCounts {
    let loader = loader_counts(module, fleet);
    let waiting = waiting_for(module, fleet);
    let to_usize = |n: i32| usize::try_from(n).unwrap_or(0);
    NodeCounts {
        matching: to_usize(loader.nodes_matching_selector_number),
        desired: to_usize(loader.desired_number),
        loaded: to_usize(loader.available_number),
        waiting: waiting.nodes,
        not_ready: waiting.not_ready.len(),
        failed: errors_by_reason(module, fleet)
            .values()
            .map(|(nodes, _)| nodes.len())
            .sum(),
    }
}

/// A condition with the given status, not yet stamped ([`stamp`]).
pub(crate) fn condition(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        observed_generation: None,
    }
}

/// Available / Progressing / Degraded from the counts, the nodes still waited for and the
/// aggregated errors.
pub fn conditions(
    loader: &DaemonSetStatus,
    plugin: Option<(Kind, &DaemonSetStatus)>,
    waiting: &Waiting,
    degraded: Option<(String, String)>,
) -> Vec<Condition> {
    let behind = |s: &DaemonSetStatus| s.available_number < s.desired_number;
    let loader_msg = format!(
        "module loaded on {}/{} desired nodes{}",
        loader.available_number,
        loader.desired_number,
        waiting.describe()
    );
    let plugin_msg = plugin.map(|(kind, d)| {
        format!(
            "; {} available on {}/{} nodes",
            kind.noun(),
            d.available_number,
            d.desired_number
        )
    });
    let msg = format!("{loader_msg}{}", plugin_msg.unwrap_or_default());
    let progressing = behind(loader) || plugin.is_some_and(|(_, d)| behind(d));
    let available = if progressing {
        condition(AVAILABLE, false, "NodesPending", msg.clone())
    } else if loader.desired_number == 0 {
        condition(AVAILABLE, true, "NoNodesTargeted", msg.clone())
    } else {
        condition(AVAILABLE, true, "AllNodesLoaded", msg.clone())
    };
    let progressing = if progressing {
        condition(PROGRESSING, true, "Loading", msg)
    } else {
        condition(PROGRESSING, false, "Complete", msg)
    };
    let degraded = match degraded {
        Some((reason, message)) => condition(DEGRADED, true, &reason, message),
        None => condition(
            DEGRADED,
            false,
            "NoErrors",
            "no node reports an error".into(),
        ),
    };
    vec![available, progressing, degraded]
}

/// The `ImagesReady` condition of a Module that builds or signs images.
pub fn images_ready_condition(ready: bool, reason: &str, message: String) -> Condition {
    condition(IMAGES_READY, ready, reason, message)
}

/// The `Unloading` condition of a deletion waiting for `nodes`.
pub fn unloading_condition(nodes: &[String]) -> Condition {
    condition(
        UNLOADING,
        true,
        "WaitingForNodes",
        format!(
            "waiting for {} node(s) to unload: {}",
            nodes.len(),
            nodes.join(", ")
        ),
    )
}

/// Stamps generation and transition times: a condition whose status did not
/// change keeps its old `lastTransitionTime`, so an unchanged fleet yields an
/// identical status (and no write).
pub fn stamp(
    mut conds: Vec<Condition>,
    old: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    for c in &mut conds {
        c.observed_generation = generation;
        c.last_transition_time = old
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
            .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
    }
    conds
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
