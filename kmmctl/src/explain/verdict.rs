//! The per-node verdict: one Module, one Node and that node's `NodeModulesConfig` combined
//! into a [`NodeExplanation`]. Pure: no I/O, no clock; targeting is `kmm_common`'s.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kmm_common::nmc::{is_loaded, module_status};
use kmm_common::{
    Ineligible, Module, NodeModuleStatus, NodeModulesConfig, node_eligibility, node_kernel_version,
    ready_label, version_ready_label,
};

use super::report::{
    ErrorInfo, LabelInfo, Loaded, NodeExplanation, NodeState, NotTargeted, Summary, TargetInfo,
};

/// Reason code when the Module is loaded as the Module asks.
pub const REASON_LOADED: &str = "Loaded";
/// Reason code: the Module applies, the node has no `NodeModulesConfig` at all.
pub const REASON_NO_NMC: &str = "NoNodeModulesConfig";
/// Reason code: the Module applies, the agent has not reported it yet.
pub const REASON_NOT_REPORTED: &str = "NotReported";
/// Reason code: another image or kernel is loaded than the Module now resolves to.
pub const REASON_UPGRADING: &str = "Upgrading";
/// Reason code: the Module no longer applies but is still loaded.
pub const REASON_UNLOADING: &str = "Unloading";

/// Reason code: an ordered upgrade moved the Module to another version; the
/// node's version label still names the one it runs, which stays loaded.
pub const REASON_KEPT: &str = "KeptUntilVersionLabelMoves";
/// Reason code: a taint the Module does not tolerate keeps new loads off the
/// node; what is loaded stays (a cordon never unloads a driver).
pub const REASON_KEPT_TAINTED: &str = "KeptWhileTainted";

/// Stable code for an [`Ineligible`] reason (the `reason` of a not-targeted node).
pub fn ineligible_code(reason: &Ineligible) -> &'static str {
    match reason {
        Ineligible::NoModuleLoader => "NoModuleLoader",
        Ineligible::SelectorMismatch { .. } => "SelectorMismatch",
        Ineligible::NoKernelVersion => "NoKernelVersion",
        Ineligible::NoMatchingMapping { .. } => "NoKernelMapping",
        Ineligible::InvalidRegexp { .. } => "InvalidRegexp",
        Ineligible::MissingImage { .. } => "MissingImage",
        Ineligible::VersionMismatch { .. } => "VersionMismatch",
        Ineligible::UntoleratedTaint { .. } => "UntoleratedTaint",
    }
}

/// Why what is loaded stays although the Module does not apply now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    UntilVersionLabelMoves,
    WhileTainted,
}

/// Explains `module` on `node`, given the node's `NodeModulesConfig` (`None` when it has
/// none). Order of precedence: an error the agent reported wins (the node is failing even if
/// an older config is still loaded), then whether the Module applies, then what is loaded.
pub fn explain_node(
    module: &Module,
    node: &Node,
    nmc: Option<&NodeModulesConfig>,
) -> NodeExplanation {
    let namespace = module.metadata.namespace.as_deref().unwrap_or_default();
    let name = module.metadata.name.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let eligibility = node_eligibility(module, node);
    let entry = nmc.and_then(|n| module_status(n, namespace, name));

    let target = eligibility.as_ref().ok().map(|r| TargetInfo {
        mapping_index: r.mapping_index,
        image: r.container_image.clone(),
        kernel: r.kernel_version.clone(),
        version: r.version.clone(),
    });
    let not_targeted = eligibility.as_ref().err().map(|e| NotTargeted {
        reason: ineligible_code(e).to_string(),
        message: e.to_string(),
    });
    let loaded = entry.and_then(loaded_of);
    let last_error = entry
        .and_then(|e| e.last_error.as_ref())
        .map(|e| ErrorInfo {
            reason: e.reason.clone(),
            message: e.message.clone(),
        });
    let ready_key = ready_label(namespace, name);
    let ready = LabelInfo {
        present: labels.contains_key(&ready_key),
        key: ready_key,
        version: labels.get(&version_ready_label(namespace, name)).cloned(),
    };

    // As the agent: a version label naming another version (upstream's ordered upgrade) or
    // an untolerated taint keeps what runs.
    let kept = match eligibility {
        Err(Ineligible::VersionMismatch {
            actual: Some(_), ..
        }) => Some(Kept::UntilVersionLabelMoves),
        Err(Ineligible::UntoleratedTaint { .. }) => Some(Kept::WhileTainted),
        _ => None,
    };
    let (state, reason, message) = decide(
        target.as_ref(),
        not_targeted.as_ref(),
        loaded.as_ref(),
        last_error.as_ref(),
        nmc.is_some(),
        kept,
    );
    let mut notes = notes(state, loaded.as_ref(), &ready);
    if let Some(advice) = kmm_common::Reason::parse(&reason).and_then(kmm_common::Reason::advice) {
        notes.push(format!("what to do: {advice}"));
    }
    NodeExplanation {
        node: node.metadata.name.clone().unwrap_or_default(),
        kernel: node_kernel_version(node).map(str::to_string),
        state,
        reason,
        message,
        applies: target.is_some(),
        target,
        not_targeted,
        loaded,
        last_error,
        ready_label: ready,
        notes,
    }
}

