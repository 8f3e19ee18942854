//! `kmmctl sign-file` on a real Debian module (brd.ko from the kernel the VM
//! tests use), checked with the real `modinfo` and with OpenSSL's own CMS
//! verification against the certificate, keys made by the `openssl` CLI the
//! way the kernel's `certs/Makefile` makes them from `x509.genkey`.
//!
//! The module comes from `$KMM_KERNEL_TREE` (set by `make test`) or the VM
//! kernel cache (`$KMM_CACHE/vm/*/root`, default `~/.cache/kmm-rs`). The tests
//! that need it are ignored by default and run by `make test` with
//! `--include-ignored`; run, a missing module is a failure, never a skip.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kmmctl::sign::{self, trailer};

const GENKEY: &str = "[ req ]
default_bits = 2048
distinguished_name = req_distinguished_name
prompt = no
string_mask = utf8only
x509_extensions = myexts

[ req_distinguished_name ]
O = kmm-rs tests
CN = kmm-rs sign-file test key
emailAddress = kmm-rs@example.invalid

[ myexts ]
basicConstraints=critical,CA:FALSE
keyUsage=digitalSignature
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
";
const CN: &str = "kmm-rs sign-file test key";

fn find_brd() -> Option<PathBuf> {
    let mut roots = Vec::new();
    if let Some(tree) = std::env::var_os("KMM_KERNEL_TREE") {
        roots.push(PathBuf::from(tree));
    }
    let cache = std::env::var_os("KMM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/kmm-rs")
        })
        .join("vm");
    if let Ok(dirs) = std::fs::read_dir(&cache) {
        roots.extend(dirs.flatten().map(|d| d.path().join("root")));
    }
    for root in roots {
        let Ok(kvers) = std::fs::read_dir(root.join("lib/modules")) else {
            continue;
        };
        for kver in kvers.flatten() {
            let brd = kver.path().join("kernel/drivers/block/brd.ko");
            if brd.is_file() {
                return Some(brd);
            }
        }
    }
    None
}

fn real_module() -> PathBuf {
    find_brd().expect(
        "no brd.ko in $KMM_KERNEL_TREE or the VM kernel cache: fetch it with tests/vm/fetch-kernel.sh",
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A signing key like the kernel's: `signing_key.pem` (key), `signing_key.x509`
/// (DER certificate), plus the certificate in PEM.
struct Keys {
    key: PathBuf,
    cert_der: PathBuf,
    cert_pem: PathBuf,
}

fn make_keys(dir: &Path, name: &str) -> Keys {
    make_keys_of(dir, name, &[])
}

/// [`make_keys`] with `newkey` (`-newkey ...` args) overriding the key type
/// the config names, as certs/Makefile does for
/// CONFIG_MODULE_SIG_KEY_TYPE_ECDSA.
fn make_keys_of(dir: &Path, name: &str, newkey: &[&str]) -> Keys {
    let genkey = dir.join(format!("{name}.genkey"));
    std::fs::write(&genkey, GENKEY).unwrap();
    let keys = Keys {
        key: dir.join(format!("{name}.pem")),
        cert_der: dir.join(format!("{name}.x509")),
        cert_pem: dir.join(format!("{name}.crt.pem")),
    };
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500",
            ])
            .args(["-batch", "-x509", "-config"])
            .arg(&genkey)
            .args(newkey)
            .args(["-outform", "DER", "-out"])
            .arg(&keys.cert_der)
            .arg("-keyout")
            .arg(&keys.key),
    );
    run_ok(
        Command::new("openssl")
            .args(["x509", "-inform", "DER", "-outform", "PEM", "-in"])
            .arg(&keys.cert_der)
            .arg("-out")
            .arg(&keys.cert_pem),
    );
    keys
}

fn kmmctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kmmctl"))
}

/// `kmmctl sign-file [--hash <hash>] --key <key> --cert <cert> <ko>`.
fn sign_file_cmd(hash: Option<&str>, key: &Path, cert: &Path, ko: &Path) -> Command {
    let mut cmd = kmmctl();
    cmd.arg("sign-file");
    if let Some(hash) = hash {
        cmd.args(["--hash", hash]);
    }
    cmd.arg("--key").arg(key).arg("--cert").arg(cert).arg(ko);
    cmd
}

