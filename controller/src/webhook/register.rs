//! Registration of the webhooks with the API server.
//!
//! - URL mode (`--webhook-url`, used by tests and out-of-cluster runs): the
//!   whole ValidatingWebhookConfiguration is server-side applied.
//! - Service mode (deploy/): the configuration comes from the manifests; the
//!   controller only adds its CA to each webhook's `caBundle`. Every replica
//!   has its own self-managed CA and every replica serves behind the Service,
//!   so the bundle keeps the last few CAs instead of the newest only.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};

use super::handlers::{MODULE_PATH, NAMESPACE_PATH, PREFLIGHT_PATH};

/// Name of the Namespace webhook inside the configuration.
pub const NAMESPACE_WEBHOOK: &str = "namespace-deletion.kmm.sigs.x-k8s.io";
/// Name of the Module webhook inside the configuration.
pub const MODULE_WEBHOOK: &str = "vmodule.kmm.sigs.x-k8s.io";
/// Name of the PreflightValidation webhook inside the configuration.
pub const PREFLIGHT_WEBHOOK: &str = "vpreflightvalidation.kmm.sigs.x-k8s.io";
/// How many CAs a service-mode bundle keeps (one per live replica, plus restarts).
const MAX_BUNDLE_CAS: usize = 5;
const FIELD_MANAGER: &str = "kmm-controller-webhook";

/// Where the API server reaches the webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `clientConfig.url` = base + path.
    Url(String),
    /// `clientConfig.service` (the configuration itself comes from deploy/).
    Service {
        /// Service namespace.
        namespace: String,
        /// Service name.
        name: String,
    },
}

/// What to register.
#[derive(Debug, Clone)]
pub struct Registration {
    /// ValidatingWebhookConfiguration name.
    pub config_name: String,
    /// How the API server reaches us.
    pub target: Target,
    /// `namespaceSelector.matchLabels` of the namespaced webhooks, `objectSelector` of the
    /// PreflightValidation one (URL mode; empty = all).
    pub namespace_selector: BTreeMap<String, String>,
    /// The CA (PEM) that signed the serving certificate.
    pub ca_pem: String,
}

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The API server refused or could not be reached.
    #[error("registering ValidatingWebhookConfiguration {name}: {source}")]
    Kube {
        /// Configuration name.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// Service mode and the configuration is not installed.
    #[error(
        "ValidatingWebhookConfiguration {0} not found: install deploy/base/webhook or pass --webhook-url"
    )]
    Missing(String),
}

/// The full configuration of URL mode.
pub fn url_configuration(reg: &Registration, base: &str) -> ValidatingWebhookConfiguration {
    let base = base.trim_end_matches('/');
    let ca = ByteString(reg.ca_pem.as_bytes().to_vec());
    let selector = (!reg.namespace_selector.is_empty()).then(|| LabelSelector {
        match_labels: Some(reg.namespace_selector.clone()),
        ..LabelSelector::default()
    });
    let webhook = |name: &str, path: &str, rule: RuleWithOperations| ValidatingWebhook {
        name: name.to_string(),
        admission_review_versions: vec!["v1".into()],
        client_config: WebhookClientConfig {
            url: Some(format!("{base}{path}")),
            ca_bundle: Some(ca.clone()),
            service: None,
        },
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(5),
        namespace_selector: selector.clone(),
        rules: Some(vec![rule]),
        ..ValidatingWebhook::default()
    };
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(reg.config_name.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "kmm-controller".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![
            webhook(
                NAMESPACE_WEBHOOK,
                NAMESPACE_PATH,
                RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["DELETE".into()]),
                    resources: Some(vec!["namespaces".into()]),
                    scope: Some("Cluster".into()),
                },
            ),
            webhook(
                MODULE_WEBHOOK,
                MODULE_PATH,
                RuleWithOperations {
                    api_groups: Some(vec![
                        <kmm_common::Module as kube::Resource>::group(&()).to_string(),
                    ]),
                    api_versions: Some(vec!["v1beta1".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["modules".into()]),
                    scope: Some("Namespaced".into()),
                },
            ),
            // Cluster-scoped, so a namespaceSelector cannot restrict it: the same labels
            // select the objects themselves (a test's configuration sees its own only).
            ValidatingWebhook {
                namespace_selector: None,
                object_selector: selector.clone(),
                ..webhook(
                    PREFLIGHT_WEBHOOK,
                    PREFLIGHT_PATH,
                    RuleWithOperations {
                        api_groups: Some(vec![
                            <kmm_common::PreflightValidation as kube::Resource>::group(&())
                                .to_string(),
                        ]),
                        // The default matchPolicy (Equivalent) sends v1beta1 requests too.
                        api_versions: Some(vec!["v1beta2".into()]),
                        operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                        resources: Some(vec!["preflightvalidations".into()]),
                        scope: Some("Cluster".into()),
                    },
                )
            },
        ]),
    }
}

