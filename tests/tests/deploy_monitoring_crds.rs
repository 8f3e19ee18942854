//! The ServiceMonitors of `deploy/overlays/monitoring` are valid against the
//! real ServiceMonitor CRD, the one prometheus-operator generates and ships in
//! its Go module (`hack/monitoring/fetch-crds.sh` takes it from there; this
//! test never downloads, see `kmm_tests::monitoring`).
//!
//! The CRD is installed on the test API server (server-side apply under the
//! tests' field manager, once per process, never deleted: it is cluster-scoped
//! and other tests may use it). The overlay is rendered with `kubectl
//! kustomize` into this test's own namespace and its ServiceMonitors are
//! really applied there (server-side, `--validate=strict`, i.e.
//! `fieldValidation=Strict`): not a dry run, so what the server stored can be
//! read back and compared, which also shows that no field was pruned as
//! unknown. Then ServiceMonitors broken in one way each (a misspelt endpoint
//! field, a malformed interval, a wrong type, a missing required field) must
//! be refused with the offending field named, and not stored.
//!
//! The PrometheusRule of the overlay (the alert rules) is applied the same
//! way against the real PrometheusRule CRD and read back unchanged; its
//! contents are tested with promtool in `alert_rules.rs`.
//!
//! Needs the binaries from `bash hack/controlplane/build.sh`.

use anyhow::{Context, Result};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::deploy::render_deploy_dir_overlay;
use kmm_tests::monitoring::ensure_crds;
use serde_json::{Value, json};

