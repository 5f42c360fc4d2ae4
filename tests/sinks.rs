//! A new reader of a run is one `Sink` implementation: the one below, given to the run
//! (`train::run_with`), receives every event a TensorBoard writer would need, and what it
//! receives is what the built-in readers wrote: the start (fresh, then resumed at the
//! checkpoint's step), every iteration exactly once, each logging step's record equal to the
//! line metrics.jsonl holds, its scalars under the line's names with the per-layer norms, the
//! sample grids the run wrote as PNG files, and the clean end.

mod common;
use common::*;
use gandist::config::Config;
use gandist::sink::{IterationRecord, RunEnd, RunStart, SampleGrid, Sink, Sinks, StepRecord};
use gandist::train::{Outcome, Resume, RunOptions};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

#[derive(Default)]
struct Seen {
    start: Vec<RunStart>,
    steps: Vec<u64>,
    synced: Vec<u64>,
    logged: Vec<StepRecord>,
    grids: Vec<SampleGrid>,
    end: Vec<RunEnd>,
}

/// The whole reader: it keeps what it is given.
struct Recorder(Rc<RefCell<Seen>>);

impl Sink for Recorder {
    fn start(&mut self, run: &RunStart) -> anyhow::Result<()> {
        self.0.borrow_mut().start.push(run.clone());
        Ok(())
    }
    fn step(&mut self, step: u64) {
        self.0.borrow_mut().steps.push(step);
    }
    fn sync(&mut self, iterations: &[IterationRecord]) -> anyhow::Result<()> {
        self.0.borrow_mut().synced.extend(iterations.iter().map(|it| it.step));
        Ok(())
    }
    fn log(&mut self, record: &StepRecord) -> anyhow::Result<()> {
        self.0.borrow_mut().logged.push(record.clone());
        Ok(())
    }
    fn samples(&mut self, grid: &SampleGrid) -> anyhow::Result<()> {
        self.0.borrow_mut().grids.push(grid.clone());
        Ok(())
    }
    fn finish(&mut self, end: &RunEnd) -> anyhow::Result<()> {
        self.0.borrow_mut().end.push(end.clone());
        Ok(())
    }
}

fn train(run: &Path, iterations: u64, resume: Option<Resume>) -> Seen {
    let sets = [format!("train.iterations={iterations}"), "train.sample_every=3".into(), "train.checkpoint_every=3".into()];
    let cfg = Config::load(&smoke_config(), &sets).unwrap();
    let opts = RunOptions { run_dir: run.to_path_buf(), data_dir: mnist_dir(), resume };
    let seen = Rc::new(RefCell::new(Seen::default()));
    let mut extra = Sinks::default();
    extra.push(Recorder(seen.clone()));
    assert_eq!(gandist::train::run_with(cfg, &opts, extra).unwrap(), Outcome::Finished);
    Rc::try_unwrap(seen).ok().unwrap().into_inner()
}

#[test]
fn a_reader_gets_every_event_and_what_the_built_in_readers_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // Smoke: log every 2 iterations; samples and checkpoints every 3 here.
    let seen = train(&run, 6, None);
    assert_eq!(seen.start.len(), 1);
    let s = &seen.start[0];
    assert_eq!((s.step, s.target_step, s.world_size, s.local_batch, s.resumed_from.is_none()), (0, 6, 1, 16, true));
    assert_eq!(seen.synced, (1..=6).collect::<Vec<_>>(), "every iteration once, in order");
    assert_eq!(seen.steps, (1..=6).collect::<Vec<_>>());
    let lines = gandist::scalar_log::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(seen.logged.iter().map(|r| r.iteration.step).collect::<Vec<_>>(), vec![2, 4, 6]);
    assert_eq!(lines.len(), 3);
    for (r, line) in seen.logged.iter().zip(&lines) {
        assert_eq!(&r.to_json(), line, "the record is the scalar log's line");
        let scalars = r.scalars();
        assert!(scalars.iter().all(|(k, v)| line[k].as_f64() == Some(*v) || line[k].as_bool() == Some(*v == 1.0)), "{scalars:?}");
        for k in ["d_loss", "g_loss", "wasserstein", "d_grad_norm.conv1", "g_grad_norm.deconv3", "step"] {
            assert!(scalars.iter().any(|(n, _)| n == k), "no scalar {k}");
        }
    }
    assert_eq!(seen.grids.iter().map(|g| g.step).collect::<Vec<_>>(), vec![3, 6]);
    for g in &seen.grids {
        assert_eq!((g.n, g.channels, g.height, g.width, g.bytes.len()), (64, 1, 28, 28, 64 * 28 * 28));
        // The PNG the run wrote holds these images: the grid's first cell is image 0.
        let png = image::open(run.join(format!("samples/step-{:09}.png", g.step))).unwrap().to_luma8();
        let cell: Vec<u8> = (0..28).flat_map(|y| (0..28).map(move |x| (x, y))).map(|(x, y)| png.get_pixel(2 + x, 2 + y).0[0]).collect();
        assert_eq!(cell, g.bytes[..28 * 28], "step {}", g.step);
    }
    assert_eq!(seen.end.iter().map(|e| (e.step, e.stopped_by)).collect::<Vec<_>>(), vec![(6, None)]);
    // A resumed run starts at its checkpoint's step, and says which.
    let seen = train(&run, 8, Some(Resume::Auto));
    let s = &seen.start[0];
    assert_eq!((s.step, s.resumed_from.as_deref()), (6, Some(run.join("checkpoints/step-000000006").as_path())));
    assert_eq!(seen.synced, vec![7, 8]);
}
