//! `kmmctl rollout`: see and steer a `ModuleRollout` (`rollout.kmm-rs.io`).
//!
//! - `status`: the rollout's summary and a node × state table ([`report`], [`text`]);
//! - `pause` / `resume`: `spec.paused`;
//! - `skip` / `unskip` / `retry`: the two per-node hand-offs the controller leaves to the admin
//!   ([`change`]);
//! - [`fetch`]: the kube I/O around them.
//!
//! The controller moves nodes through their states; kmmctl only reads them, flips
//! `spec.paused`, and sets a node to `skip` or back to `required`, each write conditional on
//! the node not having changed since it was read.

pub mod change;
pub mod fetch;
pub mod report;
pub mod text;

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kmm_common::{UpgradeState, upgrade_cordoned_annotation, upgrade_state_label};

use crate::cli::Output;
use crate::cluster::{self, Cluster, ClusterArgs};
use crate::explain::OutputFormat;
use change::{Change, Current, Decision};

/// Exit code of `rollout status` when a node is `failed` or the rollout is `Stopped`.
pub const EXIT_NEEDS_ATTENTION: u8 = 3;

/// How many times a node change is read and decided again when the controller changed the
/// node in between.
const CONFLICT_RETRIES: usize = 5;

const EXIT_CODES: &str = "Exit codes:
  0  done (status: no node failed and the rollout is not Stopped)
  1  error: rollout, Module or node not found, API server unreachable or refusing,
     or a change refused (the message says why, and what if anything was changed)
  2  usage error
  3  status only: a node is failed or the rollout is Stopped (the table says why)";

/// Arguments of `kmmctl rollout`.
#[derive(Debug, Args)]
#[command(after_help = format!("Examples:
  kmmctl rollout status mydrv-2.0 -n drivers
  kmmctl rollout pause mydrv-2.0 -n drivers
  kmmctl rollout skip mydrv-2.0 worker-7 -n drivers
  kmmctl rollout retry mydrv-2.0 --all-failed -n drivers

{EXIT_CODES}"))]
pub struct RolloutArgs {
    /// What to do (the ModuleRollout is looked up in `-n`, default: the kubeconfig
    /// context's namespace).
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// `kmmctl rollout` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// The rollout's summary and, per node: upgrade state, since when, version loaded,
    /// cordoned by whom, what it waits for or why it failed. Exit code 3 when a node failed
    /// or the rollout is Stopped.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// The ModuleRollout.
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Stop new nodes from starting (`spec.paused: true`); nodes in progress finish their
    /// current step.
    #[command(after_help = EXIT_CODES)]
    Pause {
        /// The ModuleRollout.
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
    },
    /// Let new nodes start again (`spec.paused: false`).
    #[command(after_help = EXIT_CODES)]
    Resume {
        /// The ModuleRollout.
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
    },
    /// Leave nodes out of the rollout (their upgrade-state label becomes `skip`). Refused for
    /// a node in progress (it may be cordoned, evicted or mid-swap) unless --force.
    #[command(after_help = EXIT_CODES)]
    Skip {
        /// The ModuleRollout.
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
        /// Nodes to skip.
        #[arg(value_name = "NODE", required = true)]
        nodes: Vec<String>,
        /// Skip a node in progress too; it is left as it is (e.g. cordoned).
        #[arg(long)]
        force: bool,
    },
    /// Put skipped nodes back into the rollout (`skip` -> `required`).
    #[command(after_help = EXIT_CODES)]
    Unskip {
        /// The ModuleRollout.
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
        /// Nodes to put back.
        #[arg(value_name = "NODE", required = true)]
        nodes: Vec<String>,
    },
    /// Try failed nodes again (`failed` -> `required`, their failure message cleared).
    #[command(after_help = EXIT_CODES)]
    Retry {
        /// The ModuleRollout.
        #[arg(value_name = "ROLLOUT")]
        rollout: String,
        /// Nodes to retry.
        #[arg(
            value_name = "NODE",
            required_unless_present = "all_failed",
            conflicts_with = "all_failed"
        )]
        nodes: Vec<String>,
        /// Every node of the rollout that is `failed` now.
        #[arg(long)]
        all_failed: bool,
    },
}

