//! Pushing an [`Image`] to a registry and reading manifests back, with
//! oci-client. The manifest is pushed as the exact bytes that were digested,
//! so the registry's digest equals the locally computed one.

use std::path::{Path, PathBuf};

use kmm_registry::{DockerConfig, RegistryTls};
use oci_client::client::ClientConfig;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::image::{Image, MANIFEST_MEDIA_TYPE};
use crate::progress::{Counting, Progress};

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference does not parse.
    #[error("invalid image reference '{reference}'")]
    Reference {
        /// The reference as given.
        reference: String,
        /// Cause.
        #[source]
        source: oci_client::ParseError,
    },
    /// The auth file cannot be read or parsed.
    #[error("cannot use auth file {path}: {message}")]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A registry request failed.
    #[error("registry {registry}: {action} failed")]
    Registry {
        /// Registry host.
        registry: String,
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: OciDistributionError,
    },
    /// A manifest is unusable (not JSON, no config, no image for the platform).
    #[error("image {reference}: {message}")]
    Manifest {
        /// The image.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// The registry reports a different digest than the one computed locally.
    #[error("registry stored manifest {got}, expected {want}")]
    DigestMismatch {
        /// Local digest.
        want: String,
        /// Registry's digest.
        got: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// HTTPS without certificate verification.
    pub skip_tls_verify: bool,
    /// Credentials.
    pub auth: RegistryAuth,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            insecure: false,
            skip_tls_verify: false,
            auth: RegistryAuth::Anonymous,
        }
    }
}

/// Parses `host/repo[:tag|@digest]`; without a tag or digest, `default_tag` is used
/// (oci-client alone would pick `latest`).
pub fn parse_reference(reference: &str, default_tag: &str) -> Result<Reference> {
    let parsed: Reference = reference.parse().map_err(|source| Error::Reference {
        reference: reference.to_string(),
        source,
    })?;
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || last.contains('@') {
        return Ok(parsed);
    }
    Ok(Reference::with_tag(
        parsed.registry().to_string(),
        parsed.repository().to_string(),
        default_tag.to_string(),
    ))
}

/// Credentials for `reference` from a docker config file (`~/.docker/config.json`,
/// a pull secret's `.dockerconfigjson`, or a legacy `.dockercfg`), matched as the
/// kubelet matches pull secrets ([`kmm_registry::auth`]). No entry for the
/// registry means anonymous access.
pub fn auth_from_file(path: &Path, reference: &Reference) -> Result<RegistryAuth> {
    let err = |message: String| Error::AuthFile {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let config = DockerConfig::from_config_file(&bytes).map_err(|e| err(e.to_string()))?;
    if config.credential_for(reference).is_none() {
        tracing::info!(
            "no credentials for {} in {}, using anonymous access",
            reference.registry(),
            path.display()
        );
    }
    Ok(config.auth_for(reference))
}

/// A registry request that failed, as [`Error::Registry`]: `.map_err(failed(&registry, action))`.
fn failed(registry: &str, action: String) -> impl FnOnce(OciDistributionError) -> Error {
    let registry = registry.to_owned();
    move |source| Error::Registry {
        registry,
        action,
        source,
    }
}

fn client(reference: &Reference, opts: &RegistryOptions) -> Client {
    let tls = RegistryTls {
        insecure: opts.insecure,
        insecure_skip_tls_verify: opts.skip_tls_verify,
    };
    kmm_registry::client_from(ClientConfig {
        // One PUT per blob: fewer round trips than chunked PATCHes for small layers.
        use_monolithic_push: true,
        // That PUT of a large base-image layer may outlast a read timeout.
        read_timeout: None,
        ..kmm_registry::client_config(reference.resolve_registry(), tls)
    })
}

/// Pushes layer, config and manifest (skipping blobs the registry already has)
/// and returns the manifest digest, checked against the registry's answer.
pub async fn push(image: &Image, reference: &Reference, opts: &RegistryOptions) -> Result<String> {
    let blobs = [
        Blob {
            what: "layer",
            digest: &image.layer.digest,
            data: &image.layer.blob,
        },
        Blob {
            what: "config",
            digest: &image.config_digest,
            data: &image.config,
        },
    ];
    push_parts(
        reference,
        opts,
        &blobs,
        &image.manifest,
        MANIFEST_MEDIA_TYPE,
        &image.manifest_digest,
    )
    .await
}

/// A blob to push: what it is (for messages), its digest and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Blob<'a> {
    /// "layer", "config", ... (for logs and errors).
    pub what: &'a str,
    /// `sha256:` digest of `data`.
    pub digest: &'a str,
    /// The bytes.
    pub data: &'a [u8],
}

