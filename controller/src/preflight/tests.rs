//! Preflight verdicts, status and Jobs without an API server.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kmm_common::{Module, PreflightValidationModuleStatus, resolve_mapping};
use kube::runtime::watcher::Event;

use super::status::{self, ModuleVerdict};
use super::triggers::{ModuleGenerations, preflight_of_job};
use super::verdict::{self, Verdict};
use crate::build::job::{self, PREFLIGHT_LABEL, PREFLIGHT_MODULE_LABEL, Preflight, Step};
use crate::build::plan::{self, ChainInput, Facts, JobState, JobView};
use crate::labels::MODULE_NAME_LABEL;

const KERNEL: &str = "6.2.0-1-amd64";
const IMAGE: &str = "reg:5000/kmod:6.2.0-1-amd64";

fn module(mapping: &str) -> Module {
    let mut m = crate::build::tests::module_yaml(mapping);
    m.metadata.generation = Some(1);
    m
}

const PLAIN: &str =
    r#"{regexp: '^6\.2\..*$', containerImage: "reg:5000/kmod:${KERNEL_FULL_VERSION}"}"#;
const BUILD: &str = r#"{regexp: '^.+$', containerImage: "reg:5000/kmod:${KERNEL_FULL_VERSION}", registryTLS: {insecure: true},
   build: {dockerfileConfigMap: {name: df}}}"#;
const SIGN: &str = r#"{regexp: '^.+$', containerImage: "reg:5000/kmod:${KERNEL_FULL_VERSION}",
   sign: {unsignedImage: "reg:5000/kmod-unsigned:${KERNEL_FULL_VERSION}", keySecret: {name: key}, certSecret: {name: cert},
          filesToSign: ["/opt/lib/modules/${KERNEL_FULL_VERSION}/extra/kmod.ko"]}}"#;

/// The chain the reconciler builds for `mapping`, marked for preflight `p`.
fn chain(mapping: &str, push: bool) -> Vec<Step> {
    let m = module(mapping);
    let target = resolve_mapping(&m, KERNEL).unwrap();
    let input = ChainInput::of(&m, "drivers", "kmm-rs:test");
    let mut chain = plan::chain(&input, &target, Some("FROM scratch"));
    for step in &mut chain {
        step.preflight = Some(Preflight {
            name: "p".into(),
            push,
        });
    }
    chain
}

fn view(step: &Step, state: JobState) -> JobView {
    JobView {
        name: step.job_name(),
        hash: step.hash(),
        kernel: step.kernel.clone(),
        kind: Some(step.kind),
        state,
        succeeded_reported: false,
    }
}

const MISSING: Facts = Facts {
    image_exists: false,
    unsigned_exists: false,
};
const THERE: Facts = Facts {
    image_exists: true,
    unsigned_exists: false,
};

fn decide(chain: &[Step], jobs: &[JobView], facts: Facts, push: bool) -> (Verdict, Option<Step>) {
    let by_hash: BTreeMap<&str, &JobView> = jobs.iter().map(|j| (j.hash.as_str(), j)).collect();
    verdict::decide(IMAGE, chain, &by_hash, facts, push)
}

#[test]
fn a_kernel_no_mapping_covers_fails_with_the_reason() {
    let m = module(PLAIN);
    let why = resolve_mapping(&m, "5.14.0-1-amd64").unwrap_err();
    let v = verdict::no_mapping(&why);
    assert_eq!(v.status(), "Failure");
    assert_eq!(
        v.reason(),
        "mapping not found: kernel 5.14.0-1-amd64 matches no kernelMapping"
    );
}

#[test]
fn an_existing_image_succeeds_without_any_job() {
    for (mapping, push) in [(PLAIN, false), (BUILD, true), (SIGN, false)] {
        let (v, create) = decide(&chain(mapping, push), &[], THERE, push);
        assert_eq!(
            v,
            Verdict::Success(format!("verified image exists: {IMAGE}"))
        );
        assert!(create.is_none());
    }
}

#[test]
fn a_missing_image_without_build_or_sign_fails() {
    let (v, create) = decide(&[], &[], MISSING, true);
    assert_eq!(v.status(), "Failure");
    assert!(
        v.reason().starts_with("verified image does not exist"),
        "{v:?}"
    );
    assert!(v.reason().contains("no build or sign"), "{v:?}");
    assert!(create.is_none());
}

