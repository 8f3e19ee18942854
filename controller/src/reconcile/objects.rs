//! Node-plugin objects in the cluster (device plugin and DRA kubelet plugin):
//! apply the DaemonSet and ServiceAccount, garbage-collect stale ones, keep the
//! `.device-plugin-ready` / `.dra-ready` node labels in step with pod
//! readiness, and apply and collect the DRA DeviceClasses.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::resource::v1::DeviceClass;
use kmm_common::Module;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::Context;
use crate::error::{Error, Result};
use crate::labels::MODULE_NAME_LABEL;
use kube::runtime::reflector::ObjectRef;

use crate::plugin::{
    Kind, all_plugins_selector, build_daemonset, build_service_account, device_class, pod_node,
    pod_ready,
};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "kmm-controller";

/// The node plugins' DaemonSets as the API server has them (with status).
#[derive(Debug, Default)]
pub struct Plugins {
    /// `<module>-device-plugin`, when `spec.devicePlugin` is set.
    pub device_plugin: Option<DaemonSet>,
    /// `<module>-dra`, when `spec.dra` is set.
    pub dra: Option<DaemonSet>,
}

/// Applies the DaemonSets and ServiceAccounts the Module asks for (both kinds)
/// and deletes its others. One list per object type covers both kinds.
pub async fn sync_plugins(module: &Module, ns: &str, ctx: &Context) -> Result<Plugins> {
    let name = module.name_any();
    let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let apply = PatchParams::apply(FIELD_MANAGER).force();

    let mut keep = BTreeSet::new();
    let mut plugins = Plugins::default();
    for kind in Kind::ALL {
        if kind.creates_service_account(module) {
            let sa = build_service_account(module, kind)?;
            let sa_name = sa.name_any();
            sas.patch(&sa_name, &apply, &Patch::Apply(&sa))
                .await
                .map_err(|e| Error::kube(format!("applying ServiceAccount {ns}/{sa_name}"), e))?;
            keep.insert(sa_name);
        }
        if let Some(ds) = build_daemonset(module, kind)? {
            let ds_name = ds.name_any();
            let applied = dss
                .patch(&ds_name, &apply, &Patch::Apply(&ds))
                .await
                .map_err(|e| Error::kube(format!("applying DaemonSet {ns}/{ds_name}"), e))?;
            keep.insert(ds_name);
            match kind {
                Kind::DevicePlugin => plugins.device_plugin = Some(applied),
                Kind::Dra => plugins.dra = Some(applied),
            }
        }
    }
    let selector = plugins_of_module_selector(&name);
    gc(&dss, &selector, &keep).await?;
    gc(&sas, &selector, &keep).await?;
    Ok(plugins)
}

/// Every node-plugin object of Module `module_name` made by us, of either kind.
fn plugins_of_module_selector(module_name: &str) -> String {
    format!(
        "{MODULE_NAME_LABEL}={module_name},{}",
        all_plugins_selector()
    )
}

/// Deletes every object `selector` finds, except those in `keep`. NotFound is
/// success (someone else got there first).
pub async fn gc<K>(api: &Api<K>, selector: &str, keep: &BTreeSet<String>) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let ours = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| Error::kube(format!("listing objects of {selector}"), e))?;
    for obj in ours {
        let obj_name = obj.name_any();
        if keep.contains(&obj_name) {
            continue;
        }
        tracing::info!(object = %obj_name, "deleting stale node-plugin object");
        delete(api, &obj_name).await?;
    }
    Ok(())
}

async fn delete<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting {name}"), e)),
    }
}

/// Deletes every node-plugin DaemonSet and ServiceAccount of the Module.
pub async fn gc_plugins(module_name: &str, ns: &str, ctx: &Context) -> Result<()> {
    let selector = plugins_of_module_selector(module_name);
    let none = BTreeSet::new();
    let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
    gc(&dss, &selector, &none).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    gc(&sas, &selector, &none).await
}

/// Nodes where the Module's current DaemonSet of `kind` has a Ready pod.
pub fn plugin_ready_nodes(
    module: &Module,
    ns: &str,
    kind: Kind,
    ctx: &Context,
) -> BTreeSet<String> {
    if !kind.wanted(module) {
        return BTreeSet::new();
    }
    let name = module.name_any();
    let ds_name = kind.daemonset_name(&name);
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

/// Sets the ready label of `kind` on exactly the nodes in `ready`, removes it elsewhere.
pub async fn sync_plugin_labels(
    module: &Module,
    ns: &str,
    kind: Kind,
    ready: &BTreeSet<String>,
    ctx: &Context,
) -> Result<()> {
    let label = kind.ready_label(ns, &module.name_any());
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
            Ok(_) => tracing::info!(node = %node_name, ready = want, %label, "plugin ready label"),
            // The Node went away meanwhile: nothing to label.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("labelling node {node_name}"), e)),
        }
    }
    Ok(())
}

/// Applies the DeviceClasses `spec.dra` lists and deletes the Module's others
/// (all of them when the Module is being deleted or has no `spec.dra`). What
/// exists is read from the DeviceClass cache: a Module without DRA costs no
/// request. Without the cache (an API server before 1.34) a Module with DRA
/// fails: it cannot be served.
pub async fn sync_device_classes(
    module: &Module,
    ns: &str,
    deleting: bool,
    ctx: &Context,
) -> Result<()> {
    let wanted = if deleting {
        Vec::new()
    } else {
        device_class::build(module, ns)
    };
    let Some(store) = &ctx.device_classes else {
        if module.spec.dra.is_some() && !deleting {
            return Err(Error::InvalidModule(
                "spec.dra: the API server does not serve resource.k8s.io/v1 DeviceClasses (Kubernetes >= 1.34 is needed)".into(),
            ));
        }
        return Ok(());
    };
    let api: Api<DeviceClass> = Api::all(ctx.client.clone());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for class in &wanted {
        let class_name = class.name_any();
        api.patch(&class_name, &apply, &Patch::Apply(class))
            .await
            .map_err(|e| Error::kube(format!("applying DeviceClass {class_name}"), e))?;
    }
    let existing: Vec<DeviceClass> = if deleting {
        // Asked, not cached: a class applied just before the deletion may not
        // be in the cache yet, and would outlive its Module.
        api.list(
            &ListParams::default().labels(&device_class::label_selector(ns, &module.name_any())),
        )
        .await
        .map_err(|e| Error::kube("listing DeviceClasses", e))?
        .items
    } else {
        let me = Some(ObjectRef::<Module>::new(&module.name_any()).within(ns));
        store
            .state()
            .iter()
            .filter(|c| device_class::module_of(c) == me)
            .map(|c| (**c).clone())
            .collect()
    };
    for stale in device_class::stale(&existing, &wanted) {
        tracing::info!(device_class = %stale, "deleting DeviceClass the Module no longer lists");
        delete(&api, &stale).await?;
    }
    Ok(())
}
