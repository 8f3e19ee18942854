//! The real `kmm-agent` binary against the real API server and the real
//! registry, with the simulated kernel (the VM tests prove real loading).
//! Each test uses its own namespace and its own Node names.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kmm_tests::agent::{AgentOptions, AgentProcess, metric_value};
use kmm_tests::cluster::{
    create_node, delete_module, delete_node_and_status, ensure_crds, node_module_status,
    set_node_label, wait_for,
};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::images::{
    auth_registry, push_corrupt_kmod, push_fake_kmod, push_fake_kmod_as, registry_addr,
};
use kmm_tests::module::ModuleBuilder;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

const KVER: &str = "6.1.0-90-sim-amd64";
const WAIT: Duration = Duration::from_secs(60);

struct Fixture {
    cp: &'static ControlPlane,
    client: Client,
    ns: kmm_tests::controlplane::TestNamespace,
    node: String,
    agent: AgentProcess,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(prefix: &str, labels: &[(&str, &str)]) -> Result<Self> {
        let cp = ControlPlane::shared().await?;
        ensure_crds(cp).await?;
        let client = cp.client();
        let ns = cp.temp_namespace(prefix).await?;
        let node = format!("{}-node", ns.name());
        // Agents of tests running in parallel watch every Module: each test's
        // Modules select only its own node.
        let mut labels = labels.to_vec();
        labels.push(("kmm-test/node", &node));
        create_node(&client, &node, &labels, KVER).await?;
        let dir = tempfile::tempdir()?;
        let agent = AgentProcess::start(&AgentOptions::new(
            cp,
            &node,
            KVER,
            dir.path().join("state"),
        ))?;
        agent.wait_ready(WAIT).await?;
        Ok(Self {
            cp,
            client,
            ns,
            node,
            agent,
            _dir: dir,
        })
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    fn image(&self, name: &str) -> String {
        format!("{}/{}/{name}:{KVER}", registry_addr(), self.ns())
    }

    async fn apply(&self, yaml: &str) -> Result<()> {
        kmm_tests::cluster::apply_yaml(self.cp, self.ns(), yaml)
    }

    async fn labels(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        Ok(nodes
            .get(&self.node)
            .await?
            .metadata
            .labels
            .unwrap_or_default())
    }

    fn ready_label(&self, name: &str) -> String {
        kmm_common::ready_label(self.ns(), name)
    }

    async fn wait_label(&self, key: &str, present: bool) -> Result<()> {
        let r = wait_for(WAIT, || async {
            Ok(self.labels().await?.contains_key(key) == present)
        })
        .await;
        r.map_err(|e| {
            anyhow::anyhow!(
                "label {key} present={present}: {e}\nagent log:\n{}",
                self.agent.log()
            )
        })
    }

    async fn status_of(&self, name: &str) -> Result<Option<kmm_common::NodeModuleStatus>> {
        node_module_status(&self.client, &self.node, self.ns(), name).await
    }

    async fn delete_module(&self, name: &str) -> Result<()> {
        delete_module(&self.client, self.ns(), name).await
    }

    async fn finish(self) -> Result<()> {
        delete_node_and_status(&self.client, &self.node).await;
        self.ns.cleanup().await
    }
}

/// `selector` is a flow map without braces (`k: v, ...`) or empty; the
/// node's own `kmm-test/node` label is always added.
/// A Module for the test's own node: kernel module `name`, `answer=42`, the
/// simulated kernels' mapping to `image` in the plain-HTTP test registry.
fn module(node: &str, name: &str, image: &str) -> ModuleBuilder {
    ModuleBuilder::new(name)
        .own_node(node)
        .parameters(&["answer=42"])
        .insecure_mapping("^.+-sim-amd64$", image)
}

#[tokio::test]
async fn module_loads_labels_node_reports_status_then_unloads_on_delete() -> Result<()> {
    let f = Fixture::new("agent-load", &[("kmm-test/role", "storage")]).await?;
    let digest = push_fake_kmod(
        &f.image("simmod"),
        KVER,
        &[("simmod", &[])],
        &[("sim/fw.bin", b"fw")],
    )
    .await?;
    // The image reference uses the variables, as users write it.
    let image = format!(
        "{}/${{MOD_NAMESPACE}}/${{MOD_NAME}}:${{KERNEL_FULL_VERSION}}",
        registry_addr()
    );
    let t = Instant::now();
    f.apply(
        &module(&f.node, "simmod", &image)
            .selector("kmm-test/role", "storage")
            .manifest(),
    )
    .await?;
    f.wait_label(&f.ready_label("simmod"), true).await?;
    println!("apply -> ready label: {:.1?}", t.elapsed());

    let st = f
        .status_of("simmod")
        .await?
        .expect("NodeModulesConfig status entry");
    assert_eq!(st.digest, digest);
    assert_eq!(st.kernel, KVER);
    assert_eq!(st.image, f.image("simmod"));
    assert!(st.last_error.is_none(), "{st:?}");
    let metrics = f.agent.metrics()?;
    assert_eq!(
        metric_value(
            &metrics,
            &format!(
                "kmm_agent_modules_loaded{{name=\"simmod\",namespace=\"{}\"}}",
                f.ns()
            )
        ),
        Some(1.0)
    );

    let t = Instant::now();
    f.delete_module("simmod").await?;
    f.wait_label(&f.ready_label("simmod"), false).await?;
    println!("delete -> label removed: {:.1?}", t.elapsed());
    wait_for(WAIT, || async {
        Ok(f.status_of("simmod").await?.is_none())
    })
    .await?;
    assert!(f.agent.log().contains("module unloaded"));
    // The image no loaded Module uses is removed from the cache.
    let unpacked = f.agent.state_dir.join("images/unpacked/sha256");
    wait_for(WAIT, || async {
        Ok(std::fs::read_dir(&unpacked)?.next().is_none())
    })
    .await?;
    // One event per load and unload, upstream's: on the Node (namespace
    // default, as for any Node event), upstream's text, `related` naming the
    // Module so its loads can be found from it, and the Node's uid (what
    // `kubectl describe node` looks events up by).
    let uid = Api::<Node>::all(f.client.clone())
        .get(&f.node)
        .await?
        .metadata
        .uid;
    let node_events: Api<Event> = Api::namespaced(f.client.clone(), "default");
    let on_node: Vec<(String, String)> = node_events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Node")
                    && r.name.as_deref() == Some(f.node.as_str())
                    && r.uid == uid
            }) && e.related.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Module")
                    && r.name.as_deref() == Some("simmod")
                    && r.namespace.as_deref() == Some(f.ns())
            })
        })
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect();
    let module = format!("{}/simmod", f.ns());
    for (reason, text) in [
        (
            "ModuleLoaded",
            format!("Module {module} loaded into the kernel"),
        ),
        (
            "ModuleUnloaded",
            format!("Module {module} unloaded from the kernel"),
        ),
    ] {
        assert!(
            on_node.iter().any(|(r, n)| r == reason && *n == text),
            "{reason} on the Node: {on_node:?}"
        );
    }
    f.finish().await
}

