//! The real `kmm-agent` running inside a QEMU guest booting Debian's kernel, as
//! a node's agent: the harness plays the kubelet (it creates the Node object
//! with the guest's `uname -r` as kernelVersion), the guest reaches the API
//! server and the registry on the host at 10.0.2.2. Shared by the VM
//! end-to-end tests and the demo.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Client;

use crate::agent::agent_binary;
use crate::cluster::{create_node, wait_for};
use crate::controlplane::ControlPlane;
use crate::vm::{InitramfsSpec, KernelArtifacts, VmNode, VmOptions};

/// Registry address as the guest sees it.
pub fn guest_registry() -> String {
    format!(
        "10.0.2.2:{}",
        std::env::var("KMM_REGISTRY_PORT").unwrap_or_else(|_| "5000".into())
    )
}

/// A booted guest with the agent running for Node `node`.
pub struct AgentVm {
    /// The VM.
    pub vm: VmNode,
    /// Node name (also the NodeModulesConfig name).
    pub node: String,
    /// The guest's kernel.
    pub kernel: KernelArtifacts,
    share: tempfile::TempDir,
}

/// The kernel and an initramfs with the agent in it, prepared once per process.
///
/// # Errors
/// Kernel fetch, cargo build or initramfs failures.
pub async fn prepare() -> Result<(KernelArtifacts, PathBuf)> {
    tokio::task::spawn_blocking(|| -> Result<(KernelArtifacts, PathBuf)> {
        let kernel = KernelArtifacts::fetch()?;
        let agent = agent_binary()?;
        // A node's agent image carries CA certificates; the registry client
        // refuses to start without any.
        let extra = crate::vm::artifacts::cache_dir().join("agent-initramfs-extra");
        let certs = extra.join("etc/ssl/certs");
        std::fs::create_dir_all(&certs)?;
        std::fs::copy(
            "/etc/ssl/certs/ca-certificates.crt",
            certs.join("ca-certificates.crt"),
        )
        .context("copying the host's CA bundle (package ca-certificates)")?;
        let initramfs = InitramfsSpec {
            binaries: vec![agent],
            extra_dir: Some(extra),
            ..InitramfsSpec::default()
        }
        .build(&kernel)?;
        Ok((kernel, initramfs))
    })
    .await?
}

impl AgentVm {
    /// Creates the Node object `node` (labels, kernelVersion = the guest's kernel),
    /// boots the guest and starts the agent in it; returns once the agent is ready.
    ///
    /// # Errors
    /// Boot failures or an agent that does not get ready (with its log).
    pub async fn start(
        cp: &ControlPlane,
        client: &Client,
        node: &str,
        labels: &[(&str, &str)],
    ) -> Result<Self> {
        let t = Instant::now();
        let (kernel, initramfs) = prepare().await?;
        let prepared = t.elapsed();
        create_node(client, node, labels, &kernel.release).await?;
        let share = tempfile::Builder::new().prefix("kmm-agent-vm-").tempdir()?;
        let guest_kubeconfig = cp
            .kubeconfig_path()
            .parent()
            .context("kubeconfig has no parent dir")?
            .join("admin-guest.kubeconfig");
        std::fs::copy(&guest_kubeconfig, share.path().join("kubeconfig"))
            .with_context(|| format!("copying {}", guest_kubeconfig.display()))?;
        let mut opts = VmOptions::new(kernel.clone(), initramfs);
        opts.share = Some(share.path().to_path_buf());
        let vm = VmNode::boot(opts).await?;
        let booted = t.elapsed();
        let me = Self {
            vm,
            node: node.to_string(),
            kernel,
            share,
        };
        me.start_agent().await?;
        println!(
            "[vm-agent {node}] prepared {prepared:.1?}, booted {:.1?}, agent ready {:.1?}",
            booted - prepared,
            t.elapsed() - booted
        );
        Ok(me)
    }

