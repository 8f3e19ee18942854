//! The upstream compatibility corpus (`tests/data/upstream-corpus`: one file per Module or
//! PreflightValidation example of upstream KMM's docs, CI and samples) against the REAL API
//! server with our CRDs (CEL) and our admission webhook (the controller serving it over HTTPS,
//! as in `webhook_cluster.rs`): every valid file applies server-side and reads back with
//! nothing lost; every invalid one is refused with a message naming the field (its
//! `# expect:` lines).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kmm_tests::cluster::{crd_namespace, wait_for};
use kmm_tests::controlplane::{ControlPlane, TestNamespace, repo_root};
use kmm_tests::webhook::{NamespaceWebhook, SELECTOR_KEY};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A test namespace subject to a webhook configuration of its own, served by a controller.
struct Fixture {
    cp: &'static ControlPlane,
    ns: TestNamespace,
    webhook: NamespaceWebhook,
}

impl Fixture {
    async fn new() -> Result<Self> {
        let (cp, client, ns) = crd_namespace("corpus").await?;
        let webhook = NamespaceWebhook::start(cp, &client, ns.name(), WAIT).await?;
        let f = Self { cp, ns, webhook };
        f.wait_webhook_active().await?;
        Ok(f)
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// Waits until the API server calls the webhook (it loads new configurations
    /// asynchronously): a dry run of a Module only the webhook refuses (CEL cannot compile a
    /// regexp) is refused by it.
    async fn wait_webhook_active(&self) -> Result<()> {
        let probe = json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
            "metadata": {"name": "probe"},
            "spec": {"selector": {}, "moduleLoader": {"container": {
                "modprobe": {"moduleName": "probe"},
                "kernelMappings": [{"regexp": "[", "containerImage": "reg/probe:1"}],
            }}},
        });
        wait_for(WAIT, || async {
            let out = self.kubectl_apply(&probe, &["--dry-run=server"])?;
            Ok(!out.0 && out.1.contains("vmodule.kmm.sigs.x-k8s.io"))
        })
        .await
        .with_context(|| {
            format!(
                "webhook never called; log:\n{}",
                self.webhook.controller.log()
            )
        })
    }

    /// `kubectl apply --server-side` of `doc` (field validation Strict: an unknown field is an
    /// error, not silently pruned). Returns (success, stdout + stderr).
    fn kubectl_apply(&self, doc: &Value, extra: &[&str]) -> Result<(bool, String)> {
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager=compat-corpus",
            "-n",
            self.ns(),
            "-f",
            "-",
        ];
        args.extend_from_slice(extra);
        let out = self
            .cp
            .kubectl_with_stdin(args, &serde_json::to_string(doc)?)?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// The stored object, read at the version it was sent as.
    fn get(&self, doc: &Value) -> Result<Option<Value>> {
        let version = doc["apiVersion"]
            .as_str()
            .and_then(|v| v.strip_prefix("kmm.sigs.x-k8s.io/"))
            .context("apiVersion")?;
        let resource = match doc["kind"].as_str() {
            Some("Module") => "modules",
            Some("PreflightValidation") => "preflightvalidations",
            other => bail!("unexpected kind {other:?}"),
        };
        let name = doc["metadata"]["name"].as_str().context("name")?;
        let out = self.cp.kubectl([
            "get",
            &format!("{resource}.{version}.kmm.sigs.x-k8s.io"),
            name,
            "-n",
            self.ns(),
            "-o",
            "json",
            "--ignore-not-found",
        ]);
        ensure!(
            out.status.success(),
            "kubectl get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.is_empty() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&out.stdout)?))
    }

    /// `doc` made unique in the cluster: Modules get a short name of their own (several
    /// upstream examples share `my-kmod`, and upstream limits namespace + name to 41
    /// characters when `version` is set); PreflightValidations (cluster-scoped) a name
    /// carrying the namespace and the label this test's webhook configuration selects.
    fn localise(&self, doc: &Value, index: usize, file: &str) -> Value {
        let mut doc = doc.clone();
        let stem = file.trim_end_matches(".yaml");
        let short: String = stem.chars().take(10).collect();
        let name = match doc["kind"].as_str() {
            Some("PreflightValidation") => {
                doc["metadata"]["labels"] = json!({ SELECTOR_KEY: self.ns() });
                format!("{}-{stem}", self.ns())
            }
            _ => format!("c{index:02}-{}", short.trim_end_matches('-')),
        };
        doc["metadata"]["name"] = json!(name);
        doc
    }

    async fn finish(self) -> Result<()> {
        // PreflightValidations are cluster-scoped: the namespace's deletion does not take them.
        self.cp.kubectl_ok([
            "delete",
            "preflightvalidations.kmm.sigs.x-k8s.io",
            "-l",
            &format!("{SELECTOR_KEY}={}", self.ns()),
            "--ignore-not-found",
        ])?;
        // Modules go with the namespace: strip finalizers so nothing waits for an agent.
        let modules = self
            .cp
            .kubectl_ok(["get", "modules", "-n", self.ns(), "-o", "name"])?;
        for m in modules.lines() {
            let _ = self.cp.kubectl([
                "patch",
                m,
                "-n",
                self.ns(),
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        self.ns.cleanup().await
    }
}

fn corpus_dir(kind: &str) -> PathBuf {
    repo_root().join("tests/data/upstream-corpus").join(kind)
}

/// `(file name, parsed document, `# expect:` lines)` of every file of `valid` or `invalid`.
fn corpus(kind: &str) -> Result<Vec<(String, Value, Vec<String>)>> {
    let dir = corpus_dir(kind);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| dir.display().to_string())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    paths.sort();
    paths
        .iter()
        .map(|p: &PathBuf| {
            let text = std::fs::read_to_string(p)?;
            let expect = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect: "))
                .map(String::from)
                .collect();
            let doc = serde_yaml::from_str(&text).with_context(|| p.display().to_string())?;
            Ok((file_name(p), doc, expect))
        })
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The stored spec with the API server's defaults taken out where the sent spec left them
/// unset. The CRD's only default on a Module spec is upstream's `modprobe.dirName: /opt`
/// (`+kubebuilder:default=/opt`); PreflightValidation has none.
fn without_defaults(sent: &Value, mut stored: Value) -> Value {
    const DIR_NAME: &str = "/moduleLoader/container/modprobe";
    if sent.pointer(&format!("{DIR_NAME}/dirName")).is_none()
        && let Some(Value::Object(modprobe)) = stored.pointer_mut(DIR_NAME)
        && modprobe.get("dirName") == Some(&json!("/opt"))
    {
        modprobe.remove("dirName");
    }
    stored
}

#[tokio::test(flavor = "multi_thread")]
async fn every_valid_upstream_example_applies_and_reads_back_with_nothing_lost() -> Result<()> {
    let f = Fixture::new().await?;
    let files = corpus("valid")?;
    ensure!(files.len() >= 20, "corpus too small: {}", files.len());
    let mut failures = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, (file, doc, _)) in files.iter().enumerate() {
        let doc = f.localise(doc, i, file);
        ensure!(
            names.insert(doc["metadata"]["name"].to_string()),
            "{file}: name not unique"
        );
        let (ok, output) = f.kubectl_apply(&doc, &[])?;
        if !ok {
            failures.push(format!("{file}: refused: {output}"));
            continue;
        }
        let Some(stored) = f.get(&doc)? else {
            failures.push(format!("{file}: applied but not found"));
            continue;
        };
        let got = without_defaults(&doc["spec"], stored["spec"].clone());
        if got != doc["spec"] {
            failures.push(format!(
                "{file}: spec changed in the API server\n sent   {}\n stored {}",
                doc["spec"], stored["spec"]
            ));
        }
    }
    ensure!(
        failures.is_empty(),
        "{}\ncontroller log:\n{}",
        failures.join("\n"),
        f.webhook.controller.log()
    );
    f.finish().await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_invalid_upstream_example_is_refused_naming_the_field() -> Result<()> {
    let f = Fixture::new().await?;
    let files = corpus("invalid")?;
    ensure!(files.len() >= 15, "corpus too small: {}", files.len());
    let mut failures = Vec::new();
    for (i, (file, doc, expect)) in files.iter().enumerate() {
        ensure!(!expect.is_empty(), "{file}: no '# expect:' line");
        let doc = f.localise(doc, i, file);
        let (ok, output) = f.kubectl_apply(&doc, &[])?;
        if ok {
            failures.push(format!("{file}: admitted: {output}"));
        } else if let Some(missing) = expect.iter().find(|e| !output.contains(e.as_str())) {
            failures.push(format!(
                "{file}: refusal does not name {missing:?}: {output}"
            ));
        } else if f.get(&doc)?.is_some() {
            failures.push(format!("{file}: refused but stored"));
        } else {
            eprintln!("{file}: {}", output.trim());
        }
    }
    ensure!(
        failures.is_empty(),
        "{}\ncontroller log:\n{}",
        failures.join("\n"),
        f.webhook.controller.log()
    );
    f.finish().await
}