fn modinfo(field: &str, ko: &Path) -> String {
    run_ok(Command::new("modinfo").args(["-F", field]).arg(ko))
        .trim()
        .to_string()
}

/// The certificate serial as modinfo prints `sig_key` (AA:BB:...).
fn serial_colons(cert_pem: &Path) -> String {
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(cert_pem),
    );
    let hex = out.trim().trim_start_matches("serial=").to_uppercase();
    let hex = hex.trim_start_matches("00");
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// Splits a signed file by its trailer (computed from the struct, not our
/// parser): the module bytes and the PKCS#7 blob.
fn split_by_struct(signed: &[u8]) -> (Vec<u8>, Vec<u8>) {
    assert!(signed.ends_with(b"~Module signature appended~\n"));
    let info_end = signed.len() - 28;
    let info = &signed[info_end - 12..info_end];
    assert_eq!(
        &info[..8],
        &[0, 0, 2, 0, 0, 0, 0, 0],
        "struct module_signature"
    );
    let sig_len = u32::from_be_bytes(info[8..12].try_into().unwrap()) as usize;
    let sig_start = info_end - 12 - sig_len;
    (
        signed[..sig_start].to_vec(),
        signed[sig_start..info_end - 12].to_vec(),
    )
}

/// `openssl cms -verify` of a detached signature with `cert` as the only
/// possible signer certificate (-nointern: the blob carries none anyway;
/// -noverify: skip the chain, a self-signed key has none, but the signature
/// itself is still checked).
fn cms_verifies(dir: &Path, module: &[u8], pkcs7: &[u8], cert_pem: &Path) -> bool {
    let content = dir.join("content.bin");
    let sig = dir.join("sig.p7");
    std::fs::write(&content, module).unwrap();
    std::fs::write(&sig, pkcs7).unwrap();
    run(Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-in"])
        .arg(&sig)
        .arg("-content")
        .arg(&content)
        .arg("-certfile")
        .arg(cert_pem)
        .args(["-nointern", "-noverify", "-out", "/dev/null"]))
    .status
    .success()
}

#[test]
#[ignore = "needs Debian's brd.ko (tests/vm/fetch-kernel.sh); make test runs it"]
fn debian_module_is_resigned_and_verifies_against_the_certificate() {
    let brd = real_module();
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(dir.path(), "signing_key");
    let other = make_keys(dir.path(), "other_key");
    let ko = dir.path().join("brd.ko");
    std::fs::copy(&brd, &ko).unwrap();
    let original = std::fs::read(&ko).unwrap();
    let debian_signer = modinfo("signer", &ko);
    assert!(!debian_signer.is_empty(), "Debian's modules are signed");
    assert_ne!(debian_signer, CN);

    // In place, with the kernel's usual pair: PEM key, DER certificate.
    let out = run_ok(&mut sign_file_cmd(None, &keys.key, &keys.cert_der, &ko));
    assert_eq!(out.trim(), ko.display().to_string());
    assert_eq!(modinfo("signer", &ko), CN);
    assert_eq!(modinfo("sig_hashalgo", &ko), "sha256");
    assert_eq!(modinfo("sig_key", &ko), serial_colons(&keys.cert_pem));

    let signed = std::fs::read(&ko).unwrap();
    let (module, pkcs7) = split_by_struct(&signed);
    // Debian's signature was replaced, not stacked: the module part is the
    // original module without its signature.
    assert_eq!(module, trailer::strip(&original).unwrap());
    assert_eq!(
        signed
            .windows(trailer::MAGIC.len())
            .filter(|w| *w == trailer::MAGIC)
            .count(),
        1
    );
    assert!(cms_verifies(dir.path(), &module, &pkcs7, &keys.cert_pem));
    assert!(
        !cms_verifies(dir.path(), &module, &pkcs7, &other.cert_pem),
        "a different certificate must not verify"
    );
    let mut tampered = module.clone();
    tampered[100] ^= 1;
    assert!(!cms_verifies(dir.path(), &tampered, &pkcs7, &keys.cert_pem));

    // Signing again with another key replaces ours too.
    run_ok(&mut sign_file_cmd(None, &other.key, &other.cert_pem, &ko));
    let (module2, pkcs7_2) = split_by_struct(&std::fs::read(&ko).unwrap());
    assert_eq!(module2, module);
    assert!(cms_verifies(
        dir.path(),
        &module2,
        &pkcs7_2,
        &other.cert_pem
    ));
    assert!(!cms_verifies(
        dir.path(),
        &module2,
        &pkcs7_2,
        &keys.cert_pem
    ));
}

