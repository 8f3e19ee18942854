//! A ModuleRollout's spec read against its Module: the numbers and switches the planner
//! applies, or the sentence saying why the rollout cannot run (no node is touched then).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kmm_common::{Module, ModuleRolloutSpec, RolloutStrategy};
use kube::core::Selector;

use crate::plugin::Kind;

/// Upgrading and validating give up after this long unless `validation.timeoutSeconds` says
/// otherwise.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 600;

/// What the planner applies, resolved once per pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The Module's `container.version`.
    pub target: String,
    /// `maxUnavailable` as written (resolved against the scope by [`max_unavailable`]).
    pub max_unavailable: Budget,
    /// At most this many nodes between cordon and done.
    pub max_parallel: usize,
    /// No node starts once this many are `failed`.
    pub max_failed: usize,
    /// No node starts.
    pub paused: bool,
    /// Cordon nodes before the swap.
    pub cordon: bool,
    /// `waitForPods`: its timeout in seconds (0: forever), when set.
    pub wait_for_pods: Option<i64>,
    /// `eviction`: its timeout in seconds (0: forever) and `force`, when set.
    pub eviction: Option<(i64, bool)>,
    /// The node label that says the Module's device plugin or DRA driver is Ready there,
    /// when `validation.waitForPluginReady`.
    pub plugin_ready_label: Option<String>,
    /// A validation Job runs on each node.
    pub validation_job: bool,
    /// Upgrading, rebooting and validating each give up after this many seconds.
    pub timeout_seconds: i64,
    /// Unload or Reboot.
    pub strategy: RolloutStrategy,
}

/// `maxUnavailable`: a count, or a percentage of the nodes in scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// This many nodes.
    Count(usize),
    /// This percentage of the nodes in scope, rounded down.
    Percent(usize),
}

/// `maxUnavailable` for `total` nodes in scope: at least 1, so a rollout always moves.
pub fn max_unavailable(budget: Budget, total: usize) -> usize {
    match budget {
        Budget::Count(n) => n,
        Budget::Percent(p) => total.saturating_mul(p) / 100,
    }
    .max(1)
}

/// Reads `maxUnavailable` (default 1).
///
/// # Errors
/// A sentence naming the value when it is neither a positive count nor `N%`.
pub fn budget(value: Option<&IntOrString>) -> Result<Budget, String> {
    let bad = |v: &str| {
        format!("spec.maxUnavailable {v:?} is neither a count >= 1 nor a percentage like \"20%\"")
    };
    match value {
        None => Ok(Budget::Count(1)),
        Some(IntOrString::Int(n)) => usize::try_from(*n)
            .ok()
            .filter(|n| *n >= 1)
            .map(Budget::Count)
            .ok_or_else(|| bad(&n.to_string())),
        Some(IntOrString::String(s)) => {
            let parsed = match s.trim().strip_suffix('%') {
                Some(p) => p.trim().parse::<usize>().ok().map(Budget::Percent),
                None => s.trim().parse::<usize>().ok().map(Budget::Count),
            };
            parsed
                .filter(|b| !matches!(b, Budget::Count(0) | Budget::Percent(0)))
                .filter(|b| !matches!(b, Budget::Percent(p) if *p > 100))
                .ok_or_else(|| bad(s))
        }
    }
}

/// The rollout's `nodeSelector` as a matcher (none: every node of the Module).
///
/// # Errors
/// A sentence when an expression cannot be read (an unknown operator).
pub fn node_selector(spec: &ModuleRolloutSpec) -> Result<Option<Selector>, String> {
    spec.node_selector
        .clone()
        .map(|s| {
            Selector::try_from(s).map_err(|e| format!("spec.nodeSelector cannot be read: {e}"))
        })
        .transpose()
}

