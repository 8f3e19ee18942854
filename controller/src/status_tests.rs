use super::*;
use kmm_common::{ModuleConfig, ModuleError, ModuleItem, NodeModuleStatus};

const KVER: &str = "6.1.0-9-amd64";

fn module(extra: &str) -> Module {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {{name: brd, namespace: ns1}}
spec:
  selector: {{role: gpu}}
  moduleLoader:
    container:
      modprobe: {{moduleName: brd}}
      kernelMappings: [{{regexp: '-amd64$', containerImage: 'r/brd:1'}}]
{extra}
"#
    ))
    .unwrap()
}

fn node(name: &str, labels: &[(&str, &str)], kernel: &str) -> Arc<Node> {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"nodeInfo": {"kernelVersion": kernel, "architecture": "", "bootID": "",
                "containerRuntimeVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""}}
        }))
        .unwrap(),
    )
}

fn entry(ns: &str, name: &str) -> NodeModuleStatus {
    NodeModuleStatus {
        item: ModuleItem {
            name: name.into(),
            namespace: ns.into(),
            ..ModuleItem::default()
        },
        ..NodeModuleStatus::default()
    }
}

fn loaded() -> NodeModuleStatus {
    NodeModuleStatus {
        config: Some(ModuleConfig::default()),
        ..entry("ns1", "brd")
    }
}

fn failed(reason: &str, msg: &str) -> NodeModuleStatus {
    NodeModuleStatus {
        last_error: Some(ModuleError {
            reason: reason.into(),
            message: msg.into(),
        }),
        ..entry("ns1", "brd")
    }
}

fn nmc(node: &str, modules: Vec<NodeModuleStatus>) -> Arc<NodeModulesConfig> {
    let mut n = NodeModulesConfig::new(node, Default::default());
    n.status = Some(kmm_common::NodeModulesConfigStatus { modules });
    Arc::new(n)
}

#[test]
fn mixed_fleet_counts_matching_desired_and_available() {
    let nodes = [
        node("a", &[("role", "gpu")], KVER),
        node("b", &[("role", "gpu")], KVER),
        node("c", &[("role", "gpu")], "6.1.0-9-arm64"), // no mapping
        node("d", &[("role", "cpu")], KVER),            // not selected
        node("e", &[], KVER),                           // not selected
    ];
    let nmcs = [
        nmc("a", vec![loaded()]),
        nmc("b", vec![entry("ns1", "brd")]), // entry but not loaded
        nmc("gone", vec![loaded()]),         // Node deleted: not counted
        nmc(
            "d",
            vec![NodeModuleStatus {
                config: Some(ModuleConfig::default()),
                ..entry("ns2", "brd") // another Module of the same name
            }],
        ),
    ];
    let fleet = Fleet {
        nodes: &nodes,
        nmcs: &nmcs,
    };
    let s = loader_counts(&module(""), fleet);
    assert_eq!(
        (
            s.nodes_matching_selector_number,
            s.desired_number,
            s.available_number
        ),
        (3, 2, 1)
    );
}

#[test]
fn node_counts_give_each_state_of_a_modules_nodes() {
    let nodes = [
        node("a", &[("role", "gpu")], KVER),
        node("b", &[("role", "gpu")], KVER),            // fails
        node("c", &[("role", "gpu")], KVER),            // waits for its build: not an error
        node("d", &[("role", "gpu")], "6.1.0-9-arm64"), // no mapping
        node("e", &[("role", "cpu")], KVER),            // not selected
    ];
    let nmcs = [
        nmc("a", vec![loaded()]),
        nmc("b", vec![failed("ImagePullFailed", "pull refused")]),
        nmc(
            "c",
            vec![failed(kmm_common::REASON_WAITING_FOR_IMAGE, "building")],
        ),
    ];
    let fleet = Fleet {
        nodes: &nodes,
        nmcs: &nmcs,
    };
    assert_eq!(
        node_counts(&module(""), fleet),
        NodeCounts {
            matching: 4,
            desired: 3,
            loaded: 1,
            // b and c; none has a Ready condition, so both count as not Ready too.
            waiting: 2,
            not_ready: 2,
            failed: 1,
        }
    );
}

#[test]
fn ordered_upgrade_version_label_limits_desired() {
    let mut m2 = module("");
    if let Some(l) = m2.spec.module_loader.as_mut() {
        l.container.version = "v2".into();
    }
    let label = kmm_common::version_module_label("ns1", "brd");
    let nodes = [
        node("a", &[("role", "gpu"), (label.as_str(), "v2")], KVER),
        node("b", &[("role", "gpu"), (label.as_str(), "v1")], KVER),
    ];
    let s = loader_counts(
        &m2,
        Fleet {
            nodes: &nodes,
            nmcs: &[],
        },
    );
    assert_eq!((s.nodes_matching_selector_number, s.desired_number), (2, 1));
}

