//! Executing planned actions: pull, remove in-tree modules, install firmware,
//! load; and unload. Kernel calls run on blocking threads.

use std::path::Path;
use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kmm_common::Module;
use kube::runtime::events::EventType;
use kube::{Api, Resource};

use super::{Context, report};
use crate::image::{DockerConfig, PullOptions, PullPolicy, PulledImage, RegistryTls};
use crate::kernel::{self, LoadRequest, UnloadRequest, firmware};
use crate::plan::{Action, DesiredLoad};
use crate::state::{LoadedModule, ModuleKey};

/// Why an action failed; `reason()` is the CamelCase reason in status and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The pull secret could not be read.
    #[error("reading imageRepoSecret {name}: {source}")]
    PullSecret {
        /// Secret name.
        name: String,
        /// API error.
        #[source]
        source: kube::Error,
    },
    /// The pull secret is not a usable docker config.
    #[error("imageRepoSecret {name}: {source}")]
    PullSecretFormat {
        /// Secret name.
        name: String,
        /// Parse error.
        #[source]
        source: crate::image::AuthError,
    },
    /// Pulling or unpacking the image failed.
    #[error("pulling {image}: {source}")]
    Pull {
        /// Image reference.
        image: String,
        /// Cause.
        #[source]
        source: crate::image::ImageError,
    },
    /// The image is not in the registry yet and the controller builds or
    /// signs it: the node waits for it (retried at a steady pace, no warning).
    #[error("waiting for {image} to be built or signed in the cluster (not in the registry yet)")]
    WaitingForImage {
        /// Image reference.
        image: String,
    },
    /// The image does not hold the modules for this kernel, or a load failed.
    #[error("{0}")]
    Kernel(#[from] kernel::Error),
    /// Removing an in-tree module failed.
    #[error("removing in-tree module {name}: {source}")]
    InTree {
        /// Module.
        name: String,
        /// Cause.
        #[source]
        source: kernel::Error,
    },
    /// Copying firmware failed.
    #[error("installing firmware: {0}")]
    Firmware(#[from] firmware::FirmwareError),
    /// The state file could not be written.
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    /// The Module asks for something the agent refuses (e.g. a path leaving the image).
    #[error("invalid Module: {0}")]
    InvalidSpec(String),
    /// A blocking task panicked or was cancelled.
    #[error("internal: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl ActionError {
    /// CamelCase reason for status, events and the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ActionError::PullSecret { .. } | ActionError::PullSecretFormat { .. } => {
                "PullSecretFailed"
            }
            ActionError::Pull { .. } => "ImagePullFailed",
            ActionError::WaitingForImage { .. } => kmm_common::REASON_WAITING_FOR_IMAGE,
            ActionError::Kernel(_) => "ModprobeFailed",
            ActionError::InTree { .. } => "InTreeRemovalFailed",
            ActionError::Firmware(_) => "FirmwareFailed",
            ActionError::State(_) => "StateWriteFailed",
            ActionError::InvalidSpec(_) => "InvalidModuleSpec",
            ActionError::Join(_) => "Internal",
        }
    }
}

impl ActionError {
    /// Whether this is a wait rather than a failure (no backoff growth, no warning).
    pub fn is_wait(&self) -> bool {
        matches!(self, ActionError::WaitingForImage { .. })
    }
}

type Result<T, E = ActionError> = std::result::Result<T, E>;

/// On start: keep only records whose modules are still in the running kernel.
/// After a reboot (or a kernel change) nothing is loaded, so records are dropped and
/// the Modules load again if still wanted; no double load, no orphan record.
///
/// # Errors
/// If the state file cannot be read or written.
pub async fn recover_state(ctx: &Context) -> anyhow::Result<()> {
    let mut state = ctx.state_file.load()?;
    let interrupted = std::mem::take(&mut state.loading);
    if !interrupted.is_empty() {
        let kernel = ctx.kernel.clone();
        let running = ctx.settings.kernel_release.clone();
        let removed = tokio::task::spawn_blocking(move || {
            roll_back_interrupted(kernel.as_ref(), &running, &interrupted)
        })
        .await?;
        tracing::info!(
            ?removed,
            "rolled back loads interrupted by a restart; they are retried from the start"
        );
    }
    let kernel = ctx.kernel.clone();
    let running = ctx.settings.kernel_release.clone();
    let records: Vec<(ModuleKey, LoadedModule)> = state.modules.clone().into_iter().collect();
    let still = tokio::task::spawn_blocking(move || {
        records
            .into_iter()
            .filter(|(key, rec)| {
                let loaded = rec.kernel == running && kernel.is_loaded(&rec.module_name).unwrap_or(false);
                if !loaded {
                    tracing::info!(module = %key, kernel = %rec.kernel, "recorded module is not in the running kernel; forgetting the record");
                }
                loaded
            })
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    })
    .await?;
    state.modules.retain(|k, _| still.contains(k));
    ctx.state_file.save(&state)?;
    for key in state.modules.keys() {
        ctx.metrics
            .modules_loaded
            .with_label_values(&[&key.namespace, &key.name])
            .set(1);
    }
    tracing::info!(loaded = state.modules.len(), "node state recovered");
    *ctx.state.lock().await = state;
    Ok(())
}

