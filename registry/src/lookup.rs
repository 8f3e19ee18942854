//! Whether an image exists in its registry, without pulling it.
//!
//! The controller asks this before building or signing: a build starts only
//! when the registry says the manifest is unknown. Any other failure (auth,
//! TLS, network) is an error, never "missing", so an unreachable registry
//! does not trigger a rebuild of every image.

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use thiserror::Error;

/// Why a lookup could not tell whether the image exists.
#[derive(Debug, Error)]
pub enum LookupError {
    /// The registry refused our credentials.
    #[error("registry {registry} refused access to {reference} (check imageRepoSecret)")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// The image.
        reference: String,
    },
    /// Any other failure: TLS, network, server error.
    #[error("registry {registry}: looking up {reference} failed: {message}")]
    Registry {
        /// Registry host.
        registry: String,
        /// The image.
        reference: String,
        /// What went wrong, with causes.
        message: String,
    },
}

/// The manifest digest of `reference`, or `None` when the registry says the
/// repository or tag is unknown.
///
/// # Errors
/// [`LookupError`] when the registry cannot answer (auth, TLS, network).
pub async fn manifest_digest(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
) -> Result<Option<String>, LookupError> {
    match client.fetch_manifest_digest(reference, auth).await {
        Ok(digest) => Ok(Some(digest)),
        Err(e) => classify(e, reference),
    }
}

fn classify(
    err: OciDistributionError,
    reference: &Reference,
) -> Result<Option<String>, LookupError> {
    let unauthorized = || LookupError::Unauthorized {
        registry: reference.registry().to_owned(),
        reference: reference.whole(),
    };
    match &err {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                return Ok(None);
            }
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                return Err(unauthorized());
            }
        }
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => return Ok(None),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => return Err(unauthorized()),
        _ => {}
    }
    Err(LookupError::Registry {
        registry: reference.registry().to_owned(),
        reference: reference.whole(),
        message: error_chain(&err),
    })
}

/// An error with all its causes, e.g. "error sending request: connection refused".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
