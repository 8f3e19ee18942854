//! Prometheus metrics of the agent, owned by its context (no globals), so tests
//! can assert on a fresh registry.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::reconciler::module_state::ModuleSeries;
use crate::state::ModuleKey;

/// Buckets for kernel operations and pulls: module loads take ~10 ms on hardware,
/// ~100 ms under emulation; pulls of large driver images take tens of seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// `kmm_agent_failures_total` reasons of the agent's own reports (besides [`kmm_common::Reason`]).
pub const PUBLISH_FAILURES: [&str; 2] = ["StatusWriteFailed", "NodeLabelFailed"];

/// The agent's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Modules loaded by this agent, per Module (1 when loaded).
    pub modules_loaded: IntGaugeVec,
    /// Time to load a Module's kernel modules (in-tree removal and firmware included).
    pub load_duration: Histogram,
    /// Time to unload a Module's kernel modules.
    pub unload_duration: Histogram,
    /// Time to pull and unpack an image.
    pub pull_duration: Histogram,
    /// Bytes downloaded from registries.
    pub pulled_bytes: IntCounter,
    /// Failures by reason (see `metric_label()` of the error types).
    pub failures: IntCounterVec,
    /// Reconcile passes.
    pub reconciles: IntCounter,
    /// Phases of a load, watch event to `.ready` label (`reconciler::phases`).
    pub load_phase: HistogramVec,
    /// Each Module's state here, with the kernel ([`Metrics::set_module_series`]).
    module_state: IntGaugeVec,
    /// The reason of each Module's last error here ([`Metrics::set_module_series`]).
    module_last_error: IntGaugeVec,
    /// What the two gauges above show now, so a change removes the old series.
    module_series: Arc<Mutex<BTreeMap<ModuleKey, ModuleSeries>>>,
    /// Bytes held by the image cache.
    pub image_cache_bytes: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    ///
    /// # Errors
    /// Only if two metrics had the same name, a programming error.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let hist = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()))
        };
        let m = Self {
            modules_loaded: IntGaugeVec::new(
                Opts::new(
                    "kmm_agent_modules_loaded",
                    "Modules loaded by this agent (1 per loaded Module)",
                ),
                &["namespace", "name"],
            )?,
            load_duration: hist(
                "kmm_agent_load_duration_seconds",
                "Time to load a Module's kernel modules",
            )?,
            unload_duration: hist(
                "kmm_agent_unload_duration_seconds",
                "Time to unload a Module's kernel modules",
            )?,
            pull_duration: hist(
                "kmm_agent_pull_duration_seconds",
                "Time to pull and unpack a kmod image",
            )?,
            pulled_bytes: IntCounter::new(
                "kmm_agent_pulled_bytes_total",
                "Bytes downloaded from registries",
            )?,
            failures: IntCounterVec::new(
                Opts::new("kmm_agent_failures_total", "Failed operations by reason"),
                &["reason"],
            )?,
            reconciles: IntCounter::new(
                "kmm_agent_reconciles_total",
                "Reconcile passes over all Modules",
            )?,
            load_phase: HistogramVec::new(
                HistogramOpts::new(
                    "kmm_agent_load_phase_seconds",
                    "Time of each phase of a load, from the watch event to the ready label",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["phase"],
            )?,
            module_state: IntGaugeVec::new(
                Opts::new(
                    "kmm_agent_module_state",
                    "Each Module's state on this node (1), with the kernel it is loaded for",
                ),
                &["namespace", "name", "kernel", "state"],
            )?,
            module_last_error: IntGaugeVec::new(
                Opts::new(
                    "kmm_agent_module_last_error",
                    "The reason of each Module's last error on this node (1) while it lasts",
                ),
                &["namespace", "name", "reason"],
            )?,
            module_series: Arc::default(),
            image_cache_bytes: IntGauge::new(
                "kmm_agent_image_cache_bytes",
                "Bytes held by the agent's image cache (unpacked images and blobs)",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.modules_loaded.clone()))?;
        m.registry.register(Box::new(m.load_duration.clone()))?;
        m.registry.register(Box::new(m.unload_duration.clone()))?;
        m.registry.register(Box::new(m.pull_duration.clone()))?;
        m.registry.register(Box::new(m.pulled_bytes.clone()))?;
        m.registry.register(Box::new(m.failures.clone()))?;
        m.registry.register(Box::new(m.reconciles.clone()))?;
        m.registry.register(Box::new(m.load_phase.clone()))?;
        m.registry.register(Box::new(m.module_state.clone()))?;
        m.registry.register(Box::new(m.module_last_error.clone()))?;
        m.registry.register(Box::new(m.image_cache_bytes.clone()))?;
        // Every failure reason at 0 from the start: `increase()` and `rate()`
        // (alerts, the dashboard) see a failure only against an earlier sample.
        let reasons = kmm_common::reason::ALL
            .iter()
            .filter(|r| !r.is_wait())
            .map(|r| r.as_str());
        for reason in reasons.chain(PUBLISH_FAILURES) {
            m.failures.with_label_values(&[reason]);
        }
        Ok(m)
    }

    /// Makes `kmm_agent_module_state` and `kmm_agent_module_last_error` show
    /// `series`: a Module's old series goes when its state, kernel or error
    /// changes, and all of it when the Module is no longer here.
    pub fn set_module_series(&self, series: BTreeMap<ModuleKey, ModuleSeries>) {
        let mut shown = crate::reconciler::lock(&self.module_series);
        for (key, old) in shown.iter() {
            if series.get(key) == Some(old) {
                continue;
            }
            let (ns, name) = (key.namespace.as_str(), key.name.as_str());
            let _ =
                self.module_state
                    .remove_label_values(&[ns, name, &old.kernel, old.state.as_str()]);
            if let Some(reason) = &old.error {
                let _ = self
                    .module_last_error
                    .remove_label_values(&[ns, name, reason]);
            }
        }
        for (key, new) in &series {
            let (ns, name) = (key.namespace.as_str(), key.name.as_str());
            self.module_state
                .with_label_values(&[ns, name, &new.kernel, new.state.as_str()])
                .set(1);
            if let Some(reason) = &new.error {
                self.module_last_error
                    .with_label_values(&[ns, name, reason])
                    .set(1);
            }
        }
        *shown = series;
    }

    /// Observes `d` for load phase `phase`.
    pub fn observe_load_phase(&self, phase: &str, d: Duration) {
        self.load_phase
            .with_label_values(&[phase])
            .observe(d.as_secs_f64());
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_family_with_units() {
        let m = Metrics::new().unwrap();
        m.modules_loaded.with_label_values(&["ns", "brd"]).set(1);
        m.failures.with_label_values(&["pull"]).inc();
        m.load_duration.observe(0.2);
        m.observe_load_phase("pull", Duration::from_millis(20));
        let text = m.render();
        for name in [
            "kmm_agent_modules_loaded{name=\"brd\",namespace=\"ns\"} 1",
            "kmm_agent_failures_total{reason=\"pull\"} 1",
            "kmm_agent_load_duration_seconds_count 1",
            "kmm_agent_pulled_bytes_total 0",
            "kmm_agent_reconciles_total 0",
            "kmm_agent_load_phase_seconds_count{phase=\"pull\"} 1",
            "kmm_agent_image_cache_bytes 0",
            "kmm_agent_failures_total{reason=\"ImagePullFailed\"} 0",
            "kmm_agent_failures_total{reason=\"NodeLabelFailed\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        assert!(
            !text.contains("WaitingForImage"),
            "a wait is no failure:\n{text}"
        );
    }

    #[test]
    fn module_series_follow_the_module_and_go_with_it() {
        use crate::reconciler::module_state::ModuleState;
        let m = Metrics::new().unwrap();
        let key = ModuleKey::new("ns", "brd");
        let series = |state, error: Option<&str>| {
            BTreeMap::from([(
                key.clone(),
                ModuleSeries {
                    kernel: "6.1.0-57".into(),
                    state,
                    error: error.map(str::to_string),
                },
            )])
        };
        m.set_module_series(series(ModuleState::Loading, None));
        m.set_module_series(series(ModuleState::Failed, Some("ImagePullFailed")));
        let text = m.render();
        let state = r#"kmm_agent_module_state{kernel="6.1.0-57",name="brd",namespace="ns","#;
        assert!(
            text.contains(&format!(r#"{state}state="failed"}} 1"#)),
            "{text}"
        );
        assert!(
            !text.contains(r#"state="loading""#),
            "old state kept:\n{text}"
        );
        assert!(
            text.contains(
                r#"kmm_agent_module_last_error{name="brd",namespace="ns",reason="ImagePullFailed"} 1"#
            ),
            "{text}"
        );
        m.set_module_series(series(ModuleState::Loaded, None));
        let text = m.render();
        assert!(
            text.contains(&format!(r#"{state}state="loaded"}} 1"#)),
            "{text}"
        );
        assert!(
            !text.contains("kmm_agent_module_last_error{"),
            "error kept:\n{text}"
        );
        m.set_module_series(BTreeMap::new());
        assert!(
            !m.render().contains("kmm_agent_module_state{"),
            "gone Module kept"
        );
    }
}
