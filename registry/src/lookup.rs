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

/// What a registry failure means to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The repository, tag, manifest or blob is unknown (404 or an OCI
    /// `*_UNKNOWN` / `NOT_FOUND` code).
    NotFound,
    /// The registry refused the credentials (401/403, `UNAUTHORIZED`, `DENIED`).
    Unauthorized,
    /// Anything else: TLS, network, server errors, digests.
    Other,
}

/// Classifies an oci-client error the way the agent and the controller both
/// need: "missing" and "refused" apart from everything else.
pub fn failure_kind(err: &OciDistributionError) -> FailureKind {
    match err {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes = || envelope.errors.iter().map(|e| &e.code);
            if codes().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                FailureKind::NotFound
            } else if codes()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                FailureKind::Unauthorized
            } else {
                FailureKind::Other
            }
        }
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => FailureKind::NotFound,
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => FailureKind::Unauthorized,
        _ => FailureKind::Other,
    }
}

fn classify(
    err: OciDistributionError,
    reference: &Reference,
) -> Result<Option<String>, LookupError> {
    match failure_kind(&err) {
        FailureKind::NotFound => Ok(None),
        FailureKind::Unauthorized => Err(LookupError::Unauthorized {
            registry: reference.registry().to_owned(),
            reference: reference.whole(),
        }),
        FailureKind::Other => Err(LookupError::Registry {
            registry: reference.registry().to_owned(),
            reference: reference.whole(),
            message: error_chain(&err),
        }),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "http://r/v2/x/manifests/1".into(),
            message: String::new(),
        }
    }

    fn envelope(code: &str) -> OciDistributionError {
        let envelope = serde_json::from_value(serde_json::json!({
            "errors": [{"code": code, "message": "m"}]
        }))
        .unwrap();
        OciDistributionError::RegistryError {
            envelope,
            url: "http://r/v2/x/manifests/1".into(),
        }
    }

    #[test]
    fn missing_and_refused_are_told_apart_from_everything_else() {
        assert_eq!(failure_kind(&server(404)), FailureKind::NotFound);
        assert_eq!(
            failure_kind(&envelope("MANIFEST_UNKNOWN")),
            FailureKind::NotFound
        );
        assert_eq!(
            failure_kind(&envelope("NAME_UNKNOWN")),
            FailureKind::NotFound
        );
        assert_eq!(failure_kind(&server(401)), FailureKind::Unauthorized);
        assert_eq!(failure_kind(&envelope("DENIED")), FailureKind::Unauthorized);
        assert_eq!(failure_kind(&server(500)), FailureKind::Other);
        assert_eq!(
            failure_kind(&envelope("TOOMANYREQUESTS")),
            FailureKind::Other
        );
    }

    #[test]
    fn a_lookup_never_reads_a_server_error_as_missing() {
        let reference: Reference = "r:5000/x:1".parse().unwrap();
        assert_eq!(classify(server(404), &reference).unwrap(), None);
        let err = classify(server(503), &reference).unwrap_err();
        assert!(matches!(err, LookupError::Registry { .. }), "{err}");
        let err = classify(server(403), &reference).unwrap_err();
        assert!(err.to_string().contains("imageRepoSecret"), "{err}");
    }
}
