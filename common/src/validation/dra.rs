//! Upstream KMM's webhook checks of `spec.dra` and of plugin volumes (`validateDRA`,
//! `validateHostPathVolumes` in `internal/webhook/module.go`), as pure functions. The
//! Kubernetes version check needs the API server and lives in the controller's webhook; its
//! rule is [`check_dra_server_version`].

use std::collections::BTreeSet;
use std::sync::LazyLock;

use k8s_openapi::api::core::v1::Volume;
use regex::Regex;

use super::ValidationError;
use crate::ModuleSpec;
use crate::api::dra::{DNS_SUBDOMAIN_PATTERN, MAX_DNS_SUBDOMAIN_LENGTH};

/// The first Kubernetes release with `resource.k8s.io/v1` (upstream's `MinKube*ForDRA`).
pub const MIN_DRA_KUBERNETES: (u32, u32) = (1, 34);

/// Where a plugin pod may mount the host (upstream's `allowedHostPathPrefixes`).
pub const ALLOWED_HOST_PATH_PREFIXES: [&str; 5] = ["/dev", "/sys", "/var", "/opt", "/run"];

static DNS_SUBDOMAIN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(DNS_SUBDOMAIN_PATTERN).ok());

/// A DNS subdomain (RFC 1123), as Go's `validation.IsDNS1123Subdomain`.
///
/// # Errors
/// What is wrong with `value`.
pub fn check_dns_subdomain(value: &str) -> Result<(), String> {
    if value.len() > MAX_DNS_SUBDOMAIN_LENGTH {
        return Err(format!(
            "{value:?} is not a valid DNS subdomain: must be no more than {MAX_DNS_SUBDOMAIN_LENGTH} characters"
        ));
    }
    if DNS_SUBDOMAIN.as_ref().is_some_and(|re| re.is_match(value)) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid DNS subdomain: a lowercase RFC 1123 subdomain must consist of \
             lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

/// Whether a Kubernetes release `major.minor` serves DRA (`resource.k8s.io/v1`). `minor` is
/// read as its leading digits, as providers append `+`.
///
/// # Errors
/// The message upstream's webhook answers with, or why the version cannot be read.
pub fn check_dra_server_version(major: &str, minor: &str) -> Result<(), String> {
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let (Some(ma), Some(mi)) = (digits(major), digits(minor)) else {
        return Err(format!(
            "spec.dra: cannot read the cluster's Kubernetes version {major:?}.{minor:?}"
        ));
    };
    let (min_major, min_minor) = MIN_DRA_KUBERNETES;
    if (ma, mi) >= (min_major, min_minor) {
        Ok(())
    } else {
        Err(format!(
            "spec.dra requires Kubernetes {min_major}.{min_minor} or later; current cluster version is {ma}.{mi}"
        ))
    }
}

/// `spec.dra` (driver name, DeviceClass names) and the host paths of plugin volumes.
pub(super) fn check(spec: &ModuleSpec, errors: &mut Vec<ValidationError>) {
    if spec.dra.is_some() && spec.device_plugin.is_some() {
        errors.push(ValidationError::new(
            "spec",
            "spec.dra and spec.devicePlugin are mutually exclusive",
        ));
    }
    if let Some(dp) = &spec.device_plugin {
        check_host_paths("spec.devicePlugin", &dp.volumes, errors);
    }
    let Some(dra) = &spec.dra else {
        return;
    };
    if dra.driver_name.is_empty() {
        errors.push(ValidationError::new("spec.dra.driverName", "is required"));
    } else if let Err(why) = check_dns_subdomain(&dra.driver_name) {
        errors.push(ValidationError::new("spec.dra.driverName", why));
    }
    let mut seen = BTreeSet::new();
    for (i, class) in dra.device_classes.iter().enumerate() {
        let field = format!("spec.dra.deviceClasses[{i}].name");
        if class.name.is_empty() {
            errors.push(ValidationError::new(field, "is required"));
        } else if let Err(why) = check_dns_subdomain(&class.name) {
            errors.push(ValidationError::new(field, why));
        } else if !seen.insert(class.name.as_str()) {
            errors.push(ValidationError::new(
                field,
                format!("{:?} is a duplicate", class.name),
            ));
        }
    }
    check_host_paths("spec.dra", &dra.volumes, errors);
}

fn check_host_paths(field: &str, volumes: &[Volume], errors: &mut Vec<ValidationError>) {
    for (i, volume) in volumes.iter().enumerate() {
        let Some(host) = &volume.host_path else {
            continue;
        };
        let path = clean(&host.path);
        let allowed = ALLOWED_HOST_PATH_PREFIXES
            .iter()
            .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')));
        if !allowed {
            errors.push(ValidationError::new(
                format!("{field}.volumes[{i}]"),
                format!(
                    "hostPath {:?} is not allowed; only /dev, /sys, /var, /opt and /run paths are permitted",
                    host.path
                ),
            ));
        }
    }
}

/// A path lexically cleaned as Go's `filepath.Clean` (no `.`, `..` or repeated `/`), so
/// `/var/../etc` is judged as `/etc`.
fn clean(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn clean_resolves_like_go() {
        for (raw, want) in [
            ("/var/../etc", "/etc"),
            ("/var//lib/./kubelet/", "/var/lib/kubelet"),
            ("/..", "/"),
            ("var/x", "var/x"),
            ("../x", "../x"),
            ("", "."),
        ] {
            assert_eq!(clean(raw), want, "{raw}");
        }
    }

    #[test]
    fn dns_subdomains_as_go_judges_them() {
        for ok in ["gpu.example.com", "a", "a-b.c0", &"a".repeat(253)] {
            assert_eq!(check_dns_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "GPU.example.com",
            "-a",
            "a-",
            "a..b",
            "a_b",
            &"a".repeat(254),
        ] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dra_needs_kubernetes_1_34() {
        assert_eq!(check_dra_server_version("1", "34"), Ok(()));
        assert_eq!(check_dra_server_version("1", "35+"), Ok(()));
        assert_eq!(check_dra_server_version("2", "0"), Ok(()));
        assert_eq!(
            check_dra_server_version("1", "33").unwrap_err(),
            "spec.dra requires Kubernetes 1.34 or later; current cluster version is 1.33"
        );
        assert!(
            check_dra_server_version("", "x")
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
