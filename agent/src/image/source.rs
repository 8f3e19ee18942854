//! Where images come from: the [`ImageSource`] trait and its oci-client
//! implementation. The source only transports bytes; digests are verified
//! and platforms chosen by the caller, so a test double needs no logic.

use std::future::Future;

use futures::StreamExt;
use futures::stream::BoxStream;
use kmm_registry::lookup::FailureKind;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::ImageError;

/// Manifest media types asked for (image manifests and indexes, OCI and Docker).
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// A blob's bytes as they arrive.
pub type BlobStream = BoxStream<'static, std::io::Result<Vec<u8>>>;

/// A registry (or anything that serves images like one).
pub trait ImageSource: Send + Sync {
    /// The digest `reference` points at now (a HEAD request for a tag).
    fn resolve(
        &self,
        reference: &Reference,
    ) -> impl Future<Output = Result<String, ImageError>> + Send;

    /// The raw manifest (or index) for a reference, by tag or by digest.
    /// Returns the bytes exactly as served; the caller checks the digest.
    fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> impl Future<Output = Result<Vec<u8>, ImageError>> + Send;

    /// A blob of the reference's repository, as a stream of chunks.
    fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> impl Future<Output = Result<BlobStream, ImageError>> + Send;
}

pub use kmm_registry::RegistryTls;

/// The oci-client implementation, for one registry with one set of credentials.
pub struct OciSource {
    client: Client,
    auth: RegistryAuth,
}

impl OciSource {
    /// A client for `registry` (`host[:port]` as in the reference).
    pub fn new(registry: &str, tls: RegistryTls, auth: RegistryAuth) -> Self {
        Self {
            client: kmm_registry::client(registry, tls),
            auth,
        }
    }
}

impl ImageSource for OciSource {
    async fn resolve(&self, reference: &Reference) -> Result<String, ImageError> {
        self.client
            .fetch_manifest_digest(reference, &self.auth)
            .await
            .map_err(|e| map_error(e, reference, None))
    }

    async fn fetch_manifest(&self, reference: &Reference) -> Result<Vec<u8>, ImageError> {
        let (bytes, _digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| map_error(e, reference, None))?;
        Ok(bytes.to_vec())
    }

    async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<BlobStream, ImageError> {
        // Blob requests reuse the auth stored by the manifest request, but a
        // caller may fetch a blob first (cached manifest): store it here too.
        self.client
            .store_auth_if_needed(reference.resolve_registry(), &self.auth)
            .await;
        let desc = OciDescriptor {
            digest: digest.to_owned(),
            ..OciDescriptor::default()
        };
        let stream = self
            .client
            .pull_blob_stream(reference, &desc)
            .await
            .map_err(|e| map_error(e, reference, Some(digest)))?;
        Ok(stream.stream.map(|chunk| chunk.map(|b| b.to_vec())).boxed())
    }
}

pub use kmm_registry::ensure_crypto_provider;

/// Turns an oci-client error into a message a user can act on.
fn map_error(err: OciDistributionError, reference: &Reference, blob: Option<&str>) -> ImageError {
    let whole = reference.whole();
    let registry = reference.registry().to_owned();
    let not_found = || match (blob, reference.digest()) {
        (Some(digest), _) => ImageError::BlobNotFound {
            reference: whole.clone(),
            digest: digest.to_owned(),
        },
        (None, Some(digest)) if reference.tag().is_none() => ImageError::ManifestUnknown {
            reference: whole.clone(),
            digest: digest.to_owned(),
        },
        (None, _) => ImageError::NotFound {
            reference: whole.clone(),
        },
    };
    let unauthorized = || ImageError::Unauthorized {
        registry: registry.clone(),
        reference: whole.clone(),
    };
    match kmm_registry::lookup::failure_kind(&err) {
        FailureKind::NotFound => return not_found(),
        FailureKind::Unauthorized => return unauthorized(),
        FailureKind::Other => {}
    }
    match err {
        OciDistributionError::RegistryError { envelope, .. } => ImageError::Registry {
            registry,
            reference: whole,
            message: envelope.to_string(),
        },
        OciDistributionError::DigestError(e) => ImageError::DigestMismatch {
            what: blob.map_or_else(|| format!("manifest of {whole}"), |d| format!("blob {d}")),
            expected: blob.unwrap_or_default().to_owned(),
            actual: e.to_string(),
        },
        other => ImageError::Registry {
            registry,
            reference: whole,
            message: kmm_registry::lookup::error_chain(&other),
        },
    }
}
