//! The alert rules of `deploy/overlays/monitoring/prometheusrule.yaml` (the
//! only copy; `kmm_tests::prom_rules` reads it):
//!
//! - `promtool check rules` accepts them, and `promtool test rules` passes
//!   `tests/alerts/rules_test.yaml`, synthetic series with the exact metric
//!   names and labels, where every alert fires once with its rendered
//!   annotations checked, and stays silent in another case;
//! - every metric an expression reads is registered by the agent or the
//!   controller and listed in docs/metrics.md, so a rename breaks this test
//!   rather than the alert;
//! - every alert has a severity, a summary and description, a runbook anchor
//!   that exists in docs/troubleshooting.md, and a line in docs/metrics.md.
//!
//! Needs `promtool` (Debian's `prometheus` package, installed by
//! hack/setup.sh); no cluster.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use kmm_tests::controlplane::repo_root;
use kmm_tests::prom_rules::{self, Alert, family, metric_names};
use serde_yaml::Value;

/// Metrics Prometheus itself gives every target.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn read(rel: &str) -> Result<String> {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn rules() -> Result<(String, Vec<Alert>)> {
    let manifest = std::fs::read_to_string(prom_rules::manifest_path())?;
    let file = prom_rules::rules_file(&manifest)?;
    let alerts = prom_rules::alerts(&file)?;
    anyhow::ensure!(!alerts.is_empty(), "no alert in the PrometheusRule");
    Ok((file, alerts))
}

fn promtool(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running promtool (Debian package prometheus; bash hack/setup.sh)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "promtool {} failed ({}):\n{text}",
            args.join(" "),
            out.status
        );
    }
    Ok(text)
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() -> Result<()> {
    let (file, _) = rules()?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("rules.yaml"), &file)?;
    std::fs::write(
        dir.path().join("rules_test.yaml"),
        read("tests/alerts/rules_test.yaml")?,
    )?;
    let checked = promtool(dir.path(), &["check", "rules", "rules.yaml"])?;
    eprintln!("{checked}");
    let tested = promtool(dir.path(), &["test", "rules", "rules_test.yaml"])?;
    eprintln!("{tested}");
    assert!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

#[test]
fn every_alert_is_tested_firing_and_silent() -> Result<()> {
    let (_, alerts) = rules()?;
    let tests: Value = serde_yaml::from_str(&read("tests/alerts/rules_test.yaml")?)?;
    let (mut fires, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for group in tests["tests"].as_sequence().context("no tests")? {
        for case in group["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().context("alertname")?.to_string();
            match case["exp_alerts"].as_sequence() {
                Some(exp) if !exp.is_empty() => {
                    // Annotations are compared only when given: require them.
                    for e in exp {
                        anyhow::ensure!(
                            e["exp_annotations"].is_mapping(),
                            "{name}: a firing case without exp_annotations"
                        );
                    }
                    fires.insert(name)
                }
                _ => silent.insert(name),
            };
        }
    }
    for a in &alerts {
        assert!(
            fires.contains(&a.name),
            "{}: no case where it fires",
            a.name
        );
        assert!(
            silent.contains(&a.name),
            "{}: no case where it stays silent",
            a.name
        );
    }
    let known: BTreeSet<&String> = alerts.iter().map(|a| &a.name).collect();
    for name in fires.iter().chain(&silent) {
        assert!(
            known.contains(name),
            "rules_test.yaml tests an unknown alert {name}"
        );
    }
    Ok(())
}

#[test]
fn alert_expressions_read_only_metrics_the_code_registers() -> Result<()> {
    let (_, alerts) = rules()?;
    let code = [
        read("agent/src/metrics.rs")?,
        read("controller/src/metrics.rs")?,
    ]
    .join("\n");
    let docs = read("docs/metrics.md")?;
    for a in &alerts {
        let names = metric_names(&a.expr);
        assert!(!names.is_empty(), "{}: no metric in {:?}", a.name, a.expr);
        for name in names {
            if PROMETHEUS_OWN.contains(&name.as_str()) {
                continue;
            }
            let registered = family(&name);
            assert!(
                code.contains(&format!("\"{registered}\"")),
                "{}: {name} is registered by neither agent/src/metrics.rs nor \
                 controller/src/metrics.rs (renamed?)",
                a.name
            );
            assert!(
                docs.contains(&format!("`{registered}`")),
                "{}: {registered} is not listed in docs/metrics.md",
                a.name
            );
        }
    }
    Ok(())
}

#[test]
fn every_alert_has_severity_text_runbook_and_docs() -> Result<()> {
    let (_, alerts) = rules()?;
    let troubleshooting = read("docs/troubleshooting.md")?;
    let anchors: BTreeSet<String> = troubleshooting
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let metrics_doc = read("docs/metrics.md")?;
    for a in &alerts {
        assert!(
            matches!(a.severity.as_deref(), Some("critical" | "warning" | "info")),
            "{}: severity {:?}",
            a.name,
            a.severity
        );
        assert!(
            a.has_summary_and_description,
            "{}: summary/description",
            a.name
        );
        let url = a.runbook_url.as_deref().unwrap_or_default();
        let anchor = url
            .strip_prefix("docs/troubleshooting.md#")
            .with_context(|| format!("{}: runbook_url {url:?}", a.name))?;
        assert!(
            anchors.contains(anchor),
            "{}: docs/troubleshooting.md has no heading for #{anchor}",
            a.name
        );
        assert!(
            metrics_doc.contains(&format!("`{}`", a.name)),
            "{}: not listed in docs/metrics.md",
            a.name
        );
    }
    Ok(())
}
