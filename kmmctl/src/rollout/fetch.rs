//! The kube I/O of `kmmctl rollout`: read the rollout, its Module and the Nodes; patch the
//! rollout's `spec.paused` and the nodes' `upgrade-state`. Decisions are in
//! [`super::report`] and [`super::change`].

use k8s_openapi::api::core::v1::Node;
use kmm_common::{Module, ModuleRollout};
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::Error;
use crate::cluster::Cluster;

/// Field manager of every write (`kubectl get --show-managed-fields` names it).
pub const FIELD_MANAGER: &str = "kmmctl";

/// Merge patches with our field manager.
fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

/// The rollout `namespace/name`.
///
/// # Errors
/// [`Error::RolloutNotFound`], [`Error::Cluster`].
pub async fn rollout(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<ModuleRollout, Error> {
    let api: Api<ModuleRollout> = Api::namespaced(cluster.client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(|e| cluster.classify(e))?
        .ok_or_else(|| Error::RolloutNotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
}

/// The rollout's Module.
///
/// # Errors
/// [`Error::ModuleNotFound`], [`Error::Cluster`].
pub async fn module(cluster: &Cluster, rollout: &ModuleRollout) -> Result<Module, Error> {
    let namespace = rollout.metadata.namespace.as_deref().unwrap_or_default();
    let api: Api<Module> = Api::namespaced(cluster.client.clone(), namespace);
    let name = &rollout.spec.module_name;
    api.get_opt(name)
        .await
        .map_err(|e| cluster.classify(e))?
        .ok_or_else(|| Error::ModuleNotFound {
            namespace: namespace.to_string(),
            name: name.clone(),
            rollout: rollout.metadata.name.clone().unwrap_or_default(),
        })
}

/// Nodes matching `selector` (every Node when empty).
///
/// # Errors
/// [`Error::Cluster`].
pub async fn nodes(cluster: &Cluster, selector: &str) -> Result<Vec<Node>, Error> {
    let api: Api<Node> = Api::all(cluster.client.clone());
    let params = ListParams::default().labels(selector);
    Ok(api
        .list(&params)
        .await
        .map_err(|e| cluster.classify(e))?
        .items)
}

/// The Nodes named, in order; every missing one is named in the error.
///
/// # Errors
/// [`Error::NodesNotFound`], [`Error::Cluster`].
pub async fn named_nodes(cluster: &Cluster, names: &[String]) -> Result<Vec<Node>, Error> {
    let api: Api<Node> = Api::all(cluster.client.clone());
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match api.get_opt(name).await.map_err(|e| cluster.classify(e))? {
            Some(node) => found.push(node),
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(Error::NodesNotFound(missing))
    }
}

/// The Node `name` again (after a conflict).
///
/// # Errors
/// [`Error::NodesNotFound`], [`Error::Cluster`].
pub async fn node(cluster: &Cluster, name: &str) -> Result<Node, Error> {
    let api: Api<Node> = Api::all(cluster.client.clone());
    api.get_opt(name)
        .await
        .map_err(|e| cluster.classify(e))?
        .ok_or_else(|| Error::NodesNotFound(vec![name.to_string()]))
}

/// What a conditional node patch came to.
#[derive(Debug)]
pub enum Patched {
    /// Written.
    Done,
    /// The node changed since it was read (409): read it again and decide again.
    Conflict,
}

/// Merge-patches Node `name` with `patch` (which carries the `resourceVersion` it was
/// decided on).
///
/// # Errors
/// [`Error::Cluster`] (a 409 is [`Patched::Conflict`], not an error).
pub async fn patch_node(
    cluster: &Cluster,
    name: &str,
    patch: &serde_json::Value,
) -> Result<Patched, Error> {
    let api: Api<Node> = Api::all(cluster.client.clone());
    match api.patch(name, &params(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(Patched::Done),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Patched::Conflict),
        Err(e) => Err(cluster.classify(e).into()),
    }
}

/// Sets the rollout's `spec.paused`.
///
/// # Errors
/// [`Error::RolloutNotFound`] (deleted meanwhile), [`Error::Cluster`].
pub async fn set_paused(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    paused: bool,
) -> Result<(), Error> {
    let api: Api<ModuleRollout> = Api::namespaced(cluster.client.clone(), namespace);
    let patch = serde_json::json!({ "spec": { "paused": paused } });
    match api.patch(name, &params(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::RolloutNotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        Err(e) => Err(cluster.classify(e).into()),
    }
}
