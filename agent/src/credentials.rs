//! Registry credentials of a Module (`spec.imageRepoSecret`), without Secret
//! access: [`PullSecrets`] is what the executor asks, with two sources.
//!
//! - [`ControllerPullSecrets`] (deploy/): `POST /agent/v1/pull-secret` on the
//!   controller's HTTPS server (Service `kmm-webhook`), authenticated with a
//!   service-account token for the controller's audience. The controller hands
//!   out the secret only if the Module exists, names it and selects this node
//!   ([`kmm_registry::agent_api`]); the agent's RBAC has no Secret access.
//! - [`ApiPullSecrets`]: reads the Secret from the API server itself (the
//!   agent's old behaviour), for setups without a controller (simulated
//!   fleets, tests) where the identity may read Secrets.
//!
//! [`AnyPullSecrets`] is either, chosen by [`PullSecretsArgs`] (`--pull-secrets`).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kmm_registry::agent_api::{PULL_SECRET_PATH, PullSecretRequest, PullSecretResponse};
use kube::{Api, Client};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::image::{AuthError, DockerConfig};

/// Why no credentials could be had; all are `PullSecretFailed` for the Module.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Direct mode: the API server refused or failed to give the Secret.
    #[error("reading Secret {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The controller refused (the Module does not name the secret or does
    /// not target this node, the token was not accepted, …): `message` says why.
    #[error(
        "the controller refused imageRepoSecret {namespace}/{name} (Module {module}): {message}"
    )]
    Refused {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Module name.
        module: String,
        /// HTTP status code (401, 403, 404).
        code: u16,
        /// The controller's reason.
        message: String,
    },
    /// The controller could not be reached or did not answer usefully.
    #[error("asking the controller at {url} for imageRepoSecret {namespace}/{name}: {source}")]
    Controller {
        /// Controller base URL.
        url: String,
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The controller's CA could not be had.
    #[error("CA of the controller: {0}")]
    Ca(String),
    /// The secret is not a usable docker config.
    #[error("imageRepoSecret {name}: {source}")]
    Format {
        /// Secret name.
        name: String,
        /// The parse error.
        #[source]
        source: AuthError,
    },
    /// Controller mode without the settings it needs.
    #[error("--pull-secrets controller needs {0}")]
    Config(&'static str),
}

/// Where the executor gets the docker config of a Module's `imageRepoSecret`.
///
/// `namespace`/`module` name the Module, `secret` its
/// `spec.imageRepoSecret.name` (the Secret lives in the Module's namespace).
pub trait PullSecrets: Send + Sync {
    /// The docker config of `secret`, for pulling `module`'s image.
    fn docker_config(
        &self,
        namespace: &str,
        secret: &str,
        module: &str,
    ) -> impl Future<Output = Result<DockerConfig, CredentialsError>> + Send;
}

/// Reads the Secret with the agent's own API identity (needs `get secrets`).
#[derive(Clone)]
pub struct ApiPullSecrets {
    client: Client,
}

impl ApiPullSecrets {
    /// Reads through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl PullSecrets for ApiPullSecrets {
    async fn docker_config(
        &self,
        namespace: &str,
        secret: &str,
        _module: &str,
    ) -> Result<DockerConfig, CredentialsError> {
        let found = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get(secret)
            .await
            .map_err(|source| CredentialsError::Api {
                namespace: namespace.to_string(),
                name: secret.to_string(),
                source: Box::new(source),
            })?;
        let data = found
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        DockerConfig::from_secret(found.type_.as_deref(), &data).map_err(|source| {
            CredentialsError::Format {
                name: secret.to_string(),
                source,
            }
        })
    }
}

/// Whom the agent trusts as the controller's server certificate issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerCa {
    /// A PEM bundle file (re-read as it changes, e.g. a mounted Secret).
    File(PathBuf),
    /// The `caBundle`s of this ValidatingWebhookConfiguration, read at each
    /// request: the controller's self-managed CAs (one per replica) or
    /// cert-manager's injected one.
    WebhookConfig(String),
    /// PEM given directly (tests).
    Pem(String),
}

