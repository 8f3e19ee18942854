//! CEL rules (`x-kubernetes-validations`) attached to the Module schema.
//!
//! Each rule is the schema-checkable form of one of upstream KMM's webhook checks (or a
//! kmm-rs addition); [`crate::validate_module`] implements the same checks in Rust. Every
//! message names the field and the rule so `kubectl apply` errors are actionable. Go treats an
//! empty string as unset, so "set" below always means present and non-empty.

use kube::core::{Message, Rule};

/// Combined length of a Module's namespace and name allowed when `version` is set (upstream
/// KMM's `maxCombinedLength`). Node label keys embed both.
pub const MAX_COMBINED_NAME_LENGTH: usize = 40;

/// Maximum number of kernel mappings (bounds the CEL cost estimate).
pub const MAX_KERNEL_MAPPINGS: usize = 64;

/// Prefix every `filesToSign` entry must start with: `dirName` with exactly one trailing slash.
/// `dirName` is defaulted to `/opt` by the apiserver before validation runs.
const DIR_PREFIX: &str = "(has(MP.dirName) && MP.dirName != '' ? (MP.dirName.endsWith('/') ? MP.dirName : MP.dirName + '/') : '/opt/')";

fn dir_prefix(modprobe: &str) -> String {
    DIR_PREFIX.replace("MP", modprobe)
}

/// Root rule: the namespace is not visible to CEL (only `metadata.name`/`generateName` are),
/// so the schema enforces the necessary condition `name <= 40 - 1` (a namespace has at least
/// one character); the webhook ([`crate::validate_module`]) checks the exact combined length.
pub fn name_length_rule() -> Rule {
    Rule::new(format!(
        "!has(self.spec) || !has(self.spec.moduleLoader) || !has(self.spec.moduleLoader.container.version) \
         || self.spec.moduleLoader.container.version == '' || size(self.metadata.name) <= {}",
        MAX_COMBINED_NAME_LENGTH - 1
    ))
    .message(Message::Message(format!(
        "metadata.name: namespace and name together must not exceed {MAX_COMBINED_NAME_LENGTH} characters when spec.moduleLoader.container.version is set"
    )))
}

/// `kernelMappings[]`: exactly one of `literal` and `regexp`.
pub fn literal_xor_regexp() -> Rule {
    Rule::new(
        "(has(self.literal) && self.literal != '') != (has(self.regexp) && self.regexp != '')",
    )
    .message("kernelMappings[]: exactly one of literal and regexp must be set")
}

/// An image reference must carry a tag or a digest; `${VAR}` placeholders count as text.
pub fn image_has_tag(field: &str) -> Rule {
    Rule::new("self == '' || self.contains('@') || self.matches(':[^/]+$')").message(Message::Message(format!(
        "{field}: image must carry a tag or a digest (repo:tag or repo@sha256:...; ${{KERNEL_FULL_VERSION}} may be the tag)"
    )))
}

/// `modprobe.rawArgs` only when `moduleName` is unset.
pub fn raw_args_only_without_module_name() -> Rule {
    Rule::new(
        "!has(self.moduleName) || self.moduleName == '' || !has(self.rawArgs) || \
         ((!has(self.rawArgs.load) || size(self.rawArgs.load) == 0) && \
          (!has(self.rawArgs.unload) || size(self.rawArgs.unload) == 0))",
    )
    .message("modprobe.rawArgs: cannot be set when modprobe.moduleName is set")
}

/// `modprobe.moduleName` required unless both raw load and unload args are set.
pub fn raw_args_required_without_module_name() -> Rule {
    Rule::new(
        "(has(self.moduleName) && self.moduleName != '') || (has(self.rawArgs) && \
         has(self.rawArgs.load) && size(self.rawArgs.load) > 0 && \
         has(self.rawArgs.unload) && size(self.rawArgs.unload) > 0)",
    )
    .message("modprobe.moduleName: required unless both modprobe.rawArgs.load and modprobe.rawArgs.unload are set")
}

/// `modprobe.modulesLoadingOrder` has at least two entries when present.
pub fn loading_order_min_two() -> Rule {
    Rule::new("!has(self.modulesLoadingOrder) || size(self.modulesLoadingOrder) >= 2")
        .message("modprobe.modulesLoadingOrder: if a loading order is defined, at least two values must be defined")
}

/// `modprobe.modulesLoadingOrder[0]` is `moduleName`.
pub fn loading_order_starts_with_module_name() -> Rule {
    Rule::new(
        "!has(self.modulesLoadingOrder) || size(self.modulesLoadingOrder) == 0 || \
         (has(self.moduleName) && self.moduleName != '' && self.modulesLoadingOrder[0] == self.moduleName)",
    )
    .message("modprobe.modulesLoadingOrder: the first entry must be modprobe.moduleName (which must be set)")
}

/// `modprobe.modulesLoadingOrder` has no duplicates (rule on the list itself).
pub fn loading_order_unique() -> Rule {
    Rule::new("self.all(x, self.exists_one(y, y == x))")
        .message("modprobe.modulesLoadingOrder: entries must be unique")
}

/// Every mapping has an image unless the container level provides one.
pub fn mapping_image_required() -> Rule {
    Rule::new(
        "(has(self.containerImage) && self.containerImage != '') || \
         self.kernelMappings.all(m, has(m.containerImage) && m.containerImage != '')",
    )
    .message("kernelMappings[].containerImage: required in every mapping when container.containerImage is not set")
}

/// Container-level `sign.filesToSign` entries lie under `modprobe.dirName`.
pub fn container_files_to_sign_under_dir() -> Rule {
    Rule::new(format!(
        "!has(self.sign) || !has(self.sign.filesToSign) || self.sign.filesToSign.all(f, f.startsWith({}))",
        dir_prefix("self.modprobe")
    ))
    .message("sign.filesToSign: every file must be under modprobe.dirName")
}

/// Mapping-level `sign.filesToSign` entries lie under `modprobe.dirName`.
pub fn mapping_files_to_sign_under_dir() -> Rule {
    Rule::new(format!(
        "self.kernelMappings.all(m, !has(m.sign) || !has(m.sign.filesToSign) || m.sign.filesToSign.all(f, f.startsWith({})))",
        dir_prefix("self.modprobe")
    ))
    .message("kernelMappings[].sign.filesToSign: every file must be under modprobe.dirName")
}

/// `sign.filesToSign` is non-empty whenever `sign` is set.
pub fn files_to_sign_non_empty() -> Rule {
    Rule::new("has(self.filesToSign) && size(self.filesToSign) > 0")
        .message("sign.filesToSign: must list at least one file when sign is set")
}

/// `version` cannot change to or from empty (transition rule).
pub fn version_transition() -> Rule {
    Rule::new(
        "(has(oldSelf.version) && oldSelf.version != '') == (has(self.version) && self.version != '')",
    )
    .message("version: cannot update to or from an empty version; delete the Module and create it again")
}
