//! `kmm-agent`: one per node. Watches Modules and its own Node, pulls kmod
//! images, loads and unloads kernel modules, and reports what it did.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kmm_agent::credentials::PullSecretsArgs;
use kmm_agent::image::ImageCache;
use kmm_agent::kernel::{Kernel, LibKmod};
use kmm_agent::metrics::Metrics;
use kmm_agent::reconciler::{self, Context, Settings};
use kmm_agent::server::{self, Readiness};
use kmm_agent::sim_persist::PersistentSimulatedKernel;
use kmm_agent::state::StateFile;

/// Which kernel implementation loads modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KernelKind {
    /// The running kernel, through libkmod.
    Libkmod,
    /// An in-memory kernel, for scale and fault tests only: nothing reaches a real kernel.
    Simulated,
}

#[derive(Debug, Parser)]
#[command(
    name = "kmm-agent",
    version,
    about = "kmm-rs node agent: loads kernel modules from kmod images",
    after_help = "Boot mode (at node boot, before the kubelet, no network): kmm-agent boot --help"
)]
struct Args {
    /// Name of the Node this agent runs on (downward API `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    /// Directory for the state file and the image cache.
    #[arg(long, env = "KMM_STATE_DIR", default_value = "/var/lib/kmm-agent")]
    state_dir: PathBuf,

    /// Host directory firmware files are copied into.
    #[arg(long, env = "KMM_FIRMWARE_DIR", default_value = "/var/lib/firmware")]
    firmware_dir: PathBuf,

    /// Also point /sys/module/firmware_class/parameters/path at --firmware-dir
    /// (upstream's `worker.setFirmwareClassPath`).
    #[arg(long, env = "KMM_SET_FIRMWARE_CLASS_PATH", default_value_t = false)]
    set_firmware_class_path: bool,

    /// Kernel implementation.
    #[arg(long, env = "KMM_KERNEL", value_enum, default_value_t = KernelKind::Libkmod)]
    kernel: KernelKind,

    /// Kernel release to act for; defaults to `uname -r`. Only meaningful with
    /// `--kernel simulated` (a real kernel is what it is).
    #[arg(long, env = "KMM_KERNEL_RELEASE")]
    kernel_release: Option<String>,

    /// Milliseconds every simulated insert takes (to kill the agent mid-load in
    /// tests). Only with `--kernel simulated`.
    #[arg(long, env = "KMM_SIM_LOAD_DELAY_MS", default_value_t = 0)]
    sim_load_delay_ms: u64,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "KMM_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: SocketAddr,

    /// Seconds between full passes over all Modules.
    #[arg(long, env = "KMM_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,

    /// Seconds between digest checks of images with `imagePullPolicy: Always`.
    #[arg(long, env = "KMM_VERIFY_SECONDS", default_value_t = 300)]
    verify_seconds: u64,

    /// Image cache size limit in MiB; unused images are removed beyond it.
    #[arg(long, env = "KMM_CACHE_LIMIT_MIB", default_value_t = 4096)]
    cache_limit_mib: u64,

    /// Log as JSON.
    #[arg(long, env = "KMM_LOG_JSON", default_value_t = false)]
    log_json: bool,

    #[command(flatten)]
    pull_secrets: PullSecretsArgs,
}

/// `kmm-agent boot`: loads again, from the local image cache, what the state file
/// records for the running kernel. No Node, API server or network, hence its own parser.
#[derive(Debug, Parser)]
#[command(
    name = "kmm-agent boot",
    version,
    about = "Loads the modules recorded in the state file for the running kernel, from the local image cache, without network"
)]
struct BootArgs {
    /// Directory of the state file and the image cache (the agent's --state-dir).
    #[arg(long, env = "KMM_STATE_DIR", default_value = "/var/lib/kmm-agent")]
    state_dir: PathBuf,

    /// Host directory firmware files are copied into.
    #[arg(long, env = "KMM_FIRMWARE_DIR", default_value = "/var/lib/firmware")]
    firmware_dir: PathBuf,

    /// Also point /sys/module/firmware_class/parameters/path at --firmware-dir.
    #[arg(long, env = "KMM_SET_FIRMWARE_CLASS_PATH", default_value_t = false)]
    set_firmware_class_path: bool,

