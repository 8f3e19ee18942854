//! In-cluster builds driven by the real `kmm-controller` against the real
//! API server, kube-controller-manager (the Job controller), the scheduler,
//! kwok's fake kubelets (Job pods run and succeed) and the real registry.
//! The builder itself is played by the test: when a build Job appears it
//! pushes what kaniko would (the VM test `vm_build_e2e` runs the recipe for
//! real with buildah).
#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kmm_common::Module;
use kmm_controller::build::job::{KERNEL_ANNOTATION, TARGET_IMAGE_ANNOTATION};
use kmm_tests::cluster::{
    crd_namespace, create_node, delete_node_and_status, finish_job, wait_for,
};
use kmm_tests::controller::{ControllerOptions, ControllerProcess};
use kmm_tests::controlplane::{ControlPlane, TestNamespace};
use kmm_tests::images::{push_fake_kmod, registry_addr};
use kmm_tests::kwok::Kwok;
use kmm_tests::module::ModuleBuilder;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

struct Fixture {
    cp: &'static ControlPlane,
    client: Client,
    ns: TestNamespace,
    nodes: Vec<String>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(prefix: &str) -> Result<Self> {
        let (cp, client, ns) = crd_namespace(prefix).await?;
        let f = Self {
            cp,
            client,
            ns,
            nodes: Vec::new(),
            dir: tempfile::tempdir()?,
        };
        f.dockerfile("FROM scratch\n").await?;
        Ok(f)
    }

    fn ns(&self) -> &str {
        self.ns.name()
    }

    fn sel(&self) -> String {
        format!("kmm-test/{}", self.ns())
    }

    fn controller(&self, identity: &str) -> Result<ControllerProcess> {
        ControllerProcess::start(&ControllerOptions::fast_lease_replica(
            self.cp,
            self.ns(),
            self.dir.path(),
            identity,
            // Resyncs every second: "nothing more happens" is then checked
            // over counted reconciles, not a sleep.
            &["--resync-seconds", "1"],
        ))
    }

    /// A fake Node run by kwok (Job pods scheduled there run and succeed).
    async fn fake_node(&mut self, suffix: &str, kernel: &str) -> Result<String> {
        let name = format!("{}-{suffix}", self.ns());
        let sel = self.sel();
        Kwok::shared()
            .await?
            .create_fake_node(&self.client, &name, kernel, &[(sel.as_str(), "yes")])
            .await?;
        self.nodes.push(name.clone());
        Ok(name)
    }

    /// A Node nobody runs: Job pods stay Pending there.
    async fn plain_node(&mut self, suffix: &str, kernel: &str) -> Result<String> {
        let name = format!("{}-{suffix}", self.ns());
        let sel = self.sel();
        create_node(&self.client, &name, &[(sel.as_str(), "yes")], kernel).await?;
        self.nodes.push(name.clone());
        Ok(name)
    }

    async fn dockerfile(&self, content: &str) -> Result<()> {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kmod-dockerfile"},
            "data": {"dockerfile": content},
        }))?;
        Api::<ConfigMap>::namespaced(self.client.clone(), self.ns())
            .patch(
                "kmod-dockerfile",
                &PatchParams::apply("kmm-test").force(),
                &Patch::Apply(&cm),
            )
            .await?;
        Ok(())
    }

    fn image_repo(&self) -> String {
        format!("{}/{}/kmod", registry_addr(), self.ns())
    }

    /// Module `kmod`, built in-cluster from `kmod-dockerfile` for this test's
    /// fake nodes (their taint tolerated).
    fn module_yaml(&self, spec: serde_json::Value) -> String {
        ModuleBuilder::new("kmod")
            .selector(&self.sel(), "yes")
            .tolerations(json!([kmm_tests::kwok::toleration()]))
            .push_mapping(json!({
                "regexp": "^.+-build-amd64$",
                "containerImage": format!("{}:${{KERNEL_FULL_VERSION}}", self.image_repo()),
                "registryTLS": {"insecure": true},
                "build": {"dockerfileConfigMap": {"name": "kmod-dockerfile"}},
            }))
            .merge(json!({ "spec": spec }))
            .manifest()
    }

    /// A leading controller, one Node without kubelet on `kernel` (Job pods
    /// stay Pending: the test decides how the Job ends), the Module, and the
    /// one build Job it created.
    async fn one_pending_build(&mut self, kernel: &str) -> Result<(ControllerProcess, Job)> {
        let ctl = self.controller("a")?;
        ctl.wait_leader(WAIT).await?;
        self.plain_node("n1", kernel).await?;
        self.apply(&self.module_yaml(json!({}))).await?;
        wait_for(WAIT, || async {
            Ok(self.jobs().list(&ListParams::default()).await?.items.len() == 1)
        })
        .await
        .with_context(|| ctl.log())?;
        let job = self
            .jobs()
            .list(&ListParams::default())
            .await?
            .items
            .remove(0);
        Ok((ctl, job))
    }

    async fn apply(&self, yaml: &str) -> Result<()> {
        kmm_tests::cluster::apply_yaml(self.cp, self.ns(), yaml)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    async fn job_names(&self) -> Result<Vec<String>> {
        Ok(self
            .jobs()
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect())
    }

    async fn module(&self) -> Result<Module> {
        Ok(Api::<Module>::namespaced(self.client.clone(), self.ns())
            .get("kmod")
            .await?)
    }

    async fn condition(&self, type_: &str) -> Result<Option<(String, String, String)>> {
        Ok(self
            .module()
            .await?
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == type_))
            .map(|c| (c.status, c.reason, c.message)))
    }

    async fn finish(self) -> Result<()> {
        for n in &self.nodes {
            delete_node_and_status(&self.client, n).await;
        }
        self.ns.cleanup().await
    }
}

