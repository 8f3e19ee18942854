//! Executes the controller's build Job for real: the Job's kaniko recipe
//! (args, ConfigMap and Secret volumes) is read back from the object, mapped to
//! Debian's `buildah bud` + `buildah push`, and run on the host against the
//! local registry, as the Job's builder would in a cluster.
//!
//! buildah runs as root with its own `--root`/`--runroot` under a temp dir,
//! the vfs driver (no overlay mounts left behind) and chroot isolation, so
//! `RUN` steps work without an OCI runtime (none is installed here). A Job
//! the mapping does not fully understand (an unknown kaniko flag, container
//! field or volume) is refused rather than half-executed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret};
use kube::Client;
use kube::api::Api;

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

fn items(items: Option<&Vec<KeyToPath>>) -> Vec<(String, String)> {
    items
        .map(|v| v.iter().map(|i| (i.key.clone(), i.path.clone())).collect())
        .unwrap_or_default()
}

/// Reads a build Job: one kaniko container, its args and its ConfigMap/Secret mounts.
///
/// # Errors
/// Anything outside that shape (other images, commands, env, init containers,
/// other volume types, unknown flags).
pub fn parse_job(job: &Job) -> Result<BuildJob> {
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
            "Job {name}: expected one kaniko container, found {}",
            pod.containers.len()
        );
    };
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
    ensure!(
        c.env.as_ref().is_none_or(Vec::is_empty) && c.env_from.as_ref().is_none_or(Vec::is_empty),
        "Job {name}: container env is not supported by the buildah mapping"
    );
    ensure!(
        c.working_dir.is_none(),
        "Job {name}: workingDir is not supported"
    );
    let args = parse_kaniko_args(c.args.as_deref().unwrap_or_default())
        .with_context(|| format!("Job {name}"))?;
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mut mounts = Vec::new();
    for m in c.volume_mounts.as_deref().unwrap_or_default() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .with_context(|| format!("Job {name}: mount of unknown volume {}", m.name))?;
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
        namespace,
        args,
        mounts,
    })
}

/// `path` relative to `base` when it is `base` or below it (component-wise).
fn under<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    let base = base.trim_end_matches('/');
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

/// Host location of container path `path`: the deepest mount holding it.
fn resolve(mounts: &[(String, PathBuf)], path: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|(at, host)| Some((at.len(), host, under(path, at)?)))
        .max_by_key(|(len, ..)| *len)
        .map(|(_, host, rest)| {
            if rest.is_empty() {
                host.clone()
            } else {
                host.join(rest)
            }
        })
}

/// Rewrites the registry host of `reference` through `aliases` (as named in the
/// Job, as reachable from here).
pub fn rewrite_registry(reference: &str, aliases: &[(String, String)]) -> String {
    for (from, to) in aliases {
        if let Some(rest) = reference.strip_prefix(from.as_str())
            && rest.starts_with('/')
        {
            return format!("{to}{rest}");
        }
    }
    reference.to_string()
}

/// The buildah invocations for a build Job (without the global storage flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildahPlan {
    /// `buildah bud ...` args.
    pub bud: Vec<String>,
    /// `buildah push ...` args, minus `--digestfile`.
    pub push: Vec<String>,
    /// registries.conf content that maps aliased registries for pulls, if any.
    pub registries_conf: Option<String>,
}

