//! The wire format of the controller's pull-secret endpoint, shared by the
//! controller (serves it) and the agent (calls it).
//!
//! An agent may not read Secrets. It asks the controller for the pull secret
//! a Module names: `POST` [`PULL_SECRET_PATH`] with a [`PullSecretRequest`]
//! and its service-account token as `Authorization: Bearer`. The controller
//! answers [`PullSecretResponse`] (the Secret's type and docker-config keys
//! only) when the Module exists, names that secret and targets the caller's
//! node, else a Kubernetes `Status` with code 401/403/404 and the reason.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, DOCKER_CFG_KEY, DOCKER_CONFIG_JSON_KEY, DockerConfig};

/// Path of the endpoint on the controller's HTTPS (webhook) server.
pub const PULL_SECRET_PATH: &str = "/agent/v1/pull-secret";

/// Audience the agent's token for the controller carries (and the controller
/// asks the TokenReview for), so that token is useless against the API server.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "kmm-controller";

/// Which pull secret, for which Module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullSecretRequest {
    /// The Module's namespace (also the Secret's).
    pub namespace: String,
    /// The Module's name.
    pub module: String,
    /// The Secret's name (the Module's `spec.imageRepoSecret.name`).
    pub secret: String,
}

/// The docker-config part of a pull secret.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PullSecretResponse {
    /// The Secret's `type`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// `.dockerconfigjson` / `.dockercfg`, base64 as in a Secret's `data`.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

impl std::fmt::Debug for PullSecretResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        f.debug_struct("PullSecretResponse")
            .field("type", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PullSecretResponse {
    /// The docker-config keys of a Secret's decoded `data`; other keys stay behind.
    pub fn from_secret(type_: Option<String>, data: &BTreeMap<String, Vec<u8>>) -> Self {
        let data = [DOCKER_CONFIG_JSON_KEY, DOCKER_CFG_KEY]
            .into_iter()
            .filter_map(|k| data.get(k).map(|v| (k.to_owned(), STANDARD.encode(v))))
            .collect();
        Self { type_, data }
    }

    /// Parses the credentials as [`DockerConfig::from_secret`] does.
    ///
    /// # Errors
    /// Undecodable base64 or an unusable docker config.
    pub fn docker_config(&self) -> Result<DockerConfig, AuthError> {
        let mut decoded = BTreeMap::new();
        for (key, value) in &self.data {
            let bytes = STANDARD.decode(value).map_err(|e| AuthError::InvalidJson {
                key: if key == DOCKER_CFG_KEY {
                    DOCKER_CFG_KEY
                } else {
                    DOCKER_CONFIG_JSON_KEY
                },
                reason: format!("not base64: {e}"),
            })?;
            decoded.insert(key.clone(), bytes);
        }
        DockerConfig::from_secret(self.type_.as_deref(), &decoded)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn only_docker_keys_travel_and_parse_back() {
        let auth = STANDARD.encode("u:p");
        let json = format!(r#"{{"auths":{{"r.io":{{"auth":"{auth}"}}}}}}"#);
        let data = BTreeMap::from([
            (DOCKER_CONFIG_JSON_KEY.to_owned(), json.into_bytes()),
            ("other".to_owned(), b"not for agents".to_vec()),
        ]);
        let resp =
            PullSecretResponse::from_secret(Some("kubernetes.io/dockerconfigjson".into()), &data);
        assert_eq!(
            resp.data.keys().collect::<Vec<_>>(),
            [DOCKER_CONFIG_JSON_KEY]
        );
        let wire = serde_json::to_string(&resp).unwrap();
        assert!(!wire.contains("not for agents"));
        assert!(!format!("{resp:?}").contains(&resp.data[DOCKER_CONFIG_JSON_KEY]));
        let back: PullSecretResponse = serde_json::from_str(&wire).unwrap();
        let cfg = back.docker_config().unwrap();
        assert!(cfg.credential_for(&"r.io/x/y:1".parse().unwrap()).is_some());
    }

    #[test]
    fn bad_base64_is_a_readable_error() {
        let resp = PullSecretResponse {
            type_: None,
            data: BTreeMap::from([(DOCKER_CONFIG_JSON_KEY.to_owned(), "!!".to_owned())]),
        };
        let err = resp.docker_config().unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
    }
}
