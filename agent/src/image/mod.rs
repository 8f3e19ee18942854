//! Pulling kmod OCI images (oci-client) into a content-addressed local cache.

pub mod auth;
mod error;

pub use auth::{AuthError, Credential, DockerConfig};
pub use error::ImageError;