/// Pushes blobs (skipping those the registry already has), then the manifest
/// bytes exactly as given with `media_type`; returns `manifest_digest`,
/// checked against the registry's answer.
pub async fn push_parts(
    reference: &Reference,
    opts: &RegistryOptions,
    blobs: &[Blob<'_>],
    manifest: &[u8],
    media_type: &str,
    manifest_digest: &str,
) -> Result<String> {
    let client = client(reference, opts);
    let registry = reference.resolve_registry().to_string();
    let fail = |action: String| failed(&registry, action);
    client
        .auth(reference, &opts.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(fail(format!(
            "authentication for push to {}",
            reference.repository()
        )))?;
    for Blob { what, digest, data } in blobs {
        let exists = client
            .blob_exists(reference, digest)
            .await
            .map_err(fail(format!("checking {what} blob {digest}")))?;
        if exists {
            tracing::info!("{what} {digest} already in the registry");
            continue;
        }
        tracing::info!("pushing {what} {digest} ({} B)", data.len());
        let progress = Progress::bytes(&format!("pushing {what}"), data.len() as u64);
        client
            .push_blob_stream(
                reference,
                crate::progress::upload_stream(data, progress.clone()),
                digest,
                Some(data.len() as u64),
            )
            .await
            .map_err(fail(format!("pushing {what} blob {digest}")))?;
        progress.finish();
    }
    let content_type = http::HeaderValue::from_str(media_type).map_err(|_| Error::Manifest {
        reference: reference.whole(),
        message: format!("media type {media_type:?} is not a valid header value"),
    })?;
    let url = client
        .push_manifest_raw(reference, manifest.to_vec(), content_type)
        .await
        .map_err(fail(format!("pushing manifest to {}", reference.whole())))?;
    tracing::info!("pushed manifest {manifest_digest} ({url})");
    if let Some(got) = url.rsplit('/').next().filter(|s| s.starts_with("sha256:"))
        && got != manifest_digest
    {
        return Err(Error::DigestMismatch {
            want: manifest_digest.to_string(),
            got: got.to_string(),
        });
    }
    Ok(manifest_digest.to_string())
}

/// An image pulled whole into memory: manifest, config and every layer blob.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The manifest bytes as the registry served them.
    pub manifest: Vec<u8>,
    /// The manifest's media type (OCI or Docker schema 2).
    pub media_type: String,
    /// `sha256:` digest of `manifest`.
    pub digest: String,
    /// The config blob.
    pub config: Vec<u8>,
    /// The layers in manifest order.
    pub layers: Vec<PulledLayer>,
}

/// One pulled layer blob.
#[derive(Debug, Clone)]
pub struct PulledLayer {
    /// Media type from the manifest.
    pub media_type: String,
    /// `sha256:` digest (checked).
    pub digest: String,
    /// The blob bytes (compressed as stored).
    pub blob: Vec<u8>,
}

/// The GOARCH name of the platform this runs on.
pub use kmm_registry::manifest::host_architecture as current_architecture;

/// Pulls an image whole: manifest, config and all layers. A multi-arch index
/// resolves to its linux entry for this machine's architecture, else linux/amd64.
pub async fn pull(reference: &Reference, opts: &RegistryOptions) -> Result<PulledImage> {
    let client = client(reference, opts);
    let registry = reference.resolve_registry().to_string();
    let fail = |action: String| failed(&registry, action);
    let bad = |message: String| Error::Manifest {
        reference: reference.whole(),
        message,
    };
    client
        .auth(reference, &opts.auth, oci_client::RegistryOperation::Pull)
        .await
        .map_err(fail(format!(
            "authentication for pull from {}",
            reference.repository()
        )))?;
    let accepted = [
        oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
        oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
        oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
        oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    ];
    let mut target = reference.clone();
    let (mut bytes, mut digest) = client
        .pull_manifest_raw(&target, &opts.auth, &accepted)
        .await
        .map_err(fail(format!("fetching manifest {}", target.whole())))?;
    let mut manifest = kmm_registry::manifest::parse(&bytes)
        .map_err(|e| bad(format!("manifest is not an image manifest or index: {e}")))?;
    if let OciManifest::ImageIndex(index) = &manifest {
        let arch = current_architecture();
        let entry = [arch, "amd64"]
            .iter()
            .find_map(|a| kmm_registry::manifest::find_platform(index, "linux", a))
            .ok_or_else(|| {
                bad(format!(
                    "index has no linux/{arch} or linux/amd64 image (has {})",
                    kmm_registry::manifest::platforms(index)
                ))
            })?;
        tracing::info!("{} is an index: using {}", reference.whole(), entry.digest);
        target = Reference::with_digest(
            reference.registry().to_string(),
            reference.repository().to_string(),
            entry.digest.clone(),
        );
        (bytes, digest) = client
            .pull_manifest_raw(&target, &opts.auth, &accepted[..2])
            .await
            .map_err(fail(format!("fetching manifest {}", target.whole())))?;
        manifest = kmm_registry::manifest::parse(&bytes)
            .map_err(|e| bad(format!("manifest {digest} is not an image manifest: {e}")))?;
    }
    let OciManifest::Image(manifest) = manifest else {
        return Err(bad(format!(
            "manifest {digest} is an index inside an index"
        )));
    };
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string());
    let config = pull_blob(&client, &target, &manifest.config.digest, "config").await?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for OciDescriptor {
        media_type,
        digest,
        size,
        ..
    } in &manifest.layers
    {
        let progress = Progress::bytes("pulling layer", u64::try_from(*size).unwrap_or(0));
        let blob = pull_blob_counted(&client, &target, digest, "layer", progress.clone()).await?;
        progress.finish();
        // Checked here too: the layer is re-pushed under this digest.
        let got = crate::digest::sha256_digest(&blob);
        if got != *digest {
            return Err(Error::DigestMismatch {
                want: digest.clone(),
                got,
            });
        }
        layers.push(PulledLayer {
            media_type: media_type.clone(),
            digest: digest.clone(),
            blob,
        });
    }
    Ok(PulledImage {
        manifest: bytes.to_vec(),
        media_type,
        digest,
        config,
        layers,
    })
}

