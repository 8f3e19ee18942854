#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kmm_common::{
    REBOOT_REQUIRED_LABEL, RolloutStrategy, UpgradeState, ready_label, upgrade_boot_id_annotation,
    upgrade_cordoned_annotation, upgrade_message_annotation, upgrade_since_annotation,
    upgrade_state_label, version_module_label, version_ready_label,
};

use super::*;
use crate::rollout::policy::{Budget, Policy};

const NS: &str = "ns";
const M: &str = "gpu";

fn policy() -> Policy {
    Policy {
        target: "v2".into(),
        max_unavailable: Budget::Count(1),
        max_parallel: 1,
        max_failed: 1,
        paused: false,
        cordon: true,
        wait_for_pods: None,
        eviction: None,
        plugin_ready_label: None,
        validation_job: false,
        timeout_seconds: 600,
        strategy: RolloutStrategy::Unload,
    }
}

fn now() -> Timestamp {
    "2030-01-01T00:10:00Z".parse().unwrap()
}

/// A ready node on `version`, in `state` (none when `None`), entered `ago` seconds ago.
fn node(name: &str, version: &str, state: Option<UpgradeState>, ago: i64) -> NodeView {
    let mut labels = BTreeMap::from([
        (version_module_label(NS, M), version.to_string()),
        (version_ready_label(NS, M), version.to_string()),
        (ready_label(NS, M), String::new()),
    ]);
    let mut annotations = BTreeMap::new();
    if let Some(s) = state {
        labels.insert(upgrade_state_label(NS, M), s.as_str().into());
        let since = now() - SignedDuration::from_secs(ago);
        annotations.insert(upgrade_since_annotation(NS, M), rfc3339(since));
    }
    NodeView {
        name: name.into(),
        uid: None,
        labels,
        annotations,
        unschedulable: false,
        boot_id: "boot-1".into(),
        in_scope: true,
    }
}

fn run(policy: &Policy, nodes: &[NodeView], facts: &BTreeMap<String, NodeFacts>) -> Plan {
    plan(&Input {
        namespace: NS,
        module: M,
        policy,
        nodes,
        facts,
        now: now(),
    })
}

fn none() -> BTreeMap<String, NodeFacts> {
    BTreeMap::new()
}

fn started(p: &Plan) -> Vec<&str> {
    p.actions
        .iter()
        .filter(|a| a.starts)
        .map(|a| a.node.as_str())
        .collect()
}

fn to_state(p: &Plan, node: &str) -> Option<UpgradeState> {
    p.actions
        .iter()
        .filter(|a| a.node == node)
        .find_map(|a| a.patch.as_ref()?.state)
}

fn action<'a>(p: &'a Plan, node: &str) -> &'a NodeAction {
    p.actions.iter().find(|a| a.node == node).unwrap()
}

fn fleet(n: usize, state: UpgradeState) -> Vec<NodeView> {
    (0..n)
        .map(|i| node(&format!("n{i:02}"), "v1", Some(state), 0))
        .collect()
}

#[test]
fn the_budget_limits_how_many_nodes_start_in_name_order() {
    let mut p = policy();
    p.max_unavailable = Budget::Count(3);
    p.max_parallel = 5;
    let plan = run(&p, &fleet(10, UpgradeState::Required), &none());
    assert_eq!(started(&plan), ["n00", "n01", "n02"]);
    assert_eq!(plan.counts.in_progress, 3);
    assert_eq!(plan.counts.unavailable, 3);
    assert_eq!(plan.wave, ["n00", "n01", "n02"]);

    // maxParallel binds when it is the smaller.
    p.max_parallel = 2;
    assert_eq!(
        started(&run(&p, &fleet(10, UpgradeState::Required), &none())),
        ["n00", "n01"]
    );
}

#[test]
fn nodes_not_ready_for_other_reasons_use_the_budget_and_cost_nothing_more_to_start() {
    let mut p = policy();
    p.max_unavailable = Budget::Count(2);
    p.max_parallel = 5;
    let mut nodes = fleet(4, UpgradeState::Required);
    // n03 lost its module: already unavailable.
    nodes[3].labels.remove(&ready_label(NS, M));
    let plan = run(&p, &nodes, &none());
    // One more ready node may go (1 + 1 <= 2), and n03 costs nothing more.
    assert_eq!(started(&plan), ["n00", "n03"]);
    assert_eq!(plan.counts.unavailable, 2);
}

