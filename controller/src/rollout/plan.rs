//! The rollout planner, pure: from the nodes (labels, annotations, cordon, boot ID), what the
//! API says about their Pods and validation Jobs, the policy and the time, it decides each
//! node's next step and the rollout's counts. Everything it reads lives in the API, so a new
//! leader plans exactly what the old one would have.
//!
//! A node moves `required → cordoned → waiting-for-pods → evicting → upgrading` (or
//! `rebooting`) `→ validating → uncordoning → done`, skipping the steps the policy does not
//! ask for, one step per pass; `failed` and `skip` are left alone. A node starts only within
//! the budget ([`start_allowed`]).

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kmm_common::{
    NodeBlocker, NodeCounts, REBOOT_REQUIRED_LABEL, RolloutStrategy, UpgradeState, ready_label,
    upgrade_boot_id_annotation, upgrade_cordoned_annotation, upgrade_message_annotation,
    upgrade_since_annotation, upgrade_state_label, version_module_label, version_ready_label,
};

use super::policy::{Policy, max_unavailable};

/// One node as the planner sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Node uid (events name it: `kubectl describe node` finds events by uid).
    pub uid: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// `status.nodeInfo.bootID`.
    pub boot_id: String,
    /// The Module targets it apart from the version (selector, kernel mapping) and it matches
    /// the rollout's `nodeSelector`.
    pub in_scope: bool,
}

/// A Pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The node's validation Job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JobFact {
    /// Not there.
    #[default]
    Absent,
    /// Made before the node entered `validating` (an earlier attempt): deleted, then made anew.
    Stale,
    /// Running.
    Active,
    /// Passed.
    Succeeded,
    /// Failed, with the Job's reason.
    Failed(String),
}

/// What the API says about one node in progress (read only for nodes whose state needs it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// `waitForPods` Pods on the node, not finished.
    pub waiting_pods: Vec<PodRef>,
    /// `eviction` Pods on the node, not finished, not being deleted, neither DaemonSet nor
    /// mirror Pods.
    pub evict_pods: Vec<PodRef>,
    /// `eviction` Pods on the node being deleted (evicted, waiting for them to go).
    pub terminating_pods: Vec<PodRef>,
    /// The validation Job.
    pub job: JobFact,
}

/// Everything one pass decides from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The Module's namespace.
    pub namespace: &'a str,
    /// The Module's name.
    pub module: &'a str,
    /// The resolved policy.
    pub policy: &'a Policy,
    /// Nodes carrying the Module's `version-module` label.
    pub nodes: &'a [NodeView],
    /// Facts of the nodes in progress, by name.
    pub facts: &'a BTreeMap<String, NodeFacts>,
    /// Now.
    pub now: Timestamp,
}

/// One Node patch: the state label and `upgrade-since` move together; `None` leaves a field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodePatch {
    /// New `upgrade-state` (with `upgrade-since` = now).
    pub state: Option<UpgradeState>,
    /// `upgrade-message`: `Some(None)` removes it.
    pub message: Option<Option<String>>,
    /// `spec.unschedulable`.
    pub unschedulable: Option<bool>,
    /// `upgrade-cordoned`: set (`true`) or removed (`false`).
    pub cordoned_annotation: Option<bool>,
    /// New `version-module` label value.
    pub version: Option<String>,
    /// [`REBOOT_REQUIRED_LABEL`]: set (`true`) or removed (`false`).
    pub reboot_required: Option<bool>,
    /// `upgrade-boot-id`: `Some(None)` removes it.
    pub boot_id: Option<Option<String>>,
    /// Removes `upgrade-state` and `upgrade-since` (no rollout drives the node any more).
    pub clear_state: bool,
}

