//! Pull secrets for agents, so that agents need no Secret access at all.
//!
//! `POST /agent/v1/pull-secret` (see [`kmm_registry::agent_api`]) on the
//! controller's HTTPS server, the one behind Service `kmm-webhook`. The caller
//! is whoever its bearer token says (TokenReview, for our audience only); it
//! must be a node agent (it holds the kmm-agent ClusterRole's marker
//! `own-node-only` on `kmm.sigs.x-k8s.io/nodeagents`, the same test as the
//! admission policies, asked with a SubjectAccessReview) with a token bound
//! to a Pod on a node. It gets the docker config of a Secret only when the
//! named Module exists, names that Secret as `imageRepoSecret` and selects
//! the caller's node; every other request is refused with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Node, Secret};
use kmm_common::Module;
use kmm_common::targeting::selector_matches;
use kmm_registry::agent_api::{PULL_SECRET_PATH, PullSecretRequest, PullSecretResponse};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::Instrument as _;

/// The user extra a Pod-bound service-account token carries its node in.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// API group of the node-agent marker permission (deploy/base/rbac/agent.yaml).
pub const AGENT_MARKER_GROUP: &str = "kmm.sigs.x-k8s.io";
/// Resource of the marker permission (no real API object).
pub const AGENT_MARKER_RESOURCE: &str = "nodeagents";
/// Verb of the marker permission.
pub const AGENT_MARKER_VERB: &str = "own-node-only";

/// Why a request gets no credentials; `Display` is the answer's message.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The body is not a [`PullSecretRequest`].
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    NoToken,
    /// The TokenReview did not accept the token (expired, other audience, Pod gone).
    #[error("token not accepted: {0}")]
    Unauthenticated(String),
    /// The caller is not a node agent.
    #[error(
        "{user} is not a kmm node agent (it lacks {AGENT_MARKER_VERB} on {AGENT_MARKER_GROUP}/{AGENT_MARKER_RESOURCE})"
    )]
    NotAnAgent {
        /// User name.
        user: String,
    },
    /// The token is not bound to a Pod on a node.
    #[error("the token of {user} is not bound to a Pod on a node (no {NODE_NAME_EXTRA})")]
    NoNode {
        /// User name.
        user: String,
    },
    /// The caller's node is not in the API.
    #[error("node {0} does not exist")]
    NodeNotFound(String),
    /// No such Module.
    #[error("Module {namespace}/{module} does not exist")]
    ModuleNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        module: String,
    },
    /// The Module names another secret, or none.
    #[error("Module {namespace}/{module} names {named} as imageRepoSecret, not {secret}")]
    SecretNotNamed {
        /// Namespace.
        namespace: String,
        /// Module name.
        module: String,
        /// What the Module names (`no secret` when none).
        named: String,
        /// What was asked for.
        secret: String,
    },
    /// The Module's selector does not select the caller's node.
    #[error("Module {namespace}/{module} does not target node {node}: {reason}")]
    NotTargeted {
        /// Namespace.
        namespace: String,
        /// Module name.
        module: String,
        /// The caller's node.
        node: String,
        /// The selector mismatch.
        reason: String,
    },
    /// The Module names a Secret that does not exist.
    #[error(
        "Secret {namespace}/{secret} (imageRepoSecret of Module {namespace}/{module}) does not exist"
    )]
    SecretNotFound {
        /// Namespace.
        namespace: String,
        /// Module name.
        module: String,
        /// Secret name.
        secret: String,
    },
    /// The API server failed (not the caller's fault).
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// The error.
        source: kube::Error,
    },
}

impl Refusal {
    /// HTTP code and Kubernetes `Status.reason` of the answer.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Refusal::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            Refusal::NoToken | Refusal::Unauthenticated(_) => {
                (StatusCode::UNAUTHORIZED, "Unauthorized")
            }
            Refusal::SecretNotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            Refusal::Api { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            _ => (StatusCode::FORBIDDEN, "Forbidden"),
        }
    }
}

