//! The in-cluster build recipe executed for real: a build Job in upstream KMM's
//! kaniko shape is run with Debian's buildah (`kmm_tests::buildah`) against the
//! real registry, from its ConfigMap and Secrets in the real API server.
//! Executor tests use a hand-made Job of that shape; the end-to-end test takes
//! the Job the controller creates and ends with the module loaded by the real
//! agent in the QEMU node.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Instant;

use anyhow::{Context, Result};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kmm_tests::build_e2e::{BrdE2e, pod, pod_mut, wait_images_ready_and_jobs_collected, wait_job};
use kmm_tests::buildah::{Buildah, run_build_job, run_build_job_with};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::images::{auth_registry, registry_addr};
use kmm_tests::module::ModuleBuilder;
use kmm_tests::vm_agent::guest_registry;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The build recipe both tests use. The builder stage runs a real `RUN` (busybox
/// from the base image): it needs the build secret and every build arg, and
/// leaves their trace as firmware files next to the module tree.
const DOCKERFILE: &str = r#"ARG KERNEL_FULL_VERSION
ARG BUILDER_IMAGE
FROM ${BUILDER_IMAGE}:${KERNEL_FULL_VERSION} AS builder
ARG KERNEL_FULL_VERSION
ARG MOD_NAME
ARG MOD_NAMESPACE
ARG FLAVOUR
RUN test -s /run/secrets/build-token/token \
 && mkdir -p /out/firmware/kmm-build \
 && cp -a /opt/lib /out/lib \
 && echo "$FLAVOUR $MOD_NAMESPACE/$MOD_NAME $KERNEL_FULL_VERSION" > /out/firmware/kmm-build/info \
 && sha256sum /run/secrets/build-token/token | cut -c1-16 > /out/firmware/kmm-build/token.sha
FROM scratch
ARG KERNEL_FULL_VERSION
COPY --from=builder /out/lib/modules/${KERNEL_FULL_VERSION} /opt/lib/modules/${KERNEL_FULL_VERSION}
COPY --from=builder /out/firmware /firmware
"#;

const TOKEN: &str = "s3cr3t-build-token";

/// First 16 hex digits of sha256(TOKEN), as busybox `sha256sum | cut -c1-16` prints it.
fn token_sha() -> Result<String> {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(TOKEN.as_bytes())?;
            c.wait_with_output()
        })?;
    Ok(String::from_utf8(out.stdout)?[..16].to_string())
}

/// Pushes a builder base: `from` (a kmod image with /opt/lib/modules, or
/// `scratch` plus `tree` files) with busybox as /bin/sh, so RUN steps work.
/// Returns `reference`.
async fn push_builder_base(
    from: Option<&str>,
    tree: &[(&str, &[u8])],
    reference: &str,
) -> Result<String> {
    let buildah = Buildah::new()?;
    let ctx = buildah.work_dir().join("ctx");
    std::fs::create_dir_all(ctx.join("bin"))?;
    std::fs::copy("/bin/busybox", ctx.join("bin/busybox"))
        .context("/bin/busybox (Debian busybox-static)")?;
    std::os::unix::fs::symlink("busybox", ctx.join("bin/sh"))?;
    let mut dockerfile = format!("FROM {}\nCOPY bin /bin\n", from.unwrap_or("scratch"));
    if !tree.is_empty() {
        for (path, body) in tree {
            let p = ctx.join("tree").join(path);
            std::fs::create_dir_all(p.parent().unwrap())?;
            std::fs::write(p, body)?;
        }
        dockerfile.push_str("COPY tree /\n");
    }
    std::fs::write(ctx.join("Dockerfile"), dockerfile)?;
    let s = |v: &str| v.to_string();
    let tag = s("localhost/kmm-test/builder-base:latest");
    buildah
        .run(&[
            s("bud"),
            s("--tls-verify=false"),
            s("-t"),
            tag.clone(),
            ctx.display().to_string(),
        ])
        .await?;
    buildah
        .push(&[
            s("push"),
            s("--tls-verify=false"),
            tag,
            format!("docker://{reference}"),
        ])
        .await?;
    Ok(reference.to_string())
}