/// Why `kmmctl rollout` could not do it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer from the cluster, or an error answer.
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// The ModuleRollout does not exist.
    #[error("modulerollout {namespace}/{name} not found")]
    RolloutNotFound {
        /// Namespace looked in.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The rollout's Module does not exist.
    #[error("module {namespace}/{name} (spec.moduleName of modulerollout {rollout}) not found")]
    ModuleNotFound {
        /// Namespace.
        namespace: String,
        /// Module name.
        name: String,
        /// The rollout naming it.
        rollout: String,
    },
    /// Nodes named on the command line that do not exist (nothing was changed).
    #[error("node{} not found: {} (nothing changed)", if .0.len() == 1 { "" } else { "s" }, .0.join(", "))]
    NodesNotFound(Vec<String>),
    /// Changes refused, one sentence per node.
    #[error("refused, {}:\n  {}", .changed, .reasons.join("\n  "))]
    Refused {
        /// What was changed before the refusal (`nothing changed` when refused up front).
        changed: String,
        /// Why, per node.
        reasons: Vec<String>,
    },
    /// The node kept changing under us.
    #[error("node {0} kept changing while kmmctl tried to update it; run the command again")]
    Busy(String),
    /// Serializing the JSON output.
    #[error("encoding JSON output")]
    Json(#[from] serde_json::Error),
}

/// `kmmctl rollout ...`.
///
/// # Errors
/// See [`Error`].
pub async fn run(args: &RolloutArgs, flags: &ClusterArgs) -> Result<Output, Error> {
    let (cluster, namespace) = flags.connect().await?;
    match &args.command {
        RolloutCommand::Status { rollout, output } => {
            status(&cluster, &namespace, rollout, *output).await
        }
        RolloutCommand::Pause { rollout } => pause(&cluster, &namespace, rollout, true).await,
        RolloutCommand::Resume { rollout } => pause(&cluster, &namespace, rollout, false).await,
        RolloutCommand::Skip {
            rollout,
            nodes,
            force,
        } => {
            change(
                &cluster,
                &namespace,
                rollout,
                Change::Skip { force: *force },
                Some(nodes),
            )
            .await
        }
        RolloutCommand::Unskip { rollout, nodes } => {
            change(&cluster, &namespace, rollout, Change::Unskip, Some(nodes)).await
        }
        RolloutCommand::Retry {
            rollout,
            nodes,
            all_failed,
        } => {
            let nodes = (!*all_failed).then_some(nodes);
            change(&cluster, &namespace, rollout, Change::Retry, nodes).await
        }
    }
}

/// `rollout status`.
async fn status(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    format: OutputFormat,
) -> Result<Output, Error> {
    let rollout = fetch::rollout(cluster, namespace, name).await?;
    let module = fetch::module(cluster, &rollout).await?;
    let nodes = fetch::nodes(cluster, "").await?;
    let r = report::build(&report::Snapshot {
        rollout,
        module,
        nodes,
    });
    let stdout = match format {
        OutputFormat::Text => text::render(&r, Timestamp::now()),
        OutputFormat::Json => serde_json::to_string_pretty(&r)?,
    };
    Ok(Output {
        stdout,
        code: if r.needs_attention() {
            EXIT_NEEDS_ATTENTION
        } else {
            0
        },
    })
}

/// `rollout pause` (`paused`) / `rollout resume`.
async fn pause(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    paused: bool,
) -> Result<Output, Error> {
    let rollout = fetch::rollout(cluster, namespace, name).await?;
    let what = if paused { "paused" } else { "resumed" };
    if rollout.spec.paused == paused {
        return Ok(format!("modulerollout {namespace}/{name} already {what}").into());
    }
    fetch::set_paused(cluster, namespace, name, paused).await?;
    let wave = rollout.status.map(|s| s.wave).unwrap_or_default();
    let note = match (paused, wave.is_empty()) {
        (true, false) => format!(
            "; in progress, finishing their current step: {}",
            wave.join(", ")
        ),
        _ => String::new(),
    };
    Ok(format!("modulerollout {namespace}/{name} {what}{note}").into())
}

/// `rollout skip` / `unskip` / `retry`: `nodes` named, or (`None`) every `failed` node.
async fn change(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    change: Change,
    nodes: Option<&Vec<String>>,
) -> Result<Output, Error> {
    let rollout = fetch::rollout(cluster, namespace, name).await?;
    let module = rollout.spec.module_name.clone();
    let state_key = upgrade_state_label(namespace, &module);
    let found = match nodes {
        Some(names) => fetch::named_nodes(cluster, names).await?,
        None => {
            let selector = format!("{state_key}={}", UpgradeState::Failed.as_str());
            fetch::nodes(cluster, &selector).await?
        }
    };
    if found.is_empty() {
        return Ok(format!("no failed nodes in modulerollout {namespace}/{name}").into());
    }
    let ctx = NodeChange {
        cluster,
        namespace,
        module: &module,
        change,
    };
    // Every node is decided before any is written: one refusal changes nothing.
    let decisions: Vec<(Node, Decision)> = found
        .into_iter()
        .map(|n| {
            let d = ctx.decide(&n);
            (n, d)
        })
        .collect();
    let refused: Vec<String> = decisions
        .iter()
        .filter_map(|(_, d)| match d {
            Decision::Refuse(why) => Some(why.clone()),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        return Err(Error::Refused {
            changed: "nothing changed".to_string(),
            reasons: refused,
        });
    }
    let mut lines = Vec::new();
    for (node, decision) in decisions {
        let name = node.metadata.name.clone().unwrap_or_default();
        match ctx.apply(node, decision).await {
            Ok(line) => lines.push(line),
            Err(Error::Refused { reasons, .. }) => {
                return Err(Error::Refused {
                    changed: changed_so_far(&lines),
                    reasons,
                });
            }
            Err(e) => {
                tracing::error!("{name}: {e}; {}", changed_so_far(&lines));
                return Err(e);
            }
        }
    }
    Ok(lines.join("\n").into())
}

fn changed_so_far(lines: &[String]) -> String {
    if lines.is_empty() {
        "nothing changed".to_string()
    } else {
        format!("after these changes: {}", lines.join("; "))
    }
}

/// One node change: decide from the node as read, write conditionally, and on a conflict
/// read and decide again.
struct NodeChange<'a> {
    cluster: &'a Cluster,
    namespace: &'a str,
    module: &'a str,
    change: Change,
}

impl NodeChange<'_> {
    fn decide(&self, node: &Node) -> Decision {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let state = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&upgrade_state_label(self.namespace, self.module)));
        let cordoned = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let ours = node.metadata.annotations.as_ref().is_some_and(|a| {
            a.contains_key(&upgrade_cordoned_annotation(self.namespace, self.module))
        });
        change::decide(
            self.change,
            name,
            Current {
                state: state.map(String::as_str),
                cordoned_by_rollout: cordoned && ours,
            },
        )
    }

    /// Writes `decision` for `node`; returns the line to print.
    async fn apply(&self, mut node: Node, mut decision: Decision) -> Result<String, Error> {
        let name = node.metadata.name.clone().unwrap_or_default();
        for _ in 0..CONFLICT_RETRIES {
            let (state, note) = match decision {
                Decision::Already(state) => return Ok(format!("node {name} already {state}")),
                Decision::Refuse(why) => {
                    return Err(Error::Refused {
                        changed: String::new(),
                        reasons: vec![why],
                    });
                }
                Decision::Set(state, note) => (state, note),
            };
            let rv = node.metadata.resource_version.clone().unwrap_or_default();
            let patch =
                change::node_patch(self.namespace, self.module, state, Timestamp::now(), &rv);
            match fetch::patch_node(self.cluster, &name, &patch).await? {
                fetch::Patched::Done => {
                    let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
                    return Ok(format!("node {name} -> {state}{note}"));
                }
                fetch::Patched::Conflict => {
                    node = fetch::node(self.cluster, &name).await?;
                    decision = self.decide(&node);
                }
            }
        }
        Err(Error::Busy(name))
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
