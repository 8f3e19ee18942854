//! `deploy/` installs cleanly on the real API server and its RBAC is least
//! privilege: `kubectl apply --server-side` of the rendered `deploy/` succeeds
//! with nothing on stderr (twice: idempotent), the objects are what the
//! manifests promise, and `kubectl auth can-i` as each service account answers
//! as designed.
//!
//! The install is left in place (kmm-system, RBAC, policies, workloads): the
//! deploy tests share it, tests that run their own agents and controllers use
//! the admin kubeconfig and other namespaces, and with no kubelet the
//! DaemonSet's and Deployment's pods only stay Pending (the agent pods go
//! with their test Nodes). Its webhook configuration is left out
//! (`kmm_tests::deploy::without_webhook`): it fails closed, and with no
//! controller running it would refuse every other test's Module writes. Its
//! content is checked on the rendered manifests instead.
//!
//! Needs the binaries from `bash hack/controlplane/build.sh`.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kmm_common::Module;
use kmm_tests::cluster::ensure_crds;
use kmm_tests::controlplane::{ControlPlane, repo_root};
use kmm_tests::deploy::{WEBHOOK_CONFIG, WEBHOOK_KIND, install_deploy, render_deploy};
use kmm_tests::module::ModuleBuilder;
use kube::api::{Api, PostParams};
use serde_json::Value;

const AGENT: &str = "system:serviceaccount:kmm-system:kmm-agent";
const CONTROLLER: &str = "system:serviceaccount:kmm-system:kmm-controller";

fn deploy_dir() -> Result<String> {
    Ok(repo_root()
        .join("deploy")
        .to_str()
        .context("non-UTF-8 repo path")?
        .to_string())
}

/// `kmm_tests::deploy::apply_deploy` (deploy/ without its webhook
/// configuration); returns (stdout, stderr).
fn apply_deploy(cp: &ControlPlane) -> Result<(String, String)> {
    let out = kmm_tests::deploy::apply_deploy(cp)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "kubectl apply of deploy/ failed ({}):\n{stderr}",
            out.status
        );
    }
    Ok((stdout, stderr))
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Result<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    Ok(serde_json::from_str(&cp.kubectl_ok(all)?)?)
}

#[tokio::test]
async fn applying_deploy_installs_without_warnings_and_is_idempotent() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    // Same CRD content under the tests' field manager first, so the apply
    // below never conflicts with a parallel test's copy.
    ensure_crds(cp).await?;

    for round in 1..=2 {
        let (stdout, stderr) = apply_deploy(cp)?;
        assert_eq!(stderr.trim(), "", "round {round}: warnings on stderr");
        for object in [
            "namespace/kmm-system",
            "customresourcedefinition.apiextensions.k8s.io/modules.kmm.sigs.x-k8s.io",
            "clusterrole.rbac.authorization.k8s.io/kmm-agent",
            "clusterrole.rbac.authorization.k8s.io/kmm-controller",
            "role.rbac.authorization.k8s.io/kmm-controller-leader-election",
            "validatingadmissionpolicy.admissionregistration.k8s.io/kmm-agent-own-node",
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/kmm-agent-own-nodemodulesconfig",
            "validatingadmissionpolicy.admissionregistration.k8s.io/kmm-agent-own-events",
            "validatingadmissionpolicybinding.admissionregistration.k8s.io/kmm-agent-own-events",
            "daemonset.apps/kmm-agent",
            "deployment.apps/kmm-controller",
            "service/kmm-agent-metrics",
            "service/kmm-controller-metrics",
            "service/kmm-webhook",
        ] {
            assert!(
                stdout.contains(&format!("{object} serverside-applied")),
                "round {round}: {object} missing from:\n{stdout}"
            );
        }
    }

    check_installed_objects(cp)
}

