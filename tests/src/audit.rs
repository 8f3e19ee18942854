//! The test API server's audit log (`$KMM_RUN/logs/audit.log`, policy in
//! `hack/controlplane/audit-policy.yaml`: every read and write), read as counted
//! evidence of what a component asked of the API server.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;

/// One audited request, the fields the budgets look at.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// `create`, `patch`, `get`, ...
    pub verb: String,
    /// The client's User-Agent.
    #[serde(default)]
    pub user_agent: String,
    /// What the request was about.
    #[serde(default)]
    pub object_ref: ObjectRef,
    /// The stage: each request is counted once, at `ResponseComplete`.
    pub stage: String,
    /// When the stage was reached (RFC 3339, microseconds).
    #[serde(default)]
    pub stage_timestamp: String,
}

/// The object of an audited request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Plural resource.
    #[serde(default)]
    pub resource: String,
    /// `status`, ...
    #[serde(default)]
    pub subresource: String,
    /// Namespace, for namespaced resources.
    #[serde(default)]
    pub namespace: String,
    /// Name (absent on creates of generated names and on lists).
    #[serde(default)]
    pub name: String,
}

impl Request {
    /// `verb resource[/subresource] [namespace/]name`, for messages.
    pub fn describe(&self) -> String {
        let r = &self.object_ref;
        let sub = if r.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", r.subresource)
        };
        let ns = if r.namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", r.namespace)
        };
        format!("{} {}{sub} {ns}{}", self.verb, r.resource, r.name)
    }
}

/// The audit log of the shared control plane, read from a mark onwards.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
}

/// A position in the log: requests after it are "since".
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

impl AuditLog {
    /// The log of the control plane in `$KMM_RUN`.
    ///
    /// # Errors
    /// If the API server was started without it (an older `start.sh`: stop the
    /// control plane with `hack/controlplane/stop.sh` and run again).
    pub fn open() -> Result<Self> {
        let path = crate::controlplane::run_dir().join("logs/audit.log");
        anyhow::ensure!(
            path.is_file(),
            "{} missing: the API server runs without the audit log; restart it (hack/controlplane/stop.sh)",
            path.display()
        );
        Ok(Self { path })
    }

    /// The JSON audit log at `path` (of any API server).
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// Where the log starts.
    pub fn start(&self) -> Mark {
        Mark(0)
    }

    /// Where the log ends now.
    ///
    /// # Errors
    /// If the log cannot be read.
    pub fn mark(&self) -> Result<Mark> {
        Ok(Mark(std::fs::metadata(&self.path)?.len()))
    }

    /// Completed requests logged after `mark` that `keep` selects.
    ///
    /// # Errors
    /// If the log cannot be read.
    pub fn since(&self, mark: Mark, keep: impl Fn(&Request) -> bool) -> Result<Vec<Request>> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        file.seek(SeekFrom::Start(mark.0))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Request>(l).ok())
            .filter(|r| r.stage == "ResponseComplete")
            .filter(|r| keep(r))
            .collect())
    }
}

/// Whether `r` is kmm-agent's doing about node `node` (the Node, its
/// NodeModulesConfig) or about Modules in namespace `ns` (their events).
pub fn agent_request_for(r: &Request, node: &str, ns: &str) -> bool {
    r.user_agent.starts_with("kmm-agent/")
        && ((r.object_ref.name == node
            && matches!(
                r.object_ref.resource.as_str(),
                "nodes" | "nodemodulesconfigs"
            ))
            || (r.object_ref.namespace == ns && r.object_ref.resource == "events"))
}

/// Whether `r` writes.
pub fn is_write(r: &Request) -> bool {
    is_write_verb(&r.verb)
}

/// Whether `verb` writes.
pub fn is_write_verb(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// Whether `verb` reads (a GET or a LIST; watches are not logged).
pub fn is_read_verb(verb: &str) -> bool {
    matches!(verb, "get" | "list")
}

/// The client of `r`: its User-Agent's product name (`kmm-agent/0.1.0` and
/// `kubectl/v1.35.4 (linux/amd64) kubernetes/…` give `kmm-agent` and `kubectl`).
pub fn client_of(r: &Request) -> &str {
    let product = r.user_agent.split(' ').next().unwrap_or_default();
    match product.split('/').next() {
        Some(p) if !p.is_empty() => p,
        _ => "unknown",
    }
}
