use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};

use super::*;
use crate::test_support::module;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const SPEC: &str = r#"
selector: {role: worker}
moduleLoader:
  container:
    modprobe: {moduleName: brd}
    kernelMappings: [{regexp: '-amd64$', containerImage: 'reg/brd:${KERNEL_FULL_VERSION}'}]
"#;

#[test]
fn selector_rules() {
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Labels, Labels, Result<(), &str>); 6] = [
        (&[], &[], Ok(())),
        (&[], &[("any", "x")], Ok(())),
        (
            &[("role", "worker")],
            &[("role", "worker"), ("x", "y")],
            Ok(()),
        ),
        (
            &[("role", "worker")],
            &[("role", "master")],
            Err("node selector label role is master, Module wants worker"),
        ),
        (
            &[("role", "worker")],
            &[],
            Err("node has no selector label role, Module wants worker"),
        ),
        (
            &[("gpu", ""), ("role", "worker")],
            &[("gpu", ""), ("role", "x")],
            Err("node selector label role is x, Module wants worker"),
        ),
    ];
    for (selector, node, want) in cases {
        let got = selector_matches(&labels(selector), &labels(node)).map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(String::from), "{selector:?} vs {node:?}");
    }
}

#[test]
fn eligible_node_gets_the_resolved_target() {
    let m = module("kmm-demo", "brd", SPEC);
    let t = target_node(&m, &labels(&[("role", "worker")]), "6.1.0-56-amd64").expect("eligible");
    assert_eq!(t.container_image, "reg/brd:6.1.0-56-amd64");
}

#[test]
fn ineligible_nodes_get_a_readable_reason() {
    let m = module("kmm-demo", "brd", SPEC);
    let worker = labels(&[("role", "worker")]);
    let cases = [
        (
            labels(&[]),
            "6.1.0-56-amd64",
            "node has no selector label role, Module wants worker",
        ),
        (
            worker.clone(),
            "6.1.0-56-arm64",
            "kernel 6.1.0-56-arm64 matches no kernelMapping",
        ),
        (
            worker.clone(),
            "",
            "node reports no kernel version (status.nodeInfo.kernelVersion is empty)",
        ),
    ];
    for (node_labels, kernel, want) in cases {
        let err = target_node(&m, &node_labels, kernel).expect_err("should fail");
        assert_eq!(err.to_string(), want);
    }
}

#[test]
fn ordered_upgrade_requires_the_version_label() {
    let spec = SPEC.replace("modprobe:", "version: \"2\"\n    modprobe:");
    let m = module("ns", "name", &spec);
    let label = "kmm.node.kubernetes.io/version-module.ns.name";
    let cases = [
        (labels(&[("role", "worker"), (label, "2")]), Ok(())),
        (
            labels(&[("role", "worker"), (label, "1")]),
            Err(
                "node label kmm.node.kubernetes.io/version-module.ns.name is 1, Module wants 2"
                    .to_string(),
            ),
        ),
        (
            labels(&[("role", "worker")]),
            Err(
                "node has no label kmm.node.kubernetes.io/version-module.ns.name, Module wants 2"
                    .to_string(),
            ),
        ),
    ];
    for (node_labels, want) in cases {
        let got = target_node(&m, &node_labels, "6.1.0-56-amd64")
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(got, want, "{node_labels:?}");
    }
}

#[test]
fn without_version_the_version_label_is_ignored() {
    let m = module("ns", "name", SPEC);
    let node_labels = labels(&[
        ("role", "worker"),
        ("kmm.node.kubernetes.io/version-module.ns.name", "7"),
    ]);
    assert!(target_node(&m, &node_labels, "6.1.0-56-amd64").is_ok());
}

#[test]
fn node_object_supplies_labels_and_kernel() {
    let m = module("kmm-demo", "brd", SPEC);
    let mut node = Node::default();
    assert_eq!(
        node_eligibility(&m, &node)
            .expect_err("should fail")
            .to_string(),
        "node has no selector label role, Module wants worker"
    );
    node.metadata.labels = Some(labels(&[("role", "worker")]));
    assert_eq!(
        node_eligibility(&m, &node),
        Err(Ineligible::NoKernelVersion)
    );
    node.status = Some(NodeStatus {
        node_info: Some(NodeSystemInfo {
            kernel_version: "6.1.0-56-amd64".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(node_kernel_version(&node), Some("6.1.0-56-amd64"));
    assert_eq!(
        node_eligibility(&m, &node).map(|t| t.container_image),
        Ok("reg/brd:6.1.0-56-amd64".to_string())
    );
}

#[test]
fn invalid_regexp_makes_the_node_ineligible_with_the_reason() {
    let m = module(
        "ns",
        "n",
        r#"
selector: {}
moduleLoader:
  container:
    modprobe: {moduleName: brd}
    kernelMappings: [{regexp: '(', containerImage: 'r:1'}]
"#,
    );
    let err = target_node(&m, &labels(&[]), "6.1").expect_err("should fail");
    assert!(
        err.to_string()
            .starts_with("invalid regexp '(' in kernelMappings[0]:"),
        "{err}"
    );
}

#[test]
fn node_eligibility_refuses_an_untolerated_taint_and_names_it() {
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    let tolerating = format!("{SPEC}tolerations: [{{key: gpu, operator: Exists}}]\n");
    let plain = module("ns", "n", SPEC);
    let tolerant = module("ns", "n", &tolerating);
    let mut node = Node::default();
    node.metadata.labels = Some(labels(&[("role", "worker")]));
    node.status = Some(NodeStatus {
        node_info: Some(NodeSystemInfo {
            kernel_version: "6.1.0-56-amd64".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let taint = |key: &str| Taint {
        key: key.into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    };
    node.spec = Some(NodeSpec {
        taints: Some(vec![taint("gpu")]),
        ..Default::default()
    });
    let err = node_eligibility(&plain, &node).expect_err("gpu taint not tolerated");
    assert_eq!(
        err,
        Ineligible::UntoleratedTaint {
            taint: "gpu:NoSchedule".into()
        }
    );
    assert!(
        err.to_string()
            .starts_with("node taint gpu:NoSchedule is not tolerated"),
        "{err}"
    );
    assert!(node_eligibility(&tolerant, &node).is_ok());
    // The selector is checked first: a node the Module does not select is not "blocked".
    node.metadata.labels = Some(labels(&[("role", "db")]));
    assert!(matches!(
        node_eligibility(&plain, &node),
        Err(Ineligible::SelectorMismatch { .. })
    ));
}
