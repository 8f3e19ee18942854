//! Registry credentials from a Kubernetes pull secret.
//!
//! Takes the secret's `type` and its (already base64-decoded) `data` map, so
//! this stays pure and needs no API client. Matching follows the kubelet:
//! a key is `host[:port][/path]` (an `https://` prefix and Docker Hub's
//! `/v1/` suffix are ignored), `*` matches one host label, the port must be
//! equal, the path must be a prefix of the repository, and the most specific
//! key wins.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use thiserror::Error;

/// `kubernetes.io/dockerconfigjson` secrets keep their config under this key.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// Legacy `kubernetes.io/dockercfg` secrets keep their config under this key.
pub const DOCKER_CFG_KEY: &str = ".dockercfg";

/// Why a pull secret cannot be used.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The secret has none of the expected keys.
    #[error("secret of type '{secret_type}' has neither a .dockerconfigjson nor a .dockercfg key")]
    MissingKey {
        /// The secret's type.
        secret_type: String,
    },
    /// The docker config is not valid JSON of the expected shape.
    #[error("{key} is not a valid docker config: {reason}")]
    InvalidJson {
        /// The data key.
        key: &'static str,
        /// The JSON error.
        reason: String,
    },
    /// An `auth` field is not base64 of `user:password`.
    #[error("the 'auth' entry for registry '{registry}' is not base64 of user:password")]
    InvalidAuth {
        /// The registry key of that entry.
        registry: String,
    },
}

/// Credentials for one registry entry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// HTTP basic (also used for a token-service exchange).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A registry bearer token (`registrytoken`).
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

