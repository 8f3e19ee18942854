//! The test fixtures clean up what a test made even when the test fails: a
//! Module whose finalizer nobody will remove (its controller died with the
//! test) must not stay "being deleted" in the shared API server, where the next
//! `make demo` or `kubectl get modules -A` would show it.
//!
//! Needs the control plane binaries (`bash hack/controlplane/build.sh`).

use std::time::Duration;

use anyhow::Result;
use kmm_common::Module;
use kmm_tests::cluster::{crd_namespace, wait_for};
use kmm_tests::module::ModuleBuilder;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

const FINALIZER: &str = "kmm.node.kubernetes.io/module-finalizer";

fn module_with_finalizer(name: &str) -> Result<Module> {
    ModuleBuilder::new(name)
        .mapping(".*", "127.0.0.1:5000/x/m:1")
        .merge(json!({"metadata": {"finalizers": [FINALIZER]}}))
        .module()
}

/// A test that panics drops its namespace without `cleanup()`; one that ends
/// calls it. Either way its Modules go, finalizer or not, and a Module already
/// being deleted (its controller gone mid-test) goes too.
#[tokio::test]
async fn modules_behind_a_finalizer_are_released_whether_the_test_ends_or_fails() -> Result<()> {
    let (_cp, client, dropped) = crd_namespace("fixture-dropped").await?;
    let (_cp, _, cleaned) = crd_namespace("fixture-cleaned").await?;
    let mut gone = Vec::new();
    for ns in [&dropped, &cleaned] {
        let api: Api<Module> = Api::namespaced(client.clone(), ns.name());
        api.create(&PostParams::default(), &module_with_finalizer("live")?)
            .await?;
        api.create(&PostParams::default(), &module_with_finalizer("deleting")?)
            .await?;
        api.delete("deleting", &DeleteParams::default()).await?;
        gone.push(api);
    }
    drop(dropped);
    cleaned.cleanup().await?;
    for api in &gone {
        wait_for(Duration::from_secs(60), || async {
            Ok(api.list(&Default::default()).await?.items.is_empty())
        })
        .await?;
    }
    Ok(())
}
