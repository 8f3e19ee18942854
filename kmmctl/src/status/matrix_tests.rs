use k8s_openapi::api::core::v1::Node;
use kmm_common::{Module, NodeModulesConfig};
use serde_json::{Value, json};

use super::*;
use crate::explain::explain_module;

const KVER: &str = "6.1.0-56-amd64";

/// Module `ns/name` for nodes labelled `role: <role>`, amd64 kernels only; `version` set
/// when given.
fn module(ns: &str, name: &str, role: &str, version: Option<&str>) -> Module {
    let mut container = json!({
        "modprobe": {"moduleName": name},
        "kernelMappings": [{"regexp": "-amd64$", "containerImage": format!("reg/{name}:${{KERNEL_FULL_VERSION}}")}],
    });
    if let Some(v) = version {
        container["version"] = json!(v);
    }
    serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"role": role}, "moduleLoader": {"container": container}}
    }))
    .unwrap()
}

fn node(name: &str, labels: Value, kernel: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {"nodeInfo": {
            "kernelVersion": kernel, "architecture": "amd64", "operatingSystem": "linux",
            "bootID": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
            "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""
        }}
    }))
    .unwrap()
}

fn nmc(node: &str, entries: Value) -> NodeModulesConfig {
    serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "NodeModulesConfig",
        "metadata": {"name": node}, "spec": {}, "status": {"modules": entries}
    }))
    .unwrap()
}

fn loaded(ns: &str, name: &str, version: Option<&str>) -> Value {
    let image = format!("reg/{name}:{KVER}");
    let mut config = json!({"kernelVersion": KVER, "containerImage": image,
                            "modprobe": {"moduleName": name}});
    if let Some(v) = version {
        config["version"] = json!(v);
    }
    json!({"name": name, "namespace": ns, "serviceAccountName": "", "config": config,
           "image": image, "kernel": KVER})
}

fn failing(ns: &str, name: &str, reason: &str, message: &str) -> Value {
    json!({"name": name, "namespace": ns, "serviceAccountName": "",
           "lastError": {"reason": reason, "message": message}})
}

#[test]
fn the_matrix_shows_each_module_on_each_node_and_what_fails() {
    let gpu = module("drivers", "gpu", "gpu", Some("2.0"));
    let nic = module("net", "nic", "gpu", None);
    let nodes = [
        node(
            "w1",
            json!({"role": "gpu", "kmm.node.kubernetes.io/version-module.drivers.gpu": "2.0"}),
            KVER,
        ),
        node(
            "w2",
            json!({"role": "gpu", "kmm.node.kubernetes.io/version-module.drivers.gpu": "2.0"}),
            KVER,
        ),
        node("w3", json!({"role": "cpu"}), KVER),
    ];
    let nmcs = [
        nmc(
            "w1",
            json!([
                loaded("drivers", "gpu", Some("2.0")),
                failing(
                    "net",
                    "nic",
                    "ImagePullFailed",
                    "reg/nic:6.1.0-56-amd64: not found"
                )
            ]),
        ),
        nmc("w2", json!([loaded("net", "nic", None)])),
    ];
    let modules: Vec<_> = [&gpu, &nic]
        .into_iter()
        .map(|m| explain_module(m, &nodes, &nmcs))
        .collect();
    let got = render(&modules);
    let want = "\
MODULE        TARGETED   LOADED   PENDING   FAILING
drivers/gpu   2          1        1         0
net/nic       2          1        0         1

NODE   KERNEL           drivers/gpu                net/nic
w1     6.1.0-56-amd64   Loaded v2.0                Failing ImagePullFailed
w2     6.1.0-56-amd64   Pending NotReported v2.0   Loaded
w3     6.1.0-56-amd64   -                          -

FAILING
net/nic on w1: ImagePullFailed: reg/nic:6.1.0-56-amd64: not found";
    assert_eq!(got, want);
}

#[test]
fn no_failing_cell_means_no_failing_section() {
    let gpu = module("drivers", "gpu", "gpu", None);
    let nodes = [node("w1", json!({"role": "gpu"}), KVER)];
    let nmcs = [nmc("w1", json!([loaded("drivers", "gpu", None)]))];
    let got = render(&[explain_module(&gpu, &nodes, &nmcs)]);
    assert!(got.ends_with("w1     6.1.0-56-amd64   Loaded"), "{got}");
    assert!(!got.contains("\n\nFAILING\n"), "{got}");
}
