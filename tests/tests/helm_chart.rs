//! The Helm chart `deploy/helm/kmm-rs`: it lints, it renders exactly what
//! `kubectl kustomize` renders from `deploy/` (and from its overlays, with
//! the matching values), its values reach the objects, and `helm install`,
//! `helm upgrade` and `helm uninstall` work on the real API server.
//!
//! One source of truth: the comparison ([`kmm_tests::helm::compare`]) keys
//! both renders by kind/namespace/name and compares every object as JSON,
//! both ways, after removing only what Helm adds (its four labels on each
//! object's metadata, `helm.sh/resource-policy: keep` on the CRDs). The
//! Namespace is the one object the default values leave out (Helm stores
//! its release in the namespace, so it exists before the chart is applied):
//! the default comparison expects exactly that difference, and with
//! `namespace.create=true` the renders are equal.
//!
//! The cluster test shares the API server with the other test binaries,
//! which install `deploy/` with `kmm_tests::deploy::install_deploy` (same
//! object names) and apply the CRDs under field manager `kmm-tests`. Test
//! binaries run one after another, so it owns the install while it runs:
//! - it first deletes `deploy/`'s install (everything but the CRDs, which
//!   would take every test's Modules with them), so Helm starts as on a
//!   cluster without kmm-rs and owns every field it later changes;
//! - `--take-ownership`: the CRDs are there already, without Helm's
//!   release annotations (a real cluster has them from an earlier release of
//!   the same name, which Helm adopts without the flag);
//! - `webhook.failurePolicy=Ignore`: no controller Pod runs here (no
//!   kubelet), so with `Fail` every Module write of this and any later test
//!   would be refused while the release exists (`tests/src/deploy.rs`
//!   leaves the configuration out for the same reason);
//! - at the end, whatever happened, it puts `deploy/`'s install back
//!   (`install_deploy`) for the binaries that follow.
//!
//! Needs `hack/helm/build.sh` (helm) and `hack/controlplane/build.sh`
//! (kubectl for `kustomize`, and the control plane).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kmm_tests::cluster::{WebhookConfigGuard, apply_yaml, ensure_crds, wait_for};
use kmm_tests::controlplane::{ControlPlane, bin_dir, repo_root};
use kmm_tests::deploy::{WEBHOOK_CONFIG, install_deploy, render_deploy, to_yaml};
use kmm_tests::helm::{
    Helm, KEEP_ANNOTATION, NAMESPACE, RELEASE, chart_dir, chart_versions, compare, parse_stream,
    stderr_without_info,
};
use kmm_tests::module::ModuleBuilder;
use serde_json::Value;

/// README's Helm install, verbatim; the cluster test runs these lines.
const README_INSTALL: [&str; 3] = [
    "kubectl create namespace kmm-system",
    "kubectl label namespace kmm-system pod-security.kubernetes.io/enforce=privileged",
    "helm install kmm-rs deploy/helm/kmm-rs -n kmm-system",
];

/// `kubectl kustomize <dir>` with the control plane's kubectl (no API server needed).
fn kustomize(dir: &std::path::Path) -> Result<Vec<Value>> {
    let kubectl = bin_dir()?.join("kubectl");
    let out = std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .with_context(|| format!("running {}", kubectl.display()))?;
    ensure!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_stream(&String::from_utf8(out.stdout)?)
}

/// Chart render (with `values`) against the kustomize render of `deploy/<sub>`.
fn differences(sub: &str, values: &[&str]) -> Result<Vec<String>> {
    let helm = Helm::new()?;
    let mut args = Vec::new();
    for v in values {
        args.extend(["--set", v]);
    }
    let (chart_version, app_version) = chart_versions()?;
    compare(
        helm.template(&args)?,
        kustomize(&repo_root().join("deploy").join(sub))?,
        &chart_version,
        &app_version,
    )
}

