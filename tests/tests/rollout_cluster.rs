//! Issue 16 acceptance: `ModuleRollout` on the real API server, with kwok nodes (the real
//! kube-scheduler, Job, disruption and garbage collectors of kube-controller-manager) and
//! real agent reconcilers with the simulated kernel (`kmm-agent-fleet`), upgrading a versioned
//! Module v1 → v2 whose fake kmod images are in the local registry.
//!
//! - 50 nodes, `maxUnavailable: 5`, the leader SIGKILLed half-way: from a Node watch started
//!   before the rollout, never more than 5 nodes without the Module; every node ends `done`
//!   on v2, uncordoned, entered `upgrading` once; an admin's cordon stays;
//! - eviction through the Eviction API, a PodDisruptionBudget holding a node in `evicting`;
//! - `waitForPods` holding a node while a selected Pod runs, then `eviction.force` deleting,
//!   after the timeout, a Pod a budget protects;
//! - a failed validation Job fails its node and stops the rollout at `maxFailed`;
//! - deleting a rollout mid-way uncordons the node it cordoned and clears the nodes' states
//!   (its finalizer holds the deletion until then); the version labels stay where they were.
//!
//! Needs the control plane, kwok (`bash hack/kwok/build.sh`) and the registry.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kmm_common::{
    ModuleRollout, UpgradeState, ready_label, upgrade_cordoned_annotation,
    upgrade_message_annotation, upgrade_state_label, version_module_label, version_ready_label,
};
use kmm_tests::cluster::{apply_yaml, crd_namespace, create_node, finish_job, wait_for};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::fleet::{Fleet, FleetKind};
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::kwok::Kwok;
use kmm_tests::module::ModuleBuilder;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

const KVER: &str = "6.1.0-96-sim-amd64";
const MODULE: &str = "gpu";
const ROLLOUT: &str = "up";
/// Generous: two cores, other tests running beside.
const WAIT: Duration = Duration::from_secs(240);
/// Every node of a test carries `<TEST_LABEL>=<ns>`.
const TEST_LABEL: &str = "kmm-rollout-test";

struct Fixture {
    cp: &'static ControlPlane,
    client: Client,
    nodes: Vec<String>,
    controllers: Vec<ControllerProcess>,
    fleet: Option<Fleet>,
    // Last: the namespace goes after the nodes (see `Drop`).
    ns: Option<TestNamespace>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(prefix: &str) -> Result<Self> {
        let (cp, client, ns) = crd_namespace(prefix).await?;
        Ok(Self {
            cp,
            client,
            nodes: Vec::new(),
            controllers: Vec::new(),
            fleet: None,
            ns: Some(ns),
            dir: tempfile::tempdir()?,
        })
    }

    fn ns(&self) -> &str {
        self.ns
            .as_ref()
            .map(TestNamespace::name)
            .unwrap_or_default()
    }

    fn node_name(&self, i: usize) -> String {
        format!("{}-{i}", self.ns())
    }

