//! The parts of OCI/Docker manifests and indexes the agent needs, parsed
//! from raw bytes, plus digest checks and platform choice.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::ImageError;

/// A content descriptor (layer or manifest entry).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: i64,
    /// For index entries: the platform.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An OS/architecture pair as in an image index.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8` for arm64.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this agent runs on, in OCI names.
    pub fn current() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "arm" => "arm",
            other => other,
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    /// `os/arch[/variant]`.
    pub fn display(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// A parsed manifest: either an image manifest or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image.
    Image {
        /// Layers, in order.
        layers: Vec<Descriptor>,
    },
    /// A multi-platform index.
    Index {
        /// Entries, one per platform.
        manifests: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Parses manifest bytes as served by a registry.
    pub fn parse(bytes: &[u8], reference: &str) -> Result<Self, ImageError> {
        let invalid = |reason: String| ImageError::InvalidManifest {
            reference: reference.to_owned(),
            reason,
        };
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if raw.schema_version != Some(2) {
            return Err(invalid(format!(
                "schemaVersion {:?} is not supported (need 2)",
                raw.schema_version
            )));
        }
        let out = match (raw.layers, raw.manifests) {
            (Some(layers), None) => Self::Image { layers },
            (None, Some(manifests)) => Self::Index { manifests },
            _ => {
                return Err(invalid(format!(
                    "neither an image manifest nor an index (mediaType {:?})",
                    raw.media_type
                )));
            }
        };
        for d in out.descriptors() {
            check_digest(&d.digest)?;
        }
        Ok(out)
    }

    fn descriptors(&self) -> &[Descriptor] {
        match self {
            Self::Image { layers } => layers,
            Self::Index { manifests } => manifests,
        }
    }

    /// Picks the index entry for `platform` (os and architecture equal; the
    /// variant too when one is asked for). An index with one entry and no
    /// platform information is taken as is.
    pub fn select(
        manifests: &[Descriptor],
        platform: &Platform,
        reference: &str,
    ) -> Result<String, ImageError> {
        let found = manifests.iter().find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == platform.os
                    && p.architecture == platform.architecture
                    && (platform.variant.is_none() || p.variant == platform.variant)
            })
        });
        if let Some(d) = found {
            return Ok(d.digest.clone());
        }
        if let [only] = manifests
            && only.platform.is_none()
        {
            return Ok(only.digest.clone());
        }
        let available: Vec<String> = manifests
            .iter()
            .map(|d| {
                d.platform
                    .as_ref()
                    .map_or("unknown".to_owned(), Platform::display)
            })
            .collect();
        Err(ImageError::NoMatchingPlatform {
            reference: reference.to_owned(),
            wanted: platform.display(),
            available: if available.is_empty() {
                "none".to_owned()
            } else {
                available.join(", ")
            },
        })
    }
}

/// `sha256:` + the hex digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Accepts only `sha256:<64 lowercase hex>`: digests become file names.
pub fn check_digest(digest: &str) -> Result<&str, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    hex.ok_or_else(|| ImageError::InvalidDigest {
        digest: digest.to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn index() -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn index_selects_the_platform() {
        let Manifest::Index { manifests } = Manifest::parse(&index(), "r").unwrap() else {
            panic!("not an index")
        };
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert_eq!(Manifest::select(&manifests, &amd64, "r").unwrap(), D2);
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: None,
        };
        assert_eq!(Manifest::select(&manifests, &arm, "r").unwrap(), D1);
        let s390 = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        let err = Manifest::select(&manifests, &s390, "r").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image r has no linux/s390x entry in its index (available: linux/arm64/v8, linux/amd64)"
        );
    }

    #[test]
    fn digests_that_could_be_paths_are_refused() {
        assert!(check_digest(D1).is_ok());
        for bad in ["sha256:../../etc", "sha512:ab", "sha256:ABCD", ""] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
        let evil = r#"{"schemaVersion":2,"layers":[{"digest":"sha256:../../x","size":1}]}"#;
        assert!(matches!(
            Manifest::parse(evil.as_bytes(), "r"),
            Err(ImageError::InvalidDigest { .. })
        ));
    }

    #[test]
    fn the_running_platform_is_named_like_oci() {
        let p = Platform::current();
        assert_eq!(p.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(p.architecture, "amd64");
        }
    }
}
