//! Executes the controller's build Job for real: the Job's kaniko recipe
//! (args, ConfigMap and Secret volumes) is read back from the object, mapped to
//! Debian's `buildah bud` + `buildah push`, and run on the host against the
//! local registry, as the Job's builder would in a cluster.
//!
//! buildah runs as root with its own `--root`/`--runroot` under a temp dir,
//! the vfs driver (no overlay mounts left behind) and chroot isolation, so
//! `RUN` steps work without an OCI runtime (none is installed here). A Job
//! the mapping does not fully understand (an unknown kaniko flag, container
//! field or volume) is refused rather than half-executed. Pod-level fields
//! (node selector, tolerations, restart and backoff policy) only say where the
//! build runs and are not looked at; the Job's status is left alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;

mod job;
mod plan;

pub use job::{
    BuildJob, KANIKO_DOCKER_CONFIG, KANIKO_IMAGE, KanikoArgs, Mount, SECRETS_DIR, VolumeData,
    parse_job, parse_kaniko_args,
};
pub use plan::{BuildahPlan, plan_buildah, rewrite_registry};
// Shared with the sign Job executor (`crate::signjob`).
pub(crate) use plan::{resolve, rewrite_auths};

/// How the host reaches the registries a Job names.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// (registry as named in the Job, registry as reachable from the host).
    pub registry_aliases: Vec<(String, String)>,
}

impl BuildOptions {
    /// The lab: Jobs name the registry as the VM guest sees it
    /// ([`crate::vm_agent::guest_registry`]), the host pushes to
    /// [`crate::images::registry_addr`] (the same registry).
    pub fn lab() -> Self {
        Self {
            registry_aliases: vec![(
                crate::vm_agent::guest_registry(),
                crate::images::registry_addr(),
            )],
        }
    }
}

/// A buildah with its own storage under a temp dir (removed on drop).
#[derive(Debug)]
pub struct Buildah {
    dir: tempfile::TempDir,
    registries_conf: Option<PathBuf>,
}

impl Buildah {
    /// A fresh, empty image store.
    ///
    /// # Errors
    /// If the temp dir cannot be created.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("kmm-buildah-").tempdir()?;
        Ok(Self {
            dir,
            registries_conf: None,
        })
    }

    /// Uses `content` as registries.conf for the following commands.
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn set_registries_conf(&mut self, content: &str) -> Result<()> {
        let p = self.dir.path().join("registries.conf");
        std::fs::write(&p, content)?;
        self.registries_conf = Some(p);
        Ok(())
    }

    /// A scratch directory owned by this store.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Runs `buildah <global storage flags> <args>`; returns stdout.
    ///
    /// # Errors
    /// If buildah is missing or exits non-zero (the error has its output).
    pub async fn run(&self, args: &[String]) -> Result<String> {
        let root = self.dir.path();
        let mut cmd = tokio::process::Command::new("buildah");
        cmd.arg(format!("--root={}", root.join("root").display()))
            .arg(format!("--runroot={}", root.join("runroot").display()))
            .arg("--storage-driver=vfs")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(conf) = &self.registries_conf {
            cmd.env("CONTAINERS_REGISTRIES_CONF", conf);
        }
        let out = cmd
            .output()
            .await
            .context("running buildah (Debian package buildah; see hack/setup.sh)")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "buildah {} failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            );
        }
        Ok(stdout)
    }

    /// `buildah push <args> --digestfile F`; returns the pushed digest.
    ///
    /// # Errors
    /// Push failures.
    pub async fn push(&self, args: &[String]) -> Result<String> {
        let file = self.dir.path().join("digest");
        let mut args = args.to_vec();
        // Flags go before the two positional names.
        let at = args.len().saturating_sub(2);
        args.insert(at, format!("--digestfile={}", file.display()));
        self.run(&args).await?;
        let digest = std::fs::read_to_string(&file)?.trim().to_string();
        ensure!(
            digest.starts_with("sha256:"),
            "buildah wrote no digest: {digest:?}"
        );
        Ok(digest)
    }
}

