//! The in-cluster sign recipe executed for real: the controller's sign Job
//! (`kmmctl sign` with the key and certificate Secrets) is run with the local
//! `kmmctl` by `kmm_tests::signjob` against the real registry. End to end
//! with build + sign, the controller's build Job runs with buildah, its
//! intermediate `…_kmm_unsigned` image is signed by the sign Job it creates
//! next, and the real agent in the QEMU node loads the module carrying our
//! signature. A sign-only Module (an `unsignedImage`, credentials for the
//! target) goes through the same executor with the simulated agent.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret};
use k8s_openapi::api::events::v1::Event;
use kmm_agent::extract::{Compression, Layer, Limits, unpack_image};
use kmm_common::Module;
use kmm_tests::agent::{AgentOptions, AgentProcess};
use kmm_tests::build_e2e::{
    BrdE2e, WAIT, pod, pod_mut, wait_images_ready_and_jobs_collected, wait_job,
};
use kmm_tests::buildah::{VolumeData, run_build_job};
use kmm_tests::cluster::{
    crd_namespace, create_node, delete_module, delete_node_and_status, node_module_status, wait_for,
};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::images::{auth_registry, registry_addr};
use kmm_tests::module::ModuleBuilder;
use kmm_tests::signjob::{complete_job_pod, kmmctl_binary, parse_sign_job, run_sign_job};
use kmm_tests::vm::KernelArtifacts;
use kmm_tests::vm_agent::{guest_registry, push_kernel_modules};
use kmmctl::registry::{RegistryOptions, parse_reference, pull};
use kmmctl::sign::trailer;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

const CN: &str = "kmm-rs sign job e2e key";
const SIGNER_IMAGE: &str = "registry.example/kmm-rs:sign-e2e";
/// Where `kmmctl package` puts brd (the kernel tree's path, under /opt).
const BRD: &str = "kernel/drivers/block/brd.ko";

/// RSA key (PEM) and self-signed certificate (DER), as upstream KMM's docs
/// make them: `openssl req -x509 ... -outform DER`.
struct Keys {
    key: PathBuf,
    cert_der: PathBuf,
    /// The serial as modinfo prints `sig_key` (AA:BB:...).
    serial: String,
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn make_keys(dir: &Path) -> Result<Keys> {
    let (key, cert_der) = (dir.join("signing_key.priv"), dir.join("signing_key.x509"));
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-nodes", "-utf8", "-sha256", "-days", "3650"])
            .args(["-batch", "-x509", "-newkey", "rsa:2048", "-subj"])
            .arg(format!("/CN={CN}"))
            .args(["-outform", "DER", "-out"])
            .arg(&cert_der)
            .arg("-keyout")
            .arg(&key),
    )?;
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-inform", "DER", "-noout", "-serial", "-in"])
            .arg(&cert_der),
    )?;
    let hex = out.trim().trim_start_matches("serial=").to_uppercase();
    let serial = hex
        .trim_start_matches("00")
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    Ok(Keys {
        key,
        cert_der,
        serial,
    })
}

/// Secrets `key` (key `key`) and `cert` (key `cert`), as
/// `kubectl create secret generic key --from-file=key=...` makes them.
async fn create_signing_secrets(client: &Client, ns: &str, keys: &Keys) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, file) in [("key", &keys.key), ("cert", &keys.cert_der)] {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                name.to_string(),
                ByteString(std::fs::read(file)?),
            )])),
            ..Default::default()
        };
        api.create(&PostParams::default(), &secret).await?;
    }
    Ok(())
}

/// The plain registry (idempotent: a running one is kept).
fn start_registry() -> Result<()> {
    let script = kmm_tests::controlplane::repo_root().join("hack/registry/start.sh");
    run_ok(Command::new("bash").arg(script)).map(drop)
}

/// `modinfo -F <field>` of a module file.
fn modinfo(field: &str, ko: &Path) -> Result<String> {
    Ok(run_ok(Command::new("modinfo").args(["-F", field]).arg(ko))?
        .trim()
        .to_string())
}

