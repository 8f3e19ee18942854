//! The fleet's nodes as one watch sees them: how many are in a wanted state,
//! over time (the benchmark's timelines and "all ready" instants).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

/// Labels of one node.
pub type Labels = BTreeMap<String, String>;

/// Nodes' labels, kept current by a watch; stops on drop.
pub struct Progress {
    nodes: Arc<Mutex<HashMap<String, Labels>>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

/// `(seconds since the operation started, nodes in the wanted state)`, one point per change.
pub type Timeline = Vec<(f64, usize)>;

impl Progress {
    /// Watches the Nodes that `selector` (a label selector) selects.
    pub fn watch(client: Client, selector: &str) -> Self {
        let nodes: Arc<Mutex<HashMap<String, Labels>>> = Arc::default();
        let (tx, changes) = watch::channel(0u64);
        let api: Api<Node> = Api::all(client);
        let stream = watcher(api, watcher::Config::default().labels(selector)).default_backoff();
        let seen = nodes.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = match stream.try_next().await {
                    Ok(Some(event)) => event,
                    Ok(None) => break,
                    // The watcher retries with backoff; the last view stays.
                    Err(_) => continue,
                };
                {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    match event {
                        watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                            seen.insert(n.name_any(), n.labels().clone());
                        }
                        watcher::Event::Delete(n) => {
                            seen.remove(&n.name_any());
                        }
                        watcher::Event::Init | watcher::Event::InitDone => {}
                    }
                }
                tx.send_modify(|v| *v += 1);
            }
        });
        Self {
            nodes,
            changes,
            task,
        }
    }

    /// Nodes whose labels satisfy `wanted`.
    pub fn count(&self, wanted: &dyn Fn(&Labels) -> bool) -> usize {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.values().filter(|l| wanted(l)).count()
    }

    /// Waits until `n` nodes satisfy `wanted`, recording how many did over time
    /// (from `start`).
    ///
    /// # Errors
    /// On timeout (with the timeline so far).
    pub async fn wait_for(
        &mut self,
        n: usize,
        wanted: &dyn Fn(&Labels) -> bool,
        start: Instant,
        timeout: Duration,
    ) -> Result<Timeline> {
        let mut timeline: Timeline = Vec::new();
        loop {
            self.changes.borrow_and_update();
            let c = self.count(wanted);
            if timeline.last().is_none_or(|(_, last)| *last != c) {
                timeline.push((start.elapsed().as_secs_f64(), c));
            }
            if c == n {
                return Ok(timeline);
            }
            let left = timeout.saturating_sub(start.elapsed());
            anyhow::ensure!(
                !left.is_zero(),
                "only {c} of {n} nodes after {timeout:?} (timeline {timeline:?})"
            );
            if let Ok(Err(_)) = tokio::time::timeout(left, self.changes.changed()).await {
                // The watch ended: nothing will change any more.
                anyhow::bail!("node watch ended with {c} of {n} nodes (timeline {timeline:?})");
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