/// Removes what loads interrupted by a crash inserted (modules of their load order
/// that are loaded now and were not before), so the retry records exactly what
/// it inserts: nothing is loaded twice, nothing is forgotten. Dependencies libkmod
/// pulled in stay loaded (they are not known to have been ours).
pub fn roll_back_interrupted(
    kernel: &dyn crate::kernel::Kernel,
    running: &str,
    interrupted: &std::collections::BTreeMap<ModuleKey, crate::state::Loading>,
) -> Vec<String> {
    let mut removed = Vec::new();
    for (key, l) in interrupted {
        if l.kernel != running {
            continue; // a reboot into another kernel: nothing of it is loaded
        }
        let ours: Vec<String> = l
            .load_order
            .iter()
            .rev()
            .filter(|m| !l.already_loaded.contains(m) && kernel.is_loaded(m).unwrap_or(false))
            .cloned()
            .collect();
        if ours.is_empty() {
            continue;
        }
        let req = UnloadRequest {
            modules: ours,
            deps: crate::kernel::DepPolicy::None,
        };
        match kernel.unload(&req) {
            Ok(out) => removed.extend(out.removed),
            Err(e) => {
                tracing::warn!(module = %key, error = %e, "could not roll back an interrupted load")
            }
        }
    }
    removed
}

/// Executes one action.
///
/// # Errors
/// The first failing step; nothing after it runs, and what was loaded by the
/// failing attempt is removed again by the kernel layer.
pub async fn execute(ctx: &Context, action: &Action, module: Option<&Module>) -> Result<()> {
    match action {
        Action::Load { key, want } => load(ctx, key, want, module).await,
        Action::Replace { key, want } => {
            unload(
                ctx,
                key,
                "the Module's spec, version or the node's kernel changed",
                module,
            )
            .await?;
            load(ctx, key, want, module).await
        }
        Action::Verify { key, want } => verify(ctx, key, want, module).await,
        Action::Unload { key, reason } => unload(ctx, key, reason, module).await,
    }
}

/// `imagePullPolicy` of `want`, or Kubernetes' default for its tag.
fn effective_policy(want: &DesiredLoad) -> Result<PullPolicy> {
    let err = |source| ActionError::Pull {
        image: want.image.clone(),
        source,
    };
    match PullPolicy::parse(&want.pull_policy).map_err(err)? {
        Some(p) => Ok(p),
        None => Ok(PullPolicy::default_for(
            &crate::image::parse_reference(&want.image).map_err(err)?,
        )),
    }
}

async fn pull(ctx: &Context, key: &ModuleKey, want: &DesiredLoad) -> Result<PulledImage> {
    let credentials = match &want.pull_secret {
        Some(name) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &key.namespace);
            let secret = secrets
                .get(name)
                .await
                .map_err(|source| ActionError::PullSecret {
                    name: name.clone(),
                    source,
                })?;
            let data = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            DockerConfig::from_secret(secret.type_.as_deref(), &data).map_err(|source| {
                ActionError::PullSecretFormat {
                    name: name.clone(),
                    source,
                }
            })?
        }
        None => DockerConfig::default(),
    };
    let opts = PullOptions {
        policy: Some(effective_policy(want)?),
        credentials,
        tls: RegistryTls {
            insecure: want.registry.insecure,
            insecure_skip_tls_verify: want.registry.insecure_skip_tls_verify,
        },
        ..PullOptions::default()
    };
    let started = Instant::now();
    let pulled = ctx
        .images
        .pull(&want.image, &opts)
        .await
        .map_err(|source| match source {
            crate::image::ImageError::NotFound { .. } if want.built_in_cluster => {
                ActionError::WaitingForImage {
                    image: want.image.clone(),
                }
            }
            source => ActionError::Pull {
                image: want.image.clone(),
                source,
            },
        })?;
    ctx.metrics
        .pull_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics.pulled_bytes.inc_by(pulled.bytes_downloaded);
    Ok(pulled)
}

