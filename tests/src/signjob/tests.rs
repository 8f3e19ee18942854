//! Unit tests of the sign Job reading and rewriting (pure, no cluster).

use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::Job;

use super::job::*;
use crate::buildah::VolumeData;
use crate::jobexec::testing::{patched, refused_by_both, s};

const ARGS: &[&str] = &[
    "--from=10.0.2.2:5000/ns/brd:6.1.0-56-amd64-ns_brd_kmm_unsigned",
    "--to=10.0.2.2:5000/ns/brd:6.1.0-56-amd64",
    "--key=/run/secrets/kmm-signing-key/key",
    "--cert=/run/secrets/kmm-signing-cert/cert",
    "--file=/opt/lib/modules/6.1.0-56-amd64/kernel/drivers/block/brd.ko",
    "--file=/opt/lib/modules/*/extra/*.ko",
    "--from-insecure",
    "--to-insecure",
    "--docker-config=/run/secrets/kmm-registry-auth/.dockerconfigjson",
];

fn arg(f: &str, v: Option<&str>) -> SignArg {
    (f.to_string(), v.map(str::to_string))
}

/// The controller's shape (controller/src/build/job.rs `sign_pod`).
fn controller_job() -> serde_json::Value {
    let mut args = s(&["sign"]);
    args.extend(s(ARGS));
    serde_json::json!({
        "metadata": { "name": "brd-sign-0123", "namespace": "ns" },
        "spec": { "backoffLimit": 2, "template": { "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "signer",
                "image": "kmm-rs:latest",
                "command": ["kmmctl"],
                "args": args,
                "volumeMounts": [
                    { "name": "signing-key", "mountPath": "/run/secrets/kmm-signing-key", "readOnly": true },
                    { "name": "signing-cert", "mountPath": "/run/secrets/kmm-signing-cert", "readOnly": true },
                    { "name": "registry-auth", "mountPath": "/run/secrets/kmm-registry-auth", "readOnly": true },
                ],
            }],
            "volumes": [
                { "name": "signing-key", "secret": { "secretName": "k",
                    "items": [{ "key": "key", "path": "key" }] } },
                { "name": "signing-cert", "secret": { "secretName": "c",
                    "items": [{ "key": "cert", "path": "cert" }] } },
                { "name": "registry-auth", "secret": { "secretName": "pull",
                    "items": [{ "key": ".dockerconfigjson", "path": ".dockerconfigjson" }] } },
            ],
        } } },
    })
}

#[test]
fn reads_the_controllers_sign_job() {
    let job: Job = serde_json::from_value(controller_job()).unwrap();
    let j = parse_sign_job(&job).unwrap();
    assert_eq!(j.namespace, "ns");
    assert_eq!(j.image, "kmm-rs:latest");
    assert_eq!(j.args.len(), ARGS.len());
    assert_eq!(j.args[4], arg("--file", Some(&ARGS[4][7..])));
    assert_eq!(j.args[6], arg("--from-insecure", None));
    let secret = |name: &str, key: &str| VolumeData::Secret {
        name: name.into(),
        items: vec![(key.into(), key.into())],
    };
    assert_eq!(
        j.mounts,
        vec![
            ("/run/secrets/kmm-signing-key".into(), secret("k", "key")),
            ("/run/secrets/kmm-signing-cert".into(), secret("c", "cert")),
            (
                "/run/secrets/kmm-registry-auth".into(),
                secret("pull", ".dockerconfigjson")
            ),
        ]
    );
}

#[test]
fn parses_both_flag_forms_and_refuses_what_kmmctl_sign_would_not_get() {
    let split = parse_sign_args(&s(&[
        "--from", "a/b:1", "--to", "a/c:1", "--key", "/k", "--cert", "/c", "--file", "/f",
        "--hash", "sha512",
    ]))
    .unwrap();
    assert_eq!(split[0], arg("--from", Some("a/b:1")));
    assert_eq!(split[5], arg("--hash", Some("sha512")));
    let base = &ARGS[..5];
    for (extra, why) in [
        (&["--force"][..], "unsupported kmmctl sign arg"),
        (&["--to-insecure=true"], "takes no value"),
        (&["--key=/other"], "repeated"),
        (&["--hash"], "needs a value"),
        (&["--hash="], "empty value"),
        (&["sign"], "unsupported"),
    ] {
        let mut v = s(base);
        v.extend(s(extra));
        let err = format!("{:#}", parse_sign_args(&v).unwrap_err());
        assert!(err.contains(why), "{extra:?}: {err}");
    }
    let err = parse_sign_args(&s(&ARGS[..4])).unwrap_err();
    assert!(err.to_string().contains("lack --file"), "{err}");
}

