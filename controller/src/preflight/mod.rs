//! The PreflightValidation reconciler (leader only): before a kernel upgrade, is every Module
//! ready for `spec.kernelVersion`?
//!
//! For each Module (of the watched namespace, or all): resolve its kernel mapping for the
//! kernel (the agent's own [`kmm_common::resolve_mapping`]), ask the registry for the image
//! (the build step's lookups), and when it is missing and the mapping builds or signs, run the
//! build step's Jobs ([`crate::build::job`]) for this preflight: owned by the
//! PreflightValidation, named and labelled apart from the Module's own Jobs so neither side
//! collects the other's. Verdicts are recomputed on every pass ([`verdict::decide`]); the Jobs
//! are the memory of a build's result.
//!
//! - [`verdict`]: one Module's verdict, pure;
//! - [`status`]: `status.modules` from the verdicts, pure;
//! - [`triggers`]: Module and Job events that wake it.

pub mod status;
pub mod triggers;
pub mod verdict;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kmm_common::{Module, PreflightValidation, resolve_mapping};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::instrument;

use crate::build::ImageLookups;
use crate::build::job::{self, PREFLIGHT_LABEL, Preflight, Step};
use crate::build::plan::{self, ChainInput, JobView};
use crate::build::sync::{Registry, dockerfile, registry_auth};
use crate::error::{Error, Result};
use crate::labels::MANAGED_BY;
use crate::metrics::Metrics;
use crate::reconcile::{Settings, scoped};
use status::ModuleVerdict;
use verdict::Verdict;

/// What every preflight reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Metrics (`kmm_preflight_num`, `jobs_created`).
    pub metrics: Metrics,
    /// The controller's settings (namespace scope, requeue delays, signer image).
    pub settings: Settings,
    /// Modules of the watched namespace (or all).
    pub modules: Store<Module>,
    /// Preflight Jobs (by label).
    pub jobs: Store<Job>,
    /// Recent "image exists" answers of registries.
    pub image_lookups: ImageLookups,
}

fn preflight_job_selector() -> String {
    format!("{PREFLIGHT_LABEL},app.kubernetes.io/managed-by={MANAGED_BY}")
}

/// Runs the PreflightValidation controller until the process stops.
pub async fn run(client: Client, metrics: Metrics, settings: Settings) {
    let ns = settings.namespace.clone();
    let (modules, modules_w) = reflector::store::<Module>();
    let (jobs, jobs_w) = reflector::store::<Job>();
    let mut generations = triggers::ModuleGenerations::default();
    let module_trigger = watcher(
        scoped::<Module>(&client, ns.as_deref()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(modules_w)
    .filter_map(move |ev| {
        future::ready(match ev {
            Ok(ev) => generations.relevant(&ev).then_some(()),
            Err(e) => {
                tracing::warn!(error = %e, "module watch (preflight)");
                None
            }
        })
    });
    // A Job finishing changes its Module's verdict.
    let job_trigger = watcher(
        scoped::<Job>(&client, ns.as_deref()),
        watcher::Config::default().labels(&preflight_job_selector()),
    )
    .default_backoff()
    .reflect(jobs_w)
    .touched_objects();
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        settings,
        modules,
        jobs,
        image_lookups: ImageLookups::default(),
    });
    let controller = Controller::new(
        Api::<PreflightValidation>::all(client),
        watcher::Config::default(),
    )
    .watches_stream(job_trigger, triggers::preflight_of_job)
    .reconcile_all_on(module_trigger)
    .with_config(controller::Config::default().debounce(Duration::from_millis(500)));
    let preflights = controller.store();
    let metrics = ctx.metrics.clone();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(move |res| {
            metrics.count_preflights(preflights.state().len());
            async move {
                match res {
                    Ok((obj, _)) => tracing::debug!(preflight = %obj, "reconciled"),
                    Err(controller::Error::ReconcilerFailed(e, obj)) => {
                        tracing::debug!(preflight = %obj, error = %e, "reconcile failed");
                    }
                    Err(controller::Error::ObjectNotFound(obj)) => {
                        tracing::debug!(preflight = %obj, "gone");
                    }
                    Err(e) => tracing::warn!(error = %e, "preflight controller"),
                }
            }
        })
        .await;
}

