//! Where one Module stands against a PreflightValidation's kernel, as a pure function of what
//! the registry and the preflight's own Jobs say. The messages start with upstream KMM's
//! (`verified image exists`, `verified image does not exist`, `… and build/sign failed`,
//! `verification is not finished yet`, `mapping not found`) and say what to look at.

use std::collections::BTreeMap;

use kmm_common::Ineligible;
use kmm_common::api::preflight::{
    VERIFICATION_FAILURE, VERIFICATION_IN_PROGRESS, VERIFICATION_SUCCESS,
};

use crate::build::job::{Step, StepKind};
use crate::build::plan::{self, Facts, JobView, Outcome};

/// The verification of one Module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The Module can run on the kernel.
    Success(String),
    /// It cannot, and why.
    Failure(String),
    /// Not known yet (a Job runs, the registry did not answer).
    InProgress(String),
}

impl Verdict {
    /// `verificationStatus`.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Success(_) => VERIFICATION_SUCCESS,
            Self::Failure(_) => VERIFICATION_FAILURE,
            Self::InProgress(_) => VERIFICATION_IN_PROGRESS,
        }
    }

    /// `statusReason`.
    pub fn reason(&self) -> &str {
        match self {
            Self::Success(r) | Self::Failure(r) | Self::InProgress(r) => r,
        }
    }
}

/// No kernel mapping (or none that resolves) for the kernel.
pub fn no_mapping(why: &Ineligible) -> Verdict {
    Verdict::Failure(format!("mapping not found: {why}"))
}

/// The registry could not be asked, or an input of the build is missing. An unreachable
/// registry may answer later; the other problems need the user.
pub fn problem(reason: &str, message: &str) -> Verdict {
    let text = format!("cannot verify the image ({reason}): {message}");
    if reason == "RegistryUnavailable" {
        Verdict::InProgress(format!("verification is not finished yet: {text}"))
    } else {
        Verdict::Failure(text)
    }
}

/// The verdict for a Module whose mapping resolved, and the Job to create for it, if any.
///
/// `chain` is what the mapping builds and signs (empty without build and sign), `jobs` the
/// preflight's Jobs by hash, `push` the PreflightValidation's `pushBuiltImage`. Without
/// `push` a build runs without pushing (kaniko `--no-push`, as upstream) and succeeds when its
/// Job does; signing pushes its result, so it needs `push`.
pub fn decide(
    image: &str,
    chain: &[Step],
    jobs: &BTreeMap<&str, &JobView>,
    facts: Facts,
    push: bool,
) -> (Verdict, Option<Step>) {
    if facts.image_exists {
        return (exists(image), None);
    }
    if chain.is_empty() {
        return (
            Verdict::Failure(format!(
                "verified image does not exist: {image} is not in the registry and the mapping has no build or sign"
            )),
            None,
        );
    }
    if !push && chain.iter().any(|s| s.kind == StepKind::Sign) {
        return (
            Verdict::Failure(format!(
                "verified image does not exist: {image} is not in the registry, and signing it needs pushBuiltImage: true"
            )),
            None,
        );
    }
    match plan::decide(chain, jobs, facts, false) {
        Outcome::Ready => (exists(image), None),
        Outcome::Create(step) => {
            let verdict = Verdict::InProgress(format!(
                "verification is not finished yet: {} {image} (Job {})",
                verb(step.kind),
                step.job_name()
            ));
            (verdict, Some(*step))
        }
        Outcome::Running { job, kind } => (
            Verdict::InProgress(format!(
                "verification is not finished yet: {} {image} (Job {job})",
                verb(kind)
            )),
            None,
        ),
        Outcome::Failed { job, kind, message } => (
            Verdict::Failure(format!(
                "verified image does not exist and build/sign failed: {} Job {job} failed: {message}",
                kind.as_str()
            )),
            None,
        ),
        // Built without pushing: the build is what was to be proved.
        Outcome::SucceededButMissing { job } if !push => (
            Verdict::Success(format!(
                "verified image builds: Job {job} succeeded (not pushed: pushBuiltImage is false)"
            )),
            None,
        ),
        Outcome::SucceededButMissing { job } => (
            Verdict::Failure(format!(
                "verified image does not exist: Job {job} succeeded but {image} is not in the registry (the Dockerfile or signer pushed elsewhere?)"
            )),
            None,
        ),
    }
}

/// The image is in its registry.
pub fn exists(image: &str) -> Verdict {
    Verdict::Success(format!("verified image exists: {image}"))
}

fn verb(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Build => "building",
        StepKind::Sign => "signing",
    }
}
