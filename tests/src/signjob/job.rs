//! The sign Job as the executor reads it (one `signer` container running
//! `kmmctl sign`, Secret mounts) and the pure rewrites that point it at the
//! host. Anything else is refused.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;

use crate::buildah::{VolumeData, resolve, rewrite_registry};
use crate::jobexec::{items, single_container};

/// Name of the sign Job's container.
pub const SIGNER_CONTAINER: &str = "signer";
/// The only command a sign Job runs.
pub const SIGNER_COMMAND: &str = "kmmctl";
/// Flags whose value is a file in the container (rewritten to the host).
pub(super) const FILE_FLAGS: [&str; 3] = ["--key", "--cert", "--docker-config"];
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
    let job = single_container(job, SIGNER_CONTAINER)?;
    let (name, c) = (job.name, job.container);
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
    job.refuse_env_and_working_dir()?;
    let args = c.args.as_deref().unwrap_or_default();
    let Some((_, rest)) = args.split_first().filter(|(s, _)| *s == "sign") else {
        bail!("Job {name}: args {args:?} are not `sign ...`");
    };
    let args = parse_sign_args(rest).with_context(|| format!("Job {name}"))?;
    for v in job.volumes {
        ensure!(
            v.secret.is_some(),
            "Job {name}: volume {} is not a Secret",
            v.name
        );
    }
    let mut mounts = Vec::new();
    for (m, v) in job.mounts()? {
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
        let secret = s
            .secret_name
            .clone()
            .with_context(|| format!("Job {name}: secret volume {} has no name", v.name))?;
        mounts.push((
            m.mount_path.clone(),
            VolumeData::Secret {
                name: secret,
                items: items(s.items.as_ref()),
            },
        ));
    }
    Ok(SignJob {
        namespace: job.namespace,
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

/// Paths in `args` that are files in the container, for assertions.
pub fn file_args(args: &[SignArg]) -> Vec<(&str, &Path)> {
    args.iter()
        .filter(|(f, _)| FILE_FLAGS.contains(&f.as_str()))
        .filter_map(|(f, v)| Some((f.as_str(), Path::new(v.as_deref()?))))
        .collect()
}
