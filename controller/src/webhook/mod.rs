//! Admission webhooks served by every controller replica over HTTPS:
//!
//! - [`handlers`]: `/validate-namespace`, `/validate-module` and
//!   `/validate-preflightvalidation`;
//! - [`certs`]: serving certificates, self-managed (rcgen) or from a directory;
//! - [`server_version`]: the API server's version, cached (the `spec.dra` gate);
//! - [`tls`]: the TLS listener for axum;
//! - [`register`]: the ValidatingWebhookConfiguration (full in URL mode, the
//!   `caBundle` only in Service mode).

pub mod certs;
pub mod handlers;
pub mod register;
pub mod server_version;
pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use kube::Client;

use crate::metrics::Metrics;
use certs::{CertError, ServingCert};
use register::{RegisterError, Registration, Target};
use tls::{TlsError, TlsListener};

/// How the webhook server is set up.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Listen address.
    pub addr: SocketAddr,
    /// Directory with `tls.crt`/`tls.key`; self-managed certificates when `None`.
    pub cert_dir: Option<PathBuf>,
    /// ValidatingWebhookConfiguration name.
    pub config_name: String,
    /// Service fronting the webhook (Service mode, and the certificate's DNS names).
    pub service_name: String,
    /// Namespace of that Service (the controller's own).
    pub service_namespace: String,
    /// Base URL the API server calls instead of the Service (URL mode).
    pub url: Option<String>,
    /// namespaceSelector.matchLabels of the namespaced webhooks, objectSelector of the
    /// PreflightValidation one (URL mode).
    pub namespace_selector: BTreeMap<String, String>,
}

/// Why the webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Certificates.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// TLS listener.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Registration.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

impl WebhookSettings {
    /// Host names the serving certificate must cover.
    pub fn hosts(&self) -> Vec<String> {
        if let Some(url) = &self.url {
            return url_host(url).into_iter().collect();
        }
        let (svc, ns) = (&self.service_name, &self.service_namespace);
        vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
        ]
    }

    fn target(&self) -> Target {
        match &self.url {
            Some(url) => Target::Url(url.clone()),
            None => Target::Service {
                namespace: self.service_namespace.clone(),
                name: self.service_name.clone(),
            },
        }
    }
}

/// The host of `https://host[:port][/path]` (IPv6 in brackets too).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Loads or makes certificates, binds, registers (when self-managed) and
/// returns the server future (answers counted in `metrics`). Registration happens after binding, so the
/// API server never calls an address nobody listens on. `extra` routes (e.g.
/// [`crate::agent_credentials::router`]) are served beside the webhooks.
///
/// # Errors
/// If certificates, binding or registration fail.
pub async fn start(
    client: Client,
    settings: &WebhookSettings,
    metrics: Metrics,
    extra: axum::Router,
) -> Result<impl Future<Output = std::io::Result<()>> + Send + 'static, WebhookError> {
    let cert = match &settings.cert_dir {
        Some(dir) => ServingCert::from_dir(dir)?,
        None => ServingCert::self_signed(&settings.hosts())?,
    };
    let listener = TlsListener::bind(settings.addr, &cert).await?;
    tracing::info!(addr = %settings.addr, self_managed = cert.ca_pem.is_some(), "serving admission webhooks");
    if let Some(ca_pem) = &cert.ca_pem {
        let reg = Registration {
            config_name: settings.config_name.clone(),
            target: settings.target(),
            namespace_selector: settings.namespace_selector.clone(),
            ca_pem: ca_pem.clone(),
        };
        match register::register(client.clone(), &reg).await {
            // Installed without deploy/base/webhook: serve anyway, nobody calls us.
            Err(e @ RegisterError::Missing(_)) => {
                tracing::warn!(error = %e, "admission webhooks not registered");
            }
            res => res?,
        }
    }
    let router = handlers::router(client, metrics).merge(extra);
    Ok(async move { axum::serve(listener, router).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://127.0.0.1:9443").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            url_host("https://h.example/x").as_deref(),
            Some("h.example")
        );
        assert_eq!(url_host("https://[::1]:9443/").as_deref(), Some("::1"));
        assert_eq!(url_host("https://:9443"), None);
    }
}
