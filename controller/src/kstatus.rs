//! The conditions generic tools read: `Ready`, `Reconciling` and `Stalled`, as
//! kstatus defines them (what Flux, Argo CD and `kubectl wait
//! --for=condition=Ready` understand), derived from the Module's own
//! conditions ([`crate::status`]) so the two sets can never disagree and no
//! extra status write is ever needed: they change only when those do.
//!
//! - `Ready` (normal-true): every targeted node has the Module loaded, no node
//!   reports an error, its images (builds, signs) are in the registry, and it
//!   is not being deleted.
//! - `Reconciling` (abnormal-true): nodes are still loading, unloading or
//!   waiting for an image, and nothing blocks them.
//! - `Stalled` (abnormal-true): progress is blocked by an error a node or the
//!   build reports (the `Degraded` condition); `Reconciling` is then `False`,
//!   since kstatus reads a `Reconciling=True` object as in progress whatever
//!   `Stalled` says.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::status::{AVAILABLE, DEGRADED, IMAGES_READY, PROGRESSING, UNLOADING, condition};

/// kstatus condition types.
pub const READY: &str = "Ready";
/// See [`READY`].
pub const RECONCILING: &str = "Reconciling";
/// See [`READY`].
pub const STALLED: &str = "Stalled";

/// `ImagesReady=False` with this reason is progress (a Job is running), not an error.
const BUILDING: &str = "Building";

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn is_true<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    find(conds, type_).filter(|c| c.status == "True")
}

