//! PreflightValidation against the real API server and the real registry: the CRD serves
//! both versions (`kubectl get pfv`), and the real `kmm-controller` verifies each Module of
//! its namespace for a kernel no node runs. The builder is played by the test, as in
//! `controller_build`: it pushes what kaniko would and ends the Job as the Job controller
//! would.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kmm_common::{PreflightValidation, PreflightValidationModuleStatus};
use kmm_controller::build::job::{KERNEL_ANNOTATION, PREFLIGHT_LABEL, TARGET_IMAGE_ANNOTATION};
use kmm_tests::cluster::{crd_namespace, ensure_crds, finish_job, wait_for};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::module::ModuleBuilder;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn both_versions_are_served_and_kubectl_get_pfv_lists_them() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let name = format!("pfv-crd-{}", std::process::id());
    // Written as upstream's deprecated v1beta1.
    let manifest = format!(
        "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: PreflightValidation\nmetadata:\n  name: {name}\nspec:\n  kernelVersion: 6.2.0-1-amd64\n  pushBuiltImage: true\n"
    );
    let out = cp.kubectl_with_stdin(["apply", "-f", "-"], &manifest)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{stderr}");
    ensure!(
        stderr.contains("kmm.sigs.x-k8s.io/v1beta1 PreflightValidation is deprecated"),
        "no deprecation warning: {stderr}"
    );

    // The short name, in the stored version.
    let listed = cp.kubectl_ok(["get", "pfv"])?;
    ensure!(listed.contains(&name), "{listed}");
    let read = |version: &str| -> Result<serde_json::Value> {
        let out = cp.kubectl_ok([
            "get",
            &format!("preflightvalidations.{version}.kmm.sigs.x-k8s.io"),
            &name,
            "-o",
            "json",
        ])?;
        Ok(serde_json::from_str(&out)?)
    };
    let v2 = read("v1beta2")?;
    assert_eq!(v2["apiVersion"], "kmm.sigs.x-k8s.io/v1beta2");
    assert_eq!(
        v2["spec"],
        json!({"kernelVersion": "6.2.0-1-amd64", "pushBuiltImage": true})
    );

    // A status written through v1beta2 reads back through v1beta1 unchanged (one schema).
    let status = json!({"status": {"modules": [{
        "namespace": "ns", "name": "m", "verificationStatus": "Success",
        "verificationStage": "Done", "statusReason": "verified image exists",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    let api: Api<PreflightValidation> = Api::all(cp.client());
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let v1 = read("v1beta1")?;
    assert_eq!(v1["apiVersion"], "kmm.sigs.x-k8s.io/v1beta1");
    assert_eq!(v1["spec"], v2["spec"]);
    assert_eq!(v1["status"], status["status"]);
    // The typed client reads what was stored.
    let typed = api.get(&name).await?;
    assert_eq!(typed.spec.kernel_version, "6.2.0-1-amd64");
    assert_eq!(
        typed.status.unwrap().modules[0].verification_status,
        "Success"
    );

    // The schema refuses what upstream's refuses: no kernelVersion, an unknown status.
    let out = cp.kubectl_with_stdin(
        ["apply", "-f", "-"],
        &format!(
            "apiVersion: kmm.sigs.x-k8s.io/v1beta2\nkind: PreflightValidation\nmetadata:\n  name: {name}-x\nspec: {{}}\n"
        ),
    )?;
    ensure!(!out.status.success(), "accepted without kernelVersion");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("spec.kernelVersion: Required value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = json!({"status": {"modules": [{
        "namespace": "ns", "name": "m", "verificationStatus": "Maybe",
        "verificationStage": "Done", "lastTransitionTime": "2026-01-01T00:00:00Z",
    }]}});
    let err = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("verificationStatus"), "{err}");
    api.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}

/// A kernel none of the test's nodes (there are none) runs.
const KERNEL: &str = "6.3.0-77-pfv-amd64";

fn statuses(pfv: &PreflightValidation, ns: &str) -> Vec<PreflightValidationModuleStatus> {
    pfv.status
        .iter()
        .flat_map(|s| &s.modules)
        .filter(|m| m.namespace == ns)
        .cloned()
        .collect()
}

fn of<'a>(
    statuses: &'a [PreflightValidationModuleStatus],
    name: &str,
) -> Option<&'a PreflightValidationModuleStatus> {
    statuses.iter().find(|s| s.name == name)
}

