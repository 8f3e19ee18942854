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

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::buildah::{
    BuildOptions, VolumeData, materialize, resolve, rewrite_auths, rewrite_registry,
};
use crate::cluster::wait_for;
use crate::vm::artifacts::cargo_artifact;

/// Name of the sign Job's container.
pub const SIGNER_CONTAINER: &str = "signer";
/// The only command a sign Job runs.
pub const SIGNER_COMMAND: &str = "kmmctl";
/// Flags whose value is a file in the container (rewritten to the host).
const FILE_FLAGS: [&str; 3] = ["--key", "--cert", "--docker-config"];
/// Flags whose value is an image reference (rewritten through the aliases).
const IMAGE_FLAGS: [&str; 2] = ["--from", "--to"];
/// Other flags with a value; only `--file` may repeat.
const VALUE_FLAGS: [&str; 2] = ["--file", "--hash"];
/// Flags without a value.
const SWITCHES: [&str; 4] = [
    "--from-insecure",
    "--from-insecure-skip-tls-verify",
    "--to-insecure",
    "--to-insecure-skip-tls-verify",
];

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

/// One `kmmctl sign` argument: a flag and its value (`None` for switches).
pub type SignArg = (String, Option<String>);

/// A sign Job as the executor understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignJob {
    /// Namespace of the Job (and of its Secrets).
    pub namespace: String,
    /// The container image (replaced by the local `kmmctl`).
    pub image: String,
    /// The `kmmctl sign` flags, in order, without the `sign` subcommand.
    pub args: Vec<SignArg>,
    /// Each mount's path and the Secret behind it.
    pub mounts: Vec<(String, VolumeData)>,
}

/// Parses `kmmctl sign` arguments (after `sign`), in `--flag=value` or
/// `--flag value` form.
///
/// # Errors
/// Unknown or repeated flags, a missing value, a switch with a value, or
/// one of `--from`, `--to`, `--key`, `--cert`, `--file` missing.
pub fn parse_sign_args(args: &[String]) -> Result<Vec<SignArg>> {
    let mut out: Vec<SignArg> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let takes_value = FILE_FLAGS
            .iter()
            .chain(&IMAGE_FLAGS)
            .chain(&VALUE_FLAGS)
            .any(|f| *f == flag);
        let value = if takes_value {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .with_context(|| format!("kmmctl sign flag {flag} needs a value"))?
                    .clone(),
            };
            ensure!(!v.is_empty(), "kmmctl sign flag {flag} has an empty value");
            Some(v)
        } else if SWITCHES.contains(&flag) {
            ensure!(
                inline.is_none(),
                "kmmctl sign flag {flag} takes no value: {arg}"
            );
            None
        } else {
            bail!("unsupported kmmctl sign arg {arg:?}: refusing to run a Job it cannot honour");
        };
        ensure!(
            flag == "--file" || !out.iter().any(|(f, _)| f == flag),
            "kmmctl sign flag {flag} repeated"
        );
        out.push((flag.to_string(), value));
    }
    for required in ["--from", "--to", "--key", "--cert", "--file"] {
        ensure!(
            out.iter().any(|(f, _)| f == required),
            "kmmctl sign args lack {required}"
        );
    }
    Ok(out)
}

/// Reads a sign Job: one `signer` container running `kmmctl sign`, its
/// Secret mounts.
///
/// # Errors
/// Anything outside that shape.
pub fn parse_sign_job(job: &Job) -> Result<SignJob> {
    let name = job.metadata.name.as_deref().unwrap_or("<unnamed>");
    let namespace = job
        .metadata
        .namespace
        .clone()
        .with_context(|| format!("Job {name} has no namespace"))?;
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .with_context(|| format!("Job {name} has no pod template"))?;
    ensure!(
        pod.init_containers.as_ref().is_none_or(Vec::is_empty),
        "Job {name}: init containers are not supported"
    );
    let [c] = pod.containers.as_slice() else {
        bail!(
            "Job {name}: expected one {SIGNER_CONTAINER} container, found {}",
            pod.containers.len()
        );
    };
    ensure!(
        c.name == SIGNER_CONTAINER,
        "Job {name}: container {:?} is not {SIGNER_CONTAINER:?}",
        c.name
    );
    ensure!(
        c.command.as_deref() == Some(&[SIGNER_COMMAND.to_string()][..]),
        "Job {name}: command {:?} is not [{SIGNER_COMMAND:?}]",
        c.command
    );
    ensure!(
        c.env.as_ref().is_none_or(Vec::is_empty) && c.env_from.as_ref().is_none_or(Vec::is_empty),
        "Job {name}: container env is not supported"
    );
    ensure!(
        c.working_dir.is_none(),
        "Job {name}: workingDir is not supported"
    );
    let args = c.args.as_deref().unwrap_or_default();
    let Some((_, rest)) = args.split_first().filter(|(s, _)| *s == "sign") else {
        bail!("Job {name}: args {args:?} are not `sign ...`");
    };
    let args = parse_sign_args(rest).with_context(|| format!("Job {name}"))?;
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    for v in volumes {
        ensure!(
            v.secret.is_some(),
            "Job {name}: volume {} is not a Secret",
            v.name
        );
    }
    let mut mounts = Vec::new();
    for m in c.volume_mounts.as_deref().unwrap_or_default() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .with_context(|| format!("Job {name}: mount of unknown volume {}", m.name))?;
        ensure!(
            m.sub_path.as_deref().is_none_or(str::is_empty)
                && m.sub_path_expr.as_deref().is_none_or(str::is_empty),
            "Job {name}: subPath mounts are not supported ({})",
            m.mount_path
        );
        let s = v
            .secret
            .as_ref()
            .with_context(|| format!("volume {}", v.name))?;
        ensure!(
            s.optional != Some(true),
            "Job {name}: optional secret volume {} is not supported",
            v.name
        );
        let items = s
            .items
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect();
        let secret = s
            .secret_name
            .clone()
            .with_context(|| format!("Job {name}: secret volume {} has no name", v.name))?;
        mounts.push((
            m.mount_path.clone(),
            VolumeData::Secret {
                name: secret,
                items,
            },
        ));
    }
    Ok(SignJob {
        namespace,
        image: c.image.clone().unwrap_or_default(),
        args,
        mounts,
    })
}