#[tokio::test]
async fn ineligible_nodes_get_nothing_and_the_agent_says_why() -> Result<()> {
    let f = Fixture::new("agent-inelig", &[("kmm-test/role", "storage")]).await?;
    push_fake_kmod(&f.image("gate"), KVER, &[("gate", &[])], &[]).await?;
    push_fake_kmod(&f.image("other"), KVER, &[("other", &[])], &[]).await?;
    // selector mismatch
    f.apply(
        &module(&f.node, "other", &f.image("other"))
            .selector("kmm-test/role", "gpu")
            .manifest(),
    )
    .await?;
    // version mismatch: the node has no version-module label
    let versioned = module(&f.node, "versioned", &f.image("other"))
        .version("1")
        .manifest();
    f.apply(&versioned).await?;
    // kernel mismatch
    let wrong_kernel = ModuleBuilder::new("wrongkernel")
        .own_node(&f.node)
        .insecure_mapping("^.+-arm64$", &f.image("other"))
        .manifest();
    f.apply(&wrong_kernel).await?;
    // A Module that does load: once it is ready, the pass has seen the others.
    f.apply(&module(&f.node, "gate", &f.image("gate")).manifest())
        .await?;
    f.wait_label(&f.ready_label("gate"), true).await?;
    let labels = f.labels().await?;
    for name in ["other", "versioned", "wrongkernel"] {
        assert!(
            !labels.contains_key(&f.ready_label(name)),
            "{name} must not load: {labels:?}"
        );
        assert!(f.status_of(name).await?.is_none());
    }
    let log = f.agent.log();
    assert!(
        log.contains("selector label kmm-test/role"),
        "log says why (selector):\n{log}"
    );
    assert!(
        log.contains("matches no kernelMapping"),
        "log says why (kernel):\n{log}"
    );
    assert!(
        log.contains("version-module"),
        "log says why (version):\n{log}"
    );
    f.finish().await
}

