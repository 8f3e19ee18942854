//! The deployed RBAC and admission policies are enough for the real binaries:
//! `kmm-agent` (simulated kernel) runs with a kmm-agent token bound to a Pod on
//! its node, `kmm-controller` with a kmm-controller token and its Lease in
//! kmm-system, neither with the admin kubeconfig. One Module with an
//! imageRepoSecret (authenticated registry) and a device plugin goes through
//! load, status, device-plugin objects and deletion; nothing is forbidden.
//! The agent may read no Secret: it gets the pull secret from the
//! controller's HTTPS server (`--pull-secrets controller`, a token for the
//! controller's audience bound to its Pod, the controller's CA).
//!
//! Needs the control-plane binaries and the registries (`hack/registry/start.sh`).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, ServiceAccount};
use kmm_common::{Module, NodeModulesConfig};
use kmm_controller::webhook::certs::ServingCert;
use kmm_tests::agent::{AgentOptions, AgentProcess};
use kmm_tests::cluster::{create_node, delete_node, wait_for};
use kmm_tests::controller::controller_binary;
use kmm_tests::controlplane::{ControlPlane, TestNamespace, run_dir};
use kmm_tests::deploy::install_deploy;
use kmm_tests::identity::sa_token;
use kmm_tests::images::{auth_registry, push_fake_kmod_as};
use kmm_tests::module::ModuleBuilder;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const KVER: &str = "6.1.0-90-sim-amd64";
const WAIT: Duration = Duration::from_secs(60);
const SYSTEM_NS: &str = "kmm-system";
const LEASE: &str = "kmm-controller-leader";
/// The audience the controller's pull-secret endpoint accepts (its default).
const CONTROLLER_AUDIENCE: &str = "kmm-controller";

/// A token for `sa` in kmm-system, bound to `pod` when given.
async fn token(client: &Client, sa: &str, pod: Option<&Pod>) -> Result<String> {
    let bound = pod.map_or(serde_json::Value::Null, |p| {
        json!({"kind": "Pod", "apiVersion": "v1", "name": p.metadata.name, "uid": p.metadata.uid})
    });
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [], "expirationSeconds": 3600, "boundObjectRef": bound},
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), SYSTEM_NS)
        .create_token_request(sa, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")
}

