//! `kubectl kmm` through the real kubectl: kmmctl installed as the plugin `kubectl-kmm`
//! (a symlink on `PATH`), kubectl's flags (`--context`, `-n`, `--kubeconfig`) honoured,
//! against the real API server. The test plays the agents: it writes the Nodes' labels and
//! the NodeModulesConfig statuses; `kubectl kmm status` must show the Module × node matrix
//! they mean (loaded with its version, pending and why, failing and why, not targeted), and
//! `kubectl kmm explain` works as the same binary.
//!
//! The kubeconfig's current context points at a port nobody listens on (loopback), so only
//! `--context` reaches the cluster; that context sets the test namespace, `-n` overrides it.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use kmm_common::NodeModulesConfig;
use kmm_tests::cluster::{apply_yaml, create_node, delete_node_and_status, ensure_crds};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::module::ModuleBuilder;
use kmm_tests::vm::artifacts::cargo_artifact;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const KVER: &str = "6.1.0-94-sim-amd64";
/// The context the test uses; its namespace is the test's.
const CONTEXT: &str = "kmm-test";

/// `{name: <name>, <key>: <value>}`, an entry of a kubeconfig list.
fn named(name: &str, key: &str, value: serde_yaml::Value) -> serde_yaml::Value {
    let mut m = serde_yaml::Mapping::new();
    m.insert("name".into(), name.into());
    m.insert(key.into(), value);
    m.into()
}

/// A kubeconfig like the admin one, plus context [`CONTEXT`] (namespace `ns`) and a current
/// context `nowhere` whose server refuses connections.
fn kubeconfig(cp: &ControlPlane, ns: &str, dir: &Path) -> Result<PathBuf> {
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(cp.kubeconfig_path())?)?;
    let current = kc["current-context"]
        .as_str()
        .context("admin kubeconfig has no current-context")?
        .to_string();
    let admin = kc["contexts"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(&current)))
        .map(|c| c["context"].clone())
        .context("current context not found")?;
    let mut with_ns = admin.clone();
    with_ns["namespace"] = ns.into();
    let mut nowhere = admin;
    nowhere["cluster"] = "nowhere".into();
    kc["contexts"]
        .as_sequence_mut()
        .context("contexts")?
        .extend([
            named(CONTEXT, "context", with_ns),
            named("nowhere", "context", nowhere),
        ]);
    let server = serde_yaml::to_value(json!({"server": "https://127.0.0.1:1"}))?;
    kc["clusters"]
        .as_sequence_mut()
        .context("clusters")?
        .push(named("nowhere", "cluster", server));
    kc["current-context"] = "nowhere".into();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc)?)?;
    Ok(path)
}

/// Runs the real kubectl with `plugins` first on `PATH` and `KUBECONFIG=kubeconfig`.
fn kubectl(cp: &ControlPlane, plugins: &Path, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![plugins.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    Command::new(cp.kubectl_path())
        .args(args)
        .env("PATH", std::env::join_paths(dirs)?)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .output()
        .context("running kubectl")
}

fn stdout_ok(out: &Output, what: &str) -> Result<String> {
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout.clone())?)
}

/// The whitespace-separated cells of the line starting with `first`.
fn row(text: &str, first: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{text}"))
}