/// Pulls `reference` on the host and unpacks it as the agent does (layers in
/// order, whiteouts applied) under `dir/name`; returns the root.
async fn agent_view(
    reference: &str,
    auth: RegistryAuth,
    dir: &Path,
    name: &str,
) -> Result<PathBuf> {
    let image = pull(
        &parse_reference(reference, "latest")?,
        &RegistryOptions {
            insecure: true,
            auth,
            ..Default::default()
        },
    )
    .await?;
    let dest = dir.join(name);
    unpack_image(
        image.layers.iter().map(|l| Layer {
            name: l.digest.clone(),
            compression: Compression::Auto,
            reader: Box::new(l.blob.as_slice()),
        }),
        &dest,
        &Limits::default(),
    )?;
    Ok(dest)
}

/// Every Job of the namespace ever seen, by name: (type label, target image).
fn record_jobs(
    client: &Client,
    ns: &str,
) -> (
    Arc<Mutex<BTreeMap<String, String>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(job)) = stream.next().await {
            let kind = job
                .labels()
                .get("kmm.node.kubernetes.io/job.type")
                .cloned()
                .unwrap_or_default();
            record.lock().unwrap().insert(job.name_any(), kind);
        }
    });
    (seen, task)
}

/// (reason, type) of the Module's events, in order of creation.
async fn module_events(client: &Client, ns: &str, module: &str) -> Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<Event> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(module)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Module")
        })
        .collect();
    list.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    Ok(list
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.type_.unwrap_or_default()))
        .collect())
}

/// The sign Job's args for one file pattern, both registries plain HTTP,
/// the key and certificate on their Secret mounts.
fn sign_args(unsigned: &str, image: &str, file: &str) -> Vec<String> {
    vec![
        "sign".to_string(),
        format!("--from={unsigned}"),
        format!("--to={image}"),
        "--key=/run/secrets/kmm-signing-key/key".into(),
        "--cert=/run/secrets/kmm-signing-cert/cert".into(),
        format!("--file={file}"),
        "--from-insecure".into(),
        "--to-insecure".into(),
    ]
}

/// The sign Job's shape as the controller makes it (`sign_pod`), checked
/// against what the brief of the sign recipe promises.
fn assert_sign_job_shape(job: &Job, expected_args: &[String], with_auth: Option<&str>) {
    assert!(
        job.name_any().starts_with("brd-sign-"),
        "{}",
        job.name_any()
    );
    let labels = job.labels();
    assert_eq!(labels["kmm.node.kubernetes.io/job.type"], "sign");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "kmm-rs-controller");
    assert_eq!(job.spec.as_ref().unwrap().backoff_limit, Some(2));
    let pod = pod(job).unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let [c] = pod.containers.as_slice() else {
        panic!("one container: {:?}", pod.containers)
    };
    assert_eq!(c.name, "signer");
    assert_eq!(c.image.as_deref(), Some(SIGNER_IMAGE));
    assert_eq!(c.command.as_deref(), Some(&["kmmctl".to_string()][..]));
    assert_eq!(c.args.as_deref(), Some(expected_args));
    let parsed = parse_sign_job(job).unwrap();
    let secret = |name: &str, key: &str| VolumeData::Secret {
        name: name.into(),
        items: vec![(key.into(), key.into())],
    };
    let mut mounts = vec![
        (
            "/run/secrets/kmm-signing-key".to_string(),
            secret("key", "key"),
        ),
        (
            "/run/secrets/kmm-signing-cert".to_string(),
            secret("cert", "cert"),
        ),
    ];
    if let Some(s) = with_auth {
        mounts.push((
            "/run/secrets/kmm-registry-auth".to_string(),
            secret(s, ".dockerconfigjson"),
        ));
    }
    assert_eq!(parsed.mounts, mounts);
}

/// The brd module of the VM kernel, built from the tree `kmmctl package`
/// pushed as `<SRC_IMAGE>:<kernel>`; no RUN step, so no shell is needed.
const DOCKERFILE: &str = r#"ARG KERNEL_FULL_VERSION
ARG SRC_IMAGE
FROM ${SRC_IMAGE}:${KERNEL_FULL_VERSION} AS src
FROM scratch
ARG KERNEL_FULL_VERSION
COPY --from=src /opt/lib/modules/${KERNEL_FULL_VERSION} /opt/lib/modules/${KERNEL_FULL_VERSION}
"#;

