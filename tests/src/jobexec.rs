//! What the build ([`crate::buildah`]) and sign ([`crate::signjob`]) Job
//! executors read alike: the Job's namespace, its single container, the
//! volume behind each mount. Each executor checks its own container shape
//! (image, command, args, volume kinds) on top.

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, KeyToPath, Volume, VolumeMount};

/// A Job's one container, with what its checks name.
pub(crate) struct SingleContainer<'a> {
    /// The Job's name (`<unnamed>` without one), for error messages.
    pub name: &'a str,
    /// The Job's namespace (also that of its ConfigMaps and Secrets).
    pub namespace: String,
    /// The container.
    pub container: &'a Container,
    /// The pod's volumes.
    pub volumes: &'a [Volume],
}

/// Reads the part of a Job both executors share: a namespace, a pod template
/// without init containers and exactly one container (`what` names it in the
/// error).
///
/// # Errors
/// Anything outside that shape.
pub(crate) fn single_container<'a>(job: &'a Job, what: &str) -> Result<SingleContainer<'a>> {
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
    let [container] = pod.containers.as_slice() else {
        bail!(
            "Job {name}: expected one {what} container, found {}",
            pod.containers.len()
        );
    };
    Ok(SingleContainer {
        name,
        namespace,
        container,
        volumes: pod.volumes.as_deref().unwrap_or_default(),
    })
}

impl SingleContainer<'_> {
    /// Refuses container fields neither executor honours (env, workingDir).
    ///
    /// # Errors
    /// One of them is set.
    pub(crate) fn refuse_env_and_working_dir(&self) -> Result<()> {
        let (name, c) = (self.name, self.container);
        ensure!(
            c.env.as_ref().is_none_or(Vec::is_empty)
                && c.env_from.as_ref().is_none_or(Vec::is_empty),
            "Job {name}: container env is not supported"
        );
        ensure!(
            c.working_dir.is_none(),
            "Job {name}: workingDir is not supported"
        );
        Ok(())
    }

    /// The container's mounts, each with its volume.
    ///
    /// # Errors
    /// A mount of a volume the pod does not declare.
    pub(crate) fn mounts(&self) -> Result<Vec<(&VolumeMount, &Volume)>> {
        self.container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                let v = self
                    .volumes
                    .iter()
                    .find(|v| v.name == m.name)
                    .with_context(|| {
                        format!("Job {}: mount of unknown volume {}", self.name, m.name)
                    })?;
                Ok((m, v))
            })
            .collect()
    }
}

/// A ConfigMap or Secret volume's `items` as (key, path).
pub(crate) fn items(items: Option<&Vec<KeyToPath>>) -> Vec<(String, String)> {
    items
        .map(|v| v.iter().map(|i| (i.key.clone(), i.path.clone())).collect())
        .unwrap_or_default()
}

/// Helpers of both executors' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use k8s_openapi::api::batch::v1::Job;

    /// Owned strings.
    pub(crate) fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    /// (JSON pointer, value, expected error) of what both executors refuse
    /// through [`super::single_container`]: env and init containers.
    pub(crate) fn refused_by_both() -> [(&'static str, serde_json::Value, &'static str); 2] {
        [
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
        ]
    }

    /// `job` with `value` at JSON pointer `path`: replaced when the slot
    /// exists, else appended to its parent array or inserted in its object.
    ///
    /// # Panics
    /// When the parent is missing or the result is not a Job.
    pub(crate) fn patched(mut job: serde_json::Value, path: &str, value: serde_json::Value) -> Job {
        if let Some(slot) = job.pointer_mut(path) {
            *slot = value;
        } else {
            let (parent, key) = path.rsplit_once('/').unwrap();
            match job.pointer_mut(parent).unwrap() {
                serde_json::Value::Array(a) => a.push(value),
                serde_json::Value::Object(o) => {
                    o.insert(key.to_string(), value);
                }
                other => panic!("{path}: {other}"),
            }
        }
        serde_json::from_value(job).unwrap()
    }
}