#[test]
#[ignore = "needs Debian's brd.ko (tests/vm/fetch-kernel.sh); make test runs it"]
fn unsigned_copy_is_told_apart_and_signed_with_sha512_to_an_output() {
    let brd = real_module();
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(dir.path(), "signing_key");
    let unsigned = dir.path().join("brd-unsigned.ko");
    let original = std::fs::read(&brd).unwrap();
    std::fs::write(&unsigned, trailer::strip(&original).unwrap()).unwrap();
    assert_eq!(modinfo("signer", &unsigned), "");
    assert_eq!(
        sign::inspect(&std::fs::read(&unsigned).unwrap()).unwrap(),
        None
    );
    assert!(sign::inspect(&original).unwrap().is_some());

    let signed = dir.path().join("out/brd.ko");
    std::fs::create_dir_all(signed.parent().unwrap()).unwrap();
    run_ok(
        sign_file_cmd(Some("sha512"), &keys.key, &keys.cert_pem, &unsigned)
            .arg("--output")
            .arg(&signed),
    );
    assert_eq!(modinfo("signer", &unsigned), "", "input left alone");
    assert_eq!(modinfo("signer", &signed), CN);
    assert_eq!(modinfo("sig_hashalgo", &signed), "sha512");
    let bytes = std::fs::read(&signed).unwrap();
    let info = sign::inspect(&bytes).unwrap().unwrap();
    let summary = info.signer.unwrap();
    assert_eq!(summary.hash, Some(sign::HashAlgorithm::Sha512));
    assert!(summary.issuer.contains(CN), "{}", summary.issuer);
    let (module, pkcs7) = split_by_struct(&bytes);
    assert_eq!(module, std::fs::read(&unsigned).unwrap());
    assert_eq!(pkcs7, bytes[info.appended.signature].to_vec());
    assert!(cms_verifies(dir.path(), &module, &pkcs7, &keys.cert_pem));
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(dir.path(), "signing_key");
    let other = make_keys(dir.path(), "other_key");
    let ko = dir.path().join("m.ko");
    std::fs::write(&ko, b"\x7fELF not really a module").unwrap();
    let out = run(&mut sign_file_cmd(None, &keys.key, &other.cert_der, &ko));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match") && err.contains("other_key.x509"),
        "{err}"
    );
    assert_eq!(std::fs::read(&ko).unwrap(), b"\x7fELF not really a module");
}

/// The kernel's `sign-file <hash> <key> <x509> <module>`: signs in place.
fn kernel_sign_file(sign_file: &Path, hash: &str, key: &Path, cert: &Path, ko: &Path) {
    run_ok(Command::new(sign_file).arg(hash).arg(key).arg(cert).arg(ko));
}

/// The kernel's own `scripts/sign-file` (Debian's linux-kbuild package):
/// `$KMM_SIGN_FILE` (`make test` fetches it before its network namespace),
/// an installed linux-kbuild, or `tests/vm/fetch-sign-file.sh`'s download.
fn find_kernel_sign_file(brd: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KMM_SIGN_FILE") {
        return Some(PathBuf::from(p));
    }
    let installed = std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("linux-kbuild-"))
        .map(|d| d.path().join("scripts/sign-file"))
        .find(|p| p.is_file());
    if installed.is_some() {
        return installed;
    }
    // brd.ko is in lib/modules/<kver>/kernel/...
    let kver = brd.ancestors().nth(4)?.file_name()?.to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vm/fetch-sign-file.sh");
    let out = Command::new("bash").arg(script).arg(kver).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .to_owned();
    out.status.success().then(|| PathBuf::from(path))
}