    /// Nodes `<ns>-0..n`, kwok-run unless `plain` names them (nobody runs those: Job Pods
    /// stay Pending there), labelled for the Module with version-module v1.
    async fn nodes(&mut self, n: usize, plain: &[usize]) -> Result<()> {
        let kwok = Kwok::shared().await?;
        let ns = self.ns().to_string();
        let version = version_module_label(&ns, MODULE);
        let names: Vec<(usize, String)> = (0..n).map(|i| (i, self.node_name(i))).collect();
        self.nodes.extend(names.iter().map(|(_, n)| n.clone()));
        let client = &self.client;
        futures::stream::iter(names.into_iter().map(|(i, name)| {
            let (ns, version) = (ns.clone(), version.clone());
            async move {
                let labels = [(TEST_LABEL, ns.as_str()), (version.as_str(), "v1")];
                if plain.contains(&i) {
                    create_node(client, &name, &labels, KVER).await.map(drop)
                } else {
                    kwok.create_fake_node(client, &name, KVER, &labels)
                        .await
                        .map(drop)
                }
            }
        }))
        .buffer_unordered(10)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    /// v1 and v2 images, the agents of every node, the Module at v1 loaded everywhere.
    async fn module_loaded_at_v1(&mut self) -> Result<()> {
        for v in ["v1", "v2"] {
            let fw = format!("{v}\n");
            push_fake_kmod(
                &self.image(v),
                KVER,
                &[(MODULE, &[])],
                &[("rollout.fw", fw.as_bytes())],
            )
            .await?;
        }
        let mut fleet = Fleet::start(
            FleetKind::InProcess,
            self.cp,
            &format!("{}-", self.ns()),
            self.nodes.len(),
            KVER,
            &self.dir.path().join("fleet"),
        )?;
        fleet.wait_ready(WAIT).await?;
        self.fleet = Some(fleet);
        self.set_module("v1")?;
        let (ready, version_ready) = (
            ready_label(self.ns(), MODULE),
            version_ready_label(self.ns(), MODULE),
        );
        self.wait("every node loaded v1", || async {
            let nodes = self.list_nodes().await?;
            Ok(nodes.len() == self.nodes.len()
                && nodes.iter().all(|n| {
                    n.labels().contains_key(&ready)
                        && n.labels().get(&version_ready).map(String::as_str) == Some("v1")
                }))
        })
        .await
    }

    fn image(&self, version: &str) -> String {
        format!(
            "{}/{}/{MODULE}:{KVER}-{version}",
            registry_addr(),
            self.ns()
        )
    }

    /// The Module at `version`, tolerating the fake nodes' taint and an unmanaged node's
    /// not-ready taints; not the cordon's: the rollout's own cordon lets its load through.
    fn set_module(&self, version: &str) -> Result<()> {
        let tolerate = |key: &str| json!({"key": key, "operator": "Exists"});
        let yaml = ModuleBuilder::new(MODULE)
            .selector(TEST_LABEL, self.ns())
            .version(version)
            .tolerations(json!([
                kmm_tests::kwok::toleration(),
                tolerate("node.kubernetes.io/not-ready"),
                tolerate("node.kubernetes.io/unreachable"),
            ]))
            .insecure_mapping("^.+-sim-amd64$", &self.image(version))
            .manifest();
        apply_yaml(self.cp, self.ns(), &yaml)
    }

    /// A controller replica (lease 6 s, renewed every 2 s).
    fn controller(&mut self, identity: &str) -> Result<()> {
        let c = ControllerProcess::start(&ControllerOptions::fast_lease_replica(
            self.cp,
            self.ns(),
            self.dir.path(),
            identity,
            &[],
        ))?;
        self.controllers.push(c);
        Ok(())
    }

    async fn create_rollout(&self, spec: serde_json::Value) -> Result<()> {
        let mut spec = spec;
        spec["moduleName"] = json!(MODULE);
        let r: ModuleRollout = serde_json::from_value(json!({
            "apiVersion": "rollout.kmm-rs.io/v1alpha1",
            "kind": "ModuleRollout",
            "metadata": {"name": ROLLOUT},
            "spec": spec,
        }))?;
        self.rollouts().create(&PostParams::default(), &r).await?;
        Ok(())
    }

    fn rollouts(&self) -> Api<ModuleRollout> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    async fn rollout(&self) -> Result<ModuleRollout> {
        Ok(self.rollouts().get(ROLLOUT).await?)
    }

    async fn condition(&self, type_: &str) -> Result<Option<(String, String, String)>> {
        Ok(self
            .rollout()
            .await?
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason, c.message)))
    }

    async fn list_nodes(&self) -> Result<Vec<Node>> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{TEST_LABEL}={}", self.ns()));
        Ok(nodes.list(&lp).await?.items)
    }

    async fn node(&self, name: &str) -> Result<Node> {
        Ok(Api::<Node>::all(self.client.clone()).get(name).await?)
    }

    async fn state(&self, name: &str) -> Result<Option<String>> {
        let key = upgrade_state_label(self.ns(), MODULE);
        Ok(self.node(name).await?.labels().get(&key).cloned())
    }

    /// The node's `upgrade-message` annotation (empty when absent).
    async fn message(&self, name: &str) -> Result<String> {
        let key = upgrade_message_annotation(self.ns(), MODULE);
        Ok(self
            .node(name)
            .await?
            .annotations()
            .get(&key)
            .cloned()
            .unwrap_or_default())
    }

    /// A PodDisruptionBudget `keep-guarded` that allows no disruption of the Pods labelled
    /// `app: guarded`; waits until the namespace's `pods` Pods run and the budget counts
    /// `healthy` of them.
    async fn guard_with_budget(
        &self,
        pods: usize,
        healthy: i32,
    ) -> Result<Api<PodDisruptionBudget>> {
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), self.ns());
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "keep-guarded"},
            "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "guarded"}}},
        }))?;
        pdbs.create(&PostParams::default(), &pdb).await?;
        let all: Api<Pod> = Api::namespaced(self.client.clone(), self.ns());
        self.wait("Pods Running, the budget computed", || async {
            let listed = all.list(&ListParams::default()).await?.items;
            let budget = pdbs.get("keep-guarded").await?.status;
            Ok(listed.len() == pods
                && listed.iter().all(running)
                && budget.is_some_and(|s| {
                    s.current_healthy == Some(healthy) && s.observed_generation.is_some()
                }))
        })
        .await?;
        Ok(pdbs)
    }

    /// Controllers', agents' and the rollout's state, for failure messages.
    fn logs(&self) -> String {
        let tail = |text: String, n: usize| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut out = String::new();
        for c in &self.controllers {
            out.push_str(&format!(
                "--- controller {} (tail):\n{}\n",
                c.identity,
                tail(c.log(), 80)
            ));
        }
        if let Some(f) = &self.fleet {
            out.push_str(&format!("--- agents (tail):\n{}\n", f.log_tail(30)));
        }
        out.push_str(
            &self
                .cp
                .kubectl(["get", "modulerollouts", "-n", self.ns(), "-o", "yaml"])
                .stdout
                .iter()
                .map(|b| *b as char)
                .collect::<String>(),
        );
        out
    }

    async fn wait<F, Fut>(&self, what: &str, check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        wait_for(WAIT, check)
            .await
            .with_context(|| format!("waiting for: {what}\n{}", self.logs()))
    }

    async fn finish(mut self) -> Result<()> {
        self.controllers.clear();
        self.fleet = None;
        let names = std::mem::take(&mut self.nodes);
        for n in &names {
            kmm_tests::cluster::delete_node_and_status(&self.client, n).await;
        }
        match self.ns.take() {
            Some(ns) => ns.cleanup().await,
            None => Ok(()),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failed test: no kwok node may stay Ready forever.
        if self.nodes.is_empty() {
            return;
        }
        let mut args = vec!["delete", "node", "--ignore-not-found", "--wait=false"];
        args.extend(self.nodes.iter().map(String::as_str));
        let _ = self.cp.kubectl(&args);
        args[1] = "nodemodulesconfig";
        let _ = self.cp.kubectl(&args);
    }
}

