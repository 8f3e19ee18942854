//! `kmmctl rollout` (the real binary) against the real API server. No controller: the test
//! plays the rollout engine, writing each Node's `upgrade-state` label and annotations and the
//! ModuleRollout's status by hand, then checks what kmmctl shows and what it changes (and
//! refuses to change).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kmm_common::{
    ModuleRollout, UpgradeState, upgrade_cordoned_annotation, upgrade_message_annotation,
    upgrade_since_annotation, upgrade_state_label, version_ready_label,
};
use kmm_tests::cluster::{apply_yaml, crd_namespace, create_node, delete_node};
use kmm_tests::controlplane::{ControlPlane, repo_root};
use kmm_tests::module::ModuleBuilder;
use kmm_tests::vm::artifacts::cargo_artifact;
use kmmctl::rollout::report::RolloutReport;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const MODULE: &str = "rolldrv";
const ROLLOUT: &str = "to-v2";
const KERNEL: &str = "6.1.0-56-amd64";

fn kmmctl() -> Result<PathBuf> {
    cargo_artifact("kmmctl", &["-p", "kmmctl", "--bin", "kmmctl"])
}

/// A test namespace with its Module, its rollout and its nodes (named `<ns>-<suffix>`).
struct Fixture {
    cp: &'static ControlPlane,
    client: Client,
    ns: String,
    bin: PathBuf,
    nodes: Vec<String>,
}

impl Fixture {
    async fn new(prefix: &str) -> Result<(Self, kmm_tests::controlplane::TestNamespace)> {
        let (cp, client, ns) = crd_namespace(prefix).await?;
        let f = Self {
            cp,
            client,
            ns: ns.name().to_string(),
            bin: kmmctl()?,
            nodes: Vec::new(),
        };
        Ok((f, ns))
    }