fn check_installed_objects(cp: &ControlPlane) -> Result<()> {
    let ns = get_json(cp, &["namespace", "kmm-system"])?;
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    // The policies compiled with no type-checking warnings.
    for policy in [
        "kmm-agent-own-node",
        "kmm-agent-own-nodemodulesconfig",
        "kmm-agent-own-events",
    ] {
        let vap = get_json(cp, &["validatingadmissionpolicy", policy])?;
        let warnings = &vap["status"]["typeChecking"]["expressionWarnings"];
        assert!(
            warnings.is_null() || warnings == &Value::Array(vec![]),
            "{policy}: {warnings}"
        );
    }

    let ds = get_json(cp, &["-n", "kmm-system", "daemonset", "kmm-agent"])?;
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["serviceAccountName"], "kmm-agent");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert_eq!(c["image"], "kmm-rs:dev");
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8081);
    assert_eq!(c["resources"]["requests"]["cpu"], "10m");
    assert_eq!(c["resources"]["requests"]["memory"], "32Mi");
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    let env = c["env"].as_array().context("agent env")?;
    let node_name = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .context("NODE_NAME")?;
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(value("KMM_PULL_SECRETS"), Some("controller".into()));
    assert_eq!(
        value("KMM_CONTROLLER_URL"),
        Some("https://kmm-webhook.$(POD_NAMESPACE).svc".into())
    );
    let projected = pod["volumes"]
        .as_array()
        .context("agent volumes")?
        .iter()
        .find(|v| v["name"] == "controller-token")
        .context("no controller-token volume")?;
    assert_eq!(
        projected["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "kmm-controller"
    );
    let mounts: Vec<(String, bool)> = c["volumeMounts"]
        .as_array()
        .context("agent mounts")?
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap_or_default().to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    for (path, read_only) in [
        ("/lib/modules", true),
        ("/sys", false),
        ("/var/lib/firmware", false),
        ("/var/lib/kmm-agent", false),
    ] {
        assert!(
            mounts.contains(&(path.to_string(), read_only)),
            "{path} (readOnly={read_only}) not in {mounts:?}"
        );
    }
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .context("agent volumes")?
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        [
            "/lib/modules",
            "/sys",
            "/var/lib/firmware",
            "/var/lib/kmm-agent"
        ]
    );

    let deploy = get_json(cp, &["-n", "kmm-system", "deployment", "kmm-controller"])?;
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["serviceAccountName"], "kmm-controller");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = c["env"].as_array().context("controller env")?;
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let var = env
            .iter()
            .find(|e| e["name"] == name)
            .with_context(|| format!("{name} not set"))?;
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], path, "{name}");
    }

    for (svc, port) in [
        ("kmm-agent-metrics", 8081),
        ("kmm-controller-metrics", 8080),
    ] {
        let s = get_json(cp, &["-n", "kmm-system", "service", svc])?;
        assert_eq!(s["spec"]["ports"][0]["port"], port, "{svc}");
    }
    Ok(())
}