/// What a Node watch saw, event by event.
#[derive(Debug, Default)]
struct Observed {
    synced: bool,
    /// Per node: not ready for the Module (no `.ready`, or between cordon and done).
    unavailable: BTreeMap<String, bool>,
    /// Per node: its last `upgrade-state`.
    state: BTreeMap<String, String>,
    /// Per node: how many times it entered `upgrading`.
    upgrading: BTreeMap<String, usize>,
    max_unavailable: usize,
    max_in_progress: usize,
}

/// Watches the test's Nodes from now on, counting at every event how many are not ready.
fn observe(client: &Client, ns: &str) -> (Arc<Mutex<Observed>>, JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Observed::default()));
    let api: Api<Node> = Api::all(client.clone());
    let cfg = watcher::Config::default().labels(&format!("{TEST_LABEL}={ns}"));
    let (ready, state_key) = (ready_label(ns, MODULE), upgrade_state_label(ns, MODULE));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = events.next().await {
            let Ok(ev) = ev else { continue };
            let mut o = out.lock().unwrap();
            match ev {
                watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                    let name = n.name_any();
                    let state = n.labels().get(&state_key).cloned().unwrap_or_default();
                    let in_progress = UpgradeState::parse(&state).is_some_and(|s| s.in_progress());
                    let before = o.state.insert(name.clone(), state.clone());
                    if state == "upgrading" && before.as_deref() != Some("upgrading") {
                        *o.upgrading.entry(name.clone()).or_default() += 1;
                    }
                    o.unavailable
                        .insert(name, in_progress || !n.labels().contains_key(&ready));
                }
                watcher::Event::InitDone => o.synced = true,
                _ => {}
            }
            let down = o.unavailable.values().filter(|d| **d).count();
            let busy = o
                .state
                .values()
                .filter(|s| UpgradeState::parse(s).is_some_and(|s| s.in_progress()))
                .count();
            o.max_unavailable = o.max_unavailable.max(down);
            o.max_in_progress = o.max_in_progress.max(busy);
        }
    });
    (seen, task)
}

