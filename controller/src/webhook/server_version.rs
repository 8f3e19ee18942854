//! The API server's Kubernetes version (`/version`), for the admission check that `spec.dra`
//! needs Kubernetes >= 1.34. Asked when a DRA Module is first validated and then at most once
//! per TTL (a control-plane upgrade is seen within it); concurrent requests share one call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::version::Info;
use kube::Client;
use tokio::sync::Mutex;

/// How long a `/version` answer is reused.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// A cached `/version` of the API server.
#[derive(Clone)]
pub struct ServerVersion {
    client: Client,
    ttl: Duration,
    cached: Arc<Mutex<Option<(Instant, Info)>>>,
}

impl ServerVersion {
    /// A cache that asks `client`'s API server, keeping each answer for `ttl`.
    pub fn new(client: Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            cached: Arc::default(),
        }
    }

    /// The version, from the cache while it is fresh.
    ///
    /// # Errors
    /// When the API server does not answer `/version` (nothing is cached then).
    pub async fn get(&self) -> Result<Info, kube::Error> {
        // Held across the call: concurrent admissions wait for one answer.
        let mut cached = self.cached.lock().await;
        if let Some((at, info)) = cached.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(info.clone());
        }
        let info = self.client.apiserver_version().await?;
        tracing::debug!(major = %info.major, minor = %info.minor, git = %info.git_version, "API server version");
        *cached = Some((Instant::now(), info.clone()));
        Ok(info)
    }
}
