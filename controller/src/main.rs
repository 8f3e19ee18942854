//! `kmm-controller`: one leader per cluster (standbys wait on a Lease) runs the
//! Module controller (finalizers, status, device-plugin DaemonSets, builds), the
//! PreflightValidation controller and the ModuleRollout controller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kmm_controller::lease::{LeaderElector, LeaseConfig, default_identity};
use kmm_controller::metrics::Metrics;
use kmm_controller::reconcile::{self, Settings};
use kmm_controller::server::{self, Readiness};
use kmm_controller::webhook::WebhookSettings;
use kmm_controller::webhook::register::unregister;
use kmm_controller::{preflight, rollout};

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

    /// Image run by sign Jobs: the kmm-rs image, which carries `kmmctl sign`.
    #[arg(long, env = "KMM_SIGNER_IMAGE", default_value = kmm_controller::reconcile::DEFAULT_SIGNER_IMAGE)]
    signer_image: String,

    /// Seconds between sweeps for NodeModulesConfigs whose Node is gone.
    #[arg(long, env = "KMM_NMC_GC_SECONDS", default_value_t = 60)]
    nmc_gc_seconds: u64,

    /// Log as JSON.
    #[arg(long, env = "KMM_LOG_JSON", default_value_t = false)]
    log_json: bool,

    #[command(flatten)]
    webhook: WebhookArgs,
}

/// Admission webhooks (served by every replica, leader or not).
#[derive(Debug, clap::Args)]
struct WebhookArgs {
    /// Serve the admission webhooks (`false` disables them and their registration).
    #[arg(long = "webhook", env = "KMM_WEBHOOK", default_value_t = true, action = clap::ArgAction::Set)]
    enabled: bool,

    /// HTTPS address of /validate-namespace and /validate-module.
    #[arg(long, env = "KMM_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,

    /// Directory with tls.crt and tls.key (e.g. a cert-manager Secret). When
    /// unset, certificates are self-managed: a CA is generated at startup and
    /// written into the configuration's caBundle.
    #[arg(long, env = "KMM_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,

    /// ValidatingWebhookConfiguration to register into.
    #[arg(long, env = "KMM_WEBHOOK_CONFIG", default_value = "kmm-webhook")]
    webhook_config: String,

    /// Service (in the controller's namespace) the configuration points at.
    #[arg(long, env = "KMM_WEBHOOK_SERVICE", default_value = "kmm-webhook")]
    webhook_service: String,

    /// Base URL the API server calls instead of the Service (e.g.
    /// https://127.0.0.1:9443); the controller then creates the whole configuration.
    #[arg(long, env = "KMM_WEBHOOK_URL")]
    webhook_url: Option<String>,

    /// Only namespaces with these labels (key=value, comma-separated) are
    /// subject to the webhooks, and only PreflightValidations (cluster-scoped)
    /// with them (URL mode).
    #[arg(long, env = "KMM_WEBHOOK_NAMESPACE_SELECTOR", value_parser = parse_labels, default_value = "")]
    webhook_namespace_selector: BTreeMap<String, String>,

    /// Audience agents' tokens must carry to fetch pull secrets from this
    /// server (`/agent/v1/pull-secret`; the agent's `--controller-token-file`).
    #[arg(long, env = "KMM_AGENT_TOKEN_AUDIENCE", default_value = kmm_registry::agent_api::DEFAULT_TOKEN_AUDIENCE)]
    agent_token_audience: String,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("{p:?} is not key=value"))
        })
        .collect()
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
        signer_image,
        nmc_gc_seconds,
        log_json,
        webhook,
    } = Args::parse();
    kmm_runtime::init_tracing(log_json);
    let identity = identity.unwrap_or_else(default_identity);

    let client = kmm_runtime::kube_client("kmm-controller", env!("CARGO_PKG_VERSION"))
        .await
        .context("connecting to the API server")?;
    // Evictions: a PodDisruptionBudget's 429 is an answer, not a hiccup to retry.
    let eviction_client =
        kmm_runtime::kube_client_without_retry("kmm-controller", env!("CARGO_PKG_VERSION"))
            .await
            .context("connecting to the API server")?;
    let metrics = Metrics::new()?;
    let ready = Readiness::default();
    let server = tokio::spawn(server::serve(metrics_addr, metrics.clone(), ready.clone()));
    client
        .apiserver_version()
        .await
        .context("reaching the API server")?;

    // URL mode registers a configuration of its own: removed again on a clean
    // shutdown, so a stopped controller does not leave a dead webhook behind.
    let own_config =
        (webhook.enabled && webhook.webhook_url.is_some() && webhook.webhook_cert_dir.is_none())
            .then(|| webhook.webhook_config.clone());
    let webhook_server = if webhook.enabled {
        let settings = WebhookSettings {
            addr: webhook.webhook_addr,
            cert_dir: webhook.webhook_cert_dir,
            config_name: webhook.webhook_config,
            service_name: webhook.webhook_service,
            service_namespace: lease_namespace.clone(),
            url: webhook.webhook_url,
            namespace_selector: webhook.webhook_namespace_selector,
        };
        // Agents read no Secrets: they ask here for the pull secrets of the
        // Modules that target their node.
        let pull_secrets =
            kmm_controller::agent_credentials::router(client.clone(), webhook.agent_token_audience);
        let serve = kmm_controller::webhook::start(
            client.clone(),
            &settings,
            metrics.clone(),
            pull_secrets,
        )
        .await
        .context("starting the admission webhooks")?;
        Some(tokio::spawn(serve))
    } else {
        tracing::info!("admission webhooks disabled");
        None
    };
    let webhook_stopped = async {
        match webhook_server {
            Some(h) => h.await,
            None => std::future::pending().await,
        }
    };
    ready.set_ready();

    let settings = Settings {
        namespace,
        resync: Duration::from_secs(resync_seconds.max(1)),
        instance: identity.clone(),
        signer_image,
        nmc_gc_interval: Duration::from_secs(nmc_gc_seconds.max(1)),
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
                () = reconcile::run(client.clone(), metrics.clone(), settings.clone()) => {
                    anyhow::bail!("controller stopped")
                }
                () = preflight::run(client.clone(), metrics.clone(), settings.clone()) => {
                    anyhow::bail!("preflight controller stopped")
                }
                () = rollout::run(client.clone(), eviction_client.clone(), metrics.clone(), settings) => {
                    anyhow::bail!("rollout controller stopped")
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
            res = webhook_stopped => Some(Err(anyhow::anyhow!("webhook server stopped: {res:?}"))),
        }
    };
    match outcome {
        Some(res) => res,
        None => {
            if let Some(name) = &own_config
                && let Err(e) = unregister(client.clone(), name).await
            {
                tracing::warn!(error = %e, "removing the webhook configuration");
            }
            tracing::info!("shutting down; releasing the lease");
            if leader_elect && let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "releasing the lease");
            }
            Ok(())
        }
    }
}
