//! Where images come from: the [`ImageSource`] trait and its registry
//! implementation. The source only transports bytes; digests, sizes and
//! byte caps are checked and platforms chosen by the caller, so a test
//! double needs no logic.
//!
//! [`OciSource`] speaks the distribution API itself rather than through
//! oci-client, which reads whole manifest, token and error bodies into
//! memory: a hostile registry can send gigabytes there. Here every body is
//! a stream the caller reads with a cap.

use std::future::Future;

use futures::StreamExt;
use futures::stream::BoxStream;
use kmm_registry::lookup::error_chain;
use kmm_registry::reqwest::{self, Method, StatusCode, header};
use oci_client::Reference;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use tokio::sync::OnceCell;

use super::ImageError;
use super::bounded::{self, DEFAULT_MAX_MANIFEST_BYTES};
use super::token;

/// Manifest media types asked for (image manifests and indexes, OCI and Docker).
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Bytes of an error response kept for the message.
const ERROR_BODY_BYTES: u64 = 4096;

/// A blob's bytes as they arrive.
pub type BlobStream = BoxStream<'static, std::io::Result<Vec<u8>>>;

/// A response body not read yet.
pub struct Body {
    /// The length the server announced (`Content-Length`), if any.
    pub announced_len: Option<u64>,
    /// The bytes, as they arrive.
    pub chunks: BlobStream,
}

impl Body {
    /// A body already in memory (for test doubles).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            announced_len: Some(bytes.len() as u64),
            chunks: futures::stream::once(async move { Ok(bytes) }).boxed(),
        }
    }
}

/// A registry (or anything that serves images like one).
pub trait ImageSource: Send + Sync {
    /// The digest `reference` points at now (a HEAD request for a tag).
    fn resolve(
        &self,
        reference: &Reference,
    ) -> impl Future<Output = Result<String, ImageError>> + Send;

    /// The raw manifest (or index) for a reference, by tag or by digest,
    /// exactly as served; the caller caps its size and checks the digest.
    fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> impl Future<Output = Result<Body, ImageError>> + Send;

    /// A blob of the reference's repository; the caller caps its size and
    /// checks the digest.
    fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> impl Future<Output = Result<Body, ImageError>> + Send;
}

pub use kmm_registry::RegistryTls;

/// The registry implementation, for one registry and repository with one
/// set of credentials (one pull).
pub struct OciSource {
    http: Result<reqwest::Client, String>,
    scheme: &'static str,
    auth: RegistryAuth,
    /// The `Authorization` header, found once per source.
    authorization: OnceCell<Option<header::HeaderValue>>,
    max_manifest_bytes: u64,
}

impl OciSource {
    /// A client for `registry` (`host[:port]` as in the reference). Requests
    /// go to each reference's own registry; `tls` and `auth` are this one's.
    pub fn new(_registry: &str, tls: RegistryTls, auth: RegistryAuth) -> Self {
        Self {
            http: kmm_registry::http_client(tls).map_err(|e| error_chain(&e)),
            scheme: kmm_registry::scheme(tls),
            auth,
            authorization: OnceCell::new(),
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
        }
    }

    /// Caps a manifest read by [`ImageSource::resolve`] itself (when the
    /// registry does not send `Docker-Content-Digest`).
    #[must_use]
    pub fn with_max_manifest_bytes(mut self, max: u64) -> Self {
        self.max_manifest_bytes = max;
        self
    }

