//! Build and sign Jobs as pure builders.
//!
//! A [`Step`] is one thing to produce for one kernel: an image built from the
//! Module's Dockerfile (kaniko, as upstream KMM runs it) or a signed copy of
//! an image (`kmmctl sign`, from the kmm-rs image). Its [`Step::hash`] covers
//! every input that changes the result, and the Job's name carries it, so two
//! controllers (or a leader and its successor) asking for the same build
//! create the same Job and the API server keeps one.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, KeyToPath, PodSpec, PodTemplateSpec, SecretVolumeSource,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kmm_common::{Build, Sign, TlsOptions};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::labels::{MANAGED_BY, MODULE_NAME_LABEL};

/// Label with the step's input hash (one Job per distinct input).
pub const HASH_LABEL: &str = "kmm.node.kubernetes.io/build.hash";
/// Label telling build Jobs from sign Jobs.
pub const JOB_TYPE_LABEL: &str = "kmm.node.kubernetes.io/job.type";
/// Annotation with the kernel a Job is for (kernels are not valid label values).
pub const KERNEL_ANNOTATION: &str = "kmm.node.kubernetes.io/kernel-version";
/// Annotation set on a Job once its `BuildSucceeded`/`SignSucceeded` event
/// went out, so a restart or a new leader never reports it twice.
pub const SUCCEEDED_REPORTED_ANNOTATION: &str = "kmm.node.kubernetes.io/succeeded-event-sent";
/// Label naming the PreflightValidation a preflight Job verifies for (instead of
/// [`MODULE_NAME_LABEL`], so the Module's own build step never collects it).
pub const PREFLIGHT_LABEL: &str = "kmm.node.kubernetes.io/preflight.name";
/// Label naming the Module a preflight Job builds or signs for.
pub const PREFLIGHT_MODULE_LABEL: &str = "kmm.node.kubernetes.io/preflight.module";
/// Annotation with the image a Job pushes.
pub const TARGET_IMAGE_ANNOTATION: &str = "kmm.node.kubernetes.io/target-image";
/// The ConfigMap key holding the Dockerfile (upstream KMM's).
pub const DOCKERFILE_KEY: &str = "dockerfile";
/// Upstream KMM's builder; `kanikoParams.tag` picks the tag.
pub const KANIKO_IMAGE: &str = "gcr.io/kaniko-project/executor";
/// Where the signing key and certificate Secrets are mounted (keys `key`, `cert`).
pub const SIGNING_KEY_DIR: &str = "/run/secrets/kmm-signing-key";
/// See [`SIGNING_KEY_DIR`].
pub const SIGNING_CERT_DIR: &str = "/run/secrets/kmm-signing-cert";
const REGISTRY_AUTH_DIR: &str = "/run/secrets/kmm-registry-auth";
const HASH_LEN: usize = 20;

/// What a Job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Build the Dockerfile and push the image.
    Build,
    /// Sign the modules of an image and push the signed copy.
    Sign,
}

impl StepKind {
    /// `build` / `sign`, as in names and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Sign => "sign",
        }
    }
}

/// Everything one Job needs, and nothing else: its hash is the Job's identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Build or sign.
    pub kind: StepKind,
    /// The Module's namespace.
    pub namespace: String,
    /// The Module's name.
    pub module: String,
    /// The kernel the image is for.
    pub kernel: String,
    /// The image the Job pushes.
    pub target_image: String,
    /// How to reach the target's registry.
    pub target_tls: TlsOptions,
    /// Sign: the image whose modules are signed.
    pub source_image: Option<String>,
    /// Sign: how to reach the source's registry.
    pub source_tls: TlsOptions,
    /// Build: the settings, as resolved for the kernel.
    pub build: Option<Build>,
    /// Build: the Dockerfile's content (part of the hash: editing it rebuilds).
    pub dockerfile: Option<String>,
    /// Sign: the settings, `filesToSign` substituted.
    pub sign: Option<Sign>,
    /// `spec.imageRepoSecret`: registry credentials for the Job.
    pub image_repo_secret: Option<String>,
    /// `spec.imageRebuildTriggerGeneration`: a new value is a new build.
    pub trigger_generation: Option<i64>,
    /// The Module's tolerations (builds may need tainted nodes).
    #[serde(skip)]
    pub tolerations: Vec<Toleration>,
    /// The image running the signer (`kmmctl`); part of the hash.
    pub signer_image: String,
    /// Run for a PreflightValidation rather than for the Module's nodes. Left out of the hash
    /// when `None`, so the Module's own Jobs keep their names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<Preflight>,
}