    /// Starts (or restarts) the agent in the guest and waits for /readyz.
    ///
    /// # Errors
    /// If it does not get ready within two minutes.
    pub async fn start_agent(&self) -> Result<()> {
        let script = format!(
            "cd / && KUBECONFIG=/host/kubeconfig RUST_LOG=info,kube=warn \
             setsid /bin/kmm-agent --node-name {node} --state-dir /var/lib/kmm-agent \
             --firmware-dir /var/lib/firmware --set-firmware-class-path \
             --metrics-addr 127.0.0.1:8081 --resync-seconds 5 --verify-seconds 5 \
             >> /host/agent.log 2>&1 < /dev/null &\necho started",
            node = self.node
        );
        self.vm.run_ok(&script).await?;
        let vm = &self.vm;
        wait_for(Duration::from_secs(120), || async move {
            let out = vm
                .run("wget -q -O - http://127.0.0.1:8081/readyz 2>/dev/null || true")
                .await?;
            Ok(out.output.trim() == "ready")
        })
        .await
        .with_context(|| {
            format!(
                "agent in the VM did not get ready; log:\n{}",
                self.agent_log()
            )
        })
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.share.path().join("agent.log")).unwrap_or_default()
    }

    /// Reads a file in the guest (trimmed), or `None` if it does not exist.
    ///
    /// # Errors
    /// Channel failures.
    pub async fn read(&self, path: &str) -> Result<Option<String>> {
        let out = self.vm.run(&format!("cat {path}")).await?;
        Ok((out.rc == 0).then(|| out.output.trim().to_string()))
    }

    /// Whether `module` is in the guest kernel (`/sys/module/<name>` exists and is live,
    /// or built in).
    ///
    /// # Errors
    /// Channel failures.
    pub async fn module_loaded(&self, module: &str) -> Result<bool> {
        let out = self
            .vm
            .run(&format!("test -d /sys/module/{module}"))
            .await?;
        Ok(out.rc == 0)
    }

    /// Stops QEMU; on an error the agent log is printed first.
    ///
    /// # Errors
    /// Shutdown failures.
    pub async fn shutdown(self) -> Result<()> {
        self.vm.shutdown().await
    }

    /// Fails with the agent log attached.
    ///
    /// # Errors
    /// Always.
    pub fn fail<T>(&self, what: impl std::fmt::Display) -> Result<T> {
        bail!("{what}\n--- agent log ---\n{}", self.agent_log())
    }
}

/// Packages `modules` (with dependencies) from the guest kernel's tree with
/// `kmmctl`'s code and pushes them to the local registry as `repo:tag`
/// (`127.0.0.1:<port>/...`). `firmware`: `(dest, bytes)` files under `/firmware`.
/// Returns the digest.
///
/// # Errors
/// Packaging or push failures.
pub async fn push_kernel_modules(
    kernel: &KernelArtifacts,
    repo: &str,
    tag: &str,
    modules: &[&str],
    firmware: &[(&str, &[u8])],
) -> Result<String> {
    let tmp = tempfile::tempdir()?;
    let mut req = kmmctl::package::PackageRequest::new(&kernel.release);
    req.module_tree = Some(kernel.root.clone());
    req.module_names = modules.iter().map(|m| (*m).to_string()).collect();
    for (dest, body) in firmware {
        let src = tmp.path().join(dest.replace('/', "_"));
        std::fs::write(&src, body)?;
        req.firmware.push(kmmctl::package::FirmwareInput {
            source: src,
            dest: Some((*dest).to_string()),
        });
    }
    let packaged = tokio::task::spawn_blocking(move || -> Result<_> {
        let depmod = kmmctl::depmod::Depmod::find()?;
        Ok(kmmctl::package::package(&req, &depmod)?)
    })
    .await??;
    let reference = kmmctl::registry::parse_reference(
        &format!("{}/{repo}:{tag}", crate::images::registry_addr()),
        "latest",
    )?;
    let opts = kmmctl::registry::RegistryOptions {
        insecure: true,
        ..Default::default()
    };
    Ok(kmmctl::registry::push(&packaged.image, &reference, &opts).await?)
}
