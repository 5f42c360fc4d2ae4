//! TensorBoard as a reader of the run (`crate::sink::Sink`), on rank 0 with `log.tensorboard`:
//! an event file in the run directory that starts at the step the process starts from, every
//! logged scalar under its metrics.jsonl name, the sample grids as images, and a restart at
//! each rollback (the steps after the checkpoint are trained again). Each write is handed to
//! the operating system at once, so that a reader sees a sync step's events when it ends.

use super::{record_scalars, EventWriter, SAMPLES_TAG};
use crate::sink::{Rollback, RunEnd, RunStart, SampleGrid, Sink, StepRecord};
use anyhow::Result;

#[derive(Default)]
pub struct TensorBoard {
    /// Opened at the run's start, in its run directory.
    writer: Option<EventWriter>,
}

impl TensorBoard {
    fn writer(&mut self) -> &mut EventWriter {
        self.writer.as_mut().expect("the run's start comes first")
    }
}

impl Sink for TensorBoard {
    /// A resumed run starts at its checkpoint's step: what an earlier process wrote after it is
    /// orphaned, and TensorBoard drops it at this file's START.
    fn start(&mut self, run: &RunStart) -> Result<()> {
        self.writer = Some(EventWriter::create(&run.run_dir, run.step + 1)?);
        Ok(())
    }

    fn log(&mut self, record: &StepRecord) -> Result<()> {
        let w = self.writer();
        w.scalars(record.iteration.step, &record_scalars(&record.to_json()))?;
        w.flush()
    }

    fn samples(&mut self, grid: &SampleGrid) -> Result<()> {
        let (png, width, height) = crate::samples::grid_png(&grid.bytes, grid.n, grid.channels, grid.height)?;
        let w = self.writer();
        w.image(SAMPLES_TAG, grid.step, &png, width, height, grid.channels as u32)?;
        w.flush()
    }

    fn rollback(&mut self, r: &Rollback) -> Result<()> {
        let w = self.writer();
        w.restart(r.step + 1)?;
        w.flush()
    }

    fn finish(&mut self, _end: &RunEnd) -> Result<()> {
        self.writer().flush()
    }
}