/// Splits a PEM bundle into its certificate blocks.
fn pem_blocks(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .map(str::trim)
        .filter(|b| b.starts_with("-----BEGIN CERTIFICATE-----") && b.ends_with(END))
        .map(str::to_string)
        .collect()
}

/// `existing` with `ca` appended (once), keeping the newest [`MAX_BUNDLE_CAS`].
pub fn merged_bundle(existing: &str, ca: &str) -> String {
    let ca = ca.trim().to_string();
    let mut blocks: Vec<String> = pem_blocks(existing)
        .into_iter()
        .filter(|b| *b != ca)
        .collect();
    blocks.push(ca);
    let skip = blocks.len().saturating_sub(MAX_BUNDLE_CAS);
    let mut out = blocks[skip..].join("\n");
    out.push('\n');
    out
}

/// Creates/updates the configuration (URL mode) or adds our CA to it (Service mode).
///
/// # Errors
/// If the API server refuses, or in Service mode the configuration is missing.
pub async fn register(client: Client, reg: &Registration) -> Result<(), RegisterError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    let kube_err = |source| RegisterError::Kube {
        name: reg.config_name.clone(),
        source,
    };
    match &reg.target {
        Target::Url(base) => {
            let cfg = url_configuration(reg, base);
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&reg.config_name, &pp, &Patch::Apply(&cfg))
                .await
                .map_err(kube_err)?;
        }
        Target::Service { namespace, name } => {
            // Replicas start together: retry the read-modify-write on conflicts.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut cfg = api
                    .get_opt(&reg.config_name)
                    .await
                    .map_err(kube_err)?
                    .ok_or_else(|| RegisterError::Missing(reg.config_name.clone()))?;
                for wh in cfg.webhooks.iter_mut().flatten() {
                    let ours =
                        wh.client_config
                            .service
                            .as_ref()
                            .is_some_and(|s: &ServiceReference| {
                                s.namespace == *namespace && s.name == *name
                            });
                    if ours {
                        let existing = wh
                            .client_config
                            .ca_bundle
                            .as_ref()
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                            .unwrap_or_default();
                        let merged = merged_bundle(&existing, &reg.ca_pem);
                        wh.client_config.ca_bundle = Some(ByteString(merged.into_bytes()));
                    }
                }
                match api
                    .replace(&reg.config_name, &PostParams::default(), &cfg)
                    .await
                {
                    Ok(_) => break,
                    Err(kube::Error::Api(s)) if s.code == 409 && attempt < 5 => continue,
                    Err(e) => return Err(kube_err(e)),
                }
            }
        }
    }
    tracing::info!(name = %reg.config_name, target = ?reg.target, "webhook configuration registered");
    Ok(())
}

/// Deletes the configuration (URL mode, on shutdown); already gone is fine.
///
/// # Errors
/// If the API server refuses.
pub async fn unregister(client: Client, name: &str) -> Result<(), RegisterError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            tracing::info!(name, "webhook configuration removed");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(RegisterError::Kube {
            name: name.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn ca(n: usize) -> String {
        format!("-----BEGIN CERTIFICATE-----\nCA{n}\n-----END CERTIFICATE-----\n")
    }

    #[test]
    fn bundle_appends_once_and_keeps_the_newest() {
        let b = merged_bundle("", &ca(1));
        assert_eq!(pem_blocks(&b).len(), 1);
        let b = merged_bundle(&b, &ca(1));
        assert_eq!(pem_blocks(&b).len(), 1, "same CA twice is kept once");
        let mut b = b;
        for n in 2..=7 {
            b = merged_bundle(&b, &ca(n));
        }
        let blocks = pem_blocks(&b);
        assert_eq!(blocks.len(), MAX_BUNDLE_CAS);
        assert!(blocks.last().unwrap().contains("CA7"));
        assert!(!b.contains("CA1\n") && !b.contains("CA2\n"));
    }

    #[test]
    fn url_configuration_scopes_every_webhook() {
        let reg = Registration {
            config_name: "t".into(),
            target: Target::Url("https://127.0.0.1:1/".into()),
            namespace_selector: BTreeMap::from([("k".into(), "v".into())]),
            ca_pem: ca(1),
        };
        let cfg = url_configuration(&reg, "https://127.0.0.1:1/");
        let whs = cfg.webhooks.unwrap();
        assert_eq!(whs.len(), 3);
        for wh in &whs {
            assert!(
                wh.client_config
                    .url
                    .as_deref()
                    .unwrap()
                    .starts_with("https://127.0.0.1:1/validate-")
            );
            let sel = if wh.name == PREFLIGHT_WEBHOOK {
                assert!(wh.namespace_selector.is_none());
                wh.object_selector.as_ref().unwrap()
            } else {
                wh.namespace_selector.as_ref().unwrap()
            };
            assert_eq!(sel.match_labels.as_ref().unwrap()["k"], "v");
            assert_eq!(wh.side_effects, "None");
            assert_eq!(wh.timeout_seconds, Some(5));
        }
    }
}
