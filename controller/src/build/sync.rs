//! The build/sign step of a reconcile: kernels from the Node cache, images
//! from the registry, Jobs from the Job cache; creates what [`plan::decide`]
//! asks for, collects what [`plan::jobs_to_delete`] names, and says how the
//! Module's images stand (a condition, and a Degraded reason on failures).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use kmm_common::{Module, ResolvedMapping, TlsOptions, resolve_mapping};
use kmm_registry::{DockerConfig, RegistryTls};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;

use super::job::{self, DOCKERFILE_KEY, StepKind};
use super::plan::{self, ChainInput, Facts, JobView, Outcome};
use crate::error::{Error, Result};
use crate::labels::MODULE_NAME_LABEL;
use crate::metrics::Metrics;

/// How long a "this image exists" answer is trusted: a fleet's burst of
/// reconciles asks the registry once per image, not once per reconcile.
const EXISTS_TTL: Duration = Duration::from_secs(60);

/// Positive registry answers, by image reference.
#[derive(Debug, Default)]
pub struct ImageLookups {
    seen: Mutex<HashMap<String, Instant>>,
}

impl ImageLookups {
    fn fresh(&self, image: &str) -> bool {
        self.seen
            .lock()
            .ok()
            .and_then(|m| m.get(image).copied())
            .is_some_and(|t| t.elapsed() < EXISTS_TTL)
    }

    fn remember(&self, image: &str) {
        if let Ok(mut m) = self.seen.lock() {
            m.insert(image.to_owned(), Instant::now());
        }
    }
}

/// What the build step works through, lent by the reconciler (build does not
/// depend on the reconciler's own context).
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// API client.
    pub client: &'a Client,
    /// Events on Modules.
    pub recorder: &'a Recorder,
    /// `jobs_created`.
    pub metrics: &'a Metrics,
    /// All Nodes: the kernels to build for.
    pub nodes: &'a Store<Node>,
    /// Build and sign Jobs (ours, by label).
    pub jobs: &'a Store<Job>,
    /// Recent "image exists" answers of registries.
    pub image_lookups: &'a ImageLookups,
    /// The image with `kmmctl`, run by sign Jobs.
    pub signer_image: &'a str,
}

/// How the Module's images stand after the build step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildReport {
    /// `None` when no targeted kernel's mapping builds or signs.
    pub images_ready: Option<(bool, String, String)>,
    /// A Degraded reason and message when a Job failed or cannot be made.
    pub degraded: Option<(String, String)>,
}

