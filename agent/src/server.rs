//! The agent's `/metrics`, `/healthz` and `/readyz` (ready once the watches
//! synced and the node state was reconciled with the kernel).

use std::net::SocketAddr;
use std::sync::Arc;

pub use kmm_runtime::health::{Liveness, Readiness};

use crate::metrics::Metrics;

/// Serves the endpoints until the process exits.
///
/// # Errors
/// If the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    ready: Readiness,
    live: Liveness,
) -> std::io::Result<()> {
    let render = Arc::new(move || metrics.render());
    kmm_runtime::health::serve(
        addr,
        render,
        ready,
        live,
        "not ready: watches not synced yet",
    )
    .await
}
