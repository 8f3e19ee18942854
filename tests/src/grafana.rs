//! The Grafana dashboard of `deploy/overlays/monitoring/grafana-dashboard.json`,
//! read the way `tests/tests/grafana_dashboard.rs` checks it: its panels with
//! their PromQL, its variables, and the PromQL a panel runs once Grafana has
//! put the variables' values in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::controlplane::repo_root;

/// The dashboard: the only copy (the overlay's configMapGenerator and the Helm
/// chart ship this file).
pub fn dashboard_path() -> PathBuf {
    repo_root().join("deploy/overlays/monitoring/grafana-dashboard.json")
}

/// One panel that shows data (rows are not panels here).
#[derive(Debug, Clone)]
pub struct Panel {
    /// `id`.
    pub id: u64,
    /// `title`.
    pub title: String,
    /// `type` (`timeseries`, `table`, `stat`, …).
    pub kind: String,
    /// `datasource.uid`.
    pub datasource: String,
    /// Each target's `refId` and `expr`.
    pub targets: Vec<(String, String)>,
}

/// Every data panel, those inside collapsed rows included, in order.
///
/// # Errors
/// When a panel lacks an id, a title or a target's `expr`.
pub fn panels(dashboard: &Value) -> Result<Vec<Panel>> {
    let mut out = Vec::new();
    let top = dashboard["panels"].as_array().context("no panels")?;
    for p in top {
        if p["type"] == "row" {
            for nested in p["panels"].as_array().into_iter().flatten() {
                out.push(panel(nested)?);
            }
        } else {
            out.push(panel(p)?);
        }
    }
    Ok(out)
}

fn panel(p: &Value) -> Result<Panel> {
    let title = p["title"]
        .as_str()
        .context("panel without title")?
        .to_string();
    let targets = p["targets"]
        .as_array()
        .with_context(|| format!("{title}: no targets"))?
        .iter()
        .map(|t| {
            Ok((
                t["refId"].as_str().unwrap_or_default().to_string(),
                t["expr"]
                    .as_str()
                    .with_context(|| format!("{title}: a target without expr"))?
                    .to_string(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Panel {
        id: p["id"]
            .as_u64()
            .with_context(|| format!("{title}: no id"))?,
        kind: p["type"].as_str().unwrap_or_default().to_string(),
        datasource: p["datasource"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        title,
        targets,
    })
}

/// The template variables: (name, type, query).
pub fn variables(dashboard: &Value) -> Vec<(String, String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .unwrap_or_default();
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                v["type"].as_str().unwrap_or_default().to_string(),
                query.to_string(),
            )
        })
        .collect()
}

/// The PromQL behind Grafana's `label_values(<selector>, <label>)`: the
/// values are the `<label>` of `count by (<label>) (<selector>)`.
///
/// # Errors
/// When `query` is not a `label_values` call with a selector.
pub fn label_values_promql(query: &str) -> Result<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .with_context(|| format!("not label_values(…): {query}"))?;
    let Some((selector, label)) = inner.rsplit_once(',') else {
        bail!("label_values without a selector: {query}");
    };
    Ok(format!("count by ({}) ({})", label.trim(), selector.trim()))
}

/// `expr` with each `$name` / `${name}` replaced by `values[name]`; Grafana's
/// built-ins (`$__rate_interval`, …) are values too. Longer names first, so
/// `$node` never eats the start of `$nodes`.
///
/// # Errors
/// When a `$` is left that no value replaced.
pub fn substitute(expr: &str, values: &BTreeMap<&str, &str>) -> Result<String> {
    let mut names: Vec<&&str> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_string();
    for name in names {
        let v = values[*name];
        out = out.replace(&format!("${{{name}}}"), v);
        out = out.replace(&format!("${name}"), v);
    }
    if out.contains('$') {
        bail!("a variable is left in {out}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_becomes_a_count_by_the_label() {
        assert_eq!(
            label_values_promql(r#"label_values(m{namespace=~"$namespace"}, name)"#).unwrap(),
            r#"count by (name) (m{namespace=~"$namespace"})"#
        );
        assert!(label_values_promql("query_result(up)").is_err());
    }

    #[test]
    fn variables_are_replaced_longest_name_first_and_none_may_be_left() {
        let values = BTreeMap::from([("node", "a"), ("nodes", "b"), ("__rate_interval", "5m")]);
        assert_eq!(
            substitute(
                "x{n=~\"$node\", m=~\"${nodes}\"}[$__rate_interval] $nodes",
                &values
            )
            .unwrap(),
            "x{n=~\"a\", m=~\"b\"}[5m] b"
        );
        assert!(substitute("x{n=~\"$module\"}", &values).is_err());
    }
}
