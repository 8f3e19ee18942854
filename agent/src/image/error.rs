//! Errors of pulling and caching images, worded for a Module status.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::extract::ExtractError;

use super::auth::AuthError;

/// Why an image could not be pulled, found in the cache, or unpacked.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference '{reference}': {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// The parser's message.
        reason: String,
    },
    /// `imagePullPolicy` is not one of the three Kubernetes values.
    #[error("invalid imagePullPolicy '{value}' (expected Always, IfNotPresent or Never)")]
    InvalidPullPolicy {
        /// The value as given.
        value: String,
    },
    /// The registry does not know the tag (or repository).
    #[error("image {reference} not found in registry (manifest unknown)")]
    NotFound {
        /// The reference.
        reference: String,
    },
    /// The registry does not know a manifest the image index points to.
    #[error("manifest unknown: {digest} (from {reference})")]
    ManifestUnknown {
        /// The image reference.
        reference: String,
        /// The missing manifest's digest.
        digest: String,
    },
    /// The registry does not have a blob the manifest lists.
    #[error("blob {digest} of image {reference} not found in registry")]
    BlobNotFound {
        /// The image reference.
        reference: String,
        /// The missing blob's digest.
        digest: String,
    },
    /// The registry refused the credentials (or their absence).
    #[error(
        "unauthorized: registry {registry} refused access to {reference} (check imageRepoSecret)"
    )]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The image reference.
        reference: String,
    },
    /// Content does not hash to the digest it was fetched by.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was fetched ("blob ...", "manifest of ...").
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A blob is larger than its descriptor says, or than the size limit.
    #[error("blob {digest} is larger than {limit} bytes")]
    BlobTooLarge {
        /// The blob's digest.
        digest: String,
        /// The size it exceeded.
        limit: u64,
    },
    /// A manifest or index is larger than the manifest cap.
    #[error("manifest of {reference} is {}", too_large_text(*.announced, *.limit))]
    ManifestTooLarge {
        /// The image reference.
        reference: String,
        /// The cap.
        limit: u64,
        /// The size the registry announced or the descriptor declared
        /// (`None`: it sent more than the cap without saying so).
        announced: Option<u64>,
    },
    /// The layers the manifest declares add up to more than the image cap.
    #[error("image {reference} declares {size} bytes of layers, more than the {limit}-byte limit")]
    ImageTooLarge {
        /// The image reference.
        reference: String,
        /// The sum of the declared layer sizes.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Content is not the size its descriptor declares.
    #[error("{what} is {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        /// What was fetched ("blob ...", "manifest ...").
        what: String,
        /// The descriptor's size.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// The pull (or one manifest fetch) ran out of time; nothing of it was kept.
    #[error("{what} exceeded its deadline of {seconds} s after {bytes} bytes")]
    DeadlineExceeded {
        /// "pull of <reference>" or "manifest fetch of <reference>".
        what: String,
        /// The deadline.
        seconds: u64,
        /// Bytes received from the registry by then.
        bytes: u64,
    },
    /// A digest is malformed or uses an algorithm other than sha256.
    #[error("unsupported or malformed digest '{digest}' (only sha256:<64 hex> is accepted)")]
    InvalidDigest {
        /// The digest as found.
        digest: String,
    },
    /// A multi-arch index has no entry for this node's platform.
    #[error("image {reference} has no {wanted} entry in its index (available: {available})")]
    NoMatchingPlatform {
        /// The image reference.
        reference: String,
        /// The platform looked for, as `os/arch`.
        wanted: String,
        /// What the index offers.
        available: String,
    },
    /// The manifest is not an image manifest or index this agent understands.
    #[error("image {reference}: invalid manifest: {reason}")]
    InvalidManifest {
        /// The image reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// `imagePullPolicy: Never` and the image is not in the local cache.
    #[error("image {reference} is not in the local cache and imagePullPolicy is Never")]
    NotCached {
        /// The image reference.
        reference: String,
    },
    /// A layer could not be unpacked.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// The extraction error.
        #[source]
        source: ExtractError,
    },
    /// Talking to the registry failed (connection, TLS, protocol).
    #[error("registry {registry} ({reference}): {message}")]
    Registry {
        /// The registry host.
        registry: String,
        /// The image reference.
        reference: String,
        /// The error with its causes.
        message: String,
    },
    /// The pull secret could not be used.
    #[error("pull secret: {0}")]
    Secret(#[from] AuthError),
    /// Reading or writing the local cache failed.
    #[error("image cache '{}': {source}", path.display())]
    Cache {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidReference { .. } | Self::InvalidPullPolicy { .. } => "invalid_spec",
            Self::NotFound { .. } | Self::ManifestUnknown { .. } | Self::BlobNotFound { .. } => {
                "not_found"
            }
            Self::Unauthorized { .. } | Self::Secret(_) => "unauthorized",
            Self::DigestMismatch { .. }
            | Self::BlobTooLarge { .. }
            | Self::InvalidDigest { .. } => "bad_content",
            Self::NoMatchingPlatform { .. } | Self::InvalidManifest { .. } => "bad_manifest",
            Self::ManifestTooLarge { .. } | Self::ImageTooLarge { .. } => "too_large",
            Self::SizeMismatch { .. } => "bad_content",
            Self::DeadlineExceeded { .. } => "deadline",
            Self::NotCached { .. } => "not_cached",
            Self::Layer { .. } => "layer",
            Self::Registry { .. } => "registry",
            Self::Cache { .. } => "cache_io",
        }
    }

    /// A pull that ran out of time, from its deadline and the bytes received.
    pub(crate) fn deadline(what: String, deadline: std::time::Duration, bytes: u64) -> Self {
        Self::DeadlineExceeded {
            what,
            seconds: deadline.as_secs() + u64::from(deadline.subsec_nanos() > 0),
            bytes,
        }
    }

    pub(crate) fn cache(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Cache {
            path: path.into(),
            source,
        }
    }
}

fn too_large_text(size: Option<u64>, limit: u64) -> String {
    match size {
        Some(n) => format!("{n} bytes, more than the {limit}-byte limit"),
        None => format!("larger than the {limit}-byte limit"),
    }
}
