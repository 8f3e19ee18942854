//! `kmmctl status` (`kubectl kmm status`): a Module × node matrix, each cell what `kmmctl
//! explain` says of that Module on that node (loaded and at which version, pending and why,
//! failing and why, or not targeted), then what fails, with the agents' messages.
//!
//! The verdicts are [`crate::explain`]'s, computed once per Module ([`explain_module`]):
//! the same targeting (`kmm_common::node_eligibility`) and NodeModulesConfig reading, never
//! a second copy of either.
//!
//! - [`fetch`]: the Modules, Nodes and NodeModulesConfigs;
//! - [`matrix`]: the text rendering.

pub mod fetch;
pub mod matrix;

use clap::Args;
use serde::Serialize;

use crate::cluster::ClusterArgs;
use crate::explain::report::{Explanation, SCHEMA_VERSION};
use crate::explain::{OutputFormat, explain_module};

/// Arguments of `kmmctl status`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  kubectl kmm status                      # Modules of the context's namespace
  kubectl kmm status -A                   # of every namespace
  kubectl kmm status gpu -n drivers       # one Module
  kubectl kmm status -A -l role=gpu -o json
  kmmctl status --context prod -n drivers # the same binary, under its own name")]
pub struct StatusArgs {
    /// Only this Module (in `-n`, default: the kubeconfig context's namespace).
    #[arg(value_name = "MODULE")]
    pub module: Option<String>,
    /// Modules of every namespace.
    #[arg(long, short = 'A', conflicts_with = "module")]
    pub all_namespaces: bool,
    /// Only nodes matching this label selector (e.g. `role=gpu`).
    #[arg(long = "node-selector", short = 'l', value_name = "SELECTOR")]
    pub node_selector: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Why `kmmctl status` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer from the cluster, or an error answer.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    /// The Module asked for does not exist.
    #[error("module {namespace}/{name} not found")]
    ModuleNotFound {
        /// Namespace looked in.
        namespace: String,
        /// Module name.
        name: String,
    },
    /// Serializing the JSON output.
    #[error("encoding JSON output")]
    Json(#[from] serde_json::Error),
}

/// The `-o json` document: one `kmmctl explain -o json` document per Module.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The explain documents' [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// One per Module, sorted by namespace and name.
    pub modules: Vec<Explanation>,
}

/// Every Module of `snapshot` explained on every node (pure).
pub fn status(snapshot: &fetch::Snapshot) -> Status {
    Status {
        schema_version: SCHEMA_VERSION,
        modules: snapshot
            .modules
            .iter()
            .map(|m| explain_module(m, &snapshot.nodes, &snapshot.nmcs))
            .collect(),
    }
}

/// `kmmctl status`: connects, reads, explains each Module, renders.
///
/// # Errors
/// See [`Error`].
pub async fn run(args: &StatusArgs, flags: &ClusterArgs) -> Result<String, Error> {
    let (cluster, namespace) = flags.connect().await?;
    let scope = match (&args.module, args.all_namespaces) {
        (_, true) => fetch::Scope::AllNamespaces,
        (Some(name), false) => fetch::Scope::Named(&namespace, name),
        (None, false) => fetch::Scope::Namespace(&namespace),
    };
    let snapshot = fetch::snapshot(&cluster, scope, args.node_selector.as_deref()).await?;
    let status = status(&snapshot);
    Ok(match args.output {
        OutputFormat::Json => serde_json::to_string_pretty(&status)?,
        OutputFormat::Text if status.modules.is_empty() => match scope {
            fetch::Scope::AllNamespaces => "No Modules found.".to_string(),
            _ => format!("No Modules found in namespace {namespace}."),
        },
        OutputFormat::Text => matrix::render(&status.modules),
    })
}
