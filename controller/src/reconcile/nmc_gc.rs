//! Garbage collection of NodeModulesConfigs whose Node is gone.
//!
//! An agent writes the NMC of its own Node and cannot remove it once the Node
//! (and usually the agent with it) is deleted; the leader does. A Node may be
//! deleted and registered again under the same name (a reinstall), so an NMC
//! goes only after its Node was missing in two sweeps in a row.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kmm_common::NodeModulesConfig;
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

/// NMCs without a Node: those also in `suspects` (the previous sweep's) are
/// due; the rest are the next sweep's suspects.
pub fn sweep(
    nodes: &BTreeSet<String>,
    nmcs: &BTreeSet<String>,
    suspects: &BTreeSet<String>,
) -> (Vec<String>, BTreeSet<String>) {
    let orphans: BTreeSet<String> = nmcs.difference(nodes).cloned().collect();
    let due = orphans.intersection(suspects).cloned().collect();
    (due, orphans)
}

/// Sweeps every `interval` until the process stops.
pub async fn run(
    client: Client,
    nodes: Store<Node>,
    nmcs: Store<NodeModulesConfig>,
    interval: Duration,
) {
    let _ = nodes.wait_until_ready().await;
    let _ = nmcs.wait_until_ready().await;
    let api: Api<NodeModulesConfig> = Api::all(client);
    let mut suspects = BTreeSet::new();
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let node_names: BTreeSet<String> = nodes.state().iter().map(|n| n.name_any()).collect();
        let nmc_names: BTreeSet<String> = nmcs.state().iter().map(|n| n.name_any()).collect();
        let (due, next) = sweep(&node_names, &nmc_names, &suspects);
        suspects = next;
        for name in due {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(nmc = %name, "deleted NodeModulesConfig of a deleted Node"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(nmc = %name, error = %e, "deleting orphaned NodeModulesConfig")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn an_nmc_goes_only_after_its_node_was_missing_twice() {
        let nmcs = set(&["a", "b"]);
        let (due, suspects) = sweep(&set(&["a"]), &nmcs, &BTreeSet::new());
        assert!(due.is_empty());
        assert_eq!(suspects, set(&["b"]));
        let (due, _) = sweep(&set(&["a"]), &nmcs, &suspects);
        assert_eq!(due, ["b"]);
    }

    #[test]
    fn a_node_that_comes_back_keeps_its_nmc() {
        let nmcs = set(&["b"]);
        let (_, suspects) = sweep(&BTreeSet::new(), &nmcs, &BTreeSet::new());
        let (due, suspects) = sweep(&set(&["b"]), &nmcs, &suspects);
        assert!(due.is_empty());
        assert!(suspects.is_empty());
    }
}
