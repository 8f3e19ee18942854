//! Pushing an [`Image`] to a registry and reading manifests back, with
//! oci-client. The manifest is pushed as the exact bytes that were digested,
//! so the registry's digest equals the locally computed one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
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
        source: oci_client::errors::OciDistributionError,
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
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Credentials for `registry` from a docker config JSON (`~/.docker/config.json`,
/// a pull secret's `.dockerconfigjson`). Keys may be `host`, `https://host`
/// or `https://host/v1/`. No entry for the registry means anonymous access.
pub fn auth_from_file(path: &Path, registry: &str) -> Result<RegistryAuth> {
    let err = |message: String| Error::AuthFile {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let wanted = registry_aliases(registry);
    let entry = config.auths.iter().find(|(key, _)| {
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

/// oci-client is built without a TLS crypto provider (kube brings ring; two
/// providers would make rustls refuse to pick one): install ring once.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn client(reference: &Reference, opts: &RegistryOptions) -> Client {
    ensure_crypto_provider();
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
    let client = client(reference, opts);
    let registry = reference.resolve_registry().to_string();
    let fail = |action: String| {
        let registry = registry.clone();
        move |source| Error::Registry {
            registry,
            action,
            source,
        }
    };
    client
        .auth(reference, &opts.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(fail(format!(
            "authentication for push to {}",
            reference.repository()
        )))?;
    for (what, digest, data) in [
        ("layer", &image.layer.digest, &image.layer.blob),
        ("config", &image.config_digest, &image.config),
    ] {
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
            .push_blob(reference, data.clone(), digest)
            .await
            .map_err(fail(format!("pushing {what} blob {digest}")))?;
    }
    let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
    let url = client
        .push_manifest_raw(reference, image.manifest.clone(), content_type)
        .await
        .map_err(fail(format!("pushing manifest to {}", reference.whole())))?;
    tracing::info!("pushed manifest {} ({url})", image.manifest_digest);
    if let Some(got) = url.rsplit('/').next().filter(|s| s.starts_with("sha256:"))
        && got != image.manifest_digest
    {
        return Err(Error::DigestMismatch {
            want: image.manifest_digest.clone(),
            got: got.to_string(),
        });
    }
    Ok(image.manifest_digest.clone())
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
        .map_err(|source| Error::Registry {
            registry: reference.resolve_registry().to_string(),
            action: format!("fetching manifest {}", reference.whole()),
            source,
        })?;
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
        .map_err(|source| Error::Registry {
            registry: reference.resolve_registry().to_string(),
            action: "authentication for pull".to_string(),
            source,
        })?;
    let descriptor = oci_client::manifest::OciDescriptor {
        digest: digest.to_string(),
        ..Default::default()
    };
    client
        .pull_blob(reference, &descriptor, &mut out)
        .await
        .map_err(|source| Error::Registry {
            registry: reference.resolve_registry().to_string(),
            action: format!("fetching blob {digest}"),
            source,
        })?;
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
}
