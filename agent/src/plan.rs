//! The agent's decisions as a pure function: from what should be loaded on this
//! node (computed from Modules and the Node) and what this agent recorded as
//! loaded, the actions to take. No I/O here, so every rule is a plain test.

use std::collections::BTreeMap;

use crate::state::{FirstTime, LoadedModule, ModuleKey, NodeState};

/// Registry access options for one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryAccess {
    /// Plain HTTP.
    pub insecure: bool,
    /// HTTPS without certificate verification.
    pub insecure_skip_tls_verify: bool,
}

/// What one Module needs on this node, fully resolved (mapping chosen, variables substituted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredLoad {
    /// Kernel release the modules are for.
    pub kernel: String,
    /// Image reference.
    pub image: String,
    /// `imagePullPolicy` as written (empty: Kubernetes' default for the tag).
    pub pull_policy: String,
    /// Registry TLS options.
    pub registry: RegistryAccess,
    /// `imageRepoSecret` name, in the Module's namespace.
    pub pull_secret: Option<String>,
    /// `modprobe.moduleName`, or the last module `rawArgs.load` names.
    pub module_name: String,
    /// `modprobe.dirName`, or the `-d` of `args.load` / `rawArgs.load`.
    pub dir_name: String,
    /// `modprobe.parameters`, or those of `rawArgs.load`.
    pub parameters: Vec<String>,
    /// `modprobe.firmwarePath`, empty when unset.
    pub firmware_path: String,
    /// `modulesLoadingOrder` as the Module gives it (`[moduleName, dep_a, …]`), or the
    /// modules of `rawArgs.load -a` in that form (last loaded first); empty for one module.
    pub modules_loading_order: Vec<String>,
    /// `--first-time` of the load and unload command lines.
    pub first_time: FirstTime,
    /// In-tree modules to remove before loading.
    pub in_tree_to_remove: Vec<String>,
    /// `version`, for ordered upgrade.
    pub version: Option<String>,
    /// The mapping has `build` or `sign`: the controller produces the image,
    /// so while the registry does not have it the node waits, not fails.
    pub built_in_cluster: bool,
    /// Why this cannot be loaded as asked (e.g. a `modprobe.rawArgs` flag the agent
    /// refuses); reported as an error instead of loading.
    pub rejected: Option<String>,
    /// The Module runs a device plugin or DRA driver on nodes with its `.ready`
    /// label: replacing what is loaded stops it first (upstream's ordered upgrade).
    /// Not part of [`DesiredLoad::satisfied_by`]: adding a plugin reloads nothing.
    pub stops_plugin: bool,
}

impl DesiredLoad {
    /// Whether what is loaded already fulfils this, without looking at the registry:
    /// same kernel, image reference, modules, parameters, version and `--first-time` flags
    /// (a changed command line is a changed spec: replaced like changed parameters).
    pub fn satisfied_by(&self, loaded: &LoadedModule) -> bool {
        loaded.kernel == self.kernel
            && loaded.image == self.image
            && loaded.module_name == self.module_name
            && loaded.modules_loading_order == self.modules_loading_order
            && loaded.parameters == self.parameters
            && loaded.version == self.version
            && loaded.first_time == self.first_time
    }
}

/// The desired state of one Module on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// The Module's modules should be loaded.
    Load(Box<DesiredLoad>),
    /// Nothing of this Module should be loaded here; the reason is for users
    /// ("node labels do not match selector", "Module is being deleted").
    Absent(String),
    /// Leave what is loaded as it is and load nothing: upstream's ordered
    /// upgrade, where a node whose version label names another version than
    /// the Module's keeps the version it runs until the admin moves the label.
    Keep(String),
    /// Load this at the next boot instead of unloading what runs (a `ModuleRollout` with
    /// `strategy: Reboot` has the node in `rebooting`: the module may be in use). With
    /// nothing loaded, a plain load.
    Stage(Box<DesiredLoad>),
}

