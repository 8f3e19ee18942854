//! `kmmctl explain`: why a Module is (not) loaded on each node.
//!
//! For every node (or the one asked for): whether the Module applies and, if not, why
//! (`kmm_common`'s targeting); the kernel mapping and image it resolves to; what the node's
//! `NodeModulesConfig` status says is loaded; the agent's last error; the ready label.
//!
//! - [`verdict`]: the pure decision (Module + Node + NodeModulesConfig -> verdict);
//! - [`report`]: the `-o json` document;
//! - [`text`]: the text rendering;
//! - [`fetch`]: the kube I/O around them.

pub mod fetch;
pub mod report;
pub mod text;
pub mod verdict;

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kmm_common::{Module, NodeModulesConfig};

use crate::cluster::ClusterArgs;

use report::{Explanation, ModuleRef, SCHEMA_VERSION};

/// Arguments of `kmmctl explain`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  kmmctl explain brd -n kmm-demo
  kmmctl explain brd -n kmm-demo --node worker-1 -o json
  kmmctl explain brd -n kmm-demo -l node-role.kubernetes.io/worker=")]
pub struct ExplainArgs {
    /// Module name (in `-n`, default: the kubeconfig context's namespace).
    #[arg(value_name = "MODULE")]
    pub module: String,
    /// Explain this node only.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Explain only nodes matching this label selector (e.g. `role=storage`).
    #[arg(
        long = "node-selector",
        short = 'l',
        value_name = "SELECTOR",
        conflicts_with = "node"
    )]
    pub node_selector: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text, one block per node.
    Text,
    /// JSON (the documented `report::Explanation` shape).
    Json,
}

/// Why `kmmctl explain` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer from the cluster, or an error answer.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    /// The Module does not exist.
    #[error("module {namespace}/{name} not found")]
    ModuleNotFound {
        /// Namespace looked in.
        namespace: String,
        /// Module name.
        name: String,
    },
    /// `--node` names a node that does not exist.
    #[error("node {0} not found")]
    NodeNotFound(String),
    /// The cluster has no Node objects (matching the selector, when one is given).
    #[error("no nodes in the cluster{}", .0.as_ref().map(|s| format!(" match {s}")).unwrap_or_default())]
    NoNodes(Option<String>),
    /// Serializing the JSON output.
    #[error("encoding JSON output")]
    Json(#[from] serde_json::Error),
}

/// Explains every node of `snapshot` (pure).
pub fn explain(snapshot: &fetch::Snapshot) -> Explanation {
    explain_module(&snapshot.module, &snapshot.nodes, &snapshot.nmcs)
}

/// Explains `module` on each of `nodes`, given the NodeModulesConfigs (pure; `kmmctl status`
/// calls it once per Module).
pub fn explain_module(module: &Module, nodes: &[Node], nmcs: &[NodeModulesConfig]) -> Explanation {
    let nmcs: BTreeMap<&str, &NodeModulesConfig> = nmcs
        .iter()
        .filter_map(|n| n.metadata.name.as_deref().map(|name| (name, n)))
        .collect();
    let nodes: Vec<_> = nodes
        .iter()
        .map(|node| {
            let nmc = node
                .metadata
                .name
                .as_deref()
                .and_then(|name| nmcs.get(name).copied());
            verdict::explain_node(module, node, nmc)
        })
        .collect();
    Explanation {
        schema_version: SCHEMA_VERSION,
        module: ModuleRef {
            namespace: module.metadata.namespace.clone().unwrap_or_default(),
            name: module.metadata.name.clone().unwrap_or_default(),
        },
        summary: verdict::summarize(&nodes),
        nodes,
    }
}

/// Renders `e` in `format` (`now` gives load times an age in text output).
///
/// # Errors
/// [`Error::Json`] (not expected for these types).
pub fn render(e: &Explanation, format: OutputFormat, now: Timestamp) -> Result<String, Error> {
    Ok(match format {
        OutputFormat::Text => text::render(e, now),
        OutputFormat::Json => serde_json::to_string_pretty(e)?,
    })
}

/// `kmmctl explain`: connects, reads, explains, renders.
///
/// # Errors
/// See [`Error`].
pub async fn run(args: &ExplainArgs, flags: &ClusterArgs) -> Result<String, Error> {
    let (cluster, namespace) = flags.connect().await?;
    let namespace = namespace.as_str();
    let nodes = match (&args.node, &args.node_selector) {
        (Some(name), _) => fetch::Nodes::Named(name),
        (None, Some(selector)) => fetch::Nodes::Selected(selector),
        (None, None) => fetch::Nodes::All,
    };
    let snapshot = fetch::snapshot(&cluster, namespace, &args.module, nodes).await?;
    render(&explain(&snapshot), args.output, Timestamp::now())
}
