//! `kmmctl explain` (the real binary) against the real API server: Nodes with different
//! labels and kernels, one Module, and real `kmm-agent` processes (simulated kernel, real
//! registry) writing the NodeModulesConfig status. Proves the true reason is told for
//! selector mismatch, no kernel mapping, version label mismatch, image missing
//! (ImagePullFailed), load error (ModprobeFailed), loaded, and no agent yet.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kmm_common::{NodeModuleStatus, NodeModulesConfig};
use kmm_tests::agent::{AgentOptions, AgentProcess};
use kmm_tests::cluster::{create_node, delete_node, ensure_crds, wait_for};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::module::ModuleBuilder;
use kmm_tests::vm::artifacts::cargo_artifact;
use kmmctl::explain::report::Explanation;
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::Value;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);
const MODULE: &str = "exm";
/// Kernels: one per agent so each resolves to its own image tag.
const K_OK: &str = "6.1.0-90-sim-amd64";
const K_PULL: &str = "6.1.0-91-sim-amd64";
const K_LOAD: &str = "6.1.0-92-sim-amd64";
const K_ARM: &str = "6.1.0-90-sim-arm64";

/// A node to create: name suffix, labels, kernel.
type NodeSpec<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

fn kmmctl() -> Result<PathBuf> {
    cargo_artifact("kmmctl", &["-p", "kmmctl", "--bin", "kmmctl"])
}

fn run(bin: &Path, args: &[&str]) -> Result<Output> {
    Command::new(bin)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .context("running kmmctl")
}

fn module_yaml() -> String {
    let reg = registry_addr();
    ModuleBuilder::new(MODULE)
        .selector("kmm-test/explain", "yes")
        .version("1")
        .push_mapping(
            json!({"literal": "6.1.0-1-never", "containerImage": format!("{reg}/never:1")}),
        )
        .insecure_mapping(
            "^.+-sim-amd64$",
            &format!("{reg}/${{MOD_NAMESPACE}}/${{MOD_NAME}}:${{KERNEL_FULL_VERSION}}"),
        )
        .manifest()
}

struct Cluster {
    client: Client,
    ns: String,
    nodes: Vec<String>,
}

impl Cluster {
    fn node(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.ns)
    }

    async fn status_of(&self, node: &str) -> Result<Option<NodeModuleStatus>> {
        let api: Api<NodeModulesConfig> = Api::all(self.client.clone());
        Ok(api
            .get_opt(node)
            .await?
            .and_then(|n| n.status)
            .and_then(|s| {
                s.modules
                    .into_iter()
                    .find(|m| m.item.name == MODULE && m.item.namespace == self.ns)
            }))
    }

    async fn wait_status(
        &self,
        node: &str,
        agent: &AgentProcess,
        done: impl Fn(&NodeModuleStatus) -> bool,
    ) -> Result<NodeModuleStatus> {
        wait_for(WAIT, || async {
            Ok(self.status_of(node).await?.is_some_and(|s| done(&s)))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{node}: {e}\nagent log:\n{}", agent.log()))?;
        self.status_of(node).await?.context("status vanished")
    }

    async fn cleanup(&self) {
        let nmcs: Api<NodeModulesConfig> = Api::all(self.client.clone());
        for n in &self.nodes {
            delete_node(&self.client, n).await;
            let _ = nmcs.delete(n, &DeleteParams::default()).await;
        }
    }
}

/// The block of `node` in text output: its headline and rows, up to the blank line.
fn text_block<'a>(text: &'a str, node: &str) -> Vec<&'a str> {
    let mut lines = text.lines();
    let mut out = Vec::new();
    for line in lines.by_ref() {
        if line.split_whitespace().next() == Some(node) {
            out.push(line);
            break;
        }
    }
    out.extend(lines.take_while(|l| !l.is_empty()));
    out
}

