//! The pure mapping from a parsed build Job to buildah invocations.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::job::{BuildJob, KANIKO_DOCKER_CONFIG, SECRETS_DIR};

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
pub(crate) fn resolve(mounts: &[(String, PathBuf)], path: &str) -> Option<PathBuf> {
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

/// Rewrites the `auths` keys of a docker config for `aliases`, so credentials
/// the Job gives for a registry name apply where the host reaches it.
pub(crate) fn rewrite_auths(config: &[u8], aliases: &[(String, String)]) -> Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::super::job::tests::args;
    use super::super::job::{Mount, parse_kaniko_args};
    use super::*;
    use crate::jobexec::testing::s;

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