#[test]
fn percentages_round_down_with_at_least_one() {
    use crate::rollout::policy::max_unavailable;
    assert_eq!(max_unavailable(Budget::Percent(10), 50), 5);
    assert_eq!(max_unavailable(Budget::Percent(10), 9), 1);
    assert_eq!(max_unavailable(Budget::Percent(25), 10), 2);
    assert_eq!(max_unavailable(Budget::Count(5), 3), 5);
}

#[test]
fn skipped_and_failed_nodes_are_never_touched_and_failures_stop_new_starts() {
    let mut p = policy();
    p.max_parallel = 3;
    p.max_unavailable = Budget::Count(3);
    let nodes = vec![
        node("a", "v1", Some(UpgradeState::Skip), 0),
        node("b", "v1", Some(UpgradeState::Failed), 0),
        node("c", "v1", Some(UpgradeState::Required), 0),
    ];
    let plan = run(&p, &nodes, &none());
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert!(plan.stopped);
    assert_eq!(
        (
            plan.counts.skipped,
            plan.counts.failed,
            plan.counts.required
        ),
        (1, 1, 1)
    );
    // Below the limit it goes on.
    p.max_failed = 2;
    let plan = run(&p, &nodes, &none());
    assert_eq!(started(&plan), ["c"]);
    assert!(!plan.stopped);
}

#[test]
fn paused_starts_nothing_but_nodes_in_progress_go_on() {
    let mut p = policy();
    p.paused = true;
    p.max_parallel = 3;
    p.max_unavailable = Budget::Count(3);
    let nodes = vec![
        node("a", "v1", Some(UpgradeState::Cordoned), 0),
        node("b", "v1", Some(UpgradeState::Required), 0),
    ];
    let plan = run(&p, &nodes, &none());
    assert!(started(&plan).is_empty());
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Upgrading));
}

#[test]
fn a_node_walks_every_step_the_policy_asks_for_one_per_pass() {
    use UpgradeState as S;
    let mut p = policy();
    p.wait_for_pods = Some(0);
    p.eviction = Some((0, false));
    p.validation_job = true;
    let mut n = node("a", "v1", None, 0);
    let mut facts = BTreeMap::from([("a".to_string(), NodeFacts::default())]);
    facts.get_mut("a").unwrap().job = JobFact::Succeeded;
    let mut seen = Vec::new();
    for _ in 0..12 {
        let plan = run(&p, std::slice::from_ref(&n), &facts);
        let Some(a) = plan.actions.first() else { break };
        let patch = a.patch.clone().unwrap();
        // Apply the patch as the API server would.
        let json = patch.to_json(NS, M, now());
        for (k, v) in json["metadata"]["labels"].as_object().unwrap() {
            match v.as_str() {
                Some(v) => n.labels.insert(k.clone(), v.into()),
                None => n.labels.remove(k),
            };
        }
        for (k, v) in json["metadata"]["annotations"].as_object().unwrap() {
            match v.as_str() {
                Some(v) => n.annotations.insert(k.clone(), v.into()),
                None => n.annotations.remove(k),
            };
        }
        if let Some(u) = patch.unschedulable {
            n.unschedulable = u;
        }
        if patch.state == Some(S::Upgrading) {
            // The agent swaps the module.
            assert_eq!(patch.version.as_deref(), Some("v2"));
            n.labels.insert(version_ready_label(NS, M), "v2".into());
        }
        if patch.state == Some(S::Cordoned) {
            assert!(n.unschedulable);
            assert!(
                n.annotations
                    .contains_key(&upgrade_cordoned_annotation(NS, M))
            );
            assert_eq!(a.event.as_ref().unwrap().reason, "UpgradeStarted");
        }
        seen.push(patch.state.unwrap());
    }
    assert_eq!(
        seen,
        // No `required` first: a node that may start at once starts.
        [
            S::Cordoned,
            S::WaitingForPods,
            S::Evicting,
            S::Upgrading,
            S::Validating,
            S::Uncordoning,
            S::Done
        ]
    );
    assert!(!n.unschedulable);
    assert!(
        !n.annotations
            .contains_key(&upgrade_cordoned_annotation(NS, M))
    );
    // Done is final: nothing more to do, counted done.
    let plan = run(&p, std::slice::from_ref(&n), &facts);
    assert!(plan.actions.is_empty());
    assert!(plan.complete);
    assert_eq!(plan.counts.done, 1);
}