/// The headline: 50 nodes, maxUnavailable 5, the leader killed mid-rollout.
#[tokio::test]
async fn fifty_nodes_upgrade_within_max_unavailable_through_a_leader_kill_and_an_admins_cordon_stays()
-> Result<()> {
    const N: usize = 50;
    const CORDONED_BY_ADMIN: usize = 7;
    let mut f = Fixture::new("rol-fleet").await?;
    f.nodes(N, &[]).await?;
    f.controller("a")?;
    f.controllers[0].wait_leader(WAIT).await?;
    f.controller("b")?;
    f.controllers[1].wait_ready(WAIT).await?;
    f.module_loaded_at_v1().await?;

    let admins = f.node_name(CORDONED_BY_ADMIN);
    let nodes: Api<Node> = Api::all(f.client.clone());
    nodes
        .patch(
            &admins,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    let (seen, watch) = observe(&f.client, f.ns());
    f.wait("the Node watch synced", || async {
        Ok(seen.lock().unwrap().synced)
    })
    .await?;

    f.set_module("v2")?;
    f.create_rollout(json!({"maxUnavailable": 5, "maxParallel": 10}))
        .await?;
    f.wait("20 nodes done", || async {
        let r = f.rollout().await?;
        Ok(r.status.is_some_and(|s| s.nodes.done >= 20))
    })
    .await?;
    let mut leader = f.controllers.remove(0);
    leader.kill();
    let killed_log = leader.log();
    f.controllers[0].wait_leader(WAIT).await?;

    f.wait("every node done, Complete", || async {
        let done = f
            .rollout()
            .await?
            .status
            .is_some_and(|s| s.nodes.done == N as i32 && s.nodes.total == N as i32);
        Ok(done
            && f.condition("Complete")
                .await?
                .is_some_and(|c| c.0 == "True"))
    })
    .await
    .with_context(|| format!("killed leader's log:\n{killed_log}"))?;
    watch.abort();

    {
        let o = seen.lock().unwrap();
        println!(
            "max unavailable {}, max in progress {}",
            o.max_unavailable, o.max_in_progress
        );
        assert!(
            o.max_unavailable <= 5,
            "{} nodes were without the Module at once (maxUnavailable 5)\n{}",
            o.max_unavailable,
            f.logs()
        );
        // The budget was used, so it is what held the rollout back.
        assert!(o.max_in_progress >= 2, "{o:?}");
        let twice: Vec<_> = o.upgrading.iter().filter(|(_, c)| **c != 1).collect();
        assert!(
            twice.is_empty() && o.upgrading.len() == N,
            "each node enters upgrading exactly once: {twice:?} ({} nodes seen)",
            o.upgrading.len()
        );
    }

    let (ready, version_ready, cordoned) = (
        ready_label(f.ns(), MODULE),
        version_ready_label(f.ns(), MODULE),
        upgrade_cordoned_annotation(f.ns(), MODULE),
    );
    for n in f.list_nodes().await? {
        let name = n.name_any();
        let labels = n.labels();
        assert_eq!(
            labels.get(&version_ready).map(String::as_str),
            Some("v2"),
            "{name}"
        );
        assert!(labels.contains_key(&ready), "{name}");
        assert_eq!(f.state(&name).await?.as_deref(), Some("done"), "{name}");
        let unschedulable = n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        assert_eq!(unschedulable, name == admins, "{name} cordon");
        assert!(!n.annotations().contains_key(&cordoned), "{name}");
    }
    f.finish().await
}

fn pod(name: &str, node: &str, labels: serde_json::Value) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "tolerations": [kmm_tests::kwok::toleration()],
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "work", "image": "registry.example/work:1"}],
        },
    }))?)
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

