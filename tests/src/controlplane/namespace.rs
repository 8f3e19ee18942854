//! Temporary namespaces: one per test, uniquely named and labelled so that
//! leftovers from crashed runs can be swept with
//! `kubectl delete namespace -l kmm-rs.test/temp=true`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// Label put on every namespace made by [`super::ControlPlane::temp_namespace`].
pub const TEMP_LABEL: &str = "kmm-rs.test/temp";
/// Label recording the test process that made the namespace.
pub const PID_LABEL: &str = "kmm-rs.test/pid";

/// A namespace that exists for one test. Call [`TestNamespace::cleanup`] at
/// the end of the test; if it is dropped without that, the namespace is
/// deleted best-effort through kubectl and a warning is printed.
pub struct TestNamespace {
    name: String,
    client: Client,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    cleaned: bool,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    pub(super) async fn create(
        client: Client,
        prefix: &str,
        kubectl: PathBuf,
        kubeconfig: PathBuf,
    ) -> Result<Self> {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (TEMP_LABEL.to_string(), "true".to_string()),
                    (PID_LABEL.to_string(), std::process::id().to_string()),
                ])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client,
            kubectl,
            kubeconfig,
            cleaned: false,
        })
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace (not waiting for it to be gone: that needs the
    /// namespace controller, i.e. `START_CONTROLLERS=1`). Already gone is fine.
    /// Modules left behind their finalizer are released first.
    pub async fn cleanup(mut self) -> Result<()> {
        self.cleaned = true;
        self.release_modules();
        let api = Api::<Namespace>::all(self.client.clone());
        match api.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting namespace {}", self.name)),
        }
    }
}

impl TestNamespace {
    fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        cmd
    }

    /// Deletes every Module and ModuleRollout of the namespace and strips
    /// their finalizers: the controller that added one may be gone (or failed
    /// mid-test), and an object stuck "being deleted" would hold the namespace
    /// in Terminating and show up in the next `kubectl get modules -A`.
    /// Deleting first means no controller can add the finalizer back.
    /// Synchronous (kubectl), so it runs from `Drop` too; best-effort, and a
    /// cluster without the CRDs is fine.
    fn release_modules(&self) {
        for resource in [
            "modules.kmm.sigs.x-k8s.io",
            "modulerollouts.rollout.kmm-rs.io",
        ] {
            self.release_all(resource);
        }
    }

    /// Deletes every `resource` of the namespace, then strips their finalizers.
    fn release_all(&self, resource: &str) {
        let _ = self
            .kubectl()
            .args([
                "delete",
                resource,
                "--all",
                "--wait=false",
                "--ignore-not-found",
                "-n",
                &self.name,
            ])
            .status();
        let Ok(out) = self
            .kubectl()
            .args(["get", resource, "-o", "name", "-n", &self.name])
            .output()
        else {
            return;
        };
        for object in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = self
                .kubectl()
                .args([
                    "patch",
                    object,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                    "-n",
                    &self.name,
                ])
                .status();
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.release_modules();
        // Async deletion is impossible here (the test's runtime may be gone);
        // kubectl is synchronous and quick with --wait=false.
        eprintln!(
            "warning: test namespace {} was not cleaned up; deleting it with kubectl",
            self.name
        );
        let status = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: could not delete namespace {}; sweep with `kubectl delete namespace -l {TEMP_LABEL}=true`",
                self.name
            );
        }
    }
}

/// `<prefix>-<pid>-<counter><time>`: unique across concurrent test processes
/// and reruns, and a valid DNS label (lowercase, <= 63 chars).
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean = clean.trim_matches('-').to_string();
    if clean.is_empty() {
        clean = "test".to_string();
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let suffix = format!(
        "-{}-{}{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos & 0xfff_fff
    );
    clean.truncate(63 - suffix.len());
    format!("{}{suffix}", clean.trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    #[test]
    fn names_are_unique_dns_labels() {
        let a = unique_name("My_Test.Module");
        let b = unique_name("My_Test.Module");
        assert_ne!(a, b);
        assert!(a.starts_with("my-test-module-"), "{a}");
        let long = unique_name(&"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
        for n in [&a, &b, &long, &unique_name("--")] {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
        }
    }
}