/// Every build Job ever seen in `ns` (uid → kernel), even ones created and
/// collected between two polls; plays the builder by pushing the target image
/// of each new Job.
fn observe_and_build(client: Client, ns: &str) -> Arc<Mutex<BTreeMap<String, String>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let out = seen.clone();
    let api: Api<Job> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(job)) = stream.next().await {
            let uid = job.uid().unwrap_or_default();
            let kernel = job.annotations().get(KERNEL_ANNOTATION).cloned();
            let target = job.annotations().get(TARGET_IMAGE_ANNOTATION).cloned();
            let first = seen
                .lock()
                .unwrap()
                .insert(uid, kernel.clone().unwrap_or_default())
                .is_none();
            if let (true, Some(kernel), Some(target)) = (first, kernel, target)
                && let Err(e) = push_fake_kmod(&target, &kernel, &[("kmod", &[])], &[]).await
            {
                eprintln!("builder: pushing {target}: {e:#}");
            }
        }
    });
    out
}

async fn events_with_reason(client: &Client, ns: &str, reason: &str) -> Result<Vec<Event>> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect())
}

#[tokio::test]
async fn a_succeeded_build_is_reported_once_like_upstream() -> Result<()> {
    let mut f = Fixture::new("ctl-build-ok").await?;
    let (ctl, job) = f.one_pending_build("6.1.0-95-build-amd64").await?;
    let kernel = job.annotations()[KERNEL_ANNOTATION].clone();
    let target = job.annotations()[TARGET_IMAGE_ANNOTATION].clone();
    // The Job completes first: with the image already there the controller
    // could collect the Job before the test marks it (that path, a running
    // Job whose image exists, is plan::succeeded_jobs's unit test).
    finish_job(&f.jobs(), &job.name_any(), true).await?;
    push_fake_kmod(&target, &kernel, &[("kmod", &[])], &[]).await?;

    wait_for(WAIT, || async {
        Ok(!events_with_reason(&f.client, f.ns(), "BuildSucceeded")
            .await?
            .is_empty())
    })
    .await
    .with_context(|| ctl.log())?;
    // Over several more reconciles (the Job collected meanwhile), still one
    // event, never repeated.
    ctl.wait_reconciles(3, WAIT).await?;
    let events = events_with_reason(&f.client, f.ns(), "BuildSucceeded").await?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].series.is_none(),
        "reported again: {:?}",
        events[0].series
    );
    let note = events[0].note.clone().unwrap_or_default();
    assert!(
        note.contains(&job.name_any()) && note.contains(&kernel),
        "{note}"
    );
    wait_for(WAIT, || async {
        Ok(f.condition("ImagesReady")
            .await?
            .is_some_and(|(s, _, _)| s == "True"))
    })
    .await
    .with_context(|| ctl.log())?;
    f.finish().await
}

#[tokio::test]
async fn killing_the_leader_mid_rollout_builds_nothing_twice() -> Result<()> {
    let mut f = Fixture::new("ctl-build-ha").await?;
    let seen = observe_and_build(f.client.clone(), f.ns());
    let mut a = f.controller("a")?;
    a.wait_leader(WAIT).await?;
    let b = f.controller("b")?;
    b.wait_ready(WAIT).await?;

    f.fake_node("n1", "6.1.0-91-build-amd64").await?;
    f.fake_node("n2", "6.1.0-92-build-amd64").await?;
    f.apply(&f.module_yaml(json!({}))).await?;
    // The leader has started the rollout: at least one build Job exists.
    wait_for(WAIT, || async { Ok(!seen.lock().unwrap().is_empty()) })
        .await
        .with_context(|| a.log())?;
    let created_by_a = a.metric("kmm_controller_jobs_created_total{kind=\"build\"}");
    a.kill();
    // A third kernel appears while nobody leads.
    f.fake_node("n3", "6.1.0-93-build-amd64").await?;
    b.wait_leader(WAIT).await?;

    // The new leader finishes: every image built, every Job collected.
    wait_for(WAIT, || async {
        let ready = f.condition("ImagesReady").await?;
        let left = f.jobs().list(&ListParams::default()).await?.items.len();
        Ok(ready.is_some_and(|(s, _, _)| s == "True") && left == 0)
    })
    .await
    .with_context(|| {
        format!(
            "a:\n{}\nb:\n{}\nkwok:\n{}",
            a.log(),
            b.log(),
            seen.lock().unwrap().len()
        )
    })?;
    let kernels: Vec<String> = seen.lock().unwrap().values().cloned().collect();
    let distinct: BTreeSet<&String> = kernels.iter().collect();
    assert_eq!(
        kernels.len(),
        3,
        "one build Job per kernel, none twice: {kernels:?}\nb:\n{}",
        b.log()
    );
    assert_eq!(distinct.len(), 3, "{kernels:?}");
    let created_by_b = b.metric("kmm_controller_jobs_created_total{kind=\"build\"}");
    assert_eq!(
        created_by_a + created_by_b,
        3.0,
        "a {created_by_a}, b {created_by_b}"
    );
    f.finish().await
}

