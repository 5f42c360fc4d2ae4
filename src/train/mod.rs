//! Training: the trainer and the run around it.
//!
//! - `trainer`: both networks, one state per network, the data order and the counters; the
//!   critic and generator updates, which share one path after their losses (one reduction,
//!   then `NetState::apply`), and `sync`, the one host read at a sync step.
//! - `net_state`: one network's optimizer, averages, detector, skips and hyper-parameters,
//!   and the update after the reduction, written once for both networks.
//! - `snapshot`: the trainer's typed state (counters, detectors, tensors under one naming
//!   scheme) for checkpoints, resume and rollback; reading a generator out of a checkpoint.
//! - `faults`: fault injection, a hook the critic update calls.
//! - `timing`: the stages of an update, timed by laps.
//! - `monitor`: the Prometheus exporter and what each update sets in it.
//! - `report`: the scalar log's records and rank 0's progress.
//! - `run`: a run on one rank: start, the loop, finish; a clean stop on SIGTERM/SIGINT that
//!   every rank agrees on.

pub mod faults;
pub mod monitor;
pub mod net_state;
mod report;
pub mod run;
pub mod snapshot;
pub mod timing;
pub mod trainer;

use crate::config::Config;
use crate::collectives::{self, Collective};
use anyhow::Result;
use monitor::Monitor;
pub use net_state::{NetState, UpdateStats};
use std::path::PathBuf;
use std::rc::Rc;
pub use trainer::{AllReduceStats, IterationStats, Trainer};

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
    let started = collectives::init(&cfg.dist, &cfg.train.device)?;
    crate::logging::set_rank(started.comm.rank());
    tracing::info!("{}", started.report);
    let comm: Rc<dyn Collective> = Rc::from(started.comm);
    let result = (|| {
        // Rank 0 holds the run directory until the run ends: a second job on it is refused.
        let _lock = (comm.rank() == 0).then(|| crate::run_lock::RunLock::take(&opts.run_dir)).transpose()?;
        let mut run = run::Run::start(cfg, opts, comm.clone(), started.device)?;
        let outcome = run.train()?;
        run.finish(outcome)
    })();
    collectives::or_abort(comm.as_ref(), result)
}
