//! `kmm-agent`: one per node. Watches Modules and its own Node, pulls kmod
//! images, loads and unloads kernel modules, and reports what it did.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kmm_agent::credentials::PullSecretsArgs;
use kmm_agent::image::{ImageCache, PullOptions};
use kmm_agent::kernel::{Kernel, LibKmod};
use kmm_agent::metrics::Metrics;
use kmm_agent::reconciler::{self, Parts, Settings};
use kmm_agent::server::{self, Liveness, Readiness};
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

    /// File holding this boot's id (records of another boot are checked, not trusted).
    #[arg(long, env = "KMM_BOOT_ID_FILE", default_value = BOOT_ID_FILE)]
    boot_id_file: PathBuf,

    /// Milliseconds every simulated remove takes (to kill the agent mid-unload in
    /// tests). Only with `--kernel simulated`.
    #[arg(long, env = "KMM_SIM_UNLOAD_DELAY_MS", default_value_t = 0)]
    sim_unload_delay_ms: u64,

    /// Seconds between full passes over all Modules.
    #[arg(long, env = "KMM_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,

    /// Seconds a replace of a Module with a device plugin or DRA driver waits
    /// for the plugin Pod to leave the node (its `.device-plugin-ready` /
    /// `.dra-ready` label gone) before unloading anyway.
    #[arg(long, env = "KMM_PLUGIN_STOP_TIMEOUT_SECONDS", default_value_t = 300)]
    plugin_stop_timeout_seconds: u64,

    /// File to create when a version is staged for the next boot (a
    /// ModuleRollout with `strategy: Reboot`): a reboot operator's sentinel,
    /// e.g. kured's `/var/run/reboot-required` through a hostPath mount.
    #[arg(long, env = "KMM_REBOOT_SENTINEL")]
    reboot_sentinel: Option<PathBuf>,

    /// Seconds between digest checks of images with `imagePullPolicy: Always`.
    #[arg(long, env = "KMM_VERIFY_SECONDS", default_value_t = 300)]
    verify_seconds: u64,

    /// Overall deadline of one image pull (manifests, blobs, extraction), in seconds.
    #[arg(long, env = "KMM_PULL_DEADLINE_SECONDS", default_value_t = 600)]
    pull_deadline_seconds: u64,

    /// Deadline of one manifest fetch, in seconds.
    #[arg(long, env = "KMM_MANIFEST_DEADLINE_SECONDS", default_value_t = 60)]
    manifest_deadline_seconds: u64,

    /// Largest manifest or index accepted, in bytes.
    #[arg(long, env = "KMM_MAX_MANIFEST_BYTES", default_value_t = kmm_agent::image::DEFAULT_MAX_MANIFEST_BYTES)]
    max_manifest_bytes: u64,

    /// Largest image accepted (its compressed layers as declared), in MiB.
    #[arg(long, env = "KMM_MAX_IMAGE_MIB", default_value_t = 2048)]
    max_image_mib: u64,

    /// Most entries (files, directories, links) an image may unpack to.
    #[arg(long, env = "KMM_MAX_IMAGE_ENTRIES", default_value_t = 50_000)]
    max_image_entries: u64,

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

    /// File holding this boot's id.
    #[arg(long, env = "KMM_BOOT_ID_FILE", default_value = BOOT_ID_FILE)]
    boot_id_file: PathBuf,

    /// Log as JSON.
    #[arg(long, env = "KMM_LOG_JSON", default_value_t = false)]
    log_json: bool,
}

/// The kernel's id of the running boot, new at every boot.
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

fn boot(args: BootArgs) -> anyhow::Result<()> {
    kmm_runtime::init_tracing(args.log_json);
    let running = running_release()?;
    let kernel = open_libkmod()?;
    let settings = kmm_agent::boot::BootSettings {
        firmware_dir: args.firmware_dir,
        set_firmware_class_path: args.set_firmware_class_path,
        firmware_class_path: kmm_agent::kernel::firmware::FIRMWARE_CLASS_PATH.into(),
    };
    let state = StateFile::in_dir(&args.state_dir);
    let boot_id = read_boot_id(&args.boot_id_file)?;
    let report = kmm_agent::boot::run(&state, &running, &boot_id, &kernel, &settings)?;
    // The summary goes to the journal either way; a failure also fails the unit.
    anyhow::ensure!(report.success(), "boot: {}", report.summary());
    tracing::info!(kernel = %running, "boot: {}", report.summary());
    Ok(())
}

/// Deadlines and caps of every pull, from the flags.
fn pull_options(
    deadline_s: u64,
    manifest_deadline_s: u64,
    max_manifest_bytes: u64,
    max_image_mib: u64,
    max_entries: u64,
) -> PullOptions {
    let defaults = PullOptions::default();
    PullOptions {
        deadline: Duration::from_secs(deadline_s),
        manifest_deadline: Duration::from_secs(manifest_deadline_s),
        max_manifest_bytes,
        max_image_bytes: max_image_mib.saturating_mul(1024 * 1024),
        limits: kmm_agent::extract::Limits {
            max_entries,
            ..defaults.limits.clone()
        },
        ..defaults
    }
}

