//! The API-server client shared by the cluster subcommands (`explain`, `rollout`, `status`):
//! built from kubectl's flags ([`ClusterArgs`]) and the kubeconfig with short timeouts, and
//! kube errors sorted into "the API server answered no" versus "no answer at all".

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Why no answer could be had from the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// No answer from the API server (connection refused, timeout, TLS, ...).
    #[error("cannot reach the API server at {url}")]
    Unreachable {
        /// API server URL from the kubeconfig.
        url: String,
        /// What went wrong.
        #[source]
        source: kube::Error,
    },
    /// The API server answered with an error (forbidden, ...): its code and message.
    #[error("API request failed: {0}")]
    Api(String),
}

/// kubectl's flags for reaching a cluster, accepted by every subcommand and anywhere on the
/// command line, so `kubectl kmm status -n drivers --context prod` means what it does for
/// kubectl. Commands that do not talk to a cluster ignore them.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "FILE", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(long, short = 'n', value_name = "NAMESPACE", global = true)]
    pub namespace: Option<String>,
}

impl ClusterArgs {
    /// Connects with these flags; the namespace is `-n`, else the context's.
    ///
    /// # Errors
    /// See [`connect`].
    pub async fn connect(&self) -> Result<(Cluster, String), Error> {
        let cluster = connect(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| cluster.namespace.clone());
        Ok((cluster, namespace))
    }
}

/// A client and what the kubeconfig says about it.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The context's default namespace (`default` when it sets none).
    pub namespace: String,
    /// The API server URL (for error messages).
    pub url: String,
}

impl Cluster {
    /// Sorts a kube error: an API answer (a `Status`) is [`Error::Api`]; anything else means
    /// we never got an answer.
    pub fn classify(&self, err: kube::Error) -> Error {
        match err {
            kube::Error::Api(status) => Error::Api(format!(
                "{} ({} {})",
                status.message, status.code, status.reason
            )),
            other => Error::Unreachable {
                url: self.url.clone(),
                source: other,
            },
        }
    }
}

/// A client for `kubeconfig` (else `$KUBECONFIG`, `~/.kube/config`, in-cluster) and
/// `context`.
///
/// # Errors
/// [`Error::Kubeconfig`] when no usable configuration is found.
pub async fn connect(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Cluster, Error> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let mut config = match (kubeconfig, context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig(e.to_string()))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    // A dead API server should fail in seconds, not hang.
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(30));
    let namespace = config.default_namespace.clone();
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| Error::Unreachable {
        url: url.clone(),
        source,
    })?;
    Ok(Cluster {
        client,
        namespace,
        url,
    })
}
