//! `gandist plot`: PNG curves of a run's scalar log.

use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The run directory.
    run_dir: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    for f in crate::plot::write_run_plots(&a.run_dir)? {
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}
