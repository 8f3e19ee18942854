//! Manifests and indexes as a registry serves them, read into
//! `oci_client::manifest` types, and the choice of an index entry by platform.
//!
//! The agent keeps its own stricter reader (digests become file names there);
//! kmmctl uses this one.

use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciImageManifest, OciManifest};
use serde::Deserialize;

/// Parses manifest bytes: an index when they carry `manifests`, else an image
/// manifest. The error is serde's, for the field that is missing or wrong
/// (oci-client's untagged [`OciManifest`] would only say "no variant matched").
///
/// # Errors
/// The bytes are not JSON of an image manifest or an index.
pub fn parse(bytes: &[u8]) -> Result<OciManifest, serde_json::Error> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes)?;
    Ok(if probe.manifests.is_some() {
        OciManifest::ImageIndex(serde_json::from_slice::<OciImageIndex>(bytes)?)
    } else {
        OciManifest::Image(serde_json::from_slice::<OciImageManifest>(bytes)?)
    })
}

/// The GOARCH name of the machine this runs on (the names OCI platforms use).
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The first index entry for `os`/`architecture` (any variant).
pub fn find_platform<'a>(
    index: &'a OciImageIndex,
    os: &str,
    architecture: &str,
) -> Option<&'a ImageIndexEntry> {
    index.manifests.iter().find(|entry| {
        entry
            .platform
            .as_ref()
            .is_some_and(|p| p.os.to_string() == os && p.architecture.to_string() == architecture)
    })
}

/// The platforms of an index as `os/arch[/variant]`, comma separated, for
/// error messages (`unknown` for an entry without one, `none` when empty).
pub fn platforms(index: &OciImageIndex) -> String {
    let names: Vec<String> = index
        .manifests
        .iter()
        .map(|entry| match &entry.platform {
            Some(p) => match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            },
            None => "unknown".to_owned(),
        })
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    const ARM64: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const AMD64: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn entry(digest: &str, platform: serde_json::Value) -> serde_json::Value {
        let mut e = serde_json::json!({
            "mediaType": oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
            "digest": digest,
            "size": 1,
        });
        if !platform.is_null() {
            e["platform"] = platform;
        }
        e
    }

    fn index() -> OciImageIndex {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": [
                entry(ARM64, serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
                entry(AMD64, serde_json::json!({"os": "linux", "architecture": "amd64"})),
                entry(AMD64, serde_json::Value::Null),
            ],
        }))
        .unwrap();
        match parse(&bytes).unwrap() {
            OciManifest::ImageIndex(index) => index,
            OciManifest::Image(_) => panic!("an index was read as an image"),
        }
    }

    #[test]
    fn an_index_entry_is_chosen_by_platform_not_position() {
        let index = index();
        assert_eq!(
            find_platform(&index, "linux", "amd64").unwrap().digest,
            AMD64
        );
        assert_eq!(
            find_platform(&index, "linux", "arm64").unwrap().digest,
            ARM64
        );
        assert!(find_platform(&index, "linux", "s390x").is_none());
        assert!(find_platform(&index, "windows", "amd64").is_none());
        assert_eq!(platforms(&index), "linux/arm64/v8, linux/amd64, unknown");
    }

    #[test]
    fn image_manifests_parse_and_broken_ones_name_the_field() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"c","digest":"{ARM64}","size":2}},
            "layers":[{{"mediaType":"l","digest":"{AMD64}","size":3}}]}}"#
        );
        let OciManifest::Image(m) = parse(image.as_bytes()).unwrap() else {
            panic!("an image manifest was read as an index")
        };
        assert_eq!(m.config.digest, ARM64);
        assert_eq!(m.layers[0].digest, AMD64);
        let err = parse(br#"{"schemaVersion":2,"layers":[]}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `config`"), "{err}");
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn the_host_architecture_has_its_oci_name() {
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host_architecture(), "amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host_architecture(), "arm64");
        }
    }
}
