//! Agents read no Secrets; the controller hands a pull secret only to the
//! agent of a node that a Module naming that secret targets.
//!
//! With REAL tokens (TokenRequest, bound to Pods on nodes A and B, as the
//! kubelet mounts them) against the deployed RBAC:
//! - the kmm-agent identity can no longer `get` a Secret (API, 403);
//! - the real `kmm-controller` binary, running as the kmm-controller service
//!   account, serves `POST /agent/v1/pull-secret`; the agent's client
//!   (`kmm_agent::credentials::ControllerPullSecrets`) gets the docker config
//!   for node A + a Module selecting A + the secret it names, and a 403 with
//!   the reason for node B, a Module not selecting A, a secret the Module does
//!   not name, a missing Module, a token not bound to a node, a service
//!   account that is not an agent; a token for the API server's audience is
//!   not accepted (401).
//!
//! Needs the binaries from `bash hack/controlplane/build.sh`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kmm_agent::credentials::{
    ApiPullSecrets, ControllerCa, ControllerPullSecrets, CredentialsError, PullSecrets,
};
use kmm_agent::image::DockerConfig;
use kmm_common::Module;
use kmm_controller::webhook::certs::ServingCert;
use kmm_tests::cluster::{apply_yaml, create_node, wait_for};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::deploy::install_deploy;
use kmm_tests::identity::{pod_on_node, refusal, sa_token, token_kubeconfig};
use kmm_tests::module::ModuleBuilder;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use oci_client::secrets::RegistryAuth;
use serde_json::json;

const SYSTEM_NS: &str = "kmm-system";
const AUDIENCE: &str = "kmm-controller";
const REGISTRY: &str = "registry.example:5000";
const WAIT: Duration = Duration::from_secs(60);

fn module_yaml(name: &str, selector_value: &str) -> String {
    ModuleBuilder::new(name)
        .selector("kmm-test/pullsec", selector_value)
        .image_repo_secret("pull")
        .mapping("^.+$", &format!("{REGISTRY}/kmm/{name}:1"))
        .manifest()
}

fn secret(name: &str, user: &str) -> Result<Secret> {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw-{user}"));
    let config = json!({"auths": {REGISTRY: {"auth": auth}}}).to_string();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config},
    }))?)
}

/// A controller client that shows the token in `token_file`.
fn controller_client(
    admin: &Client,
    url: &str,
    token_file: &Path,
    ca: &str,
) -> ControllerPullSecrets {
    ControllerPullSecrets::new(
        admin.clone(),
        url.to_string(),
        token_file.to_path_buf(),
        ControllerCa::Pem(ca.to_string()),
    )
}

fn expect_refused(
    result: Result<DockerConfig, CredentialsError>,
    code: u16,
    why: &str,
) -> Result<()> {
    match result {
        Err(CredentialsError::Refused {
            code: c, message, ..
        }) if c == code && message.contains(why) => Ok(()),
        Err(e) => bail!("expected {code} with {why:?}, got: {e}"),
        Ok(_) => bail!("expected {code} with {why:?}, the controller handed out the secret"),
    }
}

