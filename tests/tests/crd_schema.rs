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
    apply, crd_path, example_path, get_module_json, install_crds, missing_fields, retry,
    yaml_documents,
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

/// Upstream's DRA Module shape (`ci/module-kmm-ci-dra.yaml`): it used to be refused with
/// `unknown field "spec.dra.deviceClasses[0].name"`.
#[tokio::test]
async fn dra_example_applies_and_reads_back() -> Result<()> {
    example_round_trips("dra.yaml").await
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

/// Plain client-side `kubectl apply` (what users type) stores the whole object in the
/// `last-applied-configuration` annotation, limited to 256 KiB. Creating the committed Module
/// CRD that way, under a throwaway group so the shared CRD is untouched, is a server dry run
/// that must succeed with nothing on stderr (the unstripped CRD failed: "Too long").
#[tokio::test]
async fn module_crd_applies_client_side_within_annotation_limit() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let text = std::fs::read_to_string(crd_path(kmm_common::crd::MODULE_CRD_FILE))?;
    let mut crd = yaml_documents(&text)?
        .into_iter()
        .next()
        .context("no document in the Module CRD file")?;
    let group = "client-side-apply.kmm-rs.test";
    crd["metadata"]["name"] = format!("modules.{group}").into();
    crd["spec"]["group"] = group.into();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("module-crd.json");
    std::fs::write(&file, serde_json::to_vec(&crd)?)?;
    let out = cp.kubectl(["apply", "--dry-run=server", "-f", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "client-side apply of the Module CRD: {stderr}"
    );
    Ok(())
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

/// Manifests written for upstream's controller-gen CRD keep working: an explicitly empty
/// mapping image next to a container-level one, an empty `imageRepoSecret`.
#[tokio::test]
async fn upstream_style_manifest_is_accepted() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let ns = cp.temp_namespace("crd").await?;
    let applied = apply(
        cp,
        ns.name(),
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: upstream-style}
spec:
  selector: {}
  imageRepoSecret: {}
  moduleLoader:
    container:
      containerImage: "reg/kmod:${KERNEL_FULL_VERSION}"
      modprobe: {moduleName: brd}
      kernelMappings: [{regexp: "^.+$", containerImage: ""}]
"#,
    )?;
    ensure!(applied.ok, "{}", applied.output);
    let api: Api<Module> = Api::namespaced(cp.client(), ns.name());
    let module = api.get("upstream-style").await?;
    ensure!(
        module
            .spec
            .image_repo_secret
            .as_ref()
            .map(|s| s.name.as_str())
            == Some(""),
        "{:?}",
        module.spec.image_repo_secret
    );
    ns.cleanup().await
}

/// The status subresource takes the controller's counts and `kubectl get modules` shows them.
#[tokio::test]
async fn status_subresource_feeds_printer_columns() -> Result<()> {
    use kube::api::{Patch, PatchParams};
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let ns = cp.temp_namespace("crd").await?;
    let text = std::fs::read_to_string(example_path("brd.yaml"))?;
    let applied = apply(cp, ns.name(), &text)?;
    ensure!(applied.ok, "{}", applied.output);
    let api: Api<Module> = Api::namespaced(cp.client(), ns.name());
    let status = serde_json::json!({"status": {
        "moduleLoader": {"nodesMatchingSelectorNumber": 3, "desiredNumber": 2, "availableNumber": 1},
        "conditions": [{
            "type": "Available", "status": "False", "reason": "Loading",
            "message": "1 of 2 nodes", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]
    }});
    api.patch_status("brd", &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let module = api.get("brd").await?;
    let stored = module.status.context("status")?;
    ensure!(stored.module_loader.desired_number == 2 && stored.conditions.len() == 1);
    let out = cp.kubectl_ok(["get", "modules", "-n", ns.name(), "--no-headers"])?;
    let cells: Vec<&str> = out.split_whitespace().collect();
    ensure!(
        cells.get(1..4) == Some(&["3", "2", "1"][..]),
        "columns: {out}"
    );
    ns.cleanup().await
}

/// NodeModulesConfig: cluster scoped, `nmc` short name, spec and the agent's status fields
/// round-trip through the typed client.
#[tokio::test]
async fn nmc_round_trips_spec_and_status() -> Result<()> {
    use kmm_common::{ModuleError, NodeModulesConfig};
    use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let name = format!("crd-test-node-{}", std::process::id());
    let nmc: NodeModulesConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "NodeModulesConfig",
        "metadata": {"name": name},
        "spec": {"modules": [{
            "name": "brd", "namespace": "kmm-demo", "serviceAccountName": "default",
            "imageRepoSecret": {"name": "pull"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "config": {
                "kernelVersion": "6.1.0-56-amd64",
                "containerImage": "10.0.2.2:5000/kmm-demo/brd:6.1.0-56-amd64",
                "insecurePull": true,
                "inTreeModulesToRemove": ["brd_old"],
                "modprobe": {"moduleName": "brd", "parameters": ["rd_nr=3"]}
            }
        }]}
    }))?;
    let api: Api<NodeModulesConfig> = Api::all(cp.client());
    let created = api.create(&PostParams::default(), &nmc).await?;
    let config = &created.spec.modules[0].config;
    ensure!(
        config.image_pull_policy == "IfNotPresent",
        "default: {config:?}"
    );
    ensure!(config.modprobe.dir_name == "/opt", "default: {config:?}");
    let status = serde_json::json!({"status": {"modules": [{
        "name": "brd", "namespace": "kmm-demo", "serviceAccountName": "default",
        "config": serde_json::to_value(config)?,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "image": config.container_image,
        "digest": "sha256:0123456789abcdef",
        "kernel": "6.1.0-56-amd64",
        "loadTime": "2026-01-01T00:00:01Z",
        "lastError": {"reason": "ModprobeFailed", "message": "exit 1"}
    }]}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let read = api.get(&name).await?;
    let got = read.status.context("status")?;
    let module = got.modules.first().context("status.modules[0]")?;
    ensure!(module.digest == "sha256:0123456789abcdef" && module.kernel == "6.1.0-56-amd64");
    ensure!(module.load_time.is_some() && module.config.as_ref() == Some(config));
    ensure!(
        module.last_error
            == Some(ModuleError {
                reason: "ModprobeFailed".into(),
                message: "exit 1".into()
            })
    );
    let listed = cp.kubectl_ok(["get", "nmc", &name, "-o", "name"])?;
    ensure!(
        listed.trim() == format!("nodemodulesconfig.kmm.sigs.x-k8s.io/{name}"),
        "{listed}"
    );
    api.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}