#[test]
fn steps_the_policy_does_not_ask_for_are_skipped() {
    let p = policy();
    let plan = run(
        &p,
        &[node("a", "v1", Some(UpgradeState::Cordoned), 0)],
        &none(),
    );
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Upgrading));
    let plan = run(
        &p,
        &[node("a", "v2", Some(UpgradeState::Upgrading), 0)],
        &none(),
    );
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Uncordoning));
}

#[test]
fn an_admins_cordon_is_neither_claimed_nor_lifted() {
    let p = policy();
    let mut n = node("a", "v1", Some(UpgradeState::Required), 0);
    n.unschedulable = true;
    let plan = run(&p, std::slice::from_ref(&n), &none());
    let patch = action(&plan, "a").patch.clone().unwrap();
    assert_eq!(patch.state, Some(UpgradeState::Cordoned));
    assert_eq!(patch.unschedulable, None);
    assert_eq!(patch.cordoned_annotation, None);

    let mut n = node("a", "v2", Some(UpgradeState::Upgrading), 0);
    n.unschedulable = true;
    let plan = run(&p, &[n], &none());
    let patch = action(&plan, "a").patch.clone().unwrap();
    assert_eq!(patch.state, Some(UpgradeState::Uncordoning));
    assert_eq!(patch.unschedulable, None);

    // With cordon: false nothing is cordoned either.
    let mut p = policy();
    p.cordon = false;
    let plan = run(&p, &[node("a", "v1", None, 0)], &none());
    assert_eq!(
        action(&plan, "a").patch.as_ref().unwrap().unschedulable,
        None
    );
}

#[test]
fn eviction_evicts_then_waits_for_the_pods_to_go() {
    let mut p = policy();
    p.eviction = Some((60, false));
    let pod = PodRef {
        namespace: "w".into(),
        name: "job-1".into(),
    };
    let n = node("a", "v1", Some(UpgradeState::Evicting), 10);
    let facts = BTreeMap::from([(
        "a".to_string(),
        NodeFacts {
            evict_pods: vec![pod.clone()],
            ..NodeFacts::default()
        },
    )]);
    let plan = run(&p, std::slice::from_ref(&n), &facts);
    assert_eq!(
        action(&plan, "a").effect,
        Some(Effect::Evict(vec![pod.clone()]))
    );
    assert_eq!(to_state(&plan, "a"), None);

    // Evicted, still terminating: wait.
    let facts = BTreeMap::from([(
        "a".to_string(),
        NodeFacts {
            terminating_pods: vec![pod.clone()],
            ..NodeFacts::default()
        },
    )]);
    let plan = run(&p, std::slice::from_ref(&n), &facts);
    assert_eq!(to_state(&plan, "a"), None);
    assert!(plan.blocked[0].message.contains("w/job-1"), "{plan:?}");

    // Gone: on to the swap.
    let plan = run(&p, &[n], &none());
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Upgrading));
}

