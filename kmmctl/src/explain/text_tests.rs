use super::*;
use crate::explain::report::{
    ErrorInfo, LabelInfo, Loaded, ModuleRef, NotTargeted, SCHEMA_VERSION, TargetInfo,
};

const READY: &str = "kmm.node.kubernetes.io/ns.m.ready";

fn node(name: &str, state: NodeState, reason: &str) -> NodeExplanation {
    NodeExplanation {
        node: name.into(),
        kernel: Some("6.1.0-56-amd64".into()),
        state,
        reason: reason.into(),
        message: format!("message of {name}"),
        applies: false,
        target: None,
        not_targeted: None,
        loaded: None,
        last_error: None,
        ready_label: LabelInfo {
            key: READY.into(),
            present: false,
            version: None,
        },
        notes: Vec::new(),
    }
}

fn target() -> Option<TargetInfo> {
    Some(TargetInfo {
        mapping_index: 2,
        image: "reg/ns/m:6.1.0-56-amd64".into(),
        kernel: "6.1.0-56-amd64".into(),
        version: None,
    })
}

fn explanation() -> Explanation {
    let mut loaded = node("worker-long-name", NodeState::Loaded, "Loaded");
    loaded.applies = true;
    loaded.target = target();
    loaded.loaded = Some(Loaded {
        image: "reg/ns/m:6.1.0-56-amd64".into(),
        digest: Some("sha256:abc".into()),
        kernel: "6.1.0-56-amd64".into(),
        since: Some("2026-11-25T21:00:00Z".into()),
    });
    loaded.ready_label.present = true;
    let mut failing = node("w2", NodeState::Failing, "ModprobeFailed");
    failing.applies = true;
    failing.target = target();
    failing.last_error = Some(ErrorInfo {
        reason: "ModprobeFailed".into(),
        message: "m: Invalid argument".into(),
    });
    failing.notes = vec!["a note".into()];
    let mut skipped = node("w3", NodeState::NotTargeted, "NoKernelMapping");
    skipped.kernel = None;
    skipped.not_targeted = Some(NotTargeted {
        reason: "NoKernelMapping".into(),
        message: "kernel x matches no kernelMapping".into(),
    });
    let pending = node("w4", NodeState::Pending, "NotReported");
    let nodes = vec![loaded, failing, skipped, pending];
    Explanation {
        schema_version: SCHEMA_VERSION,
        module: ModuleRef {
            namespace: "ns".into(),
            name: "m".into(),
        },
        summary: crate::explain::verdict::summarize(&nodes),
        nodes,
    }
}

#[test]
fn one_aligned_block_per_node_then_the_summary() {
    let now: Timestamp = "2026-11-25T21:05:30Z".parse().unwrap();
    let text = render(&explanation(), now);
    let want = "\
Module ns/m

worker-long-name  Loaded
  kernel       6.1.0-56-amd64
  applies      yes: kernelMappings[2] -> reg/ns/m:6.1.0-56-amd64
  loaded       reg/ns/m:6.1.0-56-amd64@sha256:abc (kernel 6.1.0-56-amd64, since 2026-11-25T21:00:00Z, 5m ago)
  last error   none
  ready label  kmm.node.kubernetes.io/ns.m.ready present

w2                Failing (ModprobeFailed)
  kernel       6.1.0-56-amd64
  applies      yes: kernelMappings[2] -> reg/ns/m:6.1.0-56-amd64
  loaded       nothing
  last error   ModprobeFailed: m: Invalid argument
  ready label  kmm.node.kubernetes.io/ns.m.ready absent
  note         a note

w3                NotTargeted (NoKernelMapping)
  kernel       (not reported)
  applies      no: kernel x matches no kernelMapping (NoKernelMapping)
  loaded       nothing
  last error   none
  ready label  kmm.node.kubernetes.io/ns.m.ready absent

w4                Pending (NotReported)
  kernel       6.1.0-56-amd64
  applies      no
  loaded       nothing
  last error   none
  ready label  kmm.node.kubernetes.io/ns.m.ready absent
  status       message of w4

4 nodes: 1 loaded, 1 pending, 1 failing, 1 not targeted";
    assert_eq!(text, want);
}

#[test]
fn ages_use_one_unit() {
    assert_eq!(
        [
            age(-3),
            age(59),
            age(119),
            age(120),
            age(7199),
            age(7200),
            age(200_000)
        ],
        ["0s", "59s", "119s", "2m", "119m", "2h", "2d"]
    );
}

#[test]
fn one_node_is_singular() {
    let s = Summary {
        nodes: 1,
        not_targeted: 1,
        ..Summary::default()
    };
    assert_eq!(
        summary_line(&s),
        "1 node: 0 loaded, 0 pending, 0 failing, 1 not targeted"
    );
}
