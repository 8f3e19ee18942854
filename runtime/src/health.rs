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

/// Liveness: the process's main loop beats; `/healthz` fails once the last beat
/// is older than the allowed age (a stuck loop gets the pod restarted).
#[derive(Clone)]
pub struct Liveness {
    started: std::time::Instant,
    last_beat_ms: Arc<std::sync::atomic::AtomicU64>,
    max_age: Option<std::time::Duration>,
}

impl Default for Liveness {
    /// Always alive (no loop to watch).
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            last_beat_ms: Arc::default(),
            max_age: None,
        }
    }
}

impl Liveness {
    /// Alive while the last beat is at most `max_age` old (counted from now until the first beat).
    pub fn with_max_age(max_age: std::time::Duration) -> Self {
        Self {
            max_age: Some(max_age),
            ..Self::default()
        }
    }

    /// The loop made progress.
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(ms, Ordering::SeqCst);
    }

    /// How long ago the last beat was.
    pub fn since_last_beat(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_beat_ms.load(Ordering::SeqCst));
        self.started.elapsed().saturating_sub(last)
    }

    /// Whether the loop beat recently enough.
    pub fn is_alive(&self) -> bool {
        self.max_age.is_none_or(|max| self.since_last_beat() <= max)
    }
}

/// Renders the metrics text on each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AppState {
    render: Render,
    ready: Readiness,
    live: Liveness,
    not_ready: &'static str,
}

/// The router, separate from binding so tests can drive it. `not_ready` is
/// the `/readyz` body while not ready (say what is awaited).
pub fn router(render: Render, ready: Readiness, live: Liveness, not_ready: &'static str) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { (s.render)() }),
        )
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move {
                if s.live.is_alive() {
                    (StatusCode::OK, "ok".to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "main loop stuck: no progress for {} s",
                            s.live.since_last_beat().as_secs()
                        ),
                    )
                }
            }),
        )
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
            live,
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
    live: Liveness,
    not_ready: &'static str,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(render, ready, live, not_ready)).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn liveness_fails_once_the_loop_stops_beating() {
        let live = Liveness::with_max_age(Duration::from_millis(50));
        live.beat();
        assert!(live.is_alive());
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            !live.is_alive(),
            "{:?} since the last beat",
            live.since_last_beat()
        );
        live.beat();
        assert!(live.is_alive());
        assert!(
            Liveness::default().is_alive(),
            "no loop to watch: always alive"
        );
    }
}
