//! Stopping a Module's device plugin or DRA driver before its kernel module is
//! swapped (upstream's ordered upgrade): the agent takes the Module's `.ready`
//! and `.version.ready` labels off its Node, so the DaemonSet controller removes
//! the plugin Pod from it, and waits until the controller's `.device-plugin-ready`
//! / `.dra-ready` label (the Pod running and Ready here) is gone, at most
//! [`Settings::plugin_stop_timeout`](super::Settings): a plugin Pod stuck in
//! termination must not block the upgrade for ever. The labels come back with
//! the first publish after the worker ends, and the DaemonSet brings the Pod back.
//!
//! Kept in memory only: an agent restarted mid-wait still has the old version
//! loaded and recorded, so its first publish puts the labels back and the
//! replace, planned again, stops the plugin again; one restarted after the
//! unload has no record (hence no label) and loads as any first load.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use kmm_common::Module;
use kube::Resource;
use kube::runtime::events::EventType;
use tokio::sync::watch;
use tracing::Instrument;

use super::error::ActionError;
use super::executor::{Cancel, Executor};
use super::lock;
use crate::node_labels::LabelChanges;
use crate::state::ModuleKey;

/// Node labels by key.
type Labels = BTreeMap<String, String>;

/// The labels withheld and the Node's labels the waits look at.
pub struct PluginStop {
    /// The Node's labels as of the last pass (every change of them wakes one).
    node_labels: watch::Sender<Labels>,
    /// Modules whose `.ready` labels are off while their plugin stops.
    withheld: Mutex<BTreeSet<ModuleKey>>,
    timeout: Duration,
}

/// How a wait for the plugin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Its `-ready` label left the Node.
    Gone,
    /// The timeout passed with the label still there.
    TimedOut,
}

/// Withholds one Module's labels until dropped (whatever ends the worker).
pub struct Withheld<'a> {
    stop: &'a PluginStop,
    key: ModuleKey,
}

impl Drop for Withheld<'_> {
    fn drop(&mut self) {
        lock(&self.stop.withheld).remove(&self.key);
    }
}

impl PluginStop {
    /// Waits for a plugin at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            node_labels: watch::Sender::new(Labels::new()),
            withheld: Mutex::new(BTreeSet::new()),
            timeout,
        }
    }

    /// Notes the Node's labels as a pass sees them (wakes waits only on a change).
    pub fn observe(&self, labels: &Labels) {
        self.node_labels.send_if_modified(|seen| {
            let changed = seen != labels;
            if changed {
                seen.clone_from(labels);
            }
            changed
        });
    }

    /// The Modules whose labels are withheld now.
    pub fn withheld(&self) -> BTreeSet<ModuleKey> {
        lock(&self.withheld).clone()
    }

    fn withhold(&self, key: &ModuleKey) -> Withheld<'_> {
        lock(&self.withheld).insert(key.clone());
        Withheld {
            stop: self,
            key: key.clone(),
        }
    }

    /// Waits until neither plugin label of `key` is on the Node, the timeout
    /// passes, or `cancel` is set.
    async fn wait_gone(
        &self,
        key: &ModuleKey,
        cancel: &mut Cancel,
    ) -> Result<Stopped, ActionError> {
        let labels = [
            kmm_common::device_plugin_ready_label(&key.namespace, &key.name),
            kmm_common::dra_ready_label(&key.namespace, &key.name),
        ];
        let mut seen = self.node_labels.subscribe();
        let gone = seen.wait_for(|l| !labels.iter().any(|k| l.contains_key(k)));
        tokio::select! {
            r = tokio::time::timeout(self.timeout, gone) => Ok(match r {
                Ok(_) => Stopped::Gone,
                Err(_) => Stopped::TimedOut,
            }),
            _ = cancel.wait_for(|c| *c) => Err(ActionError::Cancelled),
        }
    }
}

impl Executor {
    /// Takes `key`'s `.ready` and `.version.ready` labels off the Node and
    /// waits for its plugin to leave; the labels stay off while the returned
    /// guard lives (the swap that follows).
    ///
    /// # Errors
    /// If the labels cannot be removed (the plugin would keep running on the
    /// swapped module: the loaded version stays, and it is retried with
    /// backoff), or if `cancel` is set (the Module changed or is gone).
    pub(super) async fn stop_plugin(
        &self,
        key: &ModuleKey,
        module: Option<&Module>,
        cancel: &mut Cancel,
    ) -> Result<Withheld<'_>, ActionError> {
        let withheld = self.plugin_stop.withhold(key);
        let ours = [
            kmm_common::ready_label(&key.namespace, &key.name),
            kmm_common::version_ready_label(&key.namespace, &key.name),
        ];
        // Sent even if the last view lacks them: a stale view must not leave
        // the plugin running on the module being swapped.
        let mut current = self.plugin_stop.node_labels.borrow().clone();
        for k in &ours {
            current.entry(k.clone()).or_default();
        }
        let changes: LabelChanges = ours.into_iter().map(|k| (k, None)).collect();
        self.reporter
            .labels(current, changes)
            .instrument(tracing::debug_span!("label"))
            .await
            .map_err(ActionError::PluginLabels)?;
        tracing::info!(module = %key, timeout = ?self.plugin_stop.timeout,
            "ready labels removed; waiting for the device plugin / DRA driver to leave the node");
        match self.plugin_stop.wait_gone(key, cancel).await? {
            Stopped::Gone => tracing::info!(module = %key, "device plugin / DRA driver stopped"),
            Stopped::TimedOut => {
                let note = format!(
                    "node {}: the device plugin / DRA driver still runs after {:?}; replacing the kernel module anyway",
                    self.settings.node_name, self.plugin_stop.timeout
                );
                tracing::warn!(module = %key, "{note}");
                if let Some(m) = module {
                    self.event(
                        m.object_ref(&()),
                        EventType::Warning,
                        "PluginStopTimedOut",
                        "Unload",
                        note,
                    )
                    .await;
                }
            }
        }
        Ok(withheld)
    }
}