#[tokio::test]
async fn ordered_upgrade_keeps_the_labelled_version_then_follows_the_label_and_selector_change_unloads()
-> Result<()> {
    let f = Fixture::new("agent-upgrade", &[("kmm-test/role", "storage")]).await?;
    let v1 = format!("{}/{}/upg:v1", registry_addr(), f.ns());
    let v2 = format!("{}/{}/upg:v2", registry_addr(), f.ns());
    let d1 = push_fake_kmod(&v1, KVER, &[("upg", &[])], &[]).await?;
    let d2 = push_fake_kmod(&v2, KVER, &[("upg", &[]), ("upgdep", &[])], &[]).await?;
    assert_ne!(d1, d2);
    let version_label = kmm_common::version_module_label(f.ns(), "upg");
    let version_ready = kmm_common::version_ready_label(f.ns(), "upg");
    set_node_label(&f.client, &f.node, &version_label, Some("1")).await?;
    f.apply(
        &module(&f.node, "upg", &v1)
            .version("1")
            .selector("kmm-test/role", "storage")
            .manifest(),
    )
    .await?;
    f.wait_label(&f.ready_label("upg"), true).await?;
    assert_eq!(
        f.labels().await?.get(&version_ready).map(String::as_str),
        Some("1")
    );

    // The Module moves to version 2; the node still says 1: version 1 stays
    // loaded (upstream's ordered upgrade: the label decides, node by node).
    f.apply(
        &module(&f.node, "upg", &v2)
            .version("2")
            .selector("kmm-test/role", "storage")
            .manifest(),
    )
    .await?;
    f.agent.wait_passes(3, WAIT).await?;
    assert_eq!(
        f.labels().await?.get(&version_ready).map(String::as_str),
        Some("1")
    );
    assert_eq!(
        f.status_of("upg").await?.map(|s| s.digest),
        Some(d1.clone())
    );
    // The admin moves the node to 2: the new one replaces it.
    set_node_label(&f.client, &f.node, &version_label, Some("2")).await?;
    wait_for(WAIT, || async {
        Ok(f.labels().await?.get(&version_ready).map(String::as_str) == Some("2"))
    })
    .await?;
    assert!(f.labels().await?.contains_key(&f.ready_label("upg")));
    assert_eq!(f.status_of("upg").await?.map(|s| s.digest), Some(d2));

    // The node stops matching the selector: unloaded.
    set_node_label(&f.client, &f.node, "kmm-test/role", None).await?;
    f.wait_label(&f.ready_label("upg"), false).await?;
    assert!(!f.labels().await?.contains_key(&version_ready));
    f.finish().await
}

