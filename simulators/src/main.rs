//! `pillar-sim`: wires the command line to [`pillar_sim::cli`].

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,pillar_sim=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    // The in-process executor exports spans under a dispatch of its own; its lines still print.
    workflow_executor::logging::log_embedded("warn,pillar_sim=info");
    let cli = pillar_sim::cli::Cli::parse();
    match pillar_sim::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pillar-sim: {error}");
            ExitCode::FAILURE
        }
    }
}