#[test]
fn a_refused_eviction_fails_the_node_after_the_timeout_or_deletes_with_force() {
    let pod = PodRef {
        namespace: "w".into(),
        name: "db-0".into(),
    };
    let facts = BTreeMap::from([(
        "a".to_string(),
        NodeFacts {
            evict_pods: vec![pod.clone()],
            ..NodeFacts::default()
        },
    )]);
    let mut n = node("a", "v1", Some(UpgradeState::Evicting), 61);
    n.annotations.insert(
        upgrade_message_annotation(NS, M),
        "eviction of Pod w/db-0 refused by PodDisruptionBudget w/db".into(),
    );
    let mut p = policy();
    p.eviction = Some((60, false));
    let plan = run(&p, std::slice::from_ref(&n), &facts);
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Failed));
    let a = action(&plan, "a");
    assert_eq!(a.event.as_ref().unwrap().reason, "NodeUpgradeFailed");
    assert!(plan.blocked[0].message.contains("PodDisruptionBudget w/db"));
    assert!(plan.stopped);

    p.eviction = Some((60, true));
    let plan = run(&p, &[n], &facts);
    assert_eq!(action(&plan, "a").effect, Some(Effect::Delete(vec![pod])));
    assert_eq!(to_state(&plan, "a"), None);
}

#[test]
fn waiting_for_pods_gives_up_after_its_timeout_and_goes_on() {
    let mut p = policy();
    p.wait_for_pods = Some(30);
    let facts = BTreeMap::from([(
        "a".to_string(),
        NodeFacts {
            waiting_pods: vec![PodRef {
                namespace: "w".into(),
                name: "train".into(),
            }],
            ..NodeFacts::default()
        },
    )]);
    let waiting = run(
        &p,
        &[node("a", "v1", Some(UpgradeState::WaitingForPods), 10)],
        &facts,
    );
    assert_eq!(to_state(&waiting, "a"), None);
    // The message annotation says what it waits for.
    let msg = action(&waiting, "a").patch.clone().unwrap().message;
    assert!(msg.flatten().unwrap().contains("w/train"));
    let gone_on = run(
        &p,
        &[node("a", "v1", Some(UpgradeState::WaitingForPods), 31)],
        &facts,
    );
    assert_eq!(to_state(&gone_on, "a"), Some(UpgradeState::Upgrading));
}

#[test]
fn an_upgrade_the_agent_never_reports_fails_after_the_timeout() {
    let p = policy();
    let mut n = node("a", "v2", Some(UpgradeState::Upgrading), 599);
    n.labels.insert(version_ready_label(NS, M), "v1".into());
    let plan = run(&p, std::slice::from_ref(&n), &none());
    assert_eq!(to_state(&plan, "a"), None);
    n.annotations.insert(
        upgrade_since_annotation(NS, M),
        rfc3339(now() - SignedDuration::from_secs(600)),
    );
    let plan = run(&p, &[n], &none());
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Failed));
}

#[test]
fn reboot_marks_the_node_and_goes_on_only_after_a_new_boot_with_the_target() {
    let mut p = policy();
    p.strategy = RolloutStrategy::Reboot;
    let plan = run(
        &p,
        &[node("a", "v1", Some(UpgradeState::Cordoned), 0)],
        &none(),
    );
    let patch = action(&plan, "a").patch.clone().unwrap();
    assert_eq!(patch.state, Some(UpgradeState::Rebooting));
    assert_eq!(patch.version.as_deref(), Some("v2"));
    assert_eq!(patch.reboot_required, Some(true));
    assert_eq!(patch.boot_id, Some(Some("boot-1".into())));
    let json = patch.to_json(NS, M, now());
    assert_eq!(json["metadata"]["labels"][REBOOT_REQUIRED_LABEL], "ns.gpu");

    let mut n = node("a", "v2", Some(UpgradeState::Rebooting), 5);
    n.annotations
        .insert(upgrade_boot_id_annotation(NS, M), "boot-1".into());
    // Same boot: even with the label on v2, wait.
    let plan = run(&p, std::slice::from_ref(&n), &none());
    assert_eq!(to_state(&plan, "a"), None);
    n.boot_id = "boot-2".into();
    let plan = run(&p, &[n], &none());
    let patch = action(&plan, "a").patch.clone().unwrap();
    assert_eq!(patch.state, Some(UpgradeState::Uncordoning));
    assert_eq!(patch.reboot_required, Some(false));
    assert_eq!(patch.boot_id, Some(None));
    let json = patch.to_json(NS, M, now());
    assert!(json["metadata"]["labels"][REBOOT_REQUIRED_LABEL].is_null());
}