/// A kubeconfig with only `token` (no client certificate) for the test API server.
fn token_kubeconfig(cp: &ControlPlane, dir: &Path, who: &str, token: &str) -> Result<PathBuf> {
    let server = cp.config().cluster_url.to_string();
    let ca = run_dir().join("pki/ca.crt");
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kmm", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": who, "user": {"token": token}}],
        "contexts": [{"name": who, "context": {"cluster": "kmm", "user": who}}],
        "current-context": who,
    });
    let path = dir.join(format!("{who}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}

struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    /// Serves its HTTPS endpoints on 127.0.0.1:`port` with the certificate in `cert_dir`.
    fn start(
        kubeconfig: &Path,
        ns: &str,
        identity: &str,
        dir: &Path,
        port: u16,
        cert_dir: &Path,
    ) -> Result<Self> {
        let log = dir.join("controller.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(controller_binary()?)
            .args(["--namespace", ns, "--lease-namespace", SYSTEM_NS])
            .args(["--lease-name", LEASE, "--identity", identity])
            .args([
                "--lease-duration-seconds",
                "4",
                "--lease-renew-seconds",
                "1",
            ])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--webhook-addr", &format!("127.0.0.1:{port}")])
            .arg("--webhook-cert-dir")
            .arg(cert_dir)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("spawning kmm-controller")?;
        Ok(Self { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn docker_config_secret(registry: &str, user: &str, password: &str) -> Result<Secret> {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = json!({"auths": {registry: {"auth": auth}}}).to_string();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "pull"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config},
    }))?)
}

fn module_yaml(node: &str, image: &str) -> String {
    ModuleBuilder::new("idmod")
        .own_node(node)
        .image_repo_secret("pull")
        .insecure_mapping("^.+-sim-amd64$", image)
        .device_plugin("registry.invalid/kmm/dp:1")
        .manifest()
}

#[tokio::test]
async fn agent_and_controller_work_with_only_their_deployed_permissions() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_deploy(cp).await?;
    let ns = cp.temp_namespace("deploy-ids").await?;
    let node = format!("{}-node", ns.name());
    let pod_name = format!("{}-agent", ns.name());
    let admin = cp.client();
    let result = run(cp, &admin, &ns, &node, &pod_name).await;

    let _ = Api::<Pod>::namespaced(admin.clone(), SYSTEM_NS)
        .delete(&pod_name, &DeleteParams::default().grace_period(0))
        .await;
    // The Module may still hold its finalizer if the test failed midway.
    let _ = cp.kubectl([
        "patch",
        "module",
        "idmod",
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    delete_node(&admin, &node).await;
    let _ = Api::<NodeModulesConfig>::all(admin)
        .delete(&node, &DeleteParams::default())
        .await;
    ns.cleanup().await?;
    result
}

async fn run(
    cp: &ControlPlane,
    admin: &Client,
    ns: &TestNamespace,
    node: &str,
    pod_name: &str,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    create_node(admin, node, &[("kmm-test/node", node)], KVER).await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod_name},
        "spec": {"nodeName": node, "serviceAccountName": "kmm-agent",
                 "containers": [{"name": "agent", "image": "registry.invalid/kmm-rs:dev"}]},
    }))?;
    let pod = Api::<Pod>::namespaced(admin.clone(), SYSTEM_NS)
        .create(&PostParams::default(), &pod)
        .await?;
    let agent_kc = token_kubeconfig(
        cp,
        dir.path(),
        "kmm-agent",
        &token(admin, "kmm-agent", Some(&pod)).await?,
    )?;
    let controller_kc = token_kubeconfig(
        cp,
        dir.path(),
        "kmm-controller",
        &token(admin, "kmm-controller", None).await?,
    )?;

    let (registry, user, password) = auth_registry()?;
    let image = format!("{registry}/{}/idmod:{KVER}", ns.name());
    let auth = oci_client::secrets::RegistryAuth::Basic(user.clone(), password.clone());
    push_fake_kmod_as(&image, KVER, &[("idmod", &[])], &[], auth).await?;
    Api::<Secret>::namespaced(admin.clone(), ns.name())
        .create(
            &PostParams::default(),
            &docker_config_secret(&registry, &user, &password)?,
        )
        .await?;

    // The controller's serving certificate (as cert-manager would issue it)
    // and the agent's token for the controller's audience.
    let cert = ServingCert::self_signed(&["127.0.0.1".into()])?;
    let cert_dir = dir.path().join("certs");
    std::fs::create_dir_all(&cert_dir)?;
    std::fs::write(cert_dir.join("tls.crt"), &cert.cert_pem)?;
    std::fs::write(cert_dir.join("tls.key"), &cert.key_pem)?;
    let ca_file = cert_dir.join("ca.crt");
    std::fs::write(&ca_file, cert.ca_pem.clone().unwrap_or_default())?;
    let port = kmm_tests::agent::free_port()?;
    let controller_token = dir.path().join("controller-token");
    std::fs::write(
        &controller_token,
        sa_token(
            admin,
            SYSTEM_NS,
            "kmm-agent",
            Some(&pod),
            &[CONTROLLER_AUDIENCE],
        )
        .await?,
    )?;

    let identity = format!("deploy-ids-{}", std::process::id());
    let controller = Controller::start(
        &controller_kc,
        ns.name(),
        &identity,
        dir.path(),
        port,
        &cert_dir,
    )?;
    let agent = AgentProcess::start_with_args(
        &AgentOptions {
            node: node.to_string(),
            kernel_release: KVER.into(),
            state_dir: dir.path().join("state"),
            kubeconfig: agent_kc,
            resync_seconds: 2,
        },
        &[
            "--pull-secrets",
            "controller",
            "--controller-url",
            &format!("https://127.0.0.1:{port}"),
            "--controller-ca-file",
            ca_file.to_str().context("non-UTF-8 path")?,
            "--controller-token-file",
            controller_token.to_str().context("non-UTF-8 path")?,
        ],
    )?;
    agent.wait_ready(WAIT).await?;
    let logs = || {
        format!(
            "agent log:\n{}\ncontroller log:\n{}",
            agent.log(),
            controller.log()
        )
    };

    let out = cp.kubectl_with_stdin(
        ["apply", "-n", ns.name(), "-f", "-"],
        &module_yaml(node, &image),
    )?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let nodes: Api<Node> = Api::all(admin.clone());
    let ready = kmm_common::ready_label(ns.name(), "idmod");
    let modules: Api<Module> = Api::namespaced(admin.clone(), ns.name());
    let nmcs: Api<NodeModulesConfig> = Api::all(admin.clone());
    let r = wait_for(WAIT, || async {
        // Agent: pulled with the secret, labelled its Node, reported in its NMC.
        let labelled = nodes
            .get(node)
            .await?
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(&ready);
        let reported = nmcs
            .get_opt(node)
            .await?
            .and_then(|n| n.status)
            .is_some_and(|s| {
                s.modules
                    .iter()
                    .any(|m| m.item.name == "idmod" && m.last_error.is_none())
            });
        // Controller: finalizer and a status that counts the loaded node.
        let module = modules.get("idmod").await?;
        let finalized = module
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&kmm_common::MODULE_FINALIZER.to_string());
        let counted =
            serde_json::to_value(&module.status)?["moduleLoader"]["availableNumber"] == json!(1);
        Ok(labelled && reported && finalized && counted)
    })
    .await;
    r.with_context(logs)?;

    // Controller: device-plugin DaemonSet and ServiceAccount applied, the
    // namespace labelled, the Lease in kmm-system held under its identity.
    let dss: Api<DaemonSet> = Api::namespaced(admin.clone(), ns.name());
    wait_for(WAIT, || async {
        Ok(dss.get_opt("idmod-device-plugin").await?.is_some())
    })
    .await
    .with_context(logs)?;
    // The controller's own selector for its device-plugin objects.
    let selector = kmm_controller::plugin::Kind::DevicePlugin.label_selector("idmod");
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns.name());
    let dp_sas = sas
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?;
    assert_eq!(
        dp_sas.items.len(),
        1,
        "device-plugin ServiceAccount; {}",
        logs()
    );
    let ns_obj = Api::<Namespace>::all(admin.clone()).get(ns.name()).await?;
    assert!(
        ns_obj
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(kmm_common::NAMESPACE_CONTAINS_MODULES_LABEL),
        "namespace not labelled; {}",
        logs()
    );
    let lease = Api::<Lease>::namespaced(admin.clone(), SYSTEM_NS)
        .get(LEASE)
        .await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(identity.as_str())
    );

    // Deletion: the controller collects the DaemonSet and releases the
    // finalizer, the agent unloads and removes its label.
    modules.delete("idmod", &DeleteParams::default()).await?;
    wait_for(WAIT, || async {
        let gone = modules.get_opt("idmod").await?.is_none();
        let unlabelled = !nodes
            .get(node)
            .await?
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key(&ready);
        let ds_gone = dss.get_opt("idmod-device-plugin").await?.is_none();
        Ok(gone && unlabelled && ds_gone)
    })
    .await
    .with_context(logs)?;

    // Nothing either of them did was refused.
    let all = logs();
    for needle in ["forbidden", "Forbidden", "ValidatingAdmissionPolicy"] {
        assert!(!all.contains(needle), "{needle:?} in the logs:\n{all}");
    }
    Ok(())
}
