//! Pushing an [`Image`] to a registry and reading manifests back, with
//! oci-client. The manifest is pushed as the exact bytes that were digested,
//! so the registry's digest equals the locally computed one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use crate::image::{Image, MANIFEST_MEDIA_TYPE};

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

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: Option<BTreeMap<String, DockerAuth>>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Credentials for `registry` from a docker config JSON (`~/.docker/config.json`,
/// a pull secret's `.dockerconfigjson`, or a legacy `.dockercfg`, which is the
/// `auths` map without the wrapper). Keys may be `host`, `https://host`
/// or `https://host/v1/`. No entry for the registry means anonymous access.
pub fn auth_from_file(path: &Path, registry: &str) -> Result<RegistryAuth> {
    let err = |message: String| Error::AuthFile {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let auths = match config.auths {
        Some(auths) => auths,
        // Legacy .dockercfg: host keys at the top level. Other top-level keys
        // of a config.json without `auths` (credsStore, ...) are not hosts.
        None => serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&text)
            .map_err(|e| err(e.to_string()))?
            .into_iter()
            .filter_map(|(k, v)| Some((k, serde_json::from_value::<DockerAuth>(v).ok()?)))
            .collect(),
    };
    let wanted = registry_aliases(registry);
    let entry = auths.iter().find(|(key, _)| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        wanted.iter().any(|w| w == host)
    });
    let Some((_, auth)) = entry else {
        tracing::info!(
            "no credentials for {registry} in {}, using anonymous access",
            path.display()
        );
        return Ok(RegistryAuth::Anonymous);
    };
    if let (Some(user), Some(pass)) = (&auth.username, &auth.password) {
        return Ok(RegistryAuth::Basic(user.clone(), pass.clone()));
    }
    let encoded = auth.auth.as_deref().ok_or_else(|| {
        err(format!(
            "entry for {registry} has neither auth nor username/password"
        ))
    })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| err(format!("auth for {registry} is not base64: {e}")))?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| err(format!("auth for {registry} is not UTF-8")))?;
    let (user, pass) = decoded
        .split_once(':')
        .ok_or_else(|| err(format!("auth for {registry} is not 'user:password'")))?;
    Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()))
}

/// Docker Hub is known under several names.
fn registry_aliases(registry: &str) -> Vec<String> {
    const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    if HUB.contains(&registry) {
        HUB.iter().map(|s| s.to_string()).collect()
    } else {
        vec![registry.to_string()]
    }
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
    // oci-client is built without a TLS crypto provider (workspace).
    kmm_registry::ensure_crypto_provider();
    let protocol = if opts.insecure {
        ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        accept_invalid_certificates: opts.skip_tls_verify,
        // One PUT per blob: fewer round trips than chunked PATCHes for small layers.
        use_monolithic_push: true,
        ..Default::default()
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
        client
            .push_blob(reference, data.to_vec(), digest)
            .await
            .map_err(fail(format!("pushing {what} blob {digest}")))?;
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

const INDEX_MEDIA_TYPES: [&str; 2] = [
    oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
}

/// The GOARCH name of the platform this runs on.
pub fn current_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

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
        INDEX_MEDIA_TYPES[0],
        INDEX_MEDIA_TYPES[1],
    ];
    let mut target = reference.clone();
    let (mut bytes, mut digest) = client
        .pull_manifest_raw(&target, &opts.auth, &accepted)
        .await
        .map_err(fail(format!("fetching manifest {}", target.whole())))?;
    let mut manifest: RawManifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest is not JSON: {e}")))?;
    if !manifest.manifests.is_empty() {
        let wanted = [current_architecture(), "amd64"];
        let entry = wanted
            .iter()
            .find_map(|arch| {
                manifest.manifests.iter().find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == *arch)
                })
            })
            .ok_or_else(|| {
                let have: Vec<String> = manifest
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                bad(format!(
                    "index has no linux/{} or linux/amd64 image (has {})",
                    wanted[0],
                    have.join(", ")
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
        manifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("manifest {digest} is not JSON: {e}")))?;
    }
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string());
    let config_desc = manifest
        .config
        .as_ref()
        .ok_or_else(|| bad(format!("manifest {digest} has no config")))?;
    let fetch = |d: &RawDescriptor| oci_client::manifest::OciDescriptor {
        digest: d.digest.clone(),
        media_type: d.media_type.clone(),
        ..Default::default()
    };
    let mut config = Vec::new();
    client
        .pull_blob(&target, &fetch(config_desc), &mut config)
        .await
        .map_err(fail(format!("fetching config {}", config_desc.digest)))?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        let mut blob = Vec::new();
        client
            .pull_blob(&target, &fetch(layer), &mut blob)
            .await
            .map_err(fail(format!("fetching layer {}", layer.digest)))?;
        // Checked here too: the layer is re-pushed under this digest.
        let got = crate::digest::sha256_digest(&blob);
        if got != layer.digest {
            return Err(Error::DigestMismatch {
                want: layer.digest.clone(),
                got,
            });
        }
        layers.push(PulledLayer {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
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
    let mut out = Vec::new();
    client
        .auth(reference, &opts.auth, oci_client::RegistryOperation::Pull)
        .await
        .map_err(failed(
            reference.resolve_registry(),
            "authentication for pull".to_string(),
        ))?;
    let descriptor = oci_client::manifest::OciDescriptor {
        digest: digest.to_string(),
        ..Default::default()
    };
    client
        .pull_blob(reference, &descriptor, &mut out)
        .await
        .map_err(failed(
            reference.resolve_registry(),
            format!("fetching blob {digest}"),
        ))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let a = auth_from_file(&path, "reg.example:5000").unwrap();
        assert!(matches!(a, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret"));
        let b = auth_from_file(&path, "other.example").unwrap();
        assert!(matches!(b, RegistryAuth::Basic(u, p) if u == "bob" && p == "pw"));
        let none = auth_from_file(&path, "nowhere.example").unwrap();
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
        let a = auth_from_file(&path, "reg.example:5000").unwrap();
        assert!(matches!(a, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret"));
    }
}
