//! The node labels a Module needs must be able to exist: a key's name part (after the `/`) is
//! a qualified name of at most 63 characters, a value a label value. The keys embed namespace
//! and name (`kmm.node.kubernetes.io/<ns>.<name>.ready`), so a long pair makes a key that the
//! API server refuses, and every label write on the node that carries it fails with it.

use std::sync::LazyLock;

use regex::Regex;

use super::ValidationError;
use crate::Module;
use crate::labels::{
    device_plugin_ready_label, dra_ready_label, ready_label, version_module_label,
    version_ready_label,
};

/// Longest name part of a label key, and longest label value.
pub const MAX_LABEL_NAME_LENGTH: usize = 63;

/// Longest prefix (a DNS subdomain) of a label key.
const MAX_LABEL_PREFIX_LENGTH: usize = 253;

/// A label key's name part, and a non-empty label value (Kubernetes' `qualifiedNameFmt`).
pub const LABEL_NAME_PATTERN: &str = "^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$";

const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

static LABEL_NAME: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(LABEL_NAME_PATTERN).ok());
static DNS_SUBDOMAIN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(DNS_SUBDOMAIN_PATTERN).ok());

fn matches(re: &LazyLock<Option<Regex>>, s: &str) -> bool {
    re.as_ref().is_some_and(|re| re.is_match(s))
}

/// A label key as the API server checks it (`[prefix/]name`).
///
/// # Errors
/// Why the API server would refuse it.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = key
        .rsplit_once('/')
        .map_or((None, key), |(p, n)| (Some(p), n));
    if let Some(prefix) = prefix
        && (prefix.len() > MAX_LABEL_PREFIX_LENGTH || !matches(&DNS_SUBDOMAIN, prefix))
    {
        return Err(format!(
            "label key {key:?}: the prefix must be a DNS subdomain of at most {MAX_LABEL_PREFIX_LENGTH} characters"
        ));
    }
    if name.len() > MAX_LABEL_NAME_LENGTH {
        return Err(format!(
            "label key {key:?}: the name part after '/' is {} characters, the limit is {MAX_LABEL_NAME_LENGTH}",
            name.len()
        ));
    }
    if !matches(&LABEL_NAME, name) {
        return Err(format!(
            "label key {key:?}: the name part must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ));
    }
    Ok(())
}

/// A label value (empty is allowed).
///
/// # Errors
/// Why the API server would refuse it.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_NAME_LENGTH {
        Err(format!(
            "{value:?} is {} characters; a node label value takes at most {MAX_LABEL_NAME_LENGTH}",
            value.len()
        ))
    } else if !value.is_empty() && !matches(&LABEL_NAME, value) {
        Err(format!(
            "{value:?} is not a node label value: alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    } else {
        Ok(())
    }
}

/// Why a label is needed: `None` for every Module with a module loader, else the field that
/// asks for it.
type Need = Option<&'static str>;

const VERSION: &str = "spec.moduleLoader.container.version";

/// The node label keys this Module makes kmm-rs write (or an admin write), each with the
/// field that asks for it.
pub fn node_label_keys(module: &Module) -> Vec<(String, Need)> {
    let ns = module.metadata.namespace.as_deref().unwrap_or_default();
    let name = module.metadata.name.as_deref().unwrap_or_default();
    let spec = &module.spec;
    let mut keys = Vec::new();
    if let Some(loader) = &spec.module_loader {
        keys.push((ready_label(ns, name), None));
        if !loader.container.version.is_empty() {
            keys.push((version_ready_label(ns, name), Some(VERSION)));
            keys.push((version_module_label(ns, name), Some(VERSION)));
        }
    }
    if spec.device_plugin.is_some() {
        keys.push((
            device_plugin_ready_label(ns, name),
            Some("spec.devicePlugin"),
        ));
    }
    if spec.dra.is_some() {
        keys.push((dra_ready_label(ns, name), Some("spec.dra")));
    }
    keys
}

/// One error on `metadata.name` naming every needed key that cannot exist (and the field
/// that needs it), and an error on `version` when it cannot be a label value.
pub(super) fn check_node_labels(module: &Module, errors: &mut Vec<ValidationError>) {
    let bad: Vec<String> = node_label_keys(module)
        .into_iter()
        .filter_map(|(key, need)| {
            let why = check_label_key(&key).err()?;
            Some(match need {
                None => why,
                Some(field) => format!("{why} (needed because {field} is set)"),
            })
        })
        .collect();
    if !bad.is_empty() {
        errors.push(ValidationError::new(
            "metadata.name",
            format!(
                "node labels this Module needs cannot exist; shorten metadata.name or metadata.namespace: {}",
                bad.join("; ")
            ),
        ));
    }
    if let Some(loader) = &module.spec.module_loader
        && let Err(why) = check_label_value(&loader.container.version)
    {
        errors.push(ValidationError::new(
            VERSION,
            format!("{why} (it is the value of the node labels of ordered upgrades)"),
        ));
    }
}
