//! A controller serving the admission webhooks for one test namespace only:
//! the namespace gets a label no other test's namespace carries, and the
//! controller (scoped to it) registers a ValidatingWebhookConfiguration of its
//! own (`--webhook-url` at a free loopback port) selecting that label, so
//! parallel tests are not affected. The configuration is deleted on drop,
//! before the controller stops.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::agent::free_port;
use crate::cluster::WebhookConfigGuard;
use crate::controller::{ControllerOptions, ControllerProcess};
use crate::controlplane::ControlPlane;

/// The label (value: the namespace's name) the webhook configuration selects on.
pub const SELECTOR_KEY: &str = "kmm-test/webhook";

/// A running webhook server for one namespace.
pub struct NamespaceWebhook {
    /// The ValidatingWebhookConfiguration's name.
    pub config_name: String,
    // Dropped in declaration order: the configuration goes before the webhook server.
    _guard: WebhookConfigGuard,
    /// The controller serving the webhook.
    pub controller: ControllerProcess,
    _dir: tempfile::TempDir,
}

impl NamespaceWebhook {
    /// Labels `ns`, starts the controller with its webhook for it and waits until it leads
    /// (the configuration is registered then; the API server may call it a little later).
    ///
    /// # Errors
    /// API errors, or when the controller does not start or lead within `wait`.
    pub async fn start(
        cp: &'static ControlPlane,
        client: &Client,
        ns: &str,
        wait: Duration,
    ) -> Result<Self> {
        let patch = serde_json::json!({ "metadata": { "labels": { SELECTOR_KEY: ns } } });
        Api::<Namespace>::all(client.clone())
            .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let port = free_port()?;
        let config_name = format!("kmm-webhook-{ns}");
        let guard = WebhookConfigGuard {
            cp,
            name: config_name.clone(),
        };
        let dir = tempfile::tempdir()?;
        let controller = ControllerProcess::start(&ControllerOptions::for_namespace(
            cp,
            ns,
            dir.path(),
            [
                "--webhook",
                "true",
                "--webhook-addr",
                &format!("127.0.0.1:{port}"),
                "--webhook-url",
                &format!("https://127.0.0.1:{port}"),
                "--webhook-config",
                &config_name,
                "--webhook-namespace-selector",
                &format!("{SELECTOR_KEY}={ns}"),
            ]
            .map(String::from)
            .to_vec(),
        ))?;
        controller.wait_leader(wait).await?;
        Ok(Self {
            config_name,
            _guard: guard,
            controller,
            _dir: dir,
        })
    }
}