impl NodePatch {
    /// The merge patch body (labels and annotations by key, `null` removes).
    pub fn to_json(&self, ns: &str, module: &str, now: Timestamp) -> serde_json::Value {
        let mut labels = serde_json::Map::new();
        let mut annotations = serde_json::Map::new();
        if let Some(state) = self.state {
            labels.insert(upgrade_state_label(ns, module), state.as_str().into());
            annotations.insert(upgrade_since_annotation(ns, module), rfc3339(now).into());
        }
        if self.clear_state {
            labels.insert(upgrade_state_label(ns, module), serde_json::Value::Null);
            annotations.insert(
                upgrade_since_annotation(ns, module),
                serde_json::Value::Null,
            );
        }
        if let Some(message) = &self.message {
            annotations.insert(
                upgrade_message_annotation(ns, module),
                message.clone().into(),
            );
        }
        if let Some(set) = self.cordoned_annotation {
            annotations.insert(
                upgrade_cordoned_annotation(ns, module),
                set.then_some("true").into(),
            );
        }
        if let Some(v) = &self.version {
            labels.insert(version_module_label(ns, module), v.clone().into());
        }
        if let Some(set) = self.reboot_required {
            let value = format!("{ns}.{module}");
            labels.insert(REBOOT_REQUIRED_LABEL.into(), set.then_some(value).into());
        }
        if let Some(id) = &self.boot_id {
            annotations.insert(upgrade_boot_id_annotation(ns, module), id.clone().into());
        }
        let mut patch = serde_json::json!({
            "metadata": {"labels": labels, "annotations": annotations},
        });
        if let Some(u) = self.unschedulable {
            patch["spec"] = serde_json::json!({"unschedulable": u});
        }
        patch
    }
}

/// What deleting ModuleRollout `rollout` of Module `ns/module` leaves on one of the Module's
/// nodes (its labels and annotations): a node it cordoned is uncordoned; a node waiting its
/// turn or in progress loses its `upgrade-state`, boot ID and `reboot-required` (no rollout
/// drives it any more; what its version label says stays), with a message saying so. `done`,
/// `failed` and the admin's `skip` stay as a record. `None`: nothing to change.
pub fn release(
    ns: &str,
    module: &str,
    rollout: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<NodePatch> {
    let keys = Keys::new(ns, module);
    let state = labels.get(&keys.state).and_then(|v| UpgradeState::parse(v));
    let driven = state.filter(|s| *s == UpgradeState::Required || s.in_progress());
    let cordoned = annotations.contains_key(&keys.cordoned);
    if driven.is_none() && !cordoned {
        return None;
    }
    let mut patch = NodePatch::default();
    if cordoned {
        patch.unschedulable = Some(false);
        patch.cordoned_annotation = Some(false);
    }
    if let Some(state) = driven {
        patch.clear_state = true;
        patch.boot_id = Some(None);
        if labels.get(REBOOT_REQUIRED_LABEL) == Some(&format!("{ns}.{module}")) {
            patch.reboot_required = Some(false);
        }
        let cordon = if cordoned { "; uncordoned" } else { "" };
        patch.message = Some(Some(format!(
            "ModuleRollout {rollout} was deleted while the node was {state}{cordon}"
        )));
    }
    Some(patch)
}

/// `upgrade-since`'s format: RFC 3339, whole seconds, UTC.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Calls a node's step needs besides its patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// POST `pods/eviction` for each (a PodDisruptionBudget may refuse).
    Evict(Vec<PodRef>),
    /// `eviction.force` after the timeout: delete them.
    Delete(Vec<PodRef>),
    /// Create the node's validation Job.
    CreateJob,
    /// Delete the node's validation Job of an earlier attempt.
    DeleteJob,
}

/// A Kubernetes Event for a node's transition (on the Node and on the ModuleRollout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    /// `UpgradeStarted`, `NodeUpgraded`, ...
    pub reason: &'static str,
    /// Human text, naming the node.
    pub note: String,
    /// Warning rather than Normal.
    pub warning: bool,
}

impl NodeEvent {
    /// As a Kubernetes Event (action `Rollout`).
    pub fn to_kube(&self) -> kube::runtime::events::Event {
        use kube::runtime::events::{Event, EventType};
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.into(),
            note: Some(self.note.clone()),
            action: "Rollout".into(),
            secondary: None,
        }
    }
}

