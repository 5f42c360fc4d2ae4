//! `gandist bench`: images/s of the training iteration on synthetic data, on every rank.

use crate::collectives::{self, Collective};
use crate::config::Config;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

#[derive(clap::Args)]
pub struct Args {
    /// cpu, cuda, cuda:N or auto (train.device).
    #[arg(long, default_value = "cpu")]
    device: crate::config::DeviceChoice,
    /// Global batch (data.batch_size), split among the ranks.
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Timed iterations (each n_critic critic updates and one generator update).
    #[arg(long, default_value_t = 20)]
    iters: u64,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// A config to take the model and loss from (default: the built-in WGAN-GP).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut all = vec![format!("data.batch_size={}", a.batch), format!("train.device=\"{}\"", a.device)];
    all.extend(a.overrides);
    let cfg = match &a.config {
        Some(p) => Config::load(p, &all)?,
        None => Config::from_toml_str("", &all)?,
    };
    let started = collectives::init(&cfg.dist, cfg.train.device)?;
    crate::logging::set_rank(started.comm.rank());
    tracing::info!("{}", started.report);
    let (comm, dev): (Rc<dyn Collective>, _) = (Rc::from(started.comm), started.device);
    crate::cpus::set_threads(&cfg, comm.as_ref())?;
    let backend = comm.backend_name();
    let is_root = comm.rank() == 0;
    // An error on one rank ends the whole job, as in training.
    let r = collectives::or_abort(comm.as_ref(), crate::bench::run(cfg, comm.clone(), dev, a.warmup, a.iters))?;
    if is_root {
        println!("{}", r.report(dev, backend));
    }
    Ok(ExitCode::SUCCESS)
}