fn build_and_sign_module(node: &str, ns: &str) -> String {
    let registry = guest_registry();
    ModuleBuilder::new("brd")
        .own_node(node)
        .parameters(&["rd_nr=3"])
        .push_mapping(json!({
            "regexp": "^.+-amd64$",
            "containerImage": format!("{registry}/${{MOD_NAMESPACE}}/${{MOD_NAME}}:${{KERNEL_FULL_VERSION}}"),
            "registryTLS": {"insecure": true},
            "build": {
                "dockerfileConfigMap": {"name": "kmod-dockerfile"},
                "buildArgs": [{"name": "SRC_IMAGE", "value": format!("{registry}/{ns}/brd-src")}],
                "baseImageRegistryTLS": {"insecure": true},
            },
            "sign": {
                "keySecret": {"name": "key"},
                "certSecret": {"name": "cert"},
                "filesToSign": [format!("/opt/lib/modules/${{KERNEL_FULL_VERSION}}/{BRD}")],
            },
        }))
        .manifest()
}

#[tokio::test]
async fn controller_build_and_sign_jobs_executed_for_real_load_our_signed_module_in_the_vm()
-> Result<()> {
    start_registry()?;
    // Built before the clock runs: the timings below are the signer's own.
    tokio::task::spawn_blocking(kmmctl_binary).await??;
    let e = BrdE2e::start("e2e-sign").await?;
    let (client, ns_name, kver, node) = (&e.client, e.ns_name.as_str(), e.kver.as_str(), &e.node);
    let keys = make_keys(e.dir.path())?;
    create_signing_secrets(client, ns_name, &keys).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns_name);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({
            "metadata": { "name": "kmod-dockerfile" },
            "data": { "dockerfile": DOCKERFILE },
        }))?,
    )
    .await?;
    let (seen_jobs, watch_task) = record_jobs(client, ns_name);
    let controller = e
        .start_controller(vec!["--signer-image".into(), SIGNER_IMAGE.into()])
        .await?;
    let t0 = Instant::now();
    kmm_tests::cluster::apply_yaml(e.cp, ns_name, &build_and_sign_module(&e.node_name, ns_name))?;

    let jobs = e.jobs();
    let build = wait_job(&jobs, "build", &controller).await?;
    println!("build Job {} after {:.1?}", build.name_any(), t0.elapsed());
    let image = format!("{}/{ns_name}/brd:{kver}", guest_registry());
    let unsigned = format!("{image}-{ns_name}_brd_kmm_unsigned");
    let destination = kmm_tests::buildah::parse_job(&build)?.args.destination;
    assert_eq!(
        destination, unsigned,
        "the build pushes upstream's intermediate image"
    );
    assert_eq!(
        build.annotations()["kmm.node.kubernetes.io/target-image"],
        unsigned
    );

    // The node waits for the final image; the Module is building.
    e.wait_building().await?;
    let modules = e.modules();

    let t = Instant::now();
    let unsigned_digest = run_build_job(client, &build).await?;
    println!(
        "build + push {:.1?}: {unsigned}@{unsigned_digest}",
        t.elapsed()
    );
    // The intermediate image is not the one the node waits for. Nor does
    // the controller sign it while the build Job has not finished: a
    // reconcile after the push (woken by touching the Module) leaves the
    // kernel at the build step.
    e.wait_waiting_for_image().await?;
    assert!(!node.module_loaded("brd").await?);
    let reconciled = || controller.metric("kmm_controller_reconcile_duration_seconds_count");
    let before = reconciled();
    let poke = serde_json::json!({ "metadata": { "annotations": { "kmm-test/poke": "1" } } });
    modules
        .patch("brd", &PatchParams::default(), &Patch::Merge(&poke))
        .await?;
    wait_for(WAIT, || async { Ok(reconciled() > before) }).await?;
    assert_eq!(
        controller.metric("kmm_controller_jobs_created_total{kind=\"sign\"}"),
        0.0
    );
    let message = modules
        .get("brd")
        .await?
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "ImagesReady"))
        .map(|c| c.message)
        .unwrap_or_default();
    assert!(
        message.contains(&format!("build for {kver} (Job {})", build.name_any())),
        "{message}"
    );

    // The kubelet's report: the build pod exited 0, the Job controller
    // completes the Job, the controller moves on to signing.
    let t = Instant::now();
    complete_job_pod(client, &build, WAIT).await?;
    let sign = wait_job(&jobs, "sign", &controller).await?;
    println!(
        "build Complete -> sign Job {}: {:.1?}",
        sign.name_any(),
        t.elapsed()
    );
    let expected = sign_args(&unsigned, &image, &format!("/opt/lib/modules/{kver}/{BRD}"));
    assert_sign_job_shape(&sign, &expected, None);
    assert_eq!(
        sign.annotations()["kmm.node.kubernetes.io/target-image"],
        image
    );
    assert_eq!(
        sign.annotations()["kmm.node.kubernetes.io/kernel-version"],
        kver
    );
    assert_eq!(
        serde_json::to_value(&pod(&sign)?.volumes)?,
        // As the API server defaults them (0644).
        serde_json::json!([
            { "name": "signing-key", "secret": { "secretName": "key", "defaultMode": 420,
                "items": [{ "key": "key", "path": "key" }] } },
            { "name": "signing-cert", "secret": { "secretName": "cert", "defaultMode": 420,
                "items": [{ "key": "cert", "path": "cert" }] } },
        ])
    );

    let t = Instant::now();
    let digest = run_sign_job(client, &sign).await?;
    println!("sign + push {:.1?}: {image}@{digest}", t.elapsed());
    e.wait_ready_label(true, "after signing").await?;
    println!("sign -> ready label: {:.1?}", t.elapsed());
    e.assert_loaded("3", &image, &digest).await?;
    // The kernel parsed our signature but does not know the key: it loads
    // and marks the module 'E' (a malformed signature is refused outright,
    // and Debian's own signature, trusted, leaves no mark).
    let taint = node
        .read("/sys/module/brd/taint")
        .await?
        .unwrap_or_default();
    assert!(taint.contains('E'), "taint {taint:?}");

    wait_images_ready_and_jobs_collected(&modules, &jobs, &[&build, &sign], &controller).await?;
    println!(
        "Module applied -> images ready, Jobs collected: {:.1?}",
        t0.elapsed()
    );

    // The images on the host: the final file carries our signature, the
    // intermediate one Debian's, over the same module bytes.
    let host = |r: &str| r.replacen(&guest_registry(), &registry_addr(), 1);
    let signed_root = agent_view(
        &host(&image),
        RegistryAuth::Anonymous,
        e.dir.path(),
        "signed",
    )
    .await?;
    let unsigned_root = agent_view(
        &host(&unsigned),
        RegistryAuth::Anonymous,
        e.dir.path(),
        "unsigned",
    )
    .await?;
    let rel = format!("opt/lib/modules/{kver}/{BRD}");
    let (signed_ko, unsigned_ko) = (signed_root.join(&rel), unsigned_root.join(&rel));
    assert_eq!(modinfo("signer", &signed_ko)?, CN);
    assert_eq!(modinfo("sig_hashalgo", &signed_ko)?, "sha256");
    assert_eq!(modinfo("sig_key", &signed_ko)?, keys.serial);
    let debian = modinfo("signer", &unsigned_ko)?;
    assert_ne!(debian, CN);
    assert_ne!(modinfo("sig_key", &unsigned_ko)?, keys.serial);
    let (a, b) = (std::fs::read(&signed_ko)?, std::fs::read(&unsigned_ko)?);
    assert_eq!(trailer::strip(&a)?, trailer::strip(&b)?);
    assert_ne!(a, b);

    // Exactly the two Jobs, and their events, no warnings.
    let seen = seen_jobs.lock().unwrap().clone();
    assert_eq!(
        seen,
        BTreeMap::from([
            (build.name_any(), "build".to_string()),
            (sign.name_any(), "sign".to_string())
        ])
    );
    let events = module_events(client, ns_name, "brd").await?;
    println!("events: {events:?}");
    assert!(events.iter().all(|(_, t)| t != "Warning"), "{events:?}");
    for reason in ["BuildCreated", "SignCreated"] {
        assert_eq!(
            events.iter().filter(|(r, _)| r == reason).count(),
            1,
            "{events:?}"
        );
    }
    watch_task.abort();
    for kind in ["build", "sign"] {
        let series = format!("kmm_controller_jobs_created_total{{kind=\"{kind}\"}}");
        assert_eq!(controller.metric(&series), 1.0, "{series}");
    }
    let log = controller.log();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    println!("controller warnings/errors: {noisy:#?}");

    e.finish(controller).await
}

