//! Prometheus metrics of the controller, owned by its context (no globals).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use kmm_common::Module;
use kube::ResourceExt;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// A reconcile is a handful of API calls: milliseconds, seconds when the API server is slow.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `kmm_controller_reconcile_errors_total` reasons ([`crate::Error::metric_label`]; a
/// deletion waiting for nodes is not counted).
const RECONCILE_ERRORS: [&str; 4] = [
    "kube_api",
    "invalid_module",
    "invalid_preflight",
    "finalizer",
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
    /// ModuleRollout nodes per state (`total`, `required`, `in_progress`, `done`, `failed`,
    /// `skipped`, `unavailable`), per rollout ([`Metrics::set_rollout_nodes`]).
    pub rollout_nodes: IntGaugeVec,
    /// Node transitions made by rollouts, by the state entered.
    pub rollout_transitions: IntCounterVec,
    /// Failed rollout passes by reason ([`crate::rollout::Error::metric_label`]).
    pub rollout_errors: IntCounterVec,
    /// Admission requests answered, by `webhook` (the path without
    /// `/validate-`) and `result` ([`WebhookResult`]).
    pub webhook_requests: IntCounterVec,
    /// Every Module's conditions (1 True, 0 False), recounted with the
    /// upstream gauges: what alerts name a Module by.
    module_conditions: IntGaugeVec,
    /// Each Module's nodes per state ([`Metrics::set_module_nodes`]).
    module_nodes: IntGaugeVec,
    /// Modules with `module_nodes` series, so a Module gone loses them.
    module_nodes_shown: Arc<Mutex<BTreeSet<(String, String)>>>,
    /// Upstream KMM's gauges over all Modules, same names and labels, so
    /// dashboards made for upstream keep working ([`Metrics::count_modules`]).
    upstream: UpstreamGauges,
}

/// Upstream KMM's `kmm_*_num` and `kmm_modprobe_*args` gauges.
#[derive(Clone)]
struct UpstreamGauges {
    modules: IntGauge,
    in_cluster_build: IntGauge,
    in_cluster_sign: IntGauge,
    device_plugin: IntGauge,
    preflights: IntGauge,
    modprobe_args: IntGaugeVec,
    modprobe_raw_args: IntGaugeVec,
}

