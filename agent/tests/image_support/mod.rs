//! A real registry for image tests: Debian's docker-registry started by
//! `hack/registry/start.sh` when nothing listens yet, and helpers that push
//! small kmod-like images to it with oci-client.
#![allow(dead_code)] // each test crate uses a different subset
#![allow(clippy::unwrap_used)] // test support: a panic is the failure report

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kmm_agent::image::{Body, ImageError, ImageSource, sha256_digest};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

pub const USER: &str = "kmm";
pub const PASSWORD: &str = "kmm-secret";

static START: Mutex<()> = Mutex::new(());

fn env_port(var: &str, default: u16) -> u16 {
    std::env::var(var)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default)
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// `127.0.0.1:<port>` of a running registry (with htpasswd auth when `auth`).
/// Starts it with the project script if needed; panics if it cannot.
pub fn registry(auth: bool) -> String {
    if auth {
        ensure(env_port("KMM_REGISTRY_AUTH_PORT", 5001), Some("--auth"))
    } else {
        ensure(env_port("KMM_REGISTRY_PORT", 5000), None)
    }
}

/// `127.0.0.1:<port>` of a registry serving HTTPS with a self-signed certificate.
pub fn registry_tls() -> String {
    ensure(env_port("KMM_REGISTRY_TLS_PORT", 5002), Some("--tls"))
}

fn ensure(port: u16, arg: Option<&str>) -> String {
    let _guard = START.lock().unwrap_or_else(|e| e.into_inner());
    if !listening(port) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/registry/start.sh");
        let mut cmd = Command::new(&script);
        cmd.args(arg);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success() && listening(port),
            "could not start the registry on port {port}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    format!("127.0.0.1:{port}")
}

/// Where a registry started by the script keeps blob data (for corruption tests).
pub fn storage_candidates(auth: bool) -> Vec<PathBuf> {
    let run = std::env::var("KMM_RUN").unwrap_or_else(|_| "/tmp/kmm-rs-cp".to_owned());
    let dir = if auth { "registry-auth" } else { "registry" };
    vec![
        PathBuf::from(&run).join(dir).join("storage"),
        PathBuf::from("/tmp/lab/registry/storage"),
    ]
}

/// A repository name unique to this test run.
pub fn unique_repo(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "kmm-test/{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn pusher() -> Client {
    kmm_agent::image::ensure_crypto_provider();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

/// A client for the self-signed HTTPS registry.
pub fn tls_pusher() -> Client {
    kmm_agent::image::ensure_crypto_provider();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Https,
        accept_invalid_certificates: true,
        ..ClientConfig::default()
    })
}

/// [`push_image`] to the self-signed HTTPS registry.
pub async fn push_image_tls(reference: &str, layers: &[PushLayer]) -> String {
    push_image_with(&tls_pusher(), reference, layers, "amd64", false).await
}

pub fn auth(with_auth: bool) -> RegistryAuth {
    if with_auth {
        RegistryAuth::Basic(USER.into(), PASSWORD.into())
    } else {
        RegistryAuth::Anonymous
    }
}

/// A layer to push: bytes and media type.
pub struct PushLayer {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
}

pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Pushes blobs and an OCI image manifest under `reference`; returns the
/// manifest digest.
pub async fn push_image(
    reference: &str,
    layers: &[PushLayer],
    arch: &str,
    with_auth: bool,
) -> String {
    push_image_with(&pusher(), reference, layers, arch, with_auth).await
}

/// Blobs, then the OCI image manifest, through `client`; returns the manifest digest.
async fn push_image_with(
    client: &Client,
    reference: &str,
    layers: &[PushLayer],
    arch: &str,
    with_auth: bool,
) -> String {
    let (manifest, digest) = push_parts_with(client, reference, layers, arch, with_auth).await;
    let r: Reference = reference.parse().unwrap();
    client
        .push_manifest_raw(
            &r,
            manifest,
            http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .unwrap();
    digest
}

/// Pushes blobs; returns the manifest bytes and digest (manifest not pushed).
pub async fn push_manifest_parts(
    reference: &str,
    layers: &[PushLayer],
    arch: &str,
    with_auth: bool,
) -> (Vec<u8>, String) {
    push_parts_with(&pusher(), reference, layers, arch, with_auth).await
}

async fn push_parts_with(
    client: &Client,
    reference: &str,
    layers: &[PushLayer],
    arch: &str,
    with_auth: bool,
) -> (Vec<u8>, String) {
    let r: Reference = reference.parse().unwrap();
    let auth = auth(with_auth);
    client
        .auth(&r, &auth, oci_client::RegistryOperation::Push)
        .await
        .unwrap();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{"Labels":{{"io.k8s.kmod.path":"/opt"}}}}}}"#
    )
    .into_bytes();
    let config_digest = sha256_digest(&config);
    client
        .push_blob(&r, config.clone(), &config_digest)
        .await
        .unwrap();
    let mut descs = Vec::new();
    for layer in layers {
        let d = sha256_digest(&layer.bytes);
        client.push_blob(&r, layer.bytes.clone(), &d).await.unwrap();
        descs.push(format!(
            r#"{{"mediaType":"{}","digest":"{d}","size":{}}}"#,
            layer.media_type,
            layer.bytes.len()
        ));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    )
    .into_bytes();
    let digest = sha256_digest(&manifest);
    (manifest, digest)
}

/// Pushes a manifest under its digest (no tag), e.g. an index entry.
pub async fn push_manifest_by_digest(
    repo_ref: &str,
    manifest: Vec<u8>,
    digest: &str,
    with_auth: bool,
) {
    let base: Reference = repo_ref.parse().unwrap();
    let r = base.clone_with_digest(digest.to_owned());
    let client = pusher();
    client
        .auth(&base, &auth(with_auth), oci_client::RegistryOperation::Push)
        .await
        .unwrap();
    client
        .push_manifest_raw(
            &r,
            manifest,
            http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .unwrap();
}

/// Pushes an OCI index under `reference`; returns its digest.
pub async fn push_index(reference: &str, entries: &[(&str, usize, &str)]) -> String {
    let r: Reference = reference.parse().unwrap();
    let list: Vec<String> = entries
        .iter()
        .map(|(digest, size, arch)| {
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":{size},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        list.join(",")
    )
    .into_bytes();
    let digest = sha256_digest(&index);
    pusher()
        .push_manifest_raw(
            &r,
            index,
            http::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        )
        .await
        .unwrap();
    digest
}

/// Counts the requests another source makes (the registry is still real).
pub struct Counting<S> {
    pub inner: S,
    pub resolves: AtomicU32,
    pub manifests: AtomicU32,
    pub blobs: AtomicU32,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            resolves: AtomicU32::new(0),
            manifests: AtomicU32::new(0),
            blobs: AtomicU32::new(0),
        }
    }

    /// (resolves, manifests, blobs)
    pub fn counts(&self) -> (u32, u32, u32) {
        (
            self.resolves.load(Ordering::SeqCst),
            self.manifests.load(Ordering::SeqCst),
            self.blobs.load(Ordering::SeqCst),
        )
    }
}

impl<S: ImageSource> ImageSource for Counting<S> {
    async fn resolve(&self, reference: &Reference) -> Result<String, ImageError> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
        self.inner.resolve(reference).await
    }

    async fn fetch_manifest(&self, reference: &Reference) -> Result<Body, ImageError> {
        self.manifests.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch_manifest(reference).await
    }

    async fn fetch_blob(&self, reference: &Reference, digest: &str) -> Result<Body, ImageError> {
        self.blobs.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch_blob(reference, digest).await
    }
}