/// Runs the build/sign step for a live Module.
///
/// # Errors
/// API failures creating or deleting Jobs. Registry and input problems (a
/// missing ConfigMap or pull secret, an unreachable registry) are reported in
/// the returned condition instead, per kernel, so one bad kernel does not stop
/// the others.
pub async fn sync(module: &Module, ns: &str, ctx: &BuildContext<'_>) -> Result<BuildReport> {
    let name = module.name_any();
    let force = module.spec.image_rebuild_trigger_generation.is_some()
        && module.spec.image_rebuild_trigger_generation
            != module
                .status
                .as_ref()
                .and_then(|s| s.image_rebuild_trigger_generation);
    let targets = kernels_to_build(module, ctx);
    let input = ChainInput::of(module, ns, ctx.signer_image);
    let jobs: Vec<JobView> = ctx
        .jobs
        .state()
        .iter()
        .filter(|j| j.namespace().as_deref() == Some(ns))
        .filter(|j| j.labels().get(MODULE_NAME_LABEL) == Some(&name))
        .filter_map(|j| plan::job_view(j))
        .collect();
    let by_hash: BTreeMap<&str, &JobView> = jobs.iter().map(|j| (j.hash.as_str(), j)).collect();

    if targets.is_empty() {
        // Nothing builds (any more): no registry questions, only collection.
        if force {
            record_trigger(module, ns, ctx).await?;
        }
        let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
        delete_jobs(ns, names, ctx).await?;
        return Ok(BuildReport::default());
    }
    let auth = match registry_auth(ctx.client, module, ns).await {
        Ok(auth) => auth,
        Err(message) => {
            tracing::warn!(reason = "ImageRepoSecretInvalid", "{message}");
            return Ok(blocked("ImageRepoSecretInvalid", message));
        }
    };
    let mut kernels = Vec::new();
    let mut problems: Vec<(String, String)> = Vec::new();
    for target in targets.values() {
        let dockerfile = match &target.build {
            Some(b) => match dockerfile(ctx.client, ns, &b.dockerfile_config_map.name).await {
                Ok(d) => Some(d),
                Err(message) => {
                    problems.push(("DockerfileUnavailable".into(), message));
                    continue;
                }
            },
            None => None,
        };
        let chain = plan::chain(&input, target, dockerfile.as_deref());
        let registry = Registry {
            lookups: ctx.image_lookups,
            auth: auth.as_ref(),
        };
        let facts = match registry.facts(&chain, target).await {
            Ok(f) => f,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let outcome = plan::decide(&chain, &by_hash, facts, force);
        kernels.push((target.kernel_version.clone(), chain, outcome));
    }

    for (reason, message) in &problems {
        tracing::warn!(reason = %reason, "{message}");
    }
    for (kernel, _, outcome) in &kernels {
        if let Outcome::Create(step) = outcome {
            create_job(module, step, kernel, ctx).await?;
        }
    }
    let outcomes: Vec<_> = kernels
        .iter()
        .map(|(_, c, o)| (c.clone(), o.clone()))
        .collect();
    let all_ready = problems.is_empty() && outcomes.iter().all(|(_, o)| *o == Outcome::Ready);
    if force && all_ready {
        // Recorded before the Jobs go: they are the only other record of it.
        record_trigger(module, ns, ctx).await?;
    }
    // Before collection: a succeeded Job is collected in this same pass.
    report_succeeded(module, ns, plan::succeeded_jobs(&jobs, &outcomes), ctx).await;
    // While a kernel cannot be evaluated, its Jobs are not judged obsolete.
    if problems.is_empty() {
        delete_jobs(ns, plan::jobs_to_delete(&jobs, &outcomes, force), ctx).await?;
    }
    for (_, _, outcome) in &kernels {
        if let Outcome::Failed { job, kind, message } = outcome {
            publish(
                module,
                ctx,
                EventType::Warning,
                failed_reason(*kind),
                format!("Job {job} failed: {message} (kubectl logs job/{job} -n {ns})"),
            )
            .await;
        }
    }
    Ok(report(&kernels, problems))
}

/// Distinct kernels of the nodes the Module selects whose mapping builds or
/// signs. The version label does not gate builds: the image of the next
/// version is built before nodes are moved to it.
fn kernels_to_build(module: &Module, ctx: &BuildContext<'_>) -> BTreeMap<String, ResolvedMapping> {
    let mut out = BTreeMap::new();
    for node in ctx.nodes.state() {
        let empty = BTreeMap::new();
        let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
        if kmm_common::targeting::selector_matches(&module.spec.selector, labels).is_err() {
            continue;
        }
        let Some(kernel) = kmm_common::node_kernel_version(&node) else {
            continue;
        };
        if out.contains_key(kernel) {
            continue;
        }
        if let Ok(target) = resolve_mapping(module, kernel)
            && (target.build.is_some() || target.sign.is_some())
        {
            out.insert(kernel.to_owned(), target);
        }
    }
    out
}

/// The Module's `imageRepoSecret` as registry credentials (`None` without one); an error is a
/// message for the status.
pub(crate) async fn registry_auth(
    client: &Client,
    module: &Module,
    ns: &str,
) -> std::result::Result<Option<DockerConfig>, String> {
    let Some(secret) = module
        .spec
        .image_repo_secret
        .as_ref()
        .filter(|s| !s.name.is_empty())
    else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api
        .get(&secret.name)
        .await
        .map_err(|e| format!("imageRepoSecret {ns}/{}: {e}", secret.name))?;
    let data: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    DockerConfig::from_secret(s.type_.as_deref(), &data)
        .map(Some)
        .map_err(|e| format!("imageRepoSecret {ns}/{}: {e}", secret.name))
}

/// The Dockerfile of a build (`dockerfileConfigMap`); an error is a message for the status.
pub(crate) async fn dockerfile(
    client: &Client,
    ns: &str,
    name: &str,
) -> std::result::Result<String, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = api
        .get(name)
        .await
        .map_err(|e| format!("dockerfileConfigMap {ns}/{name}: {e}"))?;
    cm.data
        .and_then(|mut d| d.remove(DOCKERFILE_KEY))
        .ok_or_else(|| format!("dockerfileConfigMap {ns}/{name} has no '{DOCKERFILE_KEY}' key"))
}

