//! What a user does, on a real kubelet: `kubectl apply -k deploy/` (an overlay
//! that only sets `images:`, as docs/install.md says) onto a QEMU guest running
//! containerd + kubelet v1.35.4 on Debian's kernel; the agent DaemonSet's Pod
//! loads `brd` into the guest's kernel, the controller fills in the Module's
//! status, Prometheus scrapes the Pods, deletion unloads.
//! `hack/realnode/deploy.sh` runs first (it also checks that a second
//! `kubectl apply -k` says only "unchanged", rolls the agent DaemonSet and
//! checks `brd` is left alone); the assertions here then repeat the load and
//! check what the user would look at.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kmm_tests::controlplane::repo_root;
use kmm_tests::module::ModuleBuilder;
use kmm_tests::realnode::RealNode;
use serde_json::Value;

/// A line in `make test`'s log even when the test passes: written to the
/// process's stderr directly, past libtest's capture of `eprintln!`.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

const LABEL: &str = "kmm.node.kubernetes.io/default.brd.ready";

fn wait<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(Some(v)) => {
                say!(
                    "vm_kubelet: {what} after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(v);
            }
            Ok(None) => {}
            Err(e) if start.elapsed() >= limit => {
                return Err(e.context(format!("waiting for {what}")));
            }
            Err(_) => {}
        }
        if start.elapsed() >= limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn json(node: &RealNode, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&node.kubectl(&all)?)?)
}

fn labelled(node: &RealNode) -> Result<bool> {
    let n = json(node, &["get", "node", RealNode::NAME])?;
    Ok(n["metadata"]["labels"].get(LABEL).is_some())
}

