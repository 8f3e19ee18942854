//! Module validation as a pure function: the checks of upstream KMM's admission webhook plus
//! the kmm-rs schema rules, so the controller's webhook and the CRD's CEL rules agree. Every
//! error names the field it is about.

use std::collections::BTreeSet;

use regex::Regex;

use crate::api::cel::MAX_COMBINED_NAME_LENGTH;
use crate::image::has_tag_or_digest;
use crate::{ModprobeSpec, Module, ModuleLoaderContainerSpec, Sign};

mod dra;
mod label_keys;
mod preflight;
mod tolerations;
mod values;

pub use dra::{
    ALLOWED_HOST_PATH_PREFIXES, MIN_DRA_KUBERNETES, check_dns_subdomain, check_dra_server_version,
};

pub use label_keys::{
    LABEL_NAME_PATTERN, MAX_LABEL_NAME_LENGTH, check_label_key, check_label_value, node_label_keys,
};
pub use preflight::validate_preflight;
pub use values::{
    DIGEST_PATTERN, MAX_KERNEL_MODULE_NAME_BYTES, PULL_POLICIES, check_image_digest,
    check_kernel_module_name, check_loader_values, check_module_parameter, check_path_stays_inside,
    check_pull_policy,
};

const CONTAINER: &str = "spec.moduleLoader.container";

