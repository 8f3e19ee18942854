//! The PreflightValidation's `status.modules` from this pass's verdicts: upstream's
//! `SetModuleStatus` (stage `Done` once Success or Failure), with `lastTransitionTime` moving
//! only when a Module's status or reason changes, so a pass that learns nothing new writes
//! nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_common::PreflightValidationModuleStatus;
use kmm_common::api::preflight::{
    VERIFICATION_IN_PROGRESS, VERIFICATION_STAGE_DONE, VERIFICATION_STAGE_IMAGE,
};

use super::verdict::Verdict;

/// One Module's verdict in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleVerdict {
    /// The Module's namespace.
    pub namespace: String,
    /// The Module's name.
    pub name: String,
    /// Its verdict.
    pub verdict: Verdict,
}

/// The new `status.modules`: an entry per verdict, plus the old entries of namespaces this
/// controller does not watch (`in_scope` false: another controller's), sorted by namespace
/// and name. Entries of watched namespaces without a verdict (Modules gone) are dropped.
pub fn merge(
    old: &[PreflightValidationModuleStatus],
    verdicts: &[ModuleVerdict],
    in_scope: impl Fn(&str) -> bool,
    now: &Time,
) -> Vec<PreflightValidationModuleStatus> {
    let mut out: Vec<PreflightValidationModuleStatus> = old
        .iter()
        .filter(|e| !in_scope(&e.namespace))
        .cloned()
        .collect();
    for v in verdicts {
        let status = v.verdict.status();
        let reason = v.verdict.reason();
        let previous = old
            .iter()
            .find(|e| e.namespace == v.namespace && e.name == v.name);
        let last_transition_time = match previous {
            Some(p) if p.verification_status == status && p.status_reason == reason => {
                p.last_transition_time.clone()
            }
            _ => now.clone(),
        };
        out.push(PreflightValidationModuleStatus {
            name: v.name.clone(),
            namespace: v.namespace.clone(),
            verification_status: status.to_string(),
            status_reason: reason.to_string(),
            verification_stage: stage(status).to_string(),
            last_transition_time,
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

fn stage(status: &str) -> &'static str {
    if status == VERIFICATION_IN_PROGRESS {
        VERIFICATION_STAGE_IMAGE
    } else {
        VERIFICATION_STAGE_DONE
    }
}

/// Upstream's `AllModulesVerified`: no entry is still in progress.
pub fn all_verified(entries: &[PreflightValidationModuleStatus]) -> bool {
    entries
        .iter()
        .all(|e| e.verification_status != VERIFICATION_IN_PROGRESS)
}