async fn load(
    ctx: &Context,
    key: &ModuleKey,
    want: &DesiredLoad,
    module: Option<&Module>,
) -> Result<()> {
    if let Some(why) = &want.rejected {
        return Err(ActionError::InvalidSpec(why.clone()));
    }
    let pulled = pull(ctx, key, want).await?;
    let started = Instant::now();
    let module_dir = kernel::module_dir(&pulled.root, &want.dir_name, &want.kernel)?;
    let req = LoadRequest::new(&module_dir, &want.module_name)
        .with_parameters(want.parameters.iter().cloned())
        .with_loading_order(&want.modules_loading_order)?;

    // Written before the first insert, so a crash mid-load can be rolled back.
    let order: Vec<String> = req.load_order().map(str::to_owned).collect();
    let (k, probe) = (ctx.kernel.clone(), order.clone());
    let already_loaded = tokio::task::spawn_blocking(move || {
        probe
            .into_iter()
            .filter(|m| k.is_loaded(m).unwrap_or(false))
            .collect::<Vec<_>>()
    })
    .await?;
    {
        let mut state = ctx.state.lock().await;
        state.loading.insert(
            key.clone(),
            crate::state::Loading {
                kernel: want.kernel.clone(),
                load_order: order,
                already_loaded,
            },
        );
        ctx.state_file.save(&state)?;
    }
    let k = ctx.kernel.clone();
    let in_tree = want.in_tree_to_remove.clone();
    let firmware_src = if want.firmware_path.is_empty() {
        None
    } else {
        Some(image_path(&pulled.root, &want.firmware_path)?)
    };
    let firmware_source = firmware_src.clone();
    let firmware_dir = ctx.settings.firmware_dir.clone();
    let set_class_path = ctx.settings.set_firmware_class_path;
    let result = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut removed = Vec::new();
        for name in &in_tree {
            let out = k
                .remove_in_tree(name)
                .map_err(|source| ActionError::InTree {
                    name: name.clone(),
                    source,
                })?;
            removed.extend(out.removed);
        }
        let mut firmware_files = Vec::new();
        if let Some(src) = firmware_src {
            firmware_files = firmware::install_firmware(&src, &firmware_dir)?.installed;
            if set_class_path {
                firmware::set_firmware_class_path(
                    Path::new(firmware::FIRMWARE_CLASS_PATH),
                    &firmware_dir,
                )?;
            }
        }
        let outcome = k.load(&req)?;
        Ok((removed, firmware_files, outcome))
    })
    .await?;
    let (removed, firmware_files, outcome) = match result {
        Ok(r) => r,
        Err(e) => {
            // The kernel layer removed what the failed attempt inserted.
            let mut state = ctx.state.lock().await;
            state.loading.remove(key);
            ctx.state_file.save(&state)?;
            return Err(e);
        }
    };

    if outcome.already_loaded && !want.parameters.is_empty() {
        // modprobe behaves the same: a loaded module keeps its parameters.
        tracing::warn!(module = %key, name = %want.module_name, parameters = ?want.parameters,
            "module was already in the kernel; its parameters were not applied");
    }
    let record = LoadedModule {
        image: want.image.clone(),
        digest: pulled.digest.clone(),
        kernel: want.kernel.clone(),
        module_name: want.module_name.clone(),
        modules_loading_order: want.modules_loading_order.clone(),
        inserted: outcome.inserted.clone(),
        parameters: want.parameters.clone(),
        version: want.version.clone(),
        in_tree_removed: removed,
        module_dir,
        firmware_files,
        firmware_source,
        loaded_at: report::now_rfc3339(),
        module_uid: module.and_then(|m| m.metadata.uid.clone()),
    };
    {
        let mut state = ctx.state.lock().await;
        state.loading.remove(key);
        state.modules.insert(key.clone(), record);
        ctx.state_file.save(&state)?;
    }
    ctx.verified_at
        .lock()
        .await
        .insert(key.clone(), Instant::now());
    ctx.metrics
        .load_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .modules_loaded
        .with_label_values(&[&key.namespace, &key.name])
        .set(1);
    tracing::info!(module = %key, image = %want.image, digest = %pulled.digest, inserted = ?outcome.inserted,
        already_loaded = outcome.already_loaded, "module loaded");
    if let Some(m) = module {
        let note = format!(
            "Loaded {} from {}@{} on node {}",
            want.module_name, want.image, pulled.digest, ctx.settings.node_name
        );
        report::event(
            ctx,
            &m.object_ref(&()),
            EventType::Normal,
            "ModuleLoaded",
            "Load",
            note,
        )
        .await;
    }
    Ok(())
}

