//! HTTP endpoints: `/metrics` (Prometheus), `/healthz` (process alive), `/readyz`
//! (the API server answered the first Lease round; standbys are ready too).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::Metrics;

/// Shared readiness flag, set once the controller has talked to the API server.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the controller ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether the controller is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    ready: Readiness,
}

/// The router, separate from binding so tests can drive it.
pub fn router(metrics: Metrics, ready: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.ready.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: API server not reached yet",
                    )
                }
            }),
        )
        .with_state(AppState { metrics, ready })
}

/// Serves the endpoints until the process exits.
///
/// # Errors
/// If the address cannot be bound.
pub async fn serve(addr: SocketAddr, metrics: Metrics, ready: Readiness) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(metrics, ready)).await
}