/// Points the file arguments (`--key`, `--cert`, `--docker-config`) at the
/// host: `host_mounts` maps each mount path to the directory holding its
/// content. Other values are left alone (`--file` names paths in the image,
/// not in the container).
///
/// # Errors
/// A file argument on no mount (it would be a file of the signer image, which
/// is not here), or a mount no file argument uses.
pub fn rewrite_mount_paths(
    args: &[SignArg],
    host_mounts: &[(String, PathBuf)],
) -> Result<Vec<SignArg>> {
    let files: Vec<&str> = args
        .iter()
        .filter(|(f, _)| FILE_FLAGS.contains(&f.as_str()))
        .filter_map(|(_, v)| v.as_deref())
        .collect();
    for (at, _) in host_mounts {
        ensure!(
            files
                .iter()
                .any(|f| resolve(&[(at.clone(), PathBuf::new())], f).is_some()),
            "volume mounted at {at} has no meaning in a sign Job"
        );
    }
    args.iter()
        .map(|(flag, value)| {
            let value = match value {
                Some(v) if FILE_FLAGS.contains(&flag.as_str()) => {
                    ensure!(v.starts_with('/'), "{flag}={v} is not an absolute path");
                    let host = resolve(host_mounts, v)
                        .with_context(|| format!("{flag}={v} is not on a mounted volume"))?;
                    Some(host.display().to_string())
                }
                other => other.clone(),
            };
            Ok((flag.clone(), value))
        })
        .collect()
}

/// Rewrites the registry of `--from` and `--to` through `aliases`.
pub fn rewrite_image_args(args: &[SignArg], aliases: &[(String, String)]) -> Vec<SignArg> {
    args.iter()
        .map(|(flag, value)| match value {
            Some(v) if IMAGE_FLAGS.contains(&flag.as_str()) => {
                (flag.clone(), Some(rewrite_registry(v, aliases)))
            }
            _ => (flag.clone(), value.clone()),
        })
        .collect()
}

