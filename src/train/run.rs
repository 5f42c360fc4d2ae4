//! A training run on one rank, in three parts: `Run::start` (its stages: the run directory,
//! the exporter, the trainer, the resume, the evaluator, the readers), `Run::train` (the loop)
//! and `Run::finish` (the end).
//!
//! The loop reads from the device only at sync steps (logging, samples, checkpoints,
//! evaluation, a stop, the end; the same steps on every rank): there `Trainer::sync` brings
//! every update's figures to the host as typed records, every reader of the run gets them
//! (`crate::sink`), and the decisions that need them (rollback) are made. Between sync steps
//! an iteration only queues work. A stop request travels in a host-side agreement after
//! every iteration. After rank 0's own work (samples, evaluation, checkpoints) every rank
//! meets at a host barrier bounded by `dist.root_work_timeout_seconds`, so that
//! `dist.timeout_seconds` times collectives alone.

use super::snapshot::{Restore, Snapshot};
use super::{Outcome, Resume, RunOptions, Trainer};
use crate::checkpoint;
use crate::collectives::Collective;
use crate::config::Config;
use crate::data::{DeviceImages, Mnist, Split};
use crate::eval::RunEvaluator;
use crate::metrics::Monitor;
use crate::scalar_log::{self, ScalarLog};
use crate::sink::progress::Progress;
use crate::sink::{EvalReport, IterationRecord, Rollback, RunEnd, RunStart, SampleGrid, Sinks, StepRecord};
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

/// Everything a rank holds while it trains.
pub struct Run<'a> {
    cfg: Config,
    opts: &'a RunOptions,
    ckpt_root: PathBuf,
    is_root: bool,
    trainer: Trainer,
    /// This rank's readers of the run: its exporter; on rank 0 the scalar log, the progress
    /// line and the plots.
    sinks: Sinks,
    /// Rank 0's, when `eval.every > 0`.
    evaluator: Option<RunEvaluator>,
    stop: StopSignal,
    fixed_noise: Tensor,
    /// Start of the current rate window: (time, step).
    window: (Instant, u64),
    started: Instant,
    start_step: u64,
    rollbacks: u32,
    reads: ReadTally,
}

/// Which of a step's duties are due; the same on every rank (a function of the step, the
/// configuration and the agreed stop).
struct Due {
    log: bool,
    samples: bool,
    checkpoint: bool,
    eval: bool,
}

impl Due {
    fn at(step: u64, cfg: &Config, stopping: bool) -> Due {
        let t = &cfg.train;
        let last = step == t.iterations;
        let eval = cfg.eval.every > 0 && (step % cfg.eval.every == 0 || last);
        Due {
            log: step % t.log_every == 0 || last || stopping || eval,
            samples: step % t.sample_every == 0 || last || stopping,
            checkpoint: step % t.checkpoint_every == 0 || last || stopping,
            eval,
        }
    }

    /// A sync step: the host reads the device's figures.
    fn sync(&self) -> bool {
        self.log || self.samples || self.checkpoint || self.eval
    }

    /// Rank 0 does work of its own, which the others wait for at a host barrier.
    fn root_work(&self) -> bool {
        self.samples || self.checkpoint || self.eval
    }
}

/// Host reads of device data in a run: at sync steps, and between them (which must stay 0).
#[derive(Default)]
struct ReadTally {
    sync_steps: u64,
    at_sync: u64,
    between: u64,
}

impl std::fmt::Display for ReadTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host reads of device data: {} at {} sync steps, {} between them", self.at_sync, self.sync_steps, self.between)?;
        match crate::hostread::staged() {
            0 => Ok(()),
            n => write!(f, "; {n} more staged the MPI backend's reductions through the host"),
        }
    }
}

/// SIGTERM and SIGINT only set a flag, which the loop acts on at a safe point; a watchdog
/// thread ends the process if that takes longer than the grace period.
struct StopSignal {
    flag: Arc<AtomicBool>,
    which: Arc<AtomicI32>,
}

impl StopSignal {
    fn install(grace: std::time::Duration) -> Result<StopSignal> {
        let flag = Arc::new(AtomicBool::new(false));
        let which = Arc::new(AtomicI32::new(0));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let (f, w) = (flag.clone(), which.clone());
            // SAFETY: the handler only stores to atomics, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    w.store(sig, Ordering::SeqCst);
                    f.store(true, Ordering::SeqCst);
                })
            }
            .context("cannot install signal handler")?;
        }
        let (f, w) = (flag.clone(), which.clone());
        std::thread::spawn(move || {
            while !f.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            std::thread::sleep(grace);
            let sig = w.load(Ordering::SeqCst);
            tracing::error!("still running {grace:?} after signal {sig} (train.stop_grace_seconds): exiting without a final checkpoint");
            std::process::exit(128 + sig);
        });
        Ok(StopSignal { flag, which })
    }

    /// This process received a signal.
    fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The signal this process received (0: none, the stop came from another rank).
    fn received(&self) -> i32 {
        self.which.load(Ordering::SeqCst)
    }
}