/// `Ready`, `Reconciling` and `Stalled` from the conditions [`crate::status`]
/// computed (Available, Progressing, Degraded, and ImagesReady / Unloading when
/// present). Returned in that order, not yet stamped.
pub fn conditions(own: &[Condition]) -> Vec<Condition> {
    let stalled = is_true(own, DEGRADED);
    let unloading = is_true(own, UNLOADING);
    let progressing = is_true(own, PROGRESSING);
    let building = find(own, IMAGES_READY).filter(|c| c.status == "False" && c.reason == BUILDING);
    let available = find(own, AVAILABLE);

    // Why not ready, most telling first: a deletion, an error, then progress.
    let blocker = unloading
        .map(|c| ("Unloading", c))
        .or_else(|| stalled.map(|c| (c.reason.as_str(), c)))
        .or_else(|| building.map(|c| (BUILDING, c)))
        .or_else(|| {
            available
                .filter(|a| a.status == "False")
                .map(|a| (a.reason.as_str(), a))
        });
    let ready = match (blocker, available) {
        (Some((reason, c)), _) => condition(READY, false, reason, c.message.clone()),
        (None, Some(a)) => condition(READY, true, &a.reason, a.message.clone()),
        (None, None) => condition(READY, true, "Reconciled", String::new()),
    };

    let in_progress = unloading
        .map(|c| ("Unloading", c))
        .or_else(|| building.map(|c| (BUILDING, c)))
        .or_else(|| progressing.map(|c| (c.reason.as_str(), c)));
    let reconciling = match (stalled, in_progress) {
        (Some(s), _) => condition(
            RECONCILING,
            false,
            "Stalled",
            format!("progress is blocked: {}", s.message),
        ),
        (None, Some((reason, c))) => condition(RECONCILING, true, reason, c.message.clone()),
        (None, None) => condition(RECONCILING, false, "Complete", "nothing left to do".into()),
    };

    let stalled = match stalled {
        Some(s) => condition(STALLED, true, &s.reason, s.message.clone()),
        None => condition(
            STALLED,
            false,
            "NoErrors",
            "no error blocks progress".into(),
        ),
    };
    vec![ready, reconciling, stalled]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::status::{self, Waiting};
    use kmm_common::DaemonSetStatus;

    fn counts(desired: i32, available: i32) -> DaemonSetStatus {
        DaemonSetStatus {
            nodes_matching_selector_number: desired,
            desired_number: desired,
            available_number: available,
        }
    }

    fn own(
        desired: i32,
        available: i32,
        degraded: Option<(&str, &str)>,
        extra: Vec<Condition>,
    ) -> Vec<Condition> {
        let mut c = status::conditions(
            &counts(desired, available),
            None,
            &Waiting::default(),
            degraded.map(|(r, m)| (r.to_string(), m.to_string())),
        );
        c.extend(extra);
        c
    }

    fn get(conds: &[Condition], t: &str) -> (String, String) {
        let c = find(conds, t).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn s(status: &str, reason: &str) -> (String, String) {
        (status.to_string(), reason.to_string())
    }

    #[test]
    fn all_nodes_loaded_is_ready_and_nothing_else() {
        let k = conditions(&own(3, 3, None, vec![]));
        assert_eq!(get(&k, READY), s("True", "AllNodesLoaded"));
        assert_eq!(get(&k, RECONCILING), s("False", "Complete"));
        assert_eq!(get(&k, STALLED), s("False", "NoErrors"));
    }

    #[test]
    fn no_targeted_node_is_ready() {
        let k = conditions(&own(0, 0, None, vec![]));
        assert_eq!(get(&k, READY), s("True", "NoNodesTargeted"));
    }

    #[test]
    fn nodes_still_loading_are_reconciling_not_ready() {
        let k = conditions(&own(3, 1, None, vec![]));
        assert_eq!(get(&k, READY), s("False", "NodesPending"));
        assert_eq!(get(&k, RECONCILING), s("True", "Loading"));
        assert_eq!(get(&k, STALLED).0, "False");
        assert!(find(&k, READY).unwrap().message.contains("1/3"));
    }

    #[test]
    fn a_node_error_is_stalled_and_not_reconciling() {
        let k = conditions(&own(
            2,
            0,
            Some(("ImagePullFailed", "2 nodes: ImagePullFailed: not found")),
            vec![],
        ));
        assert_eq!(get(&k, READY), s("False", "ImagePullFailed"));
        assert_eq!(get(&k, RECONCILING), s("False", "Stalled"));
        assert_eq!(get(&k, STALLED), s("True", "ImagePullFailed"));
        assert!(find(&k, STALLED).unwrap().message.contains("not found"));
    }

    #[test]
    fn a_running_build_is_progress_a_failed_one_is_stalled() {
        let building =
            status::images_ready_condition(false, "Building", "0/1 kernel images".into());
        let k = conditions(&own(1, 0, None, vec![building]));
        assert_eq!(get(&k, READY), s("False", "Building"));
        assert_eq!(get(&k, RECONCILING), s("True", "Building"));
        assert_eq!(get(&k, STALLED).0, "False");

        let failed = status::images_ready_condition(false, "BuildFailed", "Job x failed".into());
        let k = conditions(&own(
            1,
            0,
            Some(("BuildFailed", "Job x failed")),
            vec![failed],
        ));
        assert_eq!(get(&k, READY), s("False", "BuildFailed"));
        assert_eq!(get(&k, STALLED), s("True", "BuildFailed"));
        assert_eq!(get(&k, RECONCILING).0, "False");
    }

    #[test]
    fn images_present_and_all_loaded_is_ready() {
        let present = status::images_ready_condition(true, "AllImagesPresent", String::new());
        let k = conditions(&own(2, 2, None, vec![present]));
        assert_eq!(get(&k, READY), s("True", "AllNodesLoaded"));
    }

    #[test]
    fn a_deletion_waiting_for_nodes_is_reconciling_and_never_ready() {
        let unloading = status::unloading_condition(&["n1".to_string()]);
        let k = conditions(&own(0, 1, None, vec![unloading]));
        assert_eq!(get(&k, READY), s("False", "Unloading"));
        assert_eq!(get(&k, RECONCILING), s("True", "Unloading"));
        // An unload that fails (module in use) blocks the deletion: stalled.
        let unloading = status::unloading_condition(&["n1".to_string()]);
        let k = conditions(&own(
            0,
            1,
            Some(("UnloadFailed", "1 node: UnloadFailed: in use")),
            vec![unloading],
        ));
        assert_eq!(get(&k, READY), s("False", "Unloading"));
        assert_eq!(get(&k, STALLED), s("True", "UnloadFailed"));
        assert_eq!(get(&k, RECONCILING).0, "False");
    }
}