/// [`run_build_job_with`] in the lab ([`BuildOptions::lab`]).
///
/// # Errors
/// See [`run_build_job_with`].
pub async fn run_build_job(client: &Client, job: &Job) -> Result<String> {
    run_build_job_with(client, job, &BuildOptions::lab()).await
}

fn write_files(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: &[(String, String)],
    what: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let files: Vec<(&str, &str)> = if items.is_empty() {
        data.keys().map(|k| (k.as_str(), k.as_str())).collect()
    } else {
        items
            .iter()
            .map(|(k, p)| (k.as_str(), p.as_str()))
            .collect()
    };
    for (key, rel) in files {
        ensure!(
            !rel.starts_with('/') && !rel.split('/').any(|c| c == ".."),
            "{what}: item path {rel:?} leaves the volume"
        );
        let body = data
            .get(key)
            .with_context(|| format!("{what} has no key {key:?}"))?;
        let dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&dest, body)?;
    }
    Ok(())
}

/// Fetches the volume's object and lays its files out under `dir`.
pub(crate) async fn materialize(
    client: &Client,
    ns: &str,
    data: &VolumeData,
    dir: &Path,
) -> Result<()> {
    match data {
        VolumeData::ConfigMap { name, items } => {
            let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .with_context(|| format!("getting ConfigMap {ns}/{name}"))?;
            let mut all: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            all.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            write_files(dir, &all, items, &format!("ConfigMap {ns}/{name}"))
        }
        VolumeData::Secret { name, items } => {
            let s = Api::<Secret>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .with_context(|| format!("getting Secret {ns}/{name}"))?;
            let all = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            write_files(dir, &all, items, &format!("Secret {ns}/{name}"))
        }
    }
}

/// Executes build Job `job`: fetches its ConfigMap and Secrets, builds the
/// Dockerfile with `buildah bud` and pushes the image to the Job's
/// `--destination` (through `opts.registry_aliases`). Returns the pushed
/// manifest digest.
///
/// # Errors
/// A Job the mapping does not understand, missing objects, or a failing
/// buildah (the error carries its output).
pub async fn run_build_job_with(client: &Client, job: &Job, opts: &BuildOptions) -> Result<String> {
    let parsed = parse_job(job)?;
    let mut buildah = Buildah::new()?;
    let vols = buildah.work_dir();
    let mut host_mounts = Vec::new();
    for (i, m) in parsed.mounts.iter().enumerate() {
        let dir = vols.join(format!("vol-{i}"));
        materialize(client, &parsed.namespace, &m.data, &dir).await?;
        let host = match &m.sub_path {
            Some(sub) => {
                ensure!(
                    !sub.split('/').any(|c| c == ".."),
                    "subPath {sub:?} leaves the volume"
                );
                dir.join(sub)
            }
            None => dir,
        };
        host_mounts.push((m.path.clone(), host));
    }
    let authfile = match resolve(&host_mounts, KANIKO_DOCKER_CONFIG) {
        Some(p) if p.is_file() => {
            let rewritten = rewrite_auths(&std::fs::read(&p)?, &opts.registry_aliases)?;
            let out = vols.join("auth.json");
            std::fs::write(&out, rewritten)?;
            Some(out)
        }
        Some(p) if host_mounts.iter().any(|(at, _)| at.starts_with("/kaniko/")) => {
            bail!(
                "registry credentials are mounted under /kaniko but {KANIKO_DOCKER_CONFIG} is not a file ({})",
                p.display()
            )
        }
        _ => None,
    };
    let tag = format!(
        "localhost/kmm-build/{}:latest",
        job.metadata.name.as_deref().unwrap_or("job")
    );
    let plan = plan_buildah(
        &parsed,
        &host_mounts,
        authfile.as_deref(),
        &opts.registry_aliases,
        &tag,
    )?;
    if let Some(conf) = &plan.registries_conf {
        buildah.set_registries_conf(conf)?;
    }
    buildah.run(&plan.bud).await?;
    buildah.push(&plan.push).await
}
