//! The committed CRDs against the real API server: they install cleanly, the examples apply
//! and read back without losing a field, `kubectl explain` shows the field docs, and the Rust
//! types read what the server stores.
//!
//! Needs the control plane binaries (`bash hack/controlplane/build.sh`); fails without them.

mod crd_support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kmm_common::{Module, validate_module};
use kmm_tests::controlplane::ControlPlane;
use kube::Api;

use crd_support::{
    apply, example_path, get_module_json, install_crds, missing_fields, retry, yaml_documents,
};

#[tokio::test]
async fn crds_apply_server_side_without_warnings() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let stderr = install_crds(cp).await?;
    ensure!(
        !stderr.to_lowercase().contains("warning"),
        "CRD apply printed warnings: {stderr}"
    );
    // Re-applying the same content is a no-op, still without warnings.
    let again = install_crds(cp).await?;
    ensure!(!again.to_lowercase().contains("warning"), "{again}");
    Ok(())
}

/// Applies every Module of `file` in a fresh namespace and checks each reads back with every
/// field it was sent, that the typed client reads the same thing, and that the Rust webhook
/// rules accept it.
async fn example_round_trips(file: &str) -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let ns = cp.temp_namespace("crd").await?;
    let text = std::fs::read_to_string(example_path(file))?;
    let applied = apply(cp, ns.name(), &text)?;
    ensure!(applied.ok, "applying {file}: {}", applied.output);
    ensure!(
        !applied.output.to_lowercase().contains("warning"),
        "applying {file} warned: {}",
        applied.output
    );
    let api: Api<Module> = Api::namespaced(cp.client(), ns.name());
    for doc in yaml_documents(&text)? {
        let name = doc["metadata"]["name"].as_str().context("metadata.name")?;
        let stored = get_module_json(cp, ns.name(), name)?;
        let lost = missing_fields("spec", &doc["spec"], &stored["spec"]);
        ensure!(
            lost.is_empty(),
            "{file} {name}: fields lost or changed: {lost:#?}"
        );

        let mut sent: Module = serde_json::from_value(doc.clone())?;
        sent.metadata.namespace = Some(ns.name().to_string());
        let typed = api.get(name).await?;
        ensure!(
            typed.spec == sent.spec,
            "{file} {name}: typed read differs\nsent:   {:?}\nstored: {:?}",
            sent.spec,
            typed.spec
        );
        validate_module(&typed)
            .map_err(|e| anyhow::anyhow!("{file} {name} fails validate_module: {e:?}"))?;
    }
    ns.cleanup().await
}

#[tokio::test]
async fn spec_example_applies_and_reads_back() -> Result<()> {
    example_round_trips("spec-example.yaml").await
}

#[tokio::test]
async fn all_fields_example_applies_and_reads_back() -> Result<()> {
    example_round_trips("all-fields.yaml").await
}

#[tokio::test]
async fn brd_example_applies_and_reads_back() -> Result<()> {
    example_round_trips("brd.yaml").await
}

#[tokio::test]
async fn dir_name_defaults_to_opt() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let ns = cp.temp_namespace("crd").await?;
    let applied = apply(
        cp,
        ns.name(),
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: defaults}
spec:
  selector: {}
  moduleLoader:
    container:
      modprobe: {moduleName: brd}
      kernelMappings: [{literal: "6.1", containerImage: "r/brd:1"}]
"#,
    )?;
    ensure!(applied.ok, "{}", applied.output);
    let stored = get_module_json(cp, ns.name(), "defaults")?;
    ensure!(
        stored["spec"]["moduleLoader"]["container"]["modprobe"]["dirName"] == "/opt",
        "dirName not defaulted: {stored}"
    );
    ns.cleanup().await
}

#[tokio::test]
async fn kubectl_explain_shows_kernel_mapping_docs() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    // The OpenAPI document is republished shortly after the CRD changes.
    let out = retry(Duration::from_secs(60), || {
        let out = cp.kubectl_ok([
            "explain",
            "module.spec.moduleLoader.container.kernelMappings",
        ])?;
        ensure!(out.contains("literal"), "no fields yet: {out}");
        Ok(out)
    })
    .await?;
    for needle in [
        "KernelMapping pairs kernel versions",
        "Literal defines a literal target kernel version",
        "Regexp is a regular expression",
        "containerImage",
        "inTreeModulesToRemove",
    ] {
        ensure!(out.contains(needle), "explain lacks {needle:?}:\n{out}");
    }
    Ok(())
}

#[tokio::test]
async fn get_modules_prints_status_columns() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let ns = cp.temp_namespace("crd").await?;
    let text = std::fs::read_to_string(example_path("brd.yaml"))?;
    let applied = apply(cp, ns.name(), &text)?;
    ensure!(applied.ok, "{}", applied.output);
    let out = cp.kubectl_ok(["get", "modules", "-n", ns.name()])?;
    let header = out.lines().next().unwrap_or_default();
    for column in ["NAME", "MATCHING", "DESIRED", "AVAILABLE", "AGE"] {
        ensure!(header.contains(column), "missing column {column}: {out}");
    }
    ns.cleanup().await
}