/// Rank 0's check, before any training, that the run directory can be created and written,
/// and that a fresh run does not write over another run's checkpoints.
fn prepare_run_dir(opts: &RunOptions, ckpt_root: &Path) -> Result<()> {
    let dir = &opts.run_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create run directory {}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| format!("run directory {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    for sub in ["checkpoints", "samples"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    if opts.resume.is_none() && !checkpoint::list(ckpt_root).is_empty() {
        bail!("run directory {} already holds checkpoints: pass --resume auto to continue that run, or choose another --run-dir", dir.display());
    }
    Ok(())
}

/// The trainer on this rank's device, on the training images.
fn build_trainer(cfg: &Config, opts: &RunOptions, comm: Rc<dyn Collective>, device: Device) -> Result<Trainer> {
    let mut mnist = Mnist::load(&opts.data_dir, Split::Train)?;
    mnist.truncate(cfg.data.limit);
    let data = DeviceImages::from_mnist(&mnist, device)?;
    drop(mnist);
    Trainer::new(cfg.clone(), comm, device, data)
}

/// Restores the checkpoint `--resume` names (the newest usable one for `auto`), if there is
/// one; then every rank holds rank 0's state. Returns the checkpoint resumed from.
fn resume(trainer: &mut Trainer, resume: Option<&Resume>, ckpt_root: &Path, is_root: bool) -> Result<Option<PathBuf>> {
    let shapes = trainer.state_shapes();
    let found = match resume {
        None => None,
        Some(Resume::Auto) => Snapshot::load_latest(ckpt_root, &shapes, trainer.config())?,
        Some(Resume::Path(p)) => Some((p.clone(), Snapshot::load(p, &shapes, trainer.config())?)),
    };
    let from = match found {
        Some((dir, snapshot)) => {
            trainer.restore(&snapshot, Restore::Resume)?;
            if is_root {
                tracing::info!("resumed from {} at step {}", dir.display(), snapshot.counters.step);
            }
            Some(dir)
        }
        None => {
            if is_root && resume.is_some() {
                tracing::info!("no checkpoint in {}: starting from scratch", ckpt_root.display());
            }
            None
        }
    };
    trainer.broadcast_state()?;
    // An asynchronous failure of the start-up broadcast surfaces here.
    trainer.comm().check()?;
    Ok(from)
}

/// Rank 0's evaluator (`eval.metric`), when `eval.every > 0`.
fn load_evaluator(cfg: &Config, opts: &RunOptions, device: Device) -> Result<RunEvaluator> {
    RunEvaluator::load(&cfg.eval, &opts.data_dir, device).context("eval.every > 0")
}

/// Rank 0's readers that write into the run directory (after the resolved configuration,
/// config.toml): the scalar log, the TensorBoard event file with `log.tensorboard`, the
/// progress line, the plots at the end. Every rank's own exporter comes first, when there is
/// one. A new reader is one more line here.
fn sinks(cfg: &Config, opts: &RunOptions, monitor: Option<Monitor>, is_root: bool) -> Result<Sinks> {
    let mut sinks = Sinks::default();
    if let Some(m) = monitor {
        sinks.push(m);
    }
    if is_root {
        let config = opts.run_dir.join("config.toml");
        std::fs::write(&config, cfg.to_toml()).with_context(|| format!("cannot write {}", config.display()))?;
        sinks.push(ScalarLog::open(&opts.run_dir.join(scalar_log::FILE_NAME))?);
        if cfg.log.tensorboard {
            sinks.push(crate::tensorboard::sink::TensorBoard::default());
        }
        sinks.push(Progress::new(std::io::stderr().is_terminal()));
        sinks.push(crate::plot::Plots { run_dir: opts.run_dir.clone() });
    }
    Ok(sinks)
}