    /// Log as JSON.
    #[arg(long, env = "KMM_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

fn boot(args: BootArgs) -> anyhow::Result<()> {
    kmm_runtime::init_tracing(args.log_json);
    let running = running_release()?;
    let kernel = LibKmod::new().context("initialising libkmod")?;
    let settings = kmm_agent::boot::BootSettings {
        firmware_dir: args.firmware_dir,
        set_firmware_class_path: args.set_firmware_class_path,
        firmware_class_path: kmm_agent::kernel::firmware::FIRMWARE_CLASS_PATH.into(),
    };
    let state = StateFile::in_dir(&args.state_dir);
    let report = kmm_agent::boot::run(&state, &running, &kernel, &settings)?;
    // The summary goes to the journal either way; a failure also fails the unit.
    anyhow::ensure!(report.success(), "boot: {}", report.summary());
    tracing::info!(kernel = %running, "boot: {}", report.summary());
    Ok(())
}

fn running_release() -> anyhow::Result<String> {
    let uts = nix::sys::utsname::uname().context("uname")?;
    Ok(uts.release().to_string_lossy().into_owned())
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT. Stopping never unloads:
/// the modules stay for the next agent (or the boot path) to adopt.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "boot") {
        let argv = std::iter::once("kmm-agent boot".into()).chain(std::env::args_os().skip(2));
        return boot(BootArgs::parse_from(argv));
    }
    let Args {
        node_name,
        state_dir,
        firmware_dir,
        set_firmware_class_path,
        kernel,
        kernel_release,
        sim_load_delay_ms,
        metrics_addr,
        resync_seconds,
        verify_seconds,
        cache_limit_mib,
        log_json,
        pull_secrets,
    } = Args::parse();
    kmm_runtime::init_tracing(log_json);

    let (kernel, kernel_release): (Arc<dyn Kernel>, String) = match kernel {
        KernelKind::Libkmod => {
            let running = running_release()?;
            if let Some(flag) = kernel_release.filter(|k| *k != running) {
                anyhow::bail!(
                    "--kernel-release {flag} differs from the running kernel {running}; it only applies to --kernel simulated"
                );
            }
            anyhow::ensure!(
                sim_load_delay_ms == 0,
                "--sim-load-delay-ms (KMM_SIM_LOAD_DELAY_MS) only applies to --kernel simulated"
            );
            (
                Arc::new(LibKmod::new().context("initialising libkmod")?),
                running,
            )
        }
        KernelKind::Simulated => {
            tracing::warn!(
                "simulated kernel: no module reaches a real kernel (scale and fault tests only)"
            );
            let release = match kernel_release {
                Some(k) => k,
                None => running_release()?,
            };
            let snapshot = state_dir.join("simulated-kernel.json");
            std::fs::create_dir_all(&state_dir)?;
            let sim = PersistentSimulatedKernel::open(&snapshot)
                .with_context(|| format!("opening {}", snapshot.display()))?;
            sim.set_load_delay(Duration::from_millis(sim_load_delay_ms));
            (Arc::new(sim), release)
        }
    };

    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    // Built here so that bad flags fail at start.
    // TODO(lead): hand it to the executor's pull (kmm_agent::credentials::PullSecrets)
    // instead of its direct Secret read.
    let _pull_secrets = pull_secrets
        .build(client.clone())
        .context("pull-secret settings")?;
    let metrics = Metrics::new()?;
    let images = Arc::new(
        ImageCache::open(&state_dir.join("images"), cache_limit_mib * 1024 * 1024)
            .with_context(|| format!("opening image cache under {}", state_dir.display()))?,
    );
    let settings = Settings {
        node_name,
        kernel_release,
        firmware_dir,
        set_firmware_class_path,
        resync: Duration::from_secs(resync_seconds.max(1)),
        verify_interval: Duration::from_secs(verify_seconds),
    };
    let ready = Readiness::default();
    let ctx = Arc::new(Context::new(
        settings,
        client,
        kernel,
        images,
        StateFile::in_dir(&state_dir),
        metrics.clone(),
    ));

    let server = tokio::spawn(server::serve(metrics_addr, metrics, ready.clone()));
    tokio::select! {
        res = reconciler::run(ctx, ready) => res,
        res = server => Err(anyhow::anyhow!("metrics server stopped: {res:?}")),
        res = shutdown_signal() => {
            tracing::info!("shutting down; loaded modules stay loaded");
            res
        }
    }
}