fn row<'a>(block: &[&'a str], key: &str) -> &'a str {
    block
        .iter()
        .find_map(|l| l.trim_start().strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no row {key} in {block:#?}"))
}

fn headline(block: &[&str]) -> String {
    block
        .first()
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn json_node<'a>(doc: &'a Value, node: &str) -> &'a Value {
    doc["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node"] == node))
        .unwrap_or_else(|| panic!("no node {node} in {doc:#}"))
}

#[tokio::test]
async fn explain_tells_the_true_reason_per_node_in_text_and_json() -> Result<()> {
    let t = std::time::Instant::now();
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let bin = kmmctl()?;
    println!("control plane + kmmctl build: {:.1?}", t.elapsed());
    let ns = cp.temp_namespace("explain").await?;
    let mut c = Cluster {
        client: cp.client(),
        ns: ns.name().to_string(),
        nodes: Vec::new(),
    };
    let kubeconfig = cp.kubeconfig_path().to_str().context("kubeconfig path")?;
    let group = ("kmm-test/explain-group", c.ns.as_str());
    let version_label = kmm_common::version_module_label(&c.ns, MODULE);
    let targeted = [
        group,
        ("kmm-test/explain", "yes"),
        (version_label.as_str(), "1"),
    ];
    let wrong_version = [
        group,
        ("kmm-test/explain", "yes"),
        (version_label.as_str(), "0"),
    ];
    let nodes: [NodeSpec<'_>; 7] = [
        ("sel", &[group], K_OK),
        ("kern", &targeted, K_ARM),
        ("ver", &wrong_version, K_OK),
        ("ok", &targeted, K_OK),
        ("pull", &targeted, K_PULL),
        ("load", &targeted, K_LOAD),
        ("noagent", &targeted, K_OK),
    ];
    for (suffix, labels, kernel) in nodes {
        let name = c.node(suffix);
        create_node(&c.client, &name, labels, kernel).await?;
        c.nodes.push(name);
    }

    // Images: the right module for K_OK, none for K_PULL, a module of another name for K_LOAD.
    let image = |k: &str| format!("{}/{}/{MODULE}:{k}", registry_addr(), c.ns);
    let digest = push_fake_kmod(&image(K_OK), K_OK, &[(MODULE, &[])], &[]).await?;
    push_fake_kmod(&image(K_LOAD), K_LOAD, &[("notexm", &[])], &[]).await?;

    let dir = tempfile::tempdir()?;
    let mut agents = Vec::new();
    for (suffix, kernel) in [("ok", K_OK), ("pull", K_PULL), ("load", K_LOAD)] {
        let agent = AgentProcess::start(&AgentOptions::new(
            cp,
            &c.node(suffix),
            kernel,
            dir.path().join(suffix),
        ))?;
        agent.wait_ready(WAIT).await?;
        agents.push(agent);
    }
    println!("agents ready: {:.1?}", t.elapsed());
    let out = cp.kubectl_with_stdin(["apply", "-n", &c.ns, "-f", "-"], &module_yaml())?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Let the agents do their work; what they wrote is what explain must tell.
    let ok = c
        .wait_status(&c.node("ok"), &agents[0], |s| s.config.is_some())
        .await?;
    let pull = c
        .wait_status(&c.node("pull"), &agents[1], |s| s.last_error.is_some())
        .await?;
    let load = c
        .wait_status(&c.node("load"), &agents[2], |s| s.last_error.is_some())
        .await?;
    let ready = kmm_common::ready_label(&c.ns, MODULE);
    let nodes_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.client.clone());
    wait_for(WAIT, || async {
        let n = nodes_api.get(&c.node("ok")).await?;
        Ok(n.metadata.labels.unwrap_or_default().contains_key(&ready))
    })
    .await?;
    println!("agents reported: {:.1?}", t.elapsed());
    let pull_error = pull.last_error.clone().unwrap();
    let load_error = load.last_error.clone().unwrap();
    assert_eq!(pull_error.reason, "ImagePullFailed", "{pull:?}");
    assert_eq!(load_error.reason, "ModprobeFailed", "{load:?}");

    let selector = format!("kmm-test/explain-group={}", c.ns);
    let base = [
        "explain",
        MODULE,
        "-n",
        &c.ns,
        "-l",
        &selector,
        "--kubeconfig",
        kubeconfig,
    ];

    // Text.
    let out = run(&bin, &base)?;
    let text = String::from_utf8(out.stdout)?;
    println!("{text}");
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().last(),
        Some("7 nodes: 1 loaded, 1 pending, 2 failing, 3 not targeted")
    );
    let b = text_block(&text, &c.node("sel"));
    assert_eq!(headline(&b), "NotTargeted (SelectorMismatch)");
    assert!(row(&b, "applies").contains("selector label kmm-test/explain"));
    let b = text_block(&text, &c.node("kern"));
    assert_eq!(headline(&b), "NotTargeted (NoKernelMapping)");
    assert!(row(&b, "applies").contains(&format!("kernel {K_ARM} matches no kernelMapping")));
    let b = text_block(&text, &c.node("ver"));
    assert_eq!(headline(&b), "NotTargeted (VersionMismatch)");
    assert!(row(&b, "applies").contains(&format!("{version_label} is 0, Module wants 1")));
    let b = text_block(&text, &c.node("ok"));
    assert_eq!(headline(&b), "Loaded");
    assert_eq!(
        row(&b, "applies"),
        format!("yes: kernelMappings[1] -> {} (version 1)", image(K_OK))
    );
    assert!(row(&b, "loaded").starts_with(&format!("{}@{digest} (kernel {K_OK}", image(K_OK))));
    assert_eq!(row(&b, "last error"), "none");
    assert_eq!(
        row(&b, "ready label"),
        format!("{ready} present (version.ready=1)")
    );
    let b = text_block(&text, &c.node("pull"));
    assert_eq!(headline(&b), "Failing (ImagePullFailed)");
    assert_eq!(
        row(&b, "last error"),
        format!("ImagePullFailed: {}", pull_error.message)
    );
    assert_eq!(row(&b, "loaded"), "nothing");
    assert_eq!(row(&b, "ready label"), format!("{ready} absent"));
    let b = text_block(&text, &c.node("load"));
    assert_eq!(headline(&b), "Failing (ModprobeFailed)");
    assert_eq!(
        row(&b, "last error"),
        format!("ModprobeFailed: {}", load_error.message)
    );
    let b = text_block(&text, &c.node("noagent"));
    assert_eq!(headline(&b), "Pending (NoNodeModulesConfig)");
    assert!(row(&b, "status").contains("kmm-agent"));

    // JSON.
    let mut args = base.to_vec();
    args.extend(["-o", "json"]);
    let out = run(&bin, &args)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout)?;
    let typed: Explanation = serde_json::from_value(doc.clone())?;
    assert_eq!(typed.nodes.len(), 7);
    assert_eq!(doc["schemaVersion"], 1);
    assert_eq!(doc["module"]["namespace"], c.ns.as_str());
    assert_eq!(
        doc["summary"],
        serde_json::json!({"nodes": 7, "loaded": 1, "pending": 1, "failing": 2, "notTargeted": 3})
    );
    for (suffix, state, reason) in [
        ("sel", "NotTargeted", "SelectorMismatch"),
        ("kern", "NotTargeted", "NoKernelMapping"),
        ("ver", "NotTargeted", "VersionMismatch"),
        ("ok", "Loaded", "Loaded"),
        ("pull", "Failing", "ImagePullFailed"),
        ("load", "Failing", "ModprobeFailed"),
        ("noagent", "Pending", "NoNodeModulesConfig"),
    ] {
        let n = json_node(&doc, &c.node(suffix));
        assert_eq!(
            (n["state"].as_str(), n["reason"].as_str()),
            (Some(state), Some(reason)),
            "{n:#}"
        );
    }
    let n = json_node(&doc, &c.node("ok"));
    assert_eq!(n["target"]["mappingIndex"], 1);
    assert_eq!(n["target"]["image"], image(K_OK).as_str());
    assert_eq!(n["loaded"]["digest"], digest.as_str());
    assert_eq!(n["loaded"]["kernel"], K_OK);
    assert_eq!(
        n["loaded"]["since"].as_str(),
        ok.load_time.as_ref().map(|t| t.0.to_string()).as_deref()
    );
    assert_eq!(n["readyLabel"]["present"], true);
    let n = json_node(&doc, &c.node("pull"));
    assert_eq!(n["lastError"]["message"], pull_error.message.as_str());
    assert_eq!(n["target"]["image"], image(K_PULL).as_str());
    assert_eq!(n["applies"], true);
    let n = json_node(&doc, &c.node("load"));
    assert_eq!(n["lastError"]["message"], load_error.message.as_str());
    let n = json_node(&doc, &c.node("kern"));
    assert_eq!(n["applies"], false);
    assert_eq!(n["notTargeted"]["reason"], "NoKernelMapping");

    // One node.
    let out = run(
        &bin,
        &[
            "explain",
            MODULE,
            "-n",
            &c.ns,
            "--node",
            &c.node("pull"),
            "--kubeconfig",
            kubeconfig,
            "-o",
            "json",
        ],
    )?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let doc: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(doc["summary"]["nodes"], 1);
    assert_eq!(doc["nodes"][0]["reason"], "ImagePullFailed");

    // Errors say what is wrong.
    let out = run(
        &bin,
        &["explain", "nope", "-n", &c.ns, "--kubeconfig", kubeconfig],
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("module {}/nope not found", c.ns)),
        "{stderr}"
    );
    let none = "kmm-test/explain-group=nobody-here";
    let out = run(
        &bin,
        &[
            "explain",
            MODULE,
            "-n",
            &c.ns,
            "-l",
            none,
            "--kubeconfig",
            kubeconfig,
        ],
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("no nodes in the cluster match {none}")),
        "{stderr}"
    );

    let out = run(
        &bin,
        &[
            "explain",
            MODULE,
            "-n",
            &c.ns,
            "--node",
            "no-such-node",
            "--kubeconfig",
            kubeconfig,
        ],
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node no-such-node not found"), "{stderr}");
    // A user without RBAC: the API server's own words, not a wall of debug output.
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig)?)?;
    kc["users"][0]["user"]["as"] = "nobody".into();
    let forbidden = dir.path().join("nobody.kubeconfig");
    std::fs::write(&forbidden, serde_yaml::to_string(&kc)?)?;
    let forbidden = forbidden.to_str().context("path")?;
    let out = run(
        &bin,
        &["explain", MODULE, "-n", &c.ns, "--kubeconfig", forbidden],
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("API request failed:")
            && stderr.contains("User \"nobody\" cannot get resource \"modules\"")
            && stderr.contains("(403 Forbidden)"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    drop(agents);
    c.cleanup().await;
    c.nodes.clear();
    ns.cleanup().await
}

#[test]
fn explain_says_when_the_api_server_is_unreachable() -> Result<()> {
    let bin = kmmctl()?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("dead.kubeconfig");
    // Port 1 on loopback: connection refused at once.
    std::fs::write(
        &kubeconfig,
        r#"apiVersion: v1
kind: Config
clusters:
- name: dead
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: t}
contexts:
- name: dead
  context: {cluster: dead, user: u, namespace: kmm-x}
current-context: dead
"#,
    )?;
    let out = run(
        &bin,
        &[
            "explain",
            "m",
            "--kubeconfig",
            kubeconfig.to_str().context("path")?,
        ],
    )?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the API server at https://127.0.0.1:1/"),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    // Nothing but our one error line: kube's own logs stay quiet by default.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    Ok(())
}