/// Asks the controller for the pull secret (see the module docs).
#[derive(Clone)]
pub struct ControllerPullSecrets {
    /// The agent's API client (only to read the CA from the webhook configuration).
    api: Client,
    /// Base URL, e.g. `https://kmm-webhook.kmm-system.svc`.
    url: String,
    /// Service-account token for the controller's audience (re-read as it rotates).
    token_file: PathBuf,
    ca: ControllerCa,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl ControllerPullSecrets {
    /// A client of the controller at `url`, with the token in `token_file`,
    /// trusting `ca`; `api` reads a [`ControllerCa::WebhookConfig`].
    pub fn new(api: Client, url: String, token_file: PathBuf, ca: ControllerCa) -> Self {
        Self {
            api,
            url,
            token_file,
            ca,
        }
    }

    async fn client(&self) -> Result<Client, CredentialsError> {
        let uri = self
            .url
            .parse::<http::Uri>()
            .map_err(|e| CredentialsError::Ca(format!("controller URL {}: {e}", self.url)))?;
        let mut config = kube::Config::new(uri);
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(READ_TIMEOUT);
        config.auth_info.token_file = Some(self.token_file.to_string_lossy().into_owned());
        match &self.ca {
            ControllerCa::File(path) => config.root_cert_file = Some(path.clone()),
            ControllerCa::Pem(pem) => config.root_cert = Some(pem_certs(pem)?),
            ControllerCa::WebhookConfig(name) => {
                let vwc = Api::<ValidatingWebhookConfiguration>::all(self.api.clone())
                    .get(name)
                    .await
                    .map_err(|e| {
                        CredentialsError::Ca(format!(
                            "reading ValidatingWebhookConfiguration {name}: {e}"
                        ))
                    })?;
                let pem: String = vwc
                    .webhooks
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|w| w.client_config.ca_bundle.as_ref())
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned() + "\n")
                    .collect();
                config.root_cert = Some(
                    pem_certs(&pem)
                        .map_err(|e| CredentialsError::Ca(format!("caBundle of {name}: {e}")))?,
                );
            }
        }
        kmm_runtime::identify(&mut config, "kmm-agent", env!("CARGO_PKG_VERSION"));
        Client::try_from(config)
            .map_err(|e| CredentialsError::Ca(format!("building the controller client: {e}")))
    }
}

/// The DER certificates of a PEM bundle, duplicates dropped.
fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, CredentialsError> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = cert
            .map_err(|e| CredentialsError::Ca(format!("bad PEM: {e}")))?
            .to_vec();
        if !out.contains(&der) {
            out.push(der);
        }
    }
    if out.is_empty() {
        return Err(CredentialsError::Ca("no CERTIFICATE in the bundle".into()));
    }
    Ok(out)
}

impl PullSecrets for ControllerPullSecrets {
    async fn docker_config(
        &self,
        namespace: &str,
        secret: &str,
        module: &str,
    ) -> Result<DockerConfig, CredentialsError> {
        let client = self.client().await?;
        let body = serde_json::to_vec(&PullSecretRequest {
            namespace: namespace.to_string(),
            module: module.to_string(),
            secret: secret.to_string(),
        })
        .map_err(|e| CredentialsError::Ca(format!("encoding the request: {e}")))?;
        let request = http::Request::post(PULL_SECRET_PATH)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| CredentialsError::Ca(format!("building the request: {e}")))?;
        let answer: PullSecretResponse = match client.request(request).await {
            Ok(a) => a,
            Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
                return Err(CredentialsError::Refused {
                    namespace: namespace.to_string(),
                    name: secret.to_string(),
                    module: module.to_string(),
                    code: status.code,
                    message: status.message.clone(),
                });
            }
            Err(source) => {
                return Err(CredentialsError::Controller {
                    url: self.url.clone(),
                    namespace: namespace.to_string(),
                    name: secret.to_string(),
                    source: Box::new(source),
                });
            }
        };
        answer
            .docker_config()
            .map_err(|source| CredentialsError::Format {
                name: secret.to_string(),
                source,
            })
    }
}

/// Either source, as chosen on the command line.
#[derive(Clone)]
pub enum AnyPullSecrets {
    /// [`ApiPullSecrets`].
    Api(ApiPullSecrets),
    /// [`ControllerPullSecrets`].
    Controller(ControllerPullSecrets),
}

impl PullSecrets for AnyPullSecrets {
    async fn docker_config(
        &self,
        namespace: &str,
        secret: &str,
        module: &str,
    ) -> Result<DockerConfig, CredentialsError> {
        match self {
            AnyPullSecrets::Api(p) => p.docker_config(namespace, secret, module).await,
            AnyPullSecrets::Controller(p) => p.docker_config(namespace, secret, module).await,
        }
    }
}