#[test]
fn validation_creates_the_job_and_its_failure_fails_the_node() {
    let mut p = policy();
    p.validation_job = true;
    let n = node("a", "v2", Some(UpgradeState::Validating), 1);
    let with = |job: JobFact| {
        BTreeMap::from([(
            "a".to_string(),
            NodeFacts {
                job,
                ..NodeFacts::default()
            },
        )])
    };
    let plan = run(&p, std::slice::from_ref(&n), &with(JobFact::Absent));
    assert_eq!(action(&plan, "a").effect, Some(Effect::CreateJob));
    let plan = run(&p, std::slice::from_ref(&n), &with(JobFact::Stale));
    assert_eq!(action(&plan, "a").effect, Some(Effect::DeleteJob));
    let plan = run(&p, std::slice::from_ref(&n), &with(JobFact::Active));
    assert_eq!(to_state(&plan, "a"), None);
    let plan = run(
        &p,
        std::slice::from_ref(&n),
        &with(JobFact::Failed("BackoffLimitExceeded".into())),
    );
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Failed));
    assert!(plan.stopped);
    assert!(plan.blocked[0].message.contains("BackoffLimitExceeded"));
    let plan = run(&p, &[n], &with(JobFact::Succeeded));
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Uncordoning));
}

#[test]
fn validation_waits_for_the_plugin_label() {
    let mut p = policy();
    p.plugin_ready_label = Some("dp-ready".into());
    let mut n = node("a", "v2", Some(UpgradeState::Validating), 1);
    let plan = run(&p, std::slice::from_ref(&n), &none());
    assert_eq!(to_state(&plan, "a"), None);
    assert!(plan.blocked[0].message.contains("dp-ready"));
    n.labels.insert("dp-ready".into(), String::new());
    let plan = run(&p, &[n], &none());
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Uncordoning));
}

#[test]
fn a_new_leader_replans_the_same_and_never_redoes_a_done_node() {
    let mut p = policy();
    p.max_parallel = 2;
    p.max_unavailable = Budget::Count(2);
    let nodes = vec![
        node("a", "v2", Some(UpgradeState::Done), 0),
        node("b", "v2", Some(UpgradeState::Upgrading), 3),
        node("c", "v1", Some(UpgradeState::Required), 0),
        node("d", "v1", Some(UpgradeState::Required), 0),
    ];
    let first = run(&p, &nodes, &none());
    let second = run(&p, &nodes, &none());
    assert_eq!(first, second);
    assert!(first.actions.iter().all(|a| a.node != "a"));
    assert_eq!(to_state(&first, "b"), Some(UpgradeState::Uncordoning));
    assert_eq!(started(&first), ["c"]);
}

#[test]
fn a_new_target_sends_done_nodes_back_to_required_and_nodes_on_it_are_done() {
    let p = policy();
    let nodes = vec![
        node("a", "v1", Some(UpgradeState::Done), 0),
        node("b", "v2", None, 0),
    ];
    let mut q = p.clone();
    q.paused = true;
    let plan = run(&q, &nodes, &none());
    assert_eq!(to_state(&plan, "a"), Some(UpgradeState::Required));
    assert_eq!(to_state(&plan, "b"), Some(UpgradeState::Done));
    assert!(action(&plan, "b").event.is_none());
}

#[test]
fn nodes_out_of_scope_or_without_the_version_label_are_left_alone() {
    let p = policy();
    let mut out = node("a", "v1", None, 0);
    out.in_scope = false;
    let mut unlabelled = node("b", "v1", None, 0);
    unlabelled.labels.remove(&version_module_label(NS, M));
    let plan = run(&p, &[out, unlabelled], &none());
    assert!(plan.actions.is_empty());
    assert_eq!(plan.counts.total, 0);
    assert!(plan.complete);
}

#[test]
fn a_node_whose_label_the_admin_moved_is_left_to_the_agent() {
    let p = policy();
    let mut n = node("a", "v2", Some(UpgradeState::Required), 0);
    n.labels.insert(version_ready_label(NS, M), "v1".into());
    n.labels.remove(&ready_label(NS, M));
    let plan = run(&p, &[n], &none());
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
}

