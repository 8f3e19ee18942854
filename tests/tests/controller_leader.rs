//! Leader election between real `kmm-controller` processes sharing one Lease on
//! the real API server: only the leader reconciles; a SIGKILLed leader is
//! replaced once its Lease expires; a SIGTERMed leader releases it at once.
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use kmm_common::{MODULE_FINALIZER, Module};
use kmm_tests::cluster::{ensure_crds, wait_for};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::module::ModuleBuilder;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

const LEASE: &str = "kmm-controller-leader";

/// A Module no node matches: only the controller acts on it.
fn module_yaml(name: &str) -> String {
    ModuleBuilder::new(name)
        .selector("kmm-test/no-such-node", "yes")
        .mapping("^.+$", &format!("registry.example/kmm/{name}:v1"))
        .manifest()
}

async fn holder(client: &Client, ns: &str) -> Result<(Option<String>, i32)> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let spec = leases.get(LEASE).await?.spec.unwrap_or_default();
    Ok((spec.holder_identity, spec.lease_transitions.unwrap_or(0)))
}

async fn has_finalizer(client: &Client, ns: &str, name: &str) -> Result<bool> {
    let api: Api<Module> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await?
        .is_some_and(|m| m.finalizers().iter().any(|f| f == MODULE_FINALIZER)))
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies_or_steps_down() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    ensure_crds(cp).await?;
    let client = cp.client();
    let ns = cp.temp_namespace("ctl-leader").await?;
    let dir = tempfile::tempdir()?;
    let opts = |id: &str| ControllerOptions {
        kubeconfig: cp.kubeconfig_path().to_path_buf(),
        namespace: ns.name().to_string(),
        identity: id.to_string(),
        log_dir: dir.path().to_path_buf(),
        // The defaults: 15 s lease, renewed every 5 s.
        extra_args: vec![],
    };
    let apply = |yaml: String| {
        let out = cp
            .kubectl_with_stdin(["apply", "-n", ns.name(), "-f", "-"], &yaml)
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    let mut a = ControllerProcess::start(&opts("replica-a"))?;
    a.wait_leader(Duration::from_secs(60)).await?;
    let mut b = ControllerProcess::start(&opts("replica-b"))?;
    b.wait_ready(Duration::from_secs(60)).await?;
    let (h, transitions) = holder(&client, ns.name()).await?;
    assert_eq!(h.as_deref(), Some("replica-a"));

    // Only the leader reconciles.
    apply(module_yaml("one"));
    wait_for(Duration::from_secs(30), || {
        has_finalizer(&client, ns.name(), "one")
    })
    .await
    .with_context(|| a.log())?;
    assert!(a.metric("kmm_controller_reconciles_total") >= 1.0);
    // b has been standing by for a full lease duration without taking over.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(!b.is_leader(), "standby claims leadership:\n{}", b.log());
    assert_eq!(b.metric("kmm_controller_reconciles_total"), 0.0);
    assert_eq!(
        holder(&client, ns.name()).await?.0.as_deref(),
        Some("replica-a")
    );

    // SIGKILL: no release; b takes over after the lease expires.
    let killed = Instant::now();
    a.kill();
    b.wait_leader(Duration::from_secs(40)).await?;
    let took = killed.elapsed();
    let (h, t2) = holder(&client, ns.name()).await?;
    assert_eq!(h.as_deref(), Some("replica-b"));
    assert_eq!(t2, transitions + 1);
    eprintln!("takeover after SIGKILL: {took:?}");
    assert!(took <= Duration::from_secs(30), "takeover took {took:?}");
    apply(module_yaml("two"));
    wait_for(Duration::from_secs(30), || {
        has_finalizer(&client, ns.name(), "two")
    })
    .await
    .with_context(|| b.log())?;

    // SIGTERM: b releases the Lease, c takes over well before a lease duration.
    let c = ControllerProcess::start(&opts("replica-c"))?;
    c.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!c.is_leader());
    let stopped = Instant::now();
    b.terminate()?;
    c.wait_leader(Duration::from_secs(30)).await?;
    let took = stopped.elapsed();
    eprintln!("takeover after SIGTERM: {took:?}");
    assert!(took < Duration::from_secs(12), "takeover took {took:?}");
    assert!(b.log().contains("releasing the lease"), "{}", b.log());
    assert_eq!(
        holder(&client, ns.name()).await?.0.as_deref(),
        Some("replica-c")
    );

    // Let the namespace go: drop the finalizers (nothing is loaded anywhere).
    let api: Api<Module> = Api::namespaced(client.clone(), ns.name());
    for m in api.list(&ListParams::default()).await? {
        let patch = serde_json::json!({ "metadata": { "finalizers": null } });
        api.patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    }
    drop(c);
    ns.cleanup().await
}
