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