#[test]
fn plugin_desired_is_ready_labelled_nodes_available_from_daemonset() {
    let m = module("  devicePlugin:\n    container: {image: r/dp:1}\n");
    let ready = ready_label("ns1", "brd");
    let nodes = [
        node("a", &[("role", "gpu"), (ready.as_str(), "")], KVER),
        node("b", &[("role", "gpu")], KVER),
        node("c", &[(ready.as_str(), "")], KVER), // not selected
    ];
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "status": {"numberAvailable": 1, "currentNumberScheduled": 1, "desiredNumberScheduled": 1,
                   "numberMisscheduled": 0, "numberReady": 1}
    }))
    .unwrap();
    let fleet = Fleet {
        nodes: &nodes,
        nmcs: &[],
    };
    let s = plugin_counts(&m, Kind::DevicePlugin, fleet, Some(&ds));
    assert_eq!(
        (
            s.nodes_matching_selector_number,
            s.desired_number,
            s.available_number
        ),
        (2, 1, 1)
    );
    assert_eq!(
        plugin_counts(&module(""), Kind::DevicePlugin, fleet, Some(&ds)),
        DaemonSetStatus::default()
    );
    // The DRA driver is counted alike, under its own kind only.
    let dra = module("  dra:\n    driverName: gpu.example.com\n    container: {image: r/dra:1}\n");
    assert_eq!(
        plugin_counts(&dra, Kind::Dra, fleet, Some(&ds)),
        DaemonSetStatus {
            nodes_matching_selector_number: 2,
            desired_number: 1,
            available_number: 1
        }
    );
    assert_eq!(
        plugin_counts(&dra, Kind::DevicePlugin, fleet, Some(&ds)),
        DaemonSetStatus::default()
    );
    // Without a module loader nothing sets `.ready`: every selected node is desired.
    let mut bare = dra.clone();
    bare.spec.module_loader = None;
    assert_eq!(
        plugin_counts(&bare, Kind::Dra, fleet, None).desired_number,
        2
    );
}

#[test]
fn degraded_aggregates_errors_by_reason_with_node_counts() {
    let nodes = [node("a", &[], KVER)];
    let nmcs = [
        nmc("n1", vec![failed("ImagePullFailed", "manifest unknown")]),
        nmc(
            "n2",
            vec![failed("ImagePullFailed", "manifest unknown (2)")],
        ),
        nmc("n3", vec![failed("ModprobeFailed", "exec format error")]),
        nmc("n4", vec![loaded()]),
    ];
    let fleet = Fleet {
        nodes: &nodes,
        nmcs: &nmcs,
    };
    let (reason, msg) = degraded(&module(""), fleet).unwrap();
    assert_eq!(reason, "MultipleErrors");
    assert_eq!(
        msg,
        "2 nodes: ImagePullFailed: manifest unknown; 1 node: ModprobeFailed: exec format error"
    );
    let single = [nmc("n1", vec![failed("ImagePullFailed", "x")])];
    let (reason, msg) = degraded(
        &module(""),
        Fleet {
            nodes: &nodes,
            nmcs: &single,
        },
    )
    .unwrap();
    assert_eq!(
        (reason.as_str(), msg.as_str()),
        ("ImagePullFailed", "1 node: ImagePullFailed: x")
    );
    assert!(
        degraded(
            &module(""),
            Fleet {
                nodes: &nodes,
                nmcs: &[nmc("n4", vec![loaded()])]
            }
        )
        .is_none()
    );
}

fn status_of<'a>(conds: &'a [Condition], t: &str) -> (&'a str, &'a str) {
    let c = conds.iter().find(|c| c.type_ == t).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

fn counts(desired: i32, available: i32) -> DaemonSetStatus {
    DaemonSetStatus {
        nodes_matching_selector_number: desired,
        desired_number: desired,
        available_number: available,
    }
}

#[test]
fn conditions_follow_counts() {
    let c = conditions(&counts(3, 1), None, &Waiting::default(), None);
    assert_eq!(status_of(&c, AVAILABLE), ("False", "NodesPending"));
    assert_eq!(status_of(&c, PROGRESSING), ("True", "Loading"));
    assert_eq!(status_of(&c, DEGRADED), ("False", "NoErrors"));

    let c = conditions(&counts(3, 3), None, &Waiting::default(), None);
    assert_eq!(status_of(&c, AVAILABLE), ("True", "AllNodesLoaded"));
    assert_eq!(status_of(&c, PROGRESSING), ("False", "Complete"));

    let c = conditions(&counts(0, 0), None, &Waiting::default(), None);
    assert_eq!(status_of(&c, AVAILABLE), ("True", "NoNodesTargeted"));

    let c = conditions(
        &counts(2, 2),
        Some((Kind::Dra, &counts(2, 1))),
        &Waiting::default(),
        None,
    );
    assert_eq!(status_of(&c, PROGRESSING), ("True", "Loading"));
    assert!(
        c.iter()
            .any(|c| c.message.contains("DRA driver available on 1/2 nodes")),
        "{c:?}"
    );

    let c = conditions(
        &counts(2, 1),
        None,
        &Waiting::default(),
        Some((
            "ImagePullFailed".into(),
            "1 node: ImagePullFailed: x".into(),
        )),
    );
    assert_eq!(status_of(&c, DEGRADED), ("True", "ImagePullFailed"));
}

#[test]
fn unchanged_conditions_keep_transition_time_so_status_is_stable() {
    let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
    let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2000).unwrap());
    let first = stamp(
        conditions(&counts(2, 1), None, &Waiting::default(), None),
        &[],
        Some(1),
        &t0,
    );
    let again = stamp(
        conditions(&counts(2, 1), None, &Waiting::default(), None),
        &first,
        Some(1),
        &t1,
    );
    assert_eq!(first, again);
    let done = stamp(
        conditions(&counts(2, 2), None, &Waiting::default(), None),
        &first,
        Some(1),
        &t1,
    );
    let avail = done.iter().find(|c| c.type_ == AVAILABLE).unwrap();
    assert_eq!(avail.last_transition_time, t1);
    let degr = done.iter().find(|c| c.type_ == DEGRADED).unwrap();
    assert_eq!(degr.last_transition_time, t0);
}

