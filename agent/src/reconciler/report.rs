//! What the agent tells the cluster: its own Node's labels, the per-node
//! `NodeModulesConfig` status, and events on Modules.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kmm_common::{
    ModprobeSpec, Module, ModuleConfig, ModuleError, ModuleItem, NodeModuleStatus,
    NodeModulesConfig, NodeModulesConfigSpec, NodeModulesConfigStatus,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::Event;

use futures::future::BoxFuture;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::node_labels::{self, LabelChanges, LabelError};
use crate::state::{ModuleKey, NodeState};

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    Timestamp::now().to_string()
}

/// A reference to a Module that may already be gone from the API (deleted
/// without a finalizer): events about its unload still reach its namespace.
pub fn module_ref(key: &ModuleKey, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("kmm.sigs.x-k8s.io/v1beta1".into()),
        kind: Some("Module".into()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        uid: uid.map(str::to_string),
        ..ObjectReference::default()
    }
}

/// Labels this agent wants on its Node for `state`, including removals of
/// `.ready`/`.version.ready` labels of Modules no longer loaded, or `withheld`
/// while their device plugin stops. The admin's `version-module.` labels and the
/// controller's `.device-plugin-ready` are not ours.
pub fn wanted_labels(
    current: &BTreeMap<String, String>,
    state: &NodeState,
    withheld: &BTreeSet<ModuleKey>,
) -> LabelChanges {
    let mut wanted = LabelChanges::new();
    for (key, rec) in state.modules.iter().filter(|(k, _)| !withheld.contains(*k)) {
        wanted.insert(
            kmm_common::ready_label(&key.namespace, &key.name),
            Some(String::new()),
        );
        wanted.insert(
            kmm_common::version_ready_label(&key.namespace, &key.name),
            rec.version.clone(),
        );
    }
    for k in current.keys() {
        if kmm_common::is_agent_label(k) && !wanted.contains_key(k) {
            wanted.insert(k.clone(), None);
        }
    }
    wanted
}

/// The NodeModulesConfig status for `state` and the current failures.
pub fn node_status(
    state: &NodeState,
    failures: &BTreeMap<ModuleKey, (String, String)>,
    modules: &BTreeMap<ModuleKey, Arc<Module>>,
) -> NodeModulesConfigStatus {
    let item = |key: &ModuleKey| ModuleItem {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        image_repo_secret: modules
            .get(key)
            .and_then(|m| m.spec.image_repo_secret.clone()),
        ..ModuleItem::default()
    };
    let error = |key: &ModuleKey| {
        failures.get(key).map(|(reason, message)| ModuleError {
            reason: reason.clone(),
            message: message.clone(),
        })
    };
    let mut out = Vec::new();
    for (key, rec) in &state.modules {
        let loaded_at = whole_seconds(&rec.loaded_at);
        out.push(NodeModuleStatus {
            item: item(key),
            config: Some(ModuleConfig {
                kernel_version: rec.kernel.clone(),
                container_image: rec.image.clone(),
                modprobe: ModprobeSpec {
                    module_name: rec.module_name.clone(),
                    parameters: rec.parameters.clone(),
                    modules_loading_order: (!rec.modules_loading_order.is_empty())
                        .then(|| rec.modules_loading_order.clone()),
                    ..ModprobeSpec::default()
                },
                in_tree_modules_to_remove: rec.in_tree_removed.clone(),
                ..ModuleConfig::default()
            }),
            last_transition_time: loaded_at.clone(),
            image: rec.image.clone(),
            digest: rec.digest.clone(),
            kernel: rec.kernel.clone(),
            load_time: loaded_at,
            last_error: error(key),
        });
    }
    for key in failures.keys().filter(|k| !state.modules.contains_key(*k)) {
        out.push(NodeModuleStatus {
            item: item(key),
            last_error: error(key),
            ..NodeModuleStatus::default()
        });
    }
    out.sort_by(|a, b| (&a.item.namespace, &a.item.name).cmp(&(&b.item.namespace, &b.item.name)));
    NodeModulesConfigStatus { modules: out }
}

