//! The kube I/O of `kmmctl status`: the Modules in scope, the Nodes and every
//! NodeModulesConfig. Everything else is pure.

use k8s_openapi::api::core::v1::Node;
use kmm_common::{Module, NodeModulesConfig};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::Error;
use crate::cluster::Cluster;

/// Which Modules to show.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every Module of every namespace (`-A`).
    AllNamespaces,
    /// Every Module of this namespace.
    Namespace(&'a str),
    /// The Module `namespace/name`.
    Named(&'a str, &'a str),
}

/// What the matrix needs from the cluster.
#[derive(Debug)]
pub struct Snapshot {
    /// Modules, sorted by namespace and name.
    pub modules: Vec<Module>,
    /// Nodes, sorted by name.
    pub nodes: Vec<Node>,
    /// All NodeModulesConfigs (named after their node).
    pub nmcs: Vec<NodeModulesConfig>,
}

/// Reads the Modules of `scope`, the Nodes (those matching `node_selector`, when given) and
/// every NodeModulesConfig.
///
/// # Errors
/// [`Error::ModuleNotFound`] for a named Module that does not exist; [`Error::Cluster`] when
/// the API server cannot be reached or answers with an error.
pub async fn snapshot(
    cluster: &Cluster,
    scope: Scope<'_>,
    node_selector: Option<&str>,
) -> Result<Snapshot, Error> {
    let client = &cluster.client;
    let to_error = |e| Error::from(cluster.classify(e));
    let all = ListParams::default();
    let mut modules = match scope {
        Scope::AllNamespaces => {
            Api::<Module>::all(client.clone())
                .list(&all)
                .await
                .map_err(to_error)?
                .items
        }
        Scope::Namespace(ns) => {
            Api::<Module>::namespaced(client.clone(), ns)
                .list(&all)
                .await
                .map_err(to_error)?
                .items
        }
        Scope::Named(ns, name) => vec![
            Api::<Module>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(to_error)?
                .ok_or_else(|| Error::ModuleNotFound {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })?,
        ],
    };
    modules.sort_by_key(|m| (m.namespace().unwrap_or_default(), m.name_any()));
    let node_params = node_selector.map_or_else(ListParams::default, |s| all.clone().labels(s));
    let mut nodes = Api::<Node>::all(client.clone())
        .list(&node_params)
        .await
        .map_err(to_error)?
        .items;
    nodes.sort_by_key(ResourceExt::name_any);
    // NodeModulesConfigs carry no node labels: list them all, match by name.
    let nmcs = Api::<NodeModulesConfig>::all(client.clone())
        .list(&all)
        .await
        .map_err(to_error)?
        .items;
    Ok(Snapshot {
        modules,
        nodes,
        nmcs,
    })
}
