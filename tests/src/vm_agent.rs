//! The real `kmm-agent` running inside a QEMU guest booting Debian's kernel, as
//! a node's agent: the harness plays the kubelet (it creates the Node object
//! with the guest's `uname -r` as kernelVersion), the guest reaches the API
//! server and the registry on the host at 10.0.2.2. Shared by the VM
//! end-to-end tests and the demo.
//!
//! A node reboot ([`AgentVm::reboot`]) is a new QEMU on the same 9p share: the
//! kernel starts empty with a new `boot_id`, the agent's state dir and image
//! cache (under `/host`) are kept, and the test can act in the guest (play udev)
//! before the agent starts again.

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

/// In-tree modules in the guest's own `/lib/modules` (with their dependencies),
/// for `modprobe` inside the guest, as udev runs it at boot: brd is also what the
/// tests package, so the image's module and the in-tree one share a name.
pub const GUEST_MODULES: [&str; 3] = ["loop", "dummy", "brd"];

/// A booted guest with the agent running for Node `node`.
pub struct AgentVm {
    /// The VM.
    pub vm: VmNode,
    /// Node name (also the NodeModulesConfig name).
    pub node: String,
    /// The guest's kernel.
    pub kernel: KernelArtifacts,
    /// The agent's `--state-dir` in the guest.
    pub state_dir: String,
    share: PathBuf,
    /// The share when this VM created it (removed on drop).
    _own_share: Option<tempfile::TempDir>,
    net: bool,
}

/// How [`AgentVm::start_with`] boots the node; the default is what [`AgentVm::start`] does.
#[derive(Debug, Clone)]
pub struct AgentVmOptions {
    /// Host directory shared as `/host`; `None`: a fresh temp dir owned by the VM.
    /// Passing the same directory to a second VM is a reboot that keeps what is on it.
    pub share: Option<PathBuf>,
    /// The agent's `--state-dir` in the guest; under `/host` it survives the VM.
    pub state_dir: String,
    /// Guest networking; without it nothing (API server, registry) can be reached.
    pub net: bool,
    /// Start the in-cluster agent once booted.
    pub start_agent: bool,
    /// (Re)create the Node object; `false` keeps the existing one, as a rebooted node does.
    pub create_node: bool,
}

impl Default for AgentVmOptions {
    fn default() -> Self {
        Self {
            share: None,
            state_dir: "/var/lib/kmm-agent".into(),
            net: true,
            start_agent: true,
            create_node: true,
        }
    }
}

/// The kernel and an initramfs with the agent in it, prepared once per process.
///
/// # Errors
/// Kernel fetch, cargo build or initramfs failures.
pub async fn prepare() -> Result<(KernelArtifacts, PathBuf)> {
    // Once: each call runs cargo, which waits for the build lock while other
    // builds run (a test booting three VMs waited minutes for it).
    static PREPARED: tokio::sync::OnceCell<(KernelArtifacts, PathBuf)> =
        tokio::sync::OnceCell::const_new();
    PREPARED.get_or_try_init(build_artifacts).await.cloned()
}