/// One step for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pull and load (nothing of this Module is loaded).
    Load {
        /// The Module.
        key: ModuleKey,
        /// What to load.
        want: Box<DesiredLoad>,
    },
    /// Unload what is loaded, then load the new wanted state (spec, version or kernel changed).
    Replace {
        /// The Module.
        key: ModuleKey,
        /// What to load.
        want: Box<DesiredLoad>,
    },
    /// Already loaded as wanted; with `imagePullPolicy: Always` the executor checks
    /// the digest and replaces only if it moved.
    Verify {
        /// The Module.
        key: ModuleKey,
        /// What is wanted (equal to what is loaded, digest aside).
        want: Box<DesiredLoad>,
    },
    /// Pull and record `want` for the next boot; what is loaded stays.
    Stage {
        /// The Module.
        key: ModuleKey,
        /// What the next boot loads.
        want: Box<DesiredLoad>,
    },
    /// Unload what this agent loaded.
    Unload {
        /// The Module.
        key: ModuleKey,
        /// Why, for events and logs.
        reason: String,
    },
}

impl Action {
    /// The kind of action, for logs and spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Load { .. } => "load",
            Action::Replace { .. } => "replace",
            Action::Verify { .. } => "verify",
            Action::Stage { .. } => "stage",
            Action::Unload { .. } => "unload",
        }
    }

    /// The Module this action concerns.
    pub fn key(&self) -> &ModuleKey {
        match self {
            Action::Load { key, .. }
            | Action::Replace { key, .. }
            | Action::Verify { key, .. }
            | Action::Stage { key, .. }
            | Action::Unload { key, .. } => key,
        }
    }
}

