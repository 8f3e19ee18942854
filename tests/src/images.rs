//! kmod images for tests, pushed to the real local registry: built with
//! `kmmctl`'s packaging code from small fake module trees, or deliberately broken.

use std::path::Path;

use anyhow::{Context, Result};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// The registry tests and the demo use (`hack/registry/start.sh`).
pub fn registry_addr() -> String {
    format!(
        "127.0.0.1:{}",
        std::env::var("KMM_REGISTRY_PORT").unwrap_or_else(|_| "5000".into())
    )
}

/// The htpasswd-protected registry (`hack/registry/start.sh --auth`), started
/// if it is not running; returns its address and the credentials.
///
/// # Errors
/// If the script fails.
pub fn auth_registry() -> Result<(String, String, String)> {
    let script = crate::controlplane::repo_root().join("hack/registry/start.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--auth")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} --auth failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    Ok((
        format!("127.0.0.1:{}", env("KMM_REGISTRY_AUTH_PORT", "5001")),
        env("KMM_REGISTRY_USER", "kmm"),
        env("KMM_REGISTRY_PASSWORD", "kmm-secret"),
    ))
}

/// Packages fake modules (ELF-looking files; the simulated kernel only needs them
/// to exist) for `kver` and pushes them as `reference`. `modules` is
/// `(name, deps)`; `firmware` files go under `/firmware`. Returns the digest.
///
/// # Errors
/// Packaging or push failures.
pub async fn push_fake_kmod(
    reference: &str,
    kver: &str,
    modules: &[(&str, &[&str])],
    firmware: &[(&str, &[u8])],
) -> Result<String> {
    push_fake_kmod_as(reference, kver, modules, firmware, RegistryAuth::Anonymous).await
}

/// [`push_fake_kmod`] with registry credentials.
///
/// # Errors
/// Packaging or push failures.
pub async fn push_fake_kmod_as(
    reference: &str,
    kver: &str,
    modules: &[(&str, &[&str])],
    firmware: &[(&str, &[u8])],
    auth: RegistryAuth,
) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let tree = dir.path().join("tree");
    let moddir = tree.join("lib/modules").join(kver);
    std::fs::create_dir_all(moddir.join("extra"))?;
    let mut dep = String::new();
    for (name, deps) in modules {
        write(&moddir.join(format!("extra/{name}.ko")), &fake_ko(name))?;
        let deps: Vec<String> = deps.iter().map(|d| format!("extra/{d}.ko")).collect();
        dep.push_str(&format!("extra/{name}.ko: {}\n", deps.join(" ")));
    }
    write(&moddir.join("modules.dep"), dep.as_bytes())?;
    let mut req = kmmctl::package::PackageRequest::new(kver);
    req.module_tree = Some(tree);
    req.module_names = modules.iter().map(|(n, _)| (*n).to_string()).collect();
    for (name, body) in firmware {
        let path = dir.path().join("fw").join(name);
        write(&path, body)?;
        req.firmware.push(kmmctl::package::FirmwareInput {
            source: path,
            dest: Some((*name).to_string()),
        });
    }
    let depmod = kmmctl::depmod::Depmod::find()?;
    let packaged = kmmctl::package::package(&req, &depmod)?;
    let reference = kmmctl::registry::parse_reference(reference, "latest")?;
    let opts = kmmctl::registry::RegistryOptions {
        insecure: true,
        auth,
        ..Default::default()
    };
    Ok(kmmctl::registry::push(&packaged.image, &reference, &opts).await?)
}

/// Pushes an image whose only layer claims to be gzip but is not: the agent
/// must report it and load nothing. Returns the digest.
///
/// # Errors
/// Push failures.
pub async fn push_corrupt_kmod(reference: &str) -> Result<String> {
    let reference: Reference = reference.parse().context("parsing reference")?;
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let layer = ImageLayer::oci_v1(b"this is not a gzip stream".to_vec(), None);
    let config = Config::oci_v1(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
        None,
    );
    client
        .push(&reference, &[layer], config, &RegistryAuth::Anonymous, None)
        .await
        .context("pushing corrupt image")?;
    Ok(client
        .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
        .await?)
}

fn fake_ko(name: &str) -> Vec<u8> {
    let mut v = b"\x7fELF".to_vec();
    v.extend_from_slice(name.as_bytes());
    v
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}
