//! The alert rules of `deploy/overlays/monitoring/prometheusrule.yaml`, read
//! the way `tests/tests/alert_rules.rs` checks them: the PrometheusRule's
//! `spec` as a Prometheus rules file, its alerts, and the metric names a PromQL
//! expression reads (so a renamed metric cannot silently break an alert).

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_yaml::Value;

use crate::controlplane::repo_root;

/// The PrometheusRule manifest: the only copy of the rules.
pub fn manifest_path() -> PathBuf {
    repo_root().join("deploy/overlays/monitoring/prometheusrule.yaml")
}

/// A Prometheus rules file (`groups:`) made of the PrometheusRule's `spec`.
///
/// # Errors
/// When the manifest is no PrometheusRule with `spec.groups`.
pub fn rules_file(manifest: &str) -> Result<String> {
    let doc: Value = serde_yaml::from_str(manifest).context("parsing the PrometheusRule")?;
    if doc["kind"].as_str() != Some("PrometheusRule") {
        bail!("not a PrometheusRule: kind {:?}", doc["kind"]);
    }
    let spec = doc.get("spec").context("PrometheusRule without spec")?;
    spec.get("groups").context("spec without groups")?;
    Ok(serde_yaml::to_string(spec)?)
}

/// One alerting rule.
#[derive(Debug, Clone)]
pub struct Alert {
    /// `alert`.
    pub name: String,
    /// `expr`.
    pub expr: String,
    /// `labels.severity`.
    pub severity: Option<String>,
    /// `annotations.runbook_url`.
    pub runbook_url: Option<String>,
    /// `annotations.summary` and `description` present.
    pub has_summary_and_description: bool,
}

/// Every alerting rule of a rules file (recording rules are skipped).
///
/// # Errors
/// When the file is not YAML with `groups[].rules[]`.
pub fn alerts(rules_file: &str) -> Result<Vec<Alert>> {
    let doc: Value = serde_yaml::from_str(rules_file)?;
    let groups = doc["groups"].as_sequence().context("no groups")?;
    let mut out = Vec::new();
    for group in groups {
        for rule in group["rules"]
            .as_sequence()
            .context("group without rules")?
        {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let text = |v: &Value| v.as_str().map(str::to_string);
            let ann = &rule["annotations"];
            out.push(Alert {
                name: name.to_string(),
                expr: text(&rule["expr"]).with_context(|| format!("{name}: no expr"))?,
                severity: text(&rule["labels"]["severity"]),
                runbook_url: text(&ann["runbook_url"]),
                has_summary_and_description: ann["summary"].is_string()
                    && ann["description"].is_string(),
            });
        }
    }
    Ok(out)
}

/// Words of PromQL that are not metric names when they stand alone.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` selects: identifiers outside label matchers,
/// ranges, strings and label lists, that are neither functions (followed by
/// `(`) nor keywords.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_until(&chars, i, '}'),
            '[' => i = skip_until(&chars, i, ']'),
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) && called {
                    i = skip_until(&chars, next, ')');
                } else if !called && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            // Numbers and durations (`0`, `1e3`, `5m` outside a range) are no names.
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Index just past the string literal opening at `start` (escapes honoured).
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Index just past the first `close` after `start`, skipping strings.
fn skip_until(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The registered family a selected series belongs to: `x_bucket`, `x_sum`
/// and `x_count` are the series of histogram `x`.
pub fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn names_outside_matchers_ranges_lists_and_calls() {
        assert_eq!(
            names(
                r#"sum by (namespace, pod) (increase(kmm_agent_failures_total{reason!~"a|b"}[15m])) > 2"#
            ),
            ["kmm_agent_failures_total"]
        );
        assert_eq!(
            names(
                r#"x{type="Degraded"} == 1 unless on (namespace, name) y{reason!="Building"} == 0"#
            ),
            ["x", "y"]
        );
        assert_eq!(
            names("(sum(kmm_controller_is_leader) or vector(0)) < 1"),
            ["kmm_controller_is_leader"]
        );
        assert_eq!(names(r#"absent(up{job="kmm-agent"})"#), ["up"]);
        assert_eq!(
            names("histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m]))) > 1e3"),
            ["h_bucket"]
        );
    }

    #[test]
    fn histogram_series_belong_to_their_family() {
        assert_eq!(
            family("kmm_agent_load_duration_seconds_bucket"),
            "kmm_agent_load_duration_seconds"
        );
        assert_eq!(
            family("kmm_agent_failures_total"),
            "kmm_agent_failures_total"
        );
    }
}