    fn node(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.ns)
    }

    fn key(&self, f: fn(&str, &str) -> String) -> String {
        f(&self.ns, MODULE)
    }

    /// The Module (version v2, selecting this test's nodes) and the ModuleRollout.
    async fn create_module_and_rollout(&self) -> Result<()> {
        let module = ModuleBuilder::new(MODULE)
            .selector("kmm-test/rollout", &self.ns)
            .version("v2")
            .mapping("-amd64$", "registry.invalid/rolldrv:v2")
            .manifest();
        apply_yaml(self.cp, &self.ns, &module)?;
        let rollout: ModuleRollout = serde_json::from_value(json!({
            "apiVersion": "rollout.kmm-rs.io/v1alpha1", "kind": "ModuleRollout",
            "metadata": {"name": ROLLOUT, "namespace": self.ns},
            "spec": {"moduleName": MODULE, "maxUnavailable": 2, "maxParallel": 2, "maxFailed": 2},
        }))?;
        Api::<ModuleRollout>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &rollout)
            .await?;
        Ok(())
    }

    /// A node of the Module in `state` (none: not labelled yet), as the engine would leave it.
    async fn add_node(
        &mut self,
        suffix: &str,
        state: Option<UpgradeState>,
        message: Option<&str>,
        cordoned_by_rollout: bool,
    ) -> Result<String> {
        let name = self.node(suffix);
        let version_ready = self.key(version_ready_label);
        let state_key = self.key(upgrade_state_label);
        let mut labels = vec![
            ("kmm-test/rollout", self.ns.as_str()),
            (version_ready.as_str(), "v1"),
        ];
        if let Some(s) = state {
            labels.push((state_key.as_str(), s.as_str()));
        }
        create_node(&self.client, &name, &labels, KERNEL).await?;
        self.nodes.push(name.clone());
        let mut annotations = serde_json::Map::new();
        if state.is_some() {
            annotations.insert(
                self.key(upgrade_since_annotation),
                json!("2026-01-01T00:00:00Z"),
            );
        }
        if let Some(m) = message {
            annotations.insert(self.key(upgrade_message_annotation), json!(m));
        }
        if cordoned_by_rollout {
            annotations.insert(self.key(upgrade_cordoned_annotation), json!("true"));
        }
        let patch = json!({
            "metadata": {"annotations": annotations},
            "spec": {"unschedulable": cordoned_by_rollout},
        });
        self.nodes_api()
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(name)
    }

    fn nodes_api(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn rollouts(&self) -> Api<ModuleRollout> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The node's upgrade-state label and message annotation.
    async fn state_of(&self, node: &str) -> Result<(Option<String>, Option<String>)> {
        let n = self.nodes_api().get(node).await?;
        let label = n
            .metadata
            .labels
            .unwrap_or_default()
            .remove(&self.key(upgrade_state_label));
        let message = n
            .metadata
            .annotations
            .unwrap_or_default()
            .remove(&self.key(upgrade_message_annotation));
        Ok((label, message))
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        let kubeconfig = self
            .cp
            .kubeconfig_path()
            .to_str()
            .context("kubeconfig path")?;
        Command::new(&self.bin)
            .args(args)
            .args(["-n", &self.ns, "--kubeconfig", kubeconfig])
            .env_remove("RUST_LOG")
            .output()
            .context("running kmmctl")
    }

    async fn cleanup(&self) {
        for n in &self.nodes {
            delete_node(&self.client, n).await;
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

/// The table row of `node`: its cells split on runs of 3+ spaces (cells have single spaces).
fn table_row(text: &str, node: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_else(|| panic!("no row {node} in\n{text}"))
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn rollout_status_shows_each_nodes_state_and_what_blocks_it() -> Result<()> {
    let (mut f, ns) = Fixture::new("mro-status").await?;
    let result = status_scenario(&mut f).await;
    f.cleanup().await;
    ns.cleanup().await?;
    result
}

async fn status_scenario(f: &mut Fixture) -> Result<()> {
    // Errors first: no rollout, then a rollout whose Module is missing.
    let out = f.run(&["rollout", "status", ROLLOUT])?;
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("modulerollout {}/{ROLLOUT} not found", f.ns)),
        "{}",
        stderr(&out)
    );
    f.create_module_and_rollout().await?;
    let out = f.run(&["rollout", "status", ROLLOUT])?;
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Nodes:      not reported by the controller yet"),
        "{}",
        stdout(&out)
    );
    let stray = "missing-module";
    let stray_rollout: ModuleRollout = serde_json::from_value(json!({
        "apiVersion": "rollout.kmm-rs.io/v1alpha1", "kind": "ModuleRollout",
        "metadata": {"name": stray, "namespace": f.ns}, "spec": {"moduleName": "nope"},
    }))?;
    f.rollouts()
        .create(&PostParams::default(), &stray_rollout)
        .await?;
    let out = f.run(&["rollout", "status", stray])?;
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "module {}/nope (spec.moduleName of modulerollout {stray}) not found",
            f.ns
        )),
        "{}",
        stderr(&out)
    );

    // Nodes as the engine leaves them, and its status.
    let done = f
        .add_node("done", Some(UpgradeState::Done), None, false)
        .await?;
    let pdb = "eviction of app/db-0 refused: PodDisruptionBudget app/db allows 0 disruptions";
    let evicting = f
        .add_node("evicting", Some(UpgradeState::Evicting), Some(pdb), true)
        .await?;
    let new = f.add_node("new", None, None, false).await?;
    let status = json!({"status": {
        "targetVersion": "v2",
        "nodes": {"total": 3, "required": 1, "inProgress": 1, "done": 1, "failed": 0, "skipped": 0, "unavailable": 1},
        "wave": [evicting],
        "conditions": [{"type": "Progressing", "status": "True", "reason": "Upgrading",
                        "message": "1 node in progress", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    f.rollouts()
        .patch_status(ROLLOUT, &PatchParams::default(), &Patch::Merge(&status))
        .await?;

    let out = f.run(&["rollout", "status", ROLLOUT])?;
    let text = stdout(&out);
    println!("{text}");
    assert_eq!(code(&out), Some(0), "nothing failed: {}", stderr(&out));
    assert!(text.starts_with(&format!(
        "ModuleRollout {}/{ROLLOUT}: Module {MODULE} to version v2 (strategy Unload)\n",
        f.ns
    )));
    assert!(text.contains("\nConditions: Progressing=True (Upgrading: 1 node in progress)\n"));
    assert!(text.contains("\nLimits:     maxUnavailable 2, maxParallel 2, maxFailed 2\n"));
    assert!(text.contains(&format!("\nWave:       {evicting}\n")));
    let row = table_row(&text, &done);
    assert_eq!(
        (row[1].as_str(), row[3].as_str(), row[4].as_str()),
        ("done", "v1", "-"),
        "{row:?}"
    );
    let row = table_row(&text, &evicting);
    assert_eq!(
        (
            row[1].as_str(),
            row[3].as_str(),
            row[4].as_str(),
            row[5].as_str()
        ),
        ("evicting", "v1", "by rollout", pdb),
        "{row:?}"
    );
    let row = table_row(&text, &new);
    assert_eq!(
        (row[1].as_str(), row[2].as_str(), row[5].as_str()),
        ("required", "-", "not started (no upgrade-state label yet)"),
        "{row:?}"
    );
    assert_eq!(
        text.lines().last(),
        Some("3 nodes now: 1 required, 1 evicting, 1 done")
    );

    // A failed node: exit code 3, in text and JSON.
    let failed = f
        .add_node(
            "failed",
            Some(UpgradeState::Failed),
            Some("validation Job rolldrv-check failed"),
            false,
        )
        .await?;
    let out = f.run(&["rollout", "status", ROLLOUT, "-o", "json"])?;
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout)?;
    let typed: RolloutReport = serde_json::from_value(doc.clone())?;
    assert_eq!(typed.nodes.len(), 4);
    assert_eq!(doc["schemaVersion"], 1);
    assert_eq!(doc["counts"]["unavailable"], 1);
    let row = |name: &str| {
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&failed)["state"], "failed");
    assert_eq!(
        row(&failed)["message"],
        "validation Job rolldrv-check failed"
    );
    assert_eq!(row(&evicting)["cordoned"], "rollout");
    assert_eq!(row(&new)["labelled"], false);
    assert_eq!(row(&done)["since"], "2026-01-01T00:00:00Z");
    let out = f.run(&["rollout", "status", ROLLOUT])?;
    assert_eq!(code(&out), Some(3));
    Ok(())
}

#[tokio::test]
async fn rollout_pause_skip_and_retry_change_only_what_the_admin_may_and_say_why_not() -> Result<()>
{
    let (mut f, ns) = Fixture::new("mro-steer").await?;
    let result = steer_scenario(&mut f).await;
    f.cleanup().await;
    ns.cleanup().await?;
    result
}

async fn steer_scenario(f: &mut Fixture) -> Result<()> {
    f.create_module_and_rollout().await?;
    let wanted = f
        .add_node("wanted", Some(UpgradeState::Required), None, false)
        .await?;
    let busy = f
        .add_node(
            "busy",
            Some(UpgradeState::Evicting),
            Some("waiting for the PDB"),
            true,
        )
        .await?;
    let failed_a = f
        .add_node(
            "fail-a",
            Some(UpgradeState::Failed),
            Some("validation failed"),
            false,
        )
        .await?;
    let failed_b = f
        .add_node(
            "fail-b",
            Some(UpgradeState::Failed),
            Some("eviction timed out"),
            false,
        )
        .await?;
    let done = f
        .add_node("done", Some(UpgradeState::Done), None, false)
        .await?;

    // pause / resume: spec.paused, written by the kmmctl field manager.
    let out = f.run(&["rollout", "pause", ROLLOUT])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("modulerollout {}/{ROLLOUT} paused", f.ns)
    );
    let r = f.rollouts().get(ROLLOUT).await?;
    assert!(r.spec.paused);
    let managers: Vec<_> = r
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.iter().any(|m| m == "kmmctl"), "{managers:?}");
    let out = f.run(&["rollout", "pause", ROLLOUT])?;
    assert_eq!(
        stdout(&out).trim(),
        format!("modulerollout {}/{ROLLOUT} already paused", f.ns)
    );
    let out = f.run(&["rollout", "resume", ROLLOUT])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    assert!(!f.rollouts().get(ROLLOUT).await?.spec.paused);
    let out = f.run(&["rollout", "pause", "no-such-rollout"])?;
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("modulerollout")
            && stderr(&out).contains("no-such-rollout not found"),
        "{}",
        stderr(&out)
    );

    // skip: a node mid-way is refused (and nothing changes, not even the other node named).
    let out = f.run(&["rollout", "skip", ROLLOUT, &wanted, &busy])?;
    assert_eq!(code(&out), Some(1));
    let err = stderr(&out);
    assert!(err.contains("refused, nothing changed"), "{err}");
    assert!(
        err.contains(&format!("node {busy} is evicting, mid-way")) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(f.state_of(&wanted).await?.0.as_deref(), Some("required"));
    assert_eq!(f.state_of(&busy).await?.0.as_deref(), Some("evicting"));
    // ... a node that does not exist is named.
    let out = f.run(&["rollout", "skip", ROLLOUT, &wanted, "no-such-node"])?;
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("node not found: no-such-node (nothing changed)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(f.state_of(&wanted).await?.0.as_deref(), Some("required"));
    // ... the others are skipped; --force takes the busy one and says it stays cordoned.
    let out = f.run(&["rollout", "skip", ROLLOUT, &wanted])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("node {wanted} -> skip"));
    assert_eq!(f.state_of(&wanted).await?.0.as_deref(), Some("skip"));
    let since = f
        .nodes_api()
        .get(&wanted)
        .await?
        .metadata
        .annotations
        .unwrap_or_default()[&f.key(upgrade_since_annotation)]
        .clone();
    let age = Timestamp::now().duration_since(since.parse()?).as_secs();
    assert!((0..120).contains(&age), "since {since} is now");
    let out = f.run(&["rollout", "skip", ROLLOUT, &busy, "--force"])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("kubectl uncordon {busy}")),
        "{}",
        stdout(&out)
    );
    assert_eq!(f.state_of(&busy).await?, (Some("skip".into()), None));
    // unskip: only skipped nodes go back to required.
    let out = f.run(&["rollout", "unskip", ROLLOUT, &done])?;
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains(&format!("node {done} is done, not skipped")),
        "{}",
        stderr(&out)
    );
    let out = f.run(&["rollout", "unskip", ROLLOUT, &wanted])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.state_of(&wanted).await?.0.as_deref(), Some("required"));

    // retry: only failed nodes; the failure message goes with the state.
    let out = f.run(&["rollout", "retry", ROLLOUT, &failed_a, &done])?;
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains(&format!("node {done} is done, not failed")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        f.state_of(&failed_a).await?,
        (Some("failed".into()), Some("validation failed".into()))
    );
    let out = f.run(&["rollout", "retry", ROLLOUT, &failed_a])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        f.state_of(&failed_a).await?,
        (Some("required".into()), None)
    );
    let out = f.run(&["rollout", "retry", ROLLOUT, "--all-failed"])?;
    ensure!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("node {failed_b} -> required"));
    assert_eq!(
        f.state_of(&failed_b).await?,
        (Some("required".into()), None)
    );
    let out = f.run(&["rollout", "retry", ROLLOUT, "--all-failed"])?;
    assert_eq!(
        stdout(&out).trim(),
        format!("no failed nodes in modulerollout {}/{ROLLOUT}", f.ns)
    );

    // The writes are conditional: a patch decided on a stale resourceVersion is refused
    // (409), so kmmctl never overwrites a state the controller moved meanwhile.
    let stale = f
        .nodes_api()
        .get(&done)
        .await?
        .metadata
        .resource_version
        .unwrap();
    f.nodes_api()
        .patch(
            &done,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"kmm-test/touched": "yes"}}})),
        )
        .await?;
    let patch = kmmctl::rollout::change::node_patch(
        &f.ns,
        MODULE,
        UpgradeState::Skip,
        Timestamp::now(),
        &stale,
    );
    let err = f
        .nodes_api()
        .patch(&done, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err}"
    );
    assert_eq!(f.state_of(&done).await?.0.as_deref(), Some("done"));
    Ok(())
}

