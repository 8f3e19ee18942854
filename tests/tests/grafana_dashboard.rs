//! The Grafana dashboard (`deploy/overlays/monitoring/grafana-dashboard.json`):
//!
//! - its shape: unique panel ids, every data panel on the `$datasource`
//!   variable with at least one PromQL target, every variable a panel uses
//!   defined, every metric it reads registered by the code and listed in
//!   docs/metrics.md, every panel named in docs/metrics.md;
//! - against a real Prometheus (Debian's) that scraped a real run: a
//!   `kmm-controller` and two `kmm-agent` processes (simulated kernel, real
//!   registry) on the test API server, with a Module loaded, a second one
//!   loaded after it, one whose image is missing, one built in the cluster
//!   (its Job created, never run: no kubelet), a versioned one taken from v0
//!   to v1 on both nodes by a ModuleRollout, and the first one unloaded. Then
//!   every target of every panel, and every variable's query, must return
//!   series with a number (a panel whose query returns nothing, or only
//!   `NaN`, fails the test, named);
//! - the monitoring overlay ships it as the ConfigMap Grafana's sidecar loads.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kmm_common::{Module, version_module_label};
use kmm_tests::cluster::{
    apply_yaml, crd_namespace, delete_node_and_status, group_nodes, set_node_label, wait_for,
};
use kmm_tests::controller::leader_and_agents;
use kmm_tests::controlplane::repo_root;
use kmm_tests::grafana::{
    Panel, dashboard_path, label_values_promql, panels, substitute, variables,
};
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::module::ModuleBuilder;
use kmm_tests::prom_rules::{family, metric_names};
use kmm_tests::prometheus::{PrometheusProcess, Target};
use kube::api::{Api, DeleteParams};
use serde::Deserialize;
use serde_json::{Value, json};

const KVER: &str = "6.1.0-92-sim-amd64";
const WAIT: Duration = Duration::from_secs(90);
/// Series Prometheus makes itself, not kmm-rs.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn read(rel: &str) -> Result<String> {
    std::fs::read_to_string(repo_root().join(rel)).with_context(|| format!("reading {rel}"))
}

fn dashboard() -> Result<Value> {
    let text = std::fs::read_to_string(dashboard_path())?;
    serde_json::from_str(&text).context("the dashboard is not JSON")
}

#[test]
fn every_panel_has_a_unique_id_the_datasource_variable_and_promql() -> Result<()> {
    let d = dashboard()?;
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "no uid");
    let panels = panels(&d)?;
    assert!(panels.len() >= 15, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    let vars: BTreeSet<String> = variables(&d).into_iter().map(|v| v.0).collect();
    for p in &panels {
        assert!(ids.insert(p.id), "{}: id {} used twice", p.title, p.id);
        assert_eq!(
            p.datasource, "${datasource}",
            "{}: fixed datasource",
            p.title
        );
        assert!(!p.targets.is_empty(), "{}: no target", p.title);
        let refs: BTreeSet<&str> = p.targets.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(
            refs.len(),
            p.targets.len(),
            "{}: refIds not unique",
            p.title
        );
        for (_, expr) in &p.targets {
            for var in used_variables(expr) {
                assert!(
                    var.starts_with("__") || vars.contains(&var),
                    "{}: ${var} is not a dashboard variable",
                    p.title
                );
            }
        }
    }
    assert!(vars.contains("datasource"), "no datasource variable");
    Ok(())
}

