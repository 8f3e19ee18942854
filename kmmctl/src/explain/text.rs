//! Text output of `kmmctl explain`: one aligned block per node, then the summary line.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;

use super::report::{Explanation, NodeExplanation, NodeState, Summary};

/// Width of the row labels inside a node block.
const KEY_WIDTH: usize = 12;

/// Renders `e` for a terminal (no trailing newline); load times get an age relative to `now`.
pub fn render(e: &Explanation, now: Timestamp) -> String {
    let mut out = format!("Module {}/{}\n", e.module.namespace, e.module.name);
    let width = e.nodes.iter().map(|n| n.node.len()).max().unwrap_or(0);
    for n in &e.nodes {
        out.push('\n');
        block(&mut out, n, width, now);
    }
    out.push('\n');
    out.push_str(&summary_line(&e.summary));
    out
}

/// `N nodes: X loaded, Y pending, Z failing, W not targeted`.
pub fn summary_line(s: &Summary) -> String {
    format!(
        "{} node{}: {} loaded, {} pending, {} failing, {} not targeted",
        s.nodes,
        if s.nodes == 1 { "" } else { "s" },
        s.loaded,
        s.pending,
        s.failing,
        s.not_targeted
    )
}

/// `5s`, `3m`, `2h`, `4d` (kubectl style, one unit).
pub fn age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn since(rfc3339: &str, now: Timestamp) -> String {
    match rfc3339.parse::<Timestamp>() {
        Ok(t) => format!(
            ", since {rfc3339}, {} ago",
            age(now.duration_since(t).as_secs())
        ),
        Err(_) => format!(", since {rfc3339}"),
    }
}

fn block(out: &mut String, n: &NodeExplanation, width: usize, now: Timestamp) {
    let headline = if n.state == NodeState::Loaded {
        n.state.as_str().to_string()
    } else {
        format!("{} ({})", n.state.as_str(), n.reason)
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "{:<width$}  {headline}", n.node);
    let mut row = |key: &str, value: &str| {
        let _ = writeln!(out, "  {key:<KEY_WIDTH$} {value}");
    };
    row("kernel", n.kernel.as_deref().unwrap_or("(not reported)"));
    let applies = match (&n.target, &n.not_targeted) {
        (Some(t), _) => {
            let version = t
                .version
                .as_ref()
                .map(|v| format!(" (version {v})"))
                .unwrap_or_default();
            format!(
                "yes: kernelMappings[{}] -> {}{version}",
                t.mapping_index, t.image
            )
        }
        (None, Some(why)) => format!("no: {} ({})", why.message, why.reason),
        (None, None) => "no".to_string(),
    };
    row("applies", &applies);
    let loaded = match &n.loaded {
        Some(l) => {
            let digest = l
                .digest
                .as_ref()
                .map(|d| format!("@{d}"))
                .unwrap_or_default();
            let since = l
                .since
                .as_deref()
                .map(|s| since(s, now))
                .unwrap_or_default();
            format!("{}{digest} (kernel {}{since})", l.image, l.kernel)
        }
        None => "nothing".to_string(),
    };
    row("loaded", &loaded);
    let last_error = match &n.last_error {
        Some(e) => format!("{}: {}", e.reason, e.message),
        None => "none".to_string(),
    };
    row("last error", &last_error);
    let label = match (&n.ready_label.present, &n.ready_label.version) {
        (true, Some(v)) => format!("{} present (version.ready={v})", n.ready_label.key),
        (true, None) => format!("{} present", n.ready_label.key),
        (false, _) => format!("{} absent", n.ready_label.key),
    };
    row("ready label", &label);
    if n.state == NodeState::Pending {
        row("status", &n.message);
    }
    for note in &n.notes {
        row("note", note);
    }
}

#[cfg(test)]
#[path = "text_tests.rs"]
mod tests;
