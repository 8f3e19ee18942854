//! The admission endpoints: `/validate-namespace` (refuse deleting a namespace
//! that still holds Modules), `/validate-module` (upstream's Module
//! checks, `spec.dra` only on Kubernetes >= 1.34, and a warning when another
//! Module loads the same kernel module) and `/validate-preflightvalidation`
//! (upstream's PreflightValidation checks).
//! The decisions are pure functions; the handlers only decode, look up and
//! encode.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::version::Info;
use kmm_common::validation::check_dra_server_version;
use kmm_common::{
    Module, PreflightValidation, validate_module, validate_module_update, validate_preflight,
};
use kube::api::{Api, ListParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;

use super::server_version::{self, ServerVersion};
use crate::metrics::{Metrics, WebhookResult};

/// Path of the Namespace webhook.
pub const NAMESPACE_PATH: &str = "/validate-namespace";
/// Path of the Module webhook.
pub const MODULE_PATH: &str = "/validate-module";
/// Path of the PreflightValidation webhook.
pub const PREFLIGHT_PATH: &str = "/validate-preflightvalidation";
/// Every path served ([`webhook_label`] of each is a metric label value).
pub const PATHS: [&str; 3] = [MODULE_PATH, NAMESPACE_PATH, PREFLIGHT_PATH];

/// The denial for deleting namespace `ns` that holds `modules`, or `None` when it holds none.
pub fn namespace_denial(ns: &str, modules: &[String]) -> Option<String> {
    if modules.is_empty() {
        return None;
    }
    Some(format!(
        "namespace {ns} holds Modules {}: delete them first so kmm-agent can unload their kernel modules",
        modules.join(", ")
    ))
}

/// The denial for a Module create/update, listing every failed check, or `None` to admit.
pub fn module_denial(op: &Operation, old: Option<&Module>, new: Option<&Module>) -> Option<String> {
    let result = match (op, old, new) {
        (Operation::Create, _, Some(new)) => validate_module(new),
        (Operation::Update, Some(old), Some(new)) => validate_module_update(old, new),
        // Without the object to check there is nothing to validate (the rules scope CREATE/UPDATE).
        _ => Ok(()),
    };
    result.err().map(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The denial for a PreflightValidation create/update, or `None` to admit (upstream checks the
/// new object alike on both).
pub fn preflight_denial(op: &Operation, new: Option<&PreflightValidation>) -> Option<String> {
    match (op, new) {
        (Operation::Create | Operation::Update, Some(new)) => {
            validate_preflight(&new.spec).err().map(|e| e.to_string())
        }
        _ => None,
    }
}

/// The denial of a Module with `spec.dra` on an API server older than Kubernetes 1.34
/// (upstream's `validateDRA` version gate), or `None`.
pub fn dra_version_denial(module: &Module, server: &Info) -> Option<String> {
    module.spec.dra.as_ref()?;
    check_dra_server_version(&server.major, &server.minor).err()
}

/// The kernel module a Module loads (`modprobe.moduleName`), as the kernel names it
/// (`-` and `_` are the same module).
fn kernel_module(module: &Module) -> Option<String> {
    let name = &module
        .spec
        .module_loader
        .as_ref()?
        .container
        .modprobe
        .module_name;
    (!name.is_empty()).then(|| name.replace('-', "_"))
}

/// Admission warnings for `module`: each other Module (any namespace) whose `moduleName` is
/// the same kernel module. Both would load and unload it on the nodes they share.
pub fn shared_kernel_module_warnings(module: &Module, others: &[Module]) -> Vec<String> {
    let Some(wanted) = kernel_module(module) else {
        return Vec::new();
    };
    let me = (module.namespace(), module.name_any());
    let mut owners: Vec<String> = others
        .iter()
        .filter(|o| (o.namespace(), o.name_any()) != me)
        .filter(|o| kernel_module(o).as_ref() == Some(&wanted))
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    owners.sort();
    let shown = &module
        .spec
        .module_loader
        .as_ref()
        .map_or("", |l| l.container.modprobe.module_name.as_str());
    owners
        .into_iter()
        .map(|owner| {
            format!(
                "kernel module {shown} is also managed by Module {owner}; both load the same kernel module on nodes they share"
            )
        })
        .collect()
}

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    client: Client,
    version: ServerVersion,
    metrics: Metrics,
}

/// The router of the endpoints, separate from binding so tests can drive it.
/// Every answer is counted in `kmm_controller_webhook_requests_total`.
pub fn router(client: Client, metrics: Metrics) -> Router {
    let version = ServerVersion::new(client.clone(), server_version::DEFAULT_TTL);
    Router::new()
        .route(NAMESPACE_PATH, post(validate_namespace))
        .route(MODULE_PATH, post(validate_module_handler))
        .route(PREFLIGHT_PATH, post(validate_preflight_handler))
        .with_state(Shared {
            client,
            version,
            metrics,
        })
}

/// The `webhook` label of a path: `/validate-module` -> `module`.
/// The `webhook` label of `kmm_controller_webhook_requests_total` for a path.
pub(crate) fn webhook_label(path: &str) -> &str {
    path.strip_prefix("/validate-").unwrap_or(path)
}

/// The request of an AdmissionReview body, or why it is not one (answered with 400).
fn decode<T>(body: &[u8]) -> Result<AdmissionRequest<T>, String>
where
    T: kube::Resource + DeserializeOwned,
{
    let review: AdmissionReview<T> =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    review.try_into().map_err(|e| format!("{e}"))
}

/// A denial as controller-runtime's `admission.Denied` answers it: 403 Forbidden
/// (kube's `deny` leaves the code 0, which the API server reports as 400).
fn forbid(resp: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut resp = resp.deny(message);
    resp.result.code = 403;
    resp.result.reason = "Forbidden".to_string();
    resp
}

/// How an answer counts: admitted, refused (403), or not judged (any other code).
fn result_of(resp: &AdmissionResponse) -> WebhookResult {
    if resp.allowed {
        WebhookResult::Allowed
    } else if resp.result.code == 403 {
        WebhookResult::Denied
    } else {
        WebhookResult::Error
    }
}

/// Encodes and counts an answer of the webhook at `path`.
fn reply(metrics: &Metrics, path: &str, resp: AdmissionResponse) -> Response {
    let result = result_of(&resp);
    match serde_json::to_vec(&resp.into_review()) {
        Ok(body) => {
            metrics.count_webhook(webhook_label(path), result);
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => {
            metrics.count_webhook(webhook_label(path), WebhookResult::Error);
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
    }
}

/// A body that is no AdmissionReview: 400, counted as an error.
fn bad_request(metrics: &Metrics, path: &str, msg: String) -> Response {
    metrics.count_webhook(webhook_label(path), WebhookResult::Error);
    (StatusCode::BAD_REQUEST, msg).into_response()
}

async fn validate_namespace(
    State(Shared {
        client, metrics, ..
    }): State<Shared>,
    body: Bytes,
) -> Response {
    let path = NAMESPACE_PATH;
    let req = match decode::<Namespace>(&body) {
        Ok(req) => req,
        Err(msg) => return bad_request(&metrics, path, msg),
    };
    let resp = AdmissionResponse::from(&req);
    if req.operation != Operation::Delete {
        return reply(&metrics, path, resp);
    }
    // The label may lag (or be removed by hand): ask for the Modules themselves.
    let api: Api<Module> = Api::namespaced(client, &req.name);
    let resp = match api.list_metadata(&ListParams::default()).await {
        Ok(list) => {
            let mut names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
            names.sort();
            match namespace_denial(&req.name, &names) {
                Some(msg) => {
                    tracing::info!(namespace = %req.name, modules = ?names, "refusing namespace deletion");
                    forbid(resp, msg)
                }
                None => resp,
            }
        }
        Err(e) => {
            // Fail closed: the configuration's failurePolicy decides for unreachable webhooks,
            // but a webhook that answers must not wave through what it could not check.
            tracing::warn!(namespace = %req.name, error = %e, "listing Modules for namespace deletion");
            let mut resp = resp.deny(format!(
                "cannot list Modules of namespace {}: {e}",
                req.name
            ));
            resp.result.code = 500;
            resp.result.reason = "InternalError".to_string();
            resp
        }
    };
    reply(&metrics, path, resp)
}

async fn validate_module_handler(
    State(Shared {
        client,
        version,
        metrics,
    }): State<Shared>,
    body: Bytes,
) -> Response {
    let path = MODULE_PATH;
    let req = match decode::<Module>(&body) {
        Ok(req) => req,
        Err(msg) => return bad_request(&metrics, path, msg),
    };
    let mut resp = AdmissionResponse::from(&req);
    if let Some(msg) = module_denial(&req.operation, req.old_object.as_ref(), req.object.as_ref()) {
        tracing::info!(namespace = ?req.namespace, module = %req.name, %msg, "refusing Module");
        return reply(&metrics, path, forbid(resp, msg));
    }
    let dra = req
        .object
        .as_ref()
        .filter(|m| m.spec.dra.is_some() && req.operation != Operation::Delete);
    if let Some(module) = dra {
        match version.get().await {
            Ok(info) => {
                if let Some(msg) = dra_version_denial(module, &info) {
                    tracing::info!(namespace = ?req.namespace, module = %req.name, %msg, "refusing Module");
                    return reply(&metrics, path, forbid(resp, msg));
                }
            }
            Err(e) => {
                // Fail closed, as for namespace deletion: an answer we could not check is no.
                tracing::warn!(error = %e, "reading the API server version for spec.dra");
                let mut denied = resp.deny(format!(
                    "spec.dra: cannot read the cluster's Kubernetes version: {e}"
                ));
                denied.result.code = 500;
                denied.result.reason = "InternalError".to_string();
                return reply(&metrics, path, denied);
            }
        }
    }
    if let Some(module) = req
        .object
        .as_ref()
        .filter(|_| req.operation != Operation::Delete)
    {
        let warnings = sharing_warnings(&client, module).await;
        if !warnings.is_empty() {
            tracing::info!(namespace = ?req.namespace, module = %req.name, ?warnings, "admitting Module with warnings");
            resp.warnings = Some(warnings);
        }
    }
    reply(&metrics, path, resp)
}

async fn validate_preflight_handler(
    State(Shared { metrics, .. }): State<Shared>,
    body: Bytes,
) -> Response {
    let path = PREFLIGHT_PATH;
    let req = match decode::<PreflightValidation>(&body) {
        Ok(req) => req,
        Err(msg) => return bad_request(&metrics, path, msg),
    };
    let resp = AdmissionResponse::from(&req);
    match preflight_denial(&req.operation, req.object.as_ref()) {
        Some(msg) => {
            tracing::info!(preflight = %req.name, %msg, "refusing PreflightValidation");
            reply(&metrics, path, forbid(resp, msg))
        }
        None => reply(&metrics, path, resp),
    }
}

/// [`shared_kernel_module_warnings`] against every Module in the cluster. A warning is advice:
/// when the list fails the Module is admitted without it.
async fn sharing_warnings(client: &Client, module: &Module) -> Vec<String> {
    if kernel_module(module).is_none() {
        return Vec::new();
    }
    let api: Api<Module> = Api::all(client.clone());
    match api.list(&ListParams::default()).await {
        Ok(list) => shared_kernel_module_warnings(module, &list.items),
        Err(e) => {
            tracing::warn!(error = %e, "listing Modules for the shared kernel module warning");
            Vec::new()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn module(regexp: &str) -> Module {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kmm.sigs.x-k8s.io/v1beta1", "kind": "Module",
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {
                "selector": {"a": "b"},
                "moduleLoader": {"container": {
                    "modprobe": {"moduleName": "m"},
                    "kernelMappings": [{"regexp": regexp, "containerImage": "r/x:1"}]
                }}
            }
        }))
        .unwrap()
    }

    #[test]
    fn answers_count_as_allowed_denied_or_error() {
        let resp = || AdmissionResponse::invalid("x");
        let mut allowed = resp();
        allowed.allowed = true;
        assert_eq!(result_of(&allowed), WebhookResult::Allowed);
        assert_eq!(
            result_of(&forbid(resp(), "no".into())),
            WebhookResult::Denied
        );
        let mut internal = resp().deny("cannot list");
        internal.result.code = 500;
        assert_eq!(result_of(&internal), WebhookResult::Error);
        assert_eq!(webhook_label(MODULE_PATH), "module");
        assert_eq!(webhook_label(PREFLIGHT_PATH), "preflightvalidation");
    }

    #[test]
    fn namespace_denial_names_every_module() {
        assert_eq!(namespace_denial("x", &[]), None);
        let msg = namespace_denial("x", &["a".into(), "b".into()]).unwrap();
        assert_eq!(
            msg,
            "namespace x holds Modules a, b: delete them first so kmm-agent can unload their kernel modules"
        );
    }

    fn named(ns: &str, name: &str, module_name: &str) -> Module {
        let mut m = module("^.+$");
        m.metadata.namespace = Some(ns.into());
        m.metadata.name = Some(name.into());
        if let Some(l) = m.spec.module_loader.as_mut() {
            l.container.modprobe.module_name = module_name.into();
        }
        m
    }

    #[test]
    fn a_kernel_module_loaded_by_another_module_is_warned_about() {
        let me = named("ns", "gpu", "nv-drv");
        let others = [
            me.clone(),
            named("ns", "other", "brd"),
            named("team-b", "gpu-b", "nv_drv"),
            named("team-a", "gpu-a", "nv-drv"),
        ];
        assert_eq!(
            shared_kernel_module_warnings(&me, &others),
            [
                "kernel module nv-drv is also managed by Module team-a/gpu-a; both load the same kernel module on nodes they share",
                "kernel module nv-drv is also managed by Module team-b/gpu-b; both load the same kernel module on nodes they share",
            ]
        );
        // Itself (an update) and other kernel modules are no reason to warn.
        assert!(shared_kernel_module_warnings(&me, &others[..2]).is_empty());
        let mut raw = named("ns", "raw", "");
        raw.spec.module_loader = None;
        assert!(shared_kernel_module_warnings(&raw, &others).is_empty());
    }

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            ..Info::default()
        }
    }

    #[test]
    fn dra_is_refused_before_kubernetes_1_34_with_upstreams_message() {
        let mut dra: Module = module("^.+$");
        dra.spec.dra = Some(
            serde_json::from_value(serde_json::json!({
                "driverName": "gpu.example.com", "container": {"image": "r/dra:1"}
            }))
            .unwrap(),
        );
        assert_eq!(
            dra_version_denial(&dra, &info("1", "33")).as_deref(),
            Some("spec.dra requires Kubernetes 1.34 or later; current cluster version is 1.33")
        );
        assert_eq!(dra_version_denial(&dra, &info("1", "35")), None);
        assert_eq!(dra_version_denial(&dra, &info("1", "34+")), None);
        // Without spec.dra the version does not matter.
        assert_eq!(dra_version_denial(&module("^.+$"), &info("1", "20")), None);
    }

    #[test]
    fn preflight_denial_checks_the_kernel_version_on_create_and_update() {
        let pfv = |kernel: &str| -> PreflightValidation {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "kmm.sigs.x-k8s.io/v1beta2", "kind": "PreflightValidation",
                "metadata": {"name": "p"},
                "spec": {"kernelVersion": kernel}
            }))
            .unwrap()
        };
        let (good, short, empty) = (pfv("6.1.0-31-amd64"), pfv("6.1"), pfv(""));
        for op in [Operation::Create, Operation::Update] {
            assert_eq!(preflight_denial(&op, Some(&good)), None);
            let msg = preflight_denial(&op, Some(&short)).unwrap();
            assert!(msg.contains("invalid kernelVersion 6.1"), "{msg}");
            assert_eq!(
                preflight_denial(&op, Some(&empty)).unwrap(),
                "spec.kernelVersion: cannot be empty"
            );
        }
        assert_eq!(preflight_denial(&Operation::Delete, None), None);
    }

    #[test]
    fn module_denial_reports_the_regexp_error() {
        let bad = module("[");
        let msg = module_denial(&Operation::Create, None, Some(&bad)).unwrap();
        assert!(msg.contains("kernelMappings[0]"), "{msg}");
        assert!(msg.contains("regex") || msg.contains("unclosed"), "{msg}");
        let good = module("^.+$");
        assert_eq!(module_denial(&Operation::Create, None, Some(&good)), None);
        assert!(module_denial(&Operation::Update, Some(&good), Some(&bad)).is_some());
        assert_eq!(module_denial(&Operation::Delete, Some(&bad), None), None);
    }
}