/// One PreflightValidation: every Module's verdict, the Jobs they need, the status.
///
/// # Errors
/// API failures (creating or deleting Jobs, writing the status).
#[instrument(skip(pfv, ctx), fields(name = pfv.name_any(), kernel = %pfv.spec.kernel_version))]
pub async fn reconcile(pfv: Arc<PreflightValidation>, ctx: Arc<Context>) -> Result<Action> {
    // Verdicts read the caches: never judge a half-listed cluster.
    let _ = ctx.modules.wait_until_ready().await;
    let _ = ctx.jobs.wait_until_ready().await;
    if pfv.metadata.deletion_timestamp.is_some() {
        // Its Jobs go with it (owner references).
        return Ok(Action::await_change());
    }
    let owner = pfv
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidPreflight("no uid yet".into()))?;
    let jobs: Vec<(String, JobView)> = ctx
        .jobs
        .state()
        .iter()
        .filter(|j| owned_by(j, &owner))
        .filter_map(|j| Some((j.namespace()?, plan::job_view(j)?)))
        .collect();
    let by_hash: BTreeMap<&str, &JobView> =
        jobs.iter().map(|(_, j)| (j.hash.as_str(), j)).collect();

    let mut modules = ctx.modules.state();
    modules.retain(|m| m.metadata.deletion_timestamp.is_none());
    modules.sort_by_key(|m| (m.namespace(), m.name_any()));
    let mut verdicts = Vec::new();
    let mut needed: BTreeSet<String> = BTreeSet::new();
    let mut all_evaluated = true;
    for module in &modules {
        let Some(ns) = module.namespace() else {
            continue;
        };
        let eval = evaluate(module, &ns, &pfv, &by_hash, &ctx).await;
        match eval.hashes {
            Some(hashes) => needed.extend(hashes),
            None => all_evaluated = false,
        }
        if let Some(step) = eval.create {
            create_job(&step, &owner, &ctx).await?;
        }
        verdicts.push(ModuleVerdict {
            namespace: ns,
            name: module.name_any(),
            verdict: eval.verdict,
        });
    }
    // Jobs no Module needs any more (Module gone or changed). While a Module could not be
    // evaluated, its Jobs are not judged obsolete.
    if all_evaluated {
        for (ns, job) in jobs.iter().filter(|(_, j)| !needed.contains(&j.hash)) {
            delete_job(ns, &job.name, &ctx).await?;
        }
    }
    let entries = write_status(&pfv, &verdicts, &ctx).await?;
    if status::all_verified(&entries) {
        tracing::info!(modules = entries.len(), "every Module verified");
        Ok(Action::requeue(ctx.settings.resync))
    } else {
        // Jobs wake us when they end; an unreachable registry is asked again.
        Ok(Action::requeue(
            ctx.settings.error_requeue.max(Duration::from_secs(30)),
        ))
    }
}

/// Requeues after `error_requeue`.
pub fn error_policy(pfv: Arc<PreflightValidation>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(preflight = %pfv.name_any(), error = %error, reason = error.metric_label(), "preflight reconcile failed");
    Action::requeue(ctx.settings.error_requeue)
}

fn owned_by(job: &Job, owner: &OwnerReference) -> bool {
    job.owner_references().iter().any(|o| o.uid == owner.uid)
}

/// One Module's evaluation.
struct Evaluation {
    verdict: Verdict,
    /// A Job to create.
    create: Option<Step>,
    /// Hashes of the Jobs it needs kept; `None` when it could not be evaluated.
    hashes: Option<Vec<String>>,
}

impl Evaluation {
    fn done(verdict: Verdict) -> Self {
        Self {
            verdict,
            create: None,
            hashes: Some(Vec::new()),
        }
    }

    fn unsure(verdict: Verdict) -> Self {
        Self {
            verdict,
            create: None,
            hashes: None,
        }
    }
}

