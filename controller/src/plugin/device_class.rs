//! The DeviceClasses of `spec.dra.deviceClasses`, as pure builders and the
//! garbage-collection decision. DeviceClasses are cluster-scoped and cannot be
//! owned by a namespaced Module, so (as upstream) they carry the Module's name
//! and namespace as labels, and the controller deletes those a Module no
//! longer lists, and all of them when it goes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::resource::v1::{DeviceClass, DeviceClassSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kmm_common::Module;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::labels::{MANAGED_BY, MODULE_NAME_LABEL, MODULE_NAMESPACE_LABEL};

/// Labels of every DeviceClass made for Module `ns/name`.
pub fn owner_labels(ns: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MODULE_NAME_LABEL.to_string(), name.to_string()),
        (MODULE_NAMESPACE_LABEL.to_string(), ns.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ])
}

/// [`owner_labels`] as a list-call label selector.
pub fn label_selector(ns: &str, name: &str) -> String {
    owner_labels(ns, name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Selector of every DeviceClass this controller manages (the watch).
pub fn managed_selector() -> String {
    format!(
        "{MODULE_NAME_LABEL},{MODULE_NAMESPACE_LABEL},app.kubernetes.io/managed-by={MANAGED_BY}"
    )
}

/// The DeviceClasses `module` lists (none without `spec.dra`), in list order.
pub fn build(module: &Module, ns: &str) -> Vec<DeviceClass> {
    let Some(dra) = &module.spec.dra else {
        return Vec::new();
    };
    let labels = owner_labels(ns, &module.name_any());
    dra.device_classes
        .iter()
        .map(|class| DeviceClass {
            metadata: ObjectMeta {
                name: Some(class.name.clone()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(DeviceClassSpec {
                selectors: (!class.selectors.is_empty()).then(|| class.selectors.clone()),
                config: (!class.config.is_empty()).then(|| class.config.clone()),
                ..DeviceClassSpec::default()
            }),
        })
        .collect()
}

/// Names of the `existing` DeviceClasses (this Module's, by label) that `wanted` no longer has.
pub fn stale(existing: &[DeviceClass], wanted: &[DeviceClass]) -> Vec<String> {
    let keep: BTreeSet<String> = wanted.iter().map(ResourceExt::name_any).collect();
    existing
        .iter()
        .map(ResourceExt::name_any)
        .filter(|n| !keep.contains(n))
        .collect()
}

/// The Module a managed DeviceClass belongs to (its labels).
pub fn module_of(class: &DeviceClass) -> Option<ObjectRef<Module>> {
    let labels = class.labels();
    let name = labels.get(MODULE_NAME_LABEL)?;
    let ns = labels.get(MODULE_NAMESPACE_LABEL)?;
    Some(ObjectRef::new(name).within(ns))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn module(dra: &str) -> Module {
        serde_yaml::from_str(&format!(
            "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {{name: gpu, namespace: ns1}}\nspec:\n  selector: {{}}\n{dra}"
        ))
        .unwrap()
    }

    const DRA: &str = r#"  dra:
    driverName: gpu.example.com
    container: {image: r/dra:1}
    deviceClasses:
      - name: gpu.example.com
        selectors: [{cel: {expression: "device.driver == 'gpu.example.com'"}}]
        config: [{opaque: {driver: gpu.example.com, parameters: {kind: GpuConfig, shared: true}}}]
      - name: small.example.com
"#;

    #[test]
    fn classes_carry_the_spec_and_the_modules_labels() {
        let classes = build(&module(DRA), "ns1");
        assert_eq!(classes.len(), 2);
        let gpu = &classes[0];
        assert_eq!(gpu.name_any(), "gpu.example.com");
        let labels = gpu.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MODULE_NAME_LABEL], "gpu");
        assert_eq!(labels[MODULE_NAMESPACE_LABEL], "ns1");
        let json = serde_json::to_value(gpu).unwrap();
        assert_eq!(
            json["spec"]["selectors"][0]["cel"]["expression"],
            "device.driver == 'gpu.example.com'"
        );
        assert_eq!(
            json["spec"]["config"][0]["opaque"]["parameters"]["shared"],
            true
        );
        // A class with neither selectors nor config has an empty spec, not empty lists.
        assert_eq!(
            serde_json::to_value(&classes[1]).unwrap()["spec"],
            serde_json::json!({})
        );
        assert!(build(&module(""), "ns1").is_empty());
    }

    #[test]
    fn stale_are_the_labelled_classes_no_longer_listed() {
        let before = build(&module(DRA), "ns1");
        let after = build(
            &module(&DRA.replace("      - name: small.example.com\n", "")),
            "ns1",
        );
        assert_eq!(stale(&before, &after), ["small.example.com"]);
        assert!(stale(&before, &before).is_empty());
        // The Module gone (or its dra removed): every class is stale.
        assert_eq!(stale(&before, &[]).len(), 2);
    }

    #[test]
    fn a_class_maps_back_to_its_module() {
        let class = &build(&module(DRA), "ns1")[0];
        assert_eq!(module_of(class), Some(ObjectRef::new("gpu").within("ns1")));
        assert_eq!(module_of(&DeviceClass::default()), None);
        assert!(
            label_selector("ns1", "gpu").contains("kmm.node.kubernetes.io/module.namespace=ns1")
        );
    }
}
