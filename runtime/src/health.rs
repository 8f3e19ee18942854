//! HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (process alive),
//! `/readyz` (the process says when it is ready).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::{Router, extract::State, http::StatusCode, routing::get};

/// Shared readiness flag.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Renders the metrics text on each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AppState {
    render: Render,
    ready: Readiness,
    not_ready: &'static str,
}

/// The router, separate from binding so tests can drive it. `not_ready` is
/// the `/readyz` body while not ready (say what is awaited).
pub fn router(render: Render, ready: Readiness, not_ready: &'static str) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { (s.render)() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.ready.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, s.not_ready)
                }
            }),
        )
        .with_state(AppState {
            render,
            ready,
            not_ready,
        })
}

/// Serves the endpoints until the process exits.
///
/// # Errors
/// If the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    render: Render,
    ready: Readiness,
    not_ready: &'static str,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(render, ready, not_ready)).await
}
