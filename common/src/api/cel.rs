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

/// A regex as a CEL string literal (backslashes doubled, so CEL passes them to RE2).
fn cel_regex(pattern: &str) -> String {
    format!("'{}'", pattern.replace('\\', "\\\\"))
}

/// CEL's form of [`crate::validation::check_kernel_module_name`] for `x` (non-empty is checked
/// where the field is required): at most 55 bytes, no `/`, NUL or whitespace (RE2's `\s` lacks
/// `\v`, U+0085 and the Unicode spaces, so they are listed).
fn kernel_module_name_expr(x: &str) -> String {
    format!(
        "size(bytes({x})) <= {} && {x}.matches({})",
        crate::validation::MAX_KERNEL_MODULE_NAME_BYTES,
        cel_regex(r"^[^/\x00\s\x0B\x{85}\p{Z}]*$")
    )
}

/// `Rule` for one kernel module name field (empty allowed: other rules require it).
pub fn kernel_module_name(field: &str) -> Rule {
    Rule::new(format!(
        "self == '' || ({})",
        kernel_module_name_expr("self")
    ))
    .message(Message::Message(format!(
        "{field}: a kernel module name has no '/', whitespace or NUL and at most {} bytes",
        crate::validation::MAX_KERNEL_MODULE_NAME_BYTES
    )))
}

/// `Rule` for a list of kernel module names.
pub fn kernel_module_names(field: &str) -> Rule {
    Rule::new(format!("self.all(x, {})", kernel_module_name_expr("x"))).message(Message::Message(
        format!(
            "{field}: every entry must be a kernel module name: no '/', whitespace or NUL, at most {} bytes",
            crate::validation::MAX_KERNEL_MODULE_NAME_BYTES
        ),
    ))
}

/// `dirName` / `firmwarePath`: no `..` component.
pub fn path_stays_inside(field: &str) -> Rule {
    Rule::new(format!("!self.matches({})", cel_regex(r"(^|/)\.\.(/|$)"))).message(Message::Message(
        format!("{field}: must not contain a '..' component (a path inside the image)"),
    ))
}

/// `modprobe.parameters`: no newline or NUL in an entry.
pub fn parameters_single_line() -> Rule {
    Rule::new(r"self.all(p, !p.contains('\n') && !p.contains('\x00'))")
        .message("modprobe.parameters: an entry must not contain a newline or NUL")
}

/// `imagePullPolicy`: one of the Kubernetes values.
pub fn pull_policy(field: &str) -> Rule {
    let allowed = crate::validation::PULL_POLICIES
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    Rule::new(format!("self in ['', {allowed}]")).message(Message::Message(format!(
        "{field}: must be Always, IfNotPresent or Never"
    )))
}

/// A digest in an image reference is `@sha256:<64 lowercase hex>` at the end.
pub fn image_digest(field: &str) -> Rule {
    Rule::new(format!(
        "!self.contains('@') || self.matches({})",
        cel_regex(crate::validation::DIGEST_PATTERN)
    ))
    .message(Message::Message(format!(
        "{field}: a digest must be @sha256: followed by 64 lowercase hex digits"
    )))
}

/// `version` is the value of node labels.
pub fn version_is_label_value() -> Rule {
    Rule::new(format!(
        "self == '' || self.matches({})",
        cel_regex(crate::validation::LABEL_NAME_PATTERN)
    ))
    .message("version: must be a node label value: alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric")
}

/// Root rule: a node label key `kmm.node.kubernetes.io/<ns>.<name><suffix>` fits in 63
/// characters for the shortest namespace (one character); the webhook checks the exact sum.
/// `needs` is the CEL condition under which the Module needs the label.
fn label_key_fits(needs: &str, suffix: &str, because: &str) -> Rule {
    let max = crate::validation::MAX_LABEL_NAME_LENGTH - 2 - suffix.len();
    Rule::new(format!(
        "!has(self.spec) || !({needs}) || size(self.metadata.name) <= {max}"
    ))
    .message(Message::Message(format!(
        "metadata.name: at most {max} characters{because}: node label kmm.node.kubernetes.io/<namespace>.<name>{suffix} must fit in {} characters",
        crate::validation::MAX_LABEL_NAME_LENGTH
    )))
}

/// Root rule for the `.ready` label of every Module with a module loader.
pub fn ready_label_fits() -> Rule {
    label_key_fits("has(self.spec.moduleLoader)", ".ready", "")
}

/// Root rule for the `.device-plugin-ready` label.
pub fn device_plugin_label_fits() -> Rule {
    label_key_fits(
        "has(self.spec.devicePlugin)",
        ".device-plugin-ready",
        " when spec.devicePlugin is set",
    )
}

/// Root rule for the `.dra-ready` label.
pub fn dra_label_fits() -> Rule {
    label_key_fits("has(self.spec.dra)", ".dra-ready", " when spec.dra is set")
}

/// Rule on `spec`, upstream's `XValidation` word for word: a Module runs a device plugin or a
/// DRA driver, not both.
pub fn dra_xor_device_plugin() -> Rule {
    Rule::new("!(has(self.dra) && has(self.devicePlugin))")
        .message("spec.dra and spec.devicePlugin are mutually exclusive")
}

/// A DNS subdomain (RFC 1123; the length is bounded by the field's `maxLength`).
pub fn dns_subdomain(field: &str) -> Rule {
    Rule::new(format!(
        "self.matches({})",
        cel_regex(super::dra::DNS_SUBDOMAIN_PATTERN)
    ))
    .message(Message::Message(format!(
        "{field}: must be a DNS subdomain: lowercase alphanumerics, '-' and '.', starting and ending with an alphanumeric, at most {} characters",
        super::dra::MAX_DNS_SUBDOMAIN_LENGTH
    )))
}