/// The command line for `kmmctl` (`sign --flag=value ...`).
pub fn command_line(args: &[SignArg]) -> Vec<String> {
    std::iter::once("sign".to_string())
        .chain(args.iter().map(|(f, v)| match v {
            Some(v) => format!("{f}={v}"),
            None => f.clone(),
        }))
        .collect()
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

/// Paths in `args` that are files in the container, for assertions.
pub fn file_args(args: &[SignArg]) -> Vec<(&str, &Path)> {
    args.iter()
        .filter(|(f, _)| FILE_FLAGS.contains(&f.as_str()))
        .filter_map(|(f, v)| Some((f.as_str(), Path::new(v.as_deref()?))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    const ARGS: &[&str] = &[
        "--from=10.0.2.2:5000/ns/brd:6.1.0-56-amd64-ns_brd_kmm_unsigned",
        "--to=10.0.2.2:5000/ns/brd:6.1.0-56-amd64",
        "--key=/run/secrets/kmm-signing-key/key",
        "--cert=/run/secrets/kmm-signing-cert/cert",
        "--file=/opt/lib/modules/6.1.0-56-amd64/kernel/drivers/block/brd.ko",
        "--file=/opt/lib/modules/*/extra/*.ko",
        "--from-insecure",
        "--to-insecure",
        "--docker-config=/run/secrets/kmm-registry-auth/.dockerconfigjson",
    ];

    fn arg(f: &str, v: Option<&str>) -> SignArg {
        (f.to_string(), v.map(str::to_string))
    }

    /// The controller's shape (controller/src/build/job.rs `sign_pod`).
    fn controller_job() -> serde_json::Value {
        let mut args = s(&["sign"]);
        args.extend(s(ARGS));
        serde_json::json!({
            "metadata": { "name": "brd-sign-0123", "namespace": "ns" },
            "spec": { "backoffLimit": 2, "template": { "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "signer",
                    "image": "kmm-rs:latest",
                    "command": ["kmmctl"],
                    "args": args,
                    "volumeMounts": [
                        { "name": "signing-key", "mountPath": "/run/secrets/kmm-signing-key", "readOnly": true },
                        { "name": "signing-cert", "mountPath": "/run/secrets/kmm-signing-cert", "readOnly": true },
                        { "name": "registry-auth", "mountPath": "/run/secrets/kmm-registry-auth", "readOnly": true },
                    ],
                }],
                "volumes": [
                    { "name": "signing-key", "secret": { "secretName": "k",
                        "items": [{ "key": "key", "path": "key" }] } },
                    { "name": "signing-cert", "secret": { "secretName": "c",
                        "items": [{ "key": "cert", "path": "cert" }] } },
                    { "name": "registry-auth", "secret": { "secretName": "pull",
                        "items": [{ "key": ".dockerconfigjson", "path": ".dockerconfigjson" }] } },
                ],
            } } },
        })
    }

    #[test]
    fn reads_the_controllers_sign_job() {
        let job: Job = serde_json::from_value(controller_job()).unwrap();
        let j = parse_sign_job(&job).unwrap();
        assert_eq!(j.namespace, "ns");
        assert_eq!(j.image, "kmm-rs:latest");
        assert_eq!(j.args.len(), ARGS.len());
        assert_eq!(j.args[4], arg("--file", Some(&ARGS[4][7..])));
        assert_eq!(j.args[6], arg("--from-insecure", None));
        let secret = |name: &str, key: &str| VolumeData::Secret {
            name: name.into(),
            items: vec![(key.into(), key.into())],
        };
        assert_eq!(
            j.mounts,
            vec![
                ("/run/secrets/kmm-signing-key".into(), secret("k", "key")),
                ("/run/secrets/kmm-signing-cert".into(), secret("c", "cert")),
                (
                    "/run/secrets/kmm-registry-auth".into(),
                    secret("pull", ".dockerconfigjson")
                ),
            ]
        );
    }

    #[test]
    fn parses_both_flag_forms_and_refuses_what_kmmctl_sign_would_not_get() {
        let split = parse_sign_args(&s(&[
            "--from", "a/b:1", "--to", "a/c:1", "--key", "/k", "--cert", "/c", "--file", "/f",
            "--hash", "sha512",
        ]))
        .unwrap();
        assert_eq!(split[0], arg("--from", Some("a/b:1")));
        assert_eq!(split[5], arg("--hash", Some("sha512")));
        let base = &ARGS[..5];
        for (extra, why) in [
            (&["--force"][..], "unsupported kmmctl sign arg"),
            (&["--to-insecure=true"], "takes no value"),
            (&["--key=/other"], "repeated"),
            (&["--hash"], "needs a value"),
            (&["--hash="], "empty value"),
            (&["sign"], "unsupported"),
        ] {
            let mut v = s(base);
            v.extend(s(extra));
            let err = format!("{:#}", parse_sign_args(&v).unwrap_err());
            assert!(err.contains(why), "{extra:?}: {err}");
        }
        let err = parse_sign_args(&s(&ARGS[..4])).unwrap_err();
        assert!(err.to_string().contains("lack --file"), "{err}");
    }

    #[test]
    fn refuses_jobs_of_another_shape() {
        let cases: [(&str, serde_json::Value, &str); 9] = [
            (
                "/spec/template/spec/containers/0/command",
                serde_json::json!(["sh", "-c"]),
                "is not [\"kmmctl\"]",
            ),
            (
                "/spec/template/spec/containers/0/command",
                serde_json::Value::Null,
                "is not [\"kmmctl\"]",
            ),
            (
                "/spec/template/spec/containers/0/name",
                "kaniko".into(),
                "is not \"signer\"",
            ),
            (
                "/spec/template/spec/containers/0/env",
                serde_json::json!([{ "name": "A", "value": "b" }]),
                "env",
            ),
            (
                "/spec/template/spec/initContainers",
                serde_json::json!([{ "name": "i", "image": "x" }]),
                "init containers",
            ),
            (
                "/spec/template/spec/volumes/1",
                serde_json::json!({ "name": "signing-cert", "configMap": { "name": "c" } }),
                "is not a Secret",
            ),
            (
                "/spec/template/spec/containers/0/volumeMounts/3",
                serde_json::json!({ "name": "nope", "mountPath": "/x" }),
                "unknown volume nope",
            ),
            (
                "/spec/template/spec/containers/0/volumeMounts/0/subPath",
                "key".into(),
                "subPath",
            ),
            (
                "/spec/template/spec/containers/0/args/0",
                "sign-file".into(),
                "are not `sign ...`",
            ),
        ];
        for (path, value, why) in cases {
            let mut v = controller_job();
            if let Some(slot) = v.pointer_mut(path) {
                *slot = value;
            } else {
                let (parent, key) = path.rsplit_once('/').unwrap();
                match v.pointer_mut(parent).unwrap() {
                    serde_json::Value::Array(a) => a.push(value),
                    serde_json::Value::Object(o) => {
                        o.insert(key.to_string(), value);
                    }
                    other => panic!("{path}: {other}"),
                }
            }
            let job: Job = serde_json::from_value(v).unwrap();
            let err = format!("{:#}", parse_sign_job(&job).unwrap_err());
            assert!(err.contains(why), "{path}: {err}");
        }
    }

    fn host(v: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
        v.iter()
            .map(|(a, h)| ((*a).to_string(), PathBuf::from(h)))
            .collect()
    }

    #[test]
    fn rewrites_file_args_onto_the_mounts_and_leaves_image_paths_alone() {
        let args = parse_sign_args(&s(ARGS)).unwrap();
        let mounts = host(&[
            ("/run/secrets/kmm-signing-key", "/t/vol-0"),
            ("/run/secrets/kmm-signing-cert", "/t/vol-1"),
            ("/run/secrets/kmm-registry-auth/", "/t/vol-2"),
        ]);
        let out = rewrite_mount_paths(&args, &mounts).unwrap();
        assert_eq!(
            file_args(&out),
            vec![
                ("--key", Path::new("/t/vol-0/key")),
                ("--cert", Path::new("/t/vol-1/cert")),
                ("--docker-config", Path::new("/t/vol-2/.dockerconfigjson")),
            ]
        );
        // Everything else is untouched, order kept.
        for (a, b) in args.iter().zip(&out) {
            if !FILE_FLAGS.contains(&a.0.as_str()) {
                assert_eq!(a, b);
            }
        }
        // `--file` values are image paths even under a mounted directory.
        let mut with_opt = args.clone();
        with_opt.push(arg("--file", Some("/run/secrets/kmm-signing-key/x.ko")));
        let out = rewrite_mount_paths(&with_opt, &mounts).unwrap();
        assert_eq!(out.last(), with_opt.last());
    }

    #[test]
    fn refuses_file_args_off_the_mounts_and_mounts_without_use() {
        let args = parse_sign_args(&s(ARGS)).unwrap();
        let two = host(&[
            ("/run/secrets/kmm-signing-key", "/t/0"),
            ("/run/secrets/kmm-registry-auth", "/t/2"),
        ]);
        let err = rewrite_mount_paths(&args, &two).unwrap_err();
        assert!(
            err.to_string()
                .contains("--cert=/run/secrets/kmm-signing-cert/cert is not on a mounted volume"),
            "{err}"
        );
        // A prefix that is not a path component boundary is not a mount.
        let near = host(&[
            ("/run/secrets/kmm-signing", "/t/0"),
            ("/run/secrets/kmm-signing-cert", "/t/1"),
            ("/run/secrets/kmm-registry-auth", "/t/2"),
        ]);
        let err = rewrite_mount_paths(&args, &near).unwrap_err();
        assert!(
            err.to_string()
                .contains("mounted at /run/secrets/kmm-signing has no meaning"),
            "{err}"
        );
        let mut relative = args.clone();
        relative[2] = arg("--key", Some("key.pem"));
        let err = rewrite_mount_paths(&relative, &host(&[])).unwrap_err();
        assert!(err.to_string().contains("not an absolute path"), "{err}");
    }

    #[test]
    fn rewrites_only_image_registries_and_renders_the_command_line() {
        let aliases = vec![("10.0.2.2:5000".to_string(), "127.0.0.1:5000".to_string())];
        let args = parse_sign_args(&s(ARGS)).unwrap();
        let line = command_line(&rewrite_image_args(&args, &aliases));
        assert_eq!(line[0], "sign");
        assert_eq!(
            line[1],
            "--from=127.0.0.1:5000/ns/brd:6.1.0-56-amd64-ns_brd_kmm_unsigned"
        );
        assert_eq!(line[2], "--to=127.0.0.1:5000/ns/brd:6.1.0-56-amd64");
        assert_eq!(&line[3..], &ARGS[2..]);
    }
}
