//! Signing the modules inside a kmod image (`kmmctl sign`, what the
//! controller's sign Job runs): pull `--from`, find the files in the merged
//! view of its layers, sign them, push `--to` as the same layers plus one
//! gzip layer holding the signed files (same paths, modes, owners and mtimes),
//! with the config's `rootfs.diff_ids` and `history` extended and everything
//! else (labels, env, ...) kept.
//!
//! A multi-arch `--from` resolves to one platform's image (see
//! [`crate::registry::pull`]); `--to` is that single image, not an index.
//!
//! Selection: each `--file` must match at least one regular file, or nothing
//! is pushed. Matched symlinks and directories are skipped; a matched hard
//! link or compressed module (`.ko.xz`, ...) is an error naming it. The image
//! is held in memory while it is signed (kmod images are small).

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobMatcher};
use oci_client::Reference;
use serde_json::{Value, json};

use super::merged::{Merged, Node};
use super::{HashAlgorithm, Signer};
use crate::digest::sha256_digest;
use crate::layer::{self, Layer};
use crate::registry::{self, Blob, PulledImage, RegistryOptions};

/// Errors of the image flow; each names the image or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--file` pattern is not a valid glob.
    #[error("invalid --file pattern '{pattern}'")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Cause.
        #[source]
        source: globset::Error,
    },
    /// A `--file` pattern matches no regular file in the image.
    #[error("--file '{pattern}' matches no regular file in {image}{detail}")]
    NoMatch {
        /// The pattern.
        pattern: String,
        /// The image.
        image: String,
        /// Non-regular entries it did match, if any.
        detail: String,
    },
    /// A matched module is compressed; only plain `.ko` files are signed in images.
    #[error(
        "{path} in {image} is compressed: kmmctl sign signs plain .ko files (kmmctl package ships them decompressed)"
    )]
    Compressed {
        /// The file.
        path: String,
        /// The image.
        image: String,
    },
    /// A matched file is a hard link (its target should be signed instead).
    #[error("{path} in {image} is a hard link to /{target}: sign the target instead")]
    HardLink {
        /// The file.
        path: String,
        /// Its target.
        target: String,
        /// The image.
        image: String,
    },
    /// A layer cannot be read.
    #[error("{image}: cannot read layer {digest}")]
    Layer {
        /// The image.
        image: String,
        /// Layer digest.
        digest: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The image config is not usable JSON.
    #[error("{image}: config {digest} is not an image config: {message}")]
    Config {
        /// The image.
        image: String,
        /// Config digest.
        digest: String,
        /// What is wrong.
        message: String,
    },
    /// Signing one file failed.
    #[error("signing {path} from {image}")]
    SignFile {
        /// The file.
        path: String,
        /// The image.
        image: String,
        /// Cause.
        #[source]
        source: Box<super::Error>,
    },
    /// Building the signed layer failed.
    #[error("building the signed-files layer")]
    Build(#[source] layer::Error),
    /// Pulling or pushing failed.
    #[error(transparent)]
    Registry(#[from] registry::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to sign and where.
#[derive(Debug, Clone)]
pub struct SignImageRequest {
    /// The unsigned image.
    pub from: Reference,
    /// Where the signed image goes.
    pub to: Reference,
    /// Absolute paths or shell globs (`*` and `?` stop at `/`, `[..]` classes).
    pub files: Vec<String>,
    /// Signature digest.
    pub hash: HashAlgorithm,
    /// How to reach `from`.
    pub from_opts: RegistryOptions,
    /// How to reach `to`.
    pub to_opts: RegistryOptions,
}

/// What [`sign_image`] did.
#[derive(Debug, Clone)]
pub struct SignedImage {
    /// Digest of the pushed manifest.
    pub digest: String,
    /// Absolute paths of the signed files.
    pub files: Vec<String>,
    /// The appended layer.
    pub layer: Layer,
}

/// Compiled `--file` patterns.
#[derive(Debug)]
pub struct FilePatterns(Vec<(String, GlobMatcher)>);

impl FilePatterns {
    /// Compiles patterns with shell semantics: `*`, `?` never match `/`.
    /// Relative patterns are taken from `/`.
    ///
    /// # Errors
    /// [`Error::Pattern`] for an invalid glob.
    pub fn new(patterns: &[String]) -> Result<Self> {
        patterns
            .iter()
            .map(|p| {
                let abs = if p.starts_with('/') {
                    p.clone()
                } else {
                    format!("/{p}")
                };
                let glob: Glob = GlobBuilder::new(&abs)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|source| Error::Pattern {
                        pattern: p.clone(),
                        source,
                    })?;
                Ok((p.clone(), glob.compile_matcher()))
            })
            .collect::<Result<_>>()
            .map(Self)
    }

    /// The regular files (relative paths into `merged`) the patterns select;
    /// every pattern must select at least one.
    fn select(&self, merged: &Merged, image: &str) -> Result<Vec<String>> {
        let mut selected = Vec::new();
        for (pattern, matcher) in &self.0 {
            let mut regular = 0;
            let mut others = Vec::new();
            for (path, node) in &merged.entries {
                if !matcher.is_match(format!("/{path}")) {
                    continue;
                }
                if let Some(target) = &node.link {
                    return Err(Error::HardLink {
                        path: format!("/{path}"),
                        target: target.clone(),
                        image: image.to_string(),
                    });
                }
                if !node.is_file() {
                    others.push(format!("/{path}"));
                    continue;
                }
                let (_, compression) = crate::decompress::split_suffix(path);
                if compression != crate::decompress::Compression::None {
                    return Err(Error::Compressed {
                        path: format!("/{path}"),
                        image: image.to_string(),
                    });
                }
                regular += 1;
                if !selected.contains(path) {
                    selected.push(path.clone());
                }
            }
            if regular == 0 {
                let detail = if others.is_empty() {
                    String::new()
                } else {
                    format!(" (only non-regular entries: {})", others.join(", "))
                };
                return Err(Error::NoMatch {
                    pattern: pattern.clone(),
                    image: image.to_string(),
                    detail,
                });
            }
            if !others.is_empty() {
                tracing::warn!(
                    "--file '{pattern}': skipping non-regular {}",
                    others.join(", ")
                );
            }
        }
        selected.sort();
        Ok(selected)
    }
}

/// Pulls, signs and pushes (see the module docs). Returns the pushed digest.
///
/// # Errors
/// See [`Error`]; nothing is pushed unless every file was signed.
pub async fn sign_image(req: &SignImageRequest, signer: &Signer) -> Result<SignedImage> {
    let patterns = FilePatterns::new(&req.files)?;
    let image = req.from.whole();
    let pulled = registry::pull(&req.from, &req.from_opts).await?;
    tracing::info!(
        "pulled {image} ({}, {} layers)",
        pulled.digest,
        pulled.layers.len()
    );
    let (layer, files) = signed_layer(&pulled, &patterns, signer, req.hash, &image)?;
    let created_by = format!(
        "kmmctl sign --hash {} {}",
        req.hash,
        req.files
            .iter()
            .map(|f| format!("--file {f}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let config = extend_config(&pulled, &layer, &created_by, &image)?;
    let config_digest = sha256_digest(&config);
    let manifest = extend_manifest(&pulled, &layer, &config, &config_digest, &image)?;
    let manifest_digest = sha256_digest(&manifest);
    let mut blobs: Vec<Blob<'_>> = pulled
        .layers
        .iter()
        .map(|l| Blob {
            what: "layer",
            digest: &l.digest,
            data: &l.blob,
        })
        .collect();
    blobs.push(Blob {
        what: "signed-files layer",
        digest: &layer.digest,
        data: &layer.blob,
    });
    blobs.push(Blob {
        what: "config",
        digest: &config_digest,
        data: &config,
    });
    let digest = registry::push_parts(
        &req.to,
        &req.to_opts,
        &blobs,
        &manifest,
        &pulled.media_type,
        &manifest_digest,
    )
    .await?;
    Ok(SignedImage {
        digest,
        files: files.iter().map(|f| format!("/{f}")).collect(),
        layer,
    })
}

/// Selects, signs and archives the files: the new layer and the relative
/// paths it holds.
pub(crate) fn signed_layer(
    pulled: &PulledImage,
    patterns: &FilePatterns,
    signer: &Signer,
    hash: HashAlgorithm,
    image: &str,
) -> Result<(Layer, Vec<String>)> {
    let blobs: Vec<&[u8]> = pulled.layers.iter().map(|l| l.blob.as_slice()).collect();
    let layer_err = |index: usize| {
        let digest = pulled
            .layers
            .get(index)
            .map(|l| l.digest.clone())
            .unwrap_or_default();
        move |source| Error::Layer {
            image: image.to_string(),
            digest,
            source,
        }
    };
    let merged = Merged::build(blobs.iter().copied()).map_err(|e| {
        // Which layer: the one whose stream fails on its own.
        let bad = blobs
            .iter()
            .position(|b| Merged::build([*b]).is_err())
            .unwrap_or(0);
        layer_err(bad)(e)
    })?;
    let selected = patterns.select(&merged, image)?;
    let wanted: Vec<&str> = selected.iter().map(String::as_str).collect();
    let contents = merged
        .read_files(&blobs, &wanted)
        .map_err(layer_err(blobs.len().saturating_sub(1)))?;

    let mut tar = tar::Builder::new(Vec::new());
    let mut entries = Vec::new();
    // Parent directories first, with their merged-view metadata, so the new
    // layer changes nothing but the files' contents.
    let mut dirs: BTreeMap<String, Option<&Node>> = BTreeMap::new();
    for path in &selected {
        let mut cur = path.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            dirs.insert(parent.to_string(), merged.entries.get(parent));
            cur = parent;
        }
    }
    let build_err = |entry: String| move |source| Error::Build(layer::Error::Tar { entry, source });
    for (dir, node) in &dirs {
        let mut header = tar::Header::new_gnu();
        copy_meta(&mut header, node.map(|n| &n.header), 0o755);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        let name = format!("{dir}/");
        tar.append_data(&mut header, &name, std::io::empty())
            .map_err(build_err(name.clone()))?;
        entries.push(name);
    }
    for path in &selected {
        let data = contents.get(path).ok_or_else(|| Error::Layer {
            image: image.to_string(),
            digest: merged.entries.get(path).map_or_else(String::new, |n| {
                pulled
                    .layers
                    .get(n.layer)
                    .map(|l| l.digest.clone())
                    .unwrap_or_default()
            }),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("/{path} not found on the second read"),
            ),
        })?;
        let abs = format!("/{path}");
        let signed = signer
            .sign_module(data, hash, &abs)
            .map_err(|source| Error::SignFile {
                path: abs.clone(),
                image: image.to_string(),
                source: Box::new(source),
            })?;
        tracing::info!("signed {abs} ({} -> {} B)", data.len(), signed.len());
        let mut header = tar::Header::new_gnu();
        copy_meta(
            &mut header,
            merged.entries.get(path).map(|n| &n.header),
            0o644,
        );
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(signed.len() as u64);
        tar.append_data(&mut header, path, signed.as_slice())
            .map_err(build_err(path.clone()))?;
        entries.push(path.clone());
    }
    let tar_bytes = tar
        .into_inner()
        .map_err(build_err("end of archive".to_string()))?;
    let layer = layer::compress(tar_bytes, entries).map_err(Error::Build)?;
    Ok((layer, selected))
}

/// Mode, owner (ids and names) and mtime from the original entry.
fn copy_meta(header: &mut tar::Header, from: Option<&tar::Header>, default_mode: u32) {
    let Some(from) = from else {
        header.set_mode(default_mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        return;
    };
    header.set_mode(from.mode().unwrap_or(default_mode));
    header.set_uid(from.uid().unwrap_or(0));
    header.set_gid(from.gid().unwrap_or(0));
    header.set_mtime(from.mtime().unwrap_or(0));
    if let Ok(Some(name)) = from.username() {
        let _ = header.set_username(name);
    }
    if let Ok(Some(name)) = from.groupname() {
        let _ = header.set_groupname(name);
    }
}

/// The config with the new layer's diff_id and a history entry appended.
fn extend_config(
    pulled: &PulledImage,
    layer: &Layer,
    created_by: &str,
    image: &str,
) -> Result<Vec<u8>> {
    let bad = |message: &str| Error::Config {
        image: image.to_string(),
        digest: sha256_digest(&pulled.config),
        message: message.to_string(),
    };
    let mut config: Value =
        serde_json::from_slice(&pulled.config).map_err(|e| bad(&e.to_string()))?;
    let diff_ids = config
        .pointer_mut("/rootfs/diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("no rootfs.diff_ids"))?;
    diff_ids.push(Value::String(layer.diff_id.clone()));
    // History is optional; when present it must keep one non-empty entry per layer.
    if let Some(history) = config.get_mut("history").and_then(Value::as_array_mut) {
        history.push(json!({
            "created_by": created_by,
            "comment": "kernel modules signed by kmmctl",
        }));
    }
    serde_json::to_vec(&config).map_err(|e| bad(&e.to_string()))
}

/// The manifest with the new config and the new layer appended; the media
/// types follow the original (OCI or Docker schema 2).
fn extend_manifest(
    pulled: &PulledImage,
    layer: &Layer,
    config: &[u8],
    config_digest: &str,
    image: &str,
) -> Result<Vec<u8>> {
    let bad = |message: String| {
        Error::Registry(registry::Error::Manifest {
            reference: image.to_string(),
            message,
        })
    };
    let mut manifest: Value =
        serde_json::from_slice(&pulled.manifest).map_err(|e| bad(e.to_string()))?;
    let config_desc = manifest
        .get_mut("config")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("manifest has no config".into()))?;
    config_desc.insert("digest".into(), Value::String(config_digest.to_string()));
    config_desc.insert("size".into(), Value::from(config.len() as u64));
    let layer_type = if pulled.media_type == oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE {
        oci_client::manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
    } else {
        layer::MEDIA_TYPE
    };
    manifest
        .get_mut("layers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("manifest has no layers".into()))?
        .push(json!({
            "mediaType": layer_type,
            "digest": layer.digest,
            "size": layer.blob.len(),
        }));
    serde_json::to_vec(&manifest).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests;
