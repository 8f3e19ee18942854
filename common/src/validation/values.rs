//! Values kmm-agent always refuses, as pure checks: the webhook rejects them at admission
//! ([`check_loader_values`] from [`super::validate_module`]) and the agent classifies any that
//! slip through (webhook down, Module stored before the rule existed) as `InvalidModuleSpec`
//! with the same function, so the rules exist once. The CRD's CEL rules
//! ([`crate::api::cel`]) mirror them where CEL can express them.

use std::sync::LazyLock;

use regex::Regex;

use super::ValidationError;
use crate::{KernelMapping, ModprobeSpec, ModuleLoaderContainerSpec};

/// Longest kernel module name the kernel takes: `MODULE_NAME_LEN` (64) minus
/// `sizeof(unsigned long)` minus the NUL.
pub const MAX_KERNEL_MODULE_NAME_BYTES: usize = 55;

/// The values Kubernetes allows for `imagePullPolicy` (empty means "not set").
pub const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];

/// `repo[:tag]@sha256:<64 lowercase hex>`: the only digest form the agent pulls (digests
/// become file names in its cache). Shared with the CEL rule.
pub const DIGEST_PATTERN: &str = "^[^@]*@sha256:[0-9a-f]{64}$";

static DIGEST: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(DIGEST_PATTERN).ok());

/// A kernel module name as the agent passes it to the kernel: non-empty, no `/`, whitespace or
/// NUL, at most [`MAX_KERNEL_MODULE_NAME_BYTES`] bytes.
///
/// # Errors
/// Why the kernel (or a path built from the name) cannot take it.
pub fn check_kernel_module_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("must not be empty".into())
    } else if name.contains(['/', '\0']) || name.chars().any(char::is_whitespace) {
        Err(format!(
            "{name:?} is not a kernel module name: it contains '/', whitespace or NUL"
        ))
    } else if name.len() > MAX_KERNEL_MODULE_NAME_BYTES {
        Err(format!(
            "{name:?} is {} bytes long; the kernel takes at most {MAX_KERNEL_MODULE_NAME_BYTES}",
            name.len()
        ))
    } else {
        Ok(())
    }
}

/// A path inside the image (`dirName`, `firmwarePath`): no `..` component, which would
/// leave the image.
///
/// # Errors
/// When a component is `..`.
pub fn check_path_stays_inside(path: &str) -> Result<(), String> {
    if path.split('/').any(|c| c == "..") {
        Err(format!(
            "{path:?} contains a '..' component; it must be a path inside the image"
        ))
    } else {
        Ok(())
    }
}

/// `imagePullPolicy`: empty or one of [`PULL_POLICIES`].
///
/// # Errors
/// Any other value.
pub fn check_pull_policy(policy: &str) -> Result<(), String> {
    if policy.is_empty() || PULL_POLICIES.contains(&policy) {
        Ok(())
    } else {
        Err(format!(
            "{policy:?} is not an image pull policy (Always, IfNotPresent or Never)"
        ))
    }
}

/// An image reference with a digest must carry it as `@sha256:<64 lowercase hex>` at the end.
///
/// # Errors
/// A reference with `@` whose digest is anything else.
pub fn check_image_digest(image: &str) -> Result<(), String> {
    if !image.contains('@') || DIGEST.as_ref().is_some_and(|re| re.is_match(image)) {
        Ok(())
    } else {
        Err(format!(
            "image {image:?} has a malformed digest: expected @sha256: followed by 64 lowercase hex digits"
        ))
    }
}

/// A module parameter (`key=value`) goes to the kernel as one line of a NUL-terminated string.
///
/// # Errors
/// When it contains a newline or NUL.
pub fn check_module_parameter(parameter: &str) -> Result<(), String> {
    if parameter.contains(['\n', '\0']) {
        Err(format!("{parameter:?} contains a newline or NUL"))
    } else {
        Ok(())
    }
}

const CONTAINER: &str = "spec.moduleLoader.container";