/// `kubectl apply --server-side --validate=strict -n ns -f -`; returns
/// (success, stdout, stderr).
fn apply_strict(cp: &ControlPlane, ns: &str, docs: &[Value]) -> Result<(bool, String, String)> {
    let yaml = docs
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<Vec<_>, _>>()?
        .join("---\n");
    let out = cp.kubectl_with_stdin(
        [
            "apply",
            "--server-side",
            "--validate=strict",
            "--field-manager=kmm-tests",
            "-n",
            ns,
            "-f",
            "-",
        ],
        &yaml,
    )?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Every field of `want` is in `got` with the same value (the server may add
/// defaults, but must not drop or change anything).
fn assert_contains(got: &Value, want: &Value, path: &str) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                let gv = g.get(k).unwrap_or(&Value::Null);
                assert_contains(gv, wv, &format!("{path}.{k}"));
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{path}: {got} vs {want}");
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                assert_contains(gv, wv, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(got, want, "{path} as stored"),
    }
}

#[tokio::test]
async fn monitoring_overlay_servicemonitors_pass_the_real_crd_and_broken_ones_do_not() -> Result<()>
{
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let ns = cp.temp_namespace("mon-crd").await?;
    let name = ns.name().to_string();

    let monitors: Vec<Value> = render_deploy_dir_overlay(cp, "overlays/monitoring", &name, "")?
        .into_iter()
        .filter(|d| d["kind"] == "ServiceMonitor")
        .collect();
    let mut names: Vec<&str> = monitors
        .iter()
        .filter_map(|m| m["metadata"]["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["kmm-agent", "kmm-controller"], "{monitors:#?}");
    for m in &monitors {
        assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(m["metadata"]["namespace"], name.as_str());
        // Installed into another namespace, they must select the Services
        // there: no namespaceSelector (its own namespace) or exactly this one.
        let selector = &m["spec"]["namespaceSelector"];
        assert!(
            selector.is_null() || selector["matchNames"] == serde_json::json!([name]),
            "{} selects Services elsewhere: {selector}",
            m["metadata"]["name"]
        );
    }

    // Accepted, without warnings, twice (idempotent), and stored as written.
    for round in 1..=2 {
        let (ok, stdout, stderr) = apply_strict(cp, &name, &monitors)?;
        assert!(
            ok,
            "round {round}: the overlay's ServiceMonitors were refused:\n{stderr}"
        );
        assert_eq!(stderr.trim(), "", "round {round}: warnings on stderr");
        for n in &names {
            assert!(
                stdout.contains(&format!(
                    "servicemonitor.monitoring.coreos.com/{n} serverside-applied"
                )),
                "round {round}: {n} missing from:\n{stdout}"
            );
        }
    }
    for m in &monitors {
        let n = m["metadata"]["name"].as_str().context("name")?;
        let stored: Value = serde_json::from_str(&cp.kubectl_ok([
            "get",
            "servicemonitor",
            "-n",
            &name,
            n,
            "-o",
            "json",
        ])?)?;
        assert_contains(&stored["spec"], &m["spec"], &format!("{n}.spec"));
        assert_eq!(stored["spec"]["endpoints"][0]["port"], "metrics");
        assert_eq!(stored["spec"]["endpoints"][0]["interval"], "30s");
    }

    // Broken ServiceMonitors: each one refused, naming the field, and not stored.
    let agent = monitors
        .iter()
        .find(|m| m["metadata"]["name"] == "kmm-agent")
        .context("kmm-agent ServiceMonitor")?;
    type Breaker = fn(&mut Value);
    let cases: [(&str, Breaker, &str); 4] = [
        (
            "broken-unknown-field",
            |m| m["spec"]["endpoints"][0]["scrapeTimout"] = json!("10s"),
            ".spec.endpoints[0].scrapeTimout: field not declared in schema",
        ),
        (
            "broken-interval",
            |m| m["spec"]["endpoints"][0]["interval"] = json!("30 seconds"),
            "spec.endpoints[0].interval in body should match",
        ),
        (
            "broken-port-type",
            |m| m["spec"]["endpoints"][0]["port"] = json!(8081),
            ".spec.endpoints[0].port: expected string",
        ),
        (
            "broken-no-selector",
            |m| {
                if let Some(spec) = m["spec"].as_object_mut() {
                    spec.remove("selector");
                }
            },
            "spec.selector: Required value",
        ),
    ];
    for (broken_name, brk, expected) in cases {
        let mut doc = agent.clone();
        doc["metadata"]["name"] = json!(broken_name);
        brk(&mut doc);
        let (ok, stdout, stderr) = apply_strict(cp, &name, &[doc])?;
        assert!(!ok, "{broken_name} was accepted:\n{stdout}");
        assert!(
            stderr.contains(expected),
            "{broken_name}: expected {expected:?} in:\n{stderr}"
        );
        let get = cp.kubectl(["get", "servicemonitor", "-n", &name, broken_name]);
        assert!(!get.status.success(), "{broken_name} was stored");
        eprintln!("{broken_name}: refused: {}", stderr.trim());
    }

    ns.cleanup().await
}

#[tokio::test]
async fn monitoring_overlay_prometheusrule_passes_the_real_crd() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let ns = cp.temp_namespace("mon-rule").await?;
    let name = ns.name().to_string();
    let rules: Vec<Value> = render_deploy_dir_overlay(cp, "overlays/monitoring", &name, "")?
        .into_iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1, "{rules:#?}");
    let rule = &rules[0];
    assert_eq!(rule["metadata"]["namespace"], name.as_str());
    let (ok, stdout, stderr) = apply_strict(cp, &name, &rules)?;
    assert!(ok, "the overlay's PrometheusRule was refused:\n{stderr}");
    assert_eq!(stderr.trim(), "", "warnings on stderr");
    assert!(
        stdout.contains("prometheusrule.monitoring.coreos.com/kmm-rs serverside-applied"),
        "{stdout}"
    );
    let stored: Value = serde_json::from_str(&cp.kubectl_ok([
        "get",
        "prometheusrule",
        "-n",
        &name,
        "kmm-rs",
        "-o",
        "json",
    ])?)?;
    assert_contains(&stored["spec"], &rule["spec"], "kmm-rs.spec");

    // A misspelt rule field is refused, naming it.
    let mut broken = rule.clone();
    broken["metadata"]["name"] = json!("broken-rule");
    broken["spec"]["groups"][0]["rules"][0]["fore"] = json!("10m");
    let (ok, stdout, stderr) = apply_strict(cp, &name, &[broken])?;
    assert!(!ok, "a rule with an unknown field was accepted:\n{stdout}");
    assert!(stderr.contains("fore"), "{stderr}");
    ns.cleanup().await
}
