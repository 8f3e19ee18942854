//! Writing an image as an OCI image layout directory (`oci-layout`,
//! `index.json`, `blobs/sha256/*`), readable by `skopeo copy oci:DIR:TAG`.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::image::{Image, MANIFEST_MEDIA_TYPE};

/// Errors while writing the layout.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory exists, is not empty and is not an OCI layout: refuse to clobber it.
    #[error("{0} exists and is neither empty nor an OCI layout; refusing to overwrite it")]
    NotALayout(PathBuf),
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `image` to `dir` with `tag` as its ref name. An existing layout is
/// replaced (index.json then names only this image; blobs are added).
pub fn write(dir: &Path, image: &Image, tag: &str) -> Result<()> {
    if dir.exists() && !dir.join("oci-layout").exists() {
        let non_empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
        if non_empty {
            return Err(Error::NotALayout(dir.to_path_buf()));
        }
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(werr(&blobs))?;
    for (digest, data) in [
        (&image.layer.digest, &image.layer.blob),
        (&image.config_digest, &image.config),
        (&image.manifest_digest, &image.manifest),
    ] {
        let path = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::write(&path, data).map_err(werr(&path))?;
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    let path = dir.join("index.json");
    std::fs::write(&path, index.to_string()).map_err(werr(&path))?;
    let path = dir.join("oci-layout");
    std::fs::write(&path, r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr(&path))?;
    Ok(())
}

fn werr(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Write { path, source }
}
