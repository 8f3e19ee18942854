//! The controller's `/metrics`, `/healthz` and `/readyz` (ready once the API
//! server answered the first Lease round; standbys are ready too).

use std::net::SocketAddr;
use std::sync::Arc;

pub use kmm_runtime::health::Readiness;

use crate::metrics::Metrics;

/// Serves the endpoints until the process exits.
///
/// # Errors
/// If the address cannot be bound.
pub async fn serve(addr: SocketAddr, metrics: Metrics, ready: Readiness) -> std::io::Result<()> {
    let render = Arc::new(move || metrics.render());
    kmm_runtime::health::serve(
        addr,
        render,
        ready,
        kmm_runtime::health::Liveness::default(),
        "not ready: API server not reached yet",
    )
    .await
}
