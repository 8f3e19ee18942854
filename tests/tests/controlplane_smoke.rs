//! Proves the test control plane is a real Kubernetes API server: objects
//! round-trip through etcd, the version is the pinned one, RBAC denies and
//! ValidatingAdmissionPolicy rejects.
//!
//! Needs the binaries from `bash hack/controlplane/build.sh`; fails (does not
//! skip) without them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kmm_tests::controlplane::{ControlPlane, pinned_kubernetes_version};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

fn configmap(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "greeting".to_string(),
            "hello".to_string(),
        )])),
        ..ConfigMap::default()
    }
}

fn api_status(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn configmap_round_trips_through_a_temp_namespace() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("smoke-cm").await?;
    let cms: Api<ConfigMap> = Api::namespaced(cp.client(), ns.name());

    cms.create(&PostParams::default(), &configmap("round-trip", &[]))
        .await?;
    let got = cms.get("round-trip").await?;
    assert_eq!(
        got.data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hello")
    );
    assert!(got.metadata.uid.is_some(), "server assigns a uid");
    assert!(got.metadata.resource_version.is_some(), "stored in etcd");

    // The same object through kubectl with the admin kubeconfig.
    let out = cp.kubectl_ok([
        "get",
        "configmap",
        "round-trip",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.data.greeting}",
    ])?;
    assert_eq!(out, "hello");

    ns.cleanup().await
}

#[tokio::test]
async fn kubectl_applies_from_stdin_and_explains() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("smoke-kubectl").await?;
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: {}\ndata:\n  k: v\n",
        ns.name()
    );
    let out = cp.kubectl_with_stdin(["apply", "--server-side", "-f", "-"], &manifest)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = Api::<ConfigMap>::namespaced(cp.client(), ns.name())
        .get("applied")
        .await?;
    assert_eq!(
        got.data.unwrap_or_default().get("k").map(String::as_str),
        Some("v")
    );

    // explain reads the server's OpenAPI v3 document.
    let explain = cp.kubectl_ok(["explain", "configmap.data"])?;
    assert!(explain.contains("FIELD: data"), "{explain}");

    let failed = cp.kubectl(["get", "configmap", "does-not-exist", "-n", ns.name()]);
    assert!(!failed.status.success(), "kubectl exit status is reported");
    ns.cleanup().await
}

#[tokio::test]
async fn pod_security_admission_enforces_the_namespace_level() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("smoke-pss").await?;
    let result = pss_checks(cp, ns.name()).await;
    ns.cleanup().await?;
    result
}

async fn pss_checks(cp: &ControlPlane, ns: &str) -> Result<()> {
    let client = cp.client();
    cp.kubectl_ok([
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ])?;
    // The ServiceAccount admission plugin (before PodSecurity) needs the
    // namespace's default ServiceAccount; make it rather than wait for the
    // controller-manager, so the test also holds without controllers.
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => {}
        Err(e) if api_status(&e) == Some(409) => {}
        Err(e) => return Err(e.into()),
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{
            "name": "c", "image": "registry.invalid/none:1",
            "securityContext": {"privileged": true},
        }]},
    }))?;
    let err = Api::<Pod>::namespaced(client, ns)
        .create(&PostParams::default(), &pod)
        .await
        .err()
        .context("a privileged pod was admitted into a restricted namespace")?;
    let kube::Error::Api(status) = &err else {
        bail!("expected an API rejection, got {err}");
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status.message.contains("violates PodSecurity"),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_dropped_temp_namespace_is_deleted_anyway() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("smoke-drop").await?;
    let name = ns.name().to_string();
    drop(ns);
    let namespaces: Api<Namespace> = Api::all(cp.client());
    // Deleted means gone, or Terminating while the namespace controller empties it.
    match namespaces.get_opt(&name).await? {
        None => {}
        Some(n) => assert!(
            n.metadata.deletion_timestamp.is_some(),
            "namespace {name} still active after drop"
        ),
    }
    Ok(())
}

#[tokio::test]
async fn service_account_tokens_are_issued_and_accepted() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("smoke-sa").await?;
    let result = sa_checks(cp, ns.name()).await;
    ns.cleanup().await?;
    result
}

