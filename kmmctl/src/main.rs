use std::io::IsTerminal;
use std::process::ExitCode;

use clap::FromArgMatches;
use kmmctl::cli::{Cli, command, run};

#[tokio::main]
async fn main() -> ExitCode {
    // Progress goes to stderr; stdout carries only the result (a digest, a report).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kmmctl=info,warn,kube_client=off".into()),
        )
        .init();
    // As `kubectl-kmm` (a kubectl plugin) usage and errors say `kubectl kmm`.
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    match run(cli).await {
        Ok(out) => {
            println!("{}", out.stdout);
            ExitCode::from(out.code)
        }
        Err(err) => {
            // "{:#}" prints the whole cause chain on one line.
            eprintln!(
                "{}: error: {:#}",
                kmmctl::cli::program_name(),
                anyhow::Error::from(err)
            );
            ExitCode::FAILURE
        }
    }
}