#[tokio::test]
async fn a_failed_build_is_kept_and_reported_until_its_input_changes() -> Result<()> {
    let mut f = Fixture::new("ctl-build-fail").await?;
    let (ctl, first) = f.one_pending_build("6.1.0-94-build-amd64").await?;
    // The reconcile that created the Job writes the status after it.
    wait_for(WAIT, || async {
        Ok(f.condition("ImagesReady")
            .await?
            .is_some_and(|(s, r, _)| s == "False" && r == "Building"))
    })
    .await
    .with_context(|| ctl.log())?;

    finish_job(&f.jobs(), &first.name_any(), false).await?;
    wait_for(WAIT, || async {
        Ok(f.condition("ImagesReady")
            .await?
            .is_some_and(|(_, r, _)| r == "BuildFailed"))
    })
    .await
    .with_context(|| ctl.log())?;
    let (_, _, message) = f.condition("ImagesReady").await?.unwrap();
    assert!(
        message.contains(&first.name_any()) && message.contains("BackoffLimitExceeded"),
        "{message}"
    );
    let degraded = f.condition("Degraded").await?.unwrap();
    assert_eq!(
        (degraded.0.as_str(), degraded.1.as_str()),
        ("True", "BuildFailed")
    );
    let events: Api<Event> = Api::namespaced(f.client.clone(), f.ns());
    wait_for(WAIT, || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("BuildFailed")))
    })
    .await?;
    // Kept, not retried, over further reconciles (a degraded Module is
    // requeued every 30 s; the Job's own events wake it too).
    ctl.wait_reconciles(2, 2 * WAIT).await?;
    assert_eq!(f.job_names().await?, [first.name_any()]);

    // A fixed Dockerfile is a new input: a new Job, the failed one collected.
    f.dockerfile("FROM scratch\nLABEL fixed=yes\n").await?;
    wait_for(WAIT, || async {
        let names = f.job_names().await?;
        Ok(names.len() == 1 && names[0] != first.name_any())
    })
    .await
    .with_context(|| ctl.log())?;
    f.finish().await
}

#[tokio::test]
async fn image_rebuild_trigger_generation_rebuilds_an_existing_image_once() -> Result<()> {
    let mut f = Fixture::new("ctl-build-trigger").await?;
    let kernel = "6.1.0-95-build-amd64";
    let image = format!("{}:{kernel}", f.image_repo());
    push_fake_kmod(&image, kernel, &[("kmod", &[])], &[]).await?;
    let seen = observe_and_build(f.client.clone(), f.ns());
    let ctl = f.controller("a")?;
    ctl.wait_leader(WAIT).await?;
    f.fake_node("n1", kernel).await?;
    f.apply(&f.module_yaml(json!({}))).await?;
    wait_for(WAIT, || async {
        Ok(f.condition("ImagesReady")
            .await?
            .is_some_and(|(s, r, _)| s == "True" && r == "AllImagesPresent"))
    })
    .await
    .with_context(|| ctl.log())?;
    assert!(
        seen.lock().unwrap().is_empty(),
        "the image exists: no build"
    );

    f.apply(&f.module_yaml(json!({"imageRebuildTriggerGeneration": 1})))
        .await?;
    wait_for(WAIT, || async {
        let m = f.module().await?;
        let recorded = m.status.and_then(|s| s.image_rebuild_trigger_generation);
        let left = f.jobs().list(&ListParams::default()).await?.items.len();
        Ok(recorded == Some(1) && left == 0)
    })
    .await
    .with_context(|| ctl.log())?;
    assert_eq!(seen.lock().unwrap().len(), 1, "rebuilt once");
    // Recorded: later reconciles build nothing more.
    ctl.wait_reconciles(3, WAIT).await?;
    assert_eq!(seen.lock().unwrap().len(), 1);
    f.finish().await
}

/// `finish_job` plays the Job controller's terminal status even before the
/// Job controller has seen the Job (CI hit that race: a finished Job without
/// `startTime` is refused). A suspended Job never gets `startTime` from the
/// Job controller, which pins the race open.
#[tokio::test]
async fn finishing_a_job_the_job_controller_has_not_started_is_accepted() -> Result<()> {
    let f = Fixture::new("ctl-build-fin").await?;
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "never-started"},
        "spec": {"suspend": true, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "registry.invalid/none"}],
        }}},
    }))?;
    let jobs = f.jobs();
    jobs.create(&Default::default(), &job).await?;
    finish_job(&jobs, "never-started", true).await?;
    let status = jobs.get_status("never-started").await?.status.unwrap();
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    f.finish().await
}
