//! The `Authorization` header for one pull: distribution's token flow
//! (`GET /v2/` → `WWW-Authenticate: Bearer realm=...` → token), else Basic
//! credentials, else none. Every body on the way is read with a cap: the
//! realm is named by the registry and may serve anything.

use kmm_registry::reqwest::{self, StatusCode, header};
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::ImageError;
use super::bounded::read_to_limit;
use super::source::body_of;

/// Most bytes of a token response (JWTs are a few KiB).
const MAX_TOKEN_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The header to send on the pull's requests (`None`: anonymous).
pub(crate) async fn authorization(
    http: &reqwest::Client,
    base: &str,
    reference: &Reference,
    auth: &RegistryAuth,
) -> Result<Option<header::HeaderValue>, ImageError> {
    let registry_error = |message: String| ImageError::Registry {
        registry: reference.registry().to_owned(),
        reference: reference.whole(),
        message,
    };
    let value = match auth {
        RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
        _ => {
            let ping = http
                .get(format!("{base}/v2/"))
                .send()
                .await
                .map_err(|e| registry_error(kmm_registry::lookup::error_chain(&e)))?;
            let challenge = ping
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_challenge);
            match challenge {
                Some((realm, service)) => {
                    let scope = format!("repository:{}:pull", reference.repository());
                    let token = fetch_token(http, &realm, service.as_deref(), &scope, auth)
                        .await
                        .map_err(|(status, message)| match status {
                            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                                ImageError::Unauthorized {
                                    registry: reference.registry().to_owned(),
                                    reference: reference.whole(),
                                }
                            }
                            _ => registry_error(format!("token from {realm}: {message}")),
                        })?;
                    Some(format!("Bearer {token}"))
                }
                None => basic(auth),
            }
        }
    };
    value
        .map(|v| {
            let mut v = header::HeaderValue::from_str(&v)
                .map_err(|e| registry_error(format!("unusable credentials: {e}")))?;
            v.set_sensitive(true);
            Ok(v)
        })
        .transpose()
}

fn basic(auth: &RegistryAuth) -> Option<String> {
    use base64::Engine as _;
    match auth {
        RegistryAuth::Basic(user, password) => Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )),
        _ => None,
    }
}

/// Asks the realm for a pull token (with the Basic credentials, if any).
/// Errors carry the HTTP status when there was one.
async fn fetch_token(
    http: &reqwest::Client,
    realm: &str,
    service: Option<&str>,
    scope: &str,
    auth: &RegistryAuth,
) -> Result<String, (Option<StatusCode>, String)> {
    let mut query = vec![("scope", scope)];
    if let Some(service) = service {
        query.push(("service", service));
    }
    let mut request = http.get(realm).query(&query);
    if let RegistryAuth::Basic(user, password) = auth {
        request = request.basic_auth(user, Some(password));
    }
    let response = request
        .send()
        .await
        .map_err(|e| (None, kmm_registry::lookup::error_chain(&e)))?;
    let status = response.status();
    let body = read_to_limit(body_of(response).chunks, MAX_TOKEN_BYTES + 1).await;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
        return Err((Some(status), format!("HTTP {status}: {}", text.trim())));
    }
    if body.len() as u64 > MAX_TOKEN_BYTES {
        return Err((None, format!("token response over {MAX_TOKEN_BYTES} bytes")));
    }
    let parsed: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| (None, format!("token response: {e}")))?;
    parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| (None, "token response without a token".to_owned()))
}

/// `realm` and `service` of a `Bearer` challenge; `None` for any other scheme.
fn bearer_challenge(value: &str) -> Option<(String, Option<String>)> {
    let value = value.trim_start();
    let (scheme, params) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    Some((get("realm")?, get("service")))
}

/// `k=v, k2="v, with comma"` → pairs (quoted values may hold commas and `\"`).
fn parse_params(mut rest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            return out;
        };
        let key = key.trim().to_owned();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((key, value));
        rest = next;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_are_parsed_and_others_ignored() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some((
                "https://auth.example/token".to_owned(),
                Some("registry.example".to_owned())
            ))
        );
        assert_eq!(
            bearer_challenge(r#"bearer service="s, with comma", realm="http://127.0.0.1:1/t\"x""#),
            Some((
                "http://127.0.0.1:1/t\"x".to_owned(),
                Some("s, with comma".to_owned())
            ))
        );
        assert_eq!(
            bearer_challenge("Bearer realm=http://h/t"),
            Some(("http://h/t".to_owned(), None))
        );
        assert_eq!(bearer_challenge(r#"Basic realm="Registry Realm""#), None);
        assert_eq!(bearer_challenge(r#"Bearer service="no realm""#), None);
        assert_eq!(bearer_challenge(""), None);
    }
}
