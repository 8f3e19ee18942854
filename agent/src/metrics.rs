//! Prometheus metrics of the agent, owned by its context (no globals), so tests
//! can assert on a fresh registry.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Buckets for kernel operations and pulls: module loads take ~10 ms on hardware,
/// ~100 ms under emulation; pulls of large driver images take tens of seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

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
        Ok(m)
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
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