async fn evaluate(
    module: &Module,
    ns: &str,
    pfv: &PreflightValidation,
    jobs: &BTreeMap<&str, &JobView>,
    ctx: &Context,
) -> Evaluation {
    let kernel = &pfv.spec.kernel_version;
    let push = pfv.spec.push_built_image;
    let target = match resolve_mapping(module, kernel) {
        Ok(t) => t,
        Err(why) => return Evaluation::done(verdict::no_mapping(&why)),
    };
    let auth = match registry_auth(&ctx.client, module, ns).await {
        Ok(auth) => auth,
        Err(message) => {
            return Evaluation::unsure(verdict::problem("ImageRepoSecretInvalid", &message));
        }
    };
    let registry = Registry {
        lookups: &ctx.image_lookups,
        auth: auth.as_ref(),
    };
    // An image that is there needs nothing else (not even the build's Dockerfile).
    match registry
        .exists(&target.container_image, &target.registry_tls)
        .await
    {
        Ok(true) => return Evaluation::done(verdict::exists(&target.container_image)),
        Ok(false) => {}
        Err((reason, message)) => return Evaluation::unsure(verdict::problem(&reason, &message)),
    }
    let dockerfile = match &target.build {
        Some(b) => match dockerfile(&ctx.client, ns, &b.dockerfile_config_map.name).await {
            Ok(d) => Some(d),
            Err(message) => {
                return Evaluation::unsure(verdict::problem("DockerfileUnavailable", &message));
            }
        },
        None => None,
    };
    let input = ChainInput::of(module, ns, &ctx.settings.signer_image);
    let mut chain = plan::chain(&input, &target, dockerfile.as_deref());
    for step in &mut chain {
        step.preflight = Some(Preflight {
            name: pfv.name_any(),
            push,
        });
    }
    let facts = match registry.facts(&chain, &target).await {
        Ok(f) => f,
        Err((reason, message)) => return Evaluation::unsure(verdict::problem(&reason, &message)),
    };
    let (verdict, create) = verdict::decide(&target.container_image, &chain, jobs, facts, push);
    Evaluation {
        verdict,
        create,
        hashes: Some(chain.iter().map(Step::hash).collect()),
    }
}

async fn create_job(step: &Step, owner: &OwnerReference, ctx: &Context) -> Result<()> {
    let job = job::job(step, owner.clone());
    let name = job.name_any();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &step.namespace);
    match api.create(&PostParams::default(), &job).await {
        Ok(_) => {
            tracing::info!(job = %name, module = %step.module, image = %step.target_image, kind = step.kind.as_str(), "created preflight Job");
            ctx.metrics
                .jobs_created
                .with_label_values(&[step.kind.as_str()])
                .inc();
            Ok(())
        }
        // Same inputs, same Job: made by a previous pass not yet in the cache.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("creating Job {}/{name}", step.namespace),
            e,
        )),
    }
}

async fn delete_job(ns: &str, name: &str, ctx: &Context) -> Result<()> {
    tracing::info!(job = %name, "deleting an obsolete preflight Job");
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting Job {ns}/{name}"), e)),
    }
}

/// Writes `status.modules` when it changed; returns it. The write carries the
/// resourceVersion read: two controllers of different namespaces (each keeping the other's
/// entries) never overwrite each other, the loser retries.
async fn write_status(
    pfv: &PreflightValidation,
    verdicts: &[ModuleVerdict],
    ctx: &Context,
) -> Result<Vec<kmm_common::PreflightValidationModuleStatus>> {
    let old = pfv
        .status
        .as_ref()
        .map(|s| s.modules.as_slice())
        .unwrap_or_default();
    let scope = ctx.settings.namespace.as_deref();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let entries = status::merge(old, verdicts, |ns| scope.is_none_or(|s| s == ns), &now);
    if entries == old {
        return Ok(entries);
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": pfv.resource_version()},
        "status": {"modules": entries},
    });
    Api::<PreflightValidation>::all(ctx.client.clone())
        .patch_status(
            &pfv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| Error::kube("writing PreflightValidation status", e))?;
    Ok(entries)
}