#[test]
#[ignore = "boots a QEMU guest running a real kubelet and deploys kmm-rs on it (several minutes, needs KMM_TEST_IMAGE): run by make test"]
fn deploy_on_a_real_kubelet_loads_brd_from_the_agent_pod() -> Result<()> {
    let image = std::env::var_os("KMM_TEST_IMAGE").context(
        "KMM_TEST_IMAGE is unset: the kmm-rs image to deploy, e.g. oci:DIR:TAG \
         (make test builds it with hack/image/build.sh)",
    )?;
    let kmmctl = kmm_tests::signjob::kmmctl_binary()?;
    let node = RealNode::start()?;

    // deploy/ through the images-only overlay, agent 1/1 and controller 2/2
    // Ready, brd loaded, the agent rolled to a new tag without touching brd,
    // brd deleted and unloaded: deploy.sh fails on any of it.
    node.script(
        "deploy.sh",
        &[
            ("KMM_RN_IMAGE", image.as_os_str()),
            ("KMMCTL", kmmctl.as_os_str()),
        ],
    )?;

    // The agent Pod: on the guest node, Running and Ready.
    let pods = json(
        &node,
        &[
            "-n",
            "kmm-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=kmm-agent",
        ],
    )?;
    let items = pods["items"].as_array().context("pod list")?;
    ensure!(
        items.len() == 1,
        "expected one agent Pod, got {}",
        items.len()
    );
    let pod = &items[0];
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .context("pod name")?
        .to_string();
    ensure!(
        pod["spec"]["nodeName"] == RealNode::NAME,
        "agent Pod on {}",
        pod["spec"]["nodeName"]
    );
    ensure!(
        pod["status"]["phase"] == "Running",
        "agent Pod phase {}",
        pod["status"]["phase"]
    );
    let ready = pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    ensure!(ready, "agent Pod not Ready: {}", pod["status"]);
    say!(
        "vm_kubelet: agent Pod {pod_name} Running and Ready on node {}",
        RealNode::NAME
    );

    // brd again, loaded by that Pod.
    let brd = std::fs::read_to_string(repo_root().join("examples/brd.yaml"))?
        .replace("10.0.2.2:5000/", "10.0.2.2:25000/");
    node.kubectl_stdin(&["apply", "-f", "-"], &brd)?;
    wait("the brd ready label", Duration::from_secs(300), || {
        Ok(labelled(&node)?.then_some(()))
    })?;
    let (_, modules) = node.guest("grep '^brd ' /proc/modules")?;
    ensure!(
        modules.starts_with("brd "),
        "brd not in the guest's /proc/modules: {modules:?}"
    );
    let (_, params) =
        node.guest("cat /sys/module/brd/parameters/rd_nr /sys/module/brd/parameters/rd_size")?;
    ensure!(
        params.split_whitespace().collect::<Vec<_>>() == ["3", "2048"],
        "brd parameters in the guest: {params:?}"
    );
    let logs = node.kubectl(&["-n", "kmm-system", "logs", &pod_name])?;
    let loaded = logs
        .lines()
        .find(|l| l.contains("module loaded") && l.contains("default/brd"))
        .with_context(|| format!("no 'module loaded' line for default/brd in {pod_name}'s log"))?;
    say!("vm_kubelet: guest /proc/modules: {}", modules.trim());
    say!(
        "vm_kubelet: guest rd_nr rd_size: {}",
        params.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    say!("vm_kubelet: {pod_name}: {}", loaded.trim());

    // The controller's counts, as `kubectl get modules` shows them.
    let status = wait("Module status 1/1/1", Duration::from_secs(120), || {
        let m = json(&node, &["get", "module", "brd"])?;
        let s = &m["status"]["moduleLoader"];
        Ok((s["nodesMatchingSelectorNumber"] == 1
            && s["desiredNumber"] == 1
            && s["availableNumber"] == 1)
            .then(|| s.clone()))
    })?;
    say!("vm_kubelet: Module brd status.moduleLoader {status}");
    say!("{}", node.kubectl(&["get", "modules", "-A", "-o", "wide"])?);

    // The webhook, served by the controller Pods through their Service, fails
    // closed: a Module with a regexp that does not compile is refused.
    let bad = ModuleBuilder::new("bad-regexp")
        .mapping("(", "10.0.2.2:25000/default/brd:x")
        .manifest();
    let refused = node
        .kubectl_stdin(&["apply", "-f", "-"], &bad)
        .expect_err("a Module with regexp \"(\" was admitted");
    ensure!(
        format!("{refused:#}").contains("vmodule.kmm.sigs.x-k8s.io"),
        "refused, but not by the webhook: {refused:#}"
    );
    say!("vm_kubelet: webhook refused regexp \"(\": {refused:#}");

    // Prometheus: one agent and two controllers up, the agent's series for brd.
    node.script("prometheus.sh", &[])?;
    let up = node.prometheus_query("up")?;
    ensure!(up.len() == 3, "expected 3 scrape targets, got {up:?}");
    for t in &up {
        ensure!(t["value"][1] == "1", "target down: {t}");
        say!(
            "vm_kubelet: up{{job={}, pod={}}} = 1",
            t["metric"]["job"],
            t["metric"]["pod"]
        );
    }
    let series =
        node.prometheus_query(r#"kmm_agent_modules_loaded{namespace="default",name="brd"}"#)?;
    ensure!(
        series
            .iter()
            .any(|s| s["metric"]["node"] == RealNode::NAME && s["value"][1] == "1"),
        "no kmm_agent_modules_loaded == 1 for brd on {}: {series:?}",
        RealNode::NAME
    );
    say!("vm_kubelet: {series:?}");

    // Deletion unloads.
    node.kubectl(&["delete", "module", "brd", "--wait=true", "--timeout=120s"])?;
    wait(
        "brd unloaded from the guest",
        Duration::from_secs(120),
        || {
            let (found, _) = node.guest("grep -q '^brd ' /proc/modules")?;
            Ok((!found).then_some(()))
        },
    )?;
    wait("the ready label removed", Duration::from_secs(60), || {
        Ok((!labelled(&node)?).then_some(()))
    })?;

    rollout_v1_to_v2(&node)
}

const VERSION_LABEL: &str = "kmm.node.kubernetes.io/version-module.default.brd";
const VERSION_READY: &str = "kmm.node.kubernetes.io/default.brd.version.ready";
const STATE_LABEL: &str = "kmm.node.kubernetes.io/default.brd.upgrade-state";

/// examples/brd.yaml with `version` and brd's `rd_nr` (so the swap shows in the guest).
fn versioned_brd(version: &str, rd_nr: u32) -> Result<String> {
    let yaml = std::fs::read_to_string(repo_root().join("examples/brd.yaml"))?
        .replace("10.0.2.2:5000/", "10.0.2.2:25000/")
        .replace("          - rd_nr=3", &format!("          - rd_nr={rd_nr}"))
        .replace(
            "    container:\n",
            &format!("    container:\n      version: {version}\n"),
        );
    ensure!(yaml.contains("version: ") && yaml.contains(&format!("rd_nr={rd_nr}")));
    Ok(yaml)
}

/// The automatic ordered upgrade (kmm-rs's `ModuleRollout`, docs/upgrade.md) on
/// the real node: brd `v1` -> `v2` with a workload Pod on the node evicted
/// through the Eviction API first; the node ends uncordoned on `v2`.
fn rollout_v1_to_v2(node: &RealNode) -> Result<()> {
    node.kubectl(&[
        "label",
        "node",
        RealNode::NAME,
        &format!("{VERSION_LABEL}=v1"),
        "--overwrite",
    ])?;
    node.kubectl_stdin(&["apply", "-f", "-"], &versioned_brd("v1", 3)?)?;
    let version_ready = |node: &RealNode| -> Result<Option<String>> {
        let n = json(node, &["get", "node", RealNode::NAME])?;
        Ok(n["metadata"]["labels"][VERSION_READY]
            .as_str()
            .map(str::to_string))
    };
    wait("brd v1 loaded", Duration::from_secs(300), || {
        Ok((version_ready(node)?.as_deref() == Some("v1")).then_some(()))
    })?;
    // A workload using the device: a Pod bound to the node.
    node.kubectl_stdin(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: brd-user, namespace: default, labels: {app: brd-user}}
spec:
  nodeName: kmm-guest
  terminationGracePeriodSeconds: 1
  containers: [{name: pause, image: "127.0.0.1:25000/pause:3.10"}]
"#,
    )?;
    wait("the workload Pod Running", Duration::from_secs(120), || {
        let p = json(node, &["get", "pod", "brd-user"])?;
        Ok((p["status"]["phase"] == "Running").then_some(()))
    })?;

    // v2 and its rollout, in one apply, as a user would.
    let rollout = r#"
apiVersion: rollout.kmm-rs.io/v1alpha1
kind: ModuleRollout
metadata: {name: brd, namespace: default}
spec:
  moduleName: brd
  maxUnavailable: 1
  eviction:
    podSelector: {matchLabels: {app: brd-user}}
    timeoutSeconds: 120
"#;
    // The node's states through a watch: `cordoned` can last less than a
    // poll period (CI once missed it with a 0.5 s poll).
    let node_watch = node.watch("node", RealNode::NAME)?;
    node.kubectl_stdin(
        &["apply", "-f", "-"],
        &format!("{}\n---{rollout}", versioned_brd("v2", 2)?),
    )?;
    let state_of = |n: &serde_json::Value| {
        n["metadata"]["labels"][STATE_LABEL]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let started = Instant::now();
    let mut last_state = String::new();
    let (mut pod_gone_at, mut v2_at) = (None, None);
    while started.elapsed() < Duration::from_secs(300) {
        let n = json(node, &["get", "node", RealNode::NAME])?;
        let state = state_of(&n);
        if state != last_state {
            say!(
                "vm_kubelet: rollout: node {} upgrade-state {state:?} at {:.1} s",
                RealNode::NAME,
                started.elapsed().as_secs_f64()
            );
            last_state.clone_from(&state);
        }
        let pod_gone = node
            .kubectl(&["get", "pod", "brd-user", "--ignore-not-found", "-o", "name"])?
            .trim()
            .is_empty();
        if pod_gone && pod_gone_at.is_none() {
            pod_gone_at = Some(started.elapsed());
        }
        if n["metadata"]["labels"][VERSION_READY] == "v2" && v2_at.is_none() {
            v2_at = Some(started.elapsed());
        }
        if state == "done" && v2_at.is_some() && n["spec"]["unschedulable"] != true {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The poll saw the end; give the watch the same write.
    let caught_up = Instant::now();
    let mut watched = node_watch.seen();
    while watched.last().map(state_of) != Some(last_state.clone())
        && caught_up.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(200));
        watched = node_watch.seen();
    }
    drop(node_watch);
    let mut states: Vec<String> = Vec::new();
    for state in watched.iter().map(state_of) {
        if states.last() != Some(&state) {
            states.push(state);
        }
    }
    let cordoned = watched.iter().any(|n| n["spec"]["unschedulable"] == true);
    let status = node.kubectl(&["get", "modulerollout", "brd", "-o", "yaml"])?;
    ensure!(
        states.last().map(String::as_str) == Some("done"),
        "the rollout did not finish: states {states:?}\n{status}"
    );
    ensure!(cordoned, "the node was never cordoned: {states:?}");
    let (Some(gone), Some(v2)) = (pod_gone_at, v2_at) else {
        bail!("workload Pod gone at {pod_gone_at:?}, v2 at {v2_at:?}: {states:?}");
    };
    ensure!(
        gone <= v2,
        "the workload was still there when v2 loaded ({gone:?} > {v2:?})"
    );
    for s in ["cordoned", "evicting", "upgrading", "done"] {
        ensure!(states.iter().any(|x| x == s), "no {s} in {states:?}");
    }
    let n = json(node, &["get", "node", RealNode::NAME])?;
    ensure!(n["spec"]["unschedulable"] != true, "left cordoned");
    let (_, rd_nr) = node.guest("cat /sys/module/brd/parameters/rd_nr")?;
    ensure!(
        rd_nr.trim() == "2",
        "brd v2 (rd_nr=2) not loaded: {rd_nr:?}"
    );
    say!(
        "vm_kubelet: rollout v1 -> v2: workload evicted at {:.1} s, v2 ready at {:.1} s, rd_nr={}, uncordoned; states {states:?}",
        gone.as_secs_f64(),
        v2.as_secs_f64(),
        rd_nr.trim()
    );
    node.kubectl(&["delete", "modulerollout", "brd"])?;
    node.kubectl(&["delete", "module", "brd", "--wait=true", "--timeout=120s"])?;
    Ok(())
}
