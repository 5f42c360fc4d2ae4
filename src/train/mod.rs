//! Training: the trainer and the run around it.
//!
//! - `trainer`: both networks with their states, the phases of an iteration as data, the data
//!   order and the counters; `update`, the one path of every update (its phase's loss, one
//!   reduction, then `NetState::apply`), and `sync`, the one host read at a sync step, which
//!   returns typed iteration records.
//! - `net_state`: one network's parameters, optimizer, averages, detector, skips and settings,
//!   and the update after the reduction, written once for both networks.
//! - `figures`: an update's figures, packed on the device and unpacked typed, side by side.
//! - `snapshot`: the trainer's typed state (counters, detectors, tensors under one naming
//!   scheme) for checkpoints, resume and rollback; reading a generator out of a checkpoint;
//!   the newest usable checkpoint of a run directory.
//! - `faults`: fault injection, a hook the critic update calls.
//! - `run`: a run on one rank: start (by stage), the loop, finish; its readers (`crate::sink`)
//!   get every record; a clean stop on SIGTERM/SIGINT that every rank agrees on.

pub mod faults;
pub mod figures;
pub mod net_state;
pub mod run;
pub mod snapshot;
pub mod trainer;

use crate::collectives::{self, Collective};
use crate::config::Config;
use crate::sink::Sinks;
use anyhow::Result;
pub use net_state::NetState;
use std::path::PathBuf;
use std::rc::Rc;
pub use trainer::{AllReduceStats, Phase, Trainer};

#[derive(Debug, Clone)]
pub enum Resume {
    /// The newest usable checkpoint in the run directory, if any.
    Auto,
    Path(PathBuf),
}

pub struct RunOptions {
    pub run_dir: PathBuf,
    pub data_dir: PathBuf,
    pub resume: Option<Resume>,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Stopped by this signal after writing a checkpoint.
    Stopped(i32),
}

/// Trains `cfg` and returns how the run ended. Runs on every rank; an error on one rank ends
/// the whole job.
pub fn run(cfg: Config, opts: &RunOptions) -> Result<Outcome> {
    run_with(cfg, opts, Sinks::default())
}

/// The same, with `extra` readers of the run after the ones it builds (for a program that
/// embeds gandist, and tests).
pub fn run_with(cfg: Config, opts: &RunOptions, extra: Sinks) -> Result<Outcome> {
    let started = collectives::init(&cfg.dist, cfg.train.device)?;
    crate::logging::set_rank(started.comm.rank());
    tracing::info!("{}", started.report);
    let comm: Rc<dyn Collective> = Rc::from(started.comm);
    let result = (|| {
        // Rank 0 holds the run directory until the run ends: a second job on it is refused.
        let _lock = (comm.rank() == 0).then(|| crate::run_lock::RunLock::take(&opts.run_dir)).transpose()?;
        let mut run = run::Run::start(cfg, opts, comm.clone(), started.device, extra)?;
        let outcome = run.train()?;
        run.finish(outcome)
    })();
    collectives::or_abort(comm.as_ref(), result)
}