#[test]
fn the_since_annotation_is_rfc3339_and_set_with_every_state() {
    let patch = NodePatch {
        state: Some(UpgradeState::Evicting),
        message: Some(None),
        ..NodePatch::default()
    };
    let json = patch.to_json(NS, M, now());
    assert_eq!(
        json["metadata"]["annotations"][upgrade_since_annotation(NS, M)],
        "2030-01-01T00:10:00Z"
    );
    assert_eq!(
        json["metadata"]["labels"][upgrade_state_label(NS, M)],
        "evicting"
    );
    assert!(json["metadata"]["annotations"][upgrade_message_annotation(NS, M)].is_null());
    assert!(json.get("spec").is_none());
}

/// Labels and annotations of a node in `state`, with the rollout's cordon when `cordoned`.
fn marks(
    state: Option<&str>,
    cordoned: bool,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = BTreeMap::from([(version_module_label(NS, M), "v1".to_string())]);
    let mut annotations = BTreeMap::new();
    if let Some(s) = state {
        labels.insert(upgrade_state_label(NS, M), s.into());
        annotations.insert(
            upgrade_since_annotation(NS, M),
            "2030-01-01T00:00:00Z".into(),
        );
    }
    if cordoned {
        annotations.insert(upgrade_cordoned_annotation(NS, M), "true".into());
    }
    (labels, annotations)
}

#[test]
fn a_deleted_rollout_uncordons_what_it_cordoned_and_clears_what_it_drove() {
    let (labels, annotations) = marks(Some("evicting"), true);
    let patch = release(NS, M, "up", &labels, &annotations).unwrap();
    let body = patch.to_json(NS, M, now());
    assert_eq!(body["spec"]["unschedulable"], false);
    let (l, a) = (
        &body["metadata"]["labels"],
        &body["metadata"]["annotations"],
    );
    assert!(l[upgrade_state_label(NS, M)].is_null(), "{body}");
    assert!(a[upgrade_since_annotation(NS, M)].is_null(), "{body}");
    assert!(a[upgrade_cordoned_annotation(NS, M)].is_null(), "{body}");
    assert!(a[upgrade_boot_id_annotation(NS, M)].is_null(), "{body}");
    assert_eq!(
        a[upgrade_message_annotation(NS, M)],
        "ModuleRollout up was deleted while the node was evicting; uncordoned"
    );
    assert!(
        l.get(version_module_label(NS, M)).is_none(),
        "the version label stays as it is: {body}"
    );
}

#[test]
fn a_deleted_rollout_leaves_an_admins_cordon_its_records_and_skips() {
    // Waiting its turn under an admin's cordon: the state goes, the cordon stays.
    let (labels, annotations) = marks(Some("required"), false);
    let body = release(NS, M, "up", &labels, &annotations)
        .unwrap()
        .to_json(NS, M, now());
    assert!(body.get("spec").is_none(), "{body}");
    assert!(body["metadata"]["labels"][upgrade_state_label(NS, M)].is_null());
    for state in ["done", "failed", "skip"] {
        let (labels, annotations) = marks(Some(state), false);
        assert_eq!(release(NS, M, "up", &labels, &annotations), None, "{state}");
    }
    let (labels, annotations) = marks(None, false);
    assert_eq!(release(NS, M, "up", &labels, &annotations), None);
}

#[test]
fn a_deleted_reboot_rollout_takes_back_only_its_own_reboot_request() {
    let (mut labels, annotations) = marks(Some("rebooting"), true);
    labels.insert(REBOOT_REQUIRED_LABEL.into(), format!("{NS}.{M}"));
    let body = release(NS, M, "up", &labels, &annotations)
        .unwrap()
        .to_json(NS, M, now());
    assert!(
        body["metadata"]["labels"][REBOOT_REQUIRED_LABEL].is_null(),
        "{body}"
    );
    labels.insert(REBOOT_REQUIRED_LABEL.into(), "other.module".into());
    let body = release(NS, M, "up", &labels, &annotations)
        .unwrap()
        .to_json(NS, M, now());
    assert!(
        body["metadata"]["labels"]
            .get(REBOOT_REQUIRED_LABEL)
            .is_none(),
        "another Module's reboot request stays: {body}"
    );
}