/// Whether `module` (looked up as `req.namespace/req.module`) entitles the
/// agent on `node` (with `labels`) to `req.secret`. Pure: the lookups are
/// the caller's.
///
/// # Errors
/// The [`Refusal`] that says why not.
pub fn entitled(
    req: &PullSecretRequest,
    module: Option<&Module>,
    node: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), Refusal> {
    let Some(module) = module else {
        return Err(Refusal::ModuleNotFound {
            namespace: req.namespace.clone(),
            module: req.module.clone(),
        });
    };
    let named = module
        .spec
        .image_repo_secret
        .as_ref()
        .map(|s| s.name.as_str())
        .filter(|s| !s.is_empty());
    if named != Some(req.secret.as_str()) {
        return Err(Refusal::SecretNotNamed {
            namespace: req.namespace.clone(),
            module: req.module.clone(),
            named: named.unwrap_or("no secret").to_string(),
            secret: req.secret.clone(),
        });
    }
    selector_matches(&module.spec.selector, labels).map_err(|e| Refusal::NotTargeted {
        namespace: req.namespace.clone(),
        module: req.module.clone(),
        node: node.to_string(),
        reason: e.to_string(),
    })
}

/// The endpoint's shared state.
#[derive(Clone)]
struct Service {
    client: Client,
    audience: String,
}

/// The router of [`PULL_SECRET_PATH`]; tokens must carry `audience`.
pub fn router(client: Client, audience: String) -> Router {
    Router::new()
        .route(PULL_SECRET_PATH, post(pull_secret))
        .with_state(Arc::new(Service { client, audience }))
}

async fn pull_secret(State(svc): State<Arc<Service>>, headers: HeaderMap, body: Bytes) -> Response {
    let span = tracing::info_span!("agent_pull_secret", user = tracing::field::Empty);
    match svc.resolve(&headers, &body).instrument(span).await {
        Ok(resp) => match serde_json::to_vec(&resp) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Err(refusal) => refuse(&refusal),
    }
}

/// A Kubernetes `Status`, which kube clients turn into `Error::Api`.
fn refuse(refusal: &Refusal) -> Response {
    let (code, reason) = refusal.status();
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": refusal.to_string(),
        "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        status.to_string(),
    )
        .into_response()
}

impl Service {
    async fn resolve(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<PullSecretResponse, Refusal> {
        let req: PullSecretRequest =
            serde_json::from_slice(body).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::NoToken)?;
        let user = self.authenticate(token).await?;
        let name = user.username.clone().unwrap_or_default();
        tracing::Span::current().record("user", name.as_str());
        let node = node_of(&user).ok_or_else(|| Refusal::NoNode { user: name.clone() })?;
        if !self.is_agent(&user).await? {
            return Err(Refusal::NotAnAgent { user: name });
        }
        let result = self.lookup(&req, &node).await;
        match &result {
            Ok(_) => {
                tracing::info!(%node, namespace = %req.namespace, module = %req.module, secret = %req.secret, "pull secret handed out")
            }
            Err(e) => {
                tracing::info!(%node, namespace = %req.namespace, module = %req.module, secret = %req.secret, reason = %e, "pull secret refused")
            }
        }
        result
    }

