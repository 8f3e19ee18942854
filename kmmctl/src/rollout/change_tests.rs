use super::*;

fn current(state: Option<&str>) -> Current<'_> {
    Current {
        state,
        cordoned_by_rollout: false,
    }
}

const SKIP: Change = Change::Skip { force: false };
const FORCE: Change = Change::Skip { force: true };

#[test]
fn skip_takes_nodes_not_in_progress_and_refuses_the_others_unless_forced() {
    for state in [None, Some("required"), Some("done"), Some("failed")] {
        assert_eq!(
            decide(SKIP, "n", current(state)),
            Decision::Set(UpgradeState::Skip, None),
            "{state:?}"
        );
    }
    assert_eq!(
        decide(SKIP, "n", current(Some("skip"))),
        Decision::Already(UpgradeState::Skip)
    );
    for s in UpgradeState::ALL.into_iter().filter(|s| s.in_progress()) {
        let Decision::Refuse(why) = decide(SKIP, "n", current(Some(s.as_str()))) else {
            panic!("{s} must be refused");
        };
        assert!(why.starts_with(&format!("node n is {s}, mid-way")), "{why}");
        assert!(why.contains("--force"), "{why}");
        assert_eq!(
            decide(FORCE, "n", current(Some(s.as_str()))),
            Decision::Set(UpgradeState::Skip, None)
        );
    }
    // A value the controller never writes is treated as mid-way.
    assert!(matches!(
        decide(SKIP, "n", current(Some("bogus"))),
        Decision::Refuse(_)
    ));
}

#[test]
fn a_forced_skip_of_a_node_the_rollout_cordoned_says_it_stays_cordoned() {
    let cordoned = Current {
        state: Some("evicting"),
        cordoned_by_rollout: true,
    };
    let Decision::Set(UpgradeState::Skip, Some(note)) = decide(FORCE, "w7", cordoned) else {
        panic!("expected a note");
    };
    assert!(note.contains("kubectl uncordon w7"), "{note}");
}

#[test]
fn unskip_and_retry_move_only_their_own_state_back_to_required() {
    assert_eq!(
        decide(Change::Unskip, "n", current(Some("skip"))),
        Decision::Set(UpgradeState::Required, None)
    );
    assert_eq!(
        decide(Change::Retry, "n", current(Some("failed"))),
        Decision::Set(UpgradeState::Required, None)
    );
    let cases = [
        (Change::Unskip, Some("done"), "node n is done, not skipped"),
        (Change::Unskip, None, "node n is unlabelled, not skipped"),
        (
            Change::Retry,
            Some("evicting"),
            "node n is evicting, not failed",
        ),
        (
            Change::Retry,
            Some("required"),
            "node n is required, not failed",
        ),
        (Change::Retry, None, "node n is unlabelled, not failed"),
    ];
    for (change, state, want) in cases {
        assert_eq!(
            decide(change, "n", current(state)),
            Decision::Refuse(want.into())
        );
    }
}

#[test]
fn the_patch_sets_the_label_and_since_clears_the_message_and_is_conditional() {
    let now: Timestamp = "2026-01-01T12:00:00.123Z".parse().unwrap();
    let got = node_patch("ns", "m", UpgradeState::Required, now, "42");
    let want = json!({"metadata": {
        "resourceVersion": "42",
        "labels": {"kmm.node.kubernetes.io/ns.m.upgrade-state": "required"},
        "annotations": {
            "kmm.node.kubernetes.io/ns.m.upgrade-since": "2026-01-01T12:00:00Z",
            "kmm.node.kubernetes.io/ns.m.upgrade-message": null,
        },
    }});
    assert_eq!(got, want);
}