fn push(errors: &mut Vec<ValidationError>, field: String, result: Result<(), String>) {
    if let Err(message) = result {
        errors.push(ValidationError::new(field, message));
    }
}

/// Every value of the module loader that kmm-agent would refuse, with its field.
pub fn check_loader_values(container: &ModuleLoaderContainerSpec) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    check_modprobe_values(&container.modprobe, &mut errors);
    push(
        &mut errors,
        format!("{CONTAINER}.imagePullPolicy"),
        check_pull_policy(&container.image_pull_policy),
    );
    if !container.container_image.is_empty() {
        push(
            &mut errors,
            format!("{CONTAINER}.containerImage"),
            check_image_digest(&container.container_image),
        );
    }
    check_in_tree(
        CONTAINER,
        &container.in_tree_modules_to_remove,
        &container.in_tree_module_to_remove,
        &mut errors,
    );
    for (i, mapping) in container.kernel_mappings.iter().enumerate() {
        check_mapping_values(
            &format!("{CONTAINER}.kernelMappings[{i}]"),
            mapping,
            &mut errors,
        );
    }
    errors
}

fn check_mapping_values(field: &str, mapping: &KernelMapping, errors: &mut Vec<ValidationError>) {
    if !mapping.container_image.is_empty() {
        push(
            errors,
            format!("{field}.containerImage"),
            check_image_digest(&mapping.container_image),
        );
    }
    check_in_tree(
        field,
        &mapping.in_tree_modules_to_remove,
        &mapping.in_tree_module_to_remove,
        errors,
    );
}

fn check_in_tree(field: &str, list: &[String], single: &str, errors: &mut Vec<ValidationError>) {
    for (i, name) in list.iter().enumerate() {
        push(
            errors,
            format!("{field}.inTreeModulesToRemove[{i}]"),
            check_kernel_module_name(name),
        );
    }
    if !single.is_empty() {
        push(
            errors,
            format!("{field}.inTreeModuleToRemove"),
            check_kernel_module_name(single),
        );
    }
}

fn check_modprobe_values(modprobe: &ModprobeSpec, errors: &mut Vec<ValidationError>) {
    let field = format!("{CONTAINER}.modprobe");
    if !modprobe.module_name.is_empty() {
        push(
            errors,
            format!("{field}.moduleName"),
            check_kernel_module_name(&modprobe.module_name),
        );
    }
    for (i, name) in modprobe.modules_loading_order.iter().flatten().enumerate() {
        push(
            errors,
            format!("{field}.modulesLoadingOrder[{i}]"),
            check_kernel_module_name(name),
        );
    }
    for (i, parameter) in modprobe.parameters.iter().enumerate() {
        push(
            errors,
            format!("{field}.parameters[{i}]"),
            check_module_parameter(parameter),
        );
    }
    push(
        errors,
        format!("{field}.dirName"),
        check_path_stays_inside(&modprobe.dir_name),
    );
    push(
        errors,
        format!("{field}.firmwarePath"),
        check_path_stays_inside(&modprobe.firmware_path),
    );
    if let Err(refused) = crate::modprobe_args::resolve(modprobe) {
        errors.extend(refused);
    }
}

/// `imagePullPolicy` of the device plugin and DRA containers (the kubelet refuses other values
/// when it starts their pods).
pub fn check_pod_pull_policies(spec: &crate::ModuleSpec) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let device_plugin = spec.device_plugin.iter().flat_map(|d| {
        [(
            "spec.devicePlugin",
            Some(&d.container),
            d.init_container.as_ref(),
        )]
    });
    let dra = spec
        .dra
        .iter()
        .flat_map(|d| [("spec.dra", Some(&d.container), d.init_container.as_ref())]);
    for (field, container, init) in device_plugin.chain(dra) {
        for (level, c) in [("container", container), ("initContainer", init)] {
            if let Some(c) = c {
                push(
                    &mut errors,
                    format!("{field}.{level}.imagePullPolicy"),
                    check_pull_policy(&c.image_pull_policy),
                );
            }
        }
    }
    errors
}