#[test]
fn a_buildable_image_is_built_then_verified() {
    let chain = chain(BUILD, true);
    // Nothing yet: the build Job is created, verification in progress.
    let (v, create) = decide(&chain, &[], MISSING, true);
    let step = create.expect("a build Job");
    assert_eq!(step, chain[0]);
    assert_eq!(v.status(), "InProgress");
    assert!(v.reason().contains(&step.job_name()), "{v:?}");
    // Running: still in progress, nothing more created.
    let running = [view(&step, JobState::Active)];
    let (v, create) = decide(&chain, &running, MISSING, true);
    assert_eq!(v.status(), "InProgress");
    assert!(create.is_none());
    // Pushed: the image exists.
    let done = [view(&step, JobState::Succeeded)];
    let (v, _) = decide(&chain, &done, THERE, true);
    assert_eq!(v.status(), "Success");
    // Succeeded but nothing was pushed where the Module looks: a failure, said so.
    let (v, create) = decide(&chain, &done, MISSING, true);
    assert_eq!(v.status(), "Failure");
    assert!(v.reason().contains("not in the registry"), "{v:?}");
    assert!(create.is_none());
}

#[test]
fn a_failed_build_fails_with_upstreams_words_and_the_jobs_message() {
    let chain = chain(BUILD, true);
    let failed = [view(
        &chain[0],
        JobState::Failed("BackoffLimitExceeded: gave up".into()),
    )];
    let (v, create) = decide(&chain, &failed, MISSING, true);
    assert_eq!(v.status(), "Failure");
    assert!(
        v.reason()
            .starts_with("verified image does not exist and build/sign failed"),
        "{v:?}"
    );
    assert!(v.reason().contains("BackoffLimitExceeded"), "{v:?}");
    assert!(create.is_none(), "a failed Job is not retried");
}

#[test]
fn without_push_a_build_is_verified_by_its_job_and_signing_is_refused() {
    let build = chain(BUILD, false);
    let (_, create) = decide(&build, &[], MISSING, false);
    assert!(create.is_some());
    let done = [view(&build[0], JobState::Succeeded)];
    let (v, _) = decide(&build, &done, MISSING, false);
    assert_eq!(v.status(), "Success");
    assert!(v.reason().contains("not pushed"), "{v:?}");

    let (v, create) = decide(&chain(SIGN, false), &[], MISSING, false);
    assert_eq!(v.status(), "Failure");
    assert!(v.reason().contains("pushBuiltImage: true"), "{v:?}");
    assert!(create.is_none());
}

#[test]
fn registry_outages_are_in_progress_but_input_problems_fail() {
    let v = verdict::problem("RegistryUnavailable", "connection refused");
    assert_eq!(v.status(), "InProgress");
    assert!(v.reason().contains("connection refused"));
    let v = verdict::problem(
        "DockerfileUnavailable",
        "dockerfileConfigMap drivers/df: not found",
    );
    assert_eq!(v.status(), "Failure");
    assert!(v.reason().contains("drivers/df"));
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "kmm.sigs.x-k8s.io/v1beta2".into(),
        kind: "PreflightValidation".into(),
        name: "p".into(),
        uid: "u-pfv".into(),
        controller: Some(true),
        ..OwnerReference::default()
    }
}