/// A recorded RFC 3339 time as the API server stores a `metav1.Time`: whole
/// seconds. Sub-second digits here would make every comparison with the
/// stored status differ, and every pass rewrite an unchanged status.
fn whole_seconds(rfc3339: &str) -> Option<Time> {
    let t = rfc3339.parse::<Timestamp>().ok()?;
    Timestamp::from_second(t.as_second()).ok().map(Time)
}

/// What the agent tells the cluster, behind a trait so the executor can be run
/// in-process against a recording double.
pub trait Report: Send + Sync {
    /// Publishes an event about `regarding` (a Module); failures are logged, not returned.
    fn event(&self, regarding: ObjectReference, event: Event) -> BoxFuture<'_, ()>;

    /// Writes this node's NodeModulesConfig status if it differs from `status`.
    fn status(&self, status: NodeModulesConfigStatus) -> BoxFuture<'_, Result<(), kube::Error>>;

    /// Applies label changes to this node (nothing when `wanted` matches `current`).
    fn labels(
        &self,
        current: BTreeMap<String, String>,
        wanted: LabelChanges,
    ) -> BoxFuture<'_, Result<(), LabelError>>;
}

/// The real reporter: events through kube-rs's recorder, the NMC status and the
/// Node's labels through the API server.
pub struct KubeReporter {
    client: Client,
    recorder: Recorder,
    node_name: String,
    /// The status last written or found equal, and when: an unchanged status
    /// costs no request at all until it is this old (then one GET checks that
    /// nobody removed or changed the object), and a change from it is written
    /// without reading first (one request per transition).
    written: std::sync::Mutex<Option<(NodeModulesConfigStatus, std::time::Instant)>>,
}

/// How long a written status is trusted without reading it back.
const STATUS_RECHECK: std::time::Duration = std::time::Duration::from_secs(300);

impl KubeReporter {
    /// A reporter for node `node_name`.
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: "kmm-agent".into(),
            instance: Some(node_name.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node_name: node_name.to_string(),
            written: std::sync::Mutex::new(None),
        }
    }
}

impl Report for KubeReporter {
    fn event(&self, regarding: ObjectReference, event: Event) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.recorder.publish(&event, &regarding).await {
                tracing::warn!(error = %e, reason = %event.reason, "could not publish event");
            }
        })
    }

    fn status(&self, status: NodeModulesConfigStatus) -> BoxFuture<'_, Result<(), kube::Error>> {
        Box::pin(async move {
            let known = crate::reconciler::lock(&self.written).clone();
            let api: Api<NodeModulesConfig> = Api::all(self.client.clone());
            let result = match known {
                Some((last, at)) if last == status && at.elapsed() < STATUS_RECHECK => {
                    return Ok(());
                }
                // A transition from what this agent wrote: one write, no read.
                Some((last, _)) if last != status => {
                    patch_status(&api, &self.node_name, &status).await
                }
                // First status since start, or time to check nobody changed it:
                // read, and write only if it differs.
                _ => write_status(&api, &self.node_name, &status).await,
            };
            *crate::reconciler::lock(&self.written) =
                result.is_ok().then(|| (status, std::time::Instant::now()));
            result
        })
    }

    fn labels(
        &self,
        current: BTreeMap<String, String>,
        wanted: LabelChanges,
    ) -> BoxFuture<'_, Result<(), LabelError>> {
        Box::pin(async move {
            let nodes: Api<Node> = Api::all(self.client.clone());
            node_labels::apply(&nodes, &self.node_name, &current, &wanted).await
        })
    }
}

/// Writes `status` if the stored one differs (creating the object if missing).
async fn write_status(
    api: &Api<NodeModulesConfig>,
    name: &str,
    status: &NodeModulesConfigStatus,
) -> Result<(), kube::Error> {
    match api.get_opt(name).await? {
        Some(existing) if existing.status.as_ref() == Some(status) => Ok(()),
        Some(_) => patch_status(api, name, status).await,
        None => {
            create_empty(api, name).await?;
            patch_status(api, name, status).await
        }
    }
}