/// The `ModuleRollout` example of docs/upgrade.md, in namespace `ns`.
fn documented_example(ns: &str) -> Result<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/upgrade.md"))?;
    let block = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("kind: ModuleRollout"))
        .context("no ModuleRollout example in docs/upgrade.md")?;
    Ok(block.replace("namespace: ns1", &format!("namespace: {ns}")))
}

#[tokio::test]
async fn the_module_rollout_example_in_the_upgrade_doc_is_accepted_by_the_crd() -> Result<()> {
    let (cp, _client, ns) = crd_namespace("mro-doc").await?;
    let yaml = documented_example(ns.name())?;
    let out = cp.kubectl_with_stdin(
        ["create", "--dry-run=server", "-o", "json", "-f", "-"],
        &yaml,
    )?;
    let result = (|| {
        ensure!(out.status.success(), "{}", stderr(&out));
        let created: ModuleRollout = serde_json::from_slice(&out.stdout)?;
        let spec = &created.spec;
        assert_eq!(spec.module_name, "mydrv");
        assert_eq!((spec.max_parallel, spec.max_failed), (Some(2), Some(2)));
        assert!(spec.eviction.as_ref().is_some_and(|e| !e.force));
        assert!(
            spec.validation
                .as_ref()
                .is_some_and(|v| v.wait_for_plugin_ready && v.job.is_some())
        );
        Ok(())
    })();
    ns.cleanup().await?;
    result
}
