//! Helpers for unit tests: Modules from compact YAML.

use crate::Module;

/// A Module named `ns/name` whose spec is `spec_yaml`.
pub fn module(ns: &str, name: &str, spec_yaml: &str) -> Module {
    let spec: serde_yaml::Value = serde_yaml::from_str(spec_yaml).expect("spec yaml");
    let value = serde_json::json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    serde_json::from_value(value).expect("module")
}