#[test]
#[ignore = "needs helm (bash hack/helm/build.sh): run by make test"]
fn helm_lint_passes_strict_and_the_schema_refuses_a_bad_failure_policy() -> Result<()> {
    let helm = Helm::new()?;
    let chart = chart_dir();
    let chart = chart.to_str().context("non-UTF-8 chart path")?;
    helm.ok(["lint", "--strict", chart])?;
    helm.ok([
        "lint",
        "--strict",
        chart,
        "--set",
        "namespace.create=true,certManager.enabled=true,serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        "--set",
        "controller.podDisruptionBudget.enabled=true",
    ])?;

    // `helm package` follows the symlinks into deploy/: the archive renders
    // what the directory renders.
    let pkg = tempfile::tempdir()?;
    let pkg_dir = pkg.path().to_str().context("non-UTF-8 temp path")?;
    helm.ok(["package", chart, "-d", pkg_dir])?;
    let (chart_version, _) = chart_versions()?;
    let tgz = pkg.path().join(format!("kmm-rs-{chart_version}.tgz"));
    let tgz = tgz.to_str().context("non-UTF-8 temp path")?;
    let all_on = "namespace.create=true,certManager.enabled=true,serviceMonitor.enabled=true,\
                  prometheusRule.enabled=true,grafanaDashboard.enabled=true";
    let render = |c: &str| helm.ok(["template", RELEASE, c, "-n", NAMESPACE, "--set", all_on]);
    assert_eq!(render(tgz)?, render(chart)?);
    helm.ok(["lint", "--strict", tgz])?;

    for cmd in [
        vec!["lint", chart],
        vec!["template", RELEASE, chart, "-n", NAMESPACE],
    ] {
        let mut args = cmd.clone();
        args.extend(["--set", "webhook.failurePolicy=Sometimes"]);
        let out = helm.run(&args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_without_info(&out)
        );
        assert!(!out.status.success(), "helm {cmd:?} accepted it:\n{text}");
        assert!(
            text.contains("/webhook/failurePolicy") && text.contains("'Fail', 'Ignore'"),
            "helm {cmd:?}: no clear message:\n{text}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs helm (bash hack/helm/build.sh) and kubectl (hack/controlplane/build.sh): run by make test"]
fn default_values_render_deploy_and_the_namespace_only_with_namespace_create() -> Result<()> {
    // The one difference the defaults make, spelled out: no Namespace
    // (README creates and labels it before `helm install`).
    assert_eq!(
        differences("", &[])?,
        ["Namespace//kmm-system: rendered by kustomize only"]
    );
    assert_eq!(
        differences("", &["namespace.create=true"])?,
        Vec::<String>::new()
    );
    // What README's `kubectl label` sets is what deploy/ enforces.
    let ns = kustomize(&repo_root().join("deploy"))?
        .into_iter()
        .find(|o| o["kind"] == "Namespace")
        .context("deploy/ has no Namespace")?;
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    Ok(())
}

#[test]
#[ignore = "needs helm (bash hack/helm/build.sh) and kubectl (hack/controlplane/build.sh): run by make test"]
fn monitoring_values_render_the_monitoring_overlay() -> Result<()> {
    let d = differences(
        "overlays/monitoring",
        &[
            "namespace.create=true",
            "serviceMonitor.enabled=true",
            "prometheusRule.enabled=true",
            "grafanaDashboard.enabled=true",
        ],
    )?;
    assert_eq!(d, Vec::<String>::new());
    Ok(())
}

#[test]
#[ignore = "needs helm (bash hack/helm/build.sh) and kubectl (hack/controlplane/build.sh): run by make test"]
fn cert_manager_value_renders_the_cert_manager_overlay() -> Result<()> {
    let d = differences(
        "overlays/cert-manager",
        &["namespace.create=true", "certManager.enabled=true"],
    )?;
    assert_eq!(d, Vec::<String>::new());
    Ok(())
}

#[test]
#[ignore = "needs helm (bash hack/helm/build.sh) and kubectl (hack/controlplane/build.sh): run by make test"]
fn another_release_namespace_moves_what_a_kustomize_namespace_overlay_moves() -> Result<()> {
    let ns = "kmm-elsewhere";
    let helm = Helm::new()?;
    let chart = chart_dir();
    let rendered = parse_stream(&helm.ok([
        "template",
        RELEASE,
        chart.to_str().context("non-UTF-8 chart path")?,
        "-n",
        ns,
        "--set",
        "namespace.create=true",
    ])?)?;
    // deploy/ under an overlay that only sets `namespace:`, as a user would.
    let (_dir, overlay) = kmm_tests::deploy::overlay_dir("", ns, "")?;
    let (chart_version, app_version) = chart_versions()?;
    let d = compare(rendered, kustomize(&overlay)?, &chart_version, &app_version)?;
    assert_eq!(d, Vec::<String>::new());
    Ok(())
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} rendered"))
}

#[test]
#[ignore = "needs helm (bash hack/helm/build.sh): run by make test"]
fn values_reach_the_objects() -> Result<()> {
    let helm = Helm::new()?;
    let digest = format!("sha256:{}", "ab".repeat(32));
    let objs = helm.template(&[
        "--set",
        "image.repository=registry.example/team/kmm-rs,image.tag=v9,image.pullPolicy=Always",
        "--set",
        &format!("image.digest={digest}"),
        "--set",
        "imagePullSecrets[0].name=regcred",
        "--set",
        "agent.nodeSelector.kmm-test/modules=yes,agent.priorityClassName=p-agent",
        "--set",
        "agent.podSecurityContext.fsGroup=7,agent.resources.limits.memory=1Gi",
        "--set",
        "controller.replicas=3,controller.priorityClassName=p-ctl",
        "--set",
        "controller.tolerations[0].operator=Exists",
        "--set",
        "controller.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=k",
        "--set",
        "controller.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
        "--set",
        "controller.podDisruptionBudget.enabled=true",
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set-json",
        r#"extraObjects=[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"{{ .Release.Name }}-extra","namespace":"{{ .Release.Namespace }}"}},"apiVersion: v1\nkind: Secret\nmetadata:\n  name: x-{{ .Values.controller.replicas }}\n"]"#,
    ])?;
    let image = format!("registry.example/team/kmm-rs@{digest}");

    let ds = &find(&objs, "DaemonSet", "kmm-agent")?["spec"]["template"]["spec"];
    let dep_obj = find(&objs, "Deployment", "kmm-controller")?;
    let dep = &dep_obj["spec"]["template"]["spec"];
    for pod in [ds, dep] {
        assert_eq!(pod["containers"][0]["image"], image.as_str());
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["imagePullSecrets"],
            serde_json::json!([{"name": "regcred"}])
        );
    }
    let signer = dep["containers"][0]["env"]
        .as_array()
        .context("controller env")?
        .iter()
        .find(|e| e["name"] == "KMM_SIGNER_IMAGE")
        .context("no KMM_SIGNER_IMAGE")?;
    assert_eq!(
        signer["value"],
        image.as_str(),
        "sign Jobs run another image"
    );

    assert_eq!(ds["nodeSelector"]["kmm-test/modules"], "yes");
    assert_eq!(ds["priorityClassName"], "p-agent");
    assert_eq!(ds["securityContext"]["fsGroup"], 7);
    assert_eq!(ds["containers"][0]["resources"]["limits"]["memory"], "1Gi");
    // Defaults that stay when another value of the map is set.
    assert_eq!(ds["containers"][0]["resources"]["requests"]["cpu"], "10m");
    assert_eq!(
        ds["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );

    assert_eq!(dep_obj["spec"]["replicas"], 3);
    assert_eq!(dep["priorityClassName"], "p-ctl");
    assert_eq!(
        dep["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    assert_eq!(
        dep["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "k"
    );
    assert_eq!(dep["securityContext"]["runAsUser"], 65532);

    let pdb = find(&objs, "PodDisruptionBudget", "kmm-controller")?;
    assert_eq!(pdb["metadata"]["namespace"], NAMESPACE);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"], dep_obj["spec"]["selector"]);

    let vwc = find(&objs, "ValidatingWebhookConfiguration", "kmm-webhook")?;
    let hooks = vwc["webhooks"].as_array().context("webhooks")?;
    assert_eq!(hooks.len(), 3);
    for h in hooks {
        assert_eq!(h["failurePolicy"], "Ignore", "{}", h["name"]);
    }

    let extra = find(&objs, "ConfigMap", "kmm-rs-extra")?;
    assert_eq!(extra["metadata"]["namespace"], NAMESPACE);
    find(&objs, "Secret", "x-3")?;

    // minAvailable instead of maxUnavailable; no PDB by default.
    let objs = helm.template(&[
        "--set",
        "controller.podDisruptionBudget.enabled=true,controller.podDisruptionBudget.minAvailable=1",
    ])?;
    let pdb = find(&objs, "PodDisruptionBudget", "kmm-controller")?;
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(pdb["spec"].get("maxUnavailable").is_none(), "{pdb}");
    let objs = helm.template(&[])?;
    assert!(
        !objs.iter().any(|o| o["kind"] == "PodDisruptionBudget"),
        "a PDB by default"
    );
    Ok(())
}

#[test]
#[ignore = "needs helm (bash hack/helm/build.sh): run by make test"]
fn changing_a_component_value_changes_only_that_pod_template() -> Result<()> {
    let helm = Helm::new()?;
    let template = |objs: &[Value], kind: &str, name: &str| -> Result<Value> {
        Ok(find(objs, kind, name)?["spec"]["template"].clone())
    };
    let before = helm.template(&[])?;
    let after = helm.template(&["--set", "controller.resources.limits.memory=1Gi"])?;
    assert_ne!(
        template(&before, "Deployment", "kmm-controller")?,
        template(&after, "Deployment", "kmm-controller")?
    );
    assert_eq!(
        template(&before, "DaemonSet", "kmm-agent")?,
        template(&after, "DaemonSet", "kmm-agent")?,
        "a controller value rolled the agents"
    );
    Ok(())
}

#[test]
fn the_chart_app_version_is_the_workspace_version() -> Result<()> {
    let cargo: toml_like::Workspace = toml_like::read(&repo_root().join("Cargo.toml"))?;
    let (_, app_version) = chart_versions()?;
    assert_eq!(app_version, cargo.version);
    Ok(())
}

#[test]
fn the_readme_install_is_the_one_the_cluster_test_runs() -> Result<()> {
    let readme = std::fs::read_to_string(repo_root().join("README.md"))?;
    let block = README_INSTALL.join("\n");
    assert!(
        readme.contains(&block),
        "README.md lacks the Helm install the tests run:\n{block}"
    );
    Ok(())
}

/// The workspace version without a TOML dependency: the `version = "..."`
/// line of `[workspace.package]`.
mod toml_like {
    use anyhow::{Context, Result};

    pub struct Workspace {
        pub version: String,
    }

    pub fn read(path: &std::path::Path) -> Result<Workspace> {
        let text = std::fs::read_to_string(path)?;
        let section = text
            .split("\n[")
            .find(|s| s.starts_with("workspace.package]"))
            .context("no [workspace.package]")?;
        let version = section
            .lines()
            .find_map(|l| l.strip_prefix("version = "))
            .context("no version in [workspace.package]")?
            .trim_matches('"')
            .to_string();
        Ok(Workspace { version })
    }
}

fn kubectl_json(cp: &ControlPlane, args: &[&str]) -> Result<Value> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    Ok(serde_json::from_str(&cp.kubectl_ok(all)?)?)
}

/// Names of `kind` objects in kmm-system owned by `owner`.
fn owned(cp: &ControlPlane, kind: &str, owner: &str) -> Result<Vec<String>> {
    let list = kubectl_json(cp, &["-n", NAMESPACE, kind])?;
    Ok(list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["name"] == owner))
        })
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect())
}

