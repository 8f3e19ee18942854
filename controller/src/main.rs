//! `kmm-controller`: one leader per cluster (standbys wait on a Lease) runs the
//! Module controller: finalizers, status, device-plugin DaemonSets.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kmm_controller::lease::{LeaderElector, LeaseConfig, default_identity};
use kmm_controller::metrics::Metrics;
use kmm_controller::reconcile::{self, Settings};
use kmm_controller::server::{self, Readiness};

#[derive(Debug, Parser)]
#[command(name = "kmm-controller", version, about = "kmm-rs controller")]
struct Args {
    /// Only reconcile Modules of this namespace (all namespaces when unset).
    #[arg(long, env = "KMM_WATCH_NAMESPACE")]
    namespace: Option<String>,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "KMM_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// Run for leadership through a Lease (disable only with a single replica).
    #[arg(long, env = "KMM_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "KMM_LEASE_NAME", default_value = "kmm-controller-leader")]
    lease_name: String,

    /// Namespace of the leader Lease (the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kmm-system")]
    lease_namespace: String,

    /// Identity in the Lease; defaults to $POD_NAME, else <hostname>_<pid>.
    #[arg(long, env = "KMM_IDENTITY")]
    identity: Option<String>,

    /// leaseDurationSeconds: how long a silent leader keeps the Lease.
    #[arg(long, env = "KMM_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,

    /// Seconds between renewals (and between attempts of a standby).
    #[arg(long, env = "KMM_LEASE_RENEW_SECONDS", default_value_t = 5)]
    lease_renew_seconds: u64,

    /// Seconds between full reconciles of every Module.
    #[arg(long, env = "KMM_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,

    /// Log as JSON.
    #[arg(long, env = "KMM_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Args {
        namespace,
        metrics_addr,
        leader_elect,
        lease_name,
        lease_namespace,
        identity,
        lease_duration_seconds,
        lease_renew_seconds,
        resync_seconds,
        log_json,
    } = Args::parse();
    init_tracing(log_json);
    let identity = identity.unwrap_or_else(default_identity);

    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let metrics = Metrics::new()?;
    let ready = Readiness::default();
    let server = tokio::spawn(server::serve(metrics_addr, metrics.clone(), ready.clone()));
    client
        .apiserver_version()
        .await
        .context("reaching the API server")?;
    ready.set_ready();

    let settings = Settings {
        namespace,
        resync: Duration::from_secs(resync_seconds.max(1)),
        instance: identity.clone(),
        ..Settings::default()
    };
    let renew = Duration::from_secs(lease_renew_seconds.max(1));
    let duration = Duration::from_secs(lease_duration_seconds.max(lease_renew_seconds + 1));
    let mut cfg = LeaseConfig::new(&lease_name, &lease_namespace, &identity);
    cfg.lease_duration = duration;
    cfg.retry_period = renew;
    // Give up before anyone else may take over: two renewals before expiry.
    cfg.renew_deadline = duration.saturating_sub(renew).max(renew);
    let mut elector = LeaderElector::new(client.clone(), cfg);

    let outcome = {
        let lead = async {
            if leader_elect {
                tracing::info!(%identity, lease = %lease_name, "waiting for leadership");
                elector.acquire().await;
                tracing::info!(%identity, "became leader");
            }
            metrics.is_leader.set(1);
            let lost = async {
                if leader_elect {
                    elector.hold().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                () = reconcile::run(client.clone(), metrics.clone(), settings) => {
                    anyhow::bail!("controller stopped")
                }
                lost = lost => {
                    metrics.is_leader.set(0);
                    // Exit rather than keep half-stopped watches: the pod restarts as a standby.
                    Err(anyhow::Error::new(lost).context("stopping"))
                }
            }
        };
        tokio::select! {
            res = lead => Some(res),
            res = shutdown_signal() => { res?; None }
            res = server => Some(Err(anyhow::anyhow!("metrics server stopped: {res:?}"))),
        }
    };
    match outcome {
        Some(res) => res,
        None => {
            tracing::info!("shutting down; releasing the lease");
            if leader_elect && let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "releasing the lease");
            }
            Ok(())
        }
    }
}