/// All registry entries of one or more pull secrets.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    entries: Vec<(Pattern, Credential)>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl DockerConfig {
    /// Parses a pull secret from its `type` and decoded `data`.
    ///
    /// `kubernetes.io/dockerconfigjson` reads `.dockerconfigjson`
    /// (`{"auths": {...}}`), `kubernetes.io/dockercfg` reads `.dockercfg`
    /// (the `auths` map itself). Any other type is accepted if one of the two
    /// keys is present.
    pub fn from_secret(
        secret_type: Option<&str>,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, AuthError> {
        let json = data.get(DOCKER_CONFIG_JSON_KEY);
        let cfg = data.get(DOCKER_CFG_KEY);
        match (secret_type, json, cfg) {
            (Some("kubernetes.io/dockercfg"), _, Some(bytes)) | (_, None, Some(bytes)) => {
                Self::from_dockercfg(bytes)
            }
            (_, Some(bytes), _) => Self::from_dockerconfigjson(bytes),
            (t, None, None) => Err(AuthError::MissingKey {
                secret_type: t.unwrap_or("<none>").to_owned(),
            }),
        }
    }

    /// Parses a `.dockerconfigjson` value (`{"auths": {registry: entry}}`).
    pub fn from_dockerconfigjson(bytes: &[u8]) -> Result<Self, AuthError> {
        let parsed: ConfigJson =
            serde_json::from_slice(bytes).map_err(|e| AuthError::InvalidJson {
                key: DOCKER_CONFIG_JSON_KEY,
                reason: e.to_string(),
            })?;
        Self::from_entries(parsed.auths)
    }

    /// Parses a docker config file of either shape, as kmmctl's `--auth-file`
    /// takes it: `~/.docker/config.json` or a `.dockerconfigjson`
    /// (`{"auths": {...}}`), or a legacy `.dockercfg` (the `auths` map itself).
    /// In a file without `auths`, top-level values that are not registry
    /// entries (`credsStore`, ...) are skipped.
    pub fn from_config_file(bytes: &[u8]) -> Result<Self, AuthError> {
        let top: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(bytes).map_err(|e| AuthError::InvalidJson {
                key: "the file",
                reason: e.to_string(),
            })?;
        if top.contains_key("auths") {
            return Self::from_dockerconfigjson(bytes);
        }
        let entries = top
            .into_iter()
            .filter_map(|(key, value)| Some((key, serde_json::from_value::<Entry>(value).ok()?)))
            .collect();
        Self::from_entries(entries)
    }

    /// Parses a legacy `.dockercfg` value (`{registry: entry}`).
    pub fn from_dockercfg(bytes: &[u8]) -> Result<Self, AuthError> {
        let parsed: BTreeMap<String, Entry> =
            serde_json::from_slice(bytes).map_err(|e| AuthError::InvalidJson {
                key: DOCKER_CFG_KEY,
                reason: e.to_string(),
            })?;
        Self::from_entries(parsed)
    }

    fn from_entries(entries: BTreeMap<String, Entry>) -> Result<Self, AuthError> {
        let mut out = Vec::new();
        for (key, entry) in entries {
            if let Some(cred) = credential(&key, entry)? {
                out.push((Pattern::parse(&key), cred));
            }
        }
        Ok(Self { entries: out })
    }

    /// Adds the entries of another secret (earlier secrets win on equal keys).
    pub fn merge(&mut self, other: DockerConfig) {
        self.entries.extend(other.entries);
    }

    /// True when no entry carries credentials.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credential for `reference`, if an entry matches.
    pub fn credential_for(&self, reference: &Reference) -> Option<&Credential> {
        let registry = normalise_host(reference.registry());
        let (host, port) = split_host_port(&registry);
        self.entries
            .iter()
            .filter(|(p, _)| p.matches(&host, port, reference.repository()))
            .max_by_key(|(p, _)| p.specificity())
            .map(|(_, c)| c)
    }

    /// The oci-client auth for `reference` (anonymous when nothing matches).
    pub fn auth_for(&self, reference: &Reference) -> RegistryAuth {
        match self.credential_for(reference) {
            Some(Credential::Basic { username, password }) => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Some(Credential::Bearer(token)) => RegistryAuth::Bearer(token.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

fn credential(key: &str, entry: Entry) -> Result<Option<Credential>, AuthError> {
    if let (Some(username), Some(password)) = (&entry.username, &entry.password)
        && (!username.is_empty() || !password.is_empty())
    {
        return Ok(Some(Credential::Basic {
            username: username.clone(),
            password: password.clone(),
        }));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let invalid = || AuthError::InvalidAuth {
            registry: key.to_owned(),
        };
        let decoded = STANDARD.decode(auth.trim()).map_err(|_| invalid())?;
        let text = String::from_utf8(decoded).map_err(|_| invalid())?;
        let (username, password) = text.split_once(':').ok_or_else(invalid)?;
        return Ok(Some(Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    if let Some(token) = entry.registrytoken.filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::Bearer(token)));
    }
    Ok(None)
}

/// A registry key from a docker config.
#[derive(Debug, Clone)]
struct Pattern {
    host_labels: Vec<String>,
    port: Option<String>,
    path: Vec<String>,
}

impl Pattern {
    fn parse(key: &str) -> Self {
        let key = key
            .trim()
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let (hostport, path) = key.split_once('/').unwrap_or((key, ""));
        let hostport = normalise_host(hostport);
        let (host, port) = split_host_port(&hostport);
        let mut path: Vec<String> = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        // Docker Hub's legacy key "https://index.docker.io/v1/" names the whole registry.
        if matches!(path.as_slice(), [v] if v == "v1" || v == "v2") {
            path.clear();
        }
        Self {
            host_labels: host.split('.').map(str::to_owned).collect(),
            port: port.map(str::to_owned),
            path,
        }
    }

    fn matches(&self, host: &str, port: Option<&str>, repository: &str) -> bool {
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() != self.host_labels.len() {
            return false;
        }
        let host_ok = self
            .host_labels
            .iter()
            .zip(&labels)
            .all(|(p, l)| glob_label(p, l));
        let repo: Vec<&str> = repository.split('/').collect();
        host_ok
            && self.port.as_deref() == port
            && self.path.len() <= repo.len()
            && self.path.iter().zip(&repo).all(|(a, b)| a == b)
    }

    /// More path components, then fewer wildcards, is more specific.
    fn specificity(&self) -> (usize, usize) {
        let literal = self.host_labels.iter().filter(|l| !l.contains('*')).count();
        (self.path.len(), literal)
    }
}

/// `*` in a label matches any run of characters within that label.
fn glob_label(pattern: &str, label: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(label),
        Some((prefix, rest)) => {
            let label_lower = label.to_ascii_lowercase();
            let prefix = prefix.to_ascii_lowercase();
            let Some(tail) = label_lower.strip_prefix(&prefix) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob_label(rest, &tail[i..]))
        }
    }
}

/// Docker Hub has several names; match them as one.
fn normalise_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    match lower.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => lower,
    }
}

