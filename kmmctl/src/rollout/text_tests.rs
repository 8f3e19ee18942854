use super::*;
use crate::rollout::report::build;
use crate::rollout::report::tests::snapshot;

fn now() -> Timestamp {
    "2026-01-01T12:00:00Z".parse().unwrap()
}

#[test]
fn status_text_has_the_summary_then_one_aligned_row_per_node() {
    let got = render(&build(&snapshot()), now());
    let want = "\
ModuleRollout drivers/to-2.0: Module mydrv to version 2.0 (strategy Unload)
Paused:     no
Conditions: Progressing=True (Upgrading: 1 node in progress)
Limits:     maxUnavailable 10%, maxParallel 2, maxFailed 1
Nodes:      4 total, 1 required, 1 in progress, 1 done, 1 failed, 0 skipped, 0 unavailable
Wave:       n-evicting

NODE         STATE      SINCE   VERSION   CORDONED         MESSAGE
n-done       done       2h      2.0       -                -
n-evicting   evicting   60s     1.0       by rollout       PodDisruptionBudget app/db allows no eviction
n-failed     failed     60m     2.0       not by rollout   validation Job failed
n-new        required   -       1.0       -                not started (no upgrade-state label yet)

4 nodes now: 1 required, 1 evicting, 1 done, 1 failed";
    assert_eq!(got, want);
}

#[test]
fn before_the_controller_reports_the_summary_says_so() {
    let mut s = snapshot();
    s.rollout.status = None;
    s.rollout.spec.paused = true;
    let got = render(&build(&s), now());
    assert!(
        got.contains("\nPaused:     yes: no new node starts\n"),
        "{got}"
    );
    assert!(
        got.contains("\nConditions: none reported by the controller yet\n"),
        "{got}"
    );
    assert!(
        got.contains("\nNodes:      not reported by the controller yet\n"),
        "{got}"
    );
    assert!(got.contains("\nWave:       none\n"), "{got}");
}

#[test]
fn a_node_out_of_scope_says_so_and_unknown_states_are_tallied_last() {
    let mut s = snapshot();
    s.nodes[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("role".into(), "db".into());
    s.nodes[3].metadata.labels.as_mut().unwrap().insert(
        "kmm.node.kubernetes.io/drivers.mydrv.upgrade-state".into(),
        "exploding".into(),
    );
    let got = render(&build(&s), now());
    assert!(got.contains("(no longer in the rollout's scope)"), "{got}");
    assert!(
        got.ends_with("4 nodes now: 1 evicting, 1 done, 1 failed, 1 exploding"),
        "{got}"
    );
}