/// This boot's id: records of another boot are checked before being trusted.
fn read_boot_id(path: &std::path::Path) -> anyhow::Result<String> {
    let id = std::fs::read_to_string(path)
        .with_context(|| format!("reading the boot id from {}", path.display()))?;
    Ok(id.trim().to_string())
}

/// The kubelet shows this file's content as the container's termination
/// message (`kubectl describe pod`, `kubectl get pod -o yaml`).
const TERMINATION_LOG: &str = "/dev/termination-log";

/// The running kernel through libkmod. A node it cannot work on (no module
/// support) is logged as an error that says what to do, and also becomes the
/// Pod's termination message, so the restarts are not left unexplained.
fn open_libkmod() -> anyhow::Result<LibKmod> {
    LibKmod::new().map_err(|e| {
        tracing::error!("kmm-agent cannot start: {e}");
        // Only in a container, where the kubelet provides the file; never create it.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .open(TERMINATION_LOG)
        {
            use std::io::Write;
            let _ = writeln!(f, "{e}");
        }
        anyhow::Error::new(e).context("initialising libkmod")
    })
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

// Two workers whatever the core count: the agent waits on the network and runs
// its disk and kernel work on blocking threads, and every worker thread costs
// memory (its stack, its own glibc arena) on a 64-core node as on a small one.
#[tokio::main(worker_threads = 2)]
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
        boot_id_file,
        sim_unload_delay_ms,
        metrics_addr,
        resync_seconds,
        plugin_stop_timeout_seconds,
        reboot_sentinel,
        verify_seconds,
        pull_deadline_seconds,
        manifest_deadline_seconds,
        max_manifest_bytes,
        max_image_mib,
        max_image_entries,
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
                sim_load_delay_ms == 0 && sim_unload_delay_ms == 0,
                "--sim-load-delay-ms and --sim-unload-delay-ms only apply to --kernel simulated"
            );
            (Arc::new(open_libkmod()?), running)
        }
        KernelKind::Simulated => simulated_kernel(
            kernel_release,
            sim_load_delay_ms,
            sim_unload_delay_ms,
            &state_dir,
        )?,
    };

    let client = kmm_runtime::kube_client("kmm-agent", env!("CARGO_PKG_VERSION"))
        .await
        .context("connecting to the API server")?;
    // Built here so that bad flags fail at start.
    let pull_secrets = pull_secrets
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
        boot_id: read_boot_id(&boot_id_file)?,
        firmware_dir,
        set_firmware_class_path,
        resync: Duration::from_secs(resync_seconds.max(1)),
        verify_interval: Duration::from_secs(verify_seconds),
        plugin_stop_timeout: Duration::from_secs(plugin_stop_timeout_seconds),
        reboot_sentinel,
        pull: pull_options(
            pull_deadline_seconds,
            manifest_deadline_seconds,
            max_manifest_bytes,
            max_image_mib,
            max_image_entries,
        ),
    };
    let ready = Readiness::default();
    // The loop beats at least once per resync; a pass that hangs for two resyncs
    // (plus slack) fails /healthz so the kubelet restarts the agent.
    let live = Liveness::with_max_age(settings.resync * 2 + Duration::from_secs(60));
    let parts = Parts {
        secrets: Arc::new(pull_secrets),
        client,
        kernel,
        images,
        state_file: StateFile::in_dir(&state_dir),
        metrics: metrics.clone(),
        release_memory: Arc::new(kmm_memtrim::release_free_memory),
    };

    let server = tokio::spawn(server::serve(
        metrics_addr,
        metrics,
        ready.clone(),
        live.clone(),
    ));
    tokio::select! {
        res = reconciler::run(settings, parts, ready, live) => res,
        res = server => Err(anyhow::anyhow!("metrics server stopped: {res:?}")),
        res = shutdown_signal() => {
            tracing::info!("shutting down; loaded modules stay loaded");
            res
        }
    }
}

/// `--kernel simulated`: the in-memory kernel, persisted under the state dir.
#[cfg(feature = "simulated")]
fn simulated_kernel(
    kernel_release: Option<String>,
    sim_load_delay_ms: u64,
    sim_unload_delay_ms: u64,
    state_dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn Kernel>, String)> {
    tracing::warn!(
        "simulated kernel: no module reaches a real kernel (scale and fault tests only)"
    );
    let release = match kernel_release {
        Some(k) => k,
        None => running_release()?,
    };
    let snapshot = state_dir.join("simulated-kernel.json");
    std::fs::create_dir_all(state_dir)?;
    let sim = kmm_agent::sim_persist::PersistentSimulatedKernel::open(&snapshot)
        .with_context(|| format!("opening {}", snapshot.display()))?;
    sim.set_load_delay(Duration::from_millis(sim_load_delay_ms));
    sim.simulated()
        .set_unload_delay(Duration::from_millis(sim_unload_delay_ms));
    Ok((Arc::new(sim), release))
}

/// This build has no simulated kernel (the shipped agent carries no test doubles).
#[cfg(not(feature = "simulated"))]
fn simulated_kernel(
    _kernel_release: Option<String>,
    _sim_load_delay_ms: u64,
    _sim_unload_delay_ms: u64,
    _state_dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn Kernel>, String)> {
    anyhow::bail!(
        "--kernel simulated: this build of kmm-agent has no simulated kernel (build it with `--features simulated`, for tests and benches)"
    )
}
