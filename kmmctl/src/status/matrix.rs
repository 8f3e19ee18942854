//! Text output of `kmmctl status`: per Module a summary row, then the node × Module matrix
//! (one row per node, one column per Module), then every failing cell with the agent's
//! message. Columns as kubectl aligns them ([`crate::table`]).

use std::collections::BTreeMap;

use crate::explain::report::{Explanation, NodeExplanation, NodeState};
use crate::table;

/// `ns/name`.
fn module_name(e: &Explanation) -> String {
    format!("{}/{}", e.module.namespace, e.module.name)
}

/// One cell: the state, the reason when it says more than the state, the version when the
/// Module has one. Empty (rendered `-`) when the Module does not target the node.
pub fn cell(n: &NodeExplanation) -> String {
    if n.state == NodeState::NotTargeted {
        return String::new();
    }
    let mut cell = n.state.as_str().to_string();
    if n.reason != cell {
        cell.push(' ');
        cell.push_str(&n.reason);
    }
    if let Some(version) = n.target.as_ref().and_then(|t| t.version.as_deref()) {
        cell.push_str(" v");
        cell.push_str(version);
    }
    cell
}

/// The three parts, separated by a blank line (no trailing newline).
pub fn render(modules: &[Explanation]) -> String {
    let mut parts = vec![summary(modules), matrix(modules)];
    if let Some(failing) = failing(modules) {
        parts.push(failing);
    }
    parts.join("\n\n")
}

/// `MODULE  TARGETED  LOADED  PENDING  FAILING`: targeted counts the nodes the Module applies
/// to; pending also counts nodes it still has to leave.
fn summary(modules: &[Explanation]) -> String {
    let rows: Vec<Vec<String>> = modules
        .iter()
        .map(|e| {
            let targeted = e.nodes.iter().filter(|n| n.applies).count();
            vec![
                module_name(e),
                targeted.to_string(),
                e.summary.loaded.to_string(),
                e.summary.pending.to_string(),
                e.summary.failing.to_string(),
            ]
        })
        .collect();
    table::render(
        &["MODULE", "TARGETED", "LOADED", "PENDING", "FAILING"],
        &rows,
    )
}

/// `NODE  KERNEL  <ns/module>...`, one row per node (every Module was explained on the same
/// nodes, in the same order).
fn matrix(modules: &[Explanation]) -> String {
    let names: Vec<String> = modules.iter().map(module_name).collect();
    let mut header = vec!["NODE", "KERNEL"];
    header.extend(names.iter().map(String::as_str));
    // node -> (kernel, cell per Module)
    let mut rows: BTreeMap<&str, (String, Vec<String>)> = BTreeMap::new();
    for (i, e) in modules.iter().enumerate() {
        for n in &e.nodes {
            let row = rows.entry(n.node.as_str()).or_insert_with(|| {
                (
                    n.kernel.clone().unwrap_or_default(),
                    vec![String::new(); modules.len()],
                )
            });
            row.1[i] = cell(n);
        }
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(node, (kernel, cells))| {
            let mut row = vec![node.to_string(), kernel];
            row.extend(cells);
            row
        })
        .collect();
    table::render(&header, &rows)
}

/// `FAILING` and one line per failing cell: `ns/module on node: Reason: message`.
fn failing(modules: &[Explanation]) -> Option<String> {
    let lines: Vec<String> = modules
        .iter()
        .flat_map(|e| {
            e.nodes
                .iter()
                .filter(|n| n.state == NodeState::Failing)
                .map(move |n| {
                    format!(
                        "{} on {}: {}: {}",
                        module_name(e),
                        n.node,
                        n.reason,
                        n.message
                    )
                })
        })
        .collect();
    (!lines.is_empty()).then(|| format!("FAILING\n{}", lines.join("\n")))
}

#[cfg(test)]
#[path = "matrix_tests.rs"]
mod tests;