fn sign_only_module(node: &str, ns: &str, kver: &str, target_registry: &str) -> String {
    let registry = registry_addr();
    ModuleBuilder::new("brd")
        .own_node(node)
        .image_repo_secret("pull-secret")
        .push_mapping(json!({
            "literal": kver,
            "containerImage": format!("{target_registry}/${{MOD_NAMESPACE}}/${{MOD_NAME}}-signed:${{KERNEL_FULL_VERSION}}"),
            "registryTLS": {"insecure": true},
            "sign": {
                "unsignedImage": format!("{registry}/{ns}/brd-unsigned:${{KERNEL_FULL_VERSION}}"),
                "unsignedImageRegistryTLS": {"insecure": true},
                "keySecret": {"name": "key"},
                "certSecret": {"name": "cert"},
                "filesToSign": ["/opt/lib/modules/${KERNEL_FULL_VERSION}/kernel/drivers/block/*.ko"],
            },
        }))
        .manifest()
}

#[tokio::test]
async fn sign_only_module_signs_its_unsigned_image_with_registry_credentials() -> Result<()> {
    let (cp, client, ns) = crd_namespace("sign-only").await?;
    start_registry()?;
    let ns_name = ns.name().to_string();
    let node_name = format!("{ns_name}-node");
    let kernel = tokio::task::spawn_blocking(KernelArtifacts::fetch).await??;
    let kver = kernel.release.clone();
    create_node(&client, &node_name, &[("kmm-test/node", &node_name)], &kver).await?;
    let dir = tempfile::tempdir()?;
    let agent = AgentProcess::start(&AgentOptions::new(
        cp,
        &node_name,
        &kver,
        dir.path().join("agent"),
    ))?;
    agent.wait_ready(WAIT).await?;

    push_kernel_modules(
        &kernel,
        &format!("{ns_name}/brd-unsigned"),
        &kver,
        &["brd"],
        &[],
    )
    .await?;
    let keys = make_keys(dir.path())?;
    create_signing_secrets(&client, &ns_name, &keys).await?;
    // The signed image goes to the registry that wants credentials: only the
    // imageRepoSecret, mounted for `--docker-config`, lets kmmctl push there.
    let (auth_reg, user, password) = auth_registry()?;
    let config = serde_json::json!({ "auths": { &auth_reg: {
        "username": user, "password": password } } });
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns_name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": { "name": "pull-secret" },
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": { ".dockerconfigjson": config.to_string() },
            }))?,
        )
        .await?;
    let (seen_jobs, watch_task) = record_jobs(&client, &ns_name);
    let controller = ControllerProcess::start(&ControllerOptions::for_namespace(
        cp,
        &ns_name,
        dir.path(),
        vec!["--signer-image".into(), SIGNER_IMAGE.into()],
    ))?;
    controller.wait_leader(WAIT).await?;
    let yaml = sign_only_module(&node_name, &ns_name, &kver, &auth_reg);
    kmm_tests::cluster::apply_yaml(cp, &ns_name, &yaml)?;

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns_name);
    let sign = wait_job(&jobs, "sign", &controller).await?;
    let image = format!("{auth_reg}/{ns_name}/brd-signed:{kver}");
    let unsigned = format!("{}/{ns_name}/brd-unsigned:{kver}", registry_addr());
    let mut expected = sign_args(
        &unsigned,
        &image,
        &format!("/opt/lib/modules/{kver}/kernel/drivers/block/*.ko"),
    );
    expected.push("--docker-config=/run/secrets/kmm-registry-auth/.dockerconfigjson".into());
    assert_sign_job_shape(&sign, &expected, Some("pull-secret"));
    println!(
        "sign Job {}: {}",
        sign.name_any(),
        serde_json::to_string(&sign.spec.as_ref().unwrap().template)?
    );
    let status = || node_module_status(&client, &node_name, &ns_name, "brd");
    wait_for(WAIT, || async {
        Ok(status().await?.is_some_and(|s| {
            s.last_error
                .as_ref()
                .is_some_and(|e| e.reason == "WaitingForImage")
        }))
    })
    .await
    .with_context(|| format!("not WaitingForImage; agent log:\n{}", agent.log()))?;

    // Failures are the signer's own words; nothing is pushed.
    let mut bad = sign.clone();
    let c = &mut pod_mut(&mut bad)?.containers[0];
    let pattern = format!("/opt/lib/modules/{kver}/extra/*.ko");
    c.args.as_mut().unwrap()[5] = format!("--file={pattern}");
    let err = format!("{:#}", run_sign_job(&client, &bad).await.unwrap_err());
    assert!(
        err.contains("--- stderr ---") && err.contains(&format!("--file '{pattern}' matches no")),
        "{err}"
    );
    let mut bad = sign.clone();
    pod_mut(&mut bad)?.volumes.as_mut().unwrap()[0]
        .secret
        .as_mut()
        .unwrap()
        .secret_name = Some("nope".into());
    let err = format!("{:#}", run_sign_job(&client, &bad).await.unwrap_err());
    assert!(err.contains(&format!("Secret {ns_name}/nope")), "{err}");
    // Without the registry credentials the push is refused.
    let mut bad = sign.clone();
    let pod = pod_mut(&mut bad)?;
    pod.volumes.as_mut().unwrap().pop();
    pod.containers[0].volume_mounts.as_mut().unwrap().pop();
    pod.containers[0].args.as_mut().unwrap().pop();
    let err = format!("{:#}", run_sign_job(&client, &bad).await.unwrap_err());
    assert!(err.contains("--- stderr ---"), "{err}");
    assert!(!err.contains("--docker-config"), "{err}");

    let digest = run_sign_job(&client, &sign).await?;
    let key = kmm_common::ready_label(&ns_name, "brd");
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for(WAIT, || async {
        Ok(nodes.get(&node_name).await?.labels().contains_key(&key))
    })
    .await
    .with_context(|| format!("{key} after signing; agent log:\n{}", agent.log()))?;
    let st = status().await?.unwrap();
    assert_eq!(
        (st.image.as_str(), st.digest.as_str()),
        (image.as_str(), digest.as_str())
    );
    let modules: Api<Module> = Api::namespaced(client.clone(), &ns_name);
    wait_images_ready_and_jobs_collected(&modules, &jobs, &[&sign], &controller).await?;

    let signed_root = agent_view(
        &image,
        RegistryAuth::Basic(user.clone(), password.clone()),
        dir.path(),
        "signed",
    )
    .await?;
    let ko = signed_root.join(format!("opt/lib/modules/{kver}/{BRD}"));
    assert_eq!(modinfo("signer", &ko)?, CN);
    assert_eq!(modinfo("sig_hashalgo", &ko)?, "sha256");
    assert_eq!(modinfo("sig_key", &ko)?, keys.serial);
    assert_eq!(
        seen_jobs.lock().unwrap().values().collect::<Vec<_>>(),
        vec!["sign"],
        "only the sign Job"
    );
    let events = module_events(&client, &ns_name, "brd").await?;
    println!("events: {events:?}");
    assert!(events.iter().all(|(_, t)| t != "Warning"), "{events:?}");
    assert_eq!(
        events.iter().filter(|(r, _)| r == "SignCreated").count(),
        1,
        "{events:?}"
    );
    assert!(
        !events.iter().any(|(r, _)| r == "BuildCreated"),
        "{events:?}"
    );
    watch_task.abort();

    delete_module(&client, &ns_name, "brd").await?;
    wait_for(WAIT, || async {
        Ok(!nodes.get(&node_name).await?.labels().contains_key(&key))
    })
    .await
    .with_context(|| format!("unload; agent log:\n{}", agent.log()))?;
    drop(controller);
    drop(agent);
    delete_node_and_status(&client, &node_name).await;
    ns.cleanup().await
}