#[tokio::test]
async fn the_webhooks_fail_closed_like_upstream() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let docs = render_deploy(cp)?;
    let config = docs
        .iter()
        .find(|d| d["kind"] == WEBHOOK_KIND && d["metadata"]["name"] == WEBHOOK_CONFIG)
        .context("no webhook configuration rendered")?;
    let policies: Vec<(&str, &str)> = config["webhooks"]
        .as_array()
        .context("no webhooks")?
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default(),
                w["failurePolicy"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        policies,
        [
            ("namespace-deletion.kmm.sigs.x-k8s.io", "Fail"),
            ("vmodule.kmm.sigs.x-k8s.io", "Fail"),
            ("vpreflightvalidation.kmm.sigs.x-k8s.io", "Fail"),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn the_test_install_leaves_no_webhook_that_would_block_other_tests() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_deploy(cp).await?;
    let client = cp.client();
    let pointing_at_kmm_system: Vec<String> =
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .list(&Default::default())
            .await?
            .into_iter()
            .filter(|c| {
                c.webhooks.iter().flatten().any(|w| {
                    w.client_config
                        .service
                        .as_ref()
                        .is_some_and(|s| s.namespace == "kmm-system")
                })
            })
            .filter_map(|c| c.metadata.name)
            .collect();
    assert_eq!(pointing_at_kmm_system, Vec::<String>::new());

    // A Module write anywhere goes through (the API server calls validating
    // webhooks on dry runs too).
    let ns = cp.temp_namespace("deploy-nowh").await?;
    let module = ModuleBuilder::new("m")
        .mapping("^.+$", "registry.example/kmm/m:1")
        .module()?;
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let created = Api::<Module>::namespaced(client, ns.name())
        .create(&dry, &module)
        .await;
    ns.cleanup().await?;
    created.context("a dry-run Module create in a fresh namespace")?;
    Ok(())
}

#[tokio::test]
async fn base_leaves_out_examples_and_monitoring_which_the_overlay_adds() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let kinds = |dir: &str| -> Result<Vec<String>> {
        let out = cp.kubectl_ok(["kustomize", dir])?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .map(str::to_string)
            .collect())
    };
    let base = kinds(&deploy_dir()?)?;
    assert!(!base.iter().any(|k| k == "Module"), "{base:?}");
    assert!(!base.iter().any(|k| k == "ServiceMonitor"), "{base:?}");

    let overlay_dir = repo_root().join("deploy/overlays/monitoring");
    let overlay = kinds(overlay_dir.to_str().context("non-UTF-8 path")?)?;
    assert_eq!(
        overlay.iter().filter(|k| *k == "ServiceMonitor").count(),
        2,
        "{overlay:?}"
    );
    // The overlay is deploy/ plus monitoring, nothing dropped.
    for kind in &base {
        assert!(overlay.contains(kind), "{kind} missing from the overlay");
    }
    Ok(())
}

