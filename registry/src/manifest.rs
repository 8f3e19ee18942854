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

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn index() -> OciImageIndex {
        let bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D1}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D2}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D2}","size":1}}]}}"#
        );
        match parse(bytes.as_bytes()).unwrap() {
            OciManifest::ImageIndex(index) => index,
            OciManifest::Image(_) => panic!("an index was read as an image"),
        }
    }

    #[test]
    fn an_index_entry_is_chosen_by_platform_not_position() {
        let index = index();
        assert_eq!(find_platform(&index, "linux", "amd64").unwrap().digest, D2);
        assert_eq!(find_platform(&index, "linux", "arm64").unwrap().digest, D1);
        assert!(find_platform(&index, "linux", "s390x").is_none());
        assert!(find_platform(&index, "windows", "amd64").is_none());
        assert_eq!(platforms(&index), "linux/arm64/v8, linux/amd64, unknown");
    }

    #[test]
    fn image_manifests_parse_and_broken_ones_name_the_field() {
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{{"mediaType":"c","digest":"{D1}","size":2}},
            "layers":[{{"mediaType":"l","digest":"{D2}","size":3}}]}}"#
        );
        let OciManifest::Image(m) = parse(image.as_bytes()).unwrap() else {
            panic!("an image manifest was read as an index")
        };
        assert_eq!(m.config.digest, D1);
        assert_eq!(m.layers[0].digest, D2);
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