#[tokio::test]
async fn deleting_a_rollout_mid_way_uncordons_its_node_and_clears_the_states() -> Result<()> {
    let mut f = Fixture::new("rol-delete").await?;
    f.nodes(2, &[]).await?;
    f.controller("a")?;
    f.controllers[0].wait_leader(WAIT).await?;
    f.module_loaded_at_v1().await?;
    let names = [f.node_name(0), f.node_name(1)];
    // A budget that allows no disruption holds whichever node goes first in `evicting`.
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), f.ns());
    for (i, node) in names.iter().enumerate() {
        let labels = json!({"evict": "yes", "app": "guarded"});
        pods.create(
            &PostParams::default(),
            &pod(&format!("guarded-{i}"), node, labels)?,
        )
        .await?;
    }
    let pdbs = f.guard_with_budget(2, 2).await?;

    f.set_module("v2")?;
    f.create_rollout(json!({"eviction": {"podSelector": {"matchLabels": {"evict": "yes"}}}}))
        .await?;
    let held = Arc::new(Mutex::new(None::<String>));
    f.wait("a node cordoned and held in evicting", || async {
        for n in &names {
            let node = f.node(n).await?;
            let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
            if cordoned && f.state(n).await?.as_deref() == Some("evicting") {
                *held.lock().unwrap() = Some(n.clone());
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await?;
    let held = held.lock().unwrap().clone().unwrap();
    assert!(
        f.rollout()
            .await?
            .finalizers()
            .iter()
            .any(|x| x == kmm_common::ROLLOUT_FINALIZER),
        "the rollout holds its finalizer"
    );

    f.rollouts()
        .delete(ROLLOUT, &DeleteParams::default())
        .await?;
    f.wait("the rollout gone once its nodes are released", || async {
        Ok(f.rollouts().get_opt(ROLLOUT).await?.is_none())
    })
    .await?;
    let node = f.node(&held).await?;
    assert_ne!(
        node.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true),
        "{held} stays cordoned"
    );
    let message = f.message(&held).await?;
    assert!(
        message.contains("was deleted while the node was evicting; uncordoned"),
        "{message}"
    );
    assert!(
        !node
            .annotations()
            .contains_key(&upgrade_cordoned_annotation(f.ns(), MODULE))
    );
    for n in &names {
        assert_eq!(
            f.state(n).await?,
            None,
            "{n} keeps a state no rollout drives"
        );
        assert_eq!(
            f.node(n)
                .await?
                .labels()
                .get(&version_module_label(f.ns(), MODULE))
                .map(String::as_str),
            Some("v1"),
            "{n}: the version label stays where it was"
        );
    }
    pdbs.delete("keep-guarded", &DeleteParams::default())
        .await?;
    f.finish().await
}

#[tokio::test]
async fn pods_are_evicted_through_the_eviction_api_and_a_disruption_budget_holds_its_node()
-> Result<()> {
    let mut f = Fixture::new("rol-evict").await?;
    f.nodes(2, &[]).await?;
    f.controller("a")?;
    f.controllers[0].wait_leader(WAIT).await?;
    f.module_loaded_at_v1().await?;
    let (n0, n1) = (f.node_name(0), f.node_name(1));
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), f.ns());
    pods.create(
        &PostParams::default(),
        &pod("work", &n0, json!({"evict": "yes"}))?,
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod("guarded", &n1, json!({"evict": "yes", "app": "guarded"}))?,
    )
    .await?;
    // A Pod nobody selected stays.
    pods.create(&PostParams::default(), &pod("bystander", &n0, json!({}))?)
        .await?;
    let pdbs = f.guard_with_budget(3, 1).await?;

    // Every Pod update of `work`: the eviction marks it before it goes.
    let marked = Arc::new(Mutex::new(None::<String>));
    let watch = {
        let marked = marked.clone();
        let cfg = watcher::Config::default().fields("metadata.name=work");
        let mut events = watcher(pods.clone(), cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        tokio::spawn(async move {
            while let Some(Ok(p)) = events.next().await {
                let reason = p
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
                    .and_then(|c| c.reason);
                if reason.is_some() {
                    *marked.lock().unwrap() = reason;
                }
            }
        })
    };

    f.set_module("v2")?;
    f.create_rollout(json!({
        "eviction": {"podSelector": {"matchLabels": {"evict": "yes"}}},
    }))
    .await?;
    f.wait(&format!("{n0} done, `work` evicted"), || async {
        Ok(f.state(&n0).await?.as_deref() == Some("done") && pods.get_opt("work").await?.is_none())
    })
    .await?;
    watch.abort();
    assert_eq!(
        marked.lock().unwrap().as_deref(),
        Some("EvictionByEvictionAPI"),
        "`work` left through the Eviction API"
    );
    assert!(pods.get_opt("bystander").await?.is_some());

    // The budget allows no disruption: n1 waits in `evicting`, and says why.
    f.wait(&format!("{n1} held in evicting by the budget"), || async {
        let blocked = f.rollout().await?.status.unwrap_or_default().blocked;
        Ok(f.state(&n1).await?.as_deref() == Some("evicting")
            && blocked.iter().any(|b| {
                b.node == n1
                    && b.message.contains("PodDisruptionBudget")
                    && b.message.contains("keep-guarded")
            }))
    })
    .await?;
    let message = f.message(&n1).await?;
    assert!(message.contains("keep-guarded"), "{message}");
    assert!(pods.get_opt("guarded").await?.is_some());
    assert_eq!(
        f.node(&n1)
            .await?
            .labels()
            .get(&version_module_label(f.ns(), MODULE))
            .map(String::as_str),
        Some("v1"),
        "the label does not move before the Pods are gone"
    );

    pdbs.delete("keep-guarded", &DeleteParams::default())
        .await?;
    f.wait(&format!("{n1} done once the budget is gone"), || async {
        Ok(f.state(&n1).await?.as_deref() == Some("done")
            && pods.get_opt("guarded").await?.is_none())
    })
    .await?;
    f.wait("Complete", || async {
        Ok(f.condition("Complete")
            .await?
            .is_some_and(|c| c.0 == "True"))
    })
    .await?;
    f.finish().await
}

#[tokio::test]
async fn a_node_waits_for_its_pods_then_force_deletes_what_a_budget_holds_after_the_timeout()
-> Result<()> {
    let mut f = Fixture::new("rol-force").await?;
    f.nodes(1, &[]).await?;
    f.controller("a")?;
    f.controllers[0].wait_leader(WAIT).await?;
    f.module_loaded_at_v1().await?;
    let n0 = f.node_name(0);
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), f.ns());
    pods.create(
        &PostParams::default(),
        &pod("training", &n0, json!({"app": "training"}))?,
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod("guarded", &n0, json!({"evict": "yes", "app": "guarded"}))?,
    )
    .await?;
    let pdbs = f.guard_with_budget(2, 1).await?;

    f.set_module("v2")?;
    f.create_rollout(json!({
        "waitForPods": {"podSelector": {"matchLabels": {"app": "training"}}},
        "eviction": {
            "podSelector": {"matchLabels": {"evict": "yes"}},
            "timeoutSeconds": 3,
            "force": true,
        },
    }))
    .await?;
    f.wait(
        &format!("{n0} waiting for its training Pod, saying so"),
        || async {
            let message = f.message(&n0).await?;
            Ok(f.state(&n0).await?.as_deref() == Some("waiting-for-pods")
                && message.contains("waiting for 1 Pod(s) to finish")
                && message.contains("training"))
        },
    )
    .await?;
    // No timeout on the wait: the node stays there while the Pod runs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(f.state(&n0).await?.as_deref(), Some("waiting-for-pods"));
    assert!(pods.get_opt("guarded").await?.is_some());

    // The job ends; eviction meets a budget that allows none, and after 3 s `force`
    // deletes the Pod: the budget is still there when it goes.
    pods.delete("training", &DeleteParams::default()).await?;
    f.wait(&format!("{n0} done, `guarded` deleted"), || async {
        Ok(f.state(&n0).await?.as_deref() == Some("done")
            && pods.get_opt("guarded").await?.is_none())
    })
    .await?;
    assert!(pdbs.get_opt("keep-guarded").await?.is_some());
    assert_eq!(
        f.node(&n0)
            .await?
            .labels()
            .get(&version_module_label(f.ns(), MODULE))
            .map(String::as_str),
        Some("v2")
    );
    pdbs.delete("keep-guarded", &DeleteParams::default())
        .await?;
    f.finish().await
}