/// Fetches a manifest's raw bytes and digest (for verification and tests).
pub async fn fetch_manifest(
    reference: &Reference,
    opts: &RegistryOptions,
) -> Result<(Vec<u8>, String)> {
    let client = client(reference, opts);
    let (bytes, digest) = client
        .pull_manifest_raw(reference, &opts.auth, &[MANIFEST_MEDIA_TYPE])
        .await
        .map_err(failed(
            reference.resolve_registry(),
            format!("fetching manifest {}", reference.whole()),
        ))?;
    Ok((bytes.to_vec(), digest))
}

/// Fetches a blob into memory (for tests and `kmmctl explain`).
pub async fn fetch_blob(
    reference: &Reference,
    digest: &str,
    opts: &RegistryOptions,
) -> Result<Vec<u8>> {
    let client = client(reference, opts);
    client
        .auth(reference, &opts.auth, oci_client::RegistryOperation::Pull)
        .await
        .map_err(failed(
            reference.resolve_registry(),
            "authentication for pull".to_string(),
        ))?;
    pull_blob(&client, reference, digest, "blob").await
}

/// One blob into memory, by digest; `what` names it in the error.
async fn pull_blob(
    client: &Client,
    reference: &Reference,
    digest: &str,
    what: &str,
) -> Result<Vec<u8>> {
    pull_blob_counted(client, reference, digest, what, Progress::bytes(what, 0)).await
}

/// [`pull_blob`], counting the bytes into `progress` as they arrive.
async fn pull_blob_counted(
    client: &Client,
    reference: &Reference,
    digest: &str,
    what: &str,
    progress: Progress,
) -> Result<Vec<u8>> {
    let mut out = Counting::new(Vec::new(), progress);
    client
        .pull_blob(reference, digest, &mut out)
        .await
        .map_err(failed(
            reference.resolve_registry(),
            format!("fetching {what} {digest}"),
        ))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn missing_tag_defaults_to_kernel_version() {
        let r = parse_reference("127.0.0.1:5000/ns/brd", "6.1.0-56-amd64").unwrap();
        assert_eq!(r.whole(), "127.0.0.1:5000/ns/brd:6.1.0-56-amd64");
        let r = parse_reference("127.0.0.1:5000/ns/brd:v1", "6.1.0-56-amd64").unwrap();
        assert_eq!(r.tag(), Some("v1"));
    }

    #[test]
    fn auth_file_entries_are_matched_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // "alice:s3cret" in base64.
        std::fs::write(
            &path,
            r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"YWxpY2U6czNjcmV0"},
                "other.example":{"username":"bob","password":"pw"}}}"#,
        )
        .unwrap();
        let a = auth_from_file(&path, &r("reg.example:5000/ns/brd:1")).unwrap();
        assert!(matches!(a, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret"));
        let b = auth_from_file(&path, &r("other.example/ns/brd:1")).unwrap();
        assert!(matches!(b, RegistryAuth::Basic(u, p) if u == "bob" && p == "pw"));
        let none = auth_from_file(&path, &r("nowhere.example/ns/brd:1")).unwrap();
        assert!(matches!(none, RegistryAuth::Anonymous));
    }

    #[test]
    fn legacy_dockercfg_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".dockercfg");
        std::fs::write(
            &path,
            r#"{"https://reg.example:5000":{"auth":"YWxpY2U6czNjcmV0","email":"a@b.c"}}"#,
        )
        .unwrap();
        let a = auth_from_file(&path, &r("reg.example:5000/ns/brd:1")).unwrap();
        assert!(matches!(a, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret"));
    }
}