#[test]
fn preflight_jobs_are_apart_from_the_modules_own() {
    let pushed = chain(BUILD, true).remove(0);
    let mut own = pushed.clone();
    own.preflight = None;
    // Another name and hash than the Module's Job of the same build.
    assert_ne!(pushed.hash(), own.hash());
    assert!(
        pushed.job_name().starts_with("kmod-pfv-build-"),
        "{}",
        pushed.job_name()
    );
    assert!(own.job_name().starts_with("kmod-build-"));
    let job = job::job(&pushed, owner());
    let labels = job.metadata.labels.clone().unwrap();
    // Not labelled as the Module's: its build step never collects it.
    assert!(!labels.contains_key(MODULE_NAME_LABEL), "{labels:?}");
    assert_eq!(labels[PREFLIGHT_LABEL], "p");
    assert_eq!(labels[PREFLIGHT_MODULE_LABEL], "kmod");
    assert_eq!(
        preflight_of_job(job.clone()).map(|r| r.name),
        Some("p".to_string())
    );
    let args = crate::build::tests::args(&job);
    assert!(args.contains(&format!("--destination={IMAGE}")), "{args:?}");
    assert!(args.contains(&"--insecure".to_string()), "{args:?}");

    // Without pushBuiltImage: kaniko builds only.
    let unpushed = chain(BUILD, false).remove(0);
    assert_ne!(unpushed.hash(), pushed.hash());
    let args = crate::build::tests::args(&job::job(&unpushed, owner()));
    assert!(args.contains(&"--no-push".to_string()), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--destination")),
        "{args:?}"
    );
    assert!(!args.contains(&"--insecure".to_string()), "{args:?}");
}

#[test]
fn a_long_preflight_name_still_makes_a_valid_label() {
    let mut step = chain(BUILD, true).remove(0);
    step.preflight = Some(Preflight {
        name: format!("{}-.x", "a".repeat(61)),
        push: true,
    });
    let job = job::job(&step, owner());
    let value = &job.metadata.labels.unwrap()[PREFLIGHT_LABEL];
    assert_eq!(value, &"a".repeat(61));
}

fn entry(
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
    at: &Time,
) -> PreflightValidationModuleStatus {
    PreflightValidationModuleStatus {
        name: name.into(),
        namespace: ns.into(),
        verification_status: status.into(),
        status_reason: reason.into(),
        verification_stage: if status == "InProgress" {
            "Image"
        } else {
            "Done"
        }
        .into(),
        last_transition_time: at.clone(),
    }
}

fn time(s: &str) -> Time {
    Time(s.parse().unwrap())
}

#[test]
fn status_keeps_transition_times_and_other_controllers_entries() {
    let (t0, t1) = (time("2026-01-01T00:00:00Z"), time("2026-01-01T00:05:00Z"));
    let old = vec![
        entry("b", "same", "Success", "verified image exists: x", &t0),
        entry("b", "moved", "InProgress", "building", &t0),
        entry("b", "gone", "Failure", "mapping not found", &t0),
        entry("other", "theirs", "InProgress", "building", &t0),
    ];
    let verdicts = vec![
        ModuleVerdict {
            namespace: "b".into(),
            name: "same".into(),
            verdict: Verdict::Success("verified image exists: x".into()),
        },
        ModuleVerdict {
            namespace: "b".into(),
            name: "moved".into(),
            verdict: Verdict::Success("verified image exists: y".into()),
        },
        ModuleVerdict {
            namespace: "a".into(),
            name: "new".into(),
            verdict: Verdict::InProgress("verification is not finished yet".into()),
        },
    ];
    let merged = status::merge(&old, &verdicts, |ns| ns != "other", &t1);
    assert_eq!(
        merged,
        vec![
            entry(
                "a",
                "new",
                "InProgress",
                "verification is not finished yet",
                &t1
            ),
            entry("b", "moved", "Success", "verified image exists: y", &t1),
            entry("b", "same", "Success", "verified image exists: x", &t0),
            entry("other", "theirs", "InProgress", "building", &t0),
        ]
    );
    assert!(!status::all_verified(&merged));
    // Nothing new: the same list, so no write.
    assert_eq!(
        status::merge(&merged, &verdicts, |ns| ns != "other", &t1),
        merged
    );
    assert!(status::all_verified(&merged[1..3]));
}

#[test]
fn only_module_spec_changes_wake_every_preflight() {
    let mut g = ModuleGenerations::default();
    let mut m = module(PLAIN);
    assert!(g.relevant(&Event::Apply(m.clone())));
    // A status write (same generation) is no news.
    m.status = Some(Default::default());
    assert!(!g.relevant(&Event::Apply(m.clone())));
    m.metadata.generation = Some(2);
    assert!(g.relevant(&Event::Apply(m.clone())));
    m.metadata.deletion_timestamp = Some(time("2026-01-01T00:00:00Z"));
    assert!(g.relevant(&Event::Apply(m.clone())));
    assert!(g.relevant(&Event::Delete(m)));
}