/// Replaces the status's module list, creating the object if it is missing.
async fn patch_status(
    api: &Api<NodeModulesConfig>,
    name: &str,
    status: &NodeModulesConfigStatus,
) -> Result<(), kube::Error> {
    // A merge patch replaces the list whole; an explicit `[]` clears it (an
    // apply of an empty status would be pruned to null and refused).
    let patch = serde_json::json!({ "status": { "modules": status.modules } });
    let params = PatchParams::default();
    match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
        Err(kube::Error::Api(s)) if s.code == 404 => {
            create_empty(api, name).await?;
            api.patch_status(name, &params, &Patch::Merge(&patch))
                .await
                .map(drop)
        }
        other => other.map(drop),
    }
}

/// Creates this node's NodeModulesConfig without status (someone else's create is fine).
async fn create_empty(api: &Api<NodeModulesConfig>, name: &str) -> Result<(), kube::Error> {
    let nmc = NodeModulesConfig {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: NodeModulesConfigSpec::default(),
        status: None,
    };
    match api.create(&PostParams::default(), &nmc).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A [`Report`] that records everything, for in-process tests.
#[cfg(test)]
#[derive(Default)]
pub struct RecordingReporter {
    /// `(regarding's name, type, reason, note, related's name)` of each event.
    #[allow(
        clippy::type_complexity,
        reason = "a test record, read through events_with"
    )]
    pub events: std::sync::Mutex<
        Vec<(
            String,
            kube::runtime::events::EventType,
            String,
            String,
            Option<String>,
        )>,
    >,
    /// Every status written.
    pub statuses: std::sync::Mutex<Vec<NodeModulesConfigStatus>>,
    /// The node's labels as the recorded changes left them.
    pub node_labels: std::sync::Mutex<BTreeMap<String, String>>,
    /// Every label write that changed something, in order.
    pub label_writes: std::sync::Mutex<Vec<LabelChanges>>,
}

#[cfg(test)]
impl RecordingReporter {
    /// Events with `reason`, as `(regarding's name, note)`.
    pub fn events_with(&self, reason: &str) -> Vec<(String, String)> {
        crate::reconciler::lock(&self.events)
            .iter()
            .filter(|e| e.2 == reason)
            .map(|e| (e.0.clone(), e.3.clone()))
            .collect()
    }

    /// Events with `reason`, as `(regarding's name, related's name)`.
    pub fn events_related(&self, reason: &str) -> Vec<(String, Option<String>)> {
        crate::reconciler::lock(&self.events)
            .iter()
            .filter(|e| e.2 == reason)
            .map(|e| (e.0.clone(), e.4.clone()))
            .collect()
    }

    /// The last status written.
    pub fn last_status(&self) -> Option<NodeModulesConfigStatus> {
        crate::reconciler::lock(&self.statuses).last().cloned()
    }
}

