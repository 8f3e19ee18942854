//! Taints and tolerations, upstream's rule for new loads only.
//!
//! Upstream KMM targets a node only when the Module tolerates each of its
//! `NoSchedule` and `NoExecute` taints, so a cordon (or a not-ready taint)
//! unloads the driver on a node that still runs workloads (upstream #1271,
//! #1333). kmm-rs keeps the rule for loading, so dedicated nodes stay
//! untouched, but the agent never unloads because of a taint: a taint
//! blocks a load, never keeps a loaded module from staying.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

use super::Ineligible;
use crate::Module;

/// Effects that keep a load off a node (`PreferNoSchedule` does not, as upstream).
const BLOCKING_EFFECTS: [&str; 2] = ["NoSchedule", "NoExecute"];

/// Kubernetes' `Toleration.ToleratesTaint`: effect (empty tolerates every effect), key
/// (empty with `Exists` tolerates every key), then `Equal` (the default) compares values.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

/// The first `NoSchedule`/`NoExecute` taint in `taints` that no toleration tolerates.
pub fn untolerated_taint<'a>(tolerations: &[Toleration], taints: &'a [Taint]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| BLOCKING_EFFECTS.contains(&t.effect.as_str()))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// The taint the node lifecycle controller puts on a cordoned (unschedulable) node.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// [`check_taints`] for `module` on `node`, with one exception: while a `ModuleRollout` has
/// the node in progress for this Module (its `upgrade-state` label), the cordon's own taint
/// does not block the load: the rollout cordoned the node to swap this driver, and the new
/// version must load there before it uncordons.
///
/// # Errors
/// [`Ineligible::UntoleratedTaint`] naming the first taint that blocks the load.
pub fn check_node_taints(module: &Module, node: &Node) -> Result<(), Ineligible> {
    let taints = node_taints(node);
    if !rollout_in_progress(module, node) {
        return check_taints(module, taints);
    }
    let others: Vec<Taint> = taints
        .iter()
        .filter(|t| t.key != UNSCHEDULABLE_TAINT)
        .cloned()
        .collect();
    check_taints(module, &others)
}

fn rollout_in_progress(module: &Module, node: &Node) -> bool {
    let (Some(ns), Some(name)) = (&module.metadata.namespace, &module.metadata.name) else {
        return false;
    };
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(&crate::labels::upgrade_state_label(ns, name)))
        .and_then(|v| crate::labels::UpgradeState::parse(v))
        .is_some_and(crate::labels::UpgradeState::in_progress)
}

/// The node's taints (`spec.taints`; none when absent).
pub fn node_taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// Whether `module` may load onto a node with `taints`.
///
/// # Errors
/// [`Ineligible::UntoleratedTaint`] naming the first taint that blocks the load.
pub fn check_taints(module: &Module, taints: &[Taint]) -> Result<(), Ineligible> {
    match untolerated_taint(&module.spec.tolerations, taints) {
        None => Ok(()),
        Some(t) => Err(Ineligible::UntoleratedTaint { taint: describe(t) }),
    }
}

/// `key=value:Effect`, as `kubectl taint` writes it (`key:Effect` without a value).
pub fn describe(t: &Taint) -> String {
    match t.value.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => format!("{}={v}:{}", t.key, t.effect),
        None => format!("{}:{}", t.key, t.effect),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    #[test]
    fn toleration_matching_follows_kubernetes() {
        let t = taint("gpu", Some("a100"), "NoSchedule");
        let cases = [
            (tol(Some("gpu"), None, Some("a100"), None), true),
            (
                tol(Some("gpu"), Some("Equal"), Some("a100"), Some("NoSchedule")),
                true,
            ),
            (tol(Some("gpu"), Some("Equal"), Some("h100"), None), false),
            (tol(Some("gpu"), Some("Exists"), None, None), true),
            (
                tol(Some("gpu"), Some("Exists"), None, Some("NoExecute")),
                false,
            ),
            (tol(None, Some("Exists"), None, None), true),
            (tol(Some("other"), Some("Exists"), None, None), false),
            (tol(Some("gpu"), Some("Bogus"), Some("a100"), None), false),
        ];
        for (i, (toleration, want)) in cases.iter().enumerate() {
            assert_eq!(tolerates(toleration, &t), *want, "case {i}: {toleration:?}");
        }
    }

    #[test]
    fn only_no_schedule_and_no_execute_block() {
        let taints = [
            taint("soft", None, "PreferNoSchedule"),
            taint("node.kubernetes.io/unschedulable", None, "NoSchedule"),
        ];
        let blocking = untolerated_taint(&[], &taints).map(describe);
        assert_eq!(
            blocking.as_deref(),
            Some("node.kubernetes.io/unschedulable:NoSchedule")
        );
        assert_eq!(untolerated_taint(&[], &taints[..1]), None);
        let exec = [taint("dedicated", Some("db"), "NoExecute")];
        assert_eq!(
            untolerated_taint(&[], &exec).map(describe).as_deref(),
            Some("dedicated=db:NoExecute")
        );
        let all = [tol(None, Some("Exists"), None, None)];
        assert_eq!(untolerated_taint(&all, &exec), None);
    }

    #[test]
    fn a_rollout_in_progress_lets_its_module_load_through_its_own_cordon_only() {
        let module: Module = serde_yaml::from_str(
            "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {name: m, namespace: ns}\nspec: {selector: {}, moduleLoader: {container: {modprobe: {moduleName: m}, kernelMappings: [{literal: k, containerImage: i}]}}}\n",
        )
        .unwrap();
        let node = |state: Option<&str>, taints: Vec<Taint>| {
            let mut n = Node::default();
            n.metadata.labels = state
                .map(|s| [(crate::labels::upgrade_state_label("ns", "m"), s.to_string())].into());
            n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
                taints: Some(taints),
                ..Default::default()
            });
            n
        };
        let cordon = || vec![taint(UNSCHEDULABLE_TAINT, None, "NoSchedule")];
        // A plain cordon keeps new loads off, as upstream.
        assert!(check_node_taints(&module, &node(None, cordon())).is_err());
        assert!(check_node_taints(&module, &node(Some("done"), cordon())).is_err());
        // In progress: the cordon's taint does not block, any other still does.
        assert!(check_node_taints(&module, &node(Some("upgrading"), cordon())).is_ok());
        let mut both = cordon();
        both.push(taint("dedicated", Some("db"), "NoSchedule"));
        assert!(check_node_taints(&module, &node(Some("validating"), both)).is_err());
        // Another Module's rollout does not count.
        let mut other = node(None, cordon());
        other.metadata.labels = Some(
            [(
                crate::labels::upgrade_state_label("ns", "other"),
                "upgrading".to_string(),
            )]
            .into(),
        );
        assert!(check_node_taints(&module, &other).is_err());
    }
}
