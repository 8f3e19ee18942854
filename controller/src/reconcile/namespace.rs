//! The `kmm.node.k8s.io/contains-modules` namespace label: set while a
//! namespace holds Modules (the namespace-deletion webhook reads it).

use k8s_openapi::api::core::v1::Namespace;
use kmm_common::{Module, NAMESPACE_CONTAINS_MODULES_LABEL};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::error::{Error, Result};

async fn set_label(client: &Client, ns: &str, value: Option<&str>) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let current = api
        .get(ns)
        .await
        .map_err(|e| Error::kube(format!("reading namespace {ns}"), e))?;
    let has = current
        .labels()
        .get(NAMESPACE_CONTAINS_MODULES_LABEL)
        .map(String::as_str);
    if has == value {
        return Ok(());
    }
    let patch = serde_json::json!({ "metadata": { "labels": { NAMESPACE_CONTAINS_MODULES_LABEL: value } } });
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("labelling namespace {ns}"), e))?;
    tracing::info!(
        namespace = ns,
        present = value.is_some(),
        "contains-modules label"
    );
    Ok(())
}

/// Labels the namespace of a live Module.
pub async fn ensure_label(client: &Client, ns: &str) -> Result<()> {
    set_label(client, ns, Some("")).await
}

/// Removes the label when `leaving` is the namespace's last Module.
pub async fn remove_label_if_last(client: &Client, ns: &str, leaving: &Module) -> Result<()> {
    let modules: Api<Module> = Api::namespaced(client.clone(), ns);
    let list = modules
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("listing Modules in {ns}"), e))?;
    if list.items.iter().any(|m| m.uid() != leaving.uid()) {
        return Ok(());
    }
    set_label(client, ns, None).await
}