async fn build_artifacts() -> Result<(KernelArtifacts, PathBuf)> {
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
            modules: GUEST_MODULES.map(str::to_owned).to_vec(),
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
        Self::start_with(cp, client, node, labels, AgentVmOptions::default()).await
    }

    /// [`AgentVm::start`] with options (shared state dir, no network, no agent).
    ///
    /// # Errors
    /// Boot failures or an agent that does not get ready (with its log).
    pub async fn start_with(
        cp: &ControlPlane,
        client: &Client,
        node: &str,
        labels: &[(&str, &str)],
        options: AgentVmOptions,
    ) -> Result<Self> {
        let t = Instant::now();
        let (kernel, initramfs) = prepare().await?;
        let prepared = t.elapsed();
        if options.create_node {
            create_node(client, node, labels, &kernel.release).await?;
        }
        let (share, own_share) = match options.share {
            Some(dir) => (dir, None),
            None => {
                let tmp = tempfile::Builder::new().prefix("kmm-agent-vm-").tempdir()?;
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        let guest_kubeconfig = cp
            .kubeconfig_path()
            .parent()
            .context("kubeconfig has no parent dir")?
            .join("admin-guest.kubeconfig");
        std::fs::copy(&guest_kubeconfig, share.join("kubeconfig"))
            .with_context(|| format!("copying {}", guest_kubeconfig.display()))?;
        let mut opts = VmOptions::new(kernel.clone(), initramfs);
        opts.share = Some(share.clone());
        opts.net = options.net;
        let vm = VmNode::boot(opts).await?;
        let booted = t.elapsed();
        let me = Self {
            vm,
            node: node.to_string(),
            kernel,
            state_dir: options.state_dir,
            share,
            _own_share: own_share,
            net: options.net,
        };
        let agent = if options.start_agent {
            me.start_agent().await?;
            format!("agent ready {:.1?}", t.elapsed() - booted)
        } else {
            "agent not started".to_string()
        };
        println!(
            "[vm-agent {node}] prepared {prepared:.1?}, booted {:.1?}, {agent}",
            booted - prepared
        );
        Ok(me)
    }

    /// Reboots the node: the guest powers off (the agent dies with it, as on a
    /// reboot), a new QEMU boots the same kernel on the same share, with a new
    /// `boot_id` and only what the guest's boot loads in the kernel. The Node
    /// object is kept. With `start_agent`, the agent starts again and this returns
    /// once it is ready; without, the test can first act in the guest (e.g. load
    /// the in-tree module of the same name, as udev does) and then call
    /// [`Self::start_agent`].
    ///
    /// # Errors
    /// A state dir that would not survive (not under `/host`), boot or agent failures.
    pub async fn reboot(self, start_agent: bool) -> Result<Self> {
        if !self.state_dir.starts_with("/host/") {
            bail!(
                "the agent's state dir {} is not on the share: a reboot would lose it",
                self.state_dir
            );
        }
        let t = Instant::now();
        let (kernel, initramfs) = prepare().await?;
        let Self {
            vm,
            node,
            state_dir,
            share,
            _own_share,
            net,
            ..
        } = self;
        vm.shutdown().await?;
        let down = t.elapsed();
        let mut opts = VmOptions::new(kernel.clone(), initramfs);
        opts.share = Some(share.clone());
        opts.net = net;
        let me = Self {
            vm: VmNode::boot(opts).await?,
            node,
            kernel,
            state_dir,
            share,
            _own_share,
            net,
        };
        let booted = t.elapsed();
        let agent = if start_agent {
            me.start_agent().await?;
            format!("agent ready {:.1?}", t.elapsed() - booted)
        } else {
            "agent not started".to_string()
        };
        println!(
            "[vm-agent {}] reboot: down {down:.1?}, booted {:.1?}, {agent}",
            me.node,
            booted - down
        );
        Ok(me)
    }

    /// The guest kernel's `/proc/sys/kernel/random/boot_id` (new on every boot).
    ///
    /// # Errors
    /// Channel failures.
    pub async fn boot_id(&self) -> Result<String> {
        Ok(self
            .vm
            .run_ok("cat /proc/sys/kernel/random/boot_id")
            .await?
            .trim()
            .to_string())
    }

    /// `/sys/module/<module>/srcversion` in the guest; `None` when the module is
    /// not loaded or has no srcversion (see [`crate::vm::modinfo`]).
    ///
    /// # Errors
    /// Channel failures.
    pub async fn srcversion(&self, module: &str) -> Result<Option<String>> {
        self.read(&format!("/sys/module/{module}/srcversion")).await
    }

    /// The agent's state file as it is on the share (`None` if absent), read on
    /// the host; needs a state dir under `/host`.
    ///
    /// # Errors
    /// A state dir off the share, I/O errors.
    pub fn state_file(&self) -> Result<Option<String>> {
        let rel = self
            .state_dir
            .strip_prefix("/host/")
            .with_context(|| format!("state dir {} is not on the share", self.state_dir))?;
        match std::fs::read_to_string(self.share.join(rel).join("state.json")) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The value of metric `series` (e.g. `kmm_agent_load_duration_seconds_count`)
    /// of the agent in the guest, `None` if it has no such line.
    ///
    /// # Errors
    /// Channel failures or a metrics server that does not answer.
    pub async fn metric(&self, series: &str) -> Result<Option<f64>> {
        let text = self
            .vm
            .run_ok("wget -q -O - http://127.0.0.1:8081/metrics")
            .await?;
        Ok(crate::agent::metric_value(&text, series))
    }

    /// Waits until the guest's agent has run `passes` more reconcile passes
    /// (it resyncs every 5 s): what a test asserting that nothing happens
    /// waits for.
    ///
    /// # Errors
    /// On timeout (two minutes), with the agent's log.
    pub async fn wait_passes(&self, passes: u32) -> Result<()> {
        let series = "kmm_agent_reconciles_total";
        let start = self.metric(series).await?.unwrap_or(0.0);
        wait_for(Duration::from_secs(120), || async move {
            Ok(self.metric(series).await?.unwrap_or(0.0) >= start + f64::from(passes))
        })
        .await
        .with_context(|| {
            format!(
                "fewer than {passes} agent passes; log:\n{}",
                self.agent_log()
            )
        })
    }

    /// Starts (or restarts) the agent in the guest and waits for /readyz.
    ///
    /// # Errors
    /// If it does not get ready within two minutes.
    pub async fn start_agent(&self) -> Result<()> {
        // one log for every boot of the node: say which boot each start belongs to
        let script = format!(
            "echo \"--- kmm-agent start, boot_id $(cat /proc/sys/kernel/random/boot_id) ---\" \
             >> /host/agent.log\n\
             cd / && KUBECONFIG=/host/kubeconfig RUST_LOG=info,kube=warn \
             setsid /bin/kmm-agent --node-name {node} --state-dir {state_dir} \
             --firmware-dir /var/lib/firmware --set-firmware-class-path \
             --metrics-addr 127.0.0.1:8081 --resync-seconds 5 --verify-seconds 5 \
             >> /host/agent.log 2>&1 < /dev/null &\necho started",
            node = self.node,
            state_dir = self.state_dir
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
        std::fs::read_to_string(self.share.join("agent.log")).unwrap_or_default()
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
    push_package(req, repo, tag).await
}

/// Packages a copy of the kernel's `module` whose `srcversion` is `srcversion`
/// (see [`crate::vm::modinfo::with_srcversion`]; unsigned) and pushes it as
/// `repo:tag`: the kernel tells it apart from the in-tree module of the same
/// name by `/sys/module/<module>/srcversion`. The module must have no
/// dependencies. Returns the digest.
///
/// # Errors
/// An unknown module or one with dependencies, patching, packaging or push failures.
pub async fn push_module_with_srcversion(
    kernel: &KernelArtifacts,
    repo: &str,
    tag: &str,
    module: &str,
    srcversion: &str,
) -> Result<String> {
    let (ko, deps) = crate::vm::stage::module_file(kernel, module)?;
    if !deps.is_empty() {
        bail!("{module} depends on {deps:?}: only dependency-free modules are patched");
    }
    let original = std::fs::read(&ko).with_context(|| format!("reading {}", ko.display()))?;
    let patched = crate::vm::modinfo::with_srcversion(&original, srcversion)?;
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join(format!("{module}.ko"));
    std::fs::write(&file, patched)?;
    // libkmod must read the rewritten module as the kernel will
    let out = std::process::Command::new("modinfo")
        .args(["-F", "srcversion"])
        .arg(&file)
        .output()
        .context("running modinfo (package kmod)")?;
    let seen = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || seen.trim() != srcversion {
        bail!(
            "modinfo reads srcversion '{}' from the patched {module}.ko: {}",
            seen.trim(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut req = kmmctl::package::PackageRequest::new(&kernel.release);
    req.ko_files = vec![file];
    push_package(req, repo, tag).await
}

/// Runs `kmmctl`'s packaging for `req` and pushes the image to the local registry
/// as `repo:tag`; returns the digest.
async fn push_package(
    req: kmmctl::package::PackageRequest,
    repo: &str,
    tag: &str,
) -> Result<String> {
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