#[test]
#[ignore = "needs Debian's brd.ko (tests/vm/fetch-kernel.sh); make test runs it"]
fn output_is_byte_identical_to_the_kernels_sign_file_for_every_hash() {
    let brd = real_module();
    let sign_file = find_kernel_sign_file(&brd).expect(
        "the kernel's sign-file (linux-kbuild, fetched with the VM kernel) is not available",
    );
    let dir = tempfile::tempdir().unwrap();
    let keys = make_keys(dir.path(), "signing_key");
    let unsigned = trailer::strip(&std::fs::read(&brd).unwrap())
        .unwrap()
        .to_vec();
    for hash in ["sha256", "sha384", "sha512"] {
        let theirs = dir.path().join(format!("theirs-{hash}.ko"));
        let ours = dir.path().join(format!("ours-{hash}.ko"));
        std::fs::write(&theirs, &unsigned).unwrap();
        std::fs::write(&ours, &unsigned).unwrap();
        kernel_sign_file(&sign_file, hash, &keys.key, &keys.cert_der, &theirs);
        run_ok(&mut sign_file_cmd(
            Some(hash),
            &keys.key,
            &keys.cert_der,
            &ours,
        ));
        let (a, b) = (
            std::fs::read(&theirs).unwrap(),
            std::fs::read(&ours).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{hash}: lengths differ");
        // RSA PKCS#1 v1.5 is deterministic: the whole files must be equal.
        assert!(a == b, "{hash}: kmmctl and sign-file differ");
    }

    // ECDSA signatures are randomised: the same structure, field by field,
    // with only the signature value differing.
    let ec = make_keys_of(
        dir.path(),
        "ec",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    );
    let structure = |ko: &Path| {
        let (_, pkcs7) = split_by_struct(&std::fs::read(ko).unwrap());
        let der = ko.with_extension("p7");
        std::fs::write(&der, pkcs7).unwrap();
        let dump = run_ok(
            Command::new("openssl")
                .args(["asn1parse", "-inform", "DER", "-in"])
                .arg(&der),
        );
        // "  12:d=3  hl=2 l=  9 prim: OBJECT :sha256" -> "d=3 prim: OBJECT :sha256"
        dump.lines()
            .map(|l| {
                let l = l.split_once(':').map_or(l, |(_, rest)| rest);
                let depth = l.split_whitespace().next().unwrap_or_default().to_string();
                let kind = l.split_once("prim:").or_else(|| l.split_once("cons:"));
                let body = kind.map_or("", |(_, b)| b);
                let body = body.split("[HEX DUMP]").next().unwrap_or_default();
                format!(
                    "{depth} {}",
                    body.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            })
            .collect::<Vec<_>>()
    };
    let (theirs, ours) = (
        dir.path().join("theirs-ec.ko"),
        dir.path().join("ours-ec.ko"),
    );
    std::fs::write(&theirs, &unsigned).unwrap();
    std::fs::write(&ours, &unsigned).unwrap();
    kernel_sign_file(&sign_file, "sha256", &ec.key, &ec.cert_der, &theirs);
    run_ok(&mut sign_file_cmd(None, &ec.key, &ec.cert_der, &ours));
    let (a, b) = (structure(&theirs), structure(&ours));
    assert!(a.iter().any(|l| l.contains("ecdsa-with-SHA256")), "{a:#?}");
    assert_eq!(a, b);
}

#[test]
#[ignore = "needs Debian's brd.ko (tests/vm/fetch-kernel.sh); make test runs it"]
fn an_ecdsa_key_signs_a_real_module_that_verifies() {
    let brd = real_module();
    let dir = tempfile::tempdir().unwrap();
    let rsa = make_keys(dir.path(), "rsa_key");
    // As certs/Makefile does for CONFIG_MODULE_SIG_KEY_TYPE_ECDSA.
    let ec = make_keys_of(
        dir.path(),
        "ec",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1"],
    );
    let ko = dir.path().join("brd.ko");
    std::fs::copy(&brd, &ko).unwrap();
    run_ok(&mut sign_file_cmd(
        Some("sha384"),
        &ec.key,
        &ec.cert_der,
        &ko,
    ));
    assert_eq!(modinfo("signer", &ko), CN);
    assert_eq!(modinfo("sig_hashalgo", &ko), "sha384");
    let (module, pkcs7) = split_by_struct(&std::fs::read(&ko).unwrap());
    assert!(cms_verifies(dir.path(), &module, &pkcs7, &ec.cert_pem));
    assert!(!cms_verifies(dir.path(), &module, &pkcs7, &rsa.cert_pem));
}
