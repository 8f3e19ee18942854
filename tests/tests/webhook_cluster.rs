//! The controller's admission webhooks called by the REAL kube-apiserver over
//! HTTPS at 127.0.0.1: the controller (scoped to the test namespace) generates
//! its CA, serves on a free port and registers a ValidatingWebhookConfiguration
//! of its own (`--webhook-url`), restricted by a namespaceSelector to a label
//! only this test's namespace carries, so parallel tests are not affected.
//! The configuration is deleted at the end and on drop.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kmm_common::{Module, PreflightValidation};
use kmm_tests::cluster::{crd_namespace, wait_for};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::module::ModuleBuilder;
use kmm_tests::webhook::{NamespaceWebhook, SELECTOR_KEY};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

const WAIT: Duration = Duration::from_secs(60);

struct Fixture {
    cp: &'static ControlPlane,
    client: Client,
    ns: Option<TestNamespace>,
    ns_name: String,
    config: ValidatingWebhookConfiguration,
    webhook: NamespaceWebhook,
}

impl Fixture {
    async fn new(prefix: &str) -> Result<Self> {
        let (cp, client, ns) = crd_namespace(prefix).await?;
        let ns_name = ns.name().to_string();
        let webhook = NamespaceWebhook::start(cp, &client, &ns_name, WAIT).await?;
        let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        let config = configs.get(&webhook.config_name).await.with_context(|| {
            format!(
                "no webhook configuration; log:\n{}",
                webhook.controller.log()
            )
        })?;
        Ok(Self {
            cp,
            client,
            ns: Some(ns),
            ns_name,
            config,
            webhook,
        })
    }

    fn modules(&self) -> Api<Module> {
        Api::namespaced(self.client.clone(), &self.ns_name)
    }

    /// Waits until the API server calls the webhook: a dry-run create of an
    /// invalid Module is refused by it (the API server loads new
    /// configurations asynchronously). Returns the refusal.
    async fn wait_webhook_active(&self) -> Result<String> {
        let refusal = std::sync::Mutex::new(String::new());
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        wait_for(WAIT, || async {
            match self.modules().create(&dry, &module("probe", "[")).await {
                Err(kube::Error::Api(s)) => {
                    *refusal.lock().unwrap() = s.message;
                    Ok(true)
                }
                Err(e) => Err(e.into()),
                Ok(_) => Ok(false),
            }
        })
        .await
        .with_context(|| {
            format!(
                "webhook never called; log:\n{}",
                self.webhook.controller.log()
            )
        })?;
        Ok(refusal.into_inner().unwrap())
    }

