//! `gandist train`: one run on this rank (mpirun and srun start one per rank).

use crate::config::Config;
use crate::data::mnist;
use crate::train::{self, Outcome, Resume, RunOptions};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The TOML configuration (configs/ has the paper's, a quick CPU one and ablations).
    #[arg(long)]
    config: PathBuf,
    /// Override a config value, e.g. --set critic.lr=2e-4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// MNIST folder (default: data/mnist).
    #[arg(long, env = "GANDIST_DATA")]
    data: Option<PathBuf>,
    /// Run directory (default: runs/<config file name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Continue from a checkpoint directory, or `auto` for the newest usable one in the run directory.
    #[arg(long)]
    resume: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cfg = Config::load(&a.config, &a.overrides)?;
    let run_dir = a.run_dir.unwrap_or_else(|| {
        let stem = a.config.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
        PathBuf::from("runs").join(stem)
    });
    let resume = a.resume.map(|r| if r == "auto" { Resume::Auto } else { Resume::Path(PathBuf::from(r)) });
    let opts = RunOptions { run_dir, data_dir: mnist::resolve_dir(a.data.as_deref()), resume };
    match train::run(cfg, &opts)? {
        Outcome::Finished => Ok(ExitCode::SUCCESS),
        Outcome::Stopped(sig) => Ok(ExitCode::from((128 + sig) as u8)),
    }
}