/// What to do for one node this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAction {
    /// The node.
    pub node: String,
    /// Its patch (nothing when `None`).
    pub patch: Option<NodePatch>,
    /// A call to make.
    pub effect: Option<Effect>,
    /// The transition's event.
    pub event: Option<NodeEvent>,
    /// The node starts now (applied after every other node's step, so a node freed this
    /// pass is written before the one that takes its place).
    pub starts: bool,
}

/// The pass's decisions and the rollout's state after them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Per-node actions, steps of nodes in progress first, then starts.
    pub actions: Vec<NodeAction>,
    /// Nodes per state.
    pub counts: NodeCounts,
    /// Nodes in progress.
    pub wave: Vec<String>,
    /// Nodes waiting on something, or failed, and why.
    pub blocked: Vec<NodeBlocker>,
    /// The failure limit is reached: nothing starts.
    pub stopped: bool,
    /// No node is required or in progress.
    pub complete: bool,
    /// `maxUnavailable` resolved for this scope.
    pub max_unavailable: usize,
}

/// Whether one more node may start: not paused, below the failure limit and `maxParallel`,
/// and the nodes not ready for the Module stay within `maxUnavailable` (a node that is not
/// ready already costs nothing more).
pub fn start_allowed(
    policy: &Policy,
    counts: &NodeCounts,
    max_unavailable: usize,
    node_available: bool,
) -> bool {
    let n = |v: i32| usize::try_from(v).unwrap_or(0);
    !policy.paused
        && n(counts.failed) < policy.max_failed
        && n(counts.in_progress) < policy.max_parallel
        && n(counts.unavailable) + usize::from(node_available) <= max_unavailable
}

struct Keys {
    state: String,
    version: String,
    version_ready: String,
    ready: String,
    since: String,
    message: String,
    cordoned: String,
    boot_id: String,
}

impl Keys {
    fn new(ns: &str, module: &str) -> Self {
        Self {
            state: upgrade_state_label(ns, module),
            version: version_module_label(ns, module),
            version_ready: version_ready_label(ns, module),
            ready: ready_label(ns, module),
            since: upgrade_since_annotation(ns, module),
            message: upgrade_message_annotation(ns, module),
            cordoned: upgrade_cordoned_annotation(ns, module),
            boot_id: upgrade_boot_id_annotation(ns, module),
        }
    }
}

/// One node's place, read from its labels.
struct Read<'a> {
    node: &'a NodeView,
    state: Option<UpgradeState>,
    on_target: bool,
    loaded_target: bool,
    ready: bool,
}

impl<'a> Read<'a> {
    fn new(node: &'a NodeView, keys: &Keys, target: &str) -> Self {
        let label = |k: &str| node.labels.get(k).map(String::as_str);
        Self {
            node,
            state: label(&keys.state).and_then(UpgradeState::parse),
            on_target: label(&keys.version) == Some(target),
            loaded_target: label(&keys.version_ready) == Some(target),
            ready: node.labels.contains_key(&keys.ready),
        }
    }

    /// Ready for the Module: loaded and not between cordon and done.
    fn available(&self, state: Option<UpgradeState>) -> bool {
        self.ready && !state.is_some_and(UpgradeState::in_progress)
    }
}