#[cfg(test)]
impl Report for RecordingReporter {
    fn event(&self, regarding: ObjectReference, event: Event) -> BoxFuture<'_, ()> {
        crate::reconciler::lock(&self.events).push((
            regarding.name.unwrap_or_default(),
            event.type_,
            event.reason,
            event.note.unwrap_or_default(),
            event.secondary.and_then(|r| r.name),
        ));
        Box::pin(async {})
    }

    fn status(&self, status: NodeModulesConfigStatus) -> BoxFuture<'_, Result<(), kube::Error>> {
        let mut statuses = crate::reconciler::lock(&self.statuses);
        if statuses.last() != Some(&status) {
            statuses.push(status);
        }
        Box::pin(async { Ok(()) })
    }

    fn labels(
        &self,
        _current: BTreeMap<String, String>,
        wanted: LabelChanges,
    ) -> BoxFuture<'_, Result<(), LabelError>> {
        let mut labels = crate::reconciler::lock(&self.node_labels);
        let changes = node_labels::effective_changes(&labels, &wanted);
        if !changes.is_empty() {
            crate::reconciler::lock(&self.label_writes).push(changes);
        }
        for (k, v) in wanted {
            match v {
                Some(v) => labels.insert(k, v),
                None => labels.remove(&k),
            };
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::state::LoadedModule;

    fn rec(version: Option<&str>) -> LoadedModule {
        LoadedModule {
            image: "r/ns/brd:k".into(),
            digest: "sha256:1".into(),
            kernel: "k".into(),
            module_name: "brd".into(),
            modules_loading_order: vec![],
            inserted: vec!["brd".into()],
            parameters: vec![],
            version: version.map(str::to_string),
            in_tree_removed: vec![],
            module_dir: PathBuf::from("/x"),
            firmware_files: vec![],
            firmware_source: None,
            loaded_at: "2026-11-25T00:00:00Z".into(),
            module_uid: None,
            srcversions: BTreeMap::new(),
            first_time: Default::default(),
        }
    }

    /// The state file keeps nanoseconds; the API server returns whole
    /// seconds. Equal statuses must compare equal after the round trip, or the
    /// agent patches its NodeModulesConfig on every pass (issue 14).
    #[test]
    fn status_times_are_whole_seconds_as_the_api_server_stores_them() {
        let mut st = NodeState::default();
        let mut r = rec(None);
        r.loaded_at = "2026-11-25T10:20:30.123456789Z".into();
        st.modules.insert(ModuleKey::new("ns", "a"), r);
        let status = node_status(&st, &BTreeMap::new(), &BTreeMap::new());
        let stored: NodeModulesConfigStatus =
            serde_json::from_value(serde_json::json!({"modules": [{
                "name": "a", "namespace": "ns",
                "config": serde_json::to_value(&status.modules[0].config).unwrap(),
                "lastTransitionTime": "2026-11-25T10:20:30Z",
                "loadTime": "2026-11-25T10:20:30Z",
                "image": "r/ns/brd:k", "digest": "sha256:1", "kernel": "k",
            }]}))
            .unwrap();
        assert_eq!(status, stored);
    }

    #[test]
    fn labels_follow_state_and_leave_others_alone() {
        let mut st = NodeState::default();
        st.modules.insert(ModuleKey::new("ns", "a"), rec(Some("2")));
        let current = BTreeMap::from([
            (
                "kmm.node.kubernetes.io/ns.gone.ready".to_string(),
                String::new(),
            ),
            (
                "kmm.node.kubernetes.io/ns.gone.version.ready".to_string(),
                "1".to_string(),
            ),
            (
                "kmm.node.kubernetes.io/ns.a.device-plugin-ready".to_string(),
                String::new(),
            ),
            (
                "kmm.node.kubernetes.io/version-module.ns.a".to_string(),
                "2".to_string(),
            ),
            ("other".to_string(), "x".to_string()),
        ]);
        let w = wanted_labels(&current, &st, &BTreeSet::new());
        assert_eq!(
            w.get("kmm.node.kubernetes.io/ns.a.ready"),
            Some(&Some(String::new()))
        );
        assert_eq!(
            w.get("kmm.node.kubernetes.io/ns.a.version.ready"),
            Some(&Some("2".into()))
        );
        assert_eq!(w.get("kmm.node.kubernetes.io/ns.gone.ready"), Some(&None));
        assert_eq!(
            w.get("kmm.node.kubernetes.io/ns.gone.version.ready"),
            Some(&None)
        );
        assert!(!w.contains_key("kmm.node.kubernetes.io/ns.a.device-plugin-ready"));
        assert!(!w.contains_key("kmm.node.kubernetes.io/version-module.ns.a"));
        assert!(!w.contains_key("other"));
    }

    #[test]
    fn status_lists_loaded_and_failed_modules() {
        let mut st = NodeState::default();
        st.modules.insert(ModuleKey::new("ns", "a"), rec(None));
        let failures = BTreeMap::from([(
            ModuleKey::new("ns", "b"),
            ("ImagePullFailed".to_string(), "not found".to_string()),
        )]);
        let s = node_status(&st, &failures, &BTreeMap::new());
        assert_eq!(s.modules.len(), 2);
        assert_eq!(s.modules[0].digest, "sha256:1");
        assert!(s.modules[0].config.is_some());
        assert!(s.modules[1].config.is_none());
        assert_eq!(
            s.modules[1].last_error.as_ref().map(|e| e.reason.as_str()),
            Some("ImagePullFailed")
        );
    }
}
