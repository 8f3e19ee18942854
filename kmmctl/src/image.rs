//! The OCI image config and manifest for one layer, serialised to fixed bytes
//! (struct field order, sorted label maps, no `created` unless asked for), so
//! the manifest digest depends only on the inputs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::digest::sha256_digest;
use crate::layer::{self, Layer};

/// OCI image manifest media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Label: kernel release the modules are built for.
pub const LABEL_KERNEL_RELEASE: &str = "io.k8s.kmod.kernel-release";
/// Label: comma-separated requested module names.
pub const LABEL_MODULES: &str = "io.k8s.kmod.modules";
/// Label: the dirName modprobe must use (`modprobe -d`).
pub const LABEL_PATH: &str = "io.k8s.kmod.path";

/// What the config describes besides the layer.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// Kernel release.
    pub kver: String,
    /// Requested module names (not their dependencies).
    pub modules: Vec<String>,
    /// Absolute dirName, e.g. `/opt`.
    pub dir_name: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// RFC 3339 time for `created`, or None for no timestamp at all.
    pub created: Option<String>,
    /// Extra labels; they override the defaults on conflict.
    pub labels: BTreeMap<String, String>,
}

/// A complete image: config and manifest bytes plus the layer.
#[derive(Debug, Clone)]
pub struct Image {
    /// Serialised config (the config blob).
    pub config: Vec<u8>,
    /// `sha256:` digest of `config`.
    pub config_digest: String,
    /// Serialised manifest.
    pub manifest: Vec<u8>,
    /// `sha256:` digest of `manifest` (the image digest).
    pub manifest_digest: String,
    /// The layer.
    pub layer: Layer,
    /// The labels written into the config.
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a str,
    size: u64,
}

#[derive(Serialize)]
struct Manifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Config<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<&'a str>,
    architecture: &'a str,
    os: &'a str,
    config: RuntimeConfig<'a>,
    rootfs: RootFs<'a>,
    history: Vec<History<'a>>,
}

#[derive(Serialize)]
struct RuntimeConfig<'a> {
    #[serde(rename = "Labels")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
struct History<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<&'a str>,
    created_by: String,
}

/// The labels an image gets: the three `io.k8s.kmod.*` ones, a few
/// `org.opencontainers.image.*` ones, then the user's.
pub fn labels(meta: &ImageMeta) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_KERNEL_RELEASE.to_string(), meta.kver.clone()),
        (LABEL_MODULES.to_string(), meta.modules.join(",")),
        (LABEL_PATH.to_string(), meta.dir_name.clone()),
        (
            "org.opencontainers.image.title".to_string(),
            format!("kmod image: {}", meta.modules.join(",")),
        ),
        (
            "org.opencontainers.image.description".to_string(),
            format!(
                "Kernel modules {} for kernel {}, modprobe -d {}",
                meta.modules.join(","),
                meta.kver,
                meta.dir_name
            ),
        ),
    ]);
    if let Some(created) = &meta.created {
        labels.insert("org.opencontainers.image.created".into(), created.clone());
    }
    labels.extend(meta.labels.clone());
    labels
}

/// Builds config and manifest around `layer`.
pub fn build(meta: &ImageMeta, layer: Layer) -> Image {
    let labels = labels(meta);
    let config = Config {
        created: meta.created.as_deref(),
        architecture: &meta.architecture,
        os: "linux",
        config: RuntimeConfig { labels: &labels },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![&layer.diff_id],
        },
        history: vec![History {
            created: meta.created.as_deref(),
            created_by: format!("kmmctl package {}", meta.modules.join(" ")),
        }],
    };
    let config_bytes = to_json(&config);
    let config_digest = sha256_digest(&config_bytes);
    let mut annotations = BTreeMap::new();
    if let Some(created) = &meta.created {
        annotations.insert("org.opencontainers.image.created", created.as_str());
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE,
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE,
            digest: &config_digest,
            size: config_bytes.len() as u64,
        },
        layers: vec![Descriptor {
            media_type: layer::MEDIA_TYPE,
            digest: &layer.digest,
            size: layer.blob.len() as u64,
        }],
        annotations,
    };
    let manifest_bytes = to_json(&manifest);
    Image {
        manifest_digest: sha256_digest(&manifest_bytes),
        manifest: manifest_bytes,
        config: config_bytes,
        config_digest,
        layer,
        labels,
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // These structs hold only strings, integers and string maps, which
    // serde_json cannot fail to serialise.
    serde_json::to_vec(value).unwrap_or_default()
}