#[tokio::test]
async fn a_failed_validation_job_fails_its_node_and_the_rollout_stops_at_max_failed() -> Result<()>
{
    let mut f = Fixture::new("rol-valid").await?;
    // Node 1 is nobody's: its validation Pod stays Pending and the test fails its Job.
    f.nodes(3, &[1]).await?;
    f.controller("a")?;
    f.controllers[0].wait_leader(WAIT).await?;
    f.module_loaded_at_v1().await?;
    let (n0, n1, n2) = (f.node_name(0), f.node_name(1), f.node_name(2));
    f.set_module("v2")?;
    f.create_rollout(json!({
        "maxFailed": 1,
        "validation": {"job": {"template": {"spec": {
            "tolerations": [kmm_tests::kwok::toleration()],
            "containers": [{"name": "check", "image": "registry.example/check:1"}],
        }}}},
    }))
    .await?;
    // kwok runs n0's Job to success.
    f.wait(&format!("{n0} done"), || async {
        Ok(f.state(&n0).await?.as_deref() == Some("done"))
    })
    .await?;
    let jobs: Api<Job> = Api::namespaced(f.client.clone(), f.ns());
    let job_of = |node: String| {
        let jobs = jobs.clone();
        async move {
            Ok::<_, anyhow::Error>(
                jobs.list(&ListParams::default().labels("rollout.kmm-rs.io/name=up"))
                    .await?
                    .items
                    .into_iter()
                    .find(|j| j.annotations().get("rollout.kmm-rs.io/node") == Some(&node)),
            )
        }
    };
    let mut job = None;
    f.wait(&format!("{n1} validating, its Job made"), || async {
        Ok(f.state(&n1).await?.as_deref() == Some("validating")
            && job_of(n1.clone()).await?.is_some())
    })
    .await?;
    if let Some(j) = job_of(n1.clone()).await? {
        let pod = j.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        assert_eq!(pod.and_then(|p| p.node_name.as_deref()), Some(n1.as_str()));
        job = Some(j.name_any());
    }
    let job = job.context("no validation Job")?;
    // On a node nobody runs, the Job controller may give up first (its Pod evicted by the
    // not-ready taint); otherwise play its verdict.
    let failed_already = jobs
        .get(&job)
        .await?
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Failed" && c.status == "True");
    if !failed_already {
        finish_job(&jobs, &job, false).await?;
    }

    f.wait("Stopped: the failure limit", || async {
        Ok(f.condition("Stopped")
            .await?
            .is_some_and(|c| c.0 == "True" && c.1 == "FailureLimit"))
    })
    .await?;
    assert_eq!(f.state(&n1).await?.as_deref(), Some("failed"));
    let message = f.message(&n1).await?;
    assert!(message.contains("validation Job failed"), "{message}");
    // Later passes start nothing: n2 keeps v1. A spec change forces a pass.
    let rollouts = f.rollouts();
    rollouts
        .patch(
            ROLLOUT,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxParallel": 2}})),
        )
        .await?;
    f.wait("the spec change observed", || async {
        Ok(f.rollout()
            .await?
            .status
            .and_then(|s| s.observed_generation)
            == Some(2))
    })
    .await?;
    assert_eq!(f.state(&n2).await?.as_deref(), Some("required"));
    assert_eq!(
        f.node(&n2)
            .await?
            .labels()
            .get(&version_module_label(f.ns(), MODULE))
            .map(String::as_str),
        Some("v1")
    );
    f.finish().await
}