/// Every regular file of an image (all layers applied in order): path -> bytes.
async fn image_files(reference: &str, auth: &RegistryAuth) -> Result<BTreeMap<String, Vec<u8>>> {
    let reference: oci_client::Reference = reference.parse()?;
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    client
        .auth(&reference, auth, oci_client::RegistryOperation::Pull)
        .await?;
    let (manifest, _) = client
        .pull_manifest_raw(&reference, auth, &[DOCKER_MANIFEST, OCI_MANIFEST])
        .await?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
    let mut files = BTreeMap::new();
    for layer in manifest["layers"].as_array().context("no layers")? {
        let descriptor = oci_client::manifest::OciDescriptor {
            digest: layer["digest"]
                .as_str()
                .context("layer digest")?
                .to_string(),
            ..Default::default()
        };
        let mut blob = Vec::new();
        client.pull_blob(&reference, &descriptor, &mut blob).await?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(blob.as_slice()));
        for entry in tar.entries()? {
            let mut entry = entry?;
            if entry.header().entry_type().is_file() {
                let path = entry.path()?.display().to_string();
                let mut body = Vec::new();
                entry.read_to_end(&mut body)?;
                files.insert(path.trim_start_matches("./").to_string(), body);
            }
        }
    }
    Ok(files)
}

/// The media type of an image's manifest (as the registry serves it).
async fn manifest_type(reference: &str, auth: &RegistryAuth) -> Result<String> {
    let reference: oci_client::Reference = reference.parse()?;
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let (manifest, _) = client
        .pull_manifest_raw(&reference, auth, &[DOCKER_MANIFEST, OCI_MANIFEST])
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&manifest)?;
    Ok(v["mediaType"].as_str().unwrap_or_default().to_string())
}

async fn create_config_map(client: &Client, ns: &str, obj: serde_json::Value) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &serde_json::from_value(obj)?)
        .await?;
    Ok(())
}

async fn create_secret(client: &Client, ns: &str, obj: serde_json::Value) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &serde_json::from_value(obj)?)
        .await?;
    Ok(())
}

/// The recipe's objects: the Dockerfile ConfigMap (key `dockerfile`, as
/// upstream KMM names it) and the build secret.
async fn create_recipe_objects(client: &Client, ns: &str, dockerfile: &str) -> Result<()> {
    create_config_map(
        client,
        ns,
        serde_json::json!({
            "metadata": { "name": "kmod-dockerfile" },
            "data": { "dockerfile": dockerfile },
        }),
    )
    .await?;
    create_secret(
        client,
        ns,
        serde_json::json!({
            "metadata": { "name": "build-token" },
            "stringData": { "token": TOKEN },
        }),
    )
    .await?;
    Ok(())
}

async fn create_pull_secret(
    client: &Client,
    ns: &str,
    registry: &str,
    user: &str,
    password: &str,
) -> Result<()> {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({ "auths": { registry: { "auth": auth } } }).to_string();
    create_secret(
        client,
        ns,
        serde_json::json!({
            "metadata": { "name": "pull-secret" },
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": { ".dockerconfigjson": config },
        }),
    )
    .await?;
    Ok(())
}