/// `--pull-secrets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullSecretsMode {
    /// Read Secrets from the API server (the identity needs `get secrets`).
    Api,
    /// Ask the controller (deploy/: the agent may read no Secret).
    Controller,
}

/// The agent's flags for pull secrets (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct PullSecretsArgs {
    /// Where pull secrets (Module.spec.imageRepoSecret) come from.
    #[arg(long, env = "KMM_PULL_SECRETS", value_enum, default_value_t = PullSecretsMode::Api)]
    pub pull_secrets: PullSecretsMode,

    /// Base URL of the controller's HTTPS server (controller mode), e.g.
    /// https://kmm-webhook.kmm-system.svc.
    #[arg(long, env = "KMM_CONTROLLER_URL")]
    pub controller_url: Option<String>,

    /// Service-account token for the controller's audience (a projected
    /// token volume; re-read as the kubelet rotates it).
    #[arg(
        long,
        env = "KMM_CONTROLLER_TOKEN_FILE",
        default_value = "/var/run/secrets/kmm/controller/token"
    )]
    pub controller_token_file: PathBuf,

    /// PEM file of the CA that issued the controller's serving certificate.
    #[arg(
        long,
        env = "KMM_CONTROLLER_CA_FILE",
        conflicts_with = "controller_ca_webhook_config"
    )]
    pub controller_ca_file: Option<PathBuf>,

    /// Trust the caBundle of this ValidatingWebhookConfiguration (the
    /// controller's self-managed CAs, or cert-manager's).
    #[arg(long, env = "KMM_CONTROLLER_CA_WEBHOOK_CONFIG")]
    pub controller_ca_webhook_config: Option<String>,
}

impl PullSecretsArgs {
    /// The chosen source; `client` is the agent's API client.
    ///
    /// # Errors
    /// [`CredentialsError::Config`] when controller mode lacks its URL or CA.
    pub fn build(self, client: Client) -> Result<AnyPullSecrets, CredentialsError> {
        match self.pull_secrets {
            PullSecretsMode::Api => Ok(AnyPullSecrets::Api(ApiPullSecrets::new(client))),
            PullSecretsMode::Controller => {
                let url = self
                    .controller_url
                    .ok_or(CredentialsError::Config("--controller-url"))?;
                let ca = match (self.controller_ca_file, self.controller_ca_webhook_config) {
                    (Some(file), _) => ControllerCa::File(file),
                    (None, Some(name)) => ControllerCa::WebhookConfig(name),
                    (None, None) => {
                        return Err(CredentialsError::Config(
                            "--controller-ca-file or --controller-ca-webhook-config",
                        ));
                    }
                };
                Ok(AnyPullSecrets::Controller(ControllerPullSecrets::new(
                    client,
                    url,
                    self.controller_token_file,
                    ca,
                )))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_drop_duplicates_and_reject_empty() {
        let ca =
            "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIUQk3b\n-----END CERTIFICATE-----\n";
        // Not a real certificate, but pem parsing only frames base64 blocks.
        let twice = format!("{ca}\n{ca}");
        assert_eq!(pem_certs(&twice).unwrap().len(), 1);
        let err = pem_certs("").unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[tokio::test]
    async fn controller_mode_needs_its_url_and_a_ca() {
        let client =
            Client::try_from(kube::Config::new("https://127.0.0.1:1".parse().unwrap())).unwrap();
        let args = |url: Option<&str>, ca: Option<&str>| PullSecretsArgs {
            pull_secrets: PullSecretsMode::Controller,
            controller_url: url.map(String::from),
            controller_token_file: "/t".into(),
            controller_ca_file: None,
            controller_ca_webhook_config: ca.map(String::from),
        };
        let err = args(None, Some("kmm-webhook"))
            .build(client.clone())
            .err()
            .unwrap();
        assert!(err.to_string().contains("--controller-url"), "{err}");
        let err = args(Some("https://x"), None)
            .build(client.clone())
            .err()
            .unwrap();
        assert!(err.to_string().contains("--controller-ca-file"), "{err}");
        assert!(matches!(
            args(Some("https://x"), Some("kmm-webhook")).build(client.clone()),
            Ok(AnyPullSecrets::Controller(_))
        ));
        let api = PullSecretsArgs {
            pull_secrets: PullSecretsMode::Api,
            ..args(None, None)
        };
        assert!(matches!(api.build(client), Ok(AnyPullSecrets::Api(_))));
    }
}
