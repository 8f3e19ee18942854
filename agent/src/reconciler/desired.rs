//! From Modules and this Node to what this node needs, using the shared pure
//! targeting rules of `kmm-common` (selector, kernel mapping, version label).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kmm_common::{Ineligible, Module, ResolvedMapping, check_node_taints, target_node};

use crate::plan::{Desired, DesiredLoad, RegistryAccess};
use crate::state::{FirstTime, ModuleKey};

/// The desired state of every Module the agent knows of.
#[derive(Debug, Default)]
pub struct DesiredSet {
    /// By Module.
    pub map: BTreeMap<ModuleKey, Desired>,
}

impl DesiredSet {
    /// Whether the Module should be loaded here.
    pub fn wants(&self, key: &ModuleKey) -> bool {
        matches!(
            self.map.get(key),
            Some(Desired::Load(_) | Desired::Stage(_))
        )
    }

    /// Whether what runs for the Module here may go on: wanted, or kept as it is
    /// (an ordered upgrade waiting for its label). A load under way for a kept
    /// Module finishes, as upstream's worker does with an unchanged NMC.
    pub fn lets_run(&self, key: &ModuleKey) -> bool {
        matches!(
            self.map.get(key),
            Some(Desired::Load(_) | Desired::Keep(_) | Desired::Stage(_))
        )
    }
}

/// Whether a `ModuleRollout` with `strategy: Reboot` has this node in `rebooting` for the
/// Module (the controller's `upgrade-state` label).
fn rebooting(labels: &BTreeMap<String, String>, key: &ModuleKey) -> bool {
    labels
        .get(&kmm_common::upgrade_state_label(&key.namespace, &key.name))
        .and_then(|v| kmm_common::UpgradeState::parse(v))
        == Some(kmm_common::UpgradeState::Rebooting)
}

/// What each Module needs on `node`, whose running kernel is `kernel`
/// (the running kernel wins over the Node's reported one).
pub fn desired_for_node(modules: &[Arc<Module>], node: &Node, kernel: &str) -> DesiredSet {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let mut set = DesiredSet::default();
    for m in modules {
        let (Some(ns), Some(name)) = (m.metadata.namespace.clone(), m.metadata.name.clone()) else {
            continue;
        };
        let key = ModuleKey::new(ns, name);
        let desired = if m.metadata.deletion_timestamp.is_some() {
            Desired::Absent("Module is being deleted".to_string())
        } else {
            match target_node(m, labels, kernel) {
                // A taint keeps new loads off the node but never unloads:
                // a cordon or a not-ready taint must not take a driver away.
                Ok(_) if let Err(why) = check_node_taints(m, node) => {
                    Desired::Keep(why.to_string())
                }
                // A Reboot rollout moved the label: the next boot loads it.
                Ok(target) if rebooting(labels, &key) => {
                    Desired::Stage(Box::new(to_load(m, &target)))
                }
                Ok(target) => Desired::Load(Box::new(to_load(m, &target))),
                // Upstream's ordered upgrade: a version label naming another
                // version than the Module's keeps what runs (step 2 of its
                // guide: the Module moves first, then each node's label).
                Err(
                    why @ Ineligible::VersionMismatch {
                        actual: Some(_), ..
                    },
                ) => Desired::Keep(format!("{why}: what is loaded stays until the label moves")),
                Err(why) => Desired::Absent(why.to_string()),
            }
        };
        set.map.insert(key, desired);
    }
    set
}

fn to_load(module: &Module, t: &ResolvedMapping) -> DesiredLoad {
    // `args`/`rawArgs` as modprobe command lines; what cannot be honoured is in `rejected`
    // (through `refused_values`, which runs the same parser), so the load is never tried.
    let commands = kmm_common::modprobe_args::resolve(&t.modprobe).unwrap_or_default();
    let load = commands.load;
    DesiredLoad {
        kernel: t.kernel_version.clone(),
        image: t.container_image.clone(),
        pull_policy: t.image_pull_policy.clone(),
        registry: RegistryAccess {
            insecure: t.registry_tls.insecure,
            insecure_skip_tls_verify: t.registry_tls.insecure_skip_tls_verify,
        },
        pull_secret: module
            .spec
            .image_repo_secret
            .as_ref()
            .map(|s| s.name.clone())
            .filter(|n| !n.is_empty()),
        module_name: load.module_name,
        dir_name: load.dir_name,
        parameters: load.parameters,
        firmware_path: t.modprobe.firmware_path.clone(),
        modules_loading_order: load.modules_loading_order,
        first_time: FirstTime {
            load: load.first_time,
            unload: commands.unload.first_time,
        },
        in_tree_to_remove: t.in_tree_modules_to_remove.clone(),
        version: t.version.clone(),
        rejected: refused_values(module),
        built_in_cluster: t.build.is_some() || t.sign.is_some(),
        stops_plugin: module.spec.device_plugin.is_some() || module.spec.dra.is_some(),
    }
}

