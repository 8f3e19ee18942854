//! The kube I/O of `kmmctl explain`: the Module, the Node(s) and their NodeModulesConfigs.
//! Everything else is pure.

use k8s_openapi::api::core::v1::Node;
use kmm_common::{Module, NodeModulesConfig};
use kube::api::{Api, ListParams};

use super::Error;
use crate::cluster::Cluster;

/// What the verdict needs from the cluster.
#[derive(Debug)]
pub struct Snapshot {
    /// The Module.
    pub module: Module,
    /// Nodes to explain, sorted by name.
    pub nodes: Vec<Node>,
    /// All NodeModulesConfigs (named after their node).
    pub nmcs: Vec<NodeModulesConfig>,
}

/// Which nodes to explain.
#[derive(Debug, Clone, Copy)]
pub enum Nodes<'a> {
    /// Every Node.
    All,
    /// The Node of this name.
    Named(&'a str),
    /// Nodes matching this label selector.
    Selected(&'a str),
}

/// Reads the Module `namespace/name`, the Nodes asked for and their NodeModulesConfigs.
///
/// # Errors
/// [`Error::ModuleNotFound`], [`Error::NodeNotFound`], [`Error::NoNodes`],
/// [`Error::Cluster`] when the API server cannot be reached or answers with an error.
pub async fn snapshot(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    nodes: Nodes<'_>,
) -> Result<Snapshot, Error> {
    let client = &cluster.client;
    let to_error = |e| Error::from(cluster.classify(e));
    let modules: Api<Module> = Api::namespaced(client.clone(), namespace);
    let module = modules
        .get_opt(name)
        .await
        .map_err(to_error)?
        .ok_or_else(|| Error::ModuleNotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    let nodes_api: Api<Node> = Api::all(client.clone());
    let nmc_api: Api<NodeModulesConfig> = Api::all(client.clone());
    let (mut found, nmcs) = match nodes {
        Nodes::Named(n) => {
            let node = nodes_api
                .get_opt(n)
                .await
                .map_err(to_error)?
                .ok_or_else(|| Error::NodeNotFound(n.to_string()))?;
            let nmc = nmc_api.get_opt(n).await.map_err(to_error)?;
            (vec![node], nmc.into_iter().collect())
        }
        Nodes::All | Nodes::Selected(_) => {
            let mut params = ListParams::default();
            if let Nodes::Selected(selector) = nodes {
                params = params.labels(selector);
            }
            let found = nodes_api.list(&params).await.map_err(to_error)?.items;
            // NodeModulesConfigs carry no node labels: list them all, match by name.
            let nmcs = nmc_api
                .list(&ListParams::default())
                .await
                .map_err(to_error)?
                .items;
            (found, nmcs)
        }
    };
    if found.is_empty() {
        let selector = match nodes {
            Nodes::Selected(s) => Some(s.to_string()),
            _ => None,
        };
        return Err(Error::NoNodes(selector));
    }
    found.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(Snapshot {
        module,
        nodes: found,
        nmcs,
    })
}
