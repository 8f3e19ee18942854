//! The build Job as the executor reads it: one kaniko container, its flags,
//! and its ConfigMap and Secret mounts. Anything else is refused.

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;

use crate::jobexec::{items, single_container};

/// Image (without tag) of the only builder the controller's Jobs use.
pub const KANIKO_IMAGE: &str = "gcr.io/kaniko-project/executor";

/// Where kaniko reads registry credentials; a Job mounts the pull secret here.
pub const KANIKO_DOCKER_CONFIG: &str = "/kaniko/.docker/config.json";

/// Where build secrets are mounted, one directory per Secret.
pub const SECRETS_DIR: &str = "/run/secrets";

/// The kaniko executor flags of a build Job, as parsed from its container args.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KanikoArgs {
    /// `--dockerfile`: container path of the Dockerfile.
    pub dockerfile: String,
    /// `--context=dir://...`: container path of the build context.
    pub context: String,
    /// `--destination`: the image to push.
    pub destination: String,
    /// `--build-arg=NAME=VALUE`, in order.
    pub build_args: Vec<(String, String)>,
    /// `--insecure`: push over plain HTTP.
    pub insecure: bool,
    /// `--skip-tls-verify`: push without verifying the registry certificate.
    pub skip_tls_verify: bool,
    /// `--insecure-pull`: pull base images over plain HTTP.
    pub insecure_pull: bool,
    /// `--skip-tls-verify-pull`: pull base images without verifying certificates.
    pub skip_tls_verify_pull: bool,
}

/// Parses kaniko executor args; any flag outside what build Jobs use is an error.
///
/// # Errors
/// Unknown, repeated or malformed flags, or a missing required one.
pub fn parse_kaniko_args(args: &[String]) -> Result<KanikoArgs> {
    let mut out = KanikoArgs::default();
    let mut seen = std::collections::BTreeSet::new();
    for arg in args {
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (arg.as_str(), None),
        };
        if flag != "--build-arg" {
            ensure!(seen.insert(flag.to_string()), "kaniko flag {flag} repeated");
        }
        let flag_set = |slot: &mut bool| -> Result<()> {
            ensure!(value.is_none(), "kaniko flag {flag} takes no value: {arg}");
            *slot = true;
            Ok(())
        };
        let value_of = || -> Result<String> {
            match value {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => bail!("kaniko flag {flag} needs a value as {flag}=VALUE: {arg}"),
            }
        };
        match flag {
            "--dockerfile" => out.dockerfile = value_of()?,
            "--context" => {
                let v = value_of()?;
                out.context = v
                    .strip_prefix("dir://")
                    .with_context(|| format!("only dir:// build contexts are supported: {arg}"))?
                    .to_string();
            }
            "--destination" => out.destination = value_of()?,
            "--build-arg" => {
                // kaniko reads `--build-arg=NAME` (no value) from its environment;
                // build Jobs always pass the value.
                let (name, val) = value_of()?
                    .split_once('=')
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .with_context(|| format!("build arg without a value: {arg}"))?;
                ensure!(!name.is_empty(), "build arg without a name: {arg}");
                out.build_args.push((name, val));
            }
            "--insecure" => flag_set(&mut out.insecure)?,
            "--skip-tls-verify" => flag_set(&mut out.skip_tls_verify)?,
            "--insecure-pull" => flag_set(&mut out.insecure_pull)?,
            "--skip-tls-verify-pull" => flag_set(&mut out.skip_tls_verify_pull)?,
            _ => bail!("unsupported kaniko arg {arg:?}: refusing to build a Job it cannot honour"),
        }
    }
    ensure!(!out.dockerfile.is_empty(), "kaniko args lack --dockerfile");
    ensure!(!out.context.is_empty(), "kaniko args lack --context");
    ensure!(
        !out.destination.is_empty(),
        "kaniko args lack --destination"
    );
    Ok(out)
}