/// One failed check: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// JSON path of the offending field, e.g. `spec.moduleLoader.container.kernelMappings[0]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ValidationError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Validates a Module on create (and, via [`validate_module_update`], on update).
///
/// # Errors
/// Every failed check, in field order.
pub fn validate_module(module: &Module) -> Result<(), Vec<ValidationError>> {
    let mut errors = Vec::new();
    if let Some(loader) = &module.spec.module_loader {
        let container = &loader.container;
        check_name_length(module, container, &mut errors);
        check_images(container, &mut errors);
        check_kernel_mappings(container, &mut errors);
        check_modprobe(&container.modprobe, &mut errors);
        check_signing(container, &mut errors);
        check_in_tree_fields(container, &mut errors);
        errors.extend(check_loader_values(container));
    }
    tolerations::check(&module.spec.tolerations, &mut errors);
    label_keys::check_node_labels(module, &mut errors);
    errors.extend(values::check_pod_pull_policies(&module.spec));
    dra::check(&module.spec, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Validates an update: everything [`validate_module`] checks, plus `version` may not change
/// to or from empty.
///
/// # Errors
/// Every failed check.
pub fn validate_module_update(old: &Module, new: &Module) -> Result<(), Vec<ValidationError>> {
    let mut errors = validate_module(new).err().unwrap_or_default();
    let version = |m: &Module| {
        m.spec
            .module_loader
            .as_ref()
            .is_some_and(|l| !l.container.version.is_empty())
    };
    if version(old) != version(new) {
        errors.push(ValidationError::new(
            format!("{CONTAINER}.version"),
            "cannot update to or from an empty version; delete the Module and create it again",
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_name_length(
    module: &Module,
    container: &ModuleLoaderContainerSpec,
    errors: &mut Vec<ValidationError>,
) {
    let length = module.metadata.name.as_deref().map_or(0, str::len)
        + module.metadata.namespace.as_deref().map_or(0, str::len);
    if !container.version.is_empty() && length > MAX_COMBINED_NAME_LENGTH {
        errors.push(ValidationError::new(
            "metadata.name",
            format!(
                "namespace and name have a combined length of {length} characters, which exceeds \
                 the maximum of {MAX_COMBINED_NAME_LENGTH} when spec.moduleLoader.container.version is set"
            ),
        ));
    }
}

fn check_images(container: &ModuleLoaderContainerSpec, errors: &mut Vec<ValidationError>) {
    let images = std::iter::once((
        format!("{CONTAINER}.containerImage"),
        &container.container_image,
    ))
    .chain(container.kernel_mappings.iter().enumerate().map(|(i, m)| {
        (
            format!("{CONTAINER}.kernelMappings[{i}].containerImage"),
            &m.container_image,
        )
    }));
    for (field, image) in images {
        if !image.is_empty() && !has_tag_or_digest(image) {
            errors.push(ValidationError::new(
                field,
                format!(
                    "image {image:?} must carry a tag or a digest (repo:tag or repo@sha256:...)"
                ),
            ));
        }
    }
}

fn check_kernel_mappings(container: &ModuleLoaderContainerSpec, errors: &mut Vec<ValidationError>) {
    if container.kernel_mappings.is_empty() {
        errors.push(ValidationError::new(
            format!("{CONTAINER}.kernelMappings"),
            "at least one kernel mapping is required",
        ));
    }
    for (i, mapping) in container.kernel_mappings.iter().enumerate() {
        let field = format!("{CONTAINER}.kernelMappings[{i}]");
        match (mapping.literal.is_empty(), mapping.regexp.is_empty()) {
            (false, false) => errors.push(ValidationError::new(
                &field,
                "regexp and literal are mutually exclusive properties",
            )),
            (true, true) => errors.push(ValidationError::new(
                &field,
                "regexp or literal must be set",
            )),
            _ => {}
        }
        if let Some(Err(e)) = (!mapping.regexp.is_empty()).then(|| Regex::new(&mapping.regexp)) {
            errors.push(ValidationError::new(
                format!("{field}.regexp"),
                format!("invalid regexp '{}': {e}", mapping.regexp),
            ));
        }
        if container.container_image.is_empty() && mapping.container_image.is_empty() {
            errors.push(ValidationError::new(
                format!("{field}.containerImage"),
                "required when spec.moduleLoader.container.containerImage is not set",
            ));
        }
    }
}

fn check_modprobe(modprobe: &ModprobeSpec, errors: &mut Vec<ValidationError>) {
    let field = format!("{CONTAINER}.modprobe");
    let name_set = !modprobe.module_name.is_empty();
    let raw = modprobe.raw_args.as_ref();
    let raw_load = raw.is_some_and(|r| !r.load.is_empty());
    let raw_unload = raw.is_some_and(|r| !r.unload.is_empty());
    if name_set && (raw_load || raw_unload) {
        errors.push(ValidationError::new(
            format!("{field}.rawArgs"),
            "rawArgs cannot be set when moduleName is set",
        ));
    } else if !(name_set || (raw_load && raw_unload)) {
        errors.push(ValidationError::new(
            format!("{field}.moduleName"),
            "moduleName is required unless both rawArgs.load and rawArgs.unload are set",
        ));
    }
    let Some(order) = &modprobe.modules_loading_order else {
        return;
    };
    let order_field = format!("{field}.modulesLoadingOrder");
    if order.len() < 2 {
        errors.push(ValidationError::new(
            &order_field,
            "if a loading order is defined, at least two values must be defined",
        ));
    }
    if order
        .first()
        .is_some_and(|first| !name_set || *first != modprobe.module_name)
    {
        errors.push(ValidationError::new(
            &order_field,
            "the first entry must be modprobe.moduleName (which must be set)",
        ));
    }
    let mut seen = BTreeSet::new();
    for name in order {
        if !seen.insert(name) {
            errors.push(ValidationError::new(
                &order_field,
                format!("{name:?}: duplicate value in the loading order list"),
            ));
        }
    }
}

/// Upstream's webhook refuses the deprecated `inTreeModuleToRemove` next to its replacement
/// `inTreeModulesToRemove`, on the container, on a mapping, or one on each (which one would
/// win is undefined).
fn check_in_tree_fields(container: &ModuleLoaderContainerSpec, errors: &mut Vec<ValidationError>) {
    const BOTH: &str =
        "only one of inTreeModuleToRemove (deprecated) and inTreeModulesToRemove can be defined";
    let single = |s: &String| !s.is_empty();
    if single(&container.in_tree_module_to_remove)
        && !container.in_tree_modules_to_remove.is_empty()
    {
        errors.push(ValidationError::new(
            format!("{CONTAINER}.inTreeModuleToRemove"),
            BOTH,
        ));
    }
    for (i, m) in container.kernel_mappings.iter().enumerate() {
        let field = format!("{CONTAINER}.kernelMappings[{i}].inTreeModuleToRemove");
        if single(&m.in_tree_module_to_remove) && !m.in_tree_modules_to_remove.is_empty() {
            errors.push(ValidationError::new(field, BOTH));
        } else if (!m.in_tree_modules_to_remove.is_empty()
            && single(&container.in_tree_module_to_remove))
            || (single(&m.in_tree_module_to_remove)
                && !container.in_tree_modules_to_remove.is_empty())
        {
            errors.push(ValidationError::new(
                field,
                "inTreeModuleToRemove (deprecated) and inTreeModulesToRemove cannot be mixed between the container and a kernel mapping",
            ));
        }
    }
}

fn check_signing(container: &ModuleLoaderContainerSpec, errors: &mut Vec<ValidationError>) {
    let dir = match container.modprobe.dir_name.as_str() {
        "" => "/opt/".to_string(),
        d if d.ends_with('/') => d.to_string(),
        d => format!("{d}/"),
    };
    let signs = std::iter::once((format!("{CONTAINER}.sign"), container.sign.as_ref())).chain(
        container.kernel_mappings.iter().enumerate().map(|(i, m)| {
            (
                format!("{CONTAINER}.kernelMappings[{i}].sign"),
                m.sign.as_ref(),
            )
        }),
    );
    for (field, sign) in signs {
        if let Some(sign) = sign {
            check_sign(&field, sign, &dir, errors);
        }
    }
    // Without a build there is nothing to sign but unsignedImage. The mapping's
    // sign/build replace the container's, so check what each mapping resolves to.
    let mut reported = std::collections::BTreeSet::new();
    for (i, m) in container.kernel_mappings.iter().enumerate() {
        let (field, sign) = match (&m.sign, &container.sign) {
            (Some(s), _) => (format!("{CONTAINER}.kernelMappings[{i}].sign"), s),
            (None, Some(s)) => (format!("{CONTAINER}.sign"), s),
            (None, None) => continue,
        };
        let builds = m.build.is_some() || container.build.is_some();
        if !builds && sign.unsigned_image.is_empty() && reported.insert(field.clone()) {
            errors.push(ValidationError::new(
                format!("{field}.unsignedImage"),
                format!(
                    "required when kernelMappings[{i}] signs without a build (the image to sign)"
                ),
            ));
        }
    }
}

fn check_sign(field: &str, sign: &Sign, dir: &str, errors: &mut Vec<ValidationError>) {
    if sign.files_to_sign.is_empty() {
        errors.push(ValidationError::new(
            format!("{field}.filesToSign"),
            "must list at least one file when sign is set",
        ));
    }
    for (i, file) in sign.files_to_sign.iter().enumerate() {
        if !file.starts_with(dir) {
            errors.push(ValidationError::new(
                format!("{field}.filesToSign[{i}]"),
                format!("{file:?} is not under modprobe.dirName ({dir})"),
            ));
        }
    }
}

#[cfg(test)]
#[path = "validation_tests.rs"]
mod tests;