/// Counts per state.
pub fn summarize(nodes: &[NodeExplanation]) -> Summary {
    let count = |s: NodeState| nodes.iter().filter(|n| n.state == s).count();
    Summary {
        nodes: nodes.len(),
        loaded: count(NodeState::Loaded),
        pending: count(NodeState::Pending),
        failing: count(NodeState::Failing),
        not_targeted: count(NodeState::NotTargeted),
    }
}

/// What the status entry says is loaded ([`is_loaded`], the controller's reading too):
/// the entry's image and kernel, else those of its `config`.
fn loaded_of(entry: &NodeModuleStatus) -> Option<Loaded> {
    if !is_loaded(entry) {
        return None;
    }
    let config = entry.config.as_ref();
    let pick = |a: &str, b: Option<&String>| match b {
        Some(b) if a.is_empty() => b.clone(),
        _ => a.to_string(),
    };
    Some(Loaded {
        image: pick(&entry.image, config.map(|c| &c.container_image)),
        digest: (!entry.digest.is_empty()).then(|| entry.digest.clone()),
        kernel: pick(&entry.kernel, config.map(|c| &c.kernel_version)),
        since: entry
            .load_time
            .as_ref()
            .or(entry.last_transition_time.as_ref())
            .map(|t| t.0.to_string()),
    })
}

fn decide(
    target: Option<&TargetInfo>,
    not_targeted: Option<&NotTargeted>,
    loaded: Option<&Loaded>,
    last_error: Option<&ErrorInfo>,
    has_nmc: bool,
    kept: Option<Kept>,
) -> (NodeState, String, String) {
    if let Some(err) = last_error {
        // The controller is building or signing the image: progress, not failure.
        let state = if err.reason == kmm_common::REASON_WAITING_FOR_IMAGE {
            NodeState::Pending
        } else {
            NodeState::Failing
        };
        return (state, err.reason.clone(), err.message.clone());
    }
    match (target, not_targeted, loaded) {
        (Some(t), _, Some(l)) if l.image == t.image && l.kernel == t.kernel => (
            NodeState::Loaded,
            REASON_LOADED.into(),
            format!("{} is loaded", t.image),
        ),
        (Some(t), _, Some(l)) => (
            NodeState::Pending,
            REASON_UPGRADING.into(),
            format!(
                "{} (kernel {}) is loaded, the Module now resolves to {} (kernel {})",
                l.image, l.kernel, t.image, t.kernel
            ),
        ),
        (Some(t), _, None) if !has_nmc => (
            NodeState::Pending,
            REASON_NO_NMC.into(),
            format!(
                "should load {}, but the node has no NodeModulesConfig (is kmm-agent running there?)",
                t.image
            ),
        ),
        (Some(t), _, None) => (
            NodeState::Pending,
            REASON_NOT_REPORTED.into(),
            format!(
                "should load {}; the agent has not reported it loaded yet",
                t.image
            ),
        ),
        (None, why, Some(l)) if kept.is_some() => {
            let why = why.map(|w| w.message.as_str()).unwrap_or_default();
            match kept {
                Some(Kept::WhileTainted) => (
                    NodeState::Loaded,
                    REASON_KEPT_TAINTED.into(),
                    format!("{} stays loaded ({why})", l.image),
                ),
                _ => (
                    NodeState::Loaded,
                    REASON_KEPT.into(),
                    format!(
                        "{} stays loaded until the version label moves ({why})",
                        l.image
                    ),
                ),
            }
        }
        (None, why, Some(l)) => (
            NodeState::Pending,
            REASON_UNLOADING.into(),
            format!(
                "{} is still loaded but the Module no longer applies ({})",
                l.image,
                why.map(|w| w.message.as_str()).unwrap_or_default()
            ),
        ),
        (None, why, None) => (
            NodeState::NotTargeted,
            why.map(|w| w.reason.clone()).unwrap_or_default(),
            why.map(|w| w.message.clone()).unwrap_or_default(),
        ),
    }
}

/// Disagreements between the node label and the status worth pointing out.
fn notes(state: NodeState, loaded: Option<&Loaded>, ready: &LabelInfo) -> Vec<String> {
    let mut out = Vec::new();
    if loaded.is_some() && !ready.present {
        out.push(format!(
            "status says loaded but the node has no label {}",
            ready.key
        ));
    }
    if loaded.is_none() && ready.present {
        out.push(format!(
            "node has label {} but its status reports nothing loaded",
            ready.key
        ));
    }
    if state == NodeState::Failing && loaded.is_some() {
        out.push(
            "an earlier config is still loaded (see loaded) while the latest attempt fails".into(),
        );
    }
    out
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
