//! What to do for each kernel, as pure functions over what the registry and
//! the existing Jobs say.
//!
//! A kernel needs a chain of steps: build, sign, or build then sign (the
//! build pushing upstream's intermediate `…_kmm_unsigned` image). The Jobs
//! already in the cluster are the memory of what was done: a step whose Job
//! succeeded is not run again, a failed one is kept and reported until its
//! inputs change, and `imageRebuildTriggerGeneration` changes every hash.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use super::job::{
    HASH_LABEL, JOB_TYPE_LABEL, KERNEL_ANNOTATION, SUCCEEDED_REPORTED_ANNOTATION, Step, StepKind,
};

/// Where a Job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Pods running or to be retried.
    Active,
    /// Completed.
    Succeeded,
    /// Gave up; the Job's reason and message.
    Failed(String),
}

/// The parts of a Job the plan reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// Job name.
    pub name: String,
    /// [`super::job::HASH_LABEL`].
    pub hash: String,
    /// The kernel it was for.
    pub kernel: String,
    /// Build or sign (`None` for a label we do not know).
    pub kind: Option<StepKind>,
    /// Its state.
    pub state: JobState,
    /// Its success event went out already.
    pub succeeded_reported: bool,
}

/// A Job's state from its conditions: `Complete` or `Failed` (with its reason and message)
/// once the Job controller has given its verdict, `Active` before.
pub fn job_state(job: &Job) -> JobState {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let is_true = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    if is_true("Complete").is_some() {
        JobState::Succeeded
    } else if let Some(c) = is_true("Failed") {
        let reason = c.reason.clone().unwrap_or_else(|| "Failed".into());
        JobState::Failed(match c.message.as_deref() {
            Some(m) if !m.is_empty() => format!("{reason}: {m}"),
            _ => reason,
        })
    } else {
        JobState::Active
    }
}

/// Reads a Job of ours; `None` without the hash label.
pub fn job_view(job: &Job) -> Option<JobView> {
    let hash = job.labels().get(HASH_LABEL)?.clone();
    let kind = match job.labels().get(JOB_TYPE_LABEL).map(String::as_str) {
        Some("build") => Some(StepKind::Build),
        Some("sign") => Some(StepKind::Sign),
        _ => None,
    };
    let state = job_state(job);
    Some(JobView {
        name: job.name_any(),
        hash,
        kernel: job
            .annotations()
            .get(KERNEL_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        kind,
        state,
        succeeded_reported: job
            .annotations()
            .contains_key(SUCCEEDED_REPORTED_ANNOTATION),
    })
}

/// What the registry says about a kernel's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The final image exists.
    pub image_exists: bool,
    /// Build+sign: the intermediate unsigned image exists.
    pub unsigned_exists: bool,
}

/// The verdict for one kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The image exists; nothing to do.
    Ready,
    /// Create this Job.
    Create(Box<Step>),
    /// A Job is running.
    Running {
        /// Job name.
        job: String,
        /// Its step.
        kind: StepKind,
    },
    /// A Job failed; kept until the inputs change.
    Failed {
        /// Job name.
        job: String,
        /// Its step.
        kind: StepKind,
        /// The Job's reason and message.
        message: String,
    },
    /// Every step succeeded but the registry has no image: the Dockerfile or
    /// the signer pushed elsewhere. Not retried (it would do the same).
    SucceededButMissing {
        /// The last Job.
        job: String,
    },
}

/// Decides one kernel from its chain, the Jobs by hash and the registry.
/// `force` is an unapplied `imageRebuildTriggerGeneration`: existing images
/// do not count, only Jobs of the current hashes do.
pub fn decide(
    chain: &[Step],
    jobs: &BTreeMap<&str, &JobView>,
    facts: Facts,
    force: bool,
) -> Outcome {
    if chain.is_empty() || (!force && facts.image_exists) {
        return Outcome::Ready;
    }
    for (i, step) in chain.iter().enumerate() {
        match jobs.get(step.hash().as_str()).map(|j| (&j.name, &j.state)) {
            Some((_, JobState::Succeeded)) => {}
            Some((job, JobState::Active)) => {
                return Outcome::Running {
                    job: job.clone(),
                    kind: step.kind,
                };
            }
            Some((job, JobState::Failed(message))) => {
                return Outcome::Failed {
                    job: job.clone(),
                    kind: step.kind,
                    message: message.clone(),
                };
            }
            // An intermediate image built earlier (its Job since collected).
            None if i + 1 < chain.len() && !force && facts.unsigned_exists => {}
            None => return Outcome::Create(Box::new(step.clone())),
        }
    }
    if facts.image_exists {
        Outcome::Ready
    } else {
        Outcome::SucceededButMissing {
            job: chain.last().map(Step::job_name).unwrap_or_default(),
        }
    }
}

