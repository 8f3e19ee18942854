//! What wakes the PreflightValidation reconciler besides its own objects: a Module's spec
//! changing, a Module coming or going (upstream: every PreflightValidation on a Module
//! generation change), and its Jobs (by owner reference).

use std::collections::HashMap;

use k8s_openapi::api::batch::v1::Job;
use kmm_common::{Module, PreflightValidation};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

/// Remembers each Module's generation and deletion mark, so status writes (every Module's
/// counts move with its fleet) do not re-run every preflight.
#[derive(Debug, Default)]
pub struct ModuleGenerations {
    seen: HashMap<String, (Option<i64>, bool)>,
}

impl ModuleGenerations {
    /// Whether this watch event can change a preflight's verdicts.
    pub fn relevant(&mut self, event: &Event<Module>) -> bool {
        let key = |m: &Module| format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
        match event {
            Event::Apply(m) | Event::InitApply(m) => {
                let now = (
                    m.metadata.generation,
                    m.metadata.deletion_timestamp.is_some(),
                );
                self.seen.insert(key(m), now) != Some(now)
            }
            Event::Delete(m) => {
                self.seen.remove(&key(m));
                true
            }
            // A relist may have dropped Modules we never saw deleted.
            Event::InitDone => true,
            Event::Init => false,
        }
    }
}

/// The PreflightValidation a preflight Job belongs to (its controller owner reference).
pub fn preflight_of_job(job: Job) -> Option<ObjectRef<PreflightValidation>> {
    job.owner_references()
        .iter()
        .find(|o| o.kind == "PreflightValidation" && o.controller == Some(true))
        .map(|o| ObjectRef::new(&o.name))
}
