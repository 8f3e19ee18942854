use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::stack::Stack;
use openssl::x509::{X509, X509NameBuilder};

use super::*;

fn self_signed(key: &PKey<Private>, cn: &str) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("O", "kmm-rs").unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    // A serial with the top bit set: its DER INTEGER needs a leading zero byte.
    let serial = BigNum::from_hex_str("9F00112233445566").unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(365).unwrap())
        .unwrap();
    b.sign(key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn rsa() -> (PKey<Private>, X509) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let cert = self_signed(&key, "kmm-rs test RSA key");
    (key, cert)
}

fn ec() -> (PKey<Private>, X509) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let cert = self_signed(&key, "kmm-rs test EC key");
    (key, cert)
}

fn signer(key: &PKey<Private>, cert: &X509) -> Signer {
    Signer::from_bytes(
        &key.private_key_to_pem_pkcs8().unwrap(),
        Path::new("key.pem"),
        &cert.to_pem().unwrap(),
        Path::new("cert.pem"),
    )
    .unwrap()
}

/// OpenSSL's own check of a detached signature against `cert` only.
fn openssl_verifies(pkcs7: &[u8], content: &[u8], cert: &X509) -> bool {
    let mut cms = CmsContentInfo::from_der(pkcs7).unwrap();
    let mut certs = Stack::new().unwrap();
    certs.push(cert.clone()).unwrap();
    cms.verify(
        Some(&certs),
        None,
        Some(content),
        None,
        CMSOptions::BINARY | CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::NOINTERN,
    )
    .is_ok()
}

const MODULE: &[u8] = b"\x7fELF\x02\x01\x01 a module body of some length";

#[test]
fn sha256_rsa_signature_equals_openssl_cms_sign_with_sign_file_flags() {
    let (key, cert) = rsa();
    let ours = signer(&key, &cert)
        .pkcs7(MODULE, HashAlgorithm::Sha256, "m.ko")
        .unwrap();
    // RSA PKCS#1 v1.5 is deterministic, so the whole structure must match.
    let flags = CMSOptions::CMS_NOCERTS
        | CMSOptions::BINARY
        | CMSOptions::DETACHED
        | CMSOptions::NOATTR
        | CMSOptions::NOSMIMECAP;
    let theirs = CmsContentInfo::sign(Some(&cert), Some(&key), None, Some(MODULE), flags)
        .unwrap()
        .to_der()
        .unwrap();
    assert_eq!(hex::encode(&ours), hex::encode(&theirs));
}

#[test]
fn every_hash_and_key_type_verifies_with_openssl() {
    for (key, cert) in [rsa(), ec()] {
        let s = signer(&key, &cert);
        for hash in [
            HashAlgorithm::Sha256,
            HashAlgorithm::Sha384,
            HashAlgorithm::Sha512,
        ] {
            let signed = s.sign_module(MODULE, hash, "m.ko").unwrap();
            let info = inspect(&signed).unwrap().unwrap();
            assert_eq!(info.appended.module_len, MODULE.len());
            let blob = &signed[info.appended.signature.clone()];
            assert!(
                openssl_verifies(blob, MODULE, &cert),
                "{hash} {:?}",
                key.id()
            );
            assert!(!openssl_verifies(blob, b"tampered", &cert), "{hash}");
            let summary = info.signer.unwrap();
            assert_eq!(summary.hash, Some(hash));
            assert!(
                summary.issuer.contains("CN=kmm-rs test"),
                "{}",
                summary.issuer
            );
            assert_eq!(summary.serial, "009f00112233445566");
            assert!(!summary.has_certificates);
            assert!(!summary.has_signed_attributes);
            assert!(!summary.has_content);
        }
    }
}

#[test]
fn a_wrong_certificate_does_not_verify() {
    let (key, cert) = rsa();
    let (_, other) = rsa();
    let blob = signer(&key, &cert)
        .pkcs7(MODULE, HashAlgorithm::Sha256, "m.ko")
        .unwrap();
    assert!(openssl_verifies(&blob, MODULE, &cert));
    assert!(!openssl_verifies(&blob, MODULE, &other));
}

#[test]
fn resigning_replaces_the_signature() {
    let (key, cert) = rsa();
    let (key2, cert2) = ec();
    let once = signer(&key, &cert)
        .sign_module(MODULE, HashAlgorithm::Sha256, "m.ko")
        .unwrap();
    let twice = signer(&key2, &cert2)
        .sign_module(&once, HashAlgorithm::Sha512, "m.ko")
        .unwrap();
    let magic_count = |b: &[u8]| {
        b.windows(trailer::MAGIC.len())
            .filter(|w| *w == trailer::MAGIC)
            .count()
    };
    assert_eq!(magic_count(&twice), 1);
    let info = inspect(&twice).unwrap().unwrap();
    assert_eq!(info.appended.module_len, MODULE.len());
    assert_eq!(&twice[..MODULE.len()], MODULE);
    assert!(openssl_verifies(
        &twice[info.appended.signature.clone()],
        MODULE,
        &cert2
    ));
    assert_eq!(info.signer.unwrap().hash, Some(HashAlgorithm::Sha512));
}

