//! Registry access shared by the agent, the controller and kmmctl.
//!
//! - [`auth`]: credentials from Kubernetes pull secrets (kubelet's matching rules);
//! - [`agent_api`]: the controller's pull-secret endpoint for agents (wire format);
//! - [`client`]: an oci-client [`Client`] configured from a Module's `registryTLS`;
//! - [`lookup`]: does an image exist (the controller's "build or not" question);
//! - [`manifest`]: manifests and indexes as `oci_client::manifest` types, and
//!   the index entry for a platform.
#![warn(missing_docs)]

pub mod agent_api;
pub mod auth;
pub mod lookup;
pub mod manifest;

use std::time::Duration;

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};

pub use auth::{AuthError, Credential, DockerConfig};
pub use lookup::{LookupError, manifest_digest};
/// The HTTP client crate of [`http_client`], for its callers' types.
pub use reqwest;

/// Registry TLS options of a Module (`registryTLS`, `baseImageRegistryTLS`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryTls {
    /// `insecure`: talk plain HTTP to this registry.
    pub insecure: bool,
    /// `insecureSkipTLSVerify`: HTTPS without certificate verification.
    pub insecure_skip_tls_verify: bool,
}

/// An oci-client for `registry` (`host[:port]` as in the reference, i.e.
/// `Reference::resolve_registry`) with the Module's TLS settings. Platforms
/// are not resolved by the client: callers choose from the raw index
/// ([`manifest::find_platform`]).
pub fn client(registry: &str, tls: RegistryTls) -> Client {
    client_from(client_config(registry, tls))
}

/// The configuration [`client`] uses, for callers that change a setting
/// (kmmctl pushes blobs monolithically) before [`client_from`].
pub fn client_config(registry: &str, tls: RegistryTls) -> ClientConfig {
    let protocol = if tls.insecure {
        ClientProtocol::HttpsExcept(vec![registry.to_owned()])
    } else {
        ClientProtocol::Https
    };
    ClientConfig {
        protocol,
        accept_invalid_certificates: tls.insecure_skip_tls_verify,
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    }
}

/// An oci-client from `config`, with the crypto provider installed first.
pub fn client_from(config: ClientConfig) -> Client {
    ensure_crypto_provider();
    Client::new(config)
}

/// Longest wait for a TCP/TLS connection to a registry.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for any one read from a registry (not for a whole body:
/// callers that need that bound it themselves).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A plain HTTP client with the same TLS settings and timeouts as [`client`],
/// for requests whose bodies the caller must read itself (with a byte cap):
/// oci-client buffers whole manifest and error bodies in memory.
///
/// # Errors
/// The TLS backend could not be set up.
pub fn http_client(tls: RegistryTls) -> Result<reqwest::Client, reqwest::Error> {
    ensure_crypto_provider();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(tls.insecure_skip_tls_verify)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("kmm-rs/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `http` or `https` for a registry with these settings.
pub fn scheme(tls: RegistryTls) -> &'static str {
    if tls.insecure { "http" } else { "https" }
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
