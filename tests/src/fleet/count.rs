//! Requests counted from the audit log by client, verb and resource: what the
//! fleet benchmark reports per operation, and `kmm-fleet-bench count` prints for
//! any operator.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audit::{Request, client_of, is_read_verb, is_write_verb};

/// `(client, verb, resource[/subresource])` → requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    /// The counts.
    pub requests: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
}

impl Tally {
    /// Counts `requests`.
    pub fn of(requests: &[Request]) -> Self {
        let mut t = Self::default();
        for r in requests {
            let o = &r.object_ref;
            let resource = if o.subresource.is_empty() {
                o.resource.clone()
            } else {
                format!("{}/{}", o.resource, o.subresource)
            };
            *t.requests
                .entry(client_of(r).to_string())
                .or_default()
                .entry(r.verb.clone())
                .or_default()
                .entry(resource)
                .or_default() += 1;
        }
        t
    }

    /// Requests of `client` whose verb `keep` selects.
    fn sum(&self, client: &str, keep: impl Fn(&str) -> bool) -> u64 {
        self.requests.get(client).map_or(0, |verbs| {
            verbs
                .iter()
                .filter(|(v, _)| keep(v))
                .flat_map(|(_, rs)| rs.values())
                .sum()
        })
    }

    /// Writes (create, update, patch, delete) by `client`.
    pub fn writes(&self, client: &str) -> u64 {
        self.sum(client, is_write_verb)
    }

    /// Reads (GET, LIST) by `client`.
    pub fn reads(&self, client: &str) -> u64 {
        self.sum(client, is_read_verb)
    }

    /// Writes by every client but `except`.
    pub fn writes_by_others(&self, except: &[&str]) -> u64 {
        self.requests
            .keys()
            .filter(|c| !except.contains(&c.as_str()))
            .map(|c| self.writes(c))
            .sum()
    }

    /// One line per `client verb resource` with its count and its count per
    /// node, largest first.
    pub fn table(&self, nodes: usize) -> String {
        let mut rows: Vec<(u64, String)> = Vec::new();
        for (client, verbs) in &self.requests {
            for (verb, resources) in verbs {
                for (resource, n) in resources {
                    rows.push((*n, format!("{client:<24} {verb:<7} {resource:<40}")));
                }
            }
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let per = nodes.max(1) as f64;
        let mut out = format!(
            "{:<24} {:<7} {:<40} {:>8} {:>9}\n",
            "client", "verb", "resource", "requests", "per node"
        );
        for (n, row) in rows {
            out.push_str(&format!("{row} {n:>8} {:>9.2}\n", n as f64 / per));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(agent: &str, verb: &str, resource: &str, sub: &str) -> Request {
        serde_json::from_value(serde_json::json!({
            "verb": verb, "userAgent": agent, "stage": "ResponseComplete",
            "objectRef": {"resource": resource, "subresource": sub, "name": "n"},
        }))
        .expect("request")
    }

    #[test]
    fn counts_by_client_verb_and_resource() {
        let t = Tally::of(&[
            req("kmm-agent/0.1.0", "patch", "nodes", ""),
            req("kmm-agent/0.1.0", "patch", "nodemodulesconfigs", "status"),
            req("kmm-agent/0.1.0", "patch", "nodemodulesconfigs", "status"),
            req("kmm-agent/0.1.0", "get", "nodemodulesconfigs", ""),
            req(
                "kubectl/v1.35.4 (linux/amd64) kubernetes/x",
                "create",
                "modules",
                "",
            ),
            req("kmm-controller/0.1.0", "list", "nodes", ""),
        ]);
        assert_eq!(t.writes("kmm-agent"), 3);
        assert_eq!(t.reads("kmm-agent"), 1);
        assert_eq!(t.reads("kmm-controller"), 1);
        assert_eq!(t.writes("kmm-controller"), 0);
        assert_eq!(t.writes_by_others(&["kmm-agent"]), 1);
        assert_eq!(
            t.requests["kmm-agent"]["patch"]["nodemodulesconfigs/status"],
            2
        );
        let table = t.table(2);
        assert!(
            table.lines().nth(1).is_some_and(
                |l| l.contains("nodemodulesconfigs/status") && l.trim_end().ends_with("1.00")
            ),
            "{table}"
        );
    }
}