/// A step run for a PreflightValidation: its own Job (own hash and name, owned by the
/// PreflightValidation), and a build that pushes only with `pushBuiltImage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preflight {
    /// The PreflightValidation's name.
    pub name: String,
    /// `spec.pushBuiltImage`: without it a build only proves the image builds (kaniko
    /// `--no-push`, as upstream).
    pub push: bool,
}

impl Step {
    /// Hex SHA-256 prefix of the inputs: stable across processes and versions
    /// of this struct's field order (serde's order is the declaration order).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&json))[..HASH_LEN].to_string()
    }

    /// `<module>-<build|sign>-<hash>`, the module part shortened so the name
    /// stays a valid label value (≤ 63), which the Job controller needs for
    /// its `job-name` pod label.
    /// Preflight Jobs are `<module>-pfv-<build|sign>-<hash>`.
    pub fn job_name(&self) -> String {
        let pfv = if self.preflight.is_some() { "-pfv" } else { "" };
        let suffix = format!("{pfv}-{}-{}", self.kind.as_str(), self.hash());
        let room = 63 - suffix.len();
        let module: String = self.module.chars().take(room).collect();
        format!("{}{suffix}", module.trim_end_matches(['-', '.']))
    }
}

/// The Job that performs `step`, owned by the Module (`owner`).
pub fn job(step: &Step, owner: OwnerReference) -> Job {
    let (container, volumes, node_selector) = match step.kind {
        StepKind::Build => build_pod(step),
        StepKind::Sign => sign_pod(step),
    };
    let owner_labels = match &step.preflight {
        None => vec![(MODULE_NAME_LABEL.to_string(), step.module.clone())],
        Some(p) => vec![
            (PREFLIGHT_LABEL.to_string(), label_value(&p.name)),
            (PREFLIGHT_MODULE_LABEL.to_string(), step.module.clone()),
        ],
    };
    let mut labels = BTreeMap::from([
        (HASH_LABEL.to_string(), step.hash()),
        (JOB_TYPE_LABEL.to_string(), step.kind.as_str().to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ]);
    labels.extend(owner_labels);
    let annotations = BTreeMap::from([
        (KERNEL_ANNOTATION.to_string(), step.kernel.clone()),
        (
            TARGET_IMAGE_ANNOTATION.to_string(),
            step.target_image.clone(),
        ),
    ]);
    let pod = PodSpec {
        containers: vec![container],
        volumes: (!volumes.is_empty()).then_some(volumes),
        restart_policy: Some("Never".into()),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!step.tolerations.is_empty()).then(|| step.tolerations.clone()),
        // The builder talks to registries only; it needs no API access.
        automount_service_account_token: Some(false),
        ..PodSpec::default()
    };
    labels.retain(|_, v| !v.is_empty());
    Job {
        metadata: ObjectMeta {
            name: Some(step.job_name()),
            namespace: Some(step.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            // Retried a little (a registry hiccup), then kept failed for the user.
            backoff_limit: Some(2),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// `name` as a label value: object names may be longer than the 63 characters a label value
/// may have (the label only informs; Jobs are matched to their owner by owner reference).
fn label_value(name: &str) -> String {
    let short: String = name.chars().take(63).collect();
    short.trim_end_matches(['-', '.']).to_string()
}

/// The build args of a build step: the user's, then the four upstream adds
/// unless the user set the same name. `KERNEL_VERSION` equals
/// `KERNEL_FULL_VERSION`, as upstream KMM passes it.
pub fn build_args(step: &Step) -> Vec<(String, String)> {
    let mut args: Vec<(String, String)> = step
        .build
        .iter()
        .flat_map(|b| &b.build_args)
        .map(|a| (a.name.clone(), a.value.clone()))
        .collect();
    for (name, value) in [
        ("KERNEL_FULL_VERSION", &step.kernel),
        ("KERNEL_VERSION", &step.kernel),
        ("MOD_NAME", &step.module),
        ("MOD_NAMESPACE", &step.namespace),
    ] {
        if !args.iter().any(|(n, _)| n == name) {
            args.push((name.to_string(), value.clone()));
        }
    }
    args
}

fn build_pod(step: &Step) -> (Container, Vec<Volume>, BTreeMap<String, String>) {
    let build = step.build.clone().unwrap_or_default();
    let push = step.preflight.as_ref().is_none_or(|p| p.push);
    let mut args = vec![
        "--dockerfile=/workspace/Dockerfile".to_string(),
        "--context=dir:///workspace".to_string(),
        if push {
            format!("--destination={}", step.target_image)
        } else {
            "--no-push".to_string()
        },
    ];
    args.extend(
        build_args(step)
            .into_iter()
            .map(|(n, v)| format!("--build-arg={n}={v}")),
    );
    if push && step.target_tls.insecure {
        args.push("--insecure".into());
    }
    if push && step.target_tls.insecure_skip_tls_verify {
        args.push("--skip-tls-verify".into());
    }
    let base_tls = build.base_image_registry_tls.clone().unwrap_or_default();
    if base_tls.insecure {
        args.push("--insecure-pull".into());
    }
    if base_tls.insecure_skip_tls_verify {
        args.push("--skip-tls-verify-pull".into());
    }
    let tag = build
        .kaniko_params
        .as_ref()
        .map(|k| k.tag.as_str())
        .filter(|t| !t.is_empty())
        .unwrap_or("latest");

    let mut volumes = vec![Volume {
        name: "dockerfile".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: build.dockerfile_config_map.name.clone(),
            items: Some(vec![KeyToPath {
                key: DOCKERFILE_KEY.into(),
                path: "Dockerfile".into(),
                mode: None,
                ..KeyToPath::default()
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "dockerfile".into(),
        mount_path: "/workspace".into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    for (i, secret) in build.secrets.iter().enumerate() {
        let volume = format!("secret-{i}");
        volumes.push(secret_volume(&volume, &secret.name, None));
        mounts.push(mount(&volume, &format!("/run/secrets/{}", secret.name)));
    }
    if let Some(auth) = &step.image_repo_secret {
        // kaniko reads registry credentials from its docker config.
        volumes.push(secret_volume(
            "registry-auth",
            auth,
            Some((".dockerconfigjson", "config.json")),
        ));
        mounts.push(mount("registry-auth", "/kaniko/.docker"));
    }
    let container = Container {
        name: "kaniko".into(),
        image: Some(format!("{KANIKO_IMAGE}:{tag}")),
        args: Some(args),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    (container, volumes, build.selector)
}

fn sign_pod(step: &Step) -> (Container, Vec<Volume>, BTreeMap<String, String>) {
    let sign = step.sign.clone().unwrap_or_default();
    let mut args = vec![
        "sign".to_string(),
        format!("--from={}", step.source_image.clone().unwrap_or_default()),
        format!("--to={}", step.target_image),
        format!("--key={SIGNING_KEY_DIR}/key"),
        format!("--cert={SIGNING_CERT_DIR}/cert"),
    ];
    args.extend(sign.files_to_sign.iter().map(|f| format!("--file={f}")));
    if step.source_tls.insecure {
        args.push("--from-insecure".into());
    }
    if step.source_tls.insecure_skip_tls_verify {
        args.push("--from-insecure-skip-tls-verify".into());
    }
    if step.target_tls.insecure {
        args.push("--to-insecure".into());
    }
    if step.target_tls.insecure_skip_tls_verify {
        args.push("--to-insecure-skip-tls-verify".into());
    }
    let mut volumes = vec![
        secret_volume("signing-key", &sign.key_secret.name, Some(("key", "key"))),
        secret_volume(
            "signing-cert",
            &sign.cert_secret.name,
            Some(("cert", "cert")),
        ),
    ];
    let mut mounts = vec![
        mount("signing-key", SIGNING_KEY_DIR),
        mount("signing-cert", SIGNING_CERT_DIR),
    ];
    if let Some(auth) = &step.image_repo_secret {
        volumes.push(secret_volume(
            "registry-auth",
            auth,
            Some((".dockerconfigjson", ".dockerconfigjson")),
        ));
        mounts.push(mount("registry-auth", REGISTRY_AUTH_DIR));
        args.push(format!(
            "--docker-config={REGISTRY_AUTH_DIR}/.dockerconfigjson"
        ));
    }
    let container = Container {
        name: "signer".into(),
        image: Some(step.signer_image.clone()),
        command: Some(vec!["kmmctl".into()]),
        args: Some(args),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    (container, volumes, BTreeMap::new())
}

fn secret_volume(volume: &str, secret: &str, item: Option<(&str, &str)>) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: item.map(|(key, path)| {
                vec![KeyToPath {
                    key: key.into(),
                    path: path.into(),
                    mode: None,
                    ..KeyToPath::default()
                }]
            }),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Upstream KMM's intermediate image when a mapping both builds and signs:
/// `<image>:<tag>-<namespace>_<module>_kmm_unsigned` (the tag-less form gets
/// `latest`). A digest reference cannot be a build target, so it is kept and
/// the tag appended to the repository.
pub fn unsigned_image(image: &str, namespace: &str, module: &str) -> String {
    let suffix = format!("{namespace}_{module}_kmm_unsigned");
    let repo = image.split_once('@').map_or(image, |(repo, _)| repo);
    // A ':' after the last '/' is a tag; one before it is a registry port.
    let last_slash = repo.rfind('/').map_or(0, |i| i + 1);
    match repo[last_slash..].find(':') {
        Some(_) => format!("{repo}-{suffix}"),
        None => format!("{repo}:latest-{suffix}"),
    }
}
