//! Process plumbing shared by `kmm-agent` and `kmm-controller`: the
//! `/metrics`, `/healthz`, `/readyz` endpoints and logging setup.
#![warn(missing_docs)]

pub mod health;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as JSON when asked;
/// colours only on a terminal (logs usually go to files and collectors).
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
