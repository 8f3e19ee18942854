//! Service mode (deploy/): the ValidatingWebhookConfiguration comes from the
//! manifests and every controller replica adds its self-managed CA to the
//! caBundle of the webhooks pointing at its Service, so the API server trusts
//! whichever replica the Service picks. Two real controller processes (a
//! leader and a standby) against the real API server and deploy/'s own
//! configuration (`failurePolicy: Fail`), renamed and pointed at a Service in
//! the test namespace; its namespaceSelector is replaced by one that matches
//! nothing, so the API server never calls it and other tests' Module writes
//! are never refused; the test checks the bundle and talks HTTPS to both
//! replicas itself.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kmm_tests::cluster::{WebhookConfigGuard, ensure_crds};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::deploy::{WEBHOOK_KIND, render_deploy};
use kube::api::{Api, DeleteParams, PostParams};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

const WAIT: Duration = Duration::from_secs(60);

/// deploy/'s webhook configuration (`failurePolicy: Fail`), renamed, pointed at
/// Service `svc` in `ns` and with a namespaceSelector that matches nothing,
/// plus a third webhook of another Service.
fn configuration(
    cp: &ControlPlane,
    name: &str,
    ns: &str,
    svc: &str,
) -> Result<ValidatingWebhookConfiguration> {
    let mut config = render_deploy(cp)?
        .into_iter()
        .find(|d| d["kind"] == WEBHOOK_KIND)
        .context("no webhook configuration in deploy/")?;
    // Matches no namespace: the API server never calls these, Fail or not.
    let never = serde_json::json!({"matchLabels": {"kmm-test/never": ns}});
    config["metadata"] = serde_json::json!({"name": name});
    let webhooks = config["webhooks"]
        .as_array_mut()
        .context("no webhooks in deploy/")?;
    for wh in webhooks.iter_mut() {
        assert_eq!(wh["failurePolicy"], "Fail", "{wh}");
        wh["namespaceSelector"] = never.clone();
        let service = &mut wh["clientConfig"]["service"];
        service["namespace"] = ns.into();
        service["name"] = svc.into();
    }
    webhooks.push(serde_json::json!({
        "name": "someone-else.example.com",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "namespaceSelector": never,
        "clientConfig": {"service": {"namespace": ns, "name": "another-service", "path": "/x", "port": 443}},
        "rules": [{"apiGroups": ["kmm.sigs.x-k8s.io"], "apiVersions": ["v1beta1"],
                   "operations": ["CREATE"], "resources": ["modules"]}]
    }));
    Ok(serde_json::from_value(config)?)
}

/// POSTs an AdmissionReview over HTTPS, trusting only `bundle`, verifying the
/// certificate for `host`. Returns the HTTP response.
fn post_review(port: u16, bundle: &[u8], host: &str, path: &str, body: &str) -> Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(host.to_string())?)?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    // A peer closing without close_notify is fine here; what was read counts.
    match tls.read_to_string(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(out)
}

fn invalid_module_review(ns: &str) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0d3f6c1e-0000-4000-8000-000000000001",
            "kind": {"group": "kmm.sigs.x-k8s.io", "version": "v1beta1", "kind": "Module"},
            "resource": {"group": "kmm.sigs.x-k8s.io", "version": "v1beta1", "resource": "modules"},
            "name": "bad", "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": {
                "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
                "metadata": {"name": "bad", "namespace": ns},
                "spec": {"selector": {"a": "b"}, "moduleLoader": {"container": {
                    "modprobe": {"moduleName": "bad"},
                    "kernelMappings": [{"regexp": "[", "containerImage": "r/x:1"}]
                }}}
            },
            "dryRun": false
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_adds_its_ca_and_serves() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let client = cp.client();
    let ns = cp.temp_namespace("webhook-svc").await?;
    let ns_name = ns.name().to_string();
    let svc = "kmm-webhook";
    let config_name = format!("kmm-webhook-{ns_name}");
    let _guard = WebhookConfigGuard {
        cp,
        name: config_name.clone(),
    };
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    configs
        .create(
            &PostParams::default(),
            &configuration(cp, &config_name, &ns_name, svc)?,
        )
        .await?;

    let dir = tempfile::tempdir()?;
    let mut replicas = Vec::new();
    for i in 0..2 {
        let port = kmm_tests::agent::free_port()?;
        let controller = ControllerProcess::start(&ControllerOptions {
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            namespace: ns_name.clone(),
            identity: format!("{ns_name}-ctl-{i}"),
            log_dir: dir.path().to_path_buf(),
            extra_args: [
                "--webhook",
                "true",
                "--webhook-addr",
                &format!("127.0.0.1:{port}"),
                "--webhook-config",
                &config_name,
                "--webhook-service",
                svc,
            ]
            .map(String::from)
            .to_vec(),
        })?;
        // Ready only after the webhook registered its CA.
        controller.wait_ready(WAIT).await?;
        replicas.push((port, controller));
    }
    let leaders = replicas.iter().filter(|(_, c)| c.is_leader()).count();
    assert!(leaders <= 1, "{leaders} leaders");

    let cfg = configs.get(&config_name).await?;
    let whs = cfg.webhooks.unwrap();
    let bundle_of = |name: &str| {
        whs.iter()
            .find(|w| w.name == name)
            .and_then(|w| w.client_config.ca_bundle.clone())
            .map(|b| b.0)
    };
    let bundle = bundle_of("vmodule.kmm.sigs.x-k8s.io").context("no caBundle")?;
    assert_eq!(
        Some(&bundle),
        bundle_of("namespace-deletion.kmm.sigs.x-k8s.io").as_ref()
    );
    assert_eq!(
        CertificateDer::pem_slice_iter(&bundle).count(),
        2,
        "one CA per replica:\n{}",
        String::from_utf8_lossy(&bundle)
    );
    assert_eq!(
        bundle_of("someone-else.example.com"),
        None,
        "a webhook of another Service is left alone"
    );

    // Both replicas (leader and standby) answer over TLS the API server would
    // accept (the bundle, the Service's DNS name) and deny the invalid Module.
    let host = format!("{svc}.{ns_name}.svc");
    for (port, controller) in &replicas {
        let answer = post_review(
            *port,
            &bundle,
            &host,
            "/validate-module",
            &invalid_module_review(&ns_name),
        )
        .with_context(|| {
            format!(
                "replica {}; log:\n{}",
                controller.identity,
                controller.log()
            )
        })?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(r#""allowed":false"#), "{answer}");
        assert!(answer.contains("invalid regexp '['"), "{answer}");
        assert!(
            answer.contains("0d3f6c1e-0000-4000-8000-000000000001"),
            "{answer}"
        );
    }
    // A name outside the certificate is refused by the TLS client.
    assert!(
        post_review(
            replicas[0].0,
            &bundle,
            "evil.example.com",
            "/validate-module",
            "{}"
        )
        .is_err()
    );

    configs
        .delete(&config_name, &DeleteParams::default())
        .await?;
    drop(replicas);
    ns.cleanup().await
}
