//! The `gandist` binary: parses the command line and runs the command (`gandist::cli`).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A full disk or a file-size limit must surface as a write error with a message, not as
    // SIGXFSZ killing the process mid-checkpoint.
    let _ = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let cli = gandist::cli::Cli::parse();
    gandist::logging::init();
    match gandist::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
