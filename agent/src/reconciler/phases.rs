//! Where the time of one load goes, from the watch event that made the Module
//! wanted to the node's `.ready` label: consecutive phases, each ending where
//! the next starts, so they add up to the whole. Observed into
//! `kmm_agent_load_phase_seconds{phase}` once the label is written, so every
//! phase is observed exactly once per load that got that far.

use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// One phase of a load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Watch event seen → the pass that dispatched the load starts (the
    /// loop's coalescing delay, a pass in progress).
    Watch,
    /// Pass start → the Module's worker runs (kernel re-check, plan, dispatch).
    Decide,
    /// Pull secret, manifests and blobs (an image already cached: its lookup).
    Pull,
    /// Unpacking the layers (0 for an image already unpacked).
    Extract,
    /// Checks of the image, waiting for the kernel lock, the kernel steps
    /// (a replace's unload included) and the state file.
    Kernel,
    /// Recorded → NodeModulesConfig status written (the events, the next pass).
    Status,
    /// Status written → `.ready` label written.
    Label,
    /// Not a phase: the whole, watch event → label (for its quantiles).
    Total,
}

impl Phase {
    /// Every phase, in order, then [`Phase::Total`].
    pub const ALL: [Phase; 8] = [
        Phase::Watch,
        Phase::Decide,
        Phase::Pull,
        Phase::Extract,
        Phase::Kernel,
        Phase::Status,
        Phase::Label,
        Phase::Total,
    ];

    /// The `phase` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Watch => "watch",
            Phase::Decide => "decide",
            Phase::Pull => "pull",
            Phase::Extract => "extract",
            Phase::Kernel => "kernel",
            Phase::Status => "status",
            Phase::Label => "label",
            Phase::Total => "total",
        }
    }
}

/// The phases of one load so far.
#[derive(Debug, Clone)]
pub struct LoadPhases {
    origin: Instant,
    last: Instant,
    done: Vec<(Phase, Duration)>,
}

impl LoadPhases {
    /// A load dispatched by the pass that started at `pass_at`, woken by a
    /// watch event seen at `event_at` (none: a resync, a retry or a worker's
    /// end woke it, and the watch phase is 0).
    pub fn new(event_at: Option<Instant>, pass_at: Instant) -> Self {
        let origin = event_at.unwrap_or(pass_at).min(pass_at);
        Self {
            origin,
            last: pass_at,
            done: vec![(Phase::Watch, pass_at - origin)],
        }
    }

    /// `phase` ended now.
    pub fn mark(&mut self, phase: Phase) {
        let now = Instant::now();
        self.done
            .push((phase, now.saturating_duration_since(self.last)));
        self.last = now;
    }

    /// The pull ended now, `extract` of it spent unpacking.
    pub fn mark_pull(&mut self, extract: Duration) {
        let now = Instant::now();
        let whole = now.saturating_duration_since(self.last);
        let extract = extract.min(whole);
        self.done.push((Phase::Pull, whole - extract));
        self.done.push((Phase::Extract, extract));
        self.last = now;
    }

    /// Whether `phase` has ended.
    pub fn has(&self, phase: Phase) -> bool {
        self.done.iter().any(|(p, _)| *p == phase)
    }

    /// The phases ended so far, in order.
    pub fn phases(&self) -> impl Iterator<Item = Phase> + '_ {
        self.done.iter().map(|(p, _)| *p)
    }

    /// Observes every phase ended so far and the total.
    pub fn observe(&self, metrics: &Metrics) {
        for (phase, d) in &self.done {
            metrics.observe_load_phase(phase.as_str(), *d);
        }
        metrics.observe_load_phase(
            Phase::Total.as_str(),
            self.last.saturating_duration_since(self.origin),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_to_the_total() {
        let pass = Instant::now();
        let event = pass.checked_sub(Duration::from_millis(300));
        let mut p = LoadPhases::new(event, pass);
        p.mark(Phase::Decide);
        p.mark_pull(Duration::from_secs(3600));
        p.mark(Phase::Kernel);
        assert!(p.has(Phase::Extract) && !p.has(Phase::Status));
        let sum: Duration = p.done.iter().map(|(_, d)| *d).sum();
        assert_eq!(sum, p.last - p.origin);
        // An extraction longer than the pull it was part of is capped.
        assert!(p.done.iter().all(|(_, d)| *d <= p.last - p.origin));
    }
}