/// A build Job exactly as the controller writes it (upstream KMM's kaniko shape).
fn kaniko_job(ns: &str, args: &[String], pull_secret: Option<&str>) -> Result<Job> {
    let mut volumes = vec![
        serde_json::json!({ "name": "dockerfile", "configMap": {
            "name": "kmod-dockerfile", "items": [{ "key": "dockerfile", "path": "Dockerfile" }] } }),
        serde_json::json!({ "name": "secret-build-token", "secret": { "secretName": "build-token" } }),
    ];
    let mut mounts = vec![
        serde_json::json!({ "name": "dockerfile", "mountPath": "/workspace", "readOnly": true }),
        serde_json::json!({ "name": "secret-build-token", "mountPath": "/run/secrets/build-token", "readOnly": true }),
    ];
    if let Some(s) = pull_secret {
        volumes.push(
            serde_json::json!({ "name": "kaniko-pull-secret", "secret": {
            "secretName": s, "items": [{ "key": ".dockerconfigjson", "path": "config.json" }] } }),
        );
        mounts.push(serde_json::json!({ "name": "kaniko-pull-secret", "mountPath": "/kaniko/.docker", "readOnly": true }));
    }
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": "m-build-abc12", "namespace": ns, "labels": {
            "kmm.node.kubernetes.io/module.name": "m",
            "kmm.node.kubernetes.io/build.hash": "abc12",
            "kmm.node.kubernetes.io/job.type": "build",
            "app.kubernetes.io/managed-by": "kmm-rs" } },
        "spec": { "backoffLimit": 0, "template": { "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "kaniko",
                "image": "gcr.io/kaniko-project/executor:latest",
                "args": args,
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        } } },
    }))?)
}

struct Executor {
    client: Client,
    ns: TestNamespace,
}

impl Executor {
    async fn new(prefix: &str) -> Result<Self> {
        let cp = ControlPlane::shared().await?;
        let client = cp.client();
        let ns = cp.temp_namespace(prefix).await?;
        Ok(Self { client, ns })
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }
}

fn kaniko_args(destination: &str, build_args: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--dockerfile=/workspace/Dockerfile".to_string(),
        "--context=dir:///workspace".to_string(),
        format!("--destination={destination}"),
    ];
    v.extend(
        build_args
            .iter()
            .map(|(k, val)| format!("--build-arg={k}={val}")),
    );
    v.extend(extra.iter().map(|s| (*s).to_string()));
    v
}

#[tokio::test]
async fn hand_made_kaniko_job_builds_with_secrets_and_pushes_with_its_pull_secret() -> Result<()> {
    let e = Executor::new("build-exec").await?;
    let kver = "6.1.0-56-amd64";
    let base = push_builder_base(
        None,
        &[
            (
                &format!("opt/lib/modules/{kver}/extra/m.ko"),
                b"\x7fELF-fake",
            ),
            (
                &format!("opt/lib/modules/{kver}/modules.dep"),
                b"extra/m.ko:\n",
            ),
        ],
        &format!("{}/{}/builder:{kver}", registry_addr(), e.ns()),
    )
    .await?;
    let builder_repo = base.rsplit_once(':').unwrap().0;
    create_recipe_objects(&e.client, e.ns(), DOCKERFILE).await?;
    // The destination needs credentials: only the pull secret's authfile can push there.
    let (auth_reg, user, password) = auth_registry()?;
    create_pull_secret(&e.client, e.ns(), &auth_reg, &user, &password).await?;
    let dest = format!("{auth_reg}/{}/m:{kver}", e.ns());
    let args = kaniko_args(
        &dest,
        &[
            ("BUILDER_IMAGE", builder_repo),
            ("FLAVOUR", "turbo"),
            ("KERNEL_FULL_VERSION", kver),
            ("KERNEL_VERSION", kver),
            ("MOD_NAME", "m"),
            ("MOD_NAMESPACE", e.ns()),
        ],
        &["--insecure", "--insecure-pull"],
    );
    let job = kaniko_job(e.ns(), &args, Some("pull-secret"))?;
    let digest = run_build_job(&e.client, &job).await?;
    assert!(digest.starts_with("sha256:"), "{digest}");

    let auth = RegistryAuth::Basic(user, password);
    assert_eq!(
        manifest_type(&dest, &auth).await?,
        DOCKER_MANIFEST,
        "kaniko's format"
    );
    let files = image_files(&dest, &auth).await?;
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        vec![
            "firmware/kmm-build/info",
            "firmware/kmm-build/token.sha",
            &format!("opt/lib/modules/{kver}/extra/m.ko"),
            &format!("opt/lib/modules/{kver}/modules.dep"),
        ],
        "only the final stage, no busybox, no secret"
    );
    assert_eq!(
        String::from_utf8(files["firmware/kmm-build/info"].clone())?,
        format!("turbo {}/m {kver}\n", e.ns())
    );
    assert_eq!(
        String::from_utf8(files["firmware/kmm-build/token.sha"].clone())?.trim(),
        token_sha()?
    );

    // Without the pull secret the same push is refused by the registry, and the
    // error carries buildah's own words.
    let job = kaniko_job(e.ns(), &args, None)?;
    let err = format!("{:#}", run_build_job(&e.client, &job).await.unwrap_err());
    assert!(
        err.contains("buildah push") && err.contains("--- stderr ---"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("authentication required"),
        "{err}"
    );
    e.ns.cleanup().await
}

