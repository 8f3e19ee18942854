//! `kmmctl sign` (the command the controller's sign Job runs) against the real
//! registry: the signed image is the original layers plus one layer of signed
//! files, which the agent's extractor lays over the unsigned ones.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use kmm_agent::extract::{Compression, Layer, Limits, unpack_image};
use kmm_tests::images::{auth_registry, push_fake_kmod, push_fake_kmod_as, registry_addr};
use kmm_tests::vm::artifacts::{cargo_artifact, repo_root};
use kmmctl::registry::{PulledImage, RegistryOptions, parse_reference, pull};
use oci_client::secrets::RegistryAuth;
use serde_json::Value;

const KVER: &str = "6.1.0-77-signtest";
const CN: &str = "kmm-rs sign image test key";
const PATTERN: &str = "/opt/lib/modules/*/extra/*.ko";

fn kmmctl() -> Command {
    // Built once per test binary: `cargo build` is not free even when fresh.
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    Command::new(
        BIN.get_or_init(|| cargo_artifact("kmmctl", &["-p", "kmmctl", "--bin", "kmmctl"]).unwrap()),
    )
}

/// `hack/registry/start.sh [flag]`, once per test binary: two concurrent
/// starts race for the port.
fn start_registry_with(flag: Option<&'static str>) {
    static STARTED: std::sync::Mutex<Vec<Option<&'static str>>> = std::sync::Mutex::new(Vec::new());
    let mut started = STARTED.lock().unwrap();
    if started.contains(&flag) {
        return;
    }
    let script = repo_root().join("hack/registry/start.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(flag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.push(flag);
}

fn start_registry() {
    start_registry_with(None);
}

/// RSA key (PEM) and self-signed certificate (DER, like upstream KMM's secrets).
fn keys(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (key, der, pem) = (
        dir.join("key.pem"),
        dir.join("cert.der"),
        dir.join("cert.pem"),
    );
    let ok = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("openssl")
        .args([
            "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500",
        ])
        .args(["-batch", "-x509", "-newkey", "rsa:2048", "-subj"])
        .arg(format!("/CN={CN}"))
        .args(["-outform", "DER", "-out"])
        .arg(&der)
        .arg("-keyout")
        .arg(&key));
    ok(Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(&der)
        .arg("-out")
        .arg(&pem));
    (key, der, pem)
}

/// `kmmctl sign --from <from> --from-insecure --to <to> <to_flags>
/// --key <key> --cert <cert> <rest>`.
fn sign_cmd(
    from: &str,
    to: &str,
    to_flags: &[&str],
    key: &Path,
    cert: &Path,
    rest: &[&str],
) -> Command {
    let mut cmd = kmmctl();
    cmd.args(["sign", "--from", from, "--from-insecure", "--to", to])
        .args(to_flags)
        .arg("--key")
        .arg(key)
        .arg("--cert")
        .arg(cert)
        .args(rest);
    cmd
}

/// A temp dir and a key pair in it ([`keys`]).
struct Signer {
    dir: tempfile::TempDir,
    key: PathBuf,
    cert_der: PathBuf,
    cert_pem: PathBuf,
}

impl Signer {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert_der, cert_pem) = keys(dir.path());
        Self {
            dir,
            key,
            cert_der,
            cert_pem,
        }
    }

    /// `kmmctl sign` of `from` to `to`, both plain HTTP, `--file PATTERN`.
    fn sign_pattern(&self, from: &str, to: &str) -> Output {
        run(&mut sign_cmd(
            from,
            to,
            &["--to-insecure"],
            &self.key,
            &self.cert_der,
            &["--file", PATTERN],
        ))
    }
}