impl UpstreamGauges {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            modules: IntGauge::new("kmm_module_num", "Number of existing KMMO Modules")?,
            in_cluster_build: IntGauge::new(
                "kmm_in_cluster_build_num",
                "Number of existing KMMO Modules with in-cluster Build defined",
            )?,
            in_cluster_sign: IntGauge::new(
                "kmm_in_cluster_sign_num",
                "Number of existing KMMO Modules with in-cluster Sign defined",
            )?,
            device_plugin: IntGauge::new(
                "kmm_device_plugin_num",
                "Number of existing KMMO Modules with DevicePlugin defined",
            )?,
            preflights: IntGauge::new("kmm_preflight_num", "Number of existing KMMO Preflights")?,
            modprobe_args: IntGaugeVec::new(
                Opts::new(
                    "kmm_modprobe_args",
                    "for a given kernel version, describe which modprobe args used (if at all)",
                ),
                &["name", "namespace", "modprobeArgs"],
            )?,
            modprobe_raw_args: IntGaugeVec::new(
                Opts::new(
                    "kmm_modprobe_raw_args",
                    "for a given kernel version, describe which modprobe raw args used (if at all)",
                ),
                &["name", "namespace", "modprobeRawArgs"],
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.modules.clone()))?;
        registry.register(Box::new(self.in_cluster_build.clone()))?;
        registry.register(Box::new(self.in_cluster_sign.clone()))?;
        registry.register(Box::new(self.device_plugin.clone()))?;
        registry.register(Box::new(self.preflights.clone()))?;
        registry.register(Box::new(self.modprobe_args.clone()))?;
        registry.register(Box::new(self.modprobe_raw_args.clone()))
    }
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
            rollout_nodes: IntGaugeVec::new(
                Opts::new("kmm_rollout_nodes", "ModuleRollout nodes per state"),
                &["namespace", "name", "state"],
            )?,
            rollout_transitions: IntCounterVec::new(
                Opts::new(
                    "kmm_rollout_transitions_total",
                    "Node upgrade-state transitions made by ModuleRollouts, by the state entered",
                ),
                &["state"],
            )?,
            rollout_errors: IntCounterVec::new(
                Opts::new(
                    "kmm_rollout_reconcile_errors_total",
                    "Failed ModuleRollout passes by reason",
                ),
                &["reason"],
            )?,
            webhook_requests: IntCounterVec::new(
                Opts::new(
                    "kmm_controller_webhook_requests_total",
                    "Admission requests answered, by webhook and result (allowed, denied, error)",
                ),
                &["webhook", "result"],
            )?,
            module_conditions: IntGaugeVec::new(
                Opts::new(
                    "kmm_controller_module_condition",
                    "A Module's status condition: 1 when True, 0 when False, with its reason",
                ),
                &["namespace", "name", "type", "reason"],
            )?,
            module_nodes: IntGaugeVec::new(
                Opts::new(
                    "kmm_controller_module_nodes",
                    "A Module's nodes per state: matching, desired, loaded, waiting, not_ready, failed",
                ),
                &["namespace", "name", "state"],
            )?,
            module_nodes_shown: Arc::default(),
            upstream: UpstreamGauges::new()?,
        };
        m.registry.register(Box::new(m.reconciles.clone()))?;
        m.registry.register(Box::new(m.reconcile_errors.clone()))?;
        m.registry
            .register(Box::new(m.reconcile_duration.clone()))?;
        m.registry.register(Box::new(m.is_leader.clone()))?;
        m.registry.register(Box::new(m.status_writes.clone()))?;
        m.registry.register(Box::new(m.jobs_created.clone()))?;
        m.registry.register(Box::new(m.rollout_nodes.clone()))?;
        m.registry
            .register(Box::new(m.rollout_transitions.clone()))?;
        m.registry.register(Box::new(m.rollout_errors.clone()))?;
        m.registry.register(Box::new(m.webhook_requests.clone()))?;
        m.registry.register(Box::new(m.module_conditions.clone()))?;
        m.registry.register(Box::new(m.module_nodes.clone()))?;
        m.upstream.register(&m.registry)?;
        // Every label value at 0 from the start: `increase()` and `rate()`
        // (alerts, the dashboard) see a change only against an earlier sample.
        for reason in RECONCILE_ERRORS {
            m.reconcile_errors.with_label_values(&[reason]);
        }
        for kind in ["build", "sign"] {
            m.jobs_created.with_label_values(&[kind]);
        }
        for state in kmm_common::UpgradeState::ALL {
            m.rollout_transitions.with_label_values(&[state.as_str()]);
        }
        for reason in crate::rollout::Error::METRIC_LABELS {
            m.rollout_errors.with_label_values(&[reason]);
        }
        for path in crate::webhook::handlers::PATHS {
            let webhook = crate::webhook::handlers::webhook_label(path);
            for result in [
                WebhookResult::Allowed,
                WebhookResult::Denied,
                WebhookResult::Error,
            ] {
                m.webhook_requests
                    .with_label_values(&[webhook, result.as_str()]);
            }
        }
        Ok(m)
    }

    /// Sets upstream KMM's gauges from every Module (upstream's rules: build
    /// or sign at the container level or in any kernel mapping; `modprobe`
    /// load args joined with ","), and `kmm_controller_module_condition` from
    /// their status. Series of Modules gone or changed go too.
    pub fn count_modules<'a>(&self, modules: impl IntoIterator<Item = &'a Module>) {
        let g = &self.upstream;
        let (mut all, mut build, mut sign, mut device_plugin) = (0, 0, 0, 0);
        g.modprobe_args.reset();
        g.modprobe_raw_args.reset();
        self.module_conditions.reset();
        let mut present = BTreeSet::new();
        for m in modules {
            all += 1;
            present.insert((m.namespace().unwrap_or_default(), m.name_any()));
            self.set_conditions(m);
            device_plugin += i64::from(m.spec.device_plugin.is_some());
            let Some(loader) = &m.spec.module_loader else {
                continue;
            };
            let c = &loader.container;
            build +=
                i64::from(c.build.is_some() || c.kernel_mappings.iter().any(|k| k.build.is_some()));
            sign +=
                i64::from(c.sign.is_some() || c.kernel_mappings.iter().any(|k| k.sign.is_some()));
            let (name, ns) = (m.name_any(), m.namespace().unwrap_or_default());
            if let Some(args) = &c.modprobe.args {
                g.modprobe_args
                    .with_label_values(&[&name, &ns, &args.load.join(",")])
                    .set(1);
            }
            if let Some(raw) = &c.modprobe.raw_args {
                g.modprobe_raw_args
                    .with_label_values(&[&name, &ns, &raw.load.join(",")])
                    .set(1);
            }
        }
        self.forget_module_nodes_except(&present);
        g.modules.set(all);
        g.in_cluster_build.set(build);
        g.in_cluster_sign.set(sign);
        g.device_plugin.set(device_plugin);
    }

    fn set_conditions(&self, m: &Module) {
        let (name, ns) = (m.name_any(), m.namespace().unwrap_or_default());
        for c in m.status.iter().flat_map(|s| &s.conditions) {
            self.module_conditions
                .with_label_values(&[&ns, &name, &c.type_, &c.reason])
                .set(i64::from(c.status == "True"));
        }
    }

    /// Sets `kmm_controller_module_nodes` of Module `ns/name` (written with its status).
    pub fn set_module_nodes(&self, ns: &str, name: &str, counts: &crate::status::NodeCounts) {
        for (state, n) in counts.by_state() {
            self.module_nodes
                .with_label_values(&[ns, name, state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.module_nodes_shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((ns.to_string(), name.to_string()));
    }

    /// Removes the `kmm_controller_module_nodes` series of Modules not in `present`.
    fn forget_module_nodes_except(&self, present: &BTreeSet<(String, String)>) {
        let mut shown = self
            .module_nodes_shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (ns, name) in shown.iter().filter(|m| !present.contains(*m)) {
            for (state, _) in crate::status::NodeCounts::default().by_state() {
                let _ = self.module_nodes.remove_label_values(&[ns, name, state]);
            }
        }
        shown.retain(|m| present.contains(m));
    }

    /// Counts one admission answer.
    pub fn count_webhook(&self, webhook: &str, result: WebhookResult) {
        self.webhook_requests
            .with_label_values(&[webhook, result.as_str()])
            .inc();
    }

    /// Sets upstream KMM's `kmm_preflight_num` to the number of PreflightValidations (upstream
    /// sets 1 once it reconciled any; the count says the same and more).
    pub fn count_preflights(&self, n: usize) {
        self.upstream
            .preflights
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets `kmm_rollout_nodes` of rollout `ns/name` (`None`: the rollout is gone, its
    /// series go too).
    pub fn set_rollout_nodes(&self, ns: &str, name: &str, counts: Option<&kmm_common::NodeCounts>) {
        let states = [
            "total",
            "required",
            "in_progress",
            "done",
            "failed",
            "skipped",
            "unavailable",
        ];
        for state in states {
            let _ = self.rollout_nodes.remove_label_values(&[ns, name, state]);
        }
        let Some(c) = counts else { return };
        let values = [
            c.total,
            c.required,
            c.in_progress,
            c.done,
            c.failed,
            c.skipped,
            c.unavailable,
        ];
        for (state, v) in states.into_iter().zip(values) {
            self.rollout_nodes
                .with_label_values(&[ns, name, state])
                .set(i64::from(v));
        }
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

/// How an admission request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// Admitted (warnings included).
    Allowed,
    /// Refused on its merits (403).
    Denied,
    /// Not judged: an undecodable request, or a lookup the decision needed
    /// failed (the webhook fails closed).
    Error,
}

impl WebhookResult {
    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Error => "error",
        }
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

    fn module(ns: &str, name: &str, spec: serde_json::Value) -> Module {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "Module",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }))
        .unwrap()
    }

    fn loader(container: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"selector": {}, "moduleLoader": {"container": container}})
    }

    #[test]
    fn upstream_gauges_count_modules_like_upstream() {
        let plain = module(
            "a",
            "plain",
            loader(serde_json::json!({
                "modprobe": {"moduleName": "plain"},
                "kernelMappings": [{"regexp": ".", "containerImage": "r/x:1"}],
            })),
        );
        // Build in a mapping only, sign at the container level, raw args.
        let built = module(
            "a",
            "built",
            loader(serde_json::json!({
                "modprobe": {"rawArgs": {"load": ["-v", "built"]}},
                "sign": {"keySecret": {"name": "k"}, "certSecret": {"name": "c"}},
                "kernelMappings": [{"regexp": ".", "containerImage": "r/y:1",
                    "build": {"dockerfileConfigMap": {"name": "d"}}}],
            })),
        );
        let mut with_args = loader(serde_json::json!({
            "modprobe": {"moduleName": "gpu", "args": {"load": ["-v", "--first-time"]}},
            "kernelMappings": [{"regexp": ".", "containerImage": "r/z:1"}],
        }));
        with_args["devicePlugin"] = serde_json::json!({"container": {"image": "r/dp:1"}});
        let gpu = module("b", "gpu", with_args);

        let m = Metrics::new().unwrap();
        m.count_modules([&plain, &built, &gpu]);
        let text = m.render();
        for line in [
            "kmm_module_num 3",
            "kmm_in_cluster_build_num 1",
            "kmm_in_cluster_sign_num 1",
            "kmm_device_plugin_num 1",
            r#"kmm_modprobe_args{modprobeArgs="-v,--first-time",name="gpu",namespace="b"} 1"#,
            r#"kmm_modprobe_raw_args{modprobeRawArgs="-v,built",name="built",namespace="a"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // A Module gone takes its series with it.
        m.count_modules([&plain]);
        let text = m.render();
        assert!(text.contains("kmm_module_num 1"), "{text}");
        assert!(!text.contains("name=\"gpu\""), "{text}");
    }

    #[test]
    fn module_conditions_are_gauges_named_by_module_type_and_reason() {
        let mut m = module(
            "a",
            "brd",
            loader(serde_json::json!({
                "modprobe": {"moduleName": "brd"},
                "kernelMappings": [{"regexp": ".", "containerImage": "r/x:1"}],
            })),
        );
        m.status = Some(
            serde_json::from_value(serde_json::json!({"conditions": [
                {"type": "Ready", "status": "False", "reason": "ImagePullFailed", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Stalled", "status": "True", "reason": "ImagePullFailed", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ]}))
            .unwrap(),
        );
        let metrics = Metrics::new().unwrap();
        metrics.count_modules([&m]);
        let text = metrics.render();
        for line in [
            r#"kmm_controller_module_condition{name="brd",namespace="a",reason="ImagePullFailed",type="Ready"} 0"#,
            r#"kmm_controller_module_condition{name="brd",namespace="a",reason="ImagePullFailed",type="Stalled"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // A Module gone (or a reason changed) takes its series with it.
        metrics.count_modules([]);
        assert!(
            !metrics
                .render()
                .contains("kmm_controller_module_condition{")
        );
    }

    #[test]
    fn counters_start_at_zero_for_every_label_value() {
        let text = Metrics::new().unwrap().render();
        for line in [
            r#"kmm_controller_reconcile_errors_total{reason="finalizer"} 0"#,
            r#"kmm_controller_jobs_created_total{kind="sign"} 0"#,
            r#"kmm_controller_webhook_requests_total{result="error",webhook="preflightvalidation"} 0"#,
            r#"kmm_rollout_transitions_total{state="cordoned"} 0"#,
            r#"kmm_rollout_reconcile_errors_total{reason="invalid_rollout"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn module_nodes_are_per_state_and_go_with_the_module() {
        let m = Metrics::new().unwrap();
        let counts = crate::status::NodeCounts {
            matching: 3,
            desired: 2,
            loaded: 1,
            waiting: 1,
            not_ready: 0,
            failed: 1,
        };
        m.set_module_nodes("a", "brd", &counts);
        m.set_module_nodes("a", "gone", &counts);
        let brd = module("a", "brd", serde_json::json!({"selector": {}}));
        m.count_modules([&brd]);
        let text = m.render();
        for line in [
            r#"kmm_controller_module_nodes{name="brd",namespace="a",state="desired"} 2"#,
            r#"kmm_controller_module_nodes{name="brd",namespace="a",state="failed"} 1"#,
            r#"kmm_controller_module_nodes{name="brd",namespace="a",state="not_ready"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"name="gone""#),
            "a deleted Module's series stay:\n{text}"
        );
    }

    #[test]
    fn webhook_answers_are_counted_by_webhook_and_result() {
        let m = Metrics::new().unwrap();
        m.count_webhook("module", WebhookResult::Denied);
        m.count_webhook("module", WebhookResult::Error);
        m.count_webhook("namespace", WebhookResult::Allowed);
        let text = m.render();
        for line in [
            r#"kmm_controller_webhook_requests_total{result="denied",webhook="module"} 1"#,
            r#"kmm_controller_webhook_requests_total{result="error",webhook="module"} 1"#,
            r#"kmm_controller_webhook_requests_total{result="allowed",webhook="namespace"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn preflight_gauge_has_upstreams_name_and_help() {
        let m = Metrics::new().unwrap();
        let text = m.render();
        assert!(
            text.contains("# HELP kmm_preflight_num Number of existing KMMO Preflights\n"),
            "{text}"
        );
        assert!(text.contains("kmm_preflight_num 0\n"), "{text}");
        m.count_preflights(2);
        assert!(m.render().contains("kmm_preflight_num 2\n"));
    }

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