/// How to ask registries whether images exist.
#[derive(Clone, Copy)]
pub(crate) struct Registry<'a> {
    /// Recent positive answers.
    pub lookups: &'a ImageLookups,
    /// The Module's registry credentials.
    pub auth: Option<&'a DockerConfig>,
}

impl Registry<'_> {
    /// Asks the registry about the final image and, for build+sign, the
    /// intermediate one. Errors are a reason and a message for the status.
    pub(crate) async fn facts(
        &self,
        chain: &[job::Step],
        target: &ResolvedMapping,
    ) -> std::result::Result<Facts, (String, String)> {
        let image_exists = self
            .exists(&target.container_image, &target.registry_tls)
            .await?;
        let unsigned_exists = match chain {
            [build, _sign] if !image_exists => {
                self.exists(&build.target_image, &build.target_tls).await?
            }
            _ => false,
        };
        Ok(Facts {
            image_exists,
            unsigned_exists,
        })
    }

    /// Whether `image` is in its registry.
    pub(crate) async fn exists(
        &self,
        image: &str,
        tls: &TlsOptions,
    ) -> std::result::Result<bool, (String, String)> {
        exists(image, tls, self.auth, self.lookups).await
    }
}

async fn exists(
    image: &str,
    tls: &TlsOptions,
    auth: Option<&DockerConfig>,
    lookups: &ImageLookups,
) -> std::result::Result<bool, (String, String)> {
    if lookups.fresh(image) {
        return Ok(true);
    }
    // E.g. upstream's intermediate tag of a long namespace and name exceeds
    // the 128 characters a tag may have: say so, not "registry unavailable".
    let reference: Reference = image.parse().map_err(|e| {
        (
            "InvalidImageReference".to_string(),
            format!("image '{image}' is not a valid reference: {e}"),
        )
    })?;
    let client = kmm_registry::client(
        reference.resolve_registry(),
        RegistryTls {
            insecure: tls.insecure,
            insecure_skip_tls_verify: tls.insecure_skip_tls_verify,
        },
    );
    let auth = auth.map_or(RegistryAuth::Anonymous, |a| a.auth_for(&reference));
    let found = kmm_registry::manifest_digest(&client, &reference, &auth)
        .await
        .map_err(|e| ("RegistryUnavailable".to_string(), e.to_string()))?
        .is_some();
    if found {
        lookups.remember(image);
    }
    Ok(found)
}

async fn create_job(
    module: &Module,
    step: &job::Step,
    kernel: &str,
    ctx: &BuildContext<'_>,
) -> Result<()> {
    let owner = module
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidModule("Module has no uid yet".into()))?;
    let job = job::job(step, owner);
    let name = job.name_any();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &step.namespace);
    match api.create(&PostParams::default(), &job).await {
        Ok(_) => {
            tracing::info!(job = %name, kernel, image = %step.target_image, kind = step.kind.as_str(), "created Job");
            ctx.metrics
                .jobs_created
                .with_label_values(&[step.kind.as_str()])
                .inc();
            let verb = match step.kind {
                StepKind::Build => "building",
                StepKind::Sign => "signing",
            };
            publish(
                module,
                ctx,
                EventType::Normal,
                match step.kind {
                    StepKind::Build => "BuildCreated",
                    StepKind::Sign => "SignCreated",
                },
                format!(
                    "{verb} {} for kernel {kernel} (Job {name})",
                    step.target_image
                ),
            )
            .await;
            Ok(())
        }
        // Another replica (or our previous life) made it: same inputs, same Job.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("creating Job {}/{name}", step.namespace),
            e,
        )),
    }
}

async fn delete_jobs(ns: &str, names: Vec<String>, ctx: &BuildContext<'_>) -> Result<()> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    for name in names {
        tracing::info!(job = %name, "deleting a finished or obsolete build/sign Job");
        // Background: the Job's pods go with it.
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube(format!("deleting Job {ns}/{name}"), e)),
        }
    }
    Ok(())
}

