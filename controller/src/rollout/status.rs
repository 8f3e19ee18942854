//! The ModuleRollout's status from a plan (or from why the policy is invalid), pure, and the
//! rollout-level events its changes call for.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_common::ModuleRolloutStatus;

use super::plan::Plan;
use super::policy::Policy;
use crate::status::{condition as cond, stamp};

/// Condition types.
pub const PROGRESSING: &str = "Progressing";
/// See [`PROGRESSING`].
pub const PAUSED: &str = "Paused";
/// See [`PROGRESSING`].
pub const STOPPED: &str = "Stopped";
/// See [`PROGRESSING`].
pub const COMPLETE: &str = "Complete";

/// The status of a pass that planned `plan`.
pub fn of_plan(
    plan: &Plan,
    policy: &Policy,
    old: &ModuleRolloutStatus,
    generation: Option<i64>,
    now: &Time,
) -> ModuleRolloutStatus {
    let c = &plan.counts;
    let summary = format!(
        "{} of {} node(s) on {} ({} in progress, {} required, {} failed, {} skipped; maxUnavailable {})",
        c.done,
        c.total,
        policy.target,
        c.in_progress,
        c.required,
        c.failed,
        c.skipped,
        plan.max_unavailable
    );
    let failed: Vec<&str> = plan
        .blocked
        .iter()
        .filter(|b| b.state == "failed")
        .map(|b| b.node.as_str())
        .collect();
    let stopped_msg = format!(
        "{} node(s) failed, maxFailed is {}: no node starts until one is retried ({})",
        c.failed,
        policy.max_failed,
        failed.join(", ")
    );
    let progressing = !plan.complete && !plan.stopped && !policy.paused;
    let (p_reason, p_msg) = if progressing {
        ("NodesUpgrading", summary.clone())
    } else if plan.complete {
        ("Complete", summary.clone())
    } else if plan.stopped {
        ("FailureLimit", stopped_msg.clone())
    } else {
        ("Paused", "spec.paused is true: no node starts".into())
    };
    let conditions = vec![
        cond(PROGRESSING, progressing, p_reason, p_msg),
        cond(
            PAUSED,
            policy.paused,
            if policy.paused { "Paused" } else { "Running" },
            if policy.paused {
                "spec.paused is true: no node starts; nodes in progress finish their step".into()
            } else {
                String::new()
            },
        ),
        cond(
            STOPPED,
            plan.stopped,
            if plan.stopped {
                "FailureLimit"
            } else {
                "BelowFailureLimit"
            },
            if plan.stopped {
                stopped_msg
            } else {
                String::new()
            },
        ),
        cond(
            COMPLETE,
            plan.complete,
            if plan.complete {
                "AllNodesDone"
            } else {
                "NodesRemaining"
            },
            summary,
        ),
    ];
    ModuleRolloutStatus {
        target_version: Some(policy.target.clone()),
        nodes: plan.counts.clone(),
        wave: plan.wave.clone(),
        blocked: plan.blocked.clone(),
        conditions: stamp(conditions, &old.conditions, generation, now),
        observed_generation: generation,
    }
}

/// The status when the policy cannot run: `Stopped` with reason `InvalidPolicy` and the
/// sentence saying what; the node counts are kept from before (no node was read).
pub fn of_invalid(
    why: &str,
    old: &ModuleRolloutStatus,
    generation: Option<i64>,
    now: &Time,
) -> ModuleRolloutStatus {
    let conditions = vec![
        cond(PROGRESSING, false, "InvalidPolicy", why.into()),
        cond(STOPPED, true, "InvalidPolicy", why.into()),
    ];
    ModuleRolloutStatus {
        target_version: None,
        nodes: old.nodes.clone(),
        wave: Vec::new(),
        blocked: Vec::new(),
        conditions: stamp(conditions, &old.conditions, generation, now),
        observed_generation: generation,
    }
}

/// A rollout-level event: reason, note, warning.
pub type RolloutEvent = (&'static str, String, bool);

/// Events for what changed between `old` and `new`: `InvalidRollout`, `RolloutStopped`,
/// `RolloutComplete` (each once per change, read from the stored status, so a new leader does
/// not repeat them).
pub fn events(old: &ModuleRolloutStatus, new: &ModuleRolloutStatus) -> Vec<RolloutEvent> {
    let find = |s: &ModuleRolloutStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status == "True", c.reason.clone(), c.message.clone()))
    };
    let mut out = Vec::new();
    let (old_stop, new_stop) = (find(old, STOPPED), find(new, STOPPED));
    if let Some((true, reason, message)) = &new_stop
        && old_stop.as_ref() != new_stop.as_ref()
    {
        if reason == "InvalidPolicy" {
            out.push(("InvalidRollout", message.clone(), true));
        } else if !old_stop.is_some_and(|(on, r, _)| on && r == *reason) {
            out.push(("RolloutStopped", message.clone(), true));
        }
    }
    let done = |s: &ModuleRolloutStatus| find(s, COMPLETE).is_some_and(|c| c.0);
    if done(new) && (!done(old) || old.target_version != new.target_version) {
        out.push((
            "RolloutComplete",
            find(new, COMPLETE).map(|c| c.2).unwrap_or_default(),
            false,
        ));
    }
    out
}