#[tokio::test]
async fn failing_recipe_and_unknown_job_shapes_are_errors_not_silent_successes() -> Result<()> {
    let e = Executor::new("build-fail").await?;
    create_recipe_objects(&e.client, e.ns(), "FROM scratch\nCOPY does-not-exist /x\n").await?;
    let dest = format!("{}/{}/never:1", registry_addr(), e.ns());
    let job = kaniko_job(e.ns(), &kaniko_args(&dest, &[], &["--insecure"]), None)?;
    let err = format!("{:#}", run_build_job(&e.client, &job).await.unwrap_err());
    assert!(
        err.contains("buildah bud") && err.contains("does-not-exist"),
        "{err}"
    );

    // A flag the mapping does not know is refused before anything runs.
    let job = kaniko_job(e.ns(), &kaniko_args(&dest, &[], &["--cache=true"]), None)?;
    let err = format!("{:#}", run_build_job(&e.client, &job).await.unwrap_err());
    assert!(
        err.contains("unsupported kaniko arg \"--cache=true\""),
        "{err}"
    );

    // A missing ConfigMap is an API error naming it.
    let mut job = kaniko_job(e.ns(), &kaniko_args(&dest, &[], &[]), None)?;
    pod_mut(&mut job)?.volumes.as_mut().unwrap()[0]
        .config_map
        .as_mut()
        .unwrap()
        .name = "nope".into();
    let err = format!(
        "{:#}",
        run_build_job_with(&e.client, &job, &Default::default())
            .await
            .unwrap_err()
    );
    assert!(err.contains(&format!("ConfigMap {}/nope", e.ns())), "{err}");
    e.ns.cleanup().await
}

/// The Module of the end-to-end test: brd, built from [`DOCKERFILE`] for the
/// node's kernel, pushed where the guest's agent pulls it.
fn build_module(node: &str, ns: &str) -> String {
    let registry = guest_registry();
    ModuleBuilder::new("brd")
        .own_node(node)
        .parameters(&["rd_nr=2"])
        .merge(json!({"spec": {"moduleLoader": {"container": {"modprobe": {"firmwarePath": "/firmware"}}}}}))
        .push_mapping(json!({
            "regexp": "^.+-amd64$",
            "containerImage": format!("{registry}/${{MOD_NAMESPACE}}/${{MOD_NAME}}:${{KERNEL_FULL_VERSION}}"),
            "registryTLS": {"insecure": true},
            "build": {
                "dockerfileConfigMap": {"name": "kmod-dockerfile"},
                "buildArgs": [
                    {"name": "BUILDER_IMAGE", "value": format!("{registry}/{ns}/builder")},
                    {"name": "FLAVOUR", "value": "turbo"},
                ],
                "secrets": [{"name": "build-token"}],
                "baseImageRegistryTLS": {"insecure": true},
            },
        }))
        .manifest()
}

