//! `kmm-fleet-bench`: the fleet benchmark (`run`), and the request counter it
//! uses, for the audit log of any API server and any operator (`count`).
//! Method and audit policy: benches/README.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kmm_tests::audit::AuditLog;
use kmm_tests::controlplane::ControlPlane;
use kmm_tests::fleet::count::Tally;
use kmm_tests::fleet::{BenchOptions, FleetKind, report};

#[derive(Debug, Parser)]
#[command(about = "kmm-rs fleet benchmark and audit-log request counter")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// N simulated nodes through load, status-only change, ordered upgrade and
    /// unload against the control plane of KMM_RUN; writes fleet-<N>.json,
    /// fleet-<N>.png and fleet.md.
    Run {
        /// Nodes (and agents).
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// How the agents run.
        #[arg(long, value_enum, default_value_t = FleetKind::InProcess)]
        fleet: FleetKind,
        /// Where the results go.
        #[arg(long, default_value = "benches/results")]
        out_dir: PathBuf,
        /// Seconds of quiet after each operation before its requests are counted.
        #[arg(long, default_value_t = 5)]
        settle_seconds: u64,
        /// Longest wait for one operation, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_seconds: u64,
    },
    /// Counts the requests of a JSON audit log by client (User-Agent), verb and
    /// resource, between two instants; per node when given N.
    Count {
        /// The audit log (`--audit-log-format=json`).
        #[arg(long)]
        audit_log: PathBuf,
        /// Only requests completed at or after this RFC 3339 instant.
        #[arg(long)]
        since: Option<Timestamp>,
        /// Only requests completed before this RFC 3339 instant.
        #[arg(long)]
        until: Option<Timestamp>,
        /// Nodes, for the per-node column.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::Run {
            nodes,
            fleet,
            out_dir,
            settle_seconds,
            timeout_seconds,
        } => {
            let cp = ControlPlane::shared().await?;
            let work = tempfile::tempdir()?;
            let opts = BenchOptions {
                nodes,
                fleet,
                settle: Duration::from_secs(settle_seconds),
                timeout: Duration::from_secs(timeout_seconds),
                work_dir: work.path().to_path_buf(),
            };
            let result = kmm_tests::fleet::run(cp, &opts).await?;
            for path in report::write(&out_dir, &result)? {
                println!("wrote {}", path.display());
            }
            print!("{}", report::markdown(&report::read_all(&out_dir)?));
        }
        Cmd::Count {
            audit_log,
            since,
            until,
            nodes,
        } => {
            let log = AuditLog::at(audit_log);
            let requests = log.since(log.start(), |r| {
                let at = r.stage_timestamp.parse::<Timestamp>().ok();
                since.is_none_or(|s| at.is_some_and(|t| t >= s))
                    && until.is_none_or(|u| at.is_some_and(|t| t < u))
            })?;
            print!("{}", Tally::of(&requests).table(nodes));
        }
    }
    Ok(())
}
