//! `pillar-sim`: the simulator for people. It wires the command line ([`cli`]) to the library's
//! [`pillar_sim::Stack`] and control API; the load driver ([`drive`]) lives here too, since no
//! test drives load through the library.

mod cli;
mod drive;

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
    let cli = cli::Cli::parse();
    match cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pillar-sim: {error}");
            ExitCode::FAILURE
        }
    }
}