fn split_host_port(hostport: &str) -> (String, Option<&str>) {
    match hostport.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host.to_owned(), Some(port))
        }
        _ => (hostport.to_owned(), None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    fn secret(t: &str, key: &str, json: &str) -> BTreeMap<String, Vec<u8>> {
        let _ = t;
        BTreeMap::from([(key.to_owned(), json.as_bytes().to_vec())])
    }

    fn basic(u: &str, p: &str) -> RegistryAuth {
        RegistryAuth::Basic(u.into(), p.into())
    }

    #[test]
    fn dockerconfigjson_with_base64_auth() {
        let auth = STANDARD.encode("kmm:s3cr:et");
        let json = format!(r#"{{"auths":{{"10.0.2.2:5000":{{"auth":"{auth}"}}}}}}"#);
        let data = secret("", DOCKER_CONFIG_JSON_KEY, &json);
        let cfg = DockerConfig::from_secret(Some("kubernetes.io/dockerconfigjson"), &data).unwrap();
        assert_eq!(
            cfg.auth_for(&r("10.0.2.2:5000/ns/brd:6.1.0")),
            basic("kmm", "s3cr:et")
        );
        assert_eq!(
            cfg.auth_for(&r("10.0.2.2:5001/ns/brd:6.1.0")),
            RegistryAuth::Anonymous
        );
        assert_eq!(
            cfg.auth_for(&r("10.0.2.2/ns/brd:6.1.0")),
            RegistryAuth::Anonymous
        );
    }

    #[test]
    fn dockerconfigjson_with_username_and_password_and_scheme() {
        let json = r#"{"auths":{"https://quay.io":{"username":"u","password":"p","email":"x@y"}}}"#;
        let cfg = DockerConfig::from_dockerconfigjson(json.as_bytes()).unwrap();
        assert_eq!(cfg.auth_for(&r("quay.io/org/kmod:1")), basic("u", "p"));
    }

    #[test]
    fn legacy_dockercfg() {
        let auth = STANDARD.encode("a:b");
        let json = format!(r#"{{"registry.example.com":{{"auth":"{auth}","email":"e"}}}}"#);
        let data = secret("", DOCKER_CFG_KEY, &json);
        let cfg = DockerConfig::from_secret(Some("kubernetes.io/dockercfg"), &data).unwrap();
        assert_eq!(
            cfg.auth_for(&r("registry.example.com/x/y:2")),
            basic("a", "b")
        );
    }

    #[test]
    fn config_files_of_either_shape() {
        let auth = STANDARD.encode("alice:s3cret");
        let json = format!(
            r#"{{"auths":{{"https://reg.example:5000/v1/":{{"auth":"{auth}"}}}},"credsStore":"desktop"}}"#
        );
        let cfg = DockerConfig::from_config_file(json.as_bytes()).unwrap();
        assert_eq!(
            cfg.auth_for(&r("reg.example:5000/ns/brd:1")),
            basic("alice", "s3cret")
        );
        // Legacy .dockercfg: registry keys at the top level, other keys skipped.
        let json = format!(
            r#"{{"https://reg.example:5000":{{"auth":"{auth}","email":"a@b.c"}},"credsStore":"desktop"}}"#
        );
        let cfg = DockerConfig::from_config_file(json.as_bytes()).unwrap();
        assert_eq!(
            cfg.auth_for(&r("reg.example:5000/ns/brd:1")),
            basic("alice", "s3cret")
        );
        assert_eq!(
            cfg.auth_for(&r("other.example/ns/brd:1")),
            RegistryAuth::Anonymous
        );
        let err = DockerConfig::from_config_file(b"[1]").unwrap_err();
        assert!(
            err.to_string()
                .contains("the file is not a valid docker config"),
            "{err}"
        );
    }

    #[test]
    fn docker_hub_aliases_and_v1_key() {
        let json =
            r#"{"auths":{"https://index.docker.io/v1/":{"username":"hub","password":"pw"}}}"#;
        let cfg = DockerConfig::from_dockerconfigjson(json.as_bytes()).unwrap();
        assert_eq!(cfg.auth_for(&r("busybox")), basic("hub", "pw"));
        assert_eq!(cfg.auth_for(&r("docker.io/org/kmod:1")), basic("hub", "pw"));
    }

    #[test]
    fn most_specific_path_and_wildcards() {
        let json = r#"{"auths":{
            "registry.io":{"username":"any","password":"1"},
            "registry.io/team-a":{"username":"team","password":"2"},
            "*.corp.example":{"username":"wild","password":"3"}}}"#;
        let cfg = DockerConfig::from_dockerconfigjson(json.as_bytes()).unwrap();
        assert_eq!(
            cfg.auth_for(&r("registry.io/team-a/kmod:1")),
            basic("team", "2")
        );
        assert_eq!(
            cfg.auth_for(&r("registry.io/team-b/kmod:1")),
            basic("any", "1")
        );
        assert_eq!(
            cfg.auth_for(&r("regA.corp.example/k:1")),
            basic("wild", "3")
        );
        assert_eq!(
            cfg.auth_for(&r("a.b.corp.example/k:1")),
            RegistryAuth::Anonymous
        );
    }

    #[test]
    fn registry_token_is_a_bearer() {
        let json = r#"{"auths":{"r.io":{"registrytoken":"tok"}}}"#;
        let cfg = DockerConfig::from_dockerconfigjson(json.as_bytes()).unwrap();
        assert_eq!(
            cfg.auth_for(&r("r.io/k:1")),
            RegistryAuth::Bearer("tok".into())
        );
    }

    #[test]
    fn bad_secrets_give_readable_errors() {
        let err =
            DockerConfig::from_secret(Some("kubernetes.io/tls"), &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("neither a .dockerconfigjson"),
            "{err}"
        );
        let err = DockerConfig::from_dockerconfigjson(b"{not json").unwrap_err();
        assert!(
            err.to_string()
                .contains(".dockerconfigjson is not a valid docker config"),
            "{err}"
        );
        let err = DockerConfig::from_dockerconfigjson(br#"{"auths":{"r.io":{"auth":"!!!"}}}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("not base64 of user:password"),
            "{err}"
        );
        let no_colon = STANDARD.encode("nocolon");
        let json = format!(r#"{{"auths":{{"r.io":{{"auth":"{no_colon}"}}}}}}"#);
        assert!(DockerConfig::from_dockerconfigjson(json.as_bytes()).is_err());
    }
}
