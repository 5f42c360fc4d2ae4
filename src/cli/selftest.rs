//! `gandist selftest-collectives` (hidden): the chosen backend's collectives on known values.

use crate::collectives;
use crate::config::Config;
use anyhow::{bail, Result};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// cpu, cuda, cuda:N or auto (train.device).
    #[arg(long, default_value = "auto")]
    device: crate::config::DeviceChoice,
    /// Overrides such as dist.backend="nccl" (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut all = vec![format!("train.device=\"{}\"", a.device)];
    all.extend(a.overrides);
    let cfg = Config::from_toml_str("", &all)?;
    let started = collectives::init(&cfg.dist, cfg.train.device)?;
    crate::logging::set_rank(started.comm.rank());
    tracing::info!("{}", started.report);
    let rank = started.comm.rank();
    // Each row as it ends (stdout is line-buffered): a later row that ends the job leaves
    // the earlier ones printed.
    let checks = collectives::selftest::run(&started, |c| println!("rank {rank} selftest {}: {} ({})", c.name, if c.ok { "ok" } else { "FAILED" }, c.detail));
    let failed = checks.iter().filter(|c| !c.ok).count();
    // Every rank reports before any ends the job.
    started.comm.barrier()?;
    if failed > 0 {
        bail!("{failed} collective self-test check(s) failed on rank {rank}");
    }
    Ok(ExitCode::SUCCESS)
}
