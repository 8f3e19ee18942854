//! The agent's events are confined (ValidatingAdmissionPolicy
//! `kmm-agent-own-events` in deploy/base/rbac/agent-admission-policy.yaml):
//! with a REAL kmm-agent token bound to a Pod on node A, kube-runtime's
//! Recorder as the agent builds it (`Reporter { controller: "kmm-agent",
//! instance: A }`) may report on a Module and on node A, repeats included (a
//! patch of the series); reporting as node B, about node B or about any other
//! object, or as another controller, is refused.
//!
//! Needs the binaries from `bash hack/controlplane/build.sh`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Node, ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kmm_tests::cluster::create_node;
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::deploy::install_deploy;
use kmm_tests::identity::{expect_policy_denial, pod_on_node, sa_token};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde_json::json;

const SYSTEM_NS: &str = "kmm-system";
const POLICY: &str = "kmm-agent-own-events";

fn recorder(client: &Client, controller: &str, instance: &str) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: controller.into(),
            instance: Some(instance.into()),
        },
    )
}

fn event(reason: &str) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(format!("test {reason}")),
        action: "Reconcile".into(),
        secondary: None,
    }
}

fn module_ref(ns: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("kmm.sigs.x-k8s.io/v1beta1".into()),
        kind: Some("Module".into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

#[tokio::test]
async fn agent_may_only_report_events_as_its_node_about_modules_or_its_node() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_deploy(cp).await?;
    let ns = cp.temp_namespace("deploy-events").await?;
    let (a, b) = (format!("{}-a", ns.name()), format!("{}-b", ns.name()));
    let pod_name = format!("{}-agent", ns.name());
    let admin = cp.client();
    let result = checks(cp, &admin, ns.name(), &a, &b, &pod_name).await;

    let _ = Api::<Pod>::namespaced(admin.clone(), SYSTEM_NS)
        .delete(&pod_name, &DeleteParams::default().grace_period(0))
        .await;
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in [&a, &b] {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }
    // Events about the nodes land in `default`: remove this test's.
    let defaults: Api<K8sEvent> = Api::namespaced(admin, "default");
    if let Ok(list) = defaults.list(&ListParams::default()).await {
        for e in list.items {
            let about = e.regarding.as_ref().and_then(|r| r.name.as_deref());
            if about == Some(a.as_str()) || about == Some(b.as_str()) {
                let name = e.metadata.name.unwrap_or_default();
                let _ = defaults.delete(&name, &DeleteParams::default()).await;
            }
        }
    }
    ns.cleanup().await?;
    result
}

async fn checks(
    cp: &ControlPlane,
    admin: &Client,
    ns: &str,
    a: &str,
    b: &str,
    pod_name: &str,
) -> Result<()> {
    create_node(admin, a, &[], "6.1.0-test").await?;
    create_node(admin, b, &[], "6.1.0-test").await?;
    let pod = pod_on_node(admin, SYSTEM_NS, pod_name, a, "kmm-agent").await?;
    let agent =
        cp.client_with_token(&sa_token(admin, SYSTEM_NS, "kmm-agent", Some(&pod), &[]).await?)?;

    // As another node: refused. The policy may need a moment after the first
    // install; retry (each attempt is a new event) until it answers.
    let as_b = recorder(&agent, "kmm-agent", b);
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let r = as_b
            .publish(&event("AsOtherNode"), &module_ref(ns, "m"))
            .await;
        if r.is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        break r;
    };
    expect_policy_denial(
        refused,
        POLICY,
        "reportingController kmm-agent with reportingInstance its own Node",
    )?;

    // The agent's own recorder: a Module, twice (the repeat patches the
    // series), and its own Node.
    let own = recorder(&agent, "kmm-agent", a);
    for _ in 0..2 {
        own.publish(&event("ModuleLoaded"), &module_ref(ns, "m"))
            .await
            .context("the agent could not report on a Module as its own node")?;
    }
    own.publish(&event("NodeThing"), &node_ref(a))
        .await
        .context("the agent could not report on its own Node")?;
    // Upstream's ModuleLoaded: on its own Node (namespace default), with
    // `related` naming the Module of another namespace.
    let node_event = Event {
        secondary: Some(module_ref(ns, "m")),
        ..event("ModuleLoaded")
    };
    own.publish(&node_event, &node_ref(a))
        .await
        .context("the agent could not report on its own Node about a Module")?;
    let events: Api<K8sEvent> = Api::namespaced(admin.clone(), ns);
    let reported = events.list(&ListParams::default()).await?;
    let loaded = reported
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("ModuleLoaded"))
        .context("the Module event is missing")?;
    assert_eq!(loaded.reporting_instance.as_deref(), Some(a));
    assert_eq!(
        loaded.series.as_ref().map(|s| s.count),
        Some(2),
        "{loaded:?}"
    );

    // About another node, about an arbitrary object, as another controller.
    let about =
        "may only report events regarding a Module in the event's namespace or its own Node";
    expect_policy_denial(
        own.publish(&event("OtherNode"), &node_ref(b)).await,
        POLICY,
        about,
    )?;
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cm", "namespace": ns}}))?;
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await?;
    expect_policy_denial(
        own.publish(&event("Arbitrary"), &cm.object_ref(&())).await,
        POLICY,
        about,
    )?;
    expect_policy_denial(
        recorder(&agent, "kubelet", a)
            .publish(&event("Impersonated"), &module_ref(ns, "m"))
            .await,
        POLICY,
        "reportingController kmm-agent",
    )?;
    // A Module of another namespace, with the event put in this one.
    let mut foreign: K8sEvent = serde_json::from_value(json!({
        "metadata": {"name": "foreign", "namespace": ns},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "action": "Reconcile", "reason": "Foreign", "type": "Normal",
        "reportingController": "kmm-agent", "reportingInstance": a,
    }))?;
    foreign.regarding = Some(module_ref("kube-system", "m"));
    expect_policy_denial(
        Api::<K8sEvent>::namespaced(agent.clone(), ns)
            .create(&PostParams::default(), &foreign)
            .await,
        POLICY,
        about,
    )?;

    // A Module event whose `related` is a Module of another namespace.
    let related_foreign = Event {
        secondary: Some(module_ref("kube-system", "m")),
        ..event("RelatedForeign")
    };
    expect_policy_denial(
        own.publish(&related_foreign, &module_ref(ns, "m")).await,
        POLICY,
        about,
    )?;

    // A token not bound to a Pod names no node: refused.
    let unbound =
        cp.client_with_token(&sa_token(admin, SYSTEM_NS, "kmm-agent", None, &[]).await?)?;
    expect_policy_denial(
        recorder(&unbound, "kmm-agent", a)
            .publish(&event("Unbound"), &module_ref(ns, "m"))
            .await,
        POLICY,
        "no authentication.kubernetes.io/node-name",
    )?;
    Ok(())
}
