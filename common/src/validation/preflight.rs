//! PreflightValidation admission rules (upstream KMM's `internal/webhook/preflight.go`): the
//! kernel version must be set and look like one.

use super::ValidationError;
use crate::PreflightValidationSpec;

const KERNEL_VERSION: &str = "spec.kernelVersion";

/// Validates a PreflightValidation on create and update (the same rules for both).
///
/// A kernel version has at least three fields separated by `.`, `,` or `-` (upstream splits
/// on `[.,-]` and wants three parts, empty parts included: `6..1` passes, `6.1` does not).
///
/// # Errors
/// The failed check.
pub fn validate_preflight(spec: &PreflightValidationSpec) -> Result<(), ValidationError> {
    let kernel = &spec.kernel_version;
    if kernel.is_empty() {
        return Err(ValidationError::new(KERNEL_VERSION, "cannot be empty"));
    }
    let fields = kernel.split(['.', ',', '-']).count();
    if fields < 3 {
        return Err(ValidationError::new(
            KERNEL_VERSION,
            format!(
                "invalid kernelVersion {kernel}: want at least 3 fields separated by '.', ',' or '-' (e.g. 6.1.0-31-amd64)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kernel: &str) -> PreflightValidationSpec {
        PreflightValidationSpec {
            kernel_version: kernel.into(),
            push_built_image: false,
        }
    }

    #[test]
    fn a_real_kernel_version_passes() {
        for k in [
            "6.1.0-31-amd64",
            "5.8.18-101.fc31.x86_64",
            "6.1.0",
            "6..1",
            "a,b-c",
        ] {
            assert_eq!(validate_preflight(&spec(k)), Ok(()), "{k}");
        }
    }

    #[test]
    fn empty_and_short_versions_are_refused_naming_the_field() {
        let empty = validate_preflight(&spec("")).unwrap_err();
        assert_eq!(empty.to_string(), "spec.kernelVersion: cannot be empty");
        for k in ["6.1", "6", "6-amd64"] {
            let err = validate_preflight(&spec(k)).unwrap_err();
            assert_eq!(err.field, KERNEL_VERSION);
            assert!(
                err.message.contains(&format!("invalid kernelVersion {k}")),
                "{err}"
            );
        }
    }
}
