//! Jobs and plans without an API server.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kmm_common::{Build, BuildArg, Module, ResolvedMapping};

use super::job::{self, Step, StepKind, unsigned_image};
use super::plan::{self, ChainInput, Facts, JobState, JobView, Outcome};

/// A Module `drivers/kmod` with the one kernel mapping `mapping` (shared with the preflight
/// tests).
pub(crate) fn module_yaml(mapping: &str) -> Module {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {{name: kmod, namespace: drivers, uid: u-1}}
spec:
  selector: {{}}
  moduleLoader:
    container:
      modprobe: {{moduleName: kmod}}
      kernelMappings:
        - {mapping}
"#
    ))
    .unwrap()
}

fn target(module: &Module, kernel: &str) -> ResolvedMapping {
    kmm_common::resolve_mapping(module, kernel).unwrap()
}

fn input() -> ChainInput {
    ChainInput {
        namespace: "drivers".into(),
        module: "kmod".into(),
        signer_image: "kmm-rs:test".into(),
        ..ChainInput::default()
    }
}

const BUILD: &str = r#"{regexp: '^.+$', containerImage: "reg:5000/kmod:${KERNEL_FULL_VERSION}", registryTLS: {insecure: true},
   build: {dockerfileConfigMap: {name: df}, buildArgs: [{name: GIT_REF, value: v1}], secrets: [{name: git-token}],
           baseImageRegistryTLS: {insecureSkipTLSVerify: true}, kanikoParams: {tag: v1.23.0}}}"#;
const SIGN: &str = r#"{regexp: '^.+$', containerImage: "reg:5000/kmod:${KERNEL_FULL_VERSION}",
   sign: {unsignedImage: "reg:5000/kmod-unsigned:${KERNEL_FULL_VERSION}", keySecret: {name: key}, certSecret: {name: cert},
          filesToSign: ["/opt/lib/modules/${KERNEL_FULL_VERSION}/extra/kmod.ko"]}}"#;
const BOTH: &str = r#"{regexp: '^.+$', containerImage: "reg:5000/kmod:${KERNEL_FULL_VERSION}",
   build: {dockerfileConfigMap: {name: df}},
   sign: {keySecret: {name: key}, certSecret: {name: cert}, filesToSign: ["/opt/lib/modules/${KERNEL_FULL_VERSION}/extra/kmod.ko"]}}"#;

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "kmm.sigs.x-k8s.io/v1beta1".into(),
        kind: "Module".into(),
        name: "kmod".into(),
        uid: "u-1".into(),
        controller: Some(true),
        ..OwnerReference::default()
    }
}

/// The first container's args (shared with the preflight tests).
pub(crate) fn args(job: &k8s_openapi::api::batch::v1::Job) -> Vec<String> {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap()
}

#[test]
fn unsigned_image_follows_upstream_naming() {
    assert_eq!(
        unsigned_image("reg:5000/a/kmod:6.1.0-56-amd64", "ns", "m"),
        "reg:5000/a/kmod:6.1.0-56-amd64-ns_m_kmm_unsigned"
    );
    assert_eq!(
        unsigned_image("reg:5000/a/kmod", "ns", "m"),
        "reg:5000/a/kmod:latest-ns_m_kmm_unsigned"
    );
    assert_eq!(
        unsigned_image("quay.io/kmod@sha256:abc", "ns", "m"),
        "quay.io/kmod:latest-ns_m_kmm_unsigned"
    );
}