#[tokio::test]
async fn controller_build_job_executed_with_buildah_is_loaded_by_the_agent_in_the_vm() -> Result<()>
{
    let e = BrdE2e::start("e2e-build").await?;
    let (client, ns_name, kver) = (&e.client, e.ns_name.as_str(), e.kver.as_str());

    // The builder base: brd and its module tree for the VM's kernel (kmmctl's
    // packaging), plus busybox so the recipe's RUN step has a shell.
    let src = format!("{}/{ns_name}/brd-src:{kver}", registry_addr());
    push_builder_base(
        Some(&src),
        &[],
        &format!("{}/{ns_name}/builder:{kver}", registry_addr()),
    )
    .await?;
    create_recipe_objects(client, ns_name, DOCKERFILE).await?;
    let controller = e.start_controller(vec![]).await?;

    kmm_tests::cluster::apply_yaml(e.cp, ns_name, &build_module(&e.node_name, ns_name))?;
    let jobs = e.jobs();
    let job = wait_job(&jobs, "build", &controller).await?;

    // The Job's shape: upstream KMM's kaniko Job.
    let labels = job.labels();
    assert_eq!(labels["kmm.node.kubernetes.io/module.name"], "brd");
    assert_eq!(labels["kmm.node.kubernetes.io/job.type"], "build");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "kmm-rs-controller");
    assert!(!labels["kmm.node.kubernetes.io/build.hash"].is_empty());
    let pod = pod(&job)?;
    let [c] = pod.containers.as_slice() else {
        panic!("one container: {:?}", pod.containers)
    };
    assert_eq!(c.name, "kaniko");
    assert_eq!(
        c.image.as_deref(),
        Some("gcr.io/kaniko-project/executor:latest")
    );
    let image = format!("{}/{ns_name}/brd:{kver}", guest_registry());
    let builder = format!("{}/{ns_name}/builder", guest_registry());
    assert_eq!(
        c.args.clone().unwrap_or_default(),
        kaniko_args(
            &image,
            &[
                ("BUILDER_IMAGE", &builder),
                ("FLAVOUR", "turbo"),
                ("KERNEL_FULL_VERSION", kver),
                ("KERNEL_VERSION", kver),
                ("MOD_NAME", "brd"),
                ("MOD_NAMESPACE", ns_name),
            ],
            &["--insecure", "--insecure-pull"],
        )
    );
    let parsed = kmm_tests::buildah::parse_job(&job)?;
    let mounts: Vec<(String, kmm_tests::buildah::VolumeData)> = parsed
        .mounts
        .iter()
        .map(|m| (m.path.clone(), m.data.clone()))
        .collect();
    assert_eq!(
        mounts,
        vec![
            (
                "/workspace".to_string(),
                kmm_tests::buildah::VolumeData::ConfigMap {
                    name: "kmod-dockerfile".into(),
                    items: vec![("dockerfile".into(), "Dockerfile".into())],
                }
            ),
            (
                "/run/secrets/build-token".to_string(),
                kmm_tests::buildah::VolumeData::Secret {
                    name: "build-token".into(),
                    items: vec![],
                }
            ),
        ]
    );

    // Before the build the node waits for the image: no pull failure, nothing loaded.
    e.wait_building().await?;

    // The builder runs the Job's recipe; the agent picks the image up.
    let t = Instant::now();
    let digest = run_build_job(client, &job).await?;
    println!("build + push {:.1?}: {image}@{digest}", t.elapsed());
    e.wait_ready_label(true, "after the build").await?;
    println!("build -> ready label: {:.1?}", t.elapsed());
    e.assert_loaded("2", &image, &digest).await?;
    assert_eq!(
        e.node.read("/var/lib/firmware/kmm-build/info").await?,
        Some(format!("turbo {ns_name}/brd {kver}")),
        "the recipe's build args reached the loaded image"
    );
    assert_eq!(
        e.node.read("/var/lib/firmware/kmm-build/token.sha").await?,
        Some(token_sha()?),
        "the build secret was mounted for the RUN step"
    );

    // The controller sees the image: ImagesReady, and the build Job is collected.
    wait_images_ready_and_jobs_collected(&e.modules(), &jobs, &[&job], &controller).await?;
    e.finish(controller).await
}