/// Jobs to delete: every Job of the Module whose hash no pending kernel
/// needs. Ready kernels' Jobs go (successful builds are collected), except
/// while a forced rebuild is still running elsewhere: then they are the
/// record that this kernel was rebuilt.
pub fn jobs_to_delete(
    jobs: &[JobView],
    kernels: &[(Vec<Step>, Outcome)],
    force: bool,
) -> Vec<String> {
    let all_ready = kernels.iter().all(|(_, o)| *o == Outcome::Ready);
    let keep: BTreeSet<String> = kernels
        .iter()
        .filter(|(_, o)| *o != Outcome::Ready || (force && !all_ready))
        .flat_map(|(chain, _)| chain.iter().map(Step::hash))
        .collect();
    jobs.iter()
        .filter(|j| !keep.contains(&j.hash))
        .map(|j| j.name.clone())
        .collect()
}

/// Jobs whose success is to be reported (upstream's `BuildSucceeded` /
/// `SignSucceeded`), not reported yet: those that completed, and those still
/// running whose kernel is Ready, its image pushed, since they are collected
/// now and would never be seen completing. Failed Jobs and Jobs of inputs no
/// kernel has any more are not successes.
pub fn succeeded_jobs<'a>(
    jobs: &'a [JobView],
    kernels: &[(Vec<Step>, Outcome)],
) -> Vec<&'a JobView> {
    let current: BTreeSet<String> = kernels
        .iter()
        .flat_map(|(chain, _)| chain.iter().map(Step::hash))
        .collect();
    let ready: BTreeSet<String> = kernels
        .iter()
        .filter(|(_, o)| *o == Outcome::Ready)
        .flat_map(|(chain, _)| chain.iter().map(Step::hash))
        .collect();
    jobs.iter()
        .filter(|j| !j.succeeded_reported && current.contains(&j.hash))
        .filter(|j| match j.state {
            JobState::Succeeded => true,
            JobState::Active => ready.contains(&j.hash),
            JobState::Failed(_) => false,
        })
        .collect()
}

/// The Module-wide inputs of a chain.
#[derive(Debug, Clone, Default)]
pub struct ChainInput {
    /// The Module's namespace.
    pub namespace: String,
    /// The Module's name.
    pub module: String,
    /// `spec.imageRepoSecret`.
    pub image_repo_secret: Option<String>,
    /// `spec.imageRebuildTriggerGeneration`.
    pub trigger_generation: Option<i64>,
    /// `spec.tolerations`.
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// The image with `kmmctl` for sign Jobs.
    pub signer_image: String,
}

impl ChainInput {
    /// The inputs of `module` (in namespace `ns`), sign Jobs running `signer_image`.
    pub fn of(module: &kmm_common::Module, ns: &str, signer_image: &str) -> Self {
        use kube::ResourceExt as _;
        Self {
            namespace: ns.to_owned(),
            module: module.name_any(),
            image_repo_secret: module
                .spec
                .image_repo_secret
                .as_ref()
                .map(|s| s.name.clone())
                .filter(|s| !s.is_empty()),
            trigger_generation: module.spec.image_rebuild_trigger_generation,
            tolerations: module.spec.tolerations.clone(),
            signer_image: signer_image.to_owned(),
        }
    }
}

/// The steps `target` needs, in order (empty without build and sign).
/// `dockerfile` is the content of the build's ConfigMap.
pub fn chain(
    input: &ChainInput,
    target: &kmm_common::ResolvedMapping,
    dockerfile: Option<&str>,
) -> Vec<Step> {
    let base = Step {
        kind: StepKind::Build,
        namespace: input.namespace.clone(),
        module: input.module.clone(),
        kernel: target.kernel_version.clone(),
        target_image: target.container_image.clone(),
        target_tls: target.registry_tls.clone(),
        source_image: None,
        source_tls: kmm_common::TlsOptions::default(),
        build: None,
        dockerfile: None,
        sign: None,
        image_repo_secret: input.image_repo_secret.clone(),
        trigger_generation: input.trigger_generation,
        tolerations: input.tolerations.clone(),
        signer_image: String::new(),
        preflight: None,
    };
    let build = target.build.as_ref().map(|b| Step {
        build: Some(b.clone()),
        dockerfile: dockerfile.map(str::to_owned),
        ..base.clone()
    });
    let vars = kmm_common::Vars {
        kernel_full_version: &target.kernel_version,
        mod_name: &input.module,
        mod_namespace: &input.namespace,
    };
    let sign = target.sign.as_ref().map(|s| Step {
        kind: StepKind::Sign,
        sign: Some(s.clone()),
        // Substituted like containerImage (upstream does the same).
        source_image: Some(kmm_common::substitute(&s.unsigned_image, &vars)),
        source_tls: s.unsigned_image_registry_tls.clone().unwrap_or_default(),
        signer_image: input.signer_image.clone(),
        ..base.clone()
    });
    match (build, sign) {
        (Some(build), None) => vec![build],
        (None, Some(sign)) => vec![sign],
        (Some(mut build), Some(mut sign)) => {
            // The build pushes upstream's intermediate image, the signer reads it.
            let unsigned = super::job::unsigned_image(
                &target.container_image,
                &input.namespace,
                &input.module,
            );
            build.target_image.clone_from(&unsigned);
            sign.source_image = Some(unsigned);
            sign.source_tls = target.registry_tls.clone();
            vec![build, sign]
        }
        (None, None) => Vec::new(),
    }
}
