//! At start: reconcile the recorded state with the kernel before acting. Loads a
//! crash interrupted are rolled back, unloads it interrupted are finished, and a
//! record is kept only if its module is in the kernel and is the build this agent
//! loaded. After a reboot (another `boot_id`) nothing is assumed loaded: a record
//! is kept only when the module's srcversion proves it is ours.

use std::collections::BTreeMap;

use super::executor::finish_unload;
use crate::kernel::{self, DepPolicy, Kernel, UnloadRequest, normalize};
use crate::state::{LoadedModule, Loading, ModuleKey, NodeState, Unloading};

/// What recovery did, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Modules removed while rolling back interrupted loads.
    pub rolled_back: Vec<String>,
    /// Modules removed while finishing interrupted unloads.
    pub finished_unloads: Vec<String>,
    /// Records dropped, with the reason.
    pub forgotten: Vec<(ModuleKey, String)>,
}

/// Where a record's module stands in the running kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Loaded, and the same build as recorded (or the build cannot be told).
    Ours,
    /// Not in the kernel.
    Missing,
    /// A module of that name with another srcversion.
    Foreign {
        /// srcversion in the kernel.
        loaded: String,
    },
}

/// Where `rec`'s main module stands.
///
/// # Errors
/// If the kernel state cannot be read: the caller must not guess.
pub fn presence(kernel: &dyn Kernel, rec: &LoadedModule) -> Result<Presence, kernel::Error> {
    let main = normalize(&rec.module_name);
    if !kernel.is_loaded(&main)? {
        return Ok(Presence::Missing);
    }
    match (rec.srcversions.get(&main), kernel.srcversion(&main)?) {
        (Some(recorded), Some(loaded)) if *recorded != loaded => Ok(Presence::Foreign { loaded }),
        // Ours had a srcversion; this one has none: another build.
        (Some(_), None) => Ok(Presence::Foreign {
            loaded: "none".into(),
        }),
        _ => Ok(Presence::Ours),
    }
}

/// Reconciles `state` with the running kernel `running` of boot `boot_id`.
///
/// # Errors
/// If kernel state cannot be read (the agent then does not start: it cannot tell
/// what it loaded).
pub fn recover(
    kernel: &dyn Kernel,
    mut state: NodeState,
    running: &str,
    boot_id: &str,
) -> Result<(NodeState, Recovered), kernel::Error> {
    let mut out = Recovered::default();
    // A state file from before boot ids were recorded describes this boot as far
    // as anyone can tell (the previous behaviour).
    let same_boot = state.boot_id.as_deref().is_none_or(|b| b == boot_id);

    let loading = std::mem::take(&mut state.loading);
    if same_boot {
        out.rolled_back = roll_back_interrupted(kernel, running, &loading)?;
    }

    let unloading = std::mem::take(&mut state.unloading);
    for (key, intent) in unloading {
        if !same_boot {
            continue; // nothing of the previous boot is loaded; the records follow below
        }
        match finish_intent(kernel, &intent) {
            Ok(removed) => {
                out.finished_unloads.extend(removed);
                finish_unload(&mut state, &key);
                out.forgotten
                    .push((key, "its unload was interrupted and is now finished".into()));
            }
            Err(e) => {
                tracing::warn!(module = %key, error = %e, "could not finish an interrupted unload; it is retried if the Module is still unwanted")
            }
        }
    }

    let mut keep = BTreeMap::new();
    for (key, mut rec) in std::mem::take(&mut state.modules) {
        let main = normalize(&rec.module_name);
        let why = if rec.kernel != running {
            Some(format!("recorded for kernel {}", rec.kernel))
        } else {
            match presence(kernel, &rec)? {
                Presence::Missing => Some("its module is not in the running kernel".to_string()),
                Presence::Foreign { loaded } => {
                    state.not_ours.insert(main);
                    Some(format!(
                        "a module of the same name but another build (srcversion {loaded}) is in the kernel"
                    ))
                }
                Presence::Ours if !same_boot && !rec.srcversions.contains_key(&main) => {
                    state.not_ours.insert(main);
                    Some(
                        "the node rebooted and the loaded module cannot be proved to be this agent's"
                            .to_string(),
                    )
                }
                Presence::Ours => None,
            }
        };
        match why {
            Some(why) => out.forgotten.push((key, why)),
            None => {
                if !same_boot {
                    // Same build, but loaded this boot by someone else (the boot path
                    // records its boot id): not ours to unload.
                    rec.inserted.clear();
                    rec.srcversions.clear();
                }
                keep.insert(key, rec);
            }
        }
    }
    state.modules = keep;
    state.boot_id = Some(boot_id.to_string());
    Ok((state, out))
}

/// Finishes an interrupted unload: its modules, then the dependencies it may
/// remove that are still loaded and unused (the module that used them may be gone
/// already, so they are not found through it).
fn finish_intent(kernel: &dyn Kernel, intent: &Unloading) -> Result<Vec<String>, kernel::Error> {
    let mut removed = kernel.unload(&intent.request())?.removed;
    let mut left: Vec<&String> = intent.deps.iter().collect();
    loop {
        let before = left.len();
        let mut still = Vec::new();
        for dep in left {
            let single = UnloadRequest {
                modules: vec![dep.clone()],
                deps: DepPolicy::None,
                ..UnloadRequest::default()
            };
            match kernel.unload(&single) {
                Ok(o) => removed.extend(o.removed),
                // Still used (by a module removed later in this loop, or by others).
                Err(kernel::Error::InUse { .. }) => still.push(dep),
                Err(e) => return Err(e),
            }
        }
        left = still;
        if left.is_empty() || left.len() == before {
            return Ok(removed);
        }
    }
}

/// Removes what loads interrupted by a crash inserted (modules of their load order
/// that are loaded now and were not before), so the retry records exactly what
/// it inserts: nothing is loaded twice, nothing is forgotten. Dependencies libkmod
/// pulled in stay loaded (they are not known to have been ours).
///
/// # Errors
/// If kernel state cannot be read.
pub fn roll_back_interrupted(
    kernel: &dyn Kernel,
    running: &str,
    interrupted: &BTreeMap<ModuleKey, Loading>,
) -> Result<Vec<String>, kernel::Error> {
    let mut removed = Vec::new();
    for (key, l) in interrupted {
        if l.kernel != running {
            continue; // a reboot into another kernel: nothing of it is loaded
        }
        let mut ours = Vec::new();
        for m in l.load_order.iter().rev() {
            if !l.already_loaded.contains(m) && kernel.is_loaded(m)? {
                ours.push(m.clone());
            }
        }
        if ours.is_empty() {
            continue;
        }
        let req = UnloadRequest {
            modules: ours,
            deps: DepPolicy::None,
            ..UnloadRequest::default()
        };
        match kernel.unload(&req) {
            Ok(out) => removed.extend(out.removed),
            Err(e) => {
                tracing::warn!(module = %key, error = %e, "could not roll back an interrupted load")
            }
        }
    }
    Ok(removed)
}