/// `kubectl auth can-i --as=<sa> <args>`: true for "yes", false for "no".
fn can_i(cp: &ControlPlane, who: &str, args: &[&str]) -> Result<bool> {
    let mut all = vec!["auth", "can-i", "--as", who];
    all.extend_from_slice(args);
    let out = cp.kubectl(&all);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!(
            "kubectl auth can-i {args:?}: {other:?} / {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn expect(cp: &ControlPlane, who: &str, allowed: &[&[&str]], denied: &[&[&str]]) -> Result<()> {
    let mut wrong = Vec::new();
    for args in allowed {
        if !can_i(cp, who, args)? {
            wrong.push(format!("should be allowed: {args:?}"));
        }
    }
    for args in denied {
        if can_i(cp, who, args)? {
            wrong.push(format!("should be denied: {args:?}"));
        }
    }
    if !wrong.is_empty() {
        bail!("{who}:\n{}", wrong.join("\n"));
    }
    Ok(())
}

#[tokio::test]
async fn service_accounts_get_exactly_what_their_code_uses() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    apply_deploy(cp)?;

    expect(
        cp,
        AGENT,
        &[
            &["list", "modules.kmm.sigs.x-k8s.io", "-A"],
            &["watch", "modules.kmm.sigs.x-k8s.io", "-A"],
            &["patch", "nodes"],
            &["watch", "nodes"],
            &["create", "nodemodulesconfigs.kmm.sigs.x-k8s.io"],
            &[
                "patch",
                "nodemodulesconfigs.kmm.sigs.x-k8s.io",
                "--subresource=status",
            ],
            &["create", "events.events.k8s.io", "-n", "some-module-ns"],
            // The caBundle it trusts for the controller's pull-secret endpoint.
            &[
                "get",
                "validatingwebhookconfigurations.admissionregistration.k8s.io/kmm-webhook",
            ],
        ],
        &[
            &["delete", "modules.kmm.sigs.x-k8s.io", "-n", "default"],
            &["patch", "modules.kmm.sigs.x-k8s.io", "-n", "default"],
            &[
                "patch",
                "modules.kmm.sigs.x-k8s.io",
                "-n",
                "default",
                "--subresource=status",
            ],
            &["create", "pods", "-n", "kmm-system"],
            &["create", "pods", "-n", "default", "--subresource=exec"],
            &["get", "pods", "-n", "default", "--subresource=exec"],
            &["delete", "nodes"],
            &["patch", "nodes", "--subresource=status"],
            &["delete", "nodemodulesconfigs.kmm.sigs.x-k8s.io"],
            &["update", "nodemodulesconfigs.kmm.sigs.x-k8s.io"],
            // No Secret at all: pull secrets come from the controller.
            &["get", "secrets", "-n", "some-module-ns"],
            &["get", "secrets", "-n", "kmm-system"],
            &["list", "secrets", "-n", "default"],
            &["watch", "secrets", "-A"],
            &[
                "get",
                "validatingwebhookconfigurations.admissionregistration.k8s.io/other",
            ],
            &[
                "update",
                "validatingwebhookconfigurations.admissionregistration.k8s.io/kmm-webhook",
            ],
            &["create", "daemonsets.apps", "-n", "kmm-system"],
            &["create", "events", "-n", "default"],
            &["create", "leases.coordination.k8s.io", "-n", "kmm-system"],
        ],
    )?;

    expect(
        cp,
        CONTROLLER,
        &[
            &["watch", "modules.kmm.sigs.x-k8s.io", "-A"],
            &["patch", "modules.kmm.sigs.x-k8s.io", "-n", "ns1"],
            &[
                "patch",
                "modules.kmm.sigs.x-k8s.io",
                "-n",
                "ns1",
                "--subresource=status",
            ],
            &[
                "update",
                "modules.kmm.sigs.x-k8s.io",
                "-n",
                "ns1",
                "--subresource=finalizers",
            ],
            &["watch", "nodemodulesconfigs.kmm.sigs.x-k8s.io"],
            // PreflightValidations: watched, status written, Jobs owned.
            &["watch", "preflightvalidations.kmm.sigs.x-k8s.io"],
            &[
                "patch",
                "preflightvalidations.kmm.sigs.x-k8s.io",
                "--subresource=status",
            ],
            &[
                "update",
                "preflightvalidations.kmm.sigs.x-k8s.io",
                "--subresource=finalizers",
            ],
            &["patch", "nodes"],
            &["patch", "namespaces"],
            &["watch", "pods", "-A"],
            &["create", "daemonsets.apps", "-n", "ns1"],
            &["patch", "daemonsets.apps", "-n", "ns1"],
            &["delete", "daemonsets.apps", "-n", "ns1"],
            &["create", "serviceaccounts", "-n", "ns1"],
            &["delete", "serviceaccounts", "-n", "ns1"],
            // spec.dra.deviceClasses (cluster-scoped).
            &["watch", "deviceclasses.resource.k8s.io"],
            &["patch", "deviceclasses.resource.k8s.io"],
            &["delete", "deviceclasses.resource.k8s.io"],
            &["create", "events.events.k8s.io", "-n", "ns1"],
            // In-cluster builds: Jobs, their Dockerfile, the pull secret for
            // the registry check; NMCs of deleted Nodes.
            &["watch", "jobs.batch", "-A"],
            &["create", "jobs.batch", "-n", "ns1"],
            &["delete", "jobs.batch", "-n", "ns1"],
            &["get", "configmaps", "-n", "ns1"],
            &["get", "secrets", "-n", "ns1"],
            // Who asks for a pull secret, and is it a node agent.
            &["create", "tokenreviews.authentication.k8s.io"],
            &["create", "subjectaccessreviews.authorization.k8s.io"],
            &["delete", "nodemodulesconfigs.kmm.sigs.x-k8s.io"],
            // ModuleRollouts: watched, status written, their finalizer added
            // (patch), Jobs owned; Pods evicted (or deleted with
            // eviction.force), the refusing budget named.
            &["watch", "modulerollouts.rollout.kmm-rs.io", "-A"],
            &["patch", "modulerollouts.rollout.kmm-rs.io", "-n", "ns1"],
            &[
                "patch",
                "modulerollouts.rollout.kmm-rs.io",
                "-n",
                "ns1",
                "--subresource=status",
            ],
            &[
                "update",
                "modulerollouts.rollout.kmm-rs.io",
                "-n",
                "ns1",
                "--subresource=finalizers",
            ],
            &["create", "pods", "-n", "ns1", "--subresource=eviction"],
            &["delete", "pods", "-n", "ns1"],
            &["list", "poddisruptionbudgets.policy", "-n", "ns1"],
            &["create", "leases.coordination.k8s.io", "-n", "kmm-system"],
            &[
                "update",
                "leases.coordination.k8s.io/kmm-controller-leader",
                "-n",
                "kmm-system",
            ],
        ],
        &[
            &["list", "secrets", "-A"],
            &["update", "secrets", "-n", "ns1"],
            &["update", "jobs.batch", "-n", "ns1"],
            &["list", "configmaps", "-A"],
            &["create", "pods", "-n", "ns1", "--subresource=exec"],
            &["get", "pods", "-n", "ns1", "--subresource=exec"],
            &["create", "pods", "-n", "ns1"],
            &["delete", "modules.kmm.sigs.x-k8s.io", "-n", "ns1"],
            // A rollout is the user's to write; the controller only adds and
            // removes its finalizer.
            &["create", "modulerollouts.rollout.kmm-rs.io", "-n", "ns1"],
            &["update", "modulerollouts.rollout.kmm-rs.io", "-n", "ns1"],
            &["delete", "modulerollouts.rollout.kmm-rs.io", "-n", "ns1"],
            &["create", "poddisruptionbudgets.policy", "-n", "ns1"],
            &["create", "preflightvalidations.kmm.sigs.x-k8s.io"],
            &["patch", "preflightvalidations.kmm.sigs.x-k8s.io"],
            &["delete", "preflightvalidations.kmm.sigs.x-k8s.io"],
            &["create", "nodemodulesconfigs.kmm.sigs.x-k8s.io"],
            &[
                "patch",
                "nodemodulesconfigs.kmm.sigs.x-k8s.io",
                "--subresource=status",
            ],
            &["delete", "nodes"],
            &["delete", "namespaces"],
            &["create", "leases.coordination.k8s.io", "-n", "default"],
            &[
                "update",
                "leases.coordination.k8s.io/other-lease",
                "-n",
                "kmm-system",
            ],
            &[
                "delete",
                "leases.coordination.k8s.io/kmm-controller-leader",
                "-n",
                "kmm-system",
            ],
            &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
            &[
                "create",
                "rolebindings.rbac.authorization.k8s.io",
                "-n",
                "ns1",
            ],
            &["impersonate", "users"],
            &[
                "create",
                "serviceaccounts",
                "-n",
                "ns1",
                "--subresource=token",
            ],
        ],
    )
}

