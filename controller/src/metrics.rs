//! Prometheus metrics of the controller, owned by its context (no globals).

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// A reconcile is a handful of API calls: milliseconds, seconds when the API server is slow.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The controller's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: IntCounter,
    /// Failed reconciles by reason ([`crate::Error::metric_label`]).
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub is_leader: IntGauge,
    /// Module status writes (only when the status changed).
    pub status_writes: IntCounter,
    /// Build and sign Jobs created, by kind (`build`, `sign`). Two replicas
    /// never both count one Job: a create that finds it existing is not counted.
    pub jobs_created: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    ///
    /// # Errors
    /// Only if two metrics had the same name, a programming error.
    pub fn new() -> Result<Self, prometheus::Error> {
        let m = Self {
            registry: Registry::new(),
            reconciles: IntCounter::new("kmm_controller_reconciles_total", "Module reconciles")?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "kmm_controller_reconcile_errors_total",
                    "Failed Module reconciles by reason",
                ),
                &["reason"],
            )?,
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "kmm_controller_reconcile_duration_seconds",
                    "Duration of Module reconciles",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
            )?,
            is_leader: IntGauge::new(
                "kmm_controller_is_leader",
                "1 while this replica holds the leader Lease",
            )?,
            status_writes: IntCounter::new(
                "kmm_controller_status_writes_total",
                "Module status writes (only when the status changed)",
            )?,
            jobs_created: IntCounterVec::new(
                Opts::new(
                    "kmm_controller_jobs_created_total",
                    "Build and sign Jobs created, by kind",
                ),
                &["kind"],
            )?,
        };
        m.registry.register(Box::new(m.reconciles.clone()))?;
        m.registry.register(Box::new(m.reconcile_errors.clone()))?;
        m.registry
            .register(Box::new(m.reconcile_duration.clone()))?;
        m.registry.register(Box::new(m.is_leader.clone()))?;
        m.registry.register(Box::new(m.status_writes.clone()))?;
        m.registry.register(Box::new(m.jobs_created.clone()))?;
        Ok(m)
    }

    /// Counts a reconcile and times it until the guard drops.
    pub fn start_reconcile(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            histogram: self.reconcile_duration.clone(),
            start: Instant::now(),
        }
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Observes the reconcile duration when dropped (also on early returns).
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_counts_and_observes_on_drop() {
        let m = Metrics::new().unwrap();
        {
            let _t = m.start_reconcile();
        }
        m.reconcile_errors.with_label_values(&["kube_api"]).inc();
        m.is_leader.set(1);
        let text = m.render();
        for line in [
            "kmm_controller_reconciles_total 1",
            "kmm_controller_reconcile_duration_seconds_count 1",
            "kmm_controller_reconcile_errors_total{reason=\"kube_api\"} 1",
            "kmm_controller_is_leader 1",
            "kmm_controller_status_writes_total 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
