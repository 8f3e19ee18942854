//! One way for tests to write a Module: a builder over the upstream YAML shape
//! (`kmm.sigs.x-k8s.io/v1beta1`), so each test says only what differs from a
//! plain Module instead of carrying its own YAML template.
//!
//! ```
//! use kmm_tests::module::ModuleBuilder;
//! let yaml = ModuleBuilder::new("brd")
//!     .selector("kmm-test/node", "n1")
//!     .insecure_mapping("^.+-amd64$", "127.0.0.1:5000/ns/brd:1")
//!     .parameters(&["rd_nr=1"])
//!     .manifest();
//! assert!(yaml.contains(r#""moduleName": "brd""#));
//! ```

use anyhow::{Context, Result};
use kmm_common::Module;
use serde_json::{Map, Value, json};

/// A Module under construction; [`ModuleBuilder::new`] starts from a Module
/// named `name` loading the kernel module `name`, selecting every node, with no
/// kernel mapping yet.
#[derive(Debug, Clone)]
pub struct ModuleBuilder {
    doc: Value,
}

impl ModuleBuilder {
    /// A Module `name` whose `moduleName` is `name`.
    pub fn new(name: &str) -> Self {
        Self {
            doc: json!({
                "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
                "kind": "Module",
                "metadata": {"name": name},
                "spec": {
                    "selector": {},
                    "moduleLoader": {"container": {
                        "modprobe": {"moduleName": name},
                        "kernelMappings": [],
                    }},
                },
            }),
        }
    }

    fn at(&mut self, path: &[&str]) -> &mut Map<String, Value> {
        let mut v = &mut self.doc;
        for key in path {
            if !v.get(*key).is_some_and(Value::is_object) {
                v[*key] = json!({});
            }
            v = &mut v[*key];
        }
        match v {
            Value::Object(map) => map,
            _ => unreachable!("made an object above"),
        }
    }

    fn container(&mut self) -> &mut Map<String, Value> {
        self.at(&["spec", "moduleLoader", "container"])
    }

    /// `spec.moduleLoader.container.modprobe.moduleName`.
    #[must_use]
    pub fn module_name(mut self, module: &str) -> Self {
        self.container()["modprobe"]["moduleName"] = json!(module);
        self
    }

    /// Adds `key: value` to `spec.selector`.
    #[must_use]
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.at(&["spec", "selector"])
            .insert(key.to_string(), json!(value));
        self
    }

    /// Selects only the test's own node (its `kmm-test/node` label): agents of
    /// tests running in parallel watch every Module.
    #[must_use]
    pub fn own_node(self, node: &str) -> Self {
        self.selector("kmm-test/node", node)
    }

    /// A kernel mapping by regexp to `image`.
    #[must_use]
    pub fn mapping(self, regexp: &str, image: &str) -> Self {
        self.push_mapping(json!({"regexp": regexp, "containerImage": image}))
    }

    /// A kernel mapping by regexp to `image` in a plain-HTTP registry (the
    /// test registries), as `registryTLS.insecure: true`.
    #[must_use]
    pub fn insecure_mapping(self, regexp: &str, image: &str) -> Self {
        self.push_mapping(json!({
            "regexp": regexp,
            "containerImage": image,
            "registryTLS": {"insecure": true},
        }))
    }

    /// A kernel mapping given whole (literal kernels, builds, signing).
    #[must_use]
    pub fn push_mapping(mut self, mapping: Value) -> Self {
        if let Some(list) = self.container()["kernelMappings"].as_array_mut() {
            list.push(mapping);
        }
        self
    }

    /// `modprobe.parameters`.
    #[must_use]
    pub fn parameters(mut self, params: &[&str]) -> Self {
        self.container()["modprobe"]["parameters"] = json!(params);
        self
    }

    /// `modprobe.modulesLoadingOrder` (the kernel module first, its
    /// dependencies after).
    #[must_use]
    pub fn loading_order(mut self, order: &[&str]) -> Self {
        self.container()["modprobe"]["modulesLoadingOrder"] = json!(order);
        self
    }

    /// `spec.moduleLoader.container.version` (ordered upgrades).
    #[must_use]
    pub fn version(mut self, version: &str) -> Self {
        self.container().insert("version".into(), json!(version));
        self
    }

    /// `spec.imageRepoSecret.name`.
    #[must_use]
    pub fn image_repo_secret(mut self, secret: &str) -> Self {
        self.at(&["spec"])
            .insert("imageRepoSecret".into(), json!({"name": secret}));
        self
    }

    /// `spec.tolerations`.
    #[must_use]
    pub fn tolerations(mut self, tolerations: Value) -> Self {
        self.at(&["spec"]).insert("tolerations".into(), tolerations);
        self
    }

    /// `spec.devicePlugin.container.image`.
    #[must_use]
    pub fn device_plugin(mut self, image: &str) -> Self {
        self.at(&["spec"]).insert(
            "devicePlugin".into(),
            json!({"container": {"image": image}}),
        );
        self
    }

    /// Merges `patch` into the Module (JSON merge patch semantics: objects
    /// merge, anything else replaces, `null` removes), for fields the other
    /// methods do not name.
    #[must_use]
    pub fn merge(mut self, patch: Value) -> Self {
        merge(&mut self.doc, patch);
        self
    }

    /// The Module as JSON.
    pub fn json(&self) -> &Value {
        &self.doc
    }

    /// The Module as a manifest for `kubectl apply -f -`: JSON, which is
    /// YAML too, so no value is re-typed by kubectl's YAML 1.1 reading
    /// (a selector value `yes` stays a string).
    pub fn manifest(&self) -> String {
        // A JSON value always serializes.
        serde_json::to_string_pretty(&self.doc).unwrap_or_default()
    }

    /// The Module as the typed object, for the kube client.
    ///
    /// # Errors
    /// If a merged field does not fit the Module type.
    pub fn module(&self) -> Result<Module> {
        serde_json::from_value(self.doc.clone()).context("the built Module does not parse")
    }
}

/// RFC 7386 merge of `patch` into `doc`.
fn merge(doc: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !doc.is_object() {
                *doc = json!({});
            }
            for (k, v) in fields {
                if v.is_null() {
                    if let Some(map) = doc.as_object_mut() {
                        map.remove(&k);
                    }
                } else {
                    merge(&mut doc[k.as_str()], v);
                }
            }
        }
        other => *doc = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_module_parses_and_carries_what_was_asked() {
        let m = ModuleBuilder::new("m")
            .module_name("kmod_m")
            .own_node("n1")
            .selector("role", "gpu")
            .insecure_mapping("^.+$", "reg/m:1")
            .parameters(&["a=1"])
            .version("v2")
            .image_repo_secret("pull")
            .merge(json!({"spec": {"moduleLoader": {"container": {"modprobe": {"firmwarePath": "/fw"}}}}}))
            .module()
            .expect("parses");
        let c = &m.spec.module_loader.as_ref().expect("loader").container;
        assert_eq!(c.modprobe.module_name, "kmod_m");
        assert_eq!(c.modprobe.firmware_path, "/fw");
        assert_eq!(c.version, "v2");
        assert_eq!(c.kernel_mappings.len(), 1);
        assert_eq!(m.spec.selector.len(), 2);
        let manifest = ModuleBuilder::new("x")
            .selector("k", "yes")
            .merge(json!({"spec": {"moduleLoader": null}}))
            .manifest();
        assert!(manifest.contains(r#""k": "yes""#), "{manifest}");
        assert!(!manifest.contains("moduleLoader"), "{manifest}");
    }
}