/// `<reg>/kmmctl-sign/<name>:<KVER>` and the `<name>-signed` target.
fn images(reg: &str, name: &str) -> (String, String) {
    (
        format!("{reg}/kmmctl-sign/{name}:{KVER}"),
        format!("{reg}/kmmctl-sign/{name}-signed:{KVER}"),
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn insecure() -> RegistryOptions {
    RegistryOptions {
        insecure: true,
        ..Default::default()
    }
}

async fn pull_image(reference: &str, opts: &RegistryOptions) -> PulledImage {
    pull(&parse_reference(reference, "latest").unwrap(), opts)
        .await
        .unwrap()
}

/// The tree the agent unpacks from an image, as (relative path -> (mode, bytes)).
fn agent_view(image: &PulledImage, dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let dest = dir.join("rootfs");
    unpack_image(
        image.layers.iter().map(|l| Layer {
            name: l.digest.clone(),
            compression: Compression::Auto,
            reader: Box::new(l.blob.as_slice()),
        }),
        &dest,
        &Limits::default(),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    walk(&dest, &dest, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            out.insert(format!("{rel}/"), (mode, Vec::new()));
            walk(root, &path, out);
        } else {
            out.insert(rel, (mode, std::fs::read(&path).unwrap()));
        }
    }
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

fn cms_verifies(dir: &Path, module: &[u8], pkcs7: &[u8], cert_pem: &Path) -> bool {
    let (content, sig) = (dir.join("content"), dir.join("sig.p7"));
    std::fs::write(&content, module).unwrap();
    std::fs::write(&sig, pkcs7).unwrap();
    Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-in"])
        .arg(&sig)
        .arg("-content")
        .arg(&content)
        .arg("-certfile")
        .arg(cert_pem)
        .args(["-nointern", "-noverify", "-out", "/dev/null"])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn sign_appends_one_layer_the_agent_lays_over_the_unsigned_modules() {
    start_registry();
    let s = Signer::new();
    let (from, to) = images(&registry_addr(), "alpha");
    push_fake_kmod(
        &from,
        KVER,
        &[("alpha", &[]), ("beta", &["alpha"])],
        &[("fw.bin", b"firmware bytes")],
    )
    .await
    .unwrap();

    let out = s.sign_pattern(&from, &to);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let digest = stdout.lines().last().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{stdout}");

    let original = pull_image(&from, &insecure()).await;
    let signed = pull_image(&to, &insecure()).await;
    assert_eq!(signed.digest, digest);
    assert_eq!(signed.media_type, original.media_type);

    // Original layers untouched, one gzip layer appended.
    assert_eq!(signed.layers.len(), original.layers.len() + 1);
    for (a, b) in original.layers.iter().zip(&signed.layers) {
        assert_eq!(a.digest, b.digest);
    }
    let added = signed.layers.last().unwrap();
    assert_eq!(
        added.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let (oc, sc) = (json(&original.config), json(&signed.config));
    let diff_ids = sc["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(
        diff_ids.len(),
        oc["rootfs"]["diff_ids"].as_array().unwrap().len() + 1
    );
    assert_eq!(
        diff_ids[..diff_ids.len() - 1],
        oc["rootfs"]["diff_ids"].as_array().unwrap()[..]
    );
    assert_eq!(
        sc["history"].as_array().unwrap().len(),
        oc["history"].as_array().unwrap().len() + 1
    );
    assert_eq!(sc["config"]["Labels"], oc["config"]["Labels"]);
    assert!(sc["config"]["Labels"]["io.k8s.kmod.modules"].is_string());

    // The appended layer: only the signed files and their parents, with the
    // originals' modes and owners.
    let mut tar_bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(added.blob.as_slice()),
        &mut tar_bytes,
    )
    .unwrap();
    assert_eq!(
        kmmctl::digest::sha256_digest(&tar_bytes),
        diff_ids.last().unwrap().as_str().unwrap()
    );
    let mut names = Vec::new();
    for e in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        names.push(e.path().unwrap().display().to_string());
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        let want = if h.entry_type().is_dir() {
            0o755
        } else {
            0o644
        };
        assert_eq!(h.mode().unwrap(), want, "{names:?}");
    }
    let m = format!("opt/lib/modules/{KVER}");
    assert_eq!(
        names,
        [
            "opt/".to_string(),
            "opt/lib/".into(),
            "opt/lib/modules/".into(),
            format!("{m}/"),
            format!("{m}/extra/"),
            format!("{m}/extra/alpha.ko"),
            format!("{m}/extra/beta.ko"),
        ]
    );

    // What the agent unpacks: the signed modules over the unsigned ones, every
    // other file as before.
    let before = agent_view(&original, &s.dir.path().join("a"));
    let after = agent_view(&signed, &s.dir.path().join("b"));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, (mode, bytes)) in &before {
        let (mode2, bytes2) = &after[path];
        assert_eq!(mode, mode2, "{path}");
        if !path.ends_with(".ko") {
            assert_eq!(bytes, bytes2, "{path} changed");
            continue;
        }
        assert!(path.contains("/extra/"), "{path}");
        assert_eq!(
            kmmctl::sign::inspect(bytes).unwrap(),
            None,
            "{path} was unsigned"
        );
        let info = kmmctl::sign::inspect(bytes2)
            .unwrap()
            .unwrap_or_else(|| panic!("{path} is not signed"));
        assert_eq!(&bytes2[..info.appended.module_len], bytes.as_slice());
        assert!(info.signer.unwrap().issuer.contains(CN));
        let blob = &bytes2[info.appended.signature.clone()];
        assert!(
            cms_verifies(s.dir.path(), bytes, blob, &s.cert_pem),
            "{path}"
        );
    }
    assert!(after.contains_key(&format!("{m}/modules.dep")));
    assert!(after.contains_key("firmware/fw.bin"));
}

#[tokio::test]
async fn a_pattern_matching_nothing_fails_naming_it_and_pushes_nothing() {
    start_registry();
    let s = Signer::new();
    let (from, to) = images(&registry_addr(), "nomatch");
    push_fake_kmod(&from, KVER, &[("gamma", &[])], &[])
        .await
        .unwrap();
    let out = run(&mut sign_cmd(
        &from,
        &to,
        &["--to-insecure"],
        &s.key,
        &s.cert_der,
        &[
            "--file",
            PATTERN,
            "--file",
            "/opt/lib/modules/*/kernel/*.ko",
        ],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("'/opt/lib/modules/*/kernel/*.ko' matches no regular file")
            && err.contains(&from),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    let missing = pull(&parse_reference(&to, "latest").unwrap(), &insecure()).await;
    assert!(missing.is_err(), "nothing may be pushed to {to}");

    // A key that is not the certificate's is refused before any registry traffic.
    let (other_key, _, _) = keys(&s.dir.path().join("other").tap_mkdir());
    let out = run(&mut sign_cmd(
        &from,
        &to,
        &["--to-insecure"],
        &other_key,
        &s.cert_der,
        &["--file", PATTERN],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
}

#[tokio::test]
async fn docker_config_credentials_are_used_for_pull_and_push() {
    let (reg, user, pass) = auth_registry().unwrap();
    let s = Signer::new();
    let (from, to) = images(&reg, "private");
    let auth = RegistryAuth::Basic(user.clone(), pass.clone());
    push_fake_kmod_as(&from, KVER, &[("delta", &[])], &[], auth.clone())
        .await
        .unwrap();
    let config = s.dir.path().join("config.json");
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        &config,
        format!(r#"{{"auths":{{"{reg}":{{"auth":"{token}"}}}}}}"#),
    )
    .unwrap();
    let sign = |with_config: bool| {
        let mut cmd = sign_cmd(
            &from,
            &to,
            &["--to-insecure"],
            &s.key,
            &s.cert_pem,
            &[
                "--file",
                "/opt/lib/modules/*/extra/delta.ko",
                "--hash",
                "sha384",
            ],
        );
        if with_config {
            cmd.arg("--docker-config").arg(&config);
        }
        run(&mut cmd)
    };
    let denied = sign(false);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains(&reg));

    let out = sign(true);
    assert!(out.status.success());
    let opts = RegistryOptions {
        insecure: true,
        auth,
        ..Default::default()
    };
    let signed = pull_image(&to, &opts).await;
    let view = agent_view(&signed, s.dir.path());
    let (_, ko) = &view[&format!("opt/lib/modules/{KVER}/extra/delta.ko")];
    let info = kmmctl::sign::inspect(ko).unwrap().unwrap();
    assert_eq!(
        info.signer.unwrap().hash,
        Some(kmmctl::sign::HashAlgorithm::Sha384)
    );
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[tokio::test]
async fn an_index_is_signed_as_its_linux_amd64_image() {
    start_registry();
    let reg = registry_addr();
    let s = Signer::new();
    let amd = format!("{reg}/kmmctl-sign/multi:amd64");
    let arm = format!("{reg}/kmmctl-sign/multi:arm64");
    let (index, to) = images(&reg, "multi");
    push_fake_kmod(&amd, KVER, &[("on_amd", &[])], &[])
        .await
        .unwrap();
    push_fake_kmod(&arm, KVER, &[("on_arm", &[])], &[])
        .await
        .unwrap();
    let mut entries = Vec::new();
    // arm64 first: the choice must be by platform, not by position.
    for (reference, arch) in [(&arm, "arm64"), (&amd, "amd64")] {
        let (bytes, digest) = kmmctl::registry::fetch_manifest(
            &parse_reference(reference, "latest").unwrap(),
            &insecure(),
        )
        .await
        .unwrap();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    kmmctl::registry::push_parts(
        &parse_reference(&index, "latest").unwrap(),
        &insecure(),
        &[],
        &index_bytes,
        "application/vnd.oci.image.index.v1+json",
        &kmmctl::digest::sha256_digest(&index_bytes),
    )
    .await
    .unwrap();

    let out = s.sign_pattern(&index, &to);
    assert!(out.status.success());
    let signed = pull_image(&to, &insecure()).await;
    let view = agent_view(&signed, s.dir.path());
    let extra = format!("opt/lib/modules/{KVER}/extra");
    assert!(!view.contains_key(&format!("{extra}/on_arm.ko")));
    let (_, ko) = &view[&format!("{extra}/on_amd.ko")];
    assert!(kmmctl::sign::inspect(ko).unwrap().is_some());
}

#[tokio::test]
async fn push_over_tls_needs_skip_verify_for_a_self_signed_registry() {
    start_registry();
    start_registry_with(Some("--tls"));
    let tls_reg = format!(
        "127.0.0.1:{}",
        std::env::var("KMM_REGISTRY_TLS_PORT").unwrap_or_else(|_| "5002".into())
    );
    let s = Signer::new();
    let from = format!("{}/kmmctl-sign/tls:{KVER}", registry_addr());
    let to = format!("{tls_reg}/kmmctl-sign/tls-signed:{KVER}");
    push_fake_kmod(&from, KVER, &[("epsilon", &[])], &[])
        .await
        .unwrap();
    let sign = |extra: &[&str]| {
        run(&mut sign_cmd(
            &from,
            &to,
            extra,
            &s.key,
            &s.cert_der,
            &["--file", PATTERN],
        ))
    };
    let refused = sign(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains(&tls_reg));

    let out = sign(&["--to-insecure-skip-tls-verify"]);
    assert!(out.status.success());
    let opts = RegistryOptions {
        skip_tls_verify: true,
        ..Default::default()
    };
    let signed = pull_image(&to, &opts).await;
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().last(),
        Some(signed.digest.as_str())
    );
    let view = agent_view(&signed, s.dir.path());
    let (_, ko) = &view[&format!("opt/lib/modules/{KVER}/extra/epsilon.ko")];
    assert!(kmmctl::sign::inspect(ko).unwrap().is_some());
}