/// `$name` and `${name}` in `expr`.
fn used_variables(expr: &str) -> Vec<String> {
    expr.split('$')
        .skip(1)
        .map(|rest| {
            rest.trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn panels_read_only_metrics_the_code_registers_and_docs_list_them() -> Result<()> {
    let d = dashboard()?;
    let code = [
        read("agent/src/metrics.rs")?,
        read("controller/src/metrics.rs")?,
    ]
    .join("\n");
    let docs = read("docs/metrics.md")?;
    let mut exprs: Vec<(String, String)> = Vec::new();
    for p in panels(&d)? {
        assert!(
            docs.contains(&format!("| {} |", p.title)),
            "panel {:?} is not listed in docs/metrics.md",
            p.title
        );
        exprs.extend(p.targets.into_iter().map(|(_, e)| (p.title.clone(), e)));
    }
    for (name, _, query) in variables(&d).into_iter().filter(|v| v.1 == "query") {
        exprs.push((format!("variable {name}"), label_values_promql(&query)?));
    }
    for (title, expr) in exprs {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names
            .iter()
            .filter(|n| !PROMETHEUS_OWN.contains(&n.as_str()))
        {
            let registered = family(name);
            assert!(
                code.contains(&format!("\"{registered}\"")),
                "{title}: {name} is registered by neither agent nor controller"
            );
            assert!(
                docs.contains(&format!("`{registered}`")),
                "{title}: {registered} is not listed in docs/metrics.md"
            );
        }
    }
    Ok(())
}

#[test]
fn every_metric_the_code_registers_is_listed_in_docs_metrics() -> Result<()> {
    let docs = read("docs/metrics.md")?;
    let mut names = BTreeSet::new();
    for file in ["agent/src/metrics.rs", "controller/src/metrics.rs"] {
        let code = read(file)?;
        // Every metric name is a string literal starting with `kmm_`.
        names.extend(
            code.split('"')
                .skip(1)
                .step_by(2)
                .filter(|s| {
                    s.starts_with("kmm_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
                .map(str::to_string),
        );
    }
    assert!(
        names.len() >= 30,
        "only {} names found: {names:?}",
        names.len()
    );
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !docs.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    Ok(())
}

/// What Grafana puts in for the variables: this test's namespace, every
/// Module and node, a rate window that covers the whole run.
fn values(ns: &str) -> BTreeMap<&str, &str> {
    BTreeMap::from([
        ("namespace", ns),
        ("module", ".*"),
        ("node", ".*"),
        ("datasource", "prometheus"),
        ("__rate_interval", "10m"),
        ("__range", "1h"),
        ("__interval", "1m"),
    ])
}

/// Fails naming the panel whose query returns nothing or only `NaN`.
fn check_panel(prom: &PrometheusProcess, p: &Panel, values: &BTreeMap<&str, &str>) -> Result<()> {
    for (ref_id, expr) in &p.targets {
        let promql = substitute(expr, values)?;
        let samples = prom.query(&promql)?;
        ensure!(
            !samples.is_empty(),
            "panel {:?} target {ref_id} returns nothing: {promql}",
            p.title
        );
        ensure!(
            samples.iter().any(|s| s.value.is_finite()),
            "panel {:?} target {ref_id} returns only NaN: {promql} -> {samples:?}",
            p.title
        );
        println!("{:<45} {ref_id}: {} series", p.title, samples.len());
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the control plane, the registry and prometheus (make test runs it)"]
async fn every_panel_returns_series_from_a_real_run() -> Result<()> {
    let t = std::time::Instant::now();
    let (cp, client, ns) = crd_namespace("dash").await?;
    let ns_name = ns.name().to_string();
    let group = ("kmm-test/dash", ns_name.as_str());
    let nodes = group_nodes(&client, &ns_name, group, &["a", "b"], KVER).await?;
    let reg = registry_addr();
    for m in ["dasha", "dashb", "dashroll"] {
        push_fake_kmod(
            &format!("{reg}/{ns_name}/{m}:{KVER}"),
            KVER,
            &[(m, &[])],
            &[],
        )
        .await?;
    }

    let dir = tempfile::tempdir()?;
    let (controller, agents) =
        leader_and_agents(cp, &ns_name, &nodes, KVER, dir.path(), WAIT).await?;
    let mut targets = vec![Target {
        job: "kmm-controller".into(),
        port: controller.metrics_port,
        labels: BTreeMap::new(),
    }];
    for (node, agent) in nodes.iter().zip(&agents) {
        targets.push(Target {
            job: "kmm-agent".into(),
            port: agent.metrics_port,
            labels: BTreeMap::from([("node".to_string(), node.clone())]),
        });
    }
    let prom = PrometheusProcess::start(&targets, "1s")?;
    prom.wait_up(targets.len(), WAIT).await?;
    println!("controller, agents and prometheus up: {:.1?}", t.elapsed());

    let modules: Api<Module> = Api::namespaced(client.clone(), &ns_name);
    let loaded_everywhere = |name: &'static str| {
        let modules = modules.clone();
        async move {
            kmm_tests::cluster::wait_module(&modules, name, WAIT, |m| {
                m.and_then(|m| m.status.as_ref())
                    .is_some_and(|s| s.module_loader.available_number == 2)
            })
            .await
        }
    };
    let module = |name: &str, image: &str| {
        ModuleBuilder::new(name)
            .selector(group.0, group.1)
            .insecure_mapping(
                "-sim-amd64$",
                &format!("{reg}/{ns_name}/{image}:${{KERNEL_FULL_VERSION}}"),
            )
    };
    // A first load makes the load-phase series; a second one, scraped after
    // it, gives their rates something to show.
    apply_yaml(cp, &ns_name, &module("dasha", "dasha").manifest())?;
    loaded_everywhere("dasha")
        .await
        .with_context(|| agents[0].log())?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    apply_yaml(cp, &ns_name, &module("dashb", "dashb").manifest())?;
    apply_yaml(cp, &ns_name, &module("dashmiss", "never-pushed").manifest())?;
    let apply_json = |object: Value| apply_yaml(cp, &ns_name, &serde_json::to_string(&object)?);
    apply_json(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dash-dockerfile"},
        "data": {"dockerfile": "FROM scratch\n"},
    }))?;
    let built = ModuleBuilder::new("dashbuild")
        .selector(group.0, group.1)
        .push_mapping(json!({
            "regexp": "-sim-amd64$",
            "containerImage": format!("{reg}/{ns_name}/dashbuild:${{KERNEL_FULL_VERSION}}"),
            "registryTLS": {"insecure": true},
            "build": {"dockerfileConfigMap": {"name": "dash-dockerfile"}},
        }))
        .manifest();
    apply_yaml(cp, &ns_name, &built)?;
    // A versioned Module and its rollout: both nodes, on an older version,
    // go from required to done, for the rollout panels.
    let version_label = version_module_label(&ns_name, "dashroll");
    for node in &nodes {
        set_node_label(&client, node, &version_label, Some("v0")).await?;
    }
    let versioned = module("dashroll", "dashroll").version("v1").manifest();
    apply_yaml(cp, &ns_name, &versioned)?;
    apply_json(json!({
        "apiVersion": "rollout.kmm-rs.io/v1alpha1", "kind": "ModuleRollout",
        "metadata": {"name": "dashroll"},
        "spec": {"moduleName": "dashroll", "maxUnavailable": 2},
    }))?;
    loaded_everywhere("dashb")
        .await
        .with_context(|| agents[0].log())?;
    modules.delete("dasha", &DeleteParams::default()).await?;
    kmm_tests::cluster::wait_module(&modules, "dasha", WAIT, |m| m.is_none())
        .await
        .with_context(|| controller.log())?;
    // Everything above scraped: the unload, the failing pulls, the build Job,
    // the rollout done on both nodes.
    wait_for(WAIT, || async {
        let seen = |q: &str| prom.query(q).map(|r| !r.is_empty()).unwrap_or(false);
        Ok(seen("kmm_agent_unload_duration_seconds_count > 0")
            && seen(r#"kmm_agent_module_last_error{reason="ImagePullFailed"}"#)
            && seen(r#"kmm_controller_jobs_created_total{kind="build"} > 0"#)
            && seen(r#"kmm_controller_module_condition{type="ImagesReady"}"#)
            && seen(r#"kmm_rollout_nodes{name="dashroll", state="done"} == 2"#)
            && seen(r#"kmm_rollout_transitions_total{state="done"} > 0"#))
    })
    .await
    .with_context(|| {
        let rollout = cp
            .kubectl_ok(["get", "modulerollout", "-n", &ns_name, "-o", "yaml"])
            .unwrap_or_else(|e| format!("{e:#}"));
        format!(
            "rollouts:\n{rollout}\ncontroller log:\n{}",
            controller.log()
        )
    })?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("run done and scraped: {:.1?}", t.elapsed());

    let d = dashboard()?;
    let values = values(&ns_name);
    let mut failed = Vec::new();
    for p in panels(&d)? {
        if let Err(e) = check_panel(&prom, &p, &values) {
            failed.push(format!("{e:#}"));
        }
    }
    for (name, _, query) in variables(&d).into_iter().filter(|v| v.1 == "query") {
        let promql = substitute(&label_values_promql(&query)?, &values)?;
        if prom.query(&promql)?.is_empty() {
            failed.push(format!("variable {name} lists nothing: {promql}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));

    drop(prom);
    drop(agents);
    for node in &nodes {
        delete_node_and_status(&client, node).await;
    }
    ns.cleanup().await
}

#[tokio::test]
#[ignore = "needs kubectl from hack/controlplane/build.sh"]
async fn the_monitoring_overlay_ships_the_dashboard_for_grafanas_sidecar() -> Result<()> {
    let cp = kmm_tests::controlplane::ControlPlane::shared().await?;
    let rendered = cp.kubectl_ok([
        "kustomize",
        &repo_root()
            .join("deploy/overlays/monitoring")
            .display()
            .to_string(),
    ])?;
    let cm = serde_yaml::Deserializer::from_str(&rendered)
        .map(serde_yaml::Value::deserialize)
        .filter_map(Result::ok)
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "kmm-rs-grafana-dashboard")
        .context("no dashboard ConfigMap in deploy/overlays/monitoring")?;
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["namespace"], "kmm-system");
    let shipped = cm["data"]["kmm-rs.json"]
        .as_str()
        .context("no kmm-rs.json")?;
    assert_eq!(shipped, std::fs::read_to_string(dashboard_path())?);
    Ok(())
}