#[test]
fn build_job_is_upstreams_kaniko_recipe() {
    let m = module_yaml(BUILD);
    let chain = plan::chain(
        &input(),
        &target(&m, "6.1.0-56-amd64"),
        Some("FROM scratch"),
    );
    assert_eq!(chain.len(), 1);
    let job = job::job(&chain[0], owner());
    let a = args(&job);
    for want in [
        "--dockerfile=/workspace/Dockerfile",
        "--context=dir:///workspace",
        "--destination=reg:5000/kmod:6.1.0-56-amd64",
        "--build-arg=GIT_REF=v1",
        "--build-arg=KERNEL_FULL_VERSION=6.1.0-56-amd64",
        "--build-arg=KERNEL_VERSION=6.1.0-56-amd64",
        "--build-arg=MOD_NAME=kmod",
        "--build-arg=MOD_NAMESPACE=drivers",
        "--insecure",
        "--skip-tls-verify-pull",
    ] {
        assert!(a.contains(&want.to_string()), "{want} missing in {a:?}");
    }
    assert!(!a.contains(&"--skip-tls-verify".to_string()));
    assert!(!a.contains(&"--insecure-pull".to_string()));
    let pod = job.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("gcr.io/kaniko-project/executor:v1.23.0")
    );
    let mounts: Vec<_> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(mounts, ["/workspace", "/run/secrets/git-token"]);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[job::HASH_LABEL], chain[0].hash());
    assert_eq!(labels[job::JOB_TYPE_LABEL], "build");
    assert_eq!(
        job.metadata.annotations.as_ref().unwrap()[job::KERNEL_ANNOTATION],
        "6.1.0-56-amd64"
    );
    assert_eq!(
        job.metadata.owner_references.as_ref().unwrap()[0].uid,
        "u-1"
    );
}

#[test]
fn a_user_build_arg_overrides_the_default_of_the_same_name() {
    let step = Step {
        build: Some(Build {
            build_args: vec![BuildArg {
                name: "KERNEL_VERSION".into(),
                value: "6.1".into(),
            }],
            ..Build::default()
        }),
        kernel: "6.1.0-56-amd64".into(),
        ..sign_step()
    };
    let args = job::build_args(&step);
    let kv: Vec<_> = args.iter().filter(|(n, _)| n == "KERNEL_VERSION").collect();
    assert_eq!(kv, [&("KERNEL_VERSION".to_string(), "6.1".to_string())]);
}

fn sign_step() -> Step {
    let m = module_yaml(SIGN);
    plan::chain(&input(), &target(&m, "6.1.0-56-amd64"), None).remove(0)
}

#[test]
fn sign_job_runs_kmmctl_sign_on_the_unsigned_image() {
    let step = sign_step();
    assert_eq!(step.kind, StepKind::Sign);
    let job = job::job(&step, owner());
    let pod = job.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("kmm-rs:test"));
    assert_eq!(c.command.as_deref(), Some(&["kmmctl".to_string()][..]));
    let a = c.args.clone().unwrap();
    assert_eq!(
        a,
        [
            "sign",
            "--from=reg:5000/kmod-unsigned:6.1.0-56-amd64",
            "--to=reg:5000/kmod:6.1.0-56-amd64",
            "--key=/run/secrets/kmm-signing-key/key",
            "--cert=/run/secrets/kmm-signing-cert/cert",
            "--file=/opt/lib/modules/6.1.0-56-amd64/extra/kmod.ko",
        ]
    );
    let secrets: Vec<_> = pod
        .volumes
        .unwrap()
        .iter()
        .map(|v| v.secret.as_ref().unwrap().secret_name.clone().unwrap())
        .collect();
    assert_eq!(secrets, ["key", "cert"]);
}

#[test]
fn build_and_sign_chain_through_the_intermediate_image() {
    let m = module_yaml(BOTH);
    let chain = plan::chain(
        &input(),
        &target(&m, "6.1.0-56-amd64"),
        Some("FROM scratch"),
    );
    let kinds: Vec<_> = chain.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [StepKind::Build, StepKind::Sign]);
    let unsigned = "reg:5000/kmod:6.1.0-56-amd64-drivers_kmod_kmm_unsigned";
    assert_eq!(chain[0].target_image, unsigned);
    assert_eq!(chain[1].source_image.as_deref(), Some(unsigned));
    assert_eq!(chain[1].target_image, "reg:5000/kmod:6.1.0-56-amd64");
}

#[test]
fn hash_and_name_change_with_every_input_that_changes_the_result() {
    let m = module_yaml(BUILD);
    let t = target(&m, "6.1.0-56-amd64");
    let base = plan::chain(&input(), &t, Some("FROM scratch")).remove(0);
    let same = plan::chain(&input(), &t, Some("FROM scratch")).remove(0);
    assert_eq!(base.hash(), same.hash());
    let other_df = plan::chain(&input(), &t, Some("FROM busybox")).remove(0);
    let other_kernel = plan::chain(
        &input(),
        &target(&m, "6.1.0-57-amd64"),
        Some("FROM scratch"),
    )
    .remove(0);
    let retrigger = plan::chain(
        &ChainInput {
            trigger_generation: Some(2),
            ..input()
        },
        &t,
        Some("FROM scratch"),
    )
    .remove(0);
    for other in [other_df, other_kernel, retrigger] {
        assert_ne!(base.hash(), other.hash());
        assert_ne!(base.job_name(), other.job_name());
    }
}

