//! Which Module watch events are worth a pass. The controller rewrites a
//! Module's status whenever a node's state changes; on a large fleet every
//! agent would otherwise run a full pass (kernel re-check, plan, publish) for
//! each of those writes. Only what the agent acts on wakes the loop: the spec
//! (its changes move `metadata.generation`), labels, annotations, deletion.
//! The reflector's store is updated for every event either way.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kmm_common::Module;
use kube::runtime::watcher::Event;

/// What of a Module a pass depends on, besides its spec.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    uid: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    deletion: Option<Time>,
}

impl Seen {
    fn of(m: &Module) -> Self {
        let meta = &m.metadata;
        Self {
            uid: meta.uid.clone(),
            generation: meta.generation,
            labels: meta.labels.clone(),
            annotations: meta.annotations.clone(),
            deletion: meta.deletion_timestamp.clone(),
        }
    }
}

type Key = (Option<String>, Option<String>);

fn key(m: &Module) -> Key {
    (m.metadata.namespace.clone(), m.metadata.name.clone())
}

/// Remembers what each Module looked like at its last event.
#[derive(Debug, Default)]
pub(super) struct ModuleWakes {
    seen: HashMap<Key, Seen>,
    /// Built during a re-list, swapped in at its end.
    relist: HashMap<Key, Seen>,
}

impl ModuleWakes {
    /// Records `event` and says whether it may change what the agent does.
    pub(super) fn wakes(&mut self, event: &Event<Module>) -> bool {
        match event {
            Event::Apply(m) => {
                let now = Seen::of(m);
                self.seen.insert(key(m), now.clone()) != Some(now)
            }
            Event::Delete(m) => {
                self.seen.remove(&key(m));
                true
            }
            Event::Init => {
                self.relist.clear();
                false
            }
            Event::InitApply(m) => {
                self.relist.insert(key(m), Seen::of(m));
                false
            }
            // The store replaces its content now (objects deleted while the
            // watch was down vanish without a Delete): always a pass.
            Event::InitDone => {
                self.seen = std::mem::take(&mut self.relist);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

    use super::*;

    fn module(generation: i64, status_available: i32) -> Module {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
            "kind": "Module",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": generation},
            "spec": {"selector": {}, "moduleLoader": {"container": {
                "modprobe": {"moduleName": "m"},
                "kernelMappings": [{"regexp": ".*", "containerImage": "img"}]}}},
            "status": {"moduleLoader": {"nodesMatchingSelectorNumber": 1,
                "desiredNumber": 1, "availableNumber": status_available}},
        }))
        .unwrap()
    }

    fn synced(m: &Module) -> ModuleWakes {
        let mut w = ModuleWakes::default();
        assert!(!w.wakes(&Event::Init));
        assert!(!w.wakes(&Event::InitApply(m.clone())));
        assert!(w.wakes(&Event::InitDone));
        w
    }

    #[test]
    fn a_status_only_change_does_not_wake_the_loop() {
        let mut w = synced(&module(1, 0));
        assert!(!w.wakes(&Event::Apply(module(1, 1))));
        assert!(!w.wakes(&Event::Apply(module(1, 0))));
    }

    #[test]
    fn spec_metadata_deletion_and_new_modules_wake_the_loop() {
        let mut w = synced(&module(1, 0));
        assert!(w.wakes(&Event::Apply(module(2, 0))), "spec (generation)");
        let mut labelled = module(2, 0);
        labelled.metadata.labels = Some(BTreeMap::from([("a".into(), "b".into())]));
        assert!(w.wakes(&Event::Apply(labelled.clone())), "labels");
        let mut annotated = labelled.clone();
        annotated.metadata.annotations = Some(BTreeMap::from([("a".into(), "b".into())]));
        assert!(w.wakes(&Event::Apply(annotated.clone())), "annotations");
        let mut deleting = annotated.clone();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(w.wakes(&Event::Apply(deleting.clone())), "deletion");
        assert!(w.wakes(&Event::Delete(deleting.clone())), "deleted");
        // Re-created with the same name: new to the filter.
        assert!(w.wakes(&Event::Apply(module(1, 0))), "re-created");
        let mut other = module(1, 0);
        other.metadata.name = Some("other".into());
        assert!(w.wakes(&Event::Apply(other)), "another Module");
    }

    #[test]
    fn a_relist_always_ends_in_a_pass_and_replaces_what_was_seen() {
        let mut w = synced(&module(1, 0));
        assert!(!w.wakes(&Event::Init));
        assert!(w.wakes(&Event::InitDone), "the store may have lost Modules");
        // The Module was not listed again: its next event is new.
        assert!(w.wakes(&Event::Apply(module(1, 0))));
    }
}
