//! `kmm-agent-fleet`: many instances of the real agent reconciler in one
//! process, for the fleet benchmark (`benches/cluster.sh`). Each instance is what
//! one `kmm-agent --kernel simulated` process runs: its own API client
//! (User-Agent `kmm-agent/<version>`), its own watches of Modules and of its
//! Node, its own state dir and image cache, its own simulated kernel. Only the
//! process, its runtime and its allocator are shared, which is what lets 1,000
//! of them fit on a small machine.
//!
//! It writes `<state-dir>/ready` once every instance has synced its watches
//! and recovered its state, and runs until killed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kmm_agent::credentials::{AnyPullSecrets, ApiPullSecrets};
use kmm_agent::image::{ImageCache, PullOptions};
use kmm_agent::kernel::SimulatedKernel;
use kmm_agent::metrics::Metrics;
use kmm_agent::reconciler::{self, Parts, ReleaseMemory, Settings};
use kmm_agent::server::{Liveness, Readiness};
use kmm_agent::state::StateFile;

#[derive(Debug, Parser)]
#[command(about = "Many simulated-kernel kmm-agent reconcilers in one process (benchmarks)")]
struct Args {
    /// Kubeconfig of the API server (default: KUBECONFIG).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Node names are `<node-prefix><i>` for i in 0..count.
    #[arg(long)]
    node_prefix: String,
    /// How many agents.
    #[arg(long)]
    count: usize,
    /// Kernel release every simulated kernel reports.
    #[arg(long)]
    kernel_release: String,
    /// One sub-directory per agent (state file, image cache) goes here.
    #[arg(long)]
    state_dir: PathBuf,
    /// Seconds between full passes, as `kmm-agent --resync-seconds`.
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
}

/// Raises the open-file limit to its hard maximum: each agent holds a few
/// connections (two watches and its requests).
fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

async fn agent(
    config: kube::Config,
    node: String,
    args: Arc<Args>,
    dir: PathBuf,
    ready: Readiness,
) -> Result<()> {
    let mut config = config;
    kmm_runtime::identify(&mut config, "kmm-agent", env!("CARGO_PKG_VERSION"));
    let client = kube::Client::try_from(config)?;
    std::fs::create_dir_all(&dir)?;
    let images = Arc::new(ImageCache::open(&dir.join("images"), 4096 * 1024 * 1024)?);
    let settings = Settings {
        node_name: node,
        kernel_release: args.kernel_release.clone(),
        boot_id: "fleet".into(),
        firmware_dir: dir.join("firmware"),
        set_firmware_class_path: false,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        verify_interval: Duration::from_secs(args.resync_seconds),
        plugin_stop_timeout: Duration::from_secs(300),
        reboot_sentinel: None,
        pull: PullOptions::default(),
    };
    let parts = Parts {
        secrets: Arc::new(AnyPullSecrets::Api(ApiPullSecrets::new(client.clone()))),
        client,
        kernel: Arc::new(SimulatedKernel::new()),
        images,
        state_file: StateFile::in_dir(&dir),
        metrics: Metrics::new()?,
        release_memory: shared_trim(),
    };
    let live = Liveness::with_max_age(settings.resync * 2 + Duration::from_secs(60));
    reconciler::run(settings, parts, ready, live).await
}

/// One process, one heap: a trim gives back what every agent freed, so the
/// agents share one that runs at most once a second (1,000 agents each
/// trimming the whole heap after every load would be the fleet's cost, not an
/// agent's).
fn shared_trim() -> ReleaseMemory {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    Arc::new(|| {
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1000;
        let last = LAST.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || LAST
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        kmm_memtrim::release_free_memory()
    })
}

fn write_ready(state_dir: &Path, count: usize) -> Result<()> {
    let tmp = state_dir.join("ready.tmp");
    std::fs::write(&tmp, format!("{count}\n"))?;
    std::fs::rename(&tmp, state_dir.join("ready"))?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    kmm_runtime::init_tracing(false);
    let args = Arc::new(Args::parse());
    let nofile = raise_nofile().context("raising RLIMIT_NOFILE")?;
    anyhow::ensure!(
        nofile >= (args.count as u64) * 4 + 64,
        "open-file limit {nofile} is too low for {} agents (ulimit -Hn)",
        args.count
    );
    std::fs::create_dir_all(&args.state_dir)?;
    let _ = std::fs::remove_file(args.state_dir.join("ready"));
    let kubeconfig = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let mut readiness = Vec::with_capacity(args.count);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let node = format!("{}{i}", args.node_prefix);
        let dir = args.state_dir.join(&node);
        let ready = Readiness::default();
        readiness.push(ready.clone());
        let (config, args) = (config.clone(), args.clone());
        tasks.spawn(async move {
            let result = agent(config, node.clone(), args, dir, ready).await;
            (node, result)
        });
    }
    let mut reported = false;
    loop {
        tokio::select! {
            Some(done) = tasks.join_next() => {
                // An agent returns only on error: the fleet is no longer what it claims.
                let (node, result) = done?;
                anyhow::bail!("agent of {node} stopped: {result:?}");
            }
            () = tokio::time::sleep(Duration::from_millis(200)), if !reported => {
                let n = readiness.iter().filter(|r| r.is_ready()).count();
                if n == args.count {
                    write_ready(&args.state_dir, n)?;
                    eprintln!("all {n} agents ready");
                    reported = true;
                }
            }
        }
    }
}