#[test]
fn job_names_are_valid_label_values_even_for_long_module_names() {
    let step = Step {
        module: "m".repeat(200),
        ..sign_step()
    };
    let name = step.job_name();
    assert!(name.len() <= 63, "{name}");
    assert!(name.ends_with(&format!("-sign-{}", step.hash())));
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

fn by_hash(views: &[JobView]) -> BTreeMap<&str, &JobView> {
    views.iter().map(|v| (v.hash.as_str(), v)).collect()
}

fn both_chain() -> Vec<Step> {
    let m = module_yaml(BOTH);
    plan::chain(
        &input(),
        &target(&m, "6.1.0-56-amd64"),
        Some("FROM scratch"),
    )
}

const MISSING: Facts = Facts {
    image_exists: false,
    unsigned_exists: false,
};
const PRESENT: Facts = Facts {
    image_exists: true,
    unsigned_exists: false,
};

#[test]
fn an_existing_image_needs_nothing_a_missing_one_a_build() {
    let chain = both_chain();
    assert_eq!(
        plan::decide(&chain, &BTreeMap::new(), PRESENT, false),
        Outcome::Ready
    );
    assert_eq!(
        plan::decide(&chain, &BTreeMap::new(), MISSING, false),
        Outcome::Create(Box::new(chain[0].clone()))
    );
}

#[test]
fn a_finished_build_leads_to_the_sign_step_and_a_built_intermediate_skips_the_build() {
    let chain = both_chain();
    let done = [view(&chain[0], JobState::Succeeded)];
    assert_eq!(
        plan::decide(&chain, &by_hash(&done), MISSING, false),
        Outcome::Create(Box::new(chain[1].clone()))
    );
    let intermediate = Facts {
        image_exists: false,
        unsigned_exists: true,
    };
    assert_eq!(
        plan::decide(&chain, &BTreeMap::new(), intermediate, false),
        Outcome::Create(Box::new(chain[1].clone()))
    );
}

#[test]
fn running_and_failed_jobs_are_waited_for_and_kept_not_recreated() {
    let chain = both_chain();
    let running = [view(&chain[0], JobState::Active)];
    assert!(matches!(
        plan::decide(&chain, &by_hash(&running), MISSING, false),
        Outcome::Running {
            kind: StepKind::Build,
            ..
        }
    ));
    let failed = [
        view(&chain[0], JobState::Succeeded),
        view(&chain[1], JobState::Failed("BackoffLimitExceeded".into())),
    ];
    let outcome = plan::decide(&chain, &by_hash(&failed), MISSING, false);
    assert!(
        matches!(&outcome, Outcome::Failed { kind: StepKind::Sign, message, .. } if message == "BackoffLimitExceeded"),
        "{outcome:?}"
    );
    let kernels = vec![(chain.clone(), outcome)];
    assert!(plan::jobs_to_delete(&failed, &kernels, false).is_empty());
}

#[test]
fn a_job_that_succeeded_without_pushing_is_reported_not_rerun() {
    let chain = both_chain();
    let done = [
        view(&chain[0], JobState::Succeeded),
        view(&chain[1], JobState::Succeeded),
    ];
    assert_eq!(
        plan::decide(&chain, &by_hash(&done), MISSING, false),
        Outcome::SucceededButMissing {
            job: chain[1].job_name()
        }
    );
}

#[test]
fn successful_and_obsolete_jobs_are_collected_once_the_image_exists() {
    let chain = both_chain();
    let stale = Step {
        dockerfile: Some("FROM old".into()),
        ..chain[0].clone()
    };
    let jobs = [
        view(&chain[0], JobState::Succeeded),
        view(&chain[1], JobState::Succeeded),
        view(&stale, JobState::Failed("old".into())),
    ];
    let kernels = vec![(chain.clone(), Outcome::Ready)];
    let mut deleted = plan::jobs_to_delete(&jobs, &kernels, false);
    deleted.sort();
    let mut want: Vec<_> = jobs.iter().map(|j| j.name.clone()).collect();
    want.sort();
    assert_eq!(deleted, want);
}

#[test]
fn successes_are_completed_jobs_and_running_ones_whose_image_is_there_once_each() {
    let chain = both_chain();
    let stale = Step {
        dockerfile: Some("FROM old".into()),
        ..chain[0].clone()
    };
    let names = |v: Vec<&JobView>| v.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
    // Build completed, sign still running: while signing, only the build.
    let jobs = [
        view(&chain[0], JobState::Succeeded),
        view(&chain[1], JobState::Active),
        view(&stale, JobState::Succeeded),
    ];
    let running = vec![(
        chain.clone(),
        Outcome::Running {
            job: chain[1].job_name(),
            kind: StepKind::Sign,
        },
    )];
    assert_eq!(
        names(plan::succeeded_jobs(&jobs, &running)),
        [chain[0].job_name()]
    );
    // The signed image is there (the sign Job not seen completing): both, the
    // obsolete one never.
    let ready = vec![(chain.clone(), Outcome::Ready)];
    assert_eq!(
        names(plan::succeeded_jobs(&jobs, &ready)),
        [chain[0].job_name(), chain[1].job_name()]
    );
    // Reported once; a failed Job is no success.
    let jobs = [
        JobView {
            succeeded_reported: true,
            ..view(&chain[0], JobState::Succeeded)
        },
        view(&chain[1], JobState::Failed("BackoffLimitExceeded".into())),
    ];
    assert!(plan::succeeded_jobs(&jobs, &ready).is_empty());
}

#[test]
fn a_rebuild_trigger_ignores_existing_images_and_keeps_evidence_until_all_kernels_are_done() {
    let chain = both_chain();
    assert_eq!(
        plan::decide(&chain, &BTreeMap::new(), PRESENT, true),
        Outcome::Create(Box::new(chain[0].clone()))
    );
    let done = [
        view(&chain[0], JobState::Succeeded),
        view(&chain[1], JobState::Succeeded),
    ];
    assert_eq!(
        plan::decide(&chain, &by_hash(&done), PRESENT, true),
        Outcome::Ready
    );
    let other = plan::chain(
        &input(),
        &target(&module_yaml(BOTH), "6.1.0-57-amd64"),
        Some("FROM scratch"),
    );
    let kernels = vec![
        (chain.clone(), Outcome::Ready),
        (other.clone(), Outcome::Create(Box::new(other[0].clone()))),
    ];
    assert!(plan::jobs_to_delete(&done, &kernels, true).is_empty());
    let kernels = vec![(chain, Outcome::Ready)];
    assert_eq!(plan::jobs_to_delete(&done, &kernels, true).len(), 2);
}

#[test]
fn job_state_is_read_from_the_job_conditions() {
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "j", "labels": {job::HASH_LABEL: "h", job::JOB_TYPE_LABEL: "sign"},
                     "annotations": {job::KERNEL_ANNOTATION: "6.1"}},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                   "message": "Job has reached the specified backoff limit"}]}
    }))
    .unwrap();
    let v = plan::job_view(&job).unwrap();
    assert_eq!(v.kind, Some(StepKind::Sign));
    assert_eq!(v.kernel, "6.1");
    assert_eq!(
        v.state,
        JobState::Failed(
            "BackoffLimitExceeded: Job has reached the specified backoff limit".into()
        )
    );
    assert!(!v.succeeded_reported);
}

#[test]
fn a_reported_success_is_read_from_the_job() {
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "j", "labels": {job::HASH_LABEL: "h", job::JOB_TYPE_LABEL: "build"},
                     "annotations": {job::KERNEL_ANNOTATION: "6.1",
                                     job::SUCCEEDED_REPORTED_ANNOTATION: ""}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]}
    }))
    .unwrap();
    let v = plan::job_view(&job).unwrap();
    assert_eq!(
        (v.kind, v.state),
        (Some(StepKind::Build), JobState::Succeeded)
    );
    assert!(v.succeeded_reported);
}
