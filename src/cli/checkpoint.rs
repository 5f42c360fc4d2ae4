//! `gandist checkpoint latest`: the checkpoint that `train --resume auto` would resume from in a
//! run directory, found by the same code (`Snapshot::load_latest`: the newest checkpoint that
//! loads and checks, older ones tried when it does not), for launchers and scripts.

use crate::checkpoint;
use crate::config::Config;
use crate::train::snapshot::{self, Snapshot};
use crate::train::Trainer;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Action {
    /// The checkpoint `train --resume auto` would resume from: its directory, step, the global
    /// batch of its run and the ranks that wrote it; empty values when there is none, an error
    /// when checkpoints exist but none is usable. Printed as KEY=VALUE lines, or JSON.
    Latest(LatestArgs),
}

#[derive(clap::Args)]
pub struct LatestArgs {
    /// The run directory (its checkpoints/ folder is searched).
    #[arg(long)]
    run_dir: PathBuf,
    /// The run's configuration: then a checkpoint of another trajectory is refused, as
    /// `train --resume auto` would refuse it (default: each checkpoint's own).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides of --config, as `train` takes them (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    overrides: Vec<String>,
    /// One JSON object instead of KEY=VALUE lines.
    #[arg(long)]
    json: bool,
}

/// The answer, in both formats.
#[derive(Debug, Serialize, PartialEq)]
struct Latest {
    run_dir: PathBuf,
    checkpoint: Option<PathBuf>,
    step: Option<u64>,
    /// The run's global batch (data.batch_size), from --config or the checkpoint's own.
    batch_size: Option<i64>,
    /// The ranks that wrote the checkpoint.
    world_size: Option<usize>,
}

pub fn run(action: Action) -> Result<ExitCode> {
    let Action::Latest(a) = action;
    let answer = latest(&a)?;
    if a.json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        let show = |v: Option<String>| v.unwrap_or_default();
        println!("checkpoint={}", show(answer.checkpoint.as_ref().map(|p| p.display().to_string())));
        println!("step={}", show(answer.step.map(|s| s.to_string())));
        println!("batch_size={}", show(answer.batch_size.map(|s| s.to_string())));
        println!("world_size={}", show(answer.world_size.map(|s| s.to_string())));
    }
    Ok(ExitCode::SUCCESS)
}

fn latest(a: &LatestArgs) -> Result<Latest> {
    let root = checkpoint::checkpoints_dir(&a.run_dir);
    let cfg = match &a.config {
        Some(path) => Some(Config::load(path, &a.overrides)?),
        None => snapshot::newest_embedded_config(&root)?,
    };
    let found = match &cfg {
        Some(cfg) => Snapshot::load_latest(&root, &Trainer::state_shapes_of(cfg)?, cfg)?,
        None => None,
    };
    let world_size = match &found {
        Some((dir, _)) => Some(checkpoint::read_meta(dir)?.world_size),
        None => None,
    };
    Ok(Latest {
        run_dir: a.run_dir.clone(),
        step: found.as_ref().map(|(_, s)| s.counters.step),
        checkpoint: found.map(|(dir, _)| dir),
        batch_size: cfg.map(|c| c.data.batch_size),
        world_size,
    })
}
