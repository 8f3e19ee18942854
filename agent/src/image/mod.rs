//! Pulling kmod OCI images (oci-client) into a content-addressed local cache.
//!
//! [`ImageCache::pull`] resolves a reference under the Module's pull policy,
//! downloads only blobs the cache lacks (each checked against its sha256
//! digest), and unpacks the layers in order with [`crate::extract`] into
//! `<cache>/unpacked/sha256/<manifest hex>/`. [`ImageSource`] abstracts the
//! registry; [`OciSource`] is the HTTP implementation.
//!
//! A pull is bounded whatever the registry does ([`PullOptions`]): an
//! overall deadline and one per manifest request, a cap on each manifest,
//! token and error body enforced while reading, a cap on the layer bytes an
//! image declares (checked before downloading), blobs that must be exactly
//! their descriptor's size, and extraction limits checked by a scan that
//! writes nothing before the layers are unpacked on a blocking thread.

pub use kmm_registry::auth;
mod bounded;
mod cache;
mod error;
mod manifest;
mod pull;
mod reference;
mod source;
mod token;

pub use auth::{AuthError, Credential, DockerConfig};
pub use bounded::DEFAULT_MAX_MANIFEST_BYTES;
pub use cache::{GcReport, ImageCache, RefEntry};
pub use error::ImageError;
pub use manifest::{Descriptor, Manifest, Platform, sha256_digest};
pub use pull::{
    DEFAULT_MANIFEST_DEADLINE, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_PULL_DEADLINE, PullOptions,
    PullPolicy, PulledImage, parse_reference,
};
pub use source::{
    BlobStream, Body, ImageSource, MANIFEST_MEDIA_TYPES, OciSource, RegistryTls,
    ensure_crypto_provider,
};
