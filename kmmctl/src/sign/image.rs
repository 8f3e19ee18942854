//! Signing the modules inside a kmod image (`kmmctl sign`, what the
//! controller's sign Job runs): pull `--from`, find the files in the merged
//! view of its layers, sign them, push `--to` as the same layers plus one
//! gzip layer holding the signed files (same paths, modes, owners and mtimes),
//! with the config's `rootfs.diff_ids` and `history` extended and everything
//! else (labels, env, ...) kept.
//!
//! A multi-arch `--from` resolves to one platform's image (see
//! [`crate::registry::pull`]); `--to` is that single image, not an index.

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
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o750 } else { 0o600 });
            h.set_uid(1000);
            h.set_gid(100);
            h.set_mtime(1_700_000_000);
            if *kind == tar::EntryType::Link || *kind == tar::EntryType::Symlink {
                h.set_size(0);
                b.append_link(&mut h, name, std::str::from_utf8(data).unwrap())
                    .unwrap();
            } else {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn merged(entries: &[(&str, tar::EntryType, &[u8])]) -> Merged {
        Merged::build([tar_of(entries).as_slice()]).unwrap()
    }

    fn patterns(p: &[&str]) -> FilePatterns {
        FilePatterns::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    use tar::EntryType::{Directory as D, Link as L, Regular as R, Symlink as S};

    #[test]
    fn globs_have_shell_semantics() {
        let m = merged(&[
            ("opt/", D, b""),
            ("opt/lib/modules/6.1/extra/a.ko", R, b"a"),
            ("opt/lib/modules/6.1/extra/b.ko", R, b"b"),
            ("opt/lib/modules/6.1/extra/sub/c.ko", R, b"c"),
            ("opt/lib/modules/6.1/kernel/d1.ko", R, b"d"),
            ("opt/lib/modules/6.1/kernel/d2.ko", R, b"d"),
            ("opt/lib/modules/6.1/extra/link.ko", S, b"a.ko"),
        ]);
        let sel = |p: &[&str]| patterns(p).select(&m, "img").unwrap();
        // `*` stops at `/`; symlinks are skipped.
        assert_eq!(
            sel(&["/opt/lib/modules/*/extra/*.ko"]),
            [
                "opt/lib/modules/6.1/extra/a.ko",
                "opt/lib/modules/6.1/extra/b.ko"
            ]
        );
        assert_eq!(
            sel(&[
                "/opt/lib/modules/6.1/kernel/d?.ko",
                "opt/lib/modules/6.1/extra/[a]*"
            ]),
            [
                "opt/lib/modules/6.1/extra/a.ko",
                "opt/lib/modules/6.1/kernel/d1.ko",
                "opt/lib/modules/6.1/kernel/d2.ko"
            ]
        );
        assert_eq!(
            sel(&["/opt/lib/modules/6.1/kernel/d[!1].ko"]),
            ["opt/lib/modules/6.1/kernel/d2.ko"]
        );
        let err = patterns(&["/opt/*.ko"])
            .select(&m, "reg/img:1")
            .unwrap_err();
        assert!(
            matches!(&err, Error::NoMatch { pattern, image, .. } if pattern == "/opt/*.ko" && image == "reg/img:1"),
            "{err}"
        );
        let err = patterns(&["/opt"]).select(&m, "img").unwrap_err();
        assert!(
            err.to_string().contains("only non-regular entries: /opt"),
            "{err}"
        );
        assert!(matches!(
            FilePatterns::new(&["/opt/[".to_string()]),
            Err(Error::Pattern { .. })
        ));
    }

    #[test]
    fn compressed_modules_and_hard_links_are_refused_by_name() {
        let m = merged(&[
            ("m/a.ko.xz", R, b"xz"),
            ("m/b.ko", R, b"b"),
            ("m/c.ko", L, b"m/b.ko"),
        ]);
        let err = patterns(&["/m/*.xz"]).select(&m, "img").unwrap_err();
        assert!(
            matches!(&err, Error::Compressed { path, .. } if path == "/m/a.ko.xz"),
            "{err}"
        );
        let err = patterns(&["/m/c.ko"]).select(&m, "img").unwrap_err();
        assert!(
            matches!(&err, Error::HardLink { path, .. } if path == "/m/c.ko"),
            "{err}"
        );
    }

    fn pulled(media_type: &str, layers: Vec<Vec<u8>>) -> PulledImage {
        let layers: Vec<registry::PulledLayer> = layers
            .into_iter()
            .map(|blob| registry::PulledLayer {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest: sha256_digest(&blob),
                blob,
            })
            .collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"a": "b"}, "Env": ["X=1"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "base"}],
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": "x", "digest": sha256_digest(&config), "size": config.len()},
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()})).collect::<Vec<_>>(),
        }))
        .unwrap();
        PulledImage {
            digest: sha256_digest(&manifest),
            manifest,
            media_type: media_type.to_string(),
            config,
            layers,
        }
    }

    fn test_signer() -> Signer {
        use openssl::pkey::PKey;
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "t").unwrap();
        let name = name.build();
        let mut b = openssl::x509::X509::builder().unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let cert = b.build();
        Signer::from_bytes(
            &key.private_key_to_pem_pkcs8().unwrap(),
            std::path::Path::new("k"),
            &cert.to_pem().unwrap(),
            std::path::Path::new("c"),
        )
        .unwrap()
    }

    #[test]
    fn the_signed_layer_keeps_metadata_and_config_and_manifest_are_extended() {
        let lower = tar_of(&[
            ("opt/", D, b""),
            ("opt/m/", D, b""),
            ("opt/m/a.ko", R, b"\x7fELF old a"),
            ("opt/m/keep.ko", R, b"\x7fELF keep"),
        ]);
        let upper = tar_of(&[("opt/m/a.ko", R, b"\x7fELF new a")]);
        let docker = oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE;
        let image = pulled(docker, vec![lower, upper]);
        let (layer, files) = signed_layer(
            &image,
            &patterns(&["/opt/m/a.ko"]),
            &test_signer(),
            HashAlgorithm::Sha256,
            "img",
        )
        .unwrap();
        assert_eq!(files, ["opt/m/a.ko"]);
        let mut tar_bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(layer.blob.as_slice()),
            &mut tar_bytes,
        )
        .unwrap();
        let mut seen = Vec::new();
        for e in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (1000, 100, 1_700_000_000)
            );
            let name = e.path().unwrap().display().to_string();
            if name == "opt/m/a.ko" {
                assert_eq!(h.mode().unwrap(), 0o600);
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                // The upper layer's content was signed, not the hidden lower one.
                let info = super::super::inspect(&data).unwrap().unwrap();
                assert_eq!(&data[..info.appended.module_len], b"\x7fELF new a");
            } else {
                assert_eq!(h.mode().unwrap(), 0o750, "{name}");
            }
            seen.push(name);
        }
        assert_eq!(seen, ["opt/", "opt/m/", "opt/m/a.ko"]);

        let config = extend_config(&image, &layer, "kmmctl sign", "img").unwrap();
        let c: Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
        assert_eq!(c["rootfs"]["diff_ids"][2], layer.diff_id.as_str());
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(c["config"]["Labels"]["a"], "b");
        assert_eq!(c["config"]["Env"][0], "X=1");
        let digest = sha256_digest(&config);
        let manifest = extend_manifest(&image, &layer, &config, &digest, "img").unwrap();
        let m: Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["mediaType"], docker);
        assert_eq!(m["config"]["digest"], digest.as_str());
        assert_eq!(m["config"]["size"], config.len());
        assert_eq!(m["layers"].as_array().unwrap().len(), 3);
        assert_eq!(
            m["layers"][2]["mediaType"],
            oci_client::manifest::IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
        );
        assert_eq!(m["layers"][2]["digest"], layer.digest.as_str());
        assert_eq!(
            m["layers"][0],
            json!({"mediaType": image.layers[0].media_type, "digest": image.layers[0].digest, "size": image.layers[0].blob.len()})
        );
    }
}
