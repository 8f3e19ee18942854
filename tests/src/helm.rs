//! The Helm chart `deploy/helm/kmm-rs` and the `helm` client the tests run
//! (`helm.sh/helm/v4`, built from source by `hack/helm/build.sh`).
//!
//! [`helm_path`] finds the binary as [`crate::kwok`] finds kwok: `KMM_HELM`
//! (the binary itself) if set, else `hack/helm/build.sh --print-bin-dir`
//! (which honours `KMM_CACHE` and `KMM_HELM_BIN`). [`Helm`] runs it with
//! config, cache and data dirs of its own (never `~/.config/helm`).
//!
//! The comparison of a `helm template` with a `kubectl kustomize` render is
//! here too: [`by_key`] keys both by kind/namespace/name, [`strip_helm_metadata`]
//! removes the only differences allowed (Helm's labels, the CRDs'
//! `helm.sh/resource-policy`), and [`diff`] lists every other one by path.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

use crate::controlplane::repo_root;

/// Release name the tests (and the README) use.
pub const RELEASE: &str = "kmm-rs";
/// The namespace deploy/ installs into, and the README's `helm install -n`.
pub const NAMESPACE: &str = "kmm-system";
/// Labels Helm's chart adds to every object's metadata (never to selectors
/// or Pod templates): the only label difference from `deploy/`.
pub const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];
/// Cluster-scoped kinds of the install. kustomize's `namespace:` also sets
/// a namespace on the kinds it does not know to be cluster-scoped
/// (ValidatingAdmissionPolicy and its binding), which the API server
/// ignores; [`compare`] drops `metadata.namespace` of these kinds.
pub const CLUSTER_SCOPED: [&str; 7] = [
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
];
/// Annotation the chart puts on each CRD so `helm uninstall` keeps it.
pub const KEEP_ANNOTATION: &str = "helm.sh/resource-policy";

/// `deploy/helm/kmm-rs`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/kmm-rs")
}

/// The helm binary: `$KMM_HELM`, else `helm` in the dir that
/// `hack/helm/build.sh --print-bin-dir` names.
///
/// # Errors
/// If the build script fails, or the binary is not there (the message says
/// how to build it).
pub fn helm_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KMM_HELM").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "KMM_HELM={} is not a file", p.display());
        return Ok(p);
    }
    let script = repo_root().join("hack/helm/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-bin-dir")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} --print-bin-dir failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let dir = String::from_utf8(out.stdout).context("helm bin dir is not UTF-8")?;
    let helm = Path::new(dir.trim()).join("helm");
    ensure!(
        helm.is_file(),
        "helm is not built ({} missing): run `bash hack/helm/build.sh` (3-5 minutes cold on 2 cores), or set KMM_HELM",
        helm.display()
    );
    Ok(helm)
}

/// The helm client with private config/cache/data dirs, optionally against
/// a cluster (`--kubeconfig`).
pub struct Helm {
    bin: PathBuf,
    kubeconfig: Option<PathBuf>,
    home: tempfile::TempDir,
}

impl Helm {
    /// helm for rendering and linting only (no cluster).
    ///
    /// # Errors
    /// See [`helm_path`]; temp dir creation.
    pub fn new() -> Result<Self> {
        Ok(Helm {
            bin: helm_path()?,
            kubeconfig: None,
            home: tempfile::tempdir().context("helm home")?,
        })
    }

    /// helm against the cluster of `kubeconfig`.
    ///
    /// # Errors
    /// See [`Helm::new`].
    pub fn with_kubeconfig(kubeconfig: &Path) -> Result<Self> {
        let mut h = Self::new()?;
        h.kubeconfig = Some(kubeconfig.to_path_buf());
        Ok(h)
    }

    /// Runs helm; check `status` yourself.
    ///
    /// # Errors
    /// If helm cannot be spawned.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.bin);
        let home = self.home.path();
        cmd.env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("KUBECONFIG")
            .current_dir(repo_root());
        if let Some(kc) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(kc);
        }
        cmd.args(args)
            .output()
            .with_context(|| format!("spawning {}", self.bin.display()))
    }

    /// Runs helm and returns stdout, failing with its stderr (without the
    /// loader's INFO lines about the chart's symlinks) on a non-zero exit.
    ///
    /// # Errors
    /// Spawn failures or a non-zero exit.
    pub fn ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let out = self.run(&args)?;
        let stderr = stderr_without_info(&out);
        crate::controlplane::stdout_if_ok("helm", &args, out, &stderr)
    }

    /// `helm template kmm-rs deploy/helm/kmm-rs -n kmm-system <extra>`: one
    /// JSON value per object.
    ///
    /// # Errors
    /// helm or YAML failures.
    pub fn template(&self, extra: &[&str]) -> Result<Vec<Value>> {
        let chart = chart_dir();
        let mut args = vec![
            "template",
            RELEASE,
            chart.to_str().context("non-UTF-8 chart path")?,
            "-n",
            NAMESPACE,
        ];
        args.extend_from_slice(extra);
        parse_stream(&self.ok(&args)?)
    }
}