    async fn finish(mut self) -> Result<()> {
        for m in self.modules().list(&Default::default()).await? {
            let patch = serde_json::json!({ "metadata": { "finalizers": null } });
            let _ = self
                .modules()
                .patch(
                    &m.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
            let _ = self
                .modules()
                .delete(&m.name_any(), &DeleteParams::default())
                .await;
        }
        let configs: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        match configs
            .delete(&self.config.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(ns) = self.ns.take() {
            ns.cleanup().await?;
        }
        Ok(())
    }
}

fn module(name: &str, regexp: &str) -> Module {
    ModuleBuilder::new(name)
        .selector("kmm-test/webhook-none", "yes")
        .mapping(regexp, &format!("registry.example/kmm/{name}:1"))
        .module()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_regexp_is_refused_and_valid_module_admitted() -> Result<()> {
    let f = Fixture::new("webhook-module").await?;
    let cfg = &f.config;
    for wh in cfg.webhooks.as_ref().unwrap() {
        assert!(
            wh.client_config.ca_bundle.is_some(),
            "{}: caBundle set",
            wh.name
        );
        assert_eq!(wh.side_effects, "None");
    }

    let refusal = f.wait_webhook_active().await?;
    // The regexp crate's own error, through the API server.
    assert!(
        refusal.contains("vmodule.kmm.sigs.x-k8s.io")
            && refusal.contains("spec.moduleLoader.container.kernelMappings[0].regexp")
            && refusal.contains("invalid regexp '['")
            && refusal.contains("unclosed character class"),
        "{refusal}"
    );
    // A real (not dry-run) create is refused too, and nothing is stored.
    let err = f
        .modules()
        .create(&PostParams::default(), &module("bad", "["))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (403, "Forbidden"),
        "{status:?}"
    );
    assert!(status.message.contains("invalid regexp"), "{status:?}");
    assert!(f.modules().get_opt("bad").await?.is_none());

    // A valid Module is admitted.
    f.modules()
        .create(&PostParams::default(), &module("good", "^.+-amd64$"))
        .await
        .with_context(|| format!("valid Module refused; log:\n{}", f.webhook.controller.log()))?;

    // UPDATE goes through validate_module_update: breaking the regexp is refused.
    let patch = serde_json::json!({ "spec": { "moduleLoader": { "container": {
        "kernelMappings": [{"regexp": "(", "containerImage": "registry.example/kmm/good:1"}]
    }}}});
    let err = f
        .modules()
        .patch("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid regexp '('"), "{err}");
    let stored = f.modules().get("good").await?;
    let mapping = &stored
        .spec
        .module_loader
        .as_ref()
        .unwrap()
        .container
        .kernel_mappings[0];
    assert_eq!(mapping.regexp, "^.+-amd64$");

    // A clean shutdown removes the configuration it registered (no dead webhook left behind).
    let mut f = f;
    f.webhook.controller.terminate()?;
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(f.client.clone());
    assert!(
        configs.get_opt(&f.config.name_any()).await?.is_none(),
        "configuration left after SIGTERM; log:\n{}",
        f.webhook.controller.log()
    );
    f.finish().await
}

/// A PreflightValidation labelled for this test's configuration (PreflightValidations are
/// cluster-scoped: URL mode selects them by their own labels).
fn preflight(f: &Fixture, name: &str, kernel: &str) -> PreflightValidation {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta2", "kind": "PreflightValidation",
        "metadata": {"name": name, "labels": {SELECTOR_KEY: &f.ns_name}},
        "spec": {"kernelVersion": kernel},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_whose_kernel_version_is_not_one_is_refused_like_upstream() -> Result<()> {
    let f = Fixture::new("webhook-pfv").await?;
    f.wait_webhook_active().await?;
    let api: Api<PreflightValidation> = Api::all(f.client.clone());
    let bad = format!("{}-bad", f.ns_name);
    let err = api
        .create(&PostParams::default(), &preflight(&f, &bad, "6.1"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status
            .message
            .contains("vpreflightvalidation.kmm.sigs.x-k8s.io")
            && status.message.contains("invalid kernelVersion 6.1"),
        "{status:?}"
    );
    assert!(api.get_opt(&bad).await?.is_none());

    let good = format!("{}-good", f.ns_name);
    api.create(
        &PostParams::default(),
        &preflight(&f, &good, "6.1.0-31-amd64"),
    )
    .await
    .with_context(|| {
        format!(
            "valid PreflightValidation refused; log:\n{}",
            f.webhook.controller.log()
        )
    })?;
    // UPDATE is checked alike.
    let patch = serde_json::json!({"spec": {"kernelVersion": ""}});
    let err = api
        .patch(&good, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.kernelVersion: cannot be empty"),
        "{err}"
    );
    api.delete(&good, &DeleteParams::default()).await?;
    f.finish().await
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_708_namespace_holding_modules_cannot_be_deleted_until_they_are_gone() -> Result<()>
{
    let mut f = Fixture::new("webhook-ns").await?;
    f.wait_webhook_active().await?;
    for name in ["mod-b", "mod-a"] {
        f.modules()
            .create(&PostParams::default(), &module(name, "^.+$"))
            .await?;
    }
    let namespaces: Api<Namespace> = Api::all(f.client.clone());
    let ns = f.ns_name.clone();

    let err = namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect_err("namespace deletion must be refused while it holds Modules");
    let kube::Error::Api(status) = &err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status.message.contains(&format!(
            "namespace {ns} holds Modules mod-a, mod-b: delete them first so kmm-agent can unload their kernel modules"
        )),
        "{}",
        status.message
    );
    // The refusal is real: the namespace is not terminating.
    let live = namespaces.get(&ns).await?;
    assert!(live.metadata.deletion_timestamp.is_none());
    assert_eq!(live.status.and_then(|s| s.phase).as_deref(), Some("Active"));

    // Delete the Modules; the controller releases its finalizer (no node has them loaded).
    for name in ["mod-a", "mod-b"] {
        f.modules().delete(name, &DeleteParams::default()).await?;
    }
    wait_for(WAIT, || async {
        Ok(f.modules()
            .list(&Default::default())
            .await?
            .items
            .is_empty())
    })
    .await
    .with_context(|| format!("Modules not released; log:\n{}", f.webhook.controller.log()))?;

    // Now the same webhook admits the deletion.
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .with_context(|| {
            format!(
                "namespace deletion refused; log:\n{}",
                f.webhook.controller.log()
            )
        })?;
    assert!(
        f.webhook
            .controller
            .log()
            .contains("refusing namespace deletion"),
        "the refusal came from this webhook"
    );
    let live = namespaces.get_opt(&ns).await?;
    assert!(live.is_none_or(|n| n.metadata.deletion_timestamp.is_some()));
    // Already deleted: cleanup tolerates that.
    f.ns.take().unwrap().cleanup().await?;
    f.finish().await
}

/// A Module whose `modprobe.rawArgs` hold `load` and `unload`.
fn raw_args_module(name: &str, load: &[&str], unload: &[&str]) -> Module {
    ModuleBuilder::new(name)
        .selector("kmm-test/webhook-none", "yes")
        .mapping("^.+$", "registry.example/kmm/x:1")
        .merge(
            serde_json::json!({"spec": {"moduleLoader": {"container": {"modprobe": {
                "moduleName": null,
                "rawArgs": {"load": load, "unload": unload},
            }}}}}),
        )
        .module()
        .unwrap()
}

/// CEL cannot read a modprobe command line: the webhook refuses a flag the agent would
/// refuse, naming the argument, and admits the flags the agent maps.
#[tokio::test(flavor = "multi_thread")]
async fn modprobe_flags_the_agent_refuses_are_refused_naming_the_argument() -> Result<()> {
    let f = Fixture::new("webhook-args").await?;
    f.wait_webhook_active().await?;
    let forced = raw_args_module("forced", &["-v", "--force", "brd"], &["-r", "brd"]);
    let err = f
        .modules()
        .create(&PostParams::default(), &forced)
        .await
        .expect_err("--force must be refused");
    let kube::Error::Api(status) = &err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status.message.contains(
            "spec.moduleLoader.container.modprobe.rawArgs.load[1]: --force is not supported"
        ),
        "{}",
        status.message
    );
    let mapped = raw_args_module(
        "mapped",
        &[
            "-va",
            "--first-time",
            "--dirname=/tmp/opt",
            "brd",
            "null_blk",
        ],
        &["-rv", "brd", "null_blk"],
    );
    f.modules()
        .create(&PostParams::default(), &mapped)
        .await
        .with_context(|| format!("mapped flags refused; log:\n{}", f.webhook.controller.log()))?;
    f.finish().await
}

/// A Module `name` loading kernel module `module_name`, as YAML for kubectl.
fn module_yaml(name: &str, module_name: &str) -> String {
    ModuleBuilder::new(name)
        .module_name(module_name)
        .selector("kmm-test/webhook-none", "yes")
        .mapping("^.+$", "registry.example/kmm/x:1")
        .manifest()
}

/// The namespace is invisible to CEL: only the webhook sees that `<ns>.<name>.ready` is one
/// character too long, and says which fields to shorten.
#[tokio::test(flavor = "multi_thread")]
async fn module_whose_ready_label_cannot_exist_is_refused_naming_the_fields() -> Result<()> {
    let f = Fixture::new("webhook-lbl").await?;
    f.wait_webhook_active().await?;
    // kmm.node.kubernetes.io/<ns>.<name>.ready: the part after '/' is ns + 1 + name + 6.
    let fits = 63 - 7 - f.ns_name.len();
    assert!(fits < 55, "CEL alone must accept the name");
    let long = "m".repeat(fits + 1);
    let err = f
        .modules()
        .create(&PostParams::default(), &module(&long, "^.+$"))
        .await
        .expect_err("a name whose .ready label cannot exist must be refused");
    let kube::Error::Api(status) = &err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(status.code, 403, "{status:?}");
    for needle in [
        "metadata.name",
        "metadata.namespace",
        &format!("{}.{long}.ready", f.ns_name),
        "64 characters, the limit is 63",
    ] {
        assert!(
            status.message.contains(needle),
            "{needle}: {}",
            status.message
        );
    }
    // One character shorter: the label key is exactly 63 characters, and the Module admitted.
    let name = "m".repeat(fits);
    f.modules()
        .create(&PostParams::default(), &module(&name, "^.+$"))
        .await
        .with_context(|| {
            format!(
                "63-character label key refused; log:\n{}",
                f.webhook.controller.log()
            )
        })?;
    f.finish().await
}

/// A second Module loading the same kernel module is admitted with a warning that kubectl
/// shows; a Module of another kernel module gets none.
#[tokio::test(flavor = "multi_thread")]
async fn module_sharing_a_kernel_module_is_admitted_with_a_warning() -> Result<()> {
    let f = Fixture::new("webhook-shared").await?;
    f.wait_webhook_active().await?;
    // Unique in the cluster: other tests' Modules must not match.
    let kmod = f.ns_name.replace('-', "_");
    let kubectl_apply = |yaml: &str| {
        f.cp.kubectl_with_stdin(["apply", "-n", &f.ns_name, "-f", "-"], yaml)
    };
    let first = kubectl_apply(&module_yaml("first", &kmod))?;
    let stderr = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(first.status.success(), "{stderr}");
    assert!(
        !stderr.contains("Warning"),
        "no other Module loads it yet: {stderr}"
    );

    let second = kubectl_apply(&module_yaml("second", &kmod))?;
    let stderr = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(second.status.success(), "{stderr}");
    let want = format!(
        "kernel module {kmod} is also managed by Module {}/first; both load the same kernel module on nodes they share",
        f.ns_name
    );
    assert!(
        stderr.contains("Warning") && stderr.contains(&want),
        "want {want:?} in: {stderr}\nlog:\n{}",
        f.webhook.controller.log()
    );
    assert!(f.modules().get_opt("second").await?.is_some());

    let other = kubectl_apply(&module_yaml("other", &format!("{kmod}_other")))?;
    let stderr = String::from_utf8_lossy(&other.stderr).to_string();
    assert!(
        other.status.success() && !stderr.contains("Warning"),
        "{stderr}"
    );
    f.finish().await
}

/// `spec.dra` through the webhook (upstream's `validateDRA`): a duplicate DeviceClass is
/// refused naming it; a valid DRA Module is admitted, which needs the API server's
/// `/version` (v1.35 here, at least the 1.34 DRA needs).
#[tokio::test(flavor = "multi_thread")]
async fn dra_module_is_validated_and_admitted_on_a_dra_capable_server() -> Result<()> {
    let f = Fixture::new("webhook-dra").await?;
    f.wait_webhook_active().await?;
    let dra = |name: &str, classes: serde_json::Value| -> Result<Module> {
        let m = ModuleBuilder::new(name)
            .selector("kmm-test/webhook-none", "yes")
            .mapping("^.+$", "registry.example/kmm/dra:1")
            .merge(serde_json::json!({"spec": {"dra": {
                "driverName": "gpu.example.com",
                "container": {"image": "registry.example/kmm/dra-driver:1"},
                "deviceClasses": classes,
            }}}));
        m.module()
    };
    let twice = dra(
        "twice",
        serde_json::json!([{"name": "a.example.com"}, {"name": "a.example.com"}]),
    )?;
    let err = f
        .modules()
        .create(&PostParams::default(), &twice)
        .await
        .expect_err("a DeviceClass listed twice must be refused");
    let kube::Error::Api(status) = &err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status.message.contains("spec.dra.deviceClasses[1].name")
            && status.message.contains("is a duplicate"),
        "{}",
        status.message
    );
    let good = dra("good", serde_json::json!([{"name": "a.example.com"}]))?;
    f.modules()
        .create(&PostParams::default(), &good)
        .await
        .with_context(|| {
            format!(
                "valid DRA Module refused; log:\n{}",
                f.webhook.controller.log()
            )
        })?;
    f.finish().await
}
