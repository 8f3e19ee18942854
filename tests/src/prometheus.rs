//! A real Prometheus (Debian's `prometheus` package) scraping processes of
//! this test run on loopback, and its HTTP query API: dashboards and alerts
//! are checked against series Prometheus really scraped and stored, not
//! against text the test wrote.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::agent::{free_port, http_get};

/// One scrape target on loopback.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `job` label (`kmm-agent`, `kmm-controller`, as the ServiceMonitors set it).
    pub job: String,
    /// Its /metrics port on 127.0.0.1.
    pub port: u16,
    /// Labels added to its series (e.g. `node`, as the ServiceMonitors add it).
    pub labels: BTreeMap<String, String>,
}

/// One sample of an instant query's result.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The series' labels (none for a scalar).
    pub metric: BTreeMap<String, String>,
    /// Its value (`NaN` when Prometheus says so).
    pub value: f64,
}

/// A running Prometheus; killed on drop.
#[derive(Debug)]
pub struct PrometheusProcess {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The scrape configuration of `targets`, one scrape config per job, every
/// `interval`; `honor_labels` as the ServiceMonitors set it (a Module's
/// `namespace` stays the Module's).
fn config(targets: &[Target], interval: &str) -> Result<String> {
    let mut jobs: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for t in targets {
        jobs.entry(&t.job).or_default().push(serde_json::json!({
            "targets": [format!("127.0.0.1:{}", t.port)],
            "labels": t.labels,
        }));
    }
    let scrape_configs: Vec<Value> = jobs
        .into_iter()
        .map(|(job, static_configs)| {
            serde_json::json!({
                "job_name": job,
                "honor_labels": true,
                "static_configs": static_configs,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": scrape_configs,
    });
    Ok(serde_yaml::to_string(&doc)?)
}

impl PrometheusProcess {
    /// Starts `prometheus` scraping `targets` every `interval` (e.g. `1s`),
    /// listening on a free loopback port, its data in a temporary directory.
    ///
    /// # Errors
    /// If `prometheus` is not installed or cannot be started.
    pub fn start(targets: &[Target], interval: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(&conf, config(targets, interval)?)?;
        let port = free_port()?;
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context(
                "starting prometheus (Debian package `prometheus`, installed by hack/setup.sh)",
            )?;
        Ok(Self {
            child,
            port,
            log,
            _dir: dir,
        })
    }

    /// Prometheus' own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The result of the instant query `expr` now.
    ///
    /// # Errors
    /// If Prometheus does not answer, or refuses the query (its error is returned).
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        let body = http_get(
            self.port,
            &format!("/api/v1/query?query={}", percent_encode(expr)),
        )
        .with_context(|| format!("query {expr}"))?;
        parse_answer(&body).with_context(|| format!("query {expr}"))
    }

    /// Waits until `up` is 1 for `targets` targets.
    ///
    /// # Errors
    /// On timeout, with Prometheus' log.
    pub async fn wait_up(&self, targets: usize, timeout: Duration) -> Result<()> {
        crate::cluster::wait_for(timeout, || async {
            Ok(self.query("up == 1").map(|r| r.len()).unwrap_or(0) >= targets)
        })
        .await
        .with_context(|| format!("prometheus log:\n{}", self.log()))
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The samples of a `/api/v1/query` answer (vector or scalar).
fn parse_answer(body: &str) -> Result<Vec<Sample>> {
    let doc: Value = serde_json::from_str(body).context("answer is not JSON")?;
    if doc["status"] != "success" {
        bail!("{}: {}", doc["errorType"], doc["error"]);
    }
    let value = |v: &Value| -> Result<f64> {
        let text = v[1].as_str().context("sample value is not a string")?;
        text.parse::<f64>()
            .with_context(|| format!("sample value {text:?}"))
    };
    let data = &doc["data"];
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .context("vector without result")?
            .iter()
            .map(|s| {
                Ok(Sample {
                    metric: serde_json::from_value(s["metric"].clone())?,
                    value: value(&s["value"])?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            metric: BTreeMap::new(),
            value: value(&data["result"])?,
        }]),
        other => bail!("unexpected result type {other:?}"),
    }
}

/// `s` encoded for a URL query value (RFC 3986 unreserved characters kept).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"sum by (le) (x{a=~"b.*"}[5m])"#),
            "sum%20by%20%28le%29%20%28x%7Ba%3D~%22b.%2A%22%7D%5B5m%5D%29"
        );
    }

    #[test]
    fn vector_scalar_and_error_answers_are_read() {
        let v = parse_answer(
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"node":"a"},"value":[1.5,"NaN"]}]}}"#,
        )
        .unwrap();
        assert_eq!(v[0].metric["node"], "a");
        assert!(v[0].value.is_nan());
        let s = parse_answer(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"2"]}}"#,
        )
        .unwrap();
        assert_eq!(s[0].value, 2.0);
        let e = parse_answer(r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("parse error"), "{e}");
    }

    #[test]
    fn one_scrape_config_per_job_with_its_labels() {
        let t = |job: &str, port, node: &str| Target {
            job: job.into(),
            port,
            labels: BTreeMap::from([("node".into(), node.into())]),
        };
        let yaml = config(
            &[
                t("kmm-agent", 1, "a"),
                t("kmm-agent", 2, "b"),
                t("kmm-controller", 3, ""),
            ],
            "1s",
        )
        .unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let jobs = doc["scrape_configs"].as_sequence().unwrap();
        assert_eq!(jobs.len(), 2, "{yaml}");
        assert_eq!(jobs[0]["job_name"], "kmm-agent");
        assert_eq!(jobs[0]["static_configs"][1]["targets"][0], "127.0.0.1:2");
        assert_eq!(jobs[0]["static_configs"][1]["labels"]["node"], "b");
    }
}