async fn sa_checks(cp: &ControlPlane, ns: &str) -> Result<()> {
    let sas: Api<ServiceAccount> = Api::namespaced(cp.client(), ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "kmm-smoke"}}))?;
    sas.create(&PostParams::default(), &sa).await?;
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [], "expirationSeconds": 600},
    }))?;
    let issued = sas
        .create_token_request("kmm-smoke", &PostParams::default(), &request)
        .await?;
    let token = issued
        .status
        .and_then(|s| s.token)
        .context("TokenRequest returned no token")?;

    // The API server verifies the token it signed with the SA key pair.
    let as_sa = cp.client_with_token(&token)?;
    let review = Api::<SelfSubjectReview>::all(as_sa.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:kmm-smoke").as_str())
    );
    // ... and RBAC applies to it: no binding, no secrets.
    let err = Api::<Secret>::namespaced(as_sa, ns)
        .list(&ListParams::default())
        .await
        .err()
        .context("an unbound service account could list secrets")?;
    assert_eq!(api_status(&err), Some(403), "{err}");

    // A forged token is rejected outright.
    let forged = cp.client_with_token("not-a-real-token")?;
    let err = Api::<SelfSubjectReview>::all(forged)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .err()
        .context("a forged token was accepted")?;
    assert_eq!(api_status(&err), Some(401), "{err}");
    Ok(())
}

#[tokio::test]
async fn server_and_kubectl_report_the_pinned_version() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let pinned = pinned_kubernetes_version()?;
    let info = cp.client().apiserver_version().await?;
    assert_eq!(info.git_version, pinned, "kube-apiserver /version");

    let out = cp.kubectl_ok(["version", "--client", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        v["clientVersion"]["gitVersion"],
        json!(pinned),
        "kubectl version"
    );
    Ok(())
}

#[tokio::test]
async fn rbac_denies_an_identity_without_bindings() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("smoke-rbac").await?;
    let result = rbac_checks(cp, ns.name()).await;
    ns.cleanup().await?;
    result
}

async fn rbac_checks(cp: &ControlPlane, ns: &str) -> Result<()> {
    let nobody: Api<ConfigMap> = Api::namespaced(cp.client_as("kmm-smoke-nobody", &[])?, ns);
    let err = nobody
        .list(&ListParams::default())
        .await
        .err()
        .context("an unbound user could list configmaps")?;
    assert_eq!(api_status(&err), Some(403), "{err}");

    // Positive control: a Role bound to another user lets it read, and only read.
    let admin = cp.client();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "cm-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }))?;
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "cm-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kmm-smoke-reader"}],
    }))?;
    Api::<RoleBinding>::namespaced(admin, ns)
        .create(&PostParams::default(), &binding)
        .await?;

    let reader: Api<ConfigMap> = Api::namespaced(cp.client_as("kmm-smoke-reader", &[])?, ns);
    // RBAC changes are seen through an informer; allow a moment.
    retry(Duration::from_secs(10), || async {
        reader
            .list(&ListParams::default())
            .await
            .map(drop)
            .map_err(Into::into)
    })
    .await
    .context("bound reader still cannot list")?;
    let err = reader
        .create(&PostParams::default(), &configmap("not-allowed", &[]))
        .await
        .err()
        .context("a read-only user could create a configmap")?;
    assert_eq!(api_status(&err), Some(403), "{err}");
    Ok(())
}

#[tokio::test]
async fn validating_admission_policy_rejects_labelled_configmaps() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.temp_namespace("smoke-vap").await?;
    // Cluster-scoped objects: name them after the namespace, scope the
    // binding to it, and always delete them.
    let name = format!("deny-{}", ns.name());
    let client = cp.client();
    let result = vap_checks(&client, ns.name(), &name).await;
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client);
    bindings.delete(&name, &DeleteParams::default()).await.ok();
    policies.delete(&name, &DeleteParams::default()).await.ok();
    ns.cleanup().await?;
    result
}

async fn vap_checks(client: &Client, ns: &str, name: &str) -> Result<()> {
    const LABEL: &str = "kmm-rs.test/forbidden";
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"],
            }]},
            "validations": [{
                "expression": format!("!has(object.metadata.labels) || !('{LABEL}' in object.metadata.labels)"),
                "message": "configmaps labelled kmm-rs.test/forbidden are denied by the smoke test",
            }],
        },
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        },
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    // The policy becomes effective once the API server's policy informer has
    // compiled it; until then creations pass, so undo them and retry.
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match cms
            .create(
                &PostParams::default(),
                &configmap("labelled", &[(LABEL, "yes")]),
            )
            .await
        {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => {
                cms.delete("labelled", &DeleteParams::default()).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(_) => bail!("ValidatingAdmissionPolicy never took effect within 30s"),
        }
    };
    let kube::Error::Api(status) = &err else {
        bail!("expected an API rejection, got {err}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("denied by the smoke test")
            && status.message.contains("ValidatingAdmissionPolicy"),
        "{status:?}"
    );

    // Control: the same ConfigMap without the label is admitted.
    cms.create(
        &PostParams::default(),
        &configmap("unlabelled", &[("other", "x")]),
    )
    .await
    .context("an unlabelled configmap was rejected")?;
    Ok(())
}

async fn retry<F, Fut>(within: Duration, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
