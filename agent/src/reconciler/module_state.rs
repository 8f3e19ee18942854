//! Each Module's state on this node, for `kmm_agent_module_state` and
//! `kmm_agent_module_last_error`: what a dashboard shows per node and Module,
//! from the same facts the NodeModulesConfig status is written from.

use std::collections::{BTreeMap, HashMap};

use crate::plan::Desired;
use crate::state::{ModuleKey, NodeState};

use super::desired::DesiredSet;
use super::workers::Failure;

/// Where a Module stands on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    /// Recorded loaded, nothing running for it, no error.
    Loaded,
    /// A load, replace or digest check is running.
    Loading,
    /// An unload is running.
    Unloading,
    /// The last attempt failed (a failed replace keeps the old version loaded).
    Failed,
    /// Wanted, not loaded yet and not failed: waiting for an in-cluster build's
    /// image, or for the next pass to start it.
    Waiting,
    /// Staged for the next boot only (`strategy: Reboot`), nothing loaded now.
    Staged,
}

impl ModuleState {
    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::Loading => "loading",
            Self::Unloading => "unloading",
            Self::Failed => "failed",
            Self::Waiting => "waiting",
            Self::Staged => "staged",
        }
    }
}

/// One Module's series on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSeries {
    /// The kernel the Module is (or is to be) loaded for.
    pub kernel: String,
    /// Its state.
    pub state: ModuleState,
    /// The reason of its last error, as in the NodeModulesConfig's `lastError`.
    pub error: Option<String>,
}

/// What the loop knows at the end of a pass.
pub struct Facts<'a> {
    /// The running kernel (for Modules with no record and no load to name one).
    pub kernel: &'a str,
    /// What each Module needs here.
    pub desired: &'a DesiredSet,
    /// What is recorded loaded and staged.
    pub state: &'a NodeState,
    /// Modules with a worker running, `true` for an unload.
    pub running: &'a HashMap<ModuleKey, bool>,
    /// Current failures.
    pub failures: &'a HashMap<ModuleKey, Failure>,
}

/// The series of every Module wanted, recorded, worked on or failing here.
/// Modules that do not apply to this node and have nothing here have none.
pub fn module_series(f: &Facts<'_>) -> BTreeMap<ModuleKey, ModuleSeries> {
    let wanted = f.desired.map.keys().filter(|k| f.desired.wants(k));
    let keys = wanted
        .chain(f.state.modules.keys())
        .chain(f.state.staged.keys())
        .chain(f.running.keys())
        .chain(f.failures.keys());
    keys.map(|key| (key.clone(), series(f, key))).collect()
}

fn series(f: &Facts<'_>, key: &ModuleKey) -> ModuleSeries {
    let failure = f.failures.get(key);
    let state = match (f.running.get(key), failure) {
        (Some(true), _) => ModuleState::Unloading,
        (Some(false), _) => ModuleState::Loading,
        (None, Some(fail)) if fail.reason.is_wait() => ModuleState::Waiting,
        (None, Some(_)) => ModuleState::Failed,
        (None, None) if f.state.modules.contains_key(key) => ModuleState::Loaded,
        (None, None) if f.state.staged.contains_key(key) => ModuleState::Staged,
        (None, None) => ModuleState::Waiting,
    };
    let kernel = f
        .state
        .modules
        .get(key)
        .or_else(|| f.state.staged.get(key))
        .map(|r| r.kernel.clone())
        .or_else(|| match f.desired.map.get(key) {
            Some(Desired::Load(d) | Desired::Stage(d)) => Some(d.kernel.clone()),
            _ => None,
        })
        .unwrap_or_else(|| f.kernel.to_string());
    ModuleSeries {
        kernel,
        state,
        error: failure.map(|fail| fail.reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use kmm_common::Reason;

    use super::*;
    use crate::plan::tests::{loaded, want};
    use crate::state::LoadedModule;

    fn key(name: &str) -> ModuleKey {
        ModuleKey::new("ns", name)
    }

    fn record(kernel: &str) -> LoadedModule {
        let mut want = want("reg/brd:v1", None);
        want.kernel = kernel.into();
        loaded(&want)
    }

    fn failure(reason: Reason) -> Failure {
        Failure {
            reason,
            message: "m".into(),
            attempts: 1,
            retry_at: Instant::now(),
            generation: None,
        }
    }

    #[test]
    fn each_module_gets_one_state_and_its_kernel() {
        let mut state = NodeState::default();
        state.modules.insert(key("loaded"), record("6.1.0-old"));
        state.modules.insert(key("replacing"), record("6.1.0-old"));
        state.modules.insert(key("unloading"), record("6.1.0-old"));
        state
            .modules
            .insert(key("replace-failed"), record("6.1.0-old"));
        state.staged.insert(key("staged"), record("6.1.0-next"));
        let mut desired = DesiredSet::default();
        let mut load = want("reg/brd:v1", None);
        load.kernel = "6.1.0-run".into();
        for k in ["loaded", "replacing", "replace-failed", "building", "new"] {
            desired.map.insert(key(k), Desired::Load(load.clone()));
        }
        desired
            .map
            .insert(key("elsewhere"), Desired::Absent("selector".into()));
        let running = HashMap::from([
            (key("replacing"), false),
            (key("unloading"), true),
            (key("new"), false),
        ]);
        let failures = HashMap::from([
            (key("replace-failed"), failure(Reason::ModprobeFailed)),
            (key("building"), failure(Reason::WaitingForImage)),
        ]);
        let facts = Facts {
            kernel: "6.1.0-run",
            desired: &desired,
            state: &state,
            running: &running,
            failures: &failures,
        };
        let got: Vec<(String, String, &str, Option<String>)> = module_series(&facts)
            .into_iter()
            .map(|(k, s)| (k.name, s.kernel, s.state.as_str(), s.error))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "building".into(),
                    "6.1.0-run".into(),
                    "waiting",
                    Some("WaitingForImage".into())
                ),
                ("loaded".into(), "6.1.0-old".into(), "loaded", None),
                ("new".into(), "6.1.0-run".into(), "loading", None),
                (
                    "replace-failed".into(),
                    "6.1.0-old".into(),
                    "failed",
                    Some("ModprobeFailed".into())
                ),
                ("replacing".into(), "6.1.0-old".into(), "loading", None),
                ("staged".into(), "6.1.0-next".into(), "staged", None),
                ("unloading".into(), "6.1.0-old".into(), "unloading", None),
            ],
            "a Module that does not apply here and has nothing here has no series"
        );
    }
}