/// Maps a parsed Job to buildah commands. `host_mounts`: each mount's container
/// path and where its content is on the host; `authfile`: the registry
/// credentials file, already rewritten for `aliases`; `tag`: the local name
/// of the built image.
///
/// # Errors
/// A Dockerfile or context outside every mount, or a mount the mapping has no use for.
pub fn plan_buildah(
    job: &BuildJob,
    host_mounts: &[(String, PathBuf)],
    authfile: Option<&Path>,
    aliases: &[(String, String)],
    tag: &str,
) -> Result<BuildahPlan> {
    let a = &job.args;
    let context = resolve(host_mounts, &a.context)
        .with_context(|| format!("build context {} is not on a mounted volume", a.context))?;
    let dockerfile_path = if a.dockerfile.starts_with('/') {
        a.dockerfile.clone()
    } else {
        format!("{}/{}", a.context.trim_end_matches('/'), a.dockerfile)
    };
    let dockerfile = resolve(host_mounts, &dockerfile_path)
        .with_context(|| format!("Dockerfile {dockerfile_path} is not on a mounted volume"))?;
    let s = |v: &str| v.to_string();
    let path = |p: &Path| p.display().to_string();
    let mut bud = vec![
        s("bud"),
        // RUN steps without an OCI runtime, as buildah does in unprivileged pods.
        s("--isolation=chroot"),
        // kaniko pushes Docker v2 schema 2 images.
        s("--format=docker"),
        s("--pull-always"),
        s("-f"),
        path(&dockerfile),
        s("-t"),
        s(tag),
    ];
    if a.insecure_pull || a.skip_tls_verify_pull {
        bud.push(s("--tls-verify=false"));
    }
    if let Some(auth) = authfile {
        bud.push(format!("--authfile={}", path(auth)));
    }
    for (k, v) in &a.build_args {
        bud.push(format!("--build-arg={k}={v}"));
    }
    for (at, host) in host_mounts {
        let is_context = under(&a.context, at).is_some() || under(&dockerfile_path, at).is_some();
        let is_auth =
            under(KANIKO_DOCKER_CONFIG, at).is_some() || under(at, "/kaniko/.docker").is_some();
        if let Some(name) = under(at, SECRETS_DIR).filter(|n| !n.is_empty() && !n.contains('/')) {
            // kaniko exposes its mounts to RUN steps; buildah needs them as volumes.
            bud.push(format!("--volume={}:{SECRETS_DIR}/{name}:ro", path(host)));
        } else if !is_context && !is_auth {
            bail!("volume mounted at {at} has no meaning in a build Job");
        }
    }
    bud.push(path(&context));

    let mut push = vec![s("push"), s("--format=v2s2")];
    if a.insecure || a.skip_tls_verify {
        push.push(s("--tls-verify=false"));
    }
    if let Some(auth) = authfile {
        push.push(format!("--authfile={}", path(auth)));
    }
    push.push(s(tag));
    push.push(format!(
        "docker://{}",
        rewrite_registry(&a.destination, aliases)
    ));

    let registries_conf = (!aliases.is_empty()).then(|| {
        aliases
            .iter()
            .map(|(from, to)| format!("[[registry]]\nprefix = \"{from}\"\nlocation = \"{to}\"\n\n"))
            .collect::<String>()
    });
    Ok(BuildahPlan {
        bud,
        push,
        registries_conf,
    })
}

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
async fn materialize(client: &Client, ns: &str, data: &VolumeData, dir: &Path) -> Result<()> {
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

/// Rewrites the `auths` keys of a docker config for `aliases`, so credentials
/// the Job gives for a registry name apply where the host reaches it.
fn rewrite_auths(config: &[u8], aliases: &[(String, String)]) -> Result<Vec<u8>> {
    let mut v: serde_json::Value =
        serde_json::from_slice(config).context("registry credentials are not JSON")?;
    if let Some(auths) = v.get_mut("auths").and_then(|a| a.as_object_mut()) {
        let entries: Vec<(String, serde_json::Value)> = std::mem::take(auths).into_iter().collect();
        for (k, val) in entries {
            let host = k
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let mapped = aliases
                .iter()
                .find(|(from, _)| host == from || host.starts_with(&format!("{from}/")))
                .map(|(from, to)| format!("{to}{}", &host[from.len()..]));
            auths.insert(k, val.clone());
            if let Some(m) = mapped {
                auths.insert(m, val);
            }
        }
    }
    Ok(serde_json::to_vec(&v)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    const BASE: &[&str] = &[
        "--dockerfile=/workspace/Dockerfile",
        "--context=dir:///workspace",
        "--destination=10.0.2.2:5000/ns/m:6.1.0-56-amd64",
    ];

    fn args(extra: &[&str]) -> Vec<String> {
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

    fn job_with(mounts: Vec<Mount>, extra: &[&str]) -> BuildJob {
        BuildJob {
            namespace: "ns".into(),
            args: parse_kaniko_args(&args(extra)).unwrap(),
            mounts,
        }
    }

    fn host(v: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
        v.iter()
            .map(|(a, h)| ((*a).to_string(), PathBuf::from(h)))
            .collect()
    }

    #[test]
    fn maps_flags_mounts_and_registry_aliases_to_buildah() {
        let job = job_with(
            vec![],
            &[
                "--build-arg=MOD_NAME=m",
                "--insecure",
                "--skip-tls-verify-pull",
            ],
        );
        let mounts = host(&[
            ("/workspace", "/t/vol-0"),
            ("/run/secrets/tok", "/t/vol-1"),
            ("/kaniko/.docker/config.json", "/t/vol-2/.dockerconfigjson"),
        ]);
        let aliases = vec![("10.0.2.2:5000".to_string(), "127.0.0.1:5000".to_string())];
        let p = plan_buildah(
            &job,
            &mounts,
            Some(Path::new("/t/auth.json")),
            &aliases,
            "localhost/b:1",
        )
        .unwrap();
        assert_eq!(
            p.bud,
            s(&[
                "bud",
                "--isolation=chroot",
                "--format=docker",
                "--pull-always",
                "-f",
                "/t/vol-0/Dockerfile",
                "-t",
                "localhost/b:1",
                "--tls-verify=false",
                "--authfile=/t/auth.json",
                "--build-arg=MOD_NAME=m",
                "--volume=/t/vol-1:/run/secrets/tok:ro",
                "/t/vol-0",
            ])
        );
        assert_eq!(
            p.push,
            s(&[
                "push",
                "--format=v2s2",
                "--tls-verify=false",
                "--authfile=/t/auth.json",
                "localhost/b:1",
                "docker://127.0.0.1:5000/ns/m:6.1.0-56-amd64",
            ])
        );
        let conf = p.registries_conf.unwrap();
        assert!(
            conf.contains("prefix = \"10.0.2.2:5000\"\nlocation = \"127.0.0.1:5000\""),
            "{conf}"
        );
    }

    #[test]
    fn tls_is_verified_unless_the_job_says_otherwise() {
        let job = job_with(vec![], &[]);
        let p = plan_buildah(&job, &host(&[("/workspace", "/t/w")]), None, &[], "t").unwrap();
        assert!(!p.bud.iter().any(|a| a.starts_with("--tls-verify")));
        assert!(!p.push.iter().any(|a| a.starts_with("--tls-verify")));
        assert_eq!(
            p.push.last().unwrap(),
            "docker://10.0.2.2:5000/ns/m:6.1.0-56-amd64"
        );
        assert!(p.registries_conf.is_none());
        // Push-side flags do not loosen pulls, and vice versa.
        let p = plan_buildah(
            &job_with(vec![], &["--skip-tls-verify"]),
            &host(&[("/workspace", "/t/w")]),
            None,
            &[],
            "t",
        )
        .unwrap();
        assert!(!p.bud.contains(&"--tls-verify=false".to_string()));
        assert!(p.push.contains(&"--tls-verify=false".to_string()));
    }

    #[test]
    fn refuses_mounts_it_has_no_use_for_and_a_missing_context() {
        let job = job_with(vec![], &[]);
        let err = plan_buildah(
            &job,
            &host(&[("/workspace", "/t/w"), ("/etc/ssl", "/t/x")]),
            None,
            &[],
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("/etc/ssl"), "{err}");
        let err = plan_buildah(&job, &host(&[("/other", "/t/w")]), None, &[], "t").unwrap_err();
        assert!(
            err.to_string().contains("build context /workspace"),
            "{err}"
        );
    }

    #[test]
    fn resolves_the_deepest_mount_on_component_boundaries() {
        let m = host(&[
            ("/kaniko", "/a"),
            ("/kaniko/.docker", "/b"),
            ("/work", "/c"),
        ]);
        assert_eq!(
            resolve(&m, "/kaniko/.docker/config.json"),
            Some(PathBuf::from("/b/config.json"))
        );
        assert_eq!(resolve(&m, "/kaniko/x"), Some(PathBuf::from("/a/x")));
        assert_eq!(resolve(&m, "/work"), Some(PathBuf::from("/c")));
        assert_eq!(resolve(&m, "/workspace/Dockerfile"), None);
    }

    #[test]
    fn rewrites_registry_hosts_only_on_a_full_host_match() {
        let a = vec![("10.0.2.2:5000".to_string(), "127.0.0.1:5000".to_string())];
        assert_eq!(
            rewrite_registry("10.0.2.2:5000/x/y:1", &a),
            "127.0.0.1:5000/x/y:1"
        );
        assert_eq!(
            rewrite_registry("10.0.2.2:50001/x/y:1", &a),
            "10.0.2.2:50001/x/y:1"
        );
        assert_eq!(rewrite_registry("quay.io/x", &a), "quay.io/x");
        let auth = rewrite_auths(br#"{"auths":{"10.0.2.2:5000":{"auth":"eDp5"}}}"#, &a).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&auth).unwrap();
        assert_eq!(v["auths"]["127.0.0.1:5000"]["auth"], "eDp5");
        assert_eq!(v["auths"]["10.0.2.2:5000"]["auth"], "eDp5");
    }
}