#[test]
fn deletion_waits_for_nmc_loaded_or_ready_label() {
    let ready = ready_label("ns1", "brd");
    let nodes = [
        node("a", &[], KVER),
        node("b", &[(ready.as_str(), "")], KVER),
        node("c", &[], KVER),
    ];
    let nmcs = [
        nmc("a", vec![loaded()]),
        nmc("c", vec![entry("ns1", "brd")]),
        nmc("gone", vec![loaded()]),
    ];
    let m = module("");
    assert_eq!(
        nodes_still_loaded(
            &m,
            Fleet {
                nodes: &nodes,
                nmcs: &nmcs
            }
        ),
        ["a", "b"]
    );
    let digest_only = [nmc(
        "c",
        vec![NodeModuleStatus {
            digest: "sha256:00".into(),
            ..entry("ns1", "brd")
        }],
    )];
    assert_eq!(
        nodes_still_loaded(
            &m,
            Fleet {
                nodes: &nodes[2..],
                nmcs: &digest_only
            }
        ),
        ["c"]
    );
}

/// `node` with its `Ready` condition set to `status`.
fn with_ready(node: Arc<Node>, status: &str) -> Arc<Node> {
    let mut n = (*node).clone();
    let s = n.status.get_or_insert_with(Default::default);
    s.conditions = Some(vec![k8s_openapi::api::core::v1::NodeCondition {
        type_: "Ready".into(),
        status: status.into(),
        ..Default::default()
    }]);
    Arc::new(n)
}

#[test]
fn waiting_on_dead_nodes_is_said_in_progressing() {
    let gpu = [("role", "gpu")];
    let nodes = [
        with_ready(node("a", &gpu, KVER), "True"),    // loaded
        with_ready(node("b", &gpu, KVER), "True"),    // loading
        with_ready(node("c", &gpu, KVER), "Unknown"), // kubelet stopped reporting
        node("d", &gpu, KVER),                        // never reported Ready
        with_ready(node("e", &[], KVER), "False"),    // not selected
        with_ready(node("f", &gpu, KVER), "False"),   // NotReady but loaded
    ];
    let nmcs = [nmc("a", vec![loaded()]), nmc("f", vec![loaded()])];
    let m = module("");
    let fleet = Fleet {
        nodes: &nodes,
        nmcs: &nmcs,
    };
    let waiting = waiting_for(&m, fleet);
    assert_eq!(
        waiting,
        Waiting {
            nodes: 3,
            not_ready: vec!["c".into(), "d".into()],
        }
    );
    let c = conditions(&loader_counts(&m, fleet), None, &waiting, None);
    let progressing = c.iter().find(|c| c.type_ == PROGRESSING).unwrap();
    assert_eq!(progressing.status, "True");
    assert_eq!(
        progressing.message,
        "module loaded on 2/5 desired nodes; waiting for 3 nodes; 2 of them not Ready: c, d"
    );

    // Only Ready nodes waited for: the message says nothing more.
    let ready_only = [nodes[0].clone(), nodes[1].clone()];
    let fleet = Fleet {
        nodes: &ready_only,
        nmcs: &nmcs,
    };
    let c = conditions(
        &loader_counts(&m, fleet),
        None,
        &waiting_for(&m, fleet),
        None,
    );
    let progressing = c.iter().find(|c| c.type_ == PROGRESSING).unwrap();
    assert_eq!(progressing.message, "module loaded on 1/2 desired nodes");
}

#[test]
fn many_dead_nodes_are_listed_up_to_ten() {
    let names: Vec<String> = (0..12).map(|i| format!("n{i:02}")).collect();
    let waiting = Waiting {
        nodes: 12,
        not_ready: names,
    };
    let c = conditions(&counts(12, 0), None, &waiting, None);
    let progressing = c.iter().find(|c| c.type_ == PROGRESSING).unwrap();
    assert!(
        progressing.message.ends_with(
            "12 of them not Ready: n00, n01, n02, n03, n04, n05, n06, n07, n08, n09 and 2 more"
        ),
        "{}",
        progressing.message
    );
}
