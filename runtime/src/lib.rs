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

/// Why no API server client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No in-cluster config nor kubeconfig.
    #[error("no API server configuration (in-cluster or KUBECONFIG): {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the API server client: {0}")]
    Build(#[from] kube::Error),
}

/// Names this process in every request as `component/version` (the HTTP
/// User-Agent), so API server audit logs and metrics tell kmm-agent and
/// kmm-controller apart from each other and from other clients.
pub fn identify(config: &mut kube::Config, component: &str, version: &str) {
    let value = format!("{component}/{version}");
    // Component names and crate versions are ASCII: always a valid header.
    if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
        config
            .headers
            .retain(|(name, _)| name != axum::http::header::USER_AGENT);
        config.headers.push((axum::http::header::USER_AGENT, value));
    }
}

/// A client from the in-cluster config or KUBECONFIG, identified as
/// `component/version` (see [`identify`]).
///
/// # Errors
/// No configuration, or a client that cannot be built from it.
pub async fn kube_client(component: &str, version: &str) -> Result<kube::Client, ClientError> {
    let mut config = kube::Config::infer().await?;
    identify(&mut config, component, version);
    Ok(kube::Client::try_from(config)?)
}

/// [`kube_client`] without kube's retry of 429/503/504 answers, for calls where such an
/// answer is the verdict: an eviction a PodDisruptionBudget refuses answers 429, which the
/// default retry would repeat for minutes instead of reporting.
///
/// # Errors
/// As [`kube_client`].
pub async fn kube_client_without_retry(
    component: &str,
    version: &str,
) -> Result<kube::Client, ClientError> {
    let mut config = kube::Config::infer().await?;
    identify(&mut config, component, version);
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_agent_names_the_component_once() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().expect("uri"));
        identify(&mut config, "kmm-agent", "1.2.3");
        identify(&mut config, "kmm-agent", "1.2.4");
        let agents: Vec<_> = config
            .headers
            .iter()
            .filter(|(n, _)| n == axum::http::header::USER_AGENT)
            .map(|(_, v)| v.to_str().expect("ascii"))
            .collect();
        assert_eq!(agents, ["kmm-agent/1.2.4"]);
    }
}