    async fn authenticate(&self, token: &str) -> Result<UserInfo, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let status = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| Refusal::Api {
                what: "TokenReview".into(),
                source,
            })?
            .status
            .unwrap_or_default();
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Ok(user),
            _ => Err(Refusal::Unauthenticated(status.error.unwrap_or_else(
                || "the token is not valid for this audience".into(),
            ))),
        }
    }

    async fn is_agent(&self, user: &UserInfo) -> Result<bool, Refusal> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(AGENT_MARKER_GROUP.into()),
                    resource: Some(AGENT_MARKER_RESOURCE.into()),
                    verb: Some(AGENT_MARKER_VERB.into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| Refusal::Api {
                what: "SubjectAccessReview".into(),
                source,
            })?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    async fn lookup(
        &self,
        req: &PullSecretRequest,
        node: &str,
    ) -> Result<PullSecretResponse, Refusal> {
        let api_err = |what: String| move |source| Refusal::Api { what, source };
        let labels = Api::<Node>::all(self.client.clone())
            .get_opt(node)
            .await
            .map_err(api_err(format!("reading node {node}")))?
            .ok_or_else(|| Refusal::NodeNotFound(node.to_string()))?
            .metadata
            .labels
            .unwrap_or_default();
        let module = Api::<Module>::namespaced(self.client.clone(), &req.namespace)
            .get_opt(&req.module)
            .await
            .map_err(api_err(format!(
                "reading Module {}/{}",
                req.namespace, req.module
            )))?;
        entitled(req, module.as_ref(), node, &labels)?;
        let secret = Api::<Secret>::namespaced(self.client.clone(), &req.namespace)
            .get_opt(&req.secret)
            .await
            .map_err(api_err(format!(
                "reading Secret {}/{}",
                req.namespace, req.secret
            )))?
            .ok_or_else(|| Refusal::SecretNotFound {
                namespace: req.namespace.clone(),
                module: req.module.clone(),
                secret: req.secret.clone(),
            })?;
        let data = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        Ok(PullSecretResponse::from_secret(secret.type_, &data))
    }
}

/// The node a Pod-bound token names (exactly one value), if any.
fn node_of(user: &UserInfo) -> Option<String> {
    match user.extra.as_ref()?.get(NODE_NAME_EXTRA)?.as_slice() {
        [node] if !node.is_empty() => Some(node.clone()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn module(selector: serde_json::Value, secret: Option<&str>) -> Module {
        let mut spec = serde_json::json!({
            "selector": selector,
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "m"},
                "kernelMappings": [{"regexp": "^.+$", "containerImage": "r/x:1"}]
            }}
        });
        if let Some(s) = secret {
            spec["imageRepoSecret"] = serde_json::json!({"name": s});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
            "metadata": {"name": "m", "namespace": "ns"}, "spec": spec,
        }))
        .unwrap()
    }

    fn req(secret: &str) -> PullSecretRequest {
        PullSecretRequest {
            namespace: "ns".into(),
            module: "m".into(),
            secret: secret.into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_a_module_that_names_the_secret_and_selects_the_node_entitles() {
        let m = module(serde_json::json!({"gpu": "yes"}), Some("pull"));
        let gpu = labels(&[("gpu", "yes")]);
        assert!(entitled(&req("pull"), Some(&m), "n1", &gpu).is_ok());

        let err = entitled(&req("pull"), Some(&m), "n2", &labels(&[("gpu", "no")])).unwrap_err();
        assert!(matches!(err, Refusal::NotTargeted { .. }), "{err}");
        assert!(err.to_string().contains("does not target node n2"), "{err}");

        let err = entitled(&req("other"), Some(&m), "n1", &gpu).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Module ns/m names pull as imageRepoSecret, not other"
        );
        let none = module(serde_json::json!({}), None);
        let err = entitled(&req("pull"), Some(&none), "n1", &gpu).unwrap_err();
        assert!(err.to_string().contains("names no secret"), "{err}");

        let err = entitled(&req("pull"), None, "n1", &gpu).unwrap_err();
        assert_eq!(err.to_string(), "Module ns/m does not exist");
        assert_eq!(err.status().0, StatusCode::FORBIDDEN);
    }

    #[test]
    fn node_comes_only_from_a_single_valued_extra() {
        let mut user = UserInfo::default();
        assert_eq!(node_of(&user), None);
        user.extra = Some(BTreeMap::from([(NODE_NAME_EXTRA.into(), vec!["a".into()])]));
        assert_eq!(node_of(&user).as_deref(), Some("a"));
        user.extra = Some(BTreeMap::from([(
            NODE_NAME_EXTRA.into(),
            vec!["a".into(), "b".into()],
        )]));
        assert_eq!(node_of(&user), None);
    }
}
