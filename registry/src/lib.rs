//! Registry access shared by the agent, the controller and kmmctl.
//!
//! - [`auth`]: credentials from Kubernetes pull secrets (kubelet's matching rules);
//! - [`agent_api`]: the controller's pull-secret endpoint for agents (wire format);
//! - [`client`]: an oci-client [`Client`] configured from a Module's `registryTLS`;
//! - [`lookup`]: does an image exist (the controller's "build or not" question).
#![warn(missing_docs)]

pub mod agent_api;
pub mod auth;
pub mod lookup;

use std::time::Duration;

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};

pub use auth::{AuthError, Credential, DockerConfig};
pub use lookup::{LookupError, manifest_digest};

/// Registry TLS options of a Module (`registryTLS`, `baseImageRegistryTLS`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryTls {
    /// `insecure`: talk plain HTTP to this registry.
    pub insecure: bool,
    /// `insecureSkipTLSVerify`: HTTPS without certificate verification.
    pub insecure_skip_tls_verify: bool,
}

/// An oci-client for `registry` (`host[:port]` as in the reference) with the
/// Module's TLS settings. Platforms are not resolved by the client: callers
/// choose from the raw index.
pub fn client(registry: &str, tls: RegistryTls) -> Client {
    ensure_crypto_provider();
    let protocol = if tls.insecure {
        ClientProtocol::HttpsExcept(vec![registry.to_owned()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        accept_invalid_certificates: tls.insecure_skip_tls_verify,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    })
}

/// Installs rustls' ring crypto provider as the process default unless one
/// is already installed. The workspace builds oci-client's rustls without a
/// provider (no aws-lc) and reqwest panics when building a client without
/// one; [`client`] calls this, other oci-client users (tests that push
/// images) should too. Losing a race to another thread is fine.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