async fn wait_count(cp: &ControlPlane, kind: &str, owner: &str, n: usize) -> Result<()> {
    wait_for(Duration::from_secs(60), || async {
        Ok(owned(cp, kind, owner)?.len() == n)
    })
    .await
    .with_context(|| {
        format!(
            "{owner}: want {n} {kind}, have {:?}",
            owned(cp, kind, owner).unwrap_or_default()
        )
    })
}

/// `deploy/`'s install deleted (the CRDs stay), the namespace gone for good.
fn remove_deploy_install(cp: &ControlPlane) -> Result<()> {
    kmm_tests::deploy::delete_webhook_config(cp)?;
    let objs: Vec<Value> = render_deploy(cp)?
        .into_iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .collect();
    let out = cp.kubectl_with_stdin(
        [
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=180s",
            "-f",
            "-",
        ],
        &to_yaml(&objs)?,
    )?;
    ensure!(
        out.status.success(),
        "deleting deploy/'s install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn crd_version_column(cp: &ControlPlane) -> Result<Value> {
    let crd = kubectl_json(cp, &["crd", "modules.kmm.sigs.x-k8s.io"])?;
    Ok(crd["spec"]["versions"][0]["additionalPrinterColumns"][0]["description"].clone())
}

#[tokio::test]
#[ignore = "needs helm (bash hack/helm/build.sh) and the test control plane: run by make test"]
async fn helm_install_upgrade_and_uninstall_on_the_api_server() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    // Whatever happens, no Ignore webhook outlives the test, and deploy/'s
    // install is back for the binaries that follow.
    let _guard = WebhookConfigGuard {
        cp,
        name: WEBHOOK_CONFIG.to_string(),
    };
    let result = install_upgrade_uninstall(cp).await;
    let restored = install_deploy(cp).await;
    result?;
    restored.context("re-installing deploy/ after the Helm test")
}