async fn verify(
    ctx: &Context,
    key: &ModuleKey,
    want: &DesiredLoad,
    module: Option<&Module>,
) -> Result<()> {
    if effective_policy(want)? != PullPolicy::Always {
        return Ok(());
    }
    let due = ctx
        .verified_at
        .lock()
        .await
        .get(key)
        .is_none_or(|t| t.elapsed() >= ctx.settings.verify_interval);
    if !due {
        return Ok(());
    }
    let pulled = pull(ctx, key, want).await?;
    ctx.verified_at
        .lock()
        .await
        .insert(key.clone(), Instant::now());
    let current = ctx
        .state
        .lock()
        .await
        .modules
        .get(key)
        .map(|r| r.digest.clone());
    if current.as_deref() == Some(pulled.digest.as_str()) {
        return Ok(());
    }
    tracing::info!(module = %key, old = ?current, new = %pulled.digest, "image digest moved; reloading");
    unload(
        ctx,
        key,
        "the image digest changed (imagePullPolicy: Always)",
        module,
    )
    .await?;
    load(ctx, key, want, module).await
}

async fn unload(ctx: &Context, key: &ModuleKey, why: &str, module: Option<&Module>) -> Result<()> {
    let Some(record) = ctx.state.lock().await.modules.get(key).cloned() else {
        return Ok(());
    };
    let started = Instant::now();
    let req = LoadRequest::new(&record.module_dir, &record.module_name)
        .with_loading_order(&record.modules_loading_order)?;
    let inserted = record.inserted.clone();
    // Only what this agent inserted leaves the kernel; a module that was there before stays.
    let mut unload = UnloadRequest::reverse_of(&req).only_deps(inserted.iter().cloned());
    let ours: Vec<String> = inserted.iter().map(|m| kernel::normalize(m)).collect();
    unload
        .modules
        .retain(|m| ours.contains(&kernel::normalize(m)));
    let k = ctx.kernel.clone();
    let outcome = tokio::task::spawn_blocking(move || k.unload(&unload)).await??;
    {
        let mut state = ctx.state.lock().await;
        state.modules.remove(key);
        ctx.state_file.save(&state)?;
    }
    ctx.metrics
        .unload_duration
        .observe(started.elapsed().as_secs_f64());
    let _ = ctx
        .metrics
        .modules_loaded
        .remove_label_values(&[&key.namespace, &key.name]);
    tracing::info!(module = %key, removed = ?outcome.removed, why, "module unloaded");
    let reference = match module {
        Some(m) => m.object_ref(&()),
        None => report::module_ref(key, record.module_uid.as_deref()),
    };
    let note = format!(
        "Unloaded {} on node {}: {why}",
        record.module_name, ctx.settings.node_name
    );
    report::event(
        ctx,
        &reference,
        EventType::Normal,
        "ModuleUnloaded",
        "Unload",
        note,
    )
    .await;
    Ok(())
}

/// `<root>/<path>` for an absolute path inside the image (`/firmware` → `<root>/firmware`).
///
/// # Errors
/// A path with `..` could name host files outside the image.
fn image_path(root: &Path, path: &str) -> Result<std::path::PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ActionError::InvalidSpec(format!(
            "firmwarePath '{path}' must be a path inside the image without '..'"
        )));
    }
    Ok(root.join(rel))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::kernel::{Kernel, SimulatedKernel};
    use crate::state::Loading;

    #[test]
    fn interrupted_load_is_rolled_back_but_modules_that_were_there_stay() {
        let k = SimulatedKernel::new();
        // The crashed attempt inserted dep and main; pre was loaded before it.
        k.preload("pre", &[]);
        k.preload("dep", &[]);
        k.preload("main", &[]);
        let interrupted = BTreeMap::from([(
            ModuleKey::new("ns", "m"),
            Loading {
                kernel: "6.1.0-56-amd64".into(),
                load_order: vec!["pre".into(), "dep".into(), "main".into()],
                already_loaded: vec!["pre".into()],
            },
        )]);
        let removed = roll_back_interrupted(&k, "6.1.0-56-amd64", &interrupted);
        assert_eq!(removed, vec!["main".to_string(), "dep".to_string()]);
        assert!(k.is_loaded("pre").unwrap());
        assert!(!k.is_loaded("main").unwrap());
    }

    #[test]
    fn interrupted_load_for_another_kernel_touches_nothing() {
        let k = SimulatedKernel::new();
        k.preload("main", &[]);
        let interrupted = BTreeMap::from([(
            ModuleKey::new("ns", "m"),
            Loading {
                kernel: "5.14.0".into(),
                load_order: vec!["main".into()],
                already_loaded: vec![],
            },
        )]);
        assert!(roll_back_interrupted(&k, "6.1.0-56-amd64", &interrupted).is_empty());
        assert!(k.is_loaded("main").unwrap());
    }
}