#[tokio::test]
async fn cert_manager_overlay_serves_the_webhook_with_an_issued_certificate() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let dir = repo_root().join("deploy/overlays/cert-manager");
    let rendered = cp.kubectl_ok(["kustomize", dir.to_str().context("non-UTF-8 path")?])?;
    let docs: Vec<serde_json::Value> = rendered
        .split("\n---\n")
        .map(serde_yaml::from_str)
        .collect::<Result<_, _>>()?;
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("{kind}/{name} not rendered"))
    };
    let cert = find("Certificate", "kmm-webhook")?;
    assert_eq!(cert["spec"]["secretName"], "kmm-webhook-tls");
    assert!(
        cert["spec"]["dnsNames"]
            .as_array()
            .is_some_and(|n| n.iter().any(|d| d == "kmm-webhook.kmm-system.svc")),
        "{cert}"
    );
    let hook = find("ValidatingWebhookConfiguration", "kmm-webhook")?;
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "kmm-system/kmm-webhook"
    );
    let deploy = find("Deployment", "kmm-controller")?;
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env: Vec<&str> = container["env"]
        .as_array()
        .context("controller env")?
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    // The patch adds the cert dir and keeps the base's environment.
    assert!(env.contains(&"KMM_WEBHOOK_CERT_DIR"), "{env:?}");
    assert!(env.contains(&"POD_NAME"), "{env:?}");
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/etc/kmm/webhook-tls"
    );
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "kmm-webhook-tls");
    // Everything of the base is still there.
    let base = cp.kubectl_ok(["kustomize", &deploy_dir()?])?;
    assert_eq!(
        base.matches("\nkind: ").count() + 2,
        rendered.matches("\nkind: ").count(),
        "the overlay adds exactly the Issuer and the Certificate"
    );
    Ok(())
}