/// Pod selectors of `waitForPods` and `eviction`, checked the same way.
///
/// # Errors
/// As [`node_selector`], naming the field.
pub fn pod_selector(
    field: &str,
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<Selector, String> {
    Selector::try_from(selector.clone()).map_err(|e| format!("{field} cannot be read: {e}"))
}

/// The policy of `spec` for `module` (`None` when the Module does not exist).
///
/// # Errors
/// What makes the rollout impossible, as a sentence naming the field: Module missing or
/// being deleted, no `container.version`, a bad `maxUnavailable`, selectors that cannot be
/// read, `waitForPluginReady` without a plugin. (A cordon needs no toleration: the agent lets
/// the load through the cordon's taint while the node's `upgrade-state` is in progress,
/// `kmm_common::check_node_taints`.)
pub fn resolve(spec: &ModuleRolloutSpec, module: Option<&Module>) -> Result<Policy, String> {
    let name = &spec.module_name;
    let module = module.ok_or_else(|| format!("Module {name} does not exist"))?;
    if module.metadata.deletion_timestamp.is_some() {
        return Err(format!("Module {name} is being deleted"));
    }
    let target = module
        .spec
        .module_loader
        .as_ref()
        .map(|l| l.container.version.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            format!(
                "Module {name} has no spec.moduleLoader.container.version: a rollout moves nodes to that version"
            )
        })?;
    let max_unavailable = budget(spec.max_unavailable.as_ref())?;
    node_selector(spec)?;
    if let Some(w) = &spec.wait_for_pods {
        pod_selector("spec.waitForPods.podSelector", &w.pod_selector)?;
    }
    if let Some(e) = &spec.eviction {
        pod_selector("spec.eviction.podSelector", &e.pod_selector)?;
    }
    let cordon = spec.cordon.unwrap_or(true);
    let validation = spec.validation.clone().unwrap_or_default();
    let plugin_ready_label = if validation.wait_for_plugin_ready {
        let ns = module.metadata.namespace.as_deref().unwrap_or_default();
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.wanted(module))
            .ok_or_else(|| {
                format!(
                    "spec.validation.waitForPluginReady is true but Module {name} has neither spec.devicePlugin nor spec.dra"
                )
            })?;
        Some(kind.ready_label(ns, name))
    } else {
        None
    };
    let positive = |v: Option<i32>| v.and_then(|n| usize::try_from(n).ok()).unwrap_or(1).max(1);
    Ok(Policy {
        target,
        max_unavailable,
        max_parallel: positive(spec.max_parallel),
        max_failed: positive(spec.max_failed),
        paused: spec.paused,
        cordon,
        wait_for_pods: spec
            .wait_for_pods
            .as_ref()
            .map(|w| w.timeout_seconds.unwrap_or(0)),
        eviction: spec
            .eviction
            .as_ref()
            .map(|e| (e.timeout_seconds.unwrap_or(0), e.force)),
        plugin_ready_label,
        validation_job: validation.job.is_some(),
        timeout_seconds: validation
            .timeout_seconds
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS),
        strategy: spec.strategy,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn module(extra: serde_json::Value) -> Module {
        let mut m = serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "Module",
            "metadata": {"name": "gpu", "namespace": "ns"},
            "spec": {
                "selector": {},
                "moduleLoader": {"container": {
                    "version": "v2",
                    "modprobe": {"moduleName": "gpu"},
                    "kernelMappings": [{"regexp": ".", "containerImage": "r/gpu:1"}],
                }},
            },
        });
        if let serde_json::Value::Object(extra) = extra {
            for (k, v) in extra {
                m["spec"][k] = v;
            }
        }
        serde_json::from_value(m).unwrap()
    }

    fn spec(v: serde_json::Value) -> ModuleRolloutSpec {
        let mut s = serde_json::json!({"moduleName": "gpu"});
        if let serde_json::Value::Object(extra) = v {
            for (k, v) in extra {
                s[k] = v;
            }
        }
        serde_json::from_value(s).unwrap()
    }

    #[test]
    fn defaults_are_one_at_a_time_with_cordon() {
        let p = resolve(
            &spec(serde_json::json!({})),
            Some(&module(serde_json::json!({}))),
        )
        .unwrap();
        assert_eq!(p.target, "v2");
        assert_eq!(p.max_unavailable, Budget::Count(1));
        assert_eq!((p.max_parallel, p.max_failed), (1, 1));
        assert!(p.cordon);
        assert_eq!(p.timeout_seconds, DEFAULT_TIMEOUT_SECONDS);
    }

    #[test]
    fn max_unavailable_reads_counts_and_percentages_and_names_bad_values() {
        let s = |v: serde_json::Value| serde_json::from_value::<IntOrString>(v).unwrap();
        assert_eq!(budget(Some(&s(serde_json::json!(5)))), Ok(Budget::Count(5)));
        assert_eq!(
            budget(Some(&s(serde_json::json!("20%")))),
            Ok(Budget::Percent(20))
        );
        assert_eq!(
            budget(Some(&s(serde_json::json!("3")))),
            Ok(Budget::Count(3))
        );
        for bad in [
            serde_json::json!(0),
            serde_json::json!("x%"),
            serde_json::json!("0%"),
            serde_json::json!("150%"),
        ] {
            let err = budget(Some(&s(bad.clone()))).unwrap_err();
            assert!(err.contains("spec.maxUnavailable"), "{bad}: {err}");
        }
    }

    #[test]
    fn what_makes_a_rollout_impossible_is_said_exactly() {
        let ok = module(serde_json::json!({}));
        let err = |s: serde_json::Value, m: Option<&Module>| resolve(&spec(s), m).unwrap_err();
        assert_eq!(
            err(serde_json::json!({}), None),
            "Module gpu does not exist"
        );
        let mut unversioned = ok.clone();
        if let Some(l) = unversioned.spec.module_loader.as_mut() {
            l.container.version = String::new();
        }
        assert!(err(serde_json::json!({}), Some(&unversioned)).contains("container.version"));
        assert!(
            err(serde_json::json!({"maxUnavailable": "lots"}), Some(&ok))
                .contains("spec.maxUnavailable \"lots\"")
        );
        // A Module without a toleration of the cordon's taint rolls out with cordon: true.
        let intolerant = module(serde_json::json!({"tolerations": []}));
        assert!(resolve(&spec(serde_json::json!({})), Some(&intolerant)).is_ok());
        let why = err(
            serde_json::json!({"validation": {"waitForPluginReady": true}}),
            Some(&ok),
        );
        assert!(
            why.contains("neither spec.devicePlugin nor spec.dra"),
            "{why}"
        );
        let why = err(
            serde_json::json!({"eviction": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}}),
            Some(&ok),
        );
        assert!(why.contains("spec.eviction.podSelector"), "{why}");
    }

    #[test]
    fn wait_for_plugin_ready_reads_the_plugins_node_label() {
        let m = module(serde_json::json!({"devicePlugin": {"container": {"image": "r/dp:1"}}}));
        let p = resolve(
            &spec(serde_json::json!({"validation": {"waitForPluginReady": true}})),
            Some(&m),
        )
        .unwrap();
        assert_eq!(
            p.plugin_ready_label.as_deref(),
            Some("kmm.node.kubernetes.io/ns.gpu.device-plugin-ready")
        );
    }
}