#[test]
fn pem_and_der_keys_and_certificates_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = rsa();
    let (eckey, eccert) = ec();
    let files = [
        ("rsa.pkcs8.pem", key.private_key_to_pem_pkcs8().unwrap()),
        (
            "rsa.pkcs1.pem",
            key.rsa().unwrap().private_key_to_pem().unwrap(),
        ),
        ("rsa.pkcs1.der", key.private_key_to_der().unwrap()),
        ("rsa.pkcs8.der", key.private_key_to_pkcs8().unwrap()),
        (
            "ec.sec1.pem",
            eckey.ec_key().unwrap().private_key_to_pem().unwrap(),
        ),
        ("ec.sec1.der", eckey.private_key_to_der().unwrap()),
        ("rsa.crt.pem", cert.to_pem().unwrap()),
        ("rsa.crt.der", cert.to_der().unwrap()),
        ("ec.crt.der", eccert.to_der().unwrap()),
        // Like the kernel's signing_key.pem: key and certificate in one file.
        (
            "both.pem",
            [
                key.private_key_to_pem_pkcs8().unwrap(),
                cert.to_pem().unwrap(),
            ]
            .concat(),
        ),
    ];
    for (name, data) in &files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let p = |n: &str| dir.path().join(n);
    for (k, c) in [
        ("rsa.pkcs8.pem", "rsa.crt.der"),
        ("rsa.pkcs1.pem", "rsa.crt.pem"),
        ("rsa.pkcs1.der", "rsa.crt.der"),
        ("rsa.pkcs8.der", "rsa.crt.pem"),
        ("ec.sec1.pem", "ec.crt.der"),
        ("ec.sec1.der", "ec.crt.der"),
        ("both.pem", "both.pem"),
    ] {
        let s = Signer::from_files(&p(k), &p(c)).unwrap_or_else(|e| panic!("{k} {c}: {e}"));
        let signed = s
            .sign_module(MODULE, HashAlgorithm::Sha256, "m.ko")
            .unwrap();
        let want = if k.starts_with("ec") { &eccert } else { &cert };
        let info = inspect(&signed).unwrap().unwrap();
        assert!(
            openssl_verifies(&signed[info.appended.signature], MODULE, want),
            "{k} {c}"
        );
    }
}

#[test]
fn mismatched_or_broken_inputs_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = rsa();
    let (_, other_cert) = rsa();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("key.pem"), key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(p("other.der"), other_cert.to_der().unwrap()).unwrap();
    std::fs::write(p("junk"), b"not a key at all").unwrap();

    let err = Signer::from_files(&p("key.pem"), &p("other.der")).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("other.der"), "{err}");

    let err = Signer::from_files(&p("junk"), &p("other.der")).unwrap_err();
    assert!(matches!(err, Error::BadKey { .. }), "{err}");
    assert!(err.to_string().contains("junk"), "{err}");

    let err = Signer::from_files(&p("key.pem"), &p("junk")).unwrap_err();
    assert!(matches!(err, Error::BadCert { .. }), "{err}");

    let err = Signer::from_files(&p("missing.pem"), &p("junk")).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

#[test]
fn compressed_module_is_signed_decompressed_next_to_it() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = rsa();
    let gz = dir.path().join("m.ko.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(MODULE).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let out = sign_file(&signer(&key, &cert), HashAlgorithm::Sha256, &gz, None).unwrap();
    assert_eq!(out, dir.path().join("m.ko"));
    let signed = std::fs::read(&out).unwrap();
    assert_eq!(
        inspect(&signed).unwrap().unwrap().appended.module_len,
        MODULE.len()
    );
    assert!(
        std::fs::read(&gz).unwrap().starts_with(&[0x1f, 0x8b]),
        "input left alone"
    );
}

#[test]
fn in_place_signing_keeps_the_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = rsa();
    let ko = dir.path().join("m.ko");
    std::fs::write(&ko, MODULE).unwrap();
    std::fs::set_permissions(&ko, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = sign_file(&signer(&key, &cert), HashAlgorithm::Sha256, &ko, None).unwrap();
    assert_eq!(out, ko);
    let meta = std::fs::metadata(&ko).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(inspect(&std::fs::read(&ko).unwrap()).unwrap().is_some());
}
