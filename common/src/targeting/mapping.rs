//! Kernel mapping resolution: first matching mapping wins, mapping fields override the
//! container-level defaults, variables are substituted.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use regex::Regex;

use super::Ineligible;
use super::substitute::{Vars, substitute};
use crate::{
    Build, KernelMapping, ModprobeSpec, Module, ModuleLoaderContainerSpec, Sign, TlsOptions,
};

/// What to load for one Module on one kernel: the matching mapping merged with the
/// container-level defaults, with variables substituted.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedMapping {
    /// The kernel this was resolved for.
    pub kernel_version: String,
    /// Index of the matching entry in `kernelMappings`.
    pub mapping_index: usize,
    /// kmod image, variables substituted.
    pub container_image: String,
    /// Image pull policy (`container.imagePullPolicy`, may be empty).
    pub image_pull_policy: String,
    /// How to reach the image's registry (mapping's, else container's, else default).
    pub registry_tls: TlsOptions,
    /// In-cluster build settings (mapping's, else container's).
    pub build: Option<Build>,
    /// Signing settings (mapping's, else container's), `filesToSign` substituted.
    pub sign: Option<Sign>,
    /// modprobe settings (container level).
    pub modprobe: ModprobeSpec,
    /// In-tree modules to remove first: the level that sets any (mapping, else container),
    /// plural list plus the deprecated singular, without duplicates.
    pub in_tree_modules_to_remove: Vec<String>,
    /// `container.version` for ordered upgrades, `None` when unset.
    pub version: Option<String>,
}

/// Alias: a resolved mapping is what a node is targeted with.
pub type Target = ResolvedMapping;

/// Whether `mapping` matches `kernel`: `literal` exactly, `regexp` as an unanchored search
/// (Go's `regexp.MatchString`).
///
/// # Errors
/// [`Ineligible::InvalidRegexp`] when the regexp does not compile.
pub fn kernel_matches(
    mapping: &KernelMapping,
    index: usize,
    kernel: &str,
) -> Result<bool, Ineligible> {
    if !mapping.literal.is_empty() {
        return Ok(mapping.literal == kernel);
    }
    if mapping.regexp.is_empty() {
        return Ok(false);
    }
    let re = compiled(&mapping.regexp).map_err(|error| Ineligible::InvalidRegexp {
        index,
        regexp: mapping.regexp.clone(),
        error,
    })?;
    Ok(re.is_match(kernel))
}

/// Patterns kept compiled; past this many distinct ones the cache starts over
/// (a fleet has a handful; this only bounds hostile or churning specs).
const COMPILED_MAX: usize = 1024;

/// `pattern` compiled once per process, not once per node and call: the
/// controller resolves every Module for every Node on each count, the agent
/// on each change of its Node. `Regex` clones share one compiled program.
fn compiled(pattern: &str) -> Result<Regex, String> {
    static CACHE: LazyLock<Mutex<HashMap<String, Result<Regex, String>>>> =
        LazyLock::new(Mutex::default);
    // A panic while holding the lock cannot leave a half-written entry.
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(hit) = cache.get(pattern) {
        return hit.clone();
    }
    if cache.len() >= COMPILED_MAX {
        cache.clear();
    }
    let result = Regex::new(pattern).map_err(|e| e.to_string());
    cache.insert(pattern.to_string(), result.clone());
    result
}

/// Resolves the Module for `kernel`: the first mapping that matches, in order.
///
/// # Errors
/// [`Ineligible::NoModuleLoader`], [`Ineligible::NoMatchingMapping`],
/// [`Ineligible::InvalidRegexp`] (for a mapping reached before a match) and
/// [`Ineligible::MissingImage`].
pub fn resolve_mapping(module: &Module, kernel: &str) -> Result<ResolvedMapping, Ineligible> {
    let container = &module
        .spec
        .module_loader
        .as_ref()
        .ok_or(Ineligible::NoModuleLoader)?
        .container;
    for (index, mapping) in container.kernel_mappings.iter().enumerate() {
        if kernel_matches(mapping, index, kernel)? {
            let vars = Vars {
                kernel_full_version: kernel,
                mod_name: module.metadata.name.as_deref().unwrap_or_default(),
                mod_namespace: module.metadata.namespace.as_deref().unwrap_or_default(),
            };
            return merge(container, mapping, index, &vars);
        }
    }
    Err(Ineligible::NoMatchingMapping {
        kernel: kernel.to_string(),
    })
}

fn merge(
    container: &ModuleLoaderContainerSpec,
    mapping: &KernelMapping,
    index: usize,
    vars: &Vars<'_>,
) -> Result<ResolvedMapping, Ineligible> {
    let image = if mapping.container_image.is_empty() {
        &container.container_image
    } else {
        &mapping.container_image
    };
    if image.is_empty() {
        return Err(Ineligible::MissingImage {
            index,
            kernel: vars.kernel_full_version.to_string(),
        });
    }
    let sign = mapping
        .sign
        .as_ref()
        .or(container.sign.as_ref())
        .map(|sign| Sign {
            files_to_sign: sign
                .files_to_sign
                .iter()
                .map(|f| substitute(f, vars))
                .collect(),
            ..sign.clone()
        });
    let mapping_in_tree = in_tree_list(
        &mapping.in_tree_modules_to_remove,
        &mapping.in_tree_module_to_remove,
    );
    let in_tree_modules_to_remove = if mapping_in_tree.is_empty() {
        in_tree_list(
            &container.in_tree_modules_to_remove,
            &container.in_tree_module_to_remove,
        )
    } else {
        mapping_in_tree
    };
    Ok(ResolvedMapping {
        kernel_version: vars.kernel_full_version.to_string(),
        mapping_index: index,
        container_image: substitute(image, vars),
        image_pull_policy: container.image_pull_policy.clone(),
        registry_tls: mapping
            .registry_tls
            .as_ref()
            .or(container.registry_tls.as_ref())
            .cloned()
            .unwrap_or_default(),
        build: mapping.build.as_ref().or(container.build.as_ref()).cloned(),
        sign,
        modprobe: container.modprobe.clone(),
        in_tree_modules_to_remove,
        version: (!container.version.is_empty()).then(|| container.version.clone()),
    })
}

/// The plural list followed by the deprecated singular, first occurrence kept.
fn in_tree_list(plural: &[String], singular: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(plural.len() + 1);
    for name in plural.iter().map(String::as_str).chain(Some(singular)) {
        if !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