/// Plans the actions that bring `state` to `desired`.
///
/// # Guarantees
/// - A Module is unloaded only if this agent recorded loading it, and either its
///   desired state is `Absent` or it is missing from `desired` (the caller puts in
///   `desired` every Module it knows of, so a Module missing there was deleted).
///   The caller must only call this with a synced view of the API server: a watch
///   error never empties the view, so it never leads to an unload.
/// - `Keep` neither loads nor unloads.
/// - `Stage` never unloads: it records what the next boot loads.
/// - Unloads come first (they free in-tree slots and memory), then replaces, loads, stages, verifies,
///   each group ordered by Module key so runs are reproducible.
pub fn plan(desired: &BTreeMap<ModuleKey, Desired>, state: &NodeState) -> Vec<Action> {
    let mut unloads = Vec::new();
    let mut replaces = Vec::new();
    let mut loads = Vec::new();
    let mut verifies = Vec::new();
    let mut stages = Vec::new();

    for (key, loaded) in &state.modules {
        match desired.get(key) {
            None => unloads.push(Action::Unload {
                key: key.clone(),
                reason: "Module was deleted".to_string(),
            }),
            Some(Desired::Absent(reason)) => unloads.push(Action::Unload {
                key: key.clone(),
                reason: reason.clone(),
            }),
            Some(Desired::Keep(_)) => {}
            Some(Desired::Load(want) | Desired::Stage(want)) if want.satisfied_by(loaded) => {
                verifies.push(Action::Verify {
                    key: key.clone(),
                    want: want.clone(),
                })
            }
            // Staged already (the same wanted state): nothing until the reboot.
            Some(Desired::Stage(want))
                if state.staged.get(key).is_some_and(|s| want.satisfied_by(s)) => {}
            Some(Desired::Stage(want)) => stages.push(Action::Stage {
                key: key.clone(),
                want: want.clone(),
            }),
            Some(Desired::Load(want)) => replaces.push(Action::Replace {
                key: key.clone(),
                want: want.clone(),
            }),
        }
    }
    for (key, d) in desired {
        if let Desired::Load(want) | Desired::Stage(want) = d
            && !state.modules.contains_key(key)
        {
            loads.push(Action::Load {
                key: key.clone(),
                want: want.clone(),
            });
        }
    }
    unloads
        .into_iter()
        .chain(replaces)
        .chain(loads)
        .chain(stages)
        .chain(verifies)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A load of `brd` from `image` (other tests' fixture too).
    pub(crate) fn want(image: &str, version: Option<&str>) -> Box<DesiredLoad> {
        Box::new(DesiredLoad {
            kernel: "6.1.0-56-amd64".into(),
            image: image.into(),
            pull_policy: String::new(),
            registry: RegistryAccess::default(),
            pull_secret: None,
            module_name: "brd".into(),
            dir_name: "/opt".into(),
            parameters: vec!["rd_nr=3".into()],
            firmware_path: String::new(),
            modules_loading_order: vec![],
            first_time: FirstTime::default(),
            in_tree_to_remove: vec![],
            version: version.map(str::to_string),
            rejected: None,
            built_in_cluster: false,
            stops_plugin: false,
        })
    }

    /// The record of `w` loaded (other tests' fixture too).
    pub(crate) fn loaded(w: &DesiredLoad) -> LoadedModule {
        LoadedModule {
            image: w.image.clone(),
            digest: "sha256:1".into(),
            kernel: w.kernel.clone(),
            module_name: w.module_name.clone(),
            modules_loading_order: w.modules_loading_order.clone(),
            inserted: vec![w.module_name.clone()],
            parameters: w.parameters.clone(),
            version: w.version.clone(),
            in_tree_removed: vec![],
            module_dir: PathBuf::from("/x"),
            firmware_files: vec![],
            firmware_source: None,
            loaded_at: String::new(),
            module_uid: None,
            srcversions: Default::default(),
            first_time: w.first_time,
        }
    }

    fn key(n: &str) -> ModuleKey {
        ModuleKey::new("ns", n)
    }

    #[test]
    fn desired_and_not_loaded_is_loaded() {
        let desired = BTreeMap::from([(key("a"), Desired::Load(want("img:1", None)))]);
        let acts = plan(&desired, &NodeState::default());
        assert!(matches!(&acts[..], [Action::Load { key: k, .. }] if *k == key("a")));
    }

    #[test]
    fn loaded_as_wanted_is_only_verified() {
        let w = want("img:1", None);
        let mut st = NodeState::default();
        st.modules.insert(key("a"), loaded(&w));
        let desired = BTreeMap::from([(key("a"), Desired::Load(w))]);
        assert!(matches!(&plan(&desired, &st)[..], [Action::Verify { .. }]));
    }

    #[test]
    fn version_change_replaces() {
        let mut st = NodeState::default();
        st.modules
            .insert(key("a"), loaded(&want("img:1", Some("1"))));
        let desired = BTreeMap::from([(key("a"), Desired::Load(want("img:2", Some("2"))))]);
        assert!(matches!(&plan(&desired, &st)[..], [Action::Replace { .. }]));
    }

    #[test]
    fn keep_neither_loads_nor_unloads() {
        let mut st = NodeState::default();
        st.modules
            .insert(key("a"), loaded(&want("img:1", Some("1"))));
        let keep = |k: &str| {
            (
                key(k),
                Desired::Keep("version label is 1, Module wants 2".into()),
            )
        };
        // The loaded version stays; a node that has none gets none.
        assert_eq!(plan(&BTreeMap::from([keep("a"), keep("b")]), &st), vec![]);
    }

    #[test]
    fn ineligible_node_unloads_with_reason() {
        let mut st = NodeState::default();
        st.modules.insert(key("a"), loaded(&want("img:1", None)));
        let desired = BTreeMap::from([(
            key("a"),
            Desired::Absent("node labels do not match selector".into()),
        )]);
        assert_eq!(
            plan(&desired, &st),
            vec![Action::Unload {
                key: key("a"),
                reason: "node labels do not match selector".into()
            }]
        );
    }

    #[test]
    fn deleted_module_unloads() {
        let mut st = NodeState::default();
        st.modules.insert(key("a"), loaded(&want("img:1", None)));
        assert!(matches!(
            &plan(&BTreeMap::new(), &st)[..],
            [Action::Unload { .. }]
        ));
    }

    #[test]
    fn never_unloads_what_it_did_not_load() {
        // Absent desires for modules not in the state produce nothing.
        let desired = BTreeMap::from([(
            key("a"),
            Desired::Absent("kernel matches no kernelMapping".into()),
        )]);
        assert!(plan(&desired, &NodeState::default()).is_empty());
    }

    #[test]
    fn unloads_come_before_loads() {
        let mut st = NodeState::default();
        st.modules.insert(key("z"), loaded(&want("img:1", None)));
        let desired = BTreeMap::from([(key("a"), Desired::Load(want("img:1", None)))]);
        let acts = plan(&desired, &st);
        assert!(matches!(acts[0], Action::Unload { .. }));
        assert!(matches!(acts[1], Action::Load { .. }));
    }
}
