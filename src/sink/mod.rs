//! Every reader of a training run behind one interface: `Sink`. The loop (`train::run`) calls
//! the sinks of its rank in order at each event; the trainer's figures reach them as typed
//! records (`record`), read from the device once per sync step. Readers today: the scalar log
//! (`scalar_log::ScalarLog`, metrics.jsonl), the Prometheus exporter (`metrics::Monitor`), the
//! progress line (`progress::Progress`) and the plots at the end (`crate::plot::Plots`).
//!
//! # Adding a reader
//!
//! A reader is one file: a type that implements `Sink`, overriding the methods it needs (all
//! default to doing nothing), plus one line where the run builds its sinks
//! (`train::run::sinks`; a program that embeds gandist passes its own to `train::run_with`,
//! as `tests/sinks.rs` does). For example a writer of scalar time series:
//!
//! ```ignore
//! impl Sink for MyWriter {
//!     fn log(&mut self, r: &StepRecord) -> Result<()> {
//!         for (name, value) in r.scalars() {        // metrics.jsonl's names
//!             self.write_scalar(&name, value, r.iteration.step)?;
//!         }
//!         Ok(())
//!     }
//!     fn samples(&mut self, grid: &SampleGrid) -> Result<()> { self.write_image(grid) }
//! }
//! ```
//!
//! What each method gets, and when:
//! - `start`: once, before the first iteration: fresh at step 0, or resumed at step S.
//! - `step`: after every iteration, with the step only (the host knows it without reading the
//!   device); for progress displays. Between sync steps nothing else is known.
//! - `sync`: at every sync step (logging, samples, checkpoints, evaluation, the end), every
//!   iteration since the previous one, in order, each with all its updates.
//! - `log`: at logging steps (`train.log_every`, evaluations, the end), the step's record: what
//!   metrics.jsonl writes, with the evaluation's report when one ran at this step.
//! - `samples`: when the run writes a sample grid (`train.sample_every`, the end).
//! - `rollback`: when non-finite updates sent the run back to a checkpoint.
//! - `finish`: at a clean end (finished, or stopped on a signal after its checkpoint); not
//!   after an error.
//!
//! A sink runs on the ranks that the run gives it to: rank 0 for files, every rank for its
//! own exporter. An error from a sink ends the run, as a failed write would; a sink that must
//! not fail a run (the plots) logs its problem and returns Ok.

pub mod progress;
pub mod record;

use anyhow::Result;
pub use record::{EvalReport, IterationRecord, Metric, MetricValue, Rollback, RunEnd, RunStart, SampleGrid, StepRecord, UpdateRecord};

/// A reader of a training run; see the module's documentation.
pub trait Sink {
    fn start(&mut self, _run: &RunStart) -> Result<()> {
        Ok(())
    }

    fn step(&mut self, _step: u64) {}

    fn sync(&mut self, _iterations: &[IterationRecord]) -> Result<()> {
        Ok(())
    }

    fn log(&mut self, _record: &StepRecord) -> Result<()> {
        Ok(())
    }

    fn samples(&mut self, _grid: &SampleGrid) -> Result<()> {
        Ok(())
    }

    fn rollback(&mut self, _rollback: &Rollback) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self, _end: &RunEnd) -> Result<()> {
        Ok(())
    }
}

/// A rank's sinks, called in order.
#[derive(Default)]
pub struct Sinks(Vec<Box<dyn Sink>>);

impl Sinks {
    pub fn push(&mut self, sink: impl Sink + 'static) {
        self.0.push(Box::new(sink));
    }

    /// `other`'s sinks after these.
    pub fn extend(&mut self, other: Sinks) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn start(&mut self, run: &RunStart) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.start(run))
    }

    pub fn step(&mut self, step: u64) {
        self.0.iter_mut().for_each(|s| s.step(step))
    }

    pub fn sync(&mut self, iterations: &[IterationRecord]) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.sync(iterations))
    }

    pub fn log(&mut self, record: &StepRecord) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.log(record))
    }

    pub fn samples(&mut self, grid: &SampleGrid) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.samples(grid))
    }

    pub fn rollback(&mut self, rollback: &Rollback) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.rollback(rollback))
    }

    pub fn finish(&mut self, end: &RunEnd) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.finish(end))
    }
}