async fn set_nmc_status(client: &Client, node: &str, entries: Value) -> Result<()> {
    let api: Api<NodeModulesConfig> = Api::all(client.clone());
    if api.get_opt(node).await?.is_none() {
        let nmc = NodeModulesConfig::new(node, Default::default());
        api.create(&PostParams::default(), &nmc).await?;
    }
    let patch = json!({ "status": { "modules": entries } });
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn loaded(ns: &str, name: &str, version: Option<&str>) -> Value {
    let image = format!("reg.invalid/{name}:{KVER}");
    let mut config = json!({"kernelVersion": KVER, "containerImage": image,
                            "modprobe": {"moduleName": name}});
    if let Some(v) = version {
        config["version"] = json!(v);
    }
    json!({"name": name, "namespace": ns, "serviceAccountName": "", "config": config,
           "image": image, "digest": "sha256:0000", "kernel": KVER})
}

#[tokio::test]
async fn kubectl_kmm_status_shows_the_module_node_matrix_with_kubectls_flags() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let bin = cargo_artifact("kmmctl", &["-p", "kmmctl", "--bin", "kmmctl"])?;
    let ns = cp.temp_namespace("kkmm").await?;
    let ns_name = ns.name().to_string();
    let client = cp.client();
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::os::unix::fs::symlink(&bin, plugins.join("kubectl-kmm"))?;
    let kubeconfig = kubeconfig(cp, &ns_name, dir.path())?;

    // Nodes: a and b are gpu nodes moved to version 2 of gpu; c is not a gpu node.
    let group = format!("kmm-test/kkmm={ns_name}");
    let version_label = kmm_common::version_module_label(&ns_name, "gpu");
    let gpu_node = [
        ("kmm-test/kkmm", ns_name.as_str()),
        ("kmm-test/role", "gpu"),
        (version_label.as_str(), "2"),
    ];
    let other = [
        ("kmm-test/kkmm", ns_name.as_str()),
        ("kmm-test/role", "cpu"),
    ];
    let node = |s: &str| format!("{ns_name}-{s}");
    for (suffix, labels) in [
        ("a", &gpu_node[..]),
        ("b", &gpu_node[..]),
        ("c", &other[..]),
    ] {
        create_node(&client, &node(suffix), labels, KVER).await?;
    }
    for (name, version) in [("gpu", Some("2")), ("nic", None)] {
        let mut m = ModuleBuilder::new(name)
            .selector("kmm-test/role", "gpu")
            .mapping(
                "-sim-amd64$",
                &format!("reg.invalid/{name}:${{KERNEL_FULL_VERSION}}"),
            );
        if let Some(v) = version {
            m = m.version(v);
        }
        apply_yaml(cp, &ns_name, &m.manifest())?;
    }
    // What the agents would have written: a has gpu loaded and fails to pull nic; b has nic
    // loaded and has not reported gpu yet; c has nothing.
    set_nmc_status(
        &client,
        &node("a"),
        json!([
            loaded(&ns_name, "gpu", Some("2")),
            {"name": "nic", "namespace": ns_name, "serviceAccountName": "",
             "lastError": {"reason": "ImagePullFailed", "message": "reg.invalid/nic: not found"}}
        ]),
    )
    .await?;
    set_nmc_status(&client, &node("b"), json!([loaded(&ns_name, "nic", None)])).await?;

    // The namespace from --context, through kubectl's plugin lookup.
    let out = kubectl(
        cp,
        &plugins,
        &kubeconfig,
        &["kmm", "status", "-l", &group, "--context", CONTEXT],
    )?;
    let text = stdout_ok(&out, "kubectl kmm status --context")?;
    println!("{text}");
    let gpu = format!("{ns_name}/gpu");
    let nic = format!("{ns_name}/nic");
    assert_eq!(row(&text, &gpu)[1..], ["2", "1", "1", "0"], "{text}");
    assert_eq!(row(&text, &nic)[1..], ["2", "1", "0", "1"], "{text}");
    assert_eq!(
        row(&text, "NODE")[2..],
        [gpu.as_str(), nic.as_str()],
        "{text}"
    );
    assert_eq!(
        row(&text, &node("a"))[1..],
        [KVER, "Loaded", "v2", "Failing", "ImagePullFailed"],
        "{text}"
    );
    assert_eq!(
        row(&text, &node("b"))[1..],
        [KVER, "Pending", "NotReported", "v2", "Loaded"],
        "{text}"
    );
    assert_eq!(row(&text, &node("c"))[1..], [KVER, "-", "-"], "{text}");
    assert!(
        text.contains(&format!(
            "FAILING\n{nic} on {}: ImagePullFailed: reg.invalid/nic: not found",
            node("a")
        )),
        "{text}"
    );

    // -n and --kubeconfig as flags, one Module, JSON.
    let admin = cp.kubeconfig_path().to_str().context("kubeconfig path")?;
    let out = kubectl(
        cp,
        &plugins,
        &kubeconfig,
        &[
            "kmm",
            "status",
            "gpu",
            "-n",
            &ns_name,
            "-l",
            &group,
            "--kubeconfig",
            admin,
            "-o",
            "json",
        ],
    )?;
    let doc: Value = serde_json::from_str(&stdout_ok(&out, "kubectl kmm status -n -o json")?)?;
    let modules = doc["modules"].as_array().context("modules")?;
    assert_eq!(modules.len(), 1, "{doc:#}");
    assert_eq!(
        modules[0]["module"],
        json!({"namespace": ns_name, "name": "gpu"})
    );
    let states: Vec<(&str, &str)> = modules[0]["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .map(|n| (n["state"].as_str().unwrap(), n["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("Loaded", "Loaded"),
            ("Pending", "NotReported"),
            ("NotTargeted", "SelectorMismatch")
        ],
        "{doc:#}"
    );

    // -A: every namespace's Modules, ours among them.
    let out = kubectl(
        cp,
        &plugins,
        &kubeconfig,
        &["kmm", "status", "-A", "-l", &group, "--context", CONTEXT],
    )?;
    let text = stdout_ok(&out, "kubectl kmm status -A")?;
    assert_eq!(row(&text, &nic)[1..], ["2", "1", "0", "1"], "{text}");

    // Without --context the (unreachable) current context is used: the flag mattered.
    let out = kubectl(cp, &plugins, &kubeconfig, &["kmm", "status", "-l", &group])?;
    assert!(!out.status.success(), "reached a cluster without --context");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kubectl-kmm: error: cannot reach the API server"),
        "{stderr}"
    );

    // explain is the same binary under the same flags; kubectl lists the plugin.
    let out = kubectl(
        cp,
        &plugins,
        &kubeconfig,
        &[
            "kmm",
            "explain",
            "nic",
            "--context",
            CONTEXT,
            "--node",
            &node("a"),
        ],
    )?;
    let text = stdout_ok(&out, "kubectl kmm explain")?;
    assert!(text.starts_with(&format!("Module {nic}")), "{text}");
    assert!(text.contains("ImagePullFailed"), "{text}");
    let out = kubectl(cp, &plugins, &kubeconfig, &["plugin", "list"])?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("kubectl-kmm"), "{listed}");

    for s in ["a", "b", "c"] {
        delete_node_and_status(&client, &node(s)).await;
    }
    ns.cleanup().await
}
