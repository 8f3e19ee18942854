//! How fast a Module is resolved for a fleet: the agent resolves every Module
//! on each change of its Node, the controller resolves every Module for every
//! Node when it counts status. Target: 1,000 nodes × one Module with three
//! regexp mappings well under 100 ms on one core (criterion writes its
//! estimates under target/criterion/).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kmm_common::{Module, target_node};

fn module() -> Module {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": "gpu", "namespace": "drivers"},
        "spec": {
            "selector": {"feature.node.kubernetes.io/gpu": "true"},
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "gpu", "parameters": ["a=1"]},
                "kernelMappings": [
                    {"regexp": "^5\\.14\\..*\\.el9\\.x86_64$", "containerImage": "reg/gpu:el9-${KERNEL_FULL_VERSION}"},
                    {"regexp": "^6\\.8\\..*-generic$", "containerImage": "reg/gpu:ubuntu-${KERNEL_FULL_VERSION}"},
                    {"regexp": "^6\\.1\\.0-[0-9]+-amd64$", "containerImage": "reg/${MOD_NAMESPACE}/${MOD_NAME}:${KERNEL_FULL_VERSION}"}
                ]
            }}
        }
    }))
    .expect("valid Module")
}

fn fleet(n: usize) -> Vec<(BTreeMap<String, String>, String)> {
    (0..n)
        .map(|i| {
            let labels = BTreeMap::from([
                (
                    "feature.node.kubernetes.io/gpu".to_string(),
                    (i % 2 == 0).to_string(),
                ),
                ("kubernetes.io/hostname".to_string(), format!("node-{i}")),
            ]);
            (labels, format!("6.1.0-{}-amd64", i % 60))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let m = module();
    let nodes = fleet(1000);
    c.bench_function("target_node/1000 nodes, 3 regexp mappings", |b| {
        b.iter(|| {
            nodes
                .iter()
                .filter(|(labels, kernel)| target_node(black_box(&m), labels, kernel).is_ok())
                .count()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