/// What a mounted volume holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeData {
    /// A ConfigMap; `items` (key, path) or, when empty, every key as a file.
    ConfigMap {
        /// ConfigMap name.
        name: String,
        /// Selected keys and their file paths.
        items: Vec<(String, String)>,
    },
    /// A Secret; same layout rules as a ConfigMap.
    Secret {
        /// Secret name.
        name: String,
        /// Selected keys and their file paths.
        items: Vec<(String, String)>,
    },
}

/// One volume mount of the builder container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `mountPath` in the container.
    pub path: String,
    /// `subPath` inside the volume, if any.
    pub sub_path: Option<String>,
    /// The volume's content.
    pub data: VolumeData,
}

/// A build Job as the executor understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildJob {
    /// Namespace of the Job (and of its ConfigMap and Secrets).
    pub namespace: String,
    /// The kaniko flags.
    pub args: KanikoArgs,
    /// The container's volume mounts.
    pub mounts: Vec<Mount>,
}

/// Reads a build Job: one kaniko container, its args and its ConfigMap/Secret mounts.
///
/// # Errors
/// Anything outside that shape (other images, commands, env, init containers,
/// other volume types, unknown flags).
pub fn parse_job(job: &Job) -> Result<BuildJob> {
    let job = single_container(job, "kaniko")?;
    let (name, c) = (job.name, job.container);
    let image = c.image.as_deref().unwrap_or_default();
    ensure!(
        image
            .strip_prefix(KANIKO_IMAGE)
            .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@')),
        "Job {name}: container image {image:?} is not {KANIKO_IMAGE}:<tag>"
    );
    ensure!(
        c.command.as_ref().is_none_or(Vec::is_empty),
        "Job {name}: a command overrides kaniko's entrypoint: {:?}",
        c.command
    );
    job.refuse_env_and_working_dir()?;
    let args = parse_kaniko_args(c.args.as_deref().unwrap_or_default())
        .with_context(|| format!("Job {name}"))?;
    let mut mounts = Vec::new();
    for (m, v) in job.mounts()? {
        let data = if let Some(cm) = &v.config_map {
            VolumeData::ConfigMap {
                name: cm.name.clone(),
                items: items(cm.items.as_ref()),
            }
        } else if let Some(s) = &v.secret {
            VolumeData::Secret {
                name: s
                    .secret_name
                    .clone()
                    .with_context(|| format!("Job {name}: secret volume {} has no name", v.name))?,
                items: items(s.items.as_ref()),
            }
        } else {
            bail!(
                "Job {name}: volume {} is neither a ConfigMap nor a Secret",
                v.name
            );
        };
        mounts.push(Mount {
            path: m.mount_path.clone(),
            sub_path: m.sub_path.clone().filter(|s| !s.is_empty()),
            data,
        });
    }
    Ok(BuildJob {
        namespace: job.namespace,
        args,
        mounts,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::jobexec::testing::{patched, refused_by_both, s};

    pub(crate) const BASE: &[&str] = &[
        "--dockerfile=/workspace/Dockerfile",
        "--context=dir:///workspace",
        "--destination=10.0.2.2:5000/ns/m:6.1.0-56-amd64",
    ];

    pub(crate) fn args(extra: &[&str]) -> Vec<String> {
        let mut v = s(BASE);
        v.extend(s(extra));
        v
    }

    #[test]
    fn parses_the_controllers_kaniko_args() {
        let a = parse_kaniko_args(&args(&[
            "--build-arg=FOO=a=b",
            "--build-arg=KERNEL_FULL_VERSION=6.1.0-56-amd64",
            "--insecure",
            "--insecure-pull",
        ]))
        .unwrap();
        assert_eq!(a.dockerfile, "/workspace/Dockerfile");
        assert_eq!(a.context, "/workspace");
        assert_eq!(a.destination, "10.0.2.2:5000/ns/m:6.1.0-56-amd64");
        assert_eq!(
            a.build_args,
            vec![
                ("FOO".into(), "a=b".into()),
                ("KERNEL_FULL_VERSION".into(), "6.1.0-56-amd64".into())
            ]
        );
        assert!(a.insecure && a.insecure_pull && !a.skip_tls_verify && !a.skip_tls_verify_pull);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        for (bad, why) in [
            (args(&["--cache=true"]), "unsupported kaniko arg"),
            (args(&["--insecure=true"]), "takes no value"),
            (args(&["--build-arg=FROM_ENV"]), "without a value"),
            (args(&["--destination=x/y:z"]), "repeated"),
            (s(&BASE[1..]), "lack --dockerfile"),
            (
                s(&[
                    "--dockerfile=/w/D",
                    "--context=git://github.com/x",
                    "--destination=r/i",
                ]),
                "only dir://",
            ),
        ] {
            let err = format!("{:#}", parse_kaniko_args(&bad).unwrap_err());
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    /// The controller's shape, pod-level scheduling fields included (they say
    /// where to run, not what to build).
    fn controller_job() -> serde_json::Value {
        serde_json::json!({
            "metadata": { "name": "m-build-0123", "namespace": "ns" },
            "spec": { "backoffLimit": 2, "template": { "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "nodeSelector": { "builder": "yes" },
                "containers": [{
                    "name": "kaniko",
                    "image": "gcr.io/kaniko-project/executor:v1.23.2",
                    "args": args(&[]),
                    "volumeMounts": [
                        { "name": "dockerfile", "mountPath": "/workspace", "readOnly": true },
                        { "name": "secret-0", "mountPath": "/run/secrets/tok", "readOnly": true },
                        { "name": "registry-auth", "mountPath": "/kaniko/.docker", "readOnly": true },
                    ],
                }],
                "volumes": [
                    { "name": "dockerfile", "configMap": { "name": "df",
                        "items": [{ "key": "dockerfile", "path": "Dockerfile" }] } },
                    { "name": "secret-0", "secret": { "secretName": "tok" } },
                    { "name": "registry-auth", "secret": { "secretName": "pull",
                        "items": [{ "key": ".dockerconfigjson", "path": "config.json" }] } },
                ],
            } } },
        })
    }

    #[test]
    fn reads_the_controllers_job() {
        let job: Job = serde_json::from_value(controller_job()).unwrap();
        let b = parse_job(&job).unwrap();
        assert_eq!(b.namespace, "ns");
        assert_eq!(b.args, parse_kaniko_args(&args(&[])).unwrap());
        assert_eq!(
            b.mounts,
            vec![
                Mount {
                    path: "/workspace".into(),
                    sub_path: None,
                    data: VolumeData::ConfigMap {
                        name: "df".into(),
                        items: vec![("dockerfile".into(), "Dockerfile".into())]
                    }
                },
                Mount {
                    path: "/run/secrets/tok".into(),
                    sub_path: None,
                    data: VolumeData::Secret {
                        name: "tok".into(),
                        items: vec![]
                    }
                },
                Mount {
                    path: "/kaniko/.docker".into(),
                    sub_path: None,
                    data: VolumeData::Secret {
                        name: "pull".into(),
                        items: vec![(".dockerconfigjson".into(), "config.json".into())]
                    }
                },
            ]
        );
    }

    #[test]
    fn refuses_jobs_of_another_shape() {
        let cases: [(&str, serde_json::Value, &str); 4] = [
            (
                "/spec/template/spec/containers/0/image",
                "busybox:1".into(),
                "is not gcr.io/kaniko-project/executor",
            ),
            (
                "/spec/template/spec/containers/0/command",
                serde_json::json!(["sh"]),
                "command",
            ),
            (
                "/spec/template/spec/volumes/1",
                serde_json::json!({ "name": "secret-0", "hostPath": { "path": "/" } }),
                "neither a ConfigMap nor a Secret",
            ),
            (
                "/spec/template/spec/containers/1",
                serde_json::json!({ "name": "x", "image": "y" }),
                "expected one kaniko container",
            ),
        ];
        for (path, value, why) in cases.into_iter().chain(refused_by_both()) {
            let job = patched(controller_job(), path, value);
            let err = format!("{:#}", parse_job(&job).unwrap_err());
            assert!(err.contains(why), "{path}: {err}");
        }
    }
}