async fn install_upgrade_uninstall(cp: &'static ControlPlane) -> Result<()> {
    let helm = Helm::with_kubeconfig(cp.kubeconfig_path())?;
    remove_deploy_install(cp)?;

    // README's three lines, with the test's flags on the helm line (module doc).
    for line in README_INSTALL {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.split_first() {
            Some((&"kubectl", args)) => {
                cp.kubectl_ok(args)?;
            }
            Some((&"helm", args)) => {
                let mut args = args.to_vec();
                args.extend(["--set", "webhook.failurePolicy=Ignore", "--take-ownership"]);
                let out = helm.ok(&args)?;
                assert!(out.contains("STATUS: deployed"), "{out}");
            }
            _ => bail!("unexpected README line {line}"),
        }
    }

    // The objects are there, labelled by Helm, the webhook ignoring failures.
    for (kind, name) in [
        ("daemonset", "kmm-agent"),
        ("deployment", "kmm-controller"),
        ("service", "kmm-webhook"),
        ("serviceaccount", "kmm-agent"),
        ("role", "kmm-controller-leader-election"),
    ] {
        let o = kubectl_json(cp, &["-n", NAMESPACE, kind, name])?;
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
            "{kind}/{name}"
        );
    }
    for (kind, name) in [
        ("clusterrole", "kmm-agent"),
        ("clusterrolebinding", "kmm-controller"),
        ("validatingadmissionpolicy", "kmm-agent-own-node"),
    ] {
        let o = kubectl_json(cp, &[kind, name])?;
        assert_eq!(
            o["metadata"]["annotations"]["meta.helm.sh/release-name"], RELEASE,
            "{kind}/{name}"
        );
    }
    let vwc = kubectl_json(cp, &["validatingwebhookconfiguration", WEBHOOK_CONFIG])?;
    for h in vwc["webhooks"].as_array().context("webhooks")? {
        assert_eq!(h["failurePolicy"], "Ignore");
    }
    let crds = [
        "modules.kmm.sigs.x-k8s.io",
        "nodemodulesconfigs.kmm.sigs.x-k8s.io",
        "preflightvalidations.kmm.sigs.x-k8s.io",
        "modulerollouts.rollout.kmm-rs.io",
    ];
    for crd in crds {
        let o = kubectl_json(cp, &["crd", crd])?;
        assert_eq!(
            o["metadata"]["annotations"][KEEP_ANNOTATION], "keep",
            "{crd}"
        );
    }
    // kube-controller-manager made the first ReplicaSet and ControllerRevision.
    wait_count(cp, "replicasets", "kmm-controller", 1).await?;
    wait_count(cp, "controllerrevisions", "kmm-agent", 1).await?;

    // A CRD left behind by an older release or edited by hand: the upgrade
    // puts the chart's back (a crds/ directory would be skipped on upgrade).
    let column = crd_version_column(cp)?;
    cp.kubectl_ok([
        "patch",
        "crd",
        "modules.kmm.sigs.x-k8s.io",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/versions/0/additionalPrinterColumns/0/description","value":"stale"}]"#,
    ])?;
    assert_eq!(crd_version_column(cp)?, "stale");

    // Upgrade with one agent and one controller value changed. Server-side
    // apply: the hand edit (field manager kubectl-patch) conflicts unless forced.
    let chart = chart_dir();
    let chart = chart.to_str().context("non-UTF-8 chart path")?;
    let upgrade = |force: bool| {
        let mut args = vec![
            "upgrade",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "agent.nodeSelector.kmm-test/helm=upgraded",
            "--set",
            "controller.resources.limits.memory=600Mi",
        ];
        if force {
            args.push("--force-conflicts");
        }
        helm.run(&args)
    };
    let out = upgrade(false)?;
    let stderr = stderr_without_info(&out);
    assert!(
        !out.status.success(),
        "upgrade over a hand edit went through"
    );
    assert!(
        stderr.contains(r#"conflict with "kubectl-patch""#),
        "{stderr}"
    );
    let out = upgrade(true)?;
    ensure!(
        out.status.success(),
        "helm upgrade --force-conflicts: {}",
        stderr_without_info(&out)
    );
    assert_eq!(
        crd_version_column(cp)?,
        column,
        "the upgrade left the CRD stale"
    );

    // Both workloads roll: a new ReplicaSet, a new ControllerRevision.
    wait_count(cp, "replicasets", "kmm-controller", 2).await?;
    wait_count(cp, "controllerrevisions", "kmm-agent", 2).await?;
    let ds = kubectl_json(cp, &["-n", NAMESPACE, "daemonset", "kmm-agent"])?;
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"]["kmm-test/helm"],
        "upgraded"
    );
    let dep = kubectl_json(cp, &["-n", NAMESPACE, "deployment", "kmm-controller"])?;
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "600Mi"
    );
    // --reuse-values kept the install's value.
    let vwc = kubectl_json(cp, &["validatingwebhookconfiguration", WEBHOOK_CONFIG])?;
    assert_eq!(vwc["webhooks"][0]["failurePolicy"], "Ignore");

    // A Module in the cluster survives the uninstall with its CRD.
    let ns = cp.temp_namespace("helm").await?;
    apply_yaml(
        cp,
        ns.name(),
        &ModuleBuilder::new("helm-kept")
            .mapping("^.+$", "127.0.0.1:5000/helm/kept:1")
            .manifest(),
    )?;

    let out = helm.ok(["uninstall", RELEASE, "-n", NAMESPACE])?;
    assert!(out.contains("uninstalled"), "{out}");
    assert!(out.contains("kept due to the resource policy"), "{out}");
    for crd in crds {
        assert!(
            out.contains(&format!("[CustomResourceDefinition] {crd}")),
            "{out}"
        );
    }
    wait_for(Duration::from_secs(60), || async {
        let gone = |args: &[&str]| {
            let mut a = vec!["get"];
            a.extend_from_slice(args);
            a.push("--ignore-not-found");
            cp.kubectl_ok(a).map(|s| s.trim().is_empty())
        };
        Ok(gone(&["-n", NAMESPACE, "daemonset", "kmm-agent"])?
            && gone(&["-n", NAMESPACE, "deployment", "kmm-controller"])?
            && gone(&["-n", NAMESPACE, "serviceaccount", "kmm-controller"])?
            && gone(&["clusterrole", "kmm-agent"])?
            && gone(&["validatingadmissionpolicy", "kmm-agent-own-events"])?
            && gone(&["validatingwebhookconfiguration", WEBHOOK_CONFIG])?)
    })
    .await
    .context("the release's objects are still there after helm uninstall")?;
    for crd in crds {
        kubectl_json(cp, &["crd", crd]).with_context(|| format!("uninstall deleted CRD {crd}"))?;
    }
    kubectl_json(cp, &["-n", ns.name(), "module", "helm-kept"])
        .context("uninstall deleted a Module")?;
    ns.cleanup().await
}