#[test]
fn refuses_jobs_of_another_shape() {
    let cases: [(&str, serde_json::Value, &str); 7] = [
        (
            "/spec/template/spec/containers/0/command",
            serde_json::json!(["sh", "-c"]),
            "is not [\"kmmctl\"]",
        ),
        (
            "/spec/template/spec/containers/0/command",
            serde_json::Value::Null,
            "is not [\"kmmctl\"]",
        ),
        (
            "/spec/template/spec/containers/0/name",
            "kaniko".into(),
            "is not \"signer\"",
        ),
        (
            "/spec/template/spec/volumes/1",
            serde_json::json!({ "name": "signing-cert", "configMap": { "name": "c" } }),
            "is not a Secret",
        ),
        (
            "/spec/template/spec/containers/0/volumeMounts/3",
            serde_json::json!({ "name": "nope", "mountPath": "/x" }),
            "unknown volume nope",
        ),
        (
            "/spec/template/spec/containers/0/volumeMounts/0/subPath",
            "key".into(),
            "subPath",
        ),
        (
            "/spec/template/spec/containers/0/args/0",
            "sign-file".into(),
            "are not `sign ...`",
        ),
    ];
    for (path, value, why) in cases.into_iter().chain(refused_by_both()) {
        let job = patched(controller_job(), path, value);
        let err = format!("{:#}", parse_sign_job(&job).unwrap_err());
        assert!(err.contains(why), "{path}: {err}");
    }
}

fn host(v: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
    v.iter()
        .map(|(a, h)| ((*a).to_string(), PathBuf::from(h)))
        .collect()
}

#[test]
fn rewrites_file_args_onto_the_mounts_and_leaves_image_paths_alone() {
    let args = parse_sign_args(&s(ARGS)).unwrap();
    let mounts = host(&[
        ("/run/secrets/kmm-signing-key", "/t/vol-0"),
        ("/run/secrets/kmm-signing-cert", "/t/vol-1"),
        ("/run/secrets/kmm-registry-auth/", "/t/vol-2"),
    ]);
    let out = rewrite_mount_paths(&args, &mounts).unwrap();
    assert_eq!(
        file_args(&out),
        vec![
            ("--key", Path::new("/t/vol-0/key")),
            ("--cert", Path::new("/t/vol-1/cert")),
            ("--docker-config", Path::new("/t/vol-2/.dockerconfigjson")),
        ]
    );
    // Everything else is untouched, order kept.
    for (a, b) in args.iter().zip(&out) {
        if !FILE_FLAGS.contains(&a.0.as_str()) {
            assert_eq!(a, b);
        }
    }
    // `--file` values are image paths even under a mounted directory.
    let mut with_opt = args.clone();
    with_opt.push(arg("--file", Some("/run/secrets/kmm-signing-key/x.ko")));
    let out = rewrite_mount_paths(&with_opt, &mounts).unwrap();
    assert_eq!(out.last(), with_opt.last());
}

#[test]
fn refuses_file_args_off_the_mounts_and_mounts_without_use() {
    let args = parse_sign_args(&s(ARGS)).unwrap();
    let two = host(&[
        ("/run/secrets/kmm-signing-key", "/t/0"),
        ("/run/secrets/kmm-registry-auth", "/t/2"),
    ]);
    let err = rewrite_mount_paths(&args, &two).unwrap_err();
    assert!(
        err.to_string()
            .contains("--cert=/run/secrets/kmm-signing-cert/cert is not on a mounted volume"),
        "{err}"
    );
    // A prefix that is not a path component boundary is not a mount.
    let near = host(&[
        ("/run/secrets/kmm-signing", "/t/0"),
        ("/run/secrets/kmm-signing-cert", "/t/1"),
        ("/run/secrets/kmm-registry-auth", "/t/2"),
    ]);
    let err = rewrite_mount_paths(&args, &near).unwrap_err();
    assert!(
        err.to_string()
            .contains("mounted at /run/secrets/kmm-signing has no meaning"),
        "{err}"
    );
    let mut relative = args.clone();
    relative[2] = arg("--key", Some("key.pem"));
    let err = rewrite_mount_paths(&relative, &host(&[])).unwrap_err();
    assert!(err.to_string().contains("not an absolute path"), "{err}");
}

#[test]
fn rewrites_only_image_registries_and_renders_the_command_line() {
    let aliases = vec![("10.0.2.2:5000".to_string(), "127.0.0.1:5000".to_string())];
    let args = parse_sign_args(&s(ARGS)).unwrap();
    let line = command_line(&rewrite_image_args(&args, &aliases));
    assert_eq!(line[0], "sign");
    assert_eq!(
        line[1],
        "--from=127.0.0.1:5000/ns/brd:6.1.0-56-amd64-ns_brd_kmm_unsigned"
    );
    assert_eq!(line[2], "--to=127.0.0.1:5000/ns/brd:6.1.0-56-amd64");
    assert_eq!(&line[3..], &ARGS[2..]);
}
