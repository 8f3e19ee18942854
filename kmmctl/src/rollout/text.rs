//! Text output of `kmmctl rollout status`: the rollout's summary, then one row per node.

use k8s_openapi::jiff::Timestamp;
use kmm_common::UpgradeState;

use super::report::{CordonedBy, NodeRow, RolloutReport};
use crate::explain::text::age;
use crate::table;

/// Header of the node table.
pub const HEADER: [&str; 6] = ["NODE", "STATE", "SINCE", "VERSION", "CORDONED", "MESSAGE"];

/// Renders `r` for a terminal (no trailing newline); `since` times get an age relative to
/// `now`.
pub fn render(r: &RolloutReport, now: Timestamp) -> String {
    let mut lines = vec![
        format!(
            "ModuleRollout {}/{}: Module {} to version {} (strategy {})",
            r.namespace,
            r.rollout,
            r.module,
            r.target_version
                .as_deref()
                .unwrap_or("(none: the Module sets no version)"),
            r.strategy
        ),
        field(
            "Paused",
            if r.paused {
                "yes: no new node starts"
            } else {
                "no"
            },
        ),
        field("Conditions", &conditions(r)),
        field(
            "Limits",
            &format!(
                "maxUnavailable {}, maxParallel {}, maxFailed {}",
                r.limits.max_unavailable, r.limits.max_parallel, r.limits.max_failed
            ),
        ),
        field("Nodes", &counts(r)),
        field(
            "Wave",
            &if r.wave.is_empty() {
                "none".to_string()
            } else {
                r.wave.join(", ")
            },
        ),
        String::new(),
    ];
    let rows: Vec<Vec<String>> = r.nodes.iter().map(|n| row(n, now)).collect();
    lines.push(table::render(&HEADER, &rows));
    lines.push(String::new());
    lines.push(tally_line(r));
    lines.join("\n")
}

/// `Key:` padded to the widest key, then the value.
fn field(key: &str, value: &str) -> String {
    format!("{:<12}{value}", format!("{key}:"))
}

fn conditions(r: &RolloutReport) -> String {
    if r.conditions.is_empty() {
        return "none reported by the controller yet".to_string();
    }
    r.conditions
        .iter()
        .map(|c| {
            let detail = match (c.reason.is_empty(), c.message.is_empty()) {
                (true, true) => String::new(),
                (false, true) => format!(" ({})", c.reason),
                (true, false) => format!(" ({})", c.message),
                (false, false) => format!(" ({}: {})", c.reason, c.message),
            };
            format!("{}={}{detail}", c.type_, c.status)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn counts(r: &RolloutReport) -> String {
    match &r.counts {
        None => "not reported by the controller yet".to_string(),
        Some(c) => format!(
            "{} total, {} required, {} in progress, {} done, {} failed, {} skipped, {} unavailable",
            c.total, c.required, c.in_progress, c.done, c.failed, c.skipped, c.unavailable
        ),
    }
}

fn row(n: &NodeRow, now: Timestamp) -> Vec<String> {
    let since = n
        .since
        .as_deref()
        .map(|s| match s.parse::<Timestamp>() {
            Ok(t) => age(now.duration_since(t).as_secs()),
            Err(_) => s.to_string(),
        })
        .unwrap_or_default();
    let cordoned = match n.cordoned {
        Some(CordonedBy::Rollout) => "by rollout",
        Some(CordonedBy::Other) => "not by rollout",
        None => "",
    };
    let mut message = n.message.clone().unwrap_or_default();
    if !n.in_scope {
        message = [message.as_str(), "(no longer in the rollout's scope)"]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
    }
    vec![
        n.node.clone(),
        n.state.clone(),
        since,
        n.version.clone().unwrap_or_default(),
        cordoned.to_string(),
        message,
    ]
}

/// `N nodes now: 1 done, 2 required` (from the node labels).
pub fn tally_line(r: &RolloutReport) -> String {
    // In the order a node goes through the states; values the label should not hold last.
    let known = UpgradeState::ALL.map(UpgradeState::as_str);
    let parts: Vec<String> = known
        .iter()
        .filter_map(|s| r.tally.get_key_value(*s))
        .chain(r.tally.iter().filter(|(s, _)| !known.contains(&s.as_str())))
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    let total: usize = r.tally.values().sum();
    format!(
        "{total} node{} now{}{}",
        if total == 1 { "" } else { "s" },
        if parts.is_empty() { "" } else { ": " },
        parts.join(", ")
    )
}

#[cfg(test)]
#[path = "text_tests.rs"]
mod tests;