/// Values admission refuses but a Module may still carry (webhook down or bypassed, stored
/// before the rule existed): the same checks as the webhook, so the load is refused once with
/// `InvalidModuleSpec` instead of failing on every pass.
fn refused_values(module: &Module) -> Option<String> {
    let container = &module.spec.module_loader.as_ref()?.container;
    let errors = kmm_common::validation::check_loader_values(container);
    (!errors.is_empty()).then(|| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(yaml: &str) -> Arc<Module> {
        Arc::new(serde_yaml::from_str(yaml).unwrap())
    }

    fn node(labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    const BRD: &str = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: brd, namespace: ns}
spec:
  selector: {role: storage}
  imageRepoSecret: {name: pull}
  moduleLoader:
    container:
      modprobe:
        moduleName: brd
        parameters: [rd_nr=3]
        modulesLoadingOrder: [brd, dep]
      kernelMappings:
        - regexp: '^.*-amd64$'
          containerImage: reg/${MOD_NAMESPACE}/${MOD_NAME}:${KERNEL_FULL_VERSION}
          registryTLS: {insecure: true}
"#;

    #[test]
    fn eligible_node_gets_a_resolved_load() {
        let set = desired_for_node(
            &[module(BRD)],
            &node(&[("role", "storage")]),
            "6.1.0-56-amd64",
        );
        let Some(Desired::Load(l)) = set.map.get(&ModuleKey::new("ns", "brd")) else {
            panic!("expected a load, got {set:?}");
        };
        assert_eq!(l.image, "reg/ns/brd:6.1.0-56-amd64");
        assert!(l.registry.insecure);
        assert_eq!(l.pull_secret.as_deref(), Some("pull"));
        assert_eq!(l.modules_loading_order, vec!["brd", "dep"]);
        assert_eq!(l.dir_name, "/opt");
    }

    #[test]
    fn ineligible_node_gets_a_reason() {
        let set = desired_for_node(&[module(BRD)], &node(&[]), "6.1.0-56-amd64");
        assert!(
            matches!(set.map.get(&ModuleKey::new("ns", "brd")), Some(Desired::Absent(r)) if r.contains("role"))
        );
        let set = desired_for_node(
            &[module(BRD)],
            &node(&[("role", "storage")]),
            "6.1.0-56-arm64",
        );
        assert!(
            matches!(set.map.get(&ModuleKey::new("ns", "brd")), Some(Desired::Absent(r)) if r.contains("matches no kernelMapping"))
        );
    }

    #[test]
    fn another_version_label_keeps_and_no_label_unloads() {
        let versioned = BRD.replace("      modprobe:", "      version: \"2\"\n      modprobe:");
        let label = "kmm.node.kubernetes.io/version-module.ns.brd";
        let get = |labels: &[(&str, &str)]| {
            desired_for_node(&[module(&versioned)], &node(labels), "6.1.0-56-amd64")
                .map
                .remove(&ModuleKey::new("ns", "brd"))
        };
        // As upstream: label 1, Module 2: version 1 (if loaded) stays.
        let kept = get(&[("role", "storage"), (label, "1")]);
        assert!(
            matches!(&kept, Some(Desired::Keep(r)) if r.contains("is 1, Module wants 2")),
            "{kept:?}"
        );
        assert!(matches!(
            get(&[("role", "storage"), (label, "2")]),
            Some(Desired::Load(_))
        ));
        // No label: not targeted (upstream's step 4 unloads by removing it).
        assert!(matches!(
            get(&[("role", "storage")]),
            Some(Desired::Absent(_))
        ));
        // The selector still comes first.
        assert!(matches!(get(&[(label, "1")]), Some(Desired::Absent(_))));
    }

    #[test]
    fn a_taint_blocks_new_loads_and_never_unloads() {
        use k8s_openapi::api::core::v1::{NodeSpec, Taint};
        let cordoned = |labels: &[(&str, &str)]| {
            let mut n = node(labels);
            n.spec = Some(NodeSpec {
                unschedulable: Some(true),
                taints: Some(vec![Taint {
                    key: "node.kubernetes.io/unschedulable".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            n
        };
        let get = |yaml: &str, n: &Node| {
            desired_for_node(&[module(yaml)], n, "6.1.0-56-amd64")
                .map
                .remove(&ModuleKey::new("ns", "brd"))
        };
        // Keep, not Absent: a cordon leaves a loaded driver where it is.
        let kept = get(BRD, &cordoned(&[("role", "storage")]));
        assert!(
            matches!(&kept, Some(Desired::Keep(r)) if r.contains("node.kubernetes.io/unschedulable:NoSchedule")),
            "{kept:?}"
        );
        // Tolerated: loads as usual.
        let tolerant = format!(
            "{BRD}  tolerations: [{{key: node.kubernetes.io/unschedulable, operator: Exists}}]\n"
        );
        assert!(matches!(
            get(&tolerant, &cordoned(&[("role", "storage")])),
            Some(Desired::Load(_))
        ));
        // The selector no longer matching still unloads, taint or not.
        assert!(matches!(
            get(BRD, &cordoned(&[("role", "db")])),
            Some(Desired::Absent(_))
        ));
    }

    fn load_of(yaml: &str) -> DesiredLoad {
        let set = desired_for_node(
            &[module(yaml)],
            &node(&[("role", "storage")]),
            "6.1.0-56-amd64",
        );
        match set.map.get(&ModuleKey::new("ns", "brd")) {
            Some(Desired::Load(l)) => (**l).clone(),
            other => panic!("expected a load, got {other:?}"),
        }
    }

    #[test]
    fn raw_args_become_the_modules_parameters_directory_and_flags() {
        let raw = BRD.replace(
            "moduleName: brd\n        parameters: [rd_nr=3]\n        modulesLoadingOrder: [brd, dep]",
            "rawArgs:\n          load: [-v, --first-time, -d, /tmp/drivers, brd, rd_nr=2]\n          unload: [-rv, brd]",
        );
        assert_ne!(raw, BRD);
        let l = load_of(&raw);
        assert_eq!(l.rejected, None);
        assert_eq!(
            (
                l.module_name.as_str(),
                l.parameters.as_slice(),
                l.dir_name.as_str()
            ),
            ("brd", &["rd_nr=2".to_string()][..], "/drivers")
        );
        assert!(l.modules_loading_order.is_empty());
        assert_eq!(
            l.first_time,
            FirstTime {
                load: true,
                unload: false
            }
        );
        // -a: several modules, loaded in the order written.
        let all = raw.replace("-d, /tmp/drivers, brd, rd_nr=2", "-a, dep, brd");
        let l = load_of(&all);
        assert_eq!(
            (l.module_name.as_str(), l.dir_name.as_str()),
            ("brd", "/opt")
        );
        assert_eq!(l.modules_loading_order, ["brd", "dep"]);
        assert!(l.parameters.is_empty());
    }

    #[test]
    fn a_refused_modprobe_flag_is_rejected_naming_the_argument() {
        let yaml = BRD.replace("modulesLoadingOrder: [brd, dep]", "args: {load: [-v, -f]}");
        let l = load_of(&yaml);
        let why = l.rejected.unwrap_or_default();
        assert!(
            why.contains("modprobe.args.load[1]: -f (--force) is not supported"),
            "{why}"
        );
        // Flags the agent maps are no rejection.
        let yaml = BRD.replace(
            "modulesLoadingOrder: [brd, dep]",
            "args: {load: [-v], unload: [--first-time]}",
        );
        let l = load_of(&yaml);
        assert_eq!(l.rejected, None);
        assert!(l.first_time.unload && !l.first_time.load);
        assert_eq!(l.parameters, ["rd_nr=3"]);
    }

    /// Each value the agent always refuses, on a Module admission let through: a rejection
    /// naming the field, not a load attempt.
    #[test]
    fn values_admission_refuses_are_rejected_naming_the_field() {
        let digest = format!("@sha256:{}", "0".repeat(63));
        let cases = [
            (
                "moduleName: brd",
                "moduleName: \"b rd\"",
                "modprobe.moduleName",
            ),
            (
                "[brd, dep]",
                "[brd, de/p]",
                "modprobe.modulesLoadingOrder[1]",
            ),
            ("[rd_nr=3]", "[\"rd_nr=3\\n\"]", "modprobe.parameters[0]"),
            (
                "moduleName: brd",
                "moduleName: brd\n        dirName: /opt/../etc",
                "modprobe.dirName",
            ),
            (
                "moduleName: brd",
                "moduleName: brd\n        firmwarePath: ../fw",
                "modprobe.firmwarePath",
            ),
            (
                "      modprobe:",
                "      imagePullPolicy: Sometimes\n      modprobe:",
                "container.imagePullPolicy",
            ),
            (
                ":${KERNEL_FULL_VERSION}",
                &digest,
                "kernelMappings[0].containerImage",
            ),
            (
                "registryTLS: {insecure: true}",
                "registryTLS: {insecure: true}\n          inTreeModulesToRemove: [\"a b\"]",
                "kernelMappings[0].inTreeModulesToRemove[0]",
            ),
        ];
        for (from, to, field) in cases {
            assert!(BRD.contains(from), "{from}");
            let yaml = BRD.replacen(from, to, 1);
            let set = desired_for_node(
                &[module(&yaml)],
                &node(&[("role", "storage")]),
                "6.1.0-56-amd64",
            );
            let Some(Desired::Load(l)) = set.map.get(&ModuleKey::new("ns", "brd")) else {
                panic!("{field}: expected a load, got {set:?}");
            };
            assert!(
                l.rejected.as_deref().is_some_and(|r| r.contains(field)),
                "{field}: {:?}",
                l.rejected
            );
        }
        let set = desired_for_node(
            &[module(BRD)],
            &node(&[("role", "storage")]),
            "6.1.0-56-amd64",
        );
        assert!(matches!(
            set.map.get(&ModuleKey::new("ns", "brd")),
            Some(Desired::Load(l)) if l.rejected.is_none()
        ));
    }

    #[test]
    fn module_being_deleted_is_absent() {
        let mut m = (*module(BRD)).clone();
        m.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        let set = desired_for_node(
            &[Arc::new(m)],
            &node(&[("role", "storage")]),
            "6.1.0-56-amd64",
        );
        assert!(!set.wants(&ModuleKey::new("ns", "brd")));
    }
}