impl<'a> Run<'a> {
    /// The run's set-up, stage by stage; `extra` readers join the ones it builds.
    pub fn start(cfg: Config, opts: &'a RunOptions, comm: Rc<dyn Collective>, device: Device, extra: Sinks) -> Result<Run<'a>> {
        let is_root = comm.rank() == 0;
        crate::logging::set_rank(comm.rank());
        crate::cpus::set_threads(&cfg, comm.as_ref())?;
        let ckpt_root = checkpoint::checkpoints_dir(&opts.run_dir);
        if is_root {
            prepare_run_dir(opts, &ckpt_root)?;
        }
        // Before anything slow, so that a taken port fails the run at once.
        let monitor = cfg.metrics.enabled.then(|| Monitor::start(&cfg.metrics, comm.as_ref(), device, &opts.run_dir)).transpose()?;
        let mut trainer = build_trainer(&cfg, opts, comm.clone(), device)?;
        let resumed_from = resume(&mut trainer, opts.resume.as_ref(), &ckpt_root, is_root)?;
        let evaluator = (is_root && cfg.eval.every > 0).then(|| load_evaluator(&cfg, opts, device)).transpose()?;
        let mut sinks = sinks(&cfg, opts, monitor, is_root)?;
        sinks.extend(extra);
        let step = trainer.counters().step;
        sinks.start(&RunStart {
            step,
            resumed_from,
            target_step: cfg.train.iterations,
            run_dir: opts.run_dir.clone(),
            rank: comm.rank(),
            world_size: comm.world_size(),
            local_batch: trainer.local_batch() as u64,
        })?;
        Ok(Run {
            stop: StopSignal::install(std::time::Duration::from_secs_f64(cfg.train.stop_grace_seconds))?,
            fixed_noise: trainer.fixed_noise(64),
            ckpt_root,
            is_root,
            sinks,
            evaluator,
            window: (Instant::now(), step),
            started: Instant::now(),
            start_step: step,
            rollbacks: 0,
            reads: ReadTally::default(),
            trainer,
            cfg,
            opts,
        })
    }

    /// The loop: iterations until `train.iterations` or an agreed stop.
    pub fn train(&mut self) -> Result<Outcome> {
        // Rank 0's start-up work (evaluator, files) ends here for everyone: the first
        // collective's deadline does not include it.
        self.trainer.comm().barrier()?;
        while self.trainer.counters().step < self.cfg.train.iterations {
            let reads_before = crate::hostread::count();
            self.trainer.iteration()?;
            // Any rank's signal stops every rank after this same iteration.
            let stopping = self.trainer.comm().any(self.stop.requested())?;
            let due = Due::at(self.trainer.counters().step, &self.cfg, stopping);
            if !due.sync() {
                self.reads.between += crate::hostread::count() - reads_before;
                self.sinks.step(self.trainer.counters().step);
                continue;
            }
            let rolled_back = self.sync_step(&due)?;
            self.reads.at_sync += crate::hostread::count() - reads_before;
            if rolled_back {
                continue;
            }
            if stopping {
                let sig = self.stop.received();
                if self.is_root {
                    tracing::info!("stop requested (signal {sig} on some rank): checkpoint written at step {}", self.trainer.counters().step);
                }
                return Ok(Outcome::Stopped(if sig == 0 { signal_hook::consts::SIGTERM } else { sig }));
            }
            if due.root_work() {
                self.trainer.comm().barrier()?;
            }
        }
        Ok(Outcome::Finished)
    }

    /// A sync step: the device's figures to the host and to every reader, then either a
    /// rollback (true) or the step's duties: evaluation, the log, samples, the checkpoint.
    fn sync_step(&mut self, due: &Due) -> Result<bool> {
        self.reads.sync_steps += 1;
        let iterations = self.trainer.sync()?;
        self.sinks.sync(&iterations)?;
        let streak = self.trainer.take_longest_skip_streak();
        if streak >= self.cfg.train.max_consecutive_skips {
            // Every rank saw the same skips (the flag is reduced) at the same sync, so all
            // roll back together.
            self.roll_back(streak)?;
            return Ok(true);
        }
        let step = self.trainer.counters().step;
        self.sinks.step(step);
        // Rank 0 alone evaluates; the others wait for it at the barrier after the step.
        let eval = match &self.evaluator {
            Some(ev) if due.eval => Some(evaluate(ev, &self.trainer)?),
            _ => None,
        };
        if due.log {
            let last = iterations.into_iter().last().expect("a sync follows at least one iteration");
            let record = self.step_record(last, eval);
            self.sinks.log(&record)?;
        }
        if self.is_root && due.samples {
            self.write_samples()?;
        }
        if due.checkpoint {
            self.save_checkpoint()?;
        }
        if self.is_root && due.root_work() {
            self.trainer.stall_root_work();
        }
        Ok(false)
    }

    /// The record of this logging step: its last iteration, the rate since the previous
    /// logging step, the run's figures, the evaluation.
    fn step_record(&mut self, iteration: IterationRecord, eval: Option<EvalReport>) -> StepRecord {
        let step = iteration.step;
        let seconds = self.window.0.elapsed().as_secs_f64().max(1e-9);
        let batch = self.cfg.data.batch_size as u64;
        let images_per_iteration = (batch * self.cfg.train.n_critic) as f64;
        let images_per_second = (step - self.window.1) as f64 * images_per_iteration / seconds;
        self.window = (Instant::now(), step);
        StepRecord {
            images: iteration.critic_step * batch,
            iteration,
            images_per_second,
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            world_size: self.trainer.comm().world_size(),
            eval,
        }
    }

    /// Rank 0's sample grid of the fixed noise, as samples/step-N.png and samples/latest.png,
    /// then to every reader.
    fn write_samples(&mut self) -> Result<()> {
        let t = &self.trainer;
        let side = crate::data::mnist::SIDE;
        let ema = self.cfg.ema.enabled() && self.cfg.ema.use_for_samples;
        let grid = SampleGrid {
            step: t.counters().step,
            bytes: t.sample_bytes(&self.fixed_noise),
            n: self.fixed_noise.size()[0] as usize,
            channels: t.sampling_generator().channels as usize,
            height: side,
            width: side,
            ema,
        };
        let dir = self.opts.run_dir.join("samples");
        crate::samples::write_grid(&dir.join(format!("step-{:09}.png", grid.step)), &grid.bytes, grid.n, grid.channels, side)?;
        crate::samples::write_grid(&dir.join("latest.png"), &grid.bytes, grid.n, grid.channels, side)?;
        self.sinks.samples(&grid)
    }

    /// Checks that the ranks agree, then rank 0 writes the trainer's snapshot (unless it holds
    /// a non-finite value) and prunes old checkpoints.
    fn save_checkpoint(&self) -> Result<()> {
        let t = &self.trainer;
        let sums = t.comm().all_gather_u64(t.param_checksum()?)?;
        if sums.iter().any(|&s| s != sums[0]) {
            bail!("parameters differ between ranks at step {} (checksums {sums:x?}): ranks have diverged", t.counters().step);
        }
        if !self.is_root {
            return Ok(());
        }
        let snapshot = t.snapshot()?;
        if let Some(name) = snapshot.non_finite_tensor() {
            // Never persist a poisoned state; the previous checkpoint stays the newest.
            tracing::warn!("not writing the checkpoint at step {}: tensor {name} holds non-finite values", t.counters().step);
            return Ok(());
        }
        snapshot.save(&self.ckpt_root, &self.cfg, t.comm().world_size())?;
        checkpoint::prune(&self.ckpt_root, self.cfg.train.keep_checkpoints)
    }

    /// Returns to the newest usable checkpoint with lower learning rates, after `streak`
    /// non-finite updates in a row; logged as an event.
    fn roll_back(&mut self, streak: u64) -> Result<()> {
        self.rollbacks += 1;
        let max = self.cfg.train.max_rollbacks;
        if self.rollbacks > max {
            bail!("{streak} consecutive non-finite updates after {max} rollbacks (train.max_rollbacks): the run keeps diverging");
        }
        let t = &mut self.trainer;
        let Some((_, snapshot)) = Snapshot::load_latest(&self.ckpt_root, &t.state_shapes(), &self.cfg)? else {
            bail!(
                "{streak} consecutive non-finite updates at step {} and no checkpoint to roll back to in {}",
                t.counters().step,
                self.ckpt_root.display()
            );
        };
        t.restore(&snapshot, Restore::Rollback)?;
        let scale = snapshot.counters.lr_scale * self.cfg.train.rollback_lr_scale;
        t.set_lr_scale(scale);
        if self.is_root {
            tracing::warn!(
                "rolled back to step {} after {streak} consecutive non-finite updates; learning rates now x{scale}",
                snapshot.counters.step
            );
        }
        self.sinks.rollback(&Rollback { step: snapshot.counters.step, lr_scale: scale, streak })
    }

    /// The end of the run: every rank met, every reader's clean end (the progress line ends,
    /// the exporter's targets are withdrawn, the plots drawn), then the messages.
    pub fn finish(mut self, outcome: Outcome) -> Result<Outcome> {
        let step = self.trainer.counters().step;
        let seconds = self.started.elapsed().as_secs_f64();
        self.trainer.comm().barrier()?;
        let stopped_by = match outcome {
            Outcome::Finished => None,
            Outcome::Stopped(sig) => Some(sig),
        };
        self.sinks.finish(&RunEnd { step, seconds, stopped_by })?;
        if self.is_root {
            if outcome == Outcome::Finished {
                tracing::info!("finished {step} iterations ({} this run) in {seconds:.1} s; run directory {}", step - self.start_step, self.opts.run_dir.display());
            }
            tracing::info!("{}", self.reads);
        }
        Ok(outcome)
    }
}

/// Evaluates the evaluated generator (see `Trainer::evaluated_generator`) on `eval.n`
/// samples, the same noise every time.
fn evaluate(ev: &RunEvaluator, t: &Trainer) -> Result<EvalReport> {
    let start = Instant::now();
    let cfg = t.config();
    let images = crate::eval::generate(t.evaluated_generator(), cfg.eval.n, cfg.train.seed);
    let metrics = ev.evaluate(&images)?;
    Ok(EvalReport { step: t.counters().step, seconds: start.elapsed().as_secs_f64(), metrics })
}