async fn record_trigger(module: &Module, ns: &str, ctx: &BuildContext<'_>) -> Result<()> {
    let patch = serde_json::json!({ "status": {
        "imageRebuildTriggerGeneration": module.spec.image_rebuild_trigger_generation,
    }});
    Api::<Module>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &module.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| Error::kube("recording imageRebuildTriggerGeneration", e))?;
    Ok(())
}

async fn publish(
    module: &Module,
    ctx: &BuildContext<'_>,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Build".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &module.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "publishing event");
    }
}

/// Upstream's `BuildSucceeded`/`SignSucceeded`, once per Job
/// ([`plan::succeeded_jobs`]): the Job is marked first, so a restart or a new
/// leader never reports it again (at worst, a failed event write loses one).
async fn report_succeeded(module: &Module, ns: &str, done: Vec<&JobView>, ctx: &BuildContext<'_>) {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    for job in done {
        let Some(kind) = job.kind else { continue };
        let mark = serde_json::json!({"metadata": {"annotations": {
            job::SUCCEEDED_REPORTED_ANNOTATION: "",
        }}});
        if let Err(e) = api
            .patch(&job.name, &PatchParams::default(), &Patch::Merge(&mark))
            .await
        {
            tracing::warn!(job = %job.name, error = %e, "marking a succeeded Job");
            continue;
        }
        let (reason, what) = match kind {
            StepKind::Build => ("BuildSucceeded", "Build"),
            StepKind::Sign => ("SignSucceeded", "Sign"),
        };
        publish(
            module,
            ctx,
            EventType::Normal,
            reason,
            format!(
                "{what} Job {} succeeded for kernel {}",
                job.name, job.kernel
            ),
        )
        .await;
    }
}

fn failed_reason(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Build => "BuildFailed",
        StepKind::Sign => "SignFailed",
    }
}

fn blocked(reason: &str, message: String) -> BuildReport {
    BuildReport {
        images_ready: Some((false, reason.into(), message.clone())),
        degraded: Some((reason.into(), message)),
    }
}

/// The ImagesReady condition and a Degraded reason from the kernels' outcomes.
fn report(
    kernels: &[(String, Vec<job::Step>, Outcome)],
    problems: Vec<(String, String)>,
) -> BuildReport {
    if kernels.is_empty() && problems.is_empty() {
        return BuildReport::default();
    }
    let mut failed: Vec<(String, String)> = problems;
    let mut pending = Vec::new();
    for (kernel, _, outcome) in kernels {
        match outcome {
            Outcome::Ready => {}
            Outcome::Create(step) => pending.push(format!("{} for {kernel}", step.kind.as_str())),
            Outcome::Running { job, kind } => {
                pending.push(format!("{} for {kernel} (Job {job})", kind.as_str()));
            }
            Outcome::Failed { job, kind, message } => failed.push((
                failed_reason(*kind).into(),
                format!("{kernel}: Job {job} failed: {message}"),
            )),
            Outcome::SucceededButMissing { job } => failed.push((
                "ImageMissingAfterJob".into(),
                format!("{kernel}: Job {job} succeeded but the image is not in the registry"),
            )),
        }
    }
    let ready = kernels
        .iter()
        .filter(|(_, _, o)| *o == Outcome::Ready)
        .count();
    if !failed.is_empty() {
        let reason = if failed.iter().all(|(r, _)| *r == failed[0].0) {
            failed[0].0.clone()
        } else {
            "MultipleErrors".into()
        };
        let message = failed
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return BuildReport {
            images_ready: Some((false, reason.clone(), message.clone())),
            degraded: Some((reason, message)),
        };
    }
    if !pending.is_empty() {
        return BuildReport {
            images_ready: Some((
                false,
                "Building".into(),
                format!(
                    "{ready}/{} kernel images ready; in progress: {}",
                    kernels.len(),
                    pending.join(", ")
                ),
            )),
            degraded: None,
        };
    }
    BuildReport {
        images_ready: Some((
            true,
            "AllImagesPresent".into(),
            format!("images for {} kernel(s) are in the registry", kernels.len()),
        )),
        degraded: None,
    }
}