    /// Sends one request; a non-success status becomes an error (its body
    /// read only up to [`ERROR_BODY_BYTES`]).
    async fn send(
        &self,
        method: Method,
        reference: &Reference,
        path: &str,
        blob: Option<&str>,
    ) -> Result<reqwest::Response, ImageError> {
        let http = self.http.as_ref().map_err(|e| ImageError::Registry {
            registry: reference.registry().to_owned(),
            reference: reference.whole(),
            message: format!("HTTP client: {e}"),
        })?;
        let url = format!(
            "{}://{}/v2/{}/{path}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository()
        );
        let mut request = http
            .request(method, &url)
            .header(header::ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
        let base = format!("{}://{}", self.scheme, reference.resolve_registry());
        let authorization = self
            .authorization
            .get_or_try_init(|| token::authorization(http, &base, reference, &self.auth))
            .await?;
        if let Some(value) = authorization.clone() {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(&e, reference))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = bounded::read_to_limit(body_of(response).chunks, ERROR_BODY_BYTES).await;
        Err(status_error(status, &body, reference, blob))
    }
}

impl ImageSource for OciSource {
    async fn resolve(&self, reference: &Reference) -> Result<String, ImageError> {
        let path = format!("manifests/{}", target(reference));
        let head = self.send(Method::HEAD, reference, &path, None).await?;
        let header = head
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let digest = match header {
            Some(digest) => digest,
            None => {
                // The header is optional: hash the manifest, read with the cap.
                let response = self.send(Method::GET, reference, &path, None).await?;
                let body = body_of(response);
                let bytes =
                    bounded::read_manifest(body, self.max_manifest_bytes, reference, None).await?;
                super::sha256_digest(&bytes)
            }
        };
        // A pinned digest is what the user asked for, whatever the registry says.
        match reference.digest() {
            Some(pinned) if pinned != digest => Err(ImageError::DigestMismatch {
                what: format!("manifest of {}", reference.whole()),
                expected: pinned.to_owned(),
                actual: digest,
            }),
            _ => Ok(digest),
        }
    }

    async fn fetch_manifest(&self, reference: &Reference) -> Result<Body, ImageError> {
        let path = format!("manifests/{}", target(reference));
        let response = self.send(Method::GET, reference, &path, None).await?;
        Ok(body_of(response))
    }

    async fn fetch_blob(&self, reference: &Reference, digest: &str) -> Result<Body, ImageError> {
        let path = format!("blobs/{digest}");
        let response = self
            .send(Method::GET, reference, &path, Some(digest))
            .await?;
        Ok(body_of(response))
    }
}

/// The digest if the reference has one, else the tag (`latest` if none).
fn target(reference: &Reference) -> &str {
    reference
        .digest()
        .unwrap_or_else(|| reference.tag().unwrap_or("latest"))
}

pub(crate) fn body_of(response: reqwest::Response) -> Body {
    Body {
        announced_len: response.content_length(),
        chunks: response
            .bytes_stream()
            .map(|chunk| chunk.map(|b| b.to_vec()).map_err(std::io::Error::other))
            .boxed(),
    }
}

fn transport_error(err: &reqwest::Error, reference: &Reference) -> ImageError {
    ImageError::Registry {
        registry: reference.registry().to_owned(),
        reference: reference.whole(),
        message: error_chain(err),
    }
}

/// The error for a non-success status.
fn status_error(
    status: StatusCode,
    body: &[u8],
    reference: &Reference,
    blob: Option<&str>,
) -> ImageError {
    let whole = reference.whole();
    match status {
        StatusCode::NOT_FOUND => not_found(reference, blob),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ImageError::Unauthorized {
            registry: reference.registry().to_owned(),
            reference: whole,
        },
        _ => ImageError::Registry {
            registry: reference.registry().to_owned(),
            reference: whole,
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
        },
    }
}

fn not_found(reference: &Reference, blob: Option<&str>) -> ImageError {
    let whole = reference.whole();
    match (blob, reference.digest()) {
        (Some(digest), _) => ImageError::BlobNotFound {
            reference: whole,
            digest: digest.to_owned(),
        },
        (None, Some(digest)) if reference.tag().is_none() => ImageError::ManifestUnknown {
            reference: whole,
            digest: digest.to_owned(),
        },
        (None, _) => ImageError::NotFound { reference: whole },
    }
}

pub use kmm_registry::ensure_crypto_provider;