/// helm's stderr without the loader's `level=INFO` lines (one per symlink
/// in the chart on every load).
pub fn stderr_without_info(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("level=INFO"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A multi-document YAML stream as JSON values, empty documents (helm's
/// `# Source:` comments only, a leading `---`) left out.
///
/// # Errors
/// YAML that does not parse.
pub fn parse_stream(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// `kind/namespace/name` (namespace empty for cluster-scoped objects).
pub fn key(obj: &Value) -> String {
    format!(
        "{}/{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Objects keyed by [`key`]; a key seen twice is an error (it would hide an
/// object from the comparison).
///
/// # Errors
/// On a duplicate key.
pub fn by_key(docs: Vec<Value>) -> Result<BTreeMap<String, Value>> {
    let mut map = BTreeMap::new();
    for d in docs {
        let k = key(&d);
        if map.insert(k.clone(), d).is_some() {
            bail!("{k} rendered twice");
        }
    }
    Ok(map)
}

/// Removes what the chart adds to `deploy/`'s objects, after checking it is
/// there with the expected values: [`HELM_LABELS`] on every object's
/// metadata (release `release`, chart version `chart_version`, app version
/// `app_version`) and [`KEEP_ANNOTATION`]`=keep` on CRDs. A labels or
/// annotations map left empty is removed (deploy/ has none there).
///
/// # Errors
/// If a Helm label or the CRD annotation is missing or has another value.
pub fn strip_helm_metadata(
    obj: &mut Value,
    release: &str,
    chart_version: &str,
    app_version: &str,
) -> Result<()> {
    let k = key(obj);
    let want = [
        ("helm.sh/chart", format!("kmm-rs-{chart_version}")),
        ("app.kubernetes.io/managed-by", "Helm".to_string()),
        ("app.kubernetes.io/instance", release.to_string()),
        ("app.kubernetes.io/version", app_version.to_string()),
    ];
    let is_crd = obj["kind"] == "CustomResourceDefinition";
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .with_context(|| format!("{k}: no metadata"))?;
    let labels = meta
        .get_mut("labels")
        .and_then(Value::as_object_mut)
        .with_context(|| format!("{k}: no labels"))?;
    for (label, value) in &want {
        match labels.remove(*label) {
            Some(Value::String(v)) if v == *value => {}
            other => bail!("{k}: label {label} is {other:?}, want {value:?}"),
        }
    }
    if labels.is_empty() {
        meta.remove("labels");
    }
    if is_crd {
        let annotations = meta
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
            .with_context(|| format!("{k}: no annotations"))?;
        match annotations.remove(KEEP_ANNOTATION) {
            Some(Value::String(v)) if v == "keep" => {}
            other => bail!("{k}: annotation {KEEP_ANNOTATION} is {other:?}, want \"keep\""),
        }
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
    Ok(())
}

/// Whole-valued floats as integers, recursively: a YAML `1.0` in a
/// generated CRD (`minimum: 1.0`) comes back from helm's fromYaml/toYaml as
/// `1`, the same JSON number for the API server.
pub fn normalize_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Whole and within i64's exact range (2^53): the cast is exact.
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                #[allow(clippy::cast_possible_truncation, reason = "whole value in range")]
                let i = f as i64;
                *v = Value::from(i);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_numbers),
        Value::Object(o) => o.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

/// Every difference between `left` and `right`, one line per JSON path
/// (`<path>: <left> != <right>`, a side without the field shown as absent).
pub fn diff(left: &Value, right: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_at("", left, right, &mut out);
    out
}

fn diff_at(path: &str, l: &Value, r: &Value, out: &mut Vec<String>) {
    match (l, r) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}/{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_at(&p, x, y, out),
                    (Some(x), None) => out.push(format!("{p}: {x} != (absent)")),
                    (None, Some(y)) => out.push(format!("{p}: (absent) != {y}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_at(&format!("{path}/{i}"), x, y, out);
            }
        }
        _ if l != r => out.push(format!("{path}: {l} != {r}")),
        _ => {}
    }
}

/// `metadata.namespace` removed from an object of a [`CLUSTER_SCOPED`] kind.
pub fn drop_cluster_scoped_namespace(obj: &mut Value) {
    let cluster_scoped = CLUSTER_SCOPED.iter().any(|k| obj["kind"] == *k);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut)
        && cluster_scoped
    {
        meta.remove("namespace");
    }
}

/// Compares a chart render with a kustomize render, both directions: every
/// object on one side must be on the other with equal content once
/// [`strip_helm_metadata`], [`normalize_numbers`] and
/// [`drop_cluster_scoped_namespace`] ran. Returns the
/// differences (empty when equal), each naming its object.
///
/// # Errors
/// Duplicate objects, or Helm metadata missing on a chart object.
pub fn compare(
    chart: Vec<Value>,
    kustomize: Vec<Value>,
    chart_version: &str,
    app_version: &str,
) -> Result<Vec<String>> {
    let scoped = |mut docs: Vec<Value>| {
        docs.iter_mut().for_each(drop_cluster_scoped_namespace);
        docs
    };
    let mut chart = by_key(scoped(chart))?;
    let mut kustomize = by_key(scoped(kustomize))?;
    for obj in chart.values_mut() {
        strip_helm_metadata(obj, RELEASE, chart_version, app_version)?;
        normalize_numbers(obj);
    }
    kustomize.values_mut().for_each(normalize_numbers);
    let mut out = Vec::new();
    for (k, c) in &chart {
        match kustomize.get(k) {
            None => out.push(format!("{k}: rendered by the chart only")),
            Some(z) => out.extend(diff(c, z).into_iter().map(|d| format!("{k}: {d}"))),
        }
    }
    for k in kustomize.keys().filter(|k| !chart.contains_key(*k)) {
        out.push(format!("{k}: rendered by kustomize only"));
    }
    Ok(out)
}

/// `version` and `appVersion` of the chart's Chart.yaml.
///
/// # Errors
/// Read or parse failures, or a field missing.
pub fn chart_versions() -> Result<(String, String)> {
    let path = chart_dir().join("Chart.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_yaml::from_str(&text)?;
    let get = |f: &str| {
        v[f].as_str()
            .map(str::to_string)
            .with_context(|| format!("Chart.yaml has no string {f}"))
    };
    Ok((get("version")?, get("appVersion")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn helm_obj(kind: &str, name: &str, spec: Value) -> Value {
        json!({"kind": kind, "metadata": {"name": name, "labels": {
            "app.kubernetes.io/part-of": "kmm-rs",
            "helm.sh/chart": "kmm-rs-1.0.0", "app.kubernetes.io/managed-by": "Helm",
            "app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/version": "2.0.0"}},
            "spec": spec})
    }

    fn plain_obj(kind: &str, name: &str, spec: Value) -> Value {
        json!({"kind": kind, "metadata": {"name": name, "labels": {
            "app.kubernetes.io/part-of": "kmm-rs"}}, "spec": spec})
    }

    #[test]
    fn equal_renders_compare_equal_and_floats_match_integers() -> Result<()> {
        let c = vec![helm_obj("Service", "a", json!({"port": 1}))];
        let k = vec![plain_obj("Service", "a", json!({"port": 1.0}))];
        assert_eq!(compare(c, k, "1.0.0", "2.0.0")?, Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn a_field_or_an_object_on_one_side_only_is_reported() -> Result<()> {
        let c = vec![
            helm_obj("Service", "a", json!({"port": 1, "extra": true})),
            helm_obj("Service", "only-chart", json!({})),
        ];
        let k = vec![
            plain_obj("Service", "a", json!({"port": 2})),
            plain_obj("Service", "only-kustomize", json!({})),
        ];
        let d = compare(c, k, "1.0.0", "2.0.0")?;
        assert_eq!(
            d,
            [
                "Service//a: /spec/extra: true != (absent)",
                "Service//a: /spec/port: 1 != 2",
                "Service//only-chart: rendered by the chart only",
                "Service//only-kustomize: rendered by kustomize only",
            ]
        );
        Ok(())
    }

    #[test]
    fn a_chart_object_without_helm_labels_is_an_error() {
        let c = vec![plain_obj("Service", "a", json!({}))];
        let k = vec![plain_obj("Service", "a", json!({}))];
        assert!(compare(c, k, "1.0.0", "2.0.0").is_err());
    }

    #[test]
    fn a_crd_without_the_keep_annotation_is_an_error() {
        let c = vec![helm_obj("CustomResourceDefinition", "a", json!({}))];
        let k = vec![plain_obj("CustomResourceDefinition", "a", json!({}))];
        assert!(compare(c, k, "1.0.0", "2.0.0").is_err());
    }
}
