//! The kube I/O of `kmmctl explain`: a client from the kubeconfig, then the Module, the
//! Node(s) and their NodeModulesConfigs. Everything else is pure.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kmm_common::{Module, NodeModulesConfig};
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::Error;

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

/// A client and what the kubeconfig says about it.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The context's default namespace (`default` when it sets none).
    pub namespace: String,
    /// The API server URL (for error messages).
    pub url: String,
}

/// A client for `kubeconfig` (else `$KUBECONFIG`, `~/.kube/config`, in-cluster) and
/// `context`.
///
/// # Errors
/// [`Error::Kubeconfig`] when no usable configuration is found.
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Cluster, Error> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let mut config = match (kubeconfig, context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    // A dead API server should fail in seconds, not hang.
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    let namespace = config.default_namespace.clone();
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| Error::Unreachable {
        url: url.clone(),
        source,
    })?;
    Ok(Cluster {
        client,
        namespace,
        url,
    })
}

/// Reads the Module `namespace/name`, the Nodes asked for and their NodeModulesConfigs.
///
/// # Errors
/// [`Error::ModuleNotFound`], [`Error::NodeNotFound`], [`Error::NoNodes`],
/// [`Error::Unreachable`] when the API server cannot be reached, [`Error::Api`] otherwise.
pub async fn snapshot(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    nodes: Nodes<'_>,
) -> Result<Snapshot, Error> {
    let client = &cluster.client;
    let to_error = |e| classify(&cluster.url, e);
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

/// API answers (a `Status`) stay [`Error::Api`]; anything else means we never got an answer.
fn classify(url: &str, err: kube::Error) -> Error {
    match err {
        kube::Error::Api(status) => Error::Api(format!(
            "{} ({} {})",
            status.message, status.code, status.reason
        )),
        other => Error::Unreachable {
            url: url.to_string(),
            source: other,
        },
    }
}