#[tokio::test]
async fn corrupt_or_missing_image_reports_an_error_and_loads_nothing() -> Result<()> {
    let f = Fixture::new("agent-corrupt", &[]).await?;
    push_corrupt_kmod(&f.image("broken")).await?;
    f.apply(&module(&f.node, "broken", &f.image("broken")).manifest())
        .await?;
    f.apply(&module(&f.node, "missing", &f.image("missing")).manifest())
        .await?;
    for name in ["broken", "missing"] {
        wait_for(WAIT, || async {
            Ok(f.status_of(name)
                .await?
                .and_then(|s| s.last_error)
                .is_some())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{name}: {e}\n{}", f.agent.log()))?;
        let st = f.status_of(name).await?.unwrap();
        let err = st.last_error.clone().unwrap();
        assert_eq!(err.reason, "ImagePullFailed", "{name}: {err:?}");
        assert!(
            st.config.is_none() && st.digest.is_empty(),
            "{name} must not be loaded: {st:?}"
        );
        println!("{name}: {}", err.message);
    }
    assert!(!f.labels().await?.contains_key(&f.ready_label("broken")));
    // Nothing of the corrupt image is left unpacked in the cache.
    let unpacked = f.agent.state_dir.join("images/unpacked/sha256");
    let left: Vec<_> = std::fs::read_dir(&unpacked)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "partial unpack left behind: {left:?}");

    // A modprobe flag the agent refuses (admission would refuse it too; no webhook here):
    // refused with a reason naming the argument, not ignored.
    push_fake_kmod(&f.image("withargs"), KVER, &[("withargs", &[])], &[]).await?;
    let yaml = module(&f.node, "withargs", &f.image("withargs"))
        .merge(json!({"spec": {"moduleLoader": {"container": {"modprobe": {
            "parameters": null,
            "args": {"load": ["-v", "--force"]},
        }}}}}))
        .manifest();
    f.apply(&yaml).await?;
    wait_for(WAIT, || async {
        Ok(f.status_of("withargs")
            .await?
            .and_then(|s| s.last_error)
            .is_some())
    })
    .await?;
    let err = f
        .status_of("withargs")
        .await?
        .and_then(|s| s.last_error)
        .unwrap();
    assert_eq!(err.reason, "InvalidModuleSpec", "{err:?}");
    assert!(
        err.message
            .contains("modprobe.args.load[1]: --force is not supported"),
        "{}",
        err.message
    );
    f.finish().await
}

/// A mapping with `build` whose image is not in the registry yet: the node
/// reports that it waits (reason WaitingForImage, no Warning event, no
/// failure counted) and loads as soon as the image appears.
#[tokio::test]
async fn a_node_waits_for_an_image_built_in_cluster_then_loads_it() -> Result<()> {
    let f = Fixture::new("agent-wait-build", &[]).await?;
    let image = f.image("built");
    let yaml = ModuleBuilder::new("built")
        .own_node(&f.node)
        .parameters(&["answer=42"])
        .push_mapping(json!({
            "regexp": "^.+-sim-amd64$",
            "containerImage": image,
            "registryTLS": {"insecure": true},
            "build": {"dockerfileConfigMap": {"name": "built-dockerfile"}},
        }))
        .manifest();
    assert!(yaml.contains("dockerfileConfigMap"), "{yaml}");
    f.apply(&yaml).await?;
    wait_for(WAIT, || async {
        Ok(f.status_of("built")
            .await?
            .and_then(|s| s.last_error)
            .is_some())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", f.agent.log()))?;
    let err = f
        .status_of("built")
        .await?
        .and_then(|s| s.last_error)
        .unwrap();
    assert_eq!(err.reason, kmm_common::REASON_WAITING_FOR_IMAGE, "{err:?}");
    assert!(err.message.contains(&image), "{}", err.message);
    let metrics = f.agent.metrics()?;
    assert!(
        !metrics.contains("kmm_agent_failures_total{reason=\"WaitingForImage\"}"),
        "a wait is not a failure:\n{metrics}"
    );
    // Its state and last error say it waits.
    let ns = f.ns();
    for series in [
        format!(
            r#"kmm_agent_module_state{{kernel="{KVER}",name="built",namespace="{ns}",state="waiting"}} 1"#
        ),
        format!(
            r#"kmm_agent_module_last_error{{name="built",namespace="{ns}",reason="WaitingForImage"}} 1"#
        ),
    ] {
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
    let events: Api<Event> = Api::namespaced(f.client.clone(), f.ns());
    let warnings: Vec<_> = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| e.reason.unwrap_or_default())
        .collect();
    assert!(
        warnings.is_empty(),
        "no warning while waiting: {warnings:?}"
    );

    // What the build Job would push: the node picks it up by itself.
    push_fake_kmod(&image, KVER, &[("built", &[])], &[]).await?;
    f.wait_label(&f.ready_label("built"), true).await?;
    // The wait is cleared by the worker right after its load; the next pass
    // (at once) writes the status without it.
    wait_for(WAIT, || async {
        Ok(f.status_of("built")
            .await?
            .is_some_and(|st| st.last_error.is_none() && !st.digest.is_empty()))
    })
    .await?;
    f.delete_module("built").await?;
    f.wait_label(&f.ready_label("built"), false).await?;
    f.finish().await
}

#[tokio::test]
async fn pull_policy_always_redownloads_nothing_for_an_unchanged_digest_and_reloads_a_new_one()
-> Result<()> {
    let f = Fixture::new("agent-always", &[]).await?;
    let image = f.image("alw");
    let d1 = push_fake_kmod(&image, KVER, &[("alw", &[])], &[]).await?;
    f.apply(
        &module(&f.node, "alw", &image)
            .merge(json!({"spec": {"moduleLoader": {"container": {"imagePullPolicy": "Always"}}}}))
            .manifest(),
    )
    .await?;
    f.wait_label(&f.ready_label("alw"), true).await?;
    let bytes = |m: &str| metric_value(m, "kmm_agent_pulled_bytes_total").unwrap_or(-1.0);
    let after_first = bytes(&f.agent.metrics()?);
    assert!(after_first > 0.0);
    // Several passes check the digest; none downloads a blob.
    f.agent.wait_passes(3, WAIT).await?;
    assert_eq!(
        bytes(&f.agent.metrics()?),
        after_first,
        "unchanged digest must download nothing"
    );

    let d2 = push_fake_kmod(&image, KVER, &[("alw", &[]), ("alwdep", &[])], &[]).await?;
    assert_ne!(d1, d2);
    wait_for(WAIT, || async {
        Ok(f.status_of("alw").await?.map(|s| s.digest) == Some(d2.clone()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("new digest not picked up: {e}\n{}", f.agent.log()))?;
    assert!(bytes(&f.agent.metrics()?) > after_first);
    f.finish().await
}

#[tokio::test]
async fn agent_killed_and_restarted_neither_double_loads_nor_forgets() -> Result<()> {
    let mut f = Fixture::new("agent-restart", &[]).await?;
    push_fake_kmod(&f.image("keep"), KVER, &[("keep", &[])], &[]).await?;
    f.apply(&module(&f.node, "keep", &f.image("keep")).manifest())
        .await?;
    f.wait_label(&f.ready_label("keep"), true).await?;
    let loads_before = metric_value(&f.agent.metrics()?, "kmm_agent_load_duration_seconds_count");
    assert_eq!(loads_before, Some(1.0));

    // SIGKILL, then a new process with the same state dir (the simulated kernel's
    // module list lives there too, as a real kernel outlives the agent).
    f.agent.kill();
    let opts = AgentOptions {
        node: f.node.clone(),
        kernel_release: KVER.into(),
        state_dir: f.agent.state_dir.clone(),
        kubeconfig: f.cp.kubeconfig_path().to_path_buf(),
        resync_seconds: 2,
    };
    f.agent = AgentProcess::start(&opts)?;
    f.agent.wait_ready(WAIT).await?;
    f.agent.wait_passes(2, WAIT).await?;
    let m = f.agent.metrics()?;
    assert_eq!(
        metric_value(&m, "kmm_agent_load_duration_seconds_count"),
        Some(0.0),
        "no second load:\n{}",
        f.agent.log()
    );
    assert_eq!(
        metric_value(
            &m,
            &format!(
                "kmm_agent_modules_loaded{{name=\"keep\",namespace=\"{}\"}}",
                f.ns()
            )
        ),
        Some(1.0),
        "the restarted agent remembers the module"
    );
    // And it still unloads it when the Module goes.
    f.delete_module("keep").await?;
    f.wait_label(&f.ready_label("keep"), false).await?;
    f.finish().await
}

fn docker_config_secret(name: &str, registry: &str, user: &str, password: &str) -> Result<Secret> {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({ "auths": { registry: { "auth": auth } } }).to_string();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": name },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": { ".dockerconfigjson": config },
    }))?)
}

#[tokio::test]
async fn image_repo_secret_pulls_from_an_authenticated_registry_and_a_wrong_one_is_reported()
-> Result<()> {
    let f = Fixture::new("agent-auth", &[]).await?;
    let (registry, user, password) = auth_registry()?;
    let image = |name: &str| format!("{registry}/{}/{name}:{KVER}", f.ns());
    let auth = oci_client::secrets::RegistryAuth::Basic(user.clone(), password.clone());
    for name in ["authmod", "denied"] {
        push_fake_kmod_as(&image(name), KVER, &[(name, &[])], &[], auth.clone()).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(f.client.clone(), f.ns());
    secrets
        .create(
            &PostParams::default(),
            &docker_config_secret("good", &registry, &user, &password)?,
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &docker_config_secret("bad", &registry, &user, "wrong")?,
        )
        .await?;
    let with_secret = |name: &str, secret: &str| {
        module(&f.node, name, &image(name))
            .image_repo_secret(secret)
            .manifest()
    };
    f.apply(&with_secret("authmod", "good")).await?;
    f.wait_label(&f.ready_label("authmod"), true).await?;
    f.apply(&with_secret("denied", "bad")).await?;
    wait_for(WAIT, || async {
        Ok(f.status_of("denied")
            .await?
            .and_then(|s| s.last_error)
            .is_some())
    })
    .await?;
    let err = f
        .status_of("denied")
        .await?
        .and_then(|s| s.last_error)
        .unwrap();
    assert_eq!(err.reason, "ImagePullFailed");
    assert!(err.message.contains("unauthorized"), "{}", err.message);
    f.finish().await
}

/// The simulated kernel as the agent persisted it under `state_dir` (the
/// agent's own reader): `(name, refcount, holders)`, sorted by name.
fn sim_kernel_modules(state_dir: &std::path::Path) -> Result<Vec<(String, i64, Vec<String>)>> {
    use kmm_agent::kernel::Kernel as _;
    let k = kmm_agent::sim_persist::PersistentSimulatedKernel::open(
        &state_dir.join("simulated-kernel.json"),
    )?;
    let mut mods: Vec<_> = k
        .loaded_modules()?
        .into_iter()
        .map(|m| (m.name, m.refcount, m.holders))
        .collect();
    mods.sort();
    Ok(mods)
}

#[tokio::test]
async fn agent_killed_mid_load_rolls_back_and_loads_each_module_once() -> Result<()> {
    let mut f = Fixture::new("agent-midload", &[]).await?;
    let modules: &[(&str, &[&str])] = &[("kmma", &[]), ("kmmb", &[]), ("kmmc", &[])];
    push_fake_kmod(&f.image("kmma"), KVER, modules, &[]).await?;
    let state_dir = f.agent.state_dir.clone();
    let opts = AgentOptions {
        node: f.node.clone(),
        kernel_release: KVER.into(),
        state_dir: state_dir.clone(),
        kubeconfig: f.cp.kubeconfig_path().to_path_buf(),
        resync_seconds: 2,
    };
    // The same node, now with slow inserts: a window to kill it between two.
    f.agent.kill();
    f.agent = AgentProcess::start_with_args(&opts, &["--sim-load-delay-ms", "1500"])?;
    f.agent.wait_ready(WAIT).await?;

    // [kmma, kmmb, kmmc]: kmmc is inserted first, kmma last.
    let yaml = module(&f.node, "kmma", &f.image("kmma"))
        .loading_order(&["kmma", "kmmb", "kmmc"])
        .manifest();
    let applied = Instant::now();
    f.apply(&yaml).await?;
    let deadline = applied + WAIT;
    let first = loop {
        let mods = sim_kernel_modules(&state_dir)?;
        if !mods.is_empty() {
            break mods;
        }
        assert!(
            Instant::now() < deadline,
            "no insert within {WAIT:?}; log:\n{}",
            f.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    f.agent.kill();
    let killed_after = applied.elapsed();
    let zero = |name: &str| (name.to_string(), 0, Vec::<String>::new());
    assert_eq!(first, vec![zero("kmmc")], "the first of three inserts only");
    // Nothing moved after the kill, and the intent record is there.
    assert_eq!(sim_kernel_modules(&state_dir)?, vec![zero("kmmc")]);
    let key = kmm_agent::state::ModuleKey::new(f.ns(), "kmma");
    let state = kmm_agent::state::StateFile::in_dir(&state_dir).load()?;
    let loading = state.loading.get(&key).expect("a loading record");
    assert_eq!(loading.load_order, ["kmmc", "kmmb", "kmma"]);
    assert!(loading.already_loaded.is_empty(), "{loading:?}");
    assert_eq!(loading.kernel, KVER);
    assert!(!state.modules.contains_key(&key), "not recorded as loaded");

    // Restart on the same state dir, inserts at full speed.
    let first_log_len = f.agent.log().len();
    let restarted = Instant::now();
    f.agent = AgentProcess::start(&opts)?;
    f.agent.wait_ready(WAIT).await?;
    f.wait_label(&f.ready_label("kmma"), true).await?;
    let ready_after = restarted.elapsed();
    let st = f
        .status_of("kmma")
        .await?
        .expect("NodeModulesConfig status entry");
    assert!(st.last_error.is_none(), "{st:?}");
    assert_eq!(st.kernel, KVER);
    assert_eq!(st.image, f.image("kmma"));
    // Passes later nothing was loaded again.
    f.agent.wait_passes(2, WAIT).await?;
    assert_eq!(
        sim_kernel_modules(&state_dir)?,
        vec![zero("kmma"), zero("kmmb"), zero("kmmc")]
    );
    let log = f.agent.log()[first_log_len..].to_string();
    let rollback: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rolled back loads interrupted by a restart"))
        .collect();
    assert_eq!(rollback.len(), 1, "second run's log:\n{log}");
    assert!(
        rollback[0].contains(r#"removed=["kmmc"]"#),
        "{}",
        rollback[0]
    );
    let loaded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("module loaded"))
        .collect();
    assert_eq!(loaded.len(), 1, "one load in the second run:\n{log}");
    assert!(
        loaded[0].contains(r#"inserted=["kmmc", "kmmb", "kmma"]"#),
        "the retry inserted all three, kmmc again after its rollback: {}",
        loaded[0]
    );
    assert_eq!(
        metric_value(&f.agent.metrics()?, "kmm_agent_load_duration_seconds_count"),
        Some(1.0)
    );
    let state = kmm_agent::state::StateFile::in_dir(&state_dir).load()?;
    assert!(state.loading.is_empty(), "{:?}", state.loading);
    assert_eq!(
        state.modules.get(&key).map(|r| r.inserted.clone()),
        Some(vec!["kmmc".into(), "kmmb".into(), "kmma".into()])
    );
    eprintln!(
        "first insert seen and agent killed {killed_after:?} after apply; ready label {ready_after:?} after restart; {}",
        rollback[0]
    );

    f.delete_module("kmma").await?;
    f.wait_label(&f.ready_label("kmma"), false).await?;
    wait_for(WAIT, || async { Ok(f.status_of("kmma").await?.is_none()) }).await?;
    assert_eq!(sim_kernel_modules(&state_dir)?, vec![]);
    let state = kmm_agent::state::StateFile::in_dir(&state_dir).load()?;
    assert!(
        state.modules.is_empty() && state.loading.is_empty(),
        "{state:?}"
    );
    f.finish().await
}

/// A registry that answers every request with headers and then one body byte
/// every few seconds: no per-read timeout ever fires.
async fn trickling_registry() -> Result<(String, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    if conn.write_all(b" ").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

#[tokio::test]
async fn a_registry_that_trickles_blocks_neither_other_loads_nor_unloads() -> Result<()> {
    let f = Fixture::new("agent-trickle", &[]).await?;
    push_fake_kmod(&f.image("keep"), KVER, &[("keep", &[])], &[]).await?;
    push_fake_kmod(&f.image("later"), KVER, &[("later", &[])], &[]).await?;
    f.apply(&module(&f.node, "keep", &f.image("keep")).manifest())
        .await?;
    f.wait_label(&f.ready_label("keep"), true).await?;

    let (slow, server) = trickling_registry().await?;
    let stuck = format!("{slow}/{}/stuck:{KVER}", f.ns());
    f.apply(&module(&f.node, "stuck", &stuck).manifest())
        .await?;
    // Let the stuck pull start, then ask for a load and an unload.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    f.apply(&module(&f.node, "later", &f.image("later")).manifest())
        .await?;
    f.delete_module("keep").await?;
    f.wait_label(&f.ready_label("later"), true).await?;
    f.wait_label(&f.ready_label("keep"), false).await?;
    println!("load and unload beside a stuck pull: {:.1?}", t.elapsed());
    assert!(!f.labels().await?.contains_key(&f.ready_label("stuck")));
    // The agent stays live while its pull hangs.
    let health = f.agent.health()?;
    assert!(health.contains("ok"), "{health}");

    f.delete_module("stuck").await?;
    server.abort();
    f.finish().await
}

/// Upstream #1328 (and #1271): cordoning and draining a node (the
/// `unschedulable` taint, NoExecute taints of a node going away) never unloads
/// a loaded module: the driver under a device plugin or a filesystem stays until
/// the Module stops applying. New loads keep upstream's rule: only Modules that
/// tolerate the taints load onto the node.
#[tokio::test]
async fn upstream_1328_cordon_and_drain_taints_never_unload_the_module() -> Result<()> {
    let f = Fixture::new("agent-cordon", &[]).await?;
    push_fake_kmod(&f.image("held"), KVER, &[("held", &[])], &[]).await?;
    f.apply(&module(&f.node, "held", &f.image("held")).manifest())
        .await?;
    f.wait_label(&f.ready_label("held"), true).await?;
    let nodes: Api<Node> = Api::all(f.client.clone());
    let patch = serde_json::json!({"spec": {
        "unschedulable": true,
        "taints": [
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
        ]
    }});
    nodes
        .patch(
            &f.node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    // The agent resyncs every 2 s: several passes see the taints.
    let passes = metric_value(&f.agent.metrics()?, "kmm_agent_reconciles_total").unwrap_or(0.0);
    wait_for(WAIT, || async {
        let now = metric_value(&f.agent.metrics()?, "kmm_agent_reconciles_total").unwrap_or(0.0);
        Ok(now >= passes + 3.0)
    })
    .await?;
    assert!(f.labels().await?.contains_key(&f.ready_label("held")));
    assert!(
        !f.agent.log().contains("module unloaded"),
        "{}",
        f.agent.log()
    );

    // Upstream's rule holds for new loads: a Module that does not tolerate
    // the taints waits (the agent says which taint), one that does loads.
    push_fake_kmod(&f.image("fresh"), KVER, &[("fresh", &[])], &[]).await?;
    push_fake_kmod(&f.image("tolerant"), KVER, &[("tolerant", &[])], &[]).await?;
    f.apply(&module(&f.node, "fresh", &f.image("fresh")).manifest())
        .await?;
    f.apply(
        &module(&f.node, "tolerant", &f.image("tolerant"))
            .tolerations(json!([{"operator": "Exists"}]))
            .manifest(),
    )
    .await?;
    f.wait_label(&f.ready_label("tolerant"), true).await?;
    wait_for(WAIT, || async {
        Ok(f.agent
            .log()
            .contains("node taint node.kubernetes.io/unschedulable:NoSchedule is not tolerated"))
    })
    .await?;
    assert!(!f.labels().await?.contains_key(&f.ready_label("fresh")));
    assert_eq!(f.status_of("fresh").await?, None, "nothing of it here");

    // Uncordoned: the waiting Module loads.
    let patch = serde_json::json!({"spec": {"unschedulable": null, "taints": null}});
    nodes
        .patch(
            &f.node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    f.wait_label(&f.ready_label("fresh"), true).await?;
    for name in ["held", "fresh", "tolerant"] {
        f.delete_module(name).await?;
        f.wait_label(&f.ready_label(name), false).await?;
    }
    f.finish().await
}

/// The Modules of the SIGKILL test and the kernel modules each needs.
const CHAOS: &[(&str, &[&str])] = &[("chaosa", &["chaosa", "chaosdep"]), ("chaosb", &["chaosb"])];

fn chaos_yaml(node: &str, image: &str, name: &str, answer: u32) -> String {
    let answer = format!("answer={answer}");
    let m = module(node, name, image).parameters(&[&answer]);
    if name == "chaosa" {
        m.loading_order(&["chaosa", "chaosdep"]).manifest()
    } else {
        m.manifest()
    }
}

/// The real agent SIGKILLed at 20 pseudo-random points across loads, unloads and
/// replaces (every simulated insert and remove takes 300 ms): after each restart
/// the kernel holds exactly the modules of the wanted Modules, each Module's
/// label matches, the records match, and nothing leaked.
#[tokio::test]
async fn agent_sigkilled_at_random_points_leaves_kernel_and_records_consistent() -> Result<()> {
    let mut f = Fixture::new("agent-chaos", &[]).await?;
    let image = f.image("chaos");
    push_fake_kmod(
        &image,
        KVER,
        &[("chaosa", &[]), ("chaosdep", &[]), ("chaosb", &[])],
        &[],
    )
    .await?;
    let state_dir = f.agent.state_dir.clone();
    let opts = AgentOptions {
        node: f.node.clone(),
        kernel_release: KVER.into(),
        state_dir: state_dir.clone(),
        kubeconfig: f.cp.kubeconfig_path().to_path_buf(),
        resync_seconds: 2,
    };
    let mut wanted: std::collections::BTreeMap<&str, u32> = Default::default();
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    for round in 0..20u32 {
        f.agent.kill();
        f.agent = AgentProcess::start_with_args(
            &opts,
            &["--sim-load-delay-ms", "300", "--sim-unload-delay-ms", "300"],
        )?;
        f.agent.wait_ready(WAIT).await?;
        let (name, _) = CHAOS[usize::try_from(next(2))?];
        let action = if wanted.contains_key(name) {
            // unload, or replace through a new parameter
            if next(2) == 0 { "unload" } else { "replace" }
        } else {
            "load"
        };
        match action {
            "unload" => {
                f.delete_module(name).await?;
                wanted.remove(name);
            }
            _ => {
                let answer = round + 100;
                f.apply(&chaos_yaml(&f.node, &image, name, answer)).await?;
                wanted.insert(name, answer);
            }
        }
        let kill_after = Duration::from_millis(next(1500));
        tokio::time::sleep(kill_after).await;
        f.agent.kill();
        println!("round {round}: {action} {name}, killed after {kill_after:?}");

        f.agent = AgentProcess::start(&opts)?;
        f.agent.wait_ready(WAIT).await?;
        for (name, _) in CHAOS {
            f.wait_label(&f.ready_label(name), wanted.contains_key(name))
                .await?;
        }
        let mut expected: Vec<String> = CHAOS
            .iter()
            .filter(|(n, _)| wanted.contains_key(n))
            .flat_map(|(_, mods)| mods.iter().map(|m| m.to_string()))
            .collect();
        expected.sort();
        // The restarted agent converges: kernel, records and specs agree.
        let converged = || async {
            let loaded: Vec<String> = sim_kernel_modules(&state_dir)?
                .into_iter()
                .map(|(n, _, _)| n)
                .collect();
            let state = kmm_agent::state::StateFile::in_dir(&state_dir).load()?;
            let records: Vec<(String, Vec<String>)> = state
                .modules
                .iter()
                .map(|(k, r)| (k.name.clone(), r.parameters.clone()))
                .collect();
            let want: Vec<(String, Vec<String>)> = wanted
                .iter()
                .map(|(n, a)| (n.to_string(), vec![format!("answer={a}")]))
                .collect();
            Ok(loaded == expected
                && records == want
                && state.loading.is_empty()
                && state.unloading.is_empty())
        };
        wait_for(WAIT, converged).await.map_err(|e| {
            anyhow::anyhow!(
                "round {round}: kernel {:?} (want {expected:?}), state {:?}: {e}\nlog:\n{}",
                sim_kernel_modules(&state_dir),
                kmm_agent::state::StateFile::in_dir(&state_dir).load(),
                f.agent.log()
            )
        })?;
    }
    for name in wanted.keys() {
        f.delete_module(name).await?;
    }
    for (name, _) in CHAOS {
        f.wait_label(&f.ready_label(name), false).await?;
    }
    f.finish().await
}