/// Plans one pass. Nodes out of scope (or without the version label) are not in `nodes`'
/// scope and are left alone.
pub fn plan(input: &Input<'_>) -> Plan {
    let policy = input.policy;
    let keys = Keys::new(input.namespace, input.module);
    let mut nodes: Vec<&NodeView> = input
        .nodes
        .iter()
        .filter(|n| n.in_scope && n.labels.contains_key(&keys.version))
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let max_unavailable = max_unavailable(policy.max_unavailable, nodes.len());
    let no_facts = NodeFacts::default();

    let mut actions = Vec::new();
    // State and availability of each node after this pass's steps.
    let mut after: Vec<(Read<'_>, Option<UpgradeState>, Option<String>)> = Vec::new();
    for node in nodes {
        let read = Read::new(node, &keys, &policy.target);
        let facts = input.facts.get(&node.name).unwrap_or(&no_facts);
        let (action, state, wait) = step(&read, facts, policy, &keys, input.now);
        if let Some(a) = action {
            actions.push(a);
        }
        after.push((read, state, wait));
    }

    let mut counts = tally(&after);
    let mut starts = Vec::new();
    for (read, state, _) in &mut after {
        // A node whose label the admin already moved is the agent's to finish.
        if *state != Some(UpgradeState::Required)
            || read.on_target
            || !start_allowed(policy, &counts, max_unavailable, read.available(*state))
        {
            continue;
        }
        let available = read.available(*state);
        // Its start patch replaces a `required` label planned above.
        actions.retain(|a: &NodeAction| a.node != read.node.name);
        let action = start(read, policy);
        *state = Some(UpgradeState::Cordoned);
        counts.required -= 1;
        counts.in_progress += 1;
        counts.unavailable += i32::from(available);
        starts.push(action);
    }
    actions.extend(starts);

    let stopped = usize::try_from(counts.failed).unwrap_or(0) >= policy.max_failed;
    let complete = counts.required == 0 && counts.in_progress == 0;
    let mut wave = Vec::new();
    let mut blocked = Vec::new();
    for (read, state, wait) in &after {
        let Some(state) = *state else { continue };
        if state.in_progress() {
            wave.push(read.node.name.clone());
        }
        let message = match state {
            UpgradeState::Failed => wait
                .clone()
                .or_else(|| read.node.annotations.get(&keys.message).cloned()),
            s if s.in_progress() => wait.clone(),
            _ => None,
        };
        if let Some(message) = message {
            blocked.push(NodeBlocker {
                node: read.node.name.clone(),
                state: state.as_str().into(),
                message,
            });
        }
    }
    Plan {
        actions,
        counts,
        wave,
        blocked,
        stopped,
        complete,
        max_unavailable,
    }
}

fn tally(after: &[(Read<'_>, Option<UpgradeState>, Option<String>)]) -> NodeCounts {
    let mut c = NodeCounts::default();
    for (read, state, _) in after {
        c.total += 1;
        match state {
            Some(UpgradeState::Done) => c.done += 1,
            Some(UpgradeState::Failed) => c.failed += 1,
            Some(UpgradeState::Skip) => c.skipped += 1,
            Some(s) if s.in_progress() => c.in_progress += 1,
            _ => c.required += 1,
        }
        c.unavailable += i32::from(!read.available(*state));
    }
    c
}

/// The step of one node: its action, its state after it, and what it waits for.
fn step(
    read: &Read<'_>,
    facts: &NodeFacts,
    policy: &Policy,
    keys: &Keys,
    now: Timestamp,
) -> (Option<NodeAction>, Option<UpgradeState>, Option<String>) {
    let node = read.node;
    let state = read.state;
    let quiet = |to: UpgradeState| {
        let action = NodeAction {
            node: node.name.clone(),
            patch: Some(NodePatch {
                state: Some(to),
                ..NodePatch::default()
            }),
            effect: None,
            event: None,
            starts: false,
        };
        (Some(action), Some(to), None)
    };
    match state {
        Some(UpgradeState::Skip | UpgradeState::Failed) => (None, state, None),
        Some(s) if s.in_progress() => in_progress(read, s, facts, policy, keys, now),
        // Not started (or done for an earlier version).
        _ if read.on_target => {
            if read.loaded_target && read.ready {
                if state == Some(UpgradeState::Done) {
                    (None, state, None)
                } else {
                    // Already on the target (upgraded by hand, or never behind).
                    quiet(UpgradeState::Done)
                }
            } else {
                // The admin moved the label: the agent swaps it, nothing to drain now.
                (None, state.or(Some(UpgradeState::Required)), None)
            }
        }
        Some(UpgradeState::Required) => (None, state, None),
        _ => quiet(UpgradeState::Required),
    }
}

fn elapsed(node: &NodeView, keys: &Keys, now: Timestamp) -> i64 {
    node.annotations
        .get(&keys.since)
        .and_then(|s| s.parse::<Timestamp>().ok())
        .map_or(0, |since| {
            now.duration_since(since)
                .max(SignedDuration::ZERO)
                .as_secs()
        })
}

fn start(read: &Read<'_>, policy: &Policy) -> NodeAction {
    let node = read.node;
    // An admin's cordon is neither claimed nor ever lifted.
    let cordon = policy.cordon && !node.unschedulable;
    NodeAction {
        node: node.name.clone(),
        patch: Some(NodePatch {
            state: Some(UpgradeState::Cordoned),
            message: Some(None),
            unschedulable: cordon.then_some(true),
            cordoned_annotation: cordon.then_some(true),
            ..NodePatch::default()
        }),
        effect: None,
        event: Some(NodeEvent {
            reason: "UpgradeStarted",
            note: format!(
                "node {} starts its upgrade to {}{}",
                node.name,
                policy.target,
                if cordon { " (cordoned)" } else { "" }
            ),
            warning: false,
        }),
        starts: true,
    }
}

/// The state after `from` that the policy asks for.
fn next_state(from: UpgradeState, policy: &Policy) -> UpgradeState {
    use UpgradeState as S;
    let swap = match policy.strategy {
        RolloutStrategy::Unload => S::Upgrading,
        RolloutStrategy::Reboot => S::Rebooting,
    };
    let validate = policy.plugin_ready_label.is_some() || policy.validation_job;
    let order = [
        (S::WaitingForPods, policy.wait_for_pods.is_some()),
        (S::Evicting, policy.eviction.is_some()),
        (swap, true),
        (S::Validating, validate),
        (S::Uncordoning, true),
        (S::Done, true),
    ];
    let rank = |s: S| match s {
        S::Cordoned => 0,
        S::WaitingForPods => 1,
        S::Evicting => 2,
        S::Upgrading | S::Rebooting => 3,
        S::Validating => 4,
        S::Uncordoning => 5,
        _ => 6,
    };
    order
        .into_iter()
        .find(|(s, wanted)| *wanted && rank(*s) > rank(from))
        .map_or(S::Done, |(s, _)| s)
}

/// The patch and event that move `read`'s node from `from` into the next state.
fn advance(
    read: &Read<'_>,
    from: UpgradeState,
    policy: &Policy,
    keys: &Keys,
) -> (NodeAction, UpgradeState) {
    use UpgradeState as S;
    let node = read.node;
    let to = next_state(from, policy);
    let mut patch = NodePatch {
        state: Some(to),
        message: Some(None),
        ..NodePatch::default()
    };
    if from == S::Rebooting {
        patch.reboot_required = Some(false);
        patch.boot_id = Some(None);
    }
    let (reason, note) = match to {
        S::WaitingForPods => (
            "NodeWaitingForPods",
            format!(
                "node {}: waiting for the selected Pods to finish",
                node.name
            ),
        ),
        S::Evicting => (
            "NodeEvicting",
            format!("node {}: evicting the selected Pods", node.name),
        ),
        S::Upgrading => {
            patch.version = Some(policy.target.clone());
            (
                "NodeUpgrading",
                format!(
                    "node {}: version label moved to {}, the agent swaps the module",
                    node.name, policy.target
                ),
            )
        }
        S::Rebooting => {
            patch.version = Some(policy.target.clone());
            patch.reboot_required = Some(true);
            patch.boot_id = Some(Some(node.boot_id.clone()));
            (
                "NodeRebootRequired",
                format!(
                    "node {}: marked {REBOOT_REQUIRED_LABEL}; it boots into {}",
                    node.name, policy.target
                ),
            )
        }
        S::Validating => (
            "NodeValidating",
            format!("node {}: validating {}", node.name, policy.target),
        ),
        S::Uncordoning => {
            let ours = node.annotations.contains_key(&keys.cordoned);
            if ours {
                patch.unschedulable = Some(false);
                patch.cordoned_annotation = Some(false);
            }
            (
                "NodeUncordoning",
                format!(
                    "node {}: {}",
                    node.name,
                    if ours {
                        "uncordoned"
                    } else {
                        "left as the rollout found it (not cordoned by it)"
                    }
                ),
            )
        }
        _ => (
            "NodeUpgraded",
            format!("node {} runs {}", node.name, policy.target),
        ),
    };
    let action = NodeAction {
        node: node.name.clone(),
        patch: Some(patch),
        effect: None,
        event: Some(NodeEvent {
            reason,
            note,
            warning: false,
        }),
        starts: false,
    };
    (action, to)
}

fn fail(
    read: &Read<'_>,
    why: String,
) -> (Option<NodeAction>, Option<UpgradeState>, Option<String>) {
    let node = read.node;
    let action = NodeAction {
        node: node.name.clone(),
        patch: Some(NodePatch {
            state: Some(UpgradeState::Failed),
            message: Some(Some(why.clone())),
            ..NodePatch::default()
        }),
        effect: None,
        event: Some(NodeEvent {
            reason: "NodeUpgradeFailed",
            note: format!("node {}: {why}", node.name),
            warning: true,
        }),
        starts: false,
    };
    (Some(action), Some(UpgradeState::Failed), Some(why))
}

/// Stays in `state`, waiting for `why`; the message annotation follows it.
fn wait(
    read: &Read<'_>,
    state: UpgradeState,
    keys: &Keys,
    why: String,
    effect: Option<Effect>,
) -> (Option<NodeAction>, Option<UpgradeState>, Option<String>) {
    let current = read.node.annotations.get(&keys.message);
    let patch = (current != Some(&why)).then(|| NodePatch {
        message: Some(Some(why.clone())),
        ..NodePatch::default()
    });
    let action = (patch.is_some() || effect.is_some()).then(|| NodeAction {
        node: read.node.name.clone(),
        patch,
        effect,
        event: None,
        starts: false,
    });
    (action, Some(state), Some(why))
}

fn names(pods: &[PodRef]) -> String {
    const SHOWN: usize = 3;
    let mut s: Vec<String> = pods.iter().take(SHOWN).map(ToString::to_string).collect();
    if pods.len() > SHOWN {
        s.push(format!("and {} more", pods.len() - SHOWN));
    }
    s.join(", ")
}

fn in_progress(
    read: &Read<'_>,
    state: UpgradeState,
    facts: &NodeFacts,
    policy: &Policy,
    keys: &Keys,
    now: Timestamp,
) -> (Option<NodeAction>, Option<UpgradeState>, Option<String>) {
    use UpgradeState as S;
    let node = read.node;
    let elapsed = elapsed(node, keys, now);
    let timed_out = |limit: i64| limit > 0 && elapsed >= limit;
    let go = || {
        let (action, to) = advance(read, state, policy, keys);
        (Some(action), Some(to), None)
    };
    match state {
        S::Cordoned | S::Uncordoning => go(),
        S::WaitingForPods => {
            let limit = policy.wait_for_pods.unwrap_or(0);
            if facts.waiting_pods.is_empty() || timed_out(limit) {
                go()
            } else {
                let why = format!(
                    "waiting for {} Pod(s) to finish: {}",
                    facts.waiting_pods.len(),
                    names(&facts.waiting_pods)
                );
                wait(read, state, keys, why, None)
            }
        }
        S::Evicting => {
            let (limit, force) = policy.eviction.unwrap_or((0, false));
            if facts.evict_pods.is_empty() && facts.terminating_pods.is_empty() {
                return go();
            }
            // Why evictions were refused (the executor writes it).
            let refused = node.annotations.get(&keys.message).cloned();
            if timed_out(limit) {
                if !force {
                    let why = format!(
                        "Pods not evicted within {limit}s: {}",
                        refused.unwrap_or_else(|| names(&facts.evict_pods))
                    );
                    return fail(read, why);
                }
                if !facts.evict_pods.is_empty() {
                    let why = format!(
                        "eviction timed out after {limit}s; deleting {}",
                        names(&facts.evict_pods)
                    );
                    let effect = Effect::Delete(facts.evict_pods.clone());
                    return wait(read, state, keys, why, Some(effect));
                }
            }
            if facts.evict_pods.is_empty() {
                let why = format!(
                    "waiting for {} evicted Pod(s) to go: {}",
                    facts.terminating_pods.len(),
                    names(&facts.terminating_pods)
                );
                return wait(read, state, keys, why, None);
            }
            // The executor records the outcome (a refusal names the budget).
            let action = NodeAction {
                node: node.name.clone(),
                patch: None,
                effect: Some(Effect::Evict(facts.evict_pods.clone())),
                event: None,
                starts: false,
            };
            let why = refused.unwrap_or_else(|| format!("evicting {}", names(&facts.evict_pods)));
            (Some(action), Some(state), Some(why))
        }
        S::Upgrading => {
            if read.loaded_target && read.ready {
                go()
            } else if timed_out(policy.timeout_seconds) {
                fail(
                    read,
                    format!(
                        "the node did not report {} loaded within {}s",
                        policy.target, policy.timeout_seconds
                    ),
                )
            } else {
                let why = format!("waiting for the agent to load {}", policy.target);
                wait(read, state, keys, why, None)
            }
        }
        S::Rebooting => {
            let recorded = node.annotations.get(&keys.boot_id).map(String::as_str);
            let rebooted = recorded.is_some_and(|id| id != node.boot_id);
            if rebooted && read.loaded_target && read.ready {
                go()
            } else if timed_out(policy.timeout_seconds) {
                fail(
                    read,
                    format!(
                        "the node did not boot into {} within {}s",
                        policy.target, policy.timeout_seconds
                    ),
                )
            } else {
                let why = if rebooted {
                    format!("rebooted; waiting for {} to be loaded", policy.target)
                } else {
                    format!("waiting for a reboot (boot ID {})", recorded.unwrap_or("?"))
                };
                wait(read, state, keys, why, None)
            }
        }
        S::Validating => validating(read, facts, policy, keys, timed_out(policy.timeout_seconds)),
        // Not in progress: handled by `step`.
        _ => (None, Some(state), None),
    }
}

fn validating(
    read: &Read<'_>,
    facts: &NodeFacts,
    policy: &Policy,
    keys: &Keys,
    timed_out: bool,
) -> (Option<NodeAction>, Option<UpgradeState>, Option<String>) {
    let state = UpgradeState::Validating;
    if let JobFact::Failed(why) = &facts.job
        && policy.validation_job
    {
        return fail(read, format!("validation Job failed: {why}"));
    }
    let plugin_waiting = policy
        .plugin_ready_label
        .as_ref()
        .filter(|l| !read.node.labels.contains_key(*l));
    let (job_waiting, effect) = if policy.validation_job {
        match facts.job {
            JobFact::Succeeded => (false, None),
            JobFact::Absent => (true, Some(Effect::CreateJob)),
            JobFact::Stale => (true, Some(Effect::DeleteJob)),
            _ => (true, None),
        }
    } else {
        (false, None)
    };
    if plugin_waiting.is_none() && !job_waiting {
        let (action, to) = advance(read, state, policy, keys);
        return (Some(action), Some(to), None);
    }
    let why = match plugin_waiting {
        Some(label) => format!("waiting for the plugin Pod to be Ready ({label})"),
        None => "waiting for the validation Job".to_string(),
    };
    if timed_out {
        return fail(
            read,
            format!(
                "validation did not pass within {}s: {why}",
                policy.timeout_seconds
            ),
        );
    }
    wait(read, state, keys, why, effect)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
