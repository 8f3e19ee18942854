//! Device-plugin objects in the cluster: apply the DaemonSet and ServiceAccount,
//! garbage-collect stale ones, and keep the `.device-plugin-ready` node labels
//! in step with pod readiness.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kmm_common::{Module, device_plugin_ready_label};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::Context;
use crate::device_plugin::{
    build_daemonset, build_service_account, creates_service_account, daemonset_name,
    label_selector, pod_node, pod_ready,
};
use crate::error::{Error, Result};
use crate::labels::MODULE_NAME_LABEL;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "kmm-controller";

/// Applies what `spec.devicePlugin` asks for and deletes what it no longer does.
/// Returns the DaemonSet as the API server has it (with status), if any.
pub async fn sync_device_plugin(
    module: &Module,
    ns: &str,
    ctx: &Context,
) -> Result<Option<DaemonSet>> {
    let name = module.name_any();
    let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    let wanted_sa = if creates_service_account(module) {
        let sa = build_service_account(module)?;
        let sa_name = sa.name_any();
        sas.patch(&sa_name, &apply, &Patch::Apply(&sa))
            .await
            .map_err(|e| Error::kube(format!("applying ServiceAccount {ns}/{sa_name}"), e))?;
        Some(sa_name)
    } else {
        None
    };
    let applied = match build_daemonset(module)? {
        Some(ds) => {
            let ds_name = ds.name_any();
            Some(
                dss.patch(&ds_name, &apply, &Patch::Apply(&ds))
                    .await
                    .map_err(|e| Error::kube(format!("applying DaemonSet {ns}/{ds_name}"), e))?,
            )
        }
        None => None,
    };
    let wanted_ds = applied.as_ref().map(ResourceExt::name_any);
    gc(&dss, &name, wanted_ds.as_deref()).await?;
    gc(&sas, &name, wanted_sa.as_deref()).await?;
    Ok(applied)
}

/// Deletes every object of kind `K` labelled as this Module's device plugin,
/// except `keep`. NotFound is success (someone else got there first).
pub async fn gc<K>(api: &Api<K>, module_name: &str, keep: Option<&str>) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let ours = api
        .list(&ListParams::default().labels(&label_selector(module_name)))
        .await
        .map_err(|e| Error::kube("listing device-plugin objects", e))?;
    for obj in ours {
        let obj_name = obj.name_any();
        if Some(obj_name.as_str()) == keep {
            continue;
        }
        tracing::info!(object = %obj_name, "deleting stale device-plugin object");
        match api.delete(&obj_name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("deleting {obj_name}"), e)),
        }
    }
    Ok(())
}

/// Nodes where the Module's current DaemonSet has a Ready pod.
pub fn device_plugin_ready_nodes(module: &Module, ns: &str, ctx: &Context) -> BTreeSet<String> {
    if module.spec.device_plugin.is_none() {
        return BTreeSet::new();
    }
    let name = module.name_any();
    let ds_name = daemonset_name(&name);
    ctx.pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| p.labels().get(MODULE_NAME_LABEL) == Some(&name))
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.kind == "DaemonSet" && o.name == ds_name)
        })
        .filter(|p| pod_ready(p))
        .filter_map(|p| pod_node(p))
        .collect()
}

/// Sets `.device-plugin-ready` on exactly the nodes in `ready`, removes it elsewhere.
pub async fn sync_device_plugin_labels(
    module: &Module,
    ns: &str,
    ready: &BTreeSet<String>,
    ctx: &Context,
) -> Result<()> {
    let label = device_plugin_ready_label(ns, &module.name_any());
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    for node in ctx.nodes.state() {
        let node_name = node.name_any();
        let has = node.labels().contains_key(&label);
        let want = ready.contains(&node_name);
        if has == want {
            continue;
        }
        let value = want.then_some("");
        let patch = serde_json::json!({ "metadata": { "labels": { &label: value } } });
        match nodes
            .patch(&node_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => tracing::info!(node = %node_name, ready = want, "device-plugin-ready label"),
            // The Node went away meanwhile: nothing to label.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("labelling node {node_name}"), e)),
        }
    }
    Ok(())
}