#[tokio::test]
async fn each_module_is_verified_against_a_kernel_no_node_runs() -> Result<()> {
    let (cp, client, ns) = crd_namespace("pfv").await?;
    let nsn = ns.name().to_string();
    let dir = tempfile::tempdir()?;
    let ctl = ControllerProcess::start(&ControllerOptions::for_namespace(
        cp,
        &nsn,
        dir.path(),
        Vec::new(),
    ))?;
    ctl.wait_leader(WAIT).await?;

    let repo = format!("{}/{nsn}", registry_addr());
    // "present": its image for the kernel is in the registry.
    push_fake_kmod(
        &format!("{repo}/present:{KERNEL}"),
        KERNEL,
        &[("present", &[])],
        &[],
    )
    .await?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "kmod-dockerfile"},
        "data": {"dockerfile": "FROM scratch\n"},
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), &nsn)
        .patch(
            "kmod-dockerfile",
            &PatchParams::apply("kmm-test").force(),
            &Patch::Apply(&cm),
        )
        .await?;
    let selector = ("kmm-test/pfv-none", "yes");
    let modules = [
        // Covers only 6.1 kernels.
        ModuleBuilder::new("nomap").insecure_mapping(r"^6\.1\..*$", &format!("{repo}/nomap:x")),
        ModuleBuilder::new("present")
            .insecure_mapping("^.+$", &format!("{repo}/present:${{KERNEL_FULL_VERSION}}")),
        ModuleBuilder::new("missing")
            .insecure_mapping("^.+$", &format!("{repo}/missing:${{KERNEL_FULL_VERSION}}")),
        ModuleBuilder::new("built").push_mapping(json!({
            "regexp": "^.+-pfv-amd64$",
            "containerImage": format!("{repo}/built:${{KERNEL_FULL_VERSION}}"),
            "registryTLS": {"insecure": true},
            "build": {"dockerfileConfigMap": {"name": "kmod-dockerfile"}},
        })),
    ];
    for m in modules {
        kmm_tests::cluster::apply_yaml(cp, &nsn, &m.selector(selector.0, selector.1).manifest())?;
    }

    let pfvs: Api<PreflightValidation> = Api::all(client.clone());
    let pfv: PreflightValidation = serde_json::from_value(json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta2", "kind": "PreflightValidation",
        "metadata": {"name": nsn},
        "spec": {"kernelVersion": KERNEL, "pushBuiltImage": true},
    }))?;
    pfvs.create(&Default::default(), &pfv).await?;

    // Three verdicts need no Job; the buildable one waits on its build.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &nsn);
    wait_for(WAIT, || async {
        let s = statuses(&pfvs.get(&nsn).await?, &nsn);
        let built_in_progress =
            of(&s, "built").is_some_and(|b| b.verification_status == "InProgress");
        Ok(s.len() == 4 && built_in_progress)
    })
    .await
    .with_context(|| ctl.log())?;
    let s = statuses(&pfvs.get(&nsn).await?, &nsn);
    let nomap = of(&s, "nomap").unwrap();
    assert_eq!(
        (
            nomap.verification_status.as_str(),
            nomap.verification_stage.as_str()
        ),
        ("Failure", "Done")
    );
    assert_eq!(
        nomap.status_reason,
        format!("mapping not found: kernel {KERNEL} matches no kernelMapping")
    );
    let present = of(&s, "present").unwrap();
    assert_eq!(
        (
            present.verification_status.as_str(),
            present.verification_stage.as_str()
        ),
        ("Success", "Done"),
        "{present:?}"
    );
    assert!(
        present.status_reason.starts_with("verified image exists"),
        "{present:?}"
    );
    let missing = of(&s, "missing").unwrap();
    assert_eq!(missing.verification_status, "Failure", "{missing:?}");
    assert!(
        missing
            .status_reason
            .starts_with("verified image does not exist"),
        "{missing:?}"
    );
    let built = of(&s, "built").unwrap();
    assert_eq!(built.verification_stage, "Image");

    // The preflight's build Job: owned by the PreflightValidation, for the kernel.
    let job = jobs
        .list(&ListParams::default().labels(PREFLIGHT_LABEL))
        .await?
        .items;
    assert_eq!(job.len(), 1, "{job:?}");
    let job = &job[0];
    assert!(
        job.name_any().starts_with("built-pfv-build-"),
        "{}",
        job.name_any()
    );
    assert_eq!(job.owner_references()[0].name, nsn);
    assert_eq!(job.owner_references()[0].kind, "PreflightValidation");
    assert_eq!(job.annotations()[KERNEL_ANNOTATION], KERNEL);
    assert!(built.status_reason.contains(&job.name_any()), "{built:?}");
    let target = job.annotations()[TARGET_IMAGE_ANNOTATION].clone();
    assert_eq!(target, format!("{repo}/built:{KERNEL}"));

    // The builder pushes and the Job completes: the Module is verified.
    push_fake_kmod(&target, KERNEL, &[("built", &[])], &[]).await?;
    finish_job(&jobs, &job.name_any(), true).await?;
    wait_for(WAIT, || async {
        let s = statuses(&pfvs.get(&nsn).await?, &nsn);
        Ok(of(&s, "built").is_some_and(|b| b.verification_status == "Success"))
    })
    .await
    .with_context(|| ctl.log())?;
    let s = statuses(&pfvs.get(&nsn).await?, &nsn);
    let built = of(&s, "built").unwrap();
    assert_eq!(built.verification_stage, "Done");
    assert!(
        built.status_reason.starts_with("verified image exists"),
        "{built:?}"
    );
    // Earlier verdicts kept their transition times: nothing new, nothing rewritten.
    assert_eq!(of(&s, "nomap").unwrap(), nomap);
    assert!(ctl.metric("kmm_preflight_num") >= 1.0, "{}", ctl.metrics()?);

    // Upstream: a fixed Module is verified again. "missing" gets its image.
    push_fake_kmod(
        &format!("{repo}/missing:{KERNEL}"),
        KERNEL,
        &[("missing", &[])],
        &[],
    )
    .await?;
    let patch =
        json!({"spec": {"moduleLoader": {"container": {"modprobe": {"parameters": ["x=1"]}}}}});
    Api::<kmm_common::Module>::namespaced(client.clone(), &nsn)
        .patch("missing", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_for(WAIT, || async {
        let s = statuses(&pfvs.get(&nsn).await?, &nsn);
        Ok(of(&s, "missing").is_some_and(|m| m.verification_status == "Success"))
    })
    .await
    .with_context(|| ctl.log())?;

    pfvs.delete(&nsn, &DeleteParams::default()).await?;
    ns.cleanup().await
}
