//! Executes the controller's sign Job for real: the Job's `signer` container
//! (`kmmctl sign ...` with the signing key, certificate and registry
//! credentials mounted from Secrets) is run with the locally built `kmmctl`
//! against the local registry, as the kubelet would run it in a cluster.
//!
//! Each Secret volume is laid out in a temp dir (honouring its `items`), and
//! the arguments naming files in the container (`--key`, `--cert`,
//! `--docker-config`) are pointed there; image references go through the same
//! registry aliases as the build executor ([`crate::buildah`]). A Job of any
//! other shape (another command, env, init containers, a volume that is not a
//! Secret, a mount no argument uses, an unknown flag) is refused rather than
//! half-executed. The Job's status is not touched: [`complete_job_pod`] plays
//! the kubelet's report separately.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::buildah::{BuildOptions, materialize, rewrite_auths};
use crate::cluster::wait_for;
use crate::vm::artifacts::cargo_artifact;

mod job;
#[cfg(test)]
mod tests;

pub use job::{
    SIGNER_COMMAND, SIGNER_CONTAINER, SignArg, SignJob, command_line, file_args, parse_sign_args,
    parse_sign_job, rewrite_image_args, rewrite_mount_paths,
};

/// Builds `kmmctl` once per process and returns its path.
///
/// # Errors
/// If cargo fails.
pub fn kmmctl_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = BUILT.get() {
        return Ok(p.clone());
    }
    let p = cargo_artifact("kmmctl", &["-p", "kmmctl", "--bin", "kmmctl"])?;
    Ok(BUILT.get_or_init(|| p).clone())
}

/// [`run_sign_job_with`] in the lab ([`BuildOptions::lab`]).
///
/// # Errors
/// See [`run_sign_job_with`].
pub async fn run_sign_job(client: &Client, job: &Job) -> Result<String> {
    run_sign_job_with(client, job, &BuildOptions::lab()).await
}

/// Executes sign Job `job` with the local `kmmctl`: fetches its Secrets,
/// signs, pushes to the Job's `--to` (through `opts.registry_aliases`) and
/// returns the digest `kmmctl` printed last.
///
/// # Errors
/// A Job of an unknown shape, missing Secrets, or a failing `kmmctl` (the
/// error carries its stderr).
pub async fn run_sign_job_with(client: &Client, job: &Job, opts: &BuildOptions) -> Result<String> {
    let parsed = parse_sign_job(job)?;
    let dir = tempfile::Builder::new().prefix("kmm-signjob-").tempdir()?;
    let mut host_mounts = Vec::new();
    for (i, (at, data)) in parsed.mounts.iter().enumerate() {
        let host = dir.path().join(format!("vol-{i}"));
        materialize(client, &parsed.namespace, data, &host).await?;
        host_mounts.push((at.clone(), host));
    }
    let mut args = rewrite_mount_paths(&parsed.args, &host_mounts)?;
    for (flag, value) in &mut args {
        if flag == "--docker-config"
            && let Some(path) = value.as_mut()
        {
            let original = std::fs::read(&*path).with_context(|| format!("reading {path}"))?;
            let out = dir.path().join("docker-config.json");
            std::fs::write(&out, rewrite_auths(&original, &opts.registry_aliases)?)?;
            *path = out.display().to_string();
        }
    }
    let args = command_line(&rewrite_image_args(&args, &opts.registry_aliases));
    run_kmmctl(&args).await
}

async fn run_kmmctl(args: &[String]) -> Result<String> {
    let bin = tokio::task::spawn_blocking(kmmctl_binary).await??;
    let out = tokio::process::Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "kmmctl {} failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
            args.join(" "),
            out.status,
            stderr.trim(),
            stdout.trim()
        );
    }
    let digest = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    ensure!(
        digest.starts_with("sha256:"),
        "kmmctl sign printed no digest:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    Ok(digest.to_string())
}

/// Plays the kubelet's report for a Job whose container was executed here:
/// waits for the Job controller's Pod, marks it `Succeeded` (container exited
/// 0), and waits until the Job controller calls the Job `Complete`.
///
/// # Errors
/// No Pod or no completion within `timeout`, or API errors.
pub async fn complete_job_pod(client: &Client, job: &Job, timeout: Duration) -> Result<()> {
    let name = job.metadata.name.as_deref().context("Job has no name")?;
    let ns = job
        .metadata
        .namespace
        .as_deref()
        .context("Job has no namespace")?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let by_job = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}"));
    wait_for(timeout, || async {
        Ok(!pods.list(&by_job).await?.items.is_empty())
    })
    .await
    .with_context(|| format!("no Pod for Job {ns}/{name}"))?;
    for pod in pods.list(&by_job).await?.items {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let statuses: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "image": c.image, "imageID": "",
                    "ready": false, "restartCount": 0, "started": false,
                    "state": { "terminated": { "exitCode": 0, "reason": "Completed" } },
                })
            })
            .collect();
        let patch = serde_json::json!({ "status": {
            "phase": "Succeeded",
            "containerStatuses": statuses,
        }});
        pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("marking Pod {ns}/{pod_name} Succeeded"))?;
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    wait_for(timeout, || async {
        Ok(jobs.get(name).await?.status.is_some_and(|s| {
            s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        }))
    })
    .await
    .with_context(|| format!("Job {ns}/{name} not Complete after its Pod succeeded"))
}
