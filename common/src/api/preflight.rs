//! The cluster-scoped `PreflightValidation` (`pfv`), `kmm.sigs.x-k8s.io/v1beta2`: checks every
//! Module against a kernel the cluster is about to run (its image exists, or can be built and
//! signed). Field for field upstream KMM's `api/v1beta2/preflightvalidation_types.go`.
//!
//! `v1beta1` is served too (deprecated, as upstream) with this same schema: see
//! [`crate::crd::preflight_crd`] for why.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `verificationStatus`: the Module is verified.
pub const VERIFICATION_SUCCESS: &str = "Success";
/// `verificationStatus`: the Module cannot run on the kernel (see `statusReason`).
pub const VERIFICATION_FAILURE: &str = "Failure";
/// `verificationStatus`: still verifying (e.g. a build is running).
pub const VERIFICATION_IN_PROGRESS: &str = "InProgress";
/// `verificationStage`: the image is being verified (or built).
pub const VERIFICATION_STAGE_IMAGE: &str = "Image";
/// `verificationStage`: verification is over (Success or Failure).
pub const VERIFICATION_STAGE_DONE: &str = "Done";

/// PreflightValidationSpec describes the desired state of the resource, such as the kernel
/// version that Module CRs need to be verified against.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "kmm.sigs.x-k8s.io",
    version = "v1beta2",
    kind = "PreflightValidation",
    plural = "preflightvalidations",
    shortname = "pfv",
    status = "PreflightValidationStatus",
    doc = "PreflightValidation initiates a preflight validations for all Modules on the current Kubernetes cluster."
)]
#[serde(rename_all = "camelCase")]
pub struct PreflightValidationSpec {
    /// KernelVersion describes the kernel image that all Modules need to be checked against.
    pub kernel_version: String,

    /// Boolean flag that determines whether images built during preflight must also be pushed
    /// to a defined repository.
    #[serde(default)]
    #[schemars(transform = no_default)]
    pub push_built_image: bool,
}

/// Upstream's schema has no default for `pushBuiltImage` (absent means false): the server then
/// stores what was sent, as upstream's does.
fn no_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// The verification of one Module (upstream's `PreflightValidationModuleStatus`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreflightValidationModuleStatus {
    /// Name is the name of the Module resource.
    pub name: String,

    /// Namespace is the namespace of the Module resource.
    pub namespace: String,

    /// Status of Module CR verification: Success (verified), Failure (verification failed),
    /// InProgress (verification has not finished yet).
    #[schemars(extend("enum" = [VERIFICATION_SUCCESS, VERIFICATION_FAILURE, VERIFICATION_IN_PROGRESS]))]
    pub verification_status: String,

    /// StatusReason contains a string describing the status source.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_reason: String,

    /// Current stage of the verification process: Image (image existence verification, and
    /// build/sign when needed), Done (verification is over).
    #[schemars(extend("enum" = [VERIFICATION_STAGE_IMAGE, VERIFICATION_STAGE_DONE]))]
    pub verification_stage: String,

    /// LastTransitionTime is the last time the verification status or reason of this Module
    /// changed.
    pub last_transition_time: Time,
}

/// PreflightValidationStatus is the most recently observed status of the PreflightValidation.
/// It is populated by the system and is read-only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreflightValidationStatus {
    /// Modules contain observations about each Module's preflight upgradability validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["namespace", "name"]
    ))]
    pub modules: Vec<PreflightValidationModuleStatus>,
}