#[tokio::test]
async fn agents_read_no_secrets_and_get_pull_secrets_only_for_modules_targeting_their_node()
-> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_deploy(cp).await?;
    let ns = cp.temp_namespace("deploy-pullsec").await?;
    let n = ns.name().to_string();
    let (a, b) = (format!("{n}-a"), format!("{n}-b"));
    let pods = [
        format!("{n}-agent-a"),
        format!("{n}-agent-b"),
        format!("{n}-other"),
    ];
    let admin = cp.client();
    let config_name = format!("{n}-ca");
    let dir = tempfile::tempdir()?;
    let result = checks(cp, &admin, &n, &a, &b, &pods, &config_name, dir.path()).await;

    let _ = Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .delete(&config_name, &DeleteParams::default())
        .await;
    for pod in &pods {
        let _ = Api::<Pod>::namespaced(admin.clone(), SYSTEM_NS)
            .delete(pod, &DeleteParams::default().grace_period(0))
            .await;
    }
    for m in ["m1", "m2"] {
        let _ = cp.kubectl([
            "patch",
            "module",
            m,
            "-n",
            &n,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
    let nodes: Api<Node> = Api::all(admin);
    for name in [&a, &b] {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }
    ns.cleanup().await?;
    result
}

#[allow(clippy::too_many_arguments, reason = "one test's fixture")]
async fn checks(
    cp: &'static ControlPlane,
    admin: &Client,
    ns: &str,
    a: &str,
    b: &str,
    pods: &[String; 3],
    config_name: &str,
    dir: &Path,
) -> Result<()> {
    create_node(admin, a, &[("kmm-test/pullsec", ns)], "6.1.0-test").await?;
    create_node(admin, b, &[], "6.1.0-test").await?;
    let pod_a = pod_on_node(admin, SYSTEM_NS, &pods[0], a, "kmm-agent").await?;
    let pod_b = pod_on_node(admin, SYSTEM_NS, &pods[1], b, "kmm-agent").await?;
    let pod_other = pod_on_node(admin, SYSTEM_NS, &pods[2], a, "default").await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    secrets
        .create(&PostParams::default(), &secret("pull", "u")?)
        .await?;
    secrets
        .create(&PostParams::default(), &secret("other", "o")?)
        .await?;
    apply_yaml(cp, ns, &module_yaml("m1", ns))?;
    apply_yaml(cp, ns, &module_yaml("m2", "nobody"))?;

    // The agent's own API identity reads no Secret.
    let agent_api =
        cp.client_with_token(&sa_token(admin, SYSTEM_NS, "kmm-agent", Some(&pod_a), &[]).await?)?;
    let (code, msg) = refusal(
        Api::<Secret>::namespaced(agent_api.clone(), ns)
            .get("pull")
            .await,
    )?;
    assert_eq!(code, 403, "{msg}");
    match ApiPullSecrets::new(agent_api)
        .docker_config(ns, "pull", "m1")
        .await
    {
        Err(CredentialsError::Api { source, .. }) => {
            assert!(
                matches!(*source, kube::Error::Api(ref s) if s.code == 403),
                "{source}"
            );
        }
        other => bail!(
            "the direct source read the Secret as the agent: {:?}",
            other.map(|_| ())
        ),
    }

    // The controller, as its deployed service account, serving with its own certificate.
    let cert = ServingCert::self_signed(&["127.0.0.1".into()])?;
    let ca = cert.ca_pem.clone().context("self-signed CA")?;
    let cert_dir = dir.join("certs");
    std::fs::create_dir_all(&cert_dir)?;
    std::fs::write(cert_dir.join("tls.crt"), &cert.cert_pem)?;
    std::fs::write(cert_dir.join("tls.key"), &cert.key_pem)?;
    let port = kmm_tests::agent::free_port()?;
    let controller_token = sa_token(admin, SYSTEM_NS, "kmm-controller", None, &[]).await?;
    let mut opts = ControllerOptions::for_namespace(
        cp,
        ns,
        dir,
        [
            "--leader-elect",
            "false",
            "--webhook",
            "true",
            "--webhook-addr",
            &format!("127.0.0.1:{port}"),
            "--webhook-cert-dir",
            cert_dir.to_str().context("non-UTF-8 path")?,
        ]
        .map(String::from)
        .to_vec(),
    );
    opts.kubeconfig = token_kubeconfig(cp, dir, "kmm-controller", &controller_token)?;
    let controller = ControllerProcess::start(&opts)?;
    controller.wait_ready(WAIT).await?;
    let url = format!("https://127.0.0.1:{port}");

    let token_file = |name: &str, token: String| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, token)?;
        Ok(path)
    };
    let tok_a = token_file(
        "a",
        sa_token(admin, SYSTEM_NS, "kmm-agent", Some(&pod_a), &[AUDIENCE]).await?,
    )?;
    let tok_b = token_file(
        "b",
        sa_token(admin, SYSTEM_NS, "kmm-agent", Some(&pod_b), &[AUDIENCE]).await?,
    )?;
    let as_a = controller_client(admin, &url, &tok_a, &ca);
    let as_b = controller_client(admin, &url, &tok_b, &ca);

    // Node A, Module m1 selects A and names `pull`: the docker config.
    let config = as_a
        .docker_config(ns, "pull", "m1")
        .await
        .with_context(|| format!("controller log:\n{}", controller.log()))?;
    let reference = format!("{REGISTRY}/kmm/m1:1").parse()?;
    assert_eq!(
        config.auth_for(&reference),
        RegistryAuth::Basic("u".into(), "pw-u".into())
    );

    expect_refused(
        as_b.docker_config(ns, "pull", "m1").await,
        403,
        &format!("does not target node {b}"),
    )?;
    expect_refused(
        as_a.docker_config(ns, "pull", "m2").await,
        403,
        &format!("Module {ns}/m2 does not target node {a}"),
    )?;
    expect_refused(
        as_a.docker_config(ns, "other", "m1").await,
        403,
        "names pull as imageRepoSecret, not other",
    )?;
    expect_refused(
        as_a.docker_config(ns, "pull", "gone").await,
        403,
        &format!("Module {ns}/gone does not exist"),
    )?;
    expect_refused(
        as_a.docker_config("kube-system", "pull", "m1").await,
        403,
        "does not exist",
    )?;

    // Tokens that are not a node agent's, or not for the controller.
    let api_audience = token_file(
        "api",
        sa_token(admin, SYSTEM_NS, "kmm-agent", Some(&pod_a), &[]).await?,
    )?;
    expect_refused(
        controller_client(admin, &url, &api_audience, &ca)
            .docker_config(ns, "pull", "m1")
            .await,
        401,
        "token not accepted",
    )?;
    let unbound = token_file(
        "unbound",
        sa_token(admin, SYSTEM_NS, "kmm-agent", None, &[AUDIENCE]).await?,
    )?;
    expect_refused(
        controller_client(admin, &url, &unbound, &ca)
            .docker_config(ns, "pull", "m1")
            .await,
        403,
        "not bound to a Pod on a node",
    )?;
    let other = token_file(
        "other",
        sa_token(admin, SYSTEM_NS, "default", Some(&pod_other), &[AUDIENCE]).await?,
    )?;
    expect_refused(
        controller_client(admin, &url, &other, &ca)
            .docker_config(ns, "pull", "m1")
            .await,
        403,
        "is not a kmm node agent",
    )?;

    // The CA from a webhook configuration's caBundle, as deploy/ sets it up.
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "unused.kmm-test.invalid",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
            "clientConfig": {"url": "https://127.0.0.1:1/unused", "caBundle": k8s_openapi::ByteString(ca.clone().into_bytes())},
            "rules": [{"apiGroups": ["kmm-test.invalid"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["nothing"]}],
        }],
    }))?;
    Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &vwc)
        .await?;
    let from_vwc = ControllerPullSecrets::new(
        admin.clone(),
        url.clone(),
        tok_a.clone(),
        ControllerCa::WebhookConfig(config_name.to_string()),
    );
    from_vwc
        .docker_config(ns, "pull", "m1")
        .await
        .context("with the CA from the webhook configuration")?;

    // Modules go while the controller still runs (it holds their finalizer).
    let modules: Api<Module> = Api::namespaced(admin.clone(), ns);
    for m in ["m1", "m2"] {
        modules.delete(m, &DeleteParams::default()).await?;
    }
    wait_for(WAIT, || async {
        Ok(modules.list(&Default::default()).await?.items.is_empty())
    })
    .await
    .with_context(|| {
        format!(
            "Modules not released; controller log:\n{}",
            controller.log()
        )
    })?;
    Ok(())
}
