//! A training run on one rank, in three parts: `Run::start` (threads, run directory, metrics,
//! data, trainer, resume, evaluator, files), `Run::train` (the loop) and `Run::finish` (the
//! end: messages, the metrics' clean end, plots).
//!
//! The loop reads from the device only at sync steps (logging, samples, checkpoints,
//! evaluation, a stop, the end; the same steps on every rank): there `Trainer::sync` brings
//! every update's figures to the host, and the decisions that need them (rollback, health,
//! what is logged) are made. Between sync steps an iteration only queues work. A stop request
//! travels in a host-side agreement after every iteration. After rank 0's own work (samples,
//! evaluation, checkpoints) every rank meets at a host barrier bounded by
//! `dist.root_work_timeout_seconds`, so that `dist.timeout_seconds` times collectives alone.

use super::report::{self, Progress};
use super::snapshot::{Restore, Snapshot};
use super::{IterationStats, Monitor, Outcome, Resume, RunOptions, Trainer};
use crate::checkpoint;
use crate::config::Config;
use crate::data::{DeviceImages, Mnist, Split};
use crate::collectives::Collective;
use crate::eval::RunEvaluator;
use crate::scalar_log::{self as log, number, ScalarLog};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
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
    monitor: Option<Monitor>,
    /// Rank 0's, when `eval.every > 0`.
    evaluator: Option<RunEvaluator>,
    /// Rank 0's scalar log.
    log: Option<ScalarLog>,
    /// Rank 0's TensorBoard event file, with `[log] tensorboard`.
    tensorboard: Option<crate::tensorboard::EventWriter>,
    stop: StopSignal,
    fixed_noise: Tensor,
    progress: Option<Progress>,
    /// Start of the current rate window: (time, step).
    window: (Instant, u64),
    started: Instant,
    start_step: u64,
    rollbacks: u32,
    reads: ReadTally,
    /// The newest penalty value any synced critic update computed (for the progress line).
    last_gp: Option<f64>,
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

/// Checks that the run directory can be created and written, before any training.
fn prepare_run_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create run directory {}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| format!("run directory {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    for sub in ["checkpoints", "samples"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    Ok(())
}

impl<'a> Run<'a> {
    pub fn start(cfg: Config, opts: &'a RunOptions, comm: Rc<dyn Collective>, device: Device) -> Result<Run<'a>> {
        let is_root = comm.rank() == 0;
        crate::logging::set_rank(comm.rank());
        crate::cpus::set_threads(&cfg, comm.as_ref())?;
        let ckpt_root = opts.run_dir.join("checkpoints");
        if is_root {
            prepare_run_dir(&opts.run_dir)?;
            if opts.resume.is_none() && !checkpoint::list(&ckpt_root).is_empty() {
                bail!(
                    "run directory {} already holds checkpoints: pass --resume auto to continue that run, or choose another --run-dir",
                    opts.run_dir.display()
                );
            }
        }
        // Before anything slow, so that a taken port fails the run at once.
        let monitor = cfg.metrics.enabled.then(|| Monitor::start(&cfg.metrics, comm.as_ref(), device, &opts.run_dir)).transpose()?;
        if let Some(m) = &monitor {
            m.metrics.set_target_step(cfg.train.iterations);
        }

        // The data, the trainer, and where it resumes.
        let mut mnist = Mnist::load(&opts.data_dir, Split::Train)?;
        mnist.truncate(cfg.data.limit);
        let data = DeviceImages::from_mnist(&mnist, device)?;
        drop(mnist);
        let mut trainer = Trainer::new(cfg.clone(), comm, device, data)?;
        if let Some(resume) = &opts.resume {
            let found = match resume {
                Resume::Auto => Snapshot::load_latest(&ckpt_root, &trainer)?,
                Resume::Path(p) => Some((p.clone(), Snapshot::load(p, &trainer)?)),
            };
            match found {
                Some((dir, snapshot)) => {
                    trainer.restore(&snapshot, Restore::Resume)?;
                    if is_root {
                        tracing::info!("resumed from {} at step {}", dir.display(), snapshot.counters.step);
                    }
                }
                None if is_root => tracing::info!("no checkpoint in {}: starting from scratch", ckpt_root.display()),
                None => {}
            }
        }
        trainer.broadcast_state()?;
        // An asynchronous failure of the start-up broadcast surfaces here.
        trainer.comm.check()?;

        // Rank 0's evaluator and files.
        let evaluator = match is_root && cfg.eval.every > 0 {
            true => {
                Some(RunEvaluator::load(&cfg.eval, &opts.data_dir, device).context("eval.every > 0")?)
            }
            false => None,
        };
        let log = match is_root {
            true => {
                let config = opts.run_dir.join("config.toml");
                std::fs::write(&config, cfg.to_toml()).with_context(|| format!("cannot write {}", config.display()))?;
                Some(ScalarLog::open(&opts.run_dir.join(log::FILE_NAME))?)
            }
            false => None,
        };
        // A resumed run starts at its checkpoint's step: what an earlier process wrote after
        // it is orphaned, and TensorBoard drops it at this file's START.
        let tensorboard = match is_root && cfg.log.tensorboard {
            true => Some(crate::tensorboard::EventWriter::create(&opts.run_dir, trainer.counters.step + 1)?),
            false => None,
        };
        let stop = StopSignal::install(std::time::Duration::from_secs_f64(cfg.train.stop_grace_seconds))?;
        let fixed_noise = trainer.fixed_noise(64);
        let step = trainer.counters.step;
        let progress = is_root.then(|| Progress::new(std::io::stderr().is_terminal(), cfg.train.iterations, step));
        Ok(Run {
            ckpt_root,
            is_root,
            monitor,
            evaluator,
            log,
            tensorboard,
            stop,
            fixed_noise,
            progress,
            window: (Instant::now(), step),
            started: Instant::now(),
            start_step: step,
            rollbacks: 0,
            reads: ReadTally::default(),
            last_gp: None,
            trainer,
            cfg,
            opts,
        })
    }

    /// The loop: iterations until `train.iterations` or an agreed stop.
    pub fn train(&mut self) -> Result<Outcome> {
        // Rank 0's start-up work (evaluator, files) ends here for everyone: the first
        // collective's deadline does not include it.
        self.trainer.comm.barrier()?;
        while self.trainer.counters.step < self.cfg.train.iterations {
            let reads_before = crate::hostread::count();
            self.trainer.iteration()?;
            // Any rank's signal stops every rank after this same iteration.
            let stopping = self.trainer.comm.any(self.stop.requested())?;
            let due = Due::at(self.trainer.counters.step, &self.cfg, stopping);
            if !due.sync() {
                self.reads.between += crate::hostread::count() - reads_before;
                self.show_step();
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
                    tracing::info!("stop requested (signal {sig} on some rank): checkpoint written at step {}", self.trainer.counters.step);
                }
                return Ok(Outcome::Stopped(if sig == 0 { signal_hook::consts::SIGTERM } else { sig }));
            }
            if due.root_work() {
                self.trainer.comm.barrier()?;
            }
        }
        Ok(Outcome::Finished)
    }

    /// A sync step: the device's figures to the host, then either a rollback (true) or the
    /// step's duties: metrics, evaluation, the log, samples, the checkpoint.
    fn sync_step(&mut self, due: &Due) -> Result<bool> {
        self.reads.sync_steps += 1;
        let iterations = IterationStats::group(self.trainer.sync()?);
        if let Some(gp) = iterations.iter().flat_map(|it| &it.critic).filter_map(|u| u.get(log::D_GP.key)).last() {
            self.last_gp = Some(gp);
        }
        if let Some(m) = &self.monitor {
            for it in &iterations {
                m.record_iteration(&self.trainer, it);
            }
        }
        let streak = std::mem::take(&mut self.trainer.longest_skip_streak);
        if streak >= self.cfg.train.max_consecutive_skips {
            // Every rank saw the same skips (the flag is reduced) at the same sync, so all
            // roll back together.
            self.roll_back(streak)?;
            self.flush_tensorboard()?;
            return Ok(true);
        }
        self.show_step();
        let last = iterations.last().expect("a sync follows at least one iteration");
        // Rank 0 alone evaluates; the others wait for it at the barrier after the step.
        let quality = match &self.evaluator {
            Some(ev) if due.eval => Some(evaluate(ev, &self.trainer, &self.cfg)?),
            _ => None,
        };
        if due.log {
            self.write_log(last, quality)?;
        }
        if self.is_root && due.samples {
            self.write_samples()?;
        }
        if due.checkpoint {
            self.save_checkpoint()?;
        }
        if self.is_root && due.root_work() {
            self.trainer.faults.stall_root_work();
        }
        self.flush_tensorboard()?;
        Ok(false)
    }

    fn flush_tensorboard(&mut self) -> Result<()> {
        self.tensorboard.as_mut().map_or(Ok(()), |tb| tb.flush())
    }

    fn show_step(&self) {
        if let Some(p) = &self.progress {
            p.set_step(self.trainer.counters.step);
        }
    }

    /// The scalar-log record of this step (with the evaluation's scores), and the progress.
    fn write_log(&mut self, last: &IterationStats, quality: Option<Map<String, Value>>) -> Result<()> {
        let step = self.trainer.counters.step;
        let seconds = self.window.0.elapsed().as_secs_f64().max(1e-9);
        let images_per_iteration = (self.cfg.data.batch_size as u64 * self.cfg.train.n_critic) as f64;
        let rate = (step - self.window.1) as f64 * images_per_iteration / seconds;
        self.window = (Instant::now(), step);
        let mut record = report::log_record(&self.trainer, last, rate, self.started.elapsed().as_secs_f64());
        if let Some(q) = quality {
            if let Some(m) = &self.monitor {
                m.metrics.set_eval_scores(step, number(&q, log::FID), number(&q, log::CLASSES_COVERED));
                for name in crate::metrics::EVAL_SCORES {
                    if let Some(v) = number(&q, name) {
                        m.metrics.set_eval_score(name, v);
                    }
                }
            }
            record.extend(q);
        }
        if let Some(log) = self.log.as_mut() {
            log.write(&record)?;
        }
        if let Some(tb) = self.tensorboard.as_mut() {
            tb.scalars(step, &crate::tensorboard::record_scalars(&record))?;
        }
        if let Some(p) = &self.progress {
            p.report(report::progress_line(&record, self.last_gp));
        }
        Ok(())
    }

    fn write_samples(&mut self) -> Result<()> {
        let t = &self.trainer;
        let bytes = t.sample_bytes(&self.fixed_noise);
        let n = self.fixed_noise.size()[0] as usize;
        let (side, ch) = (crate::data::mnist::SIDE, t.sampling_generator().channels as usize);
        let dir = self.opts.run_dir.join("samples");
        crate::samples::write_grid(&dir.join(format!("step-{:09}.png", t.counters.step)), &bytes, n, ch, side)?;
        crate::samples::write_grid(&dir.join("latest.png"), &bytes, n, ch, side)?;
        if let Some(tb) = self.tensorboard.as_mut() {
            let (png, width, height) = crate::samples::grid_png(&bytes, n, ch, side)?;
            tb.image(crate::tensorboard::SAMPLES_TAG, t.counters.step, &png, width, height, ch as u32)?;
        }
        Ok(())
    }

    /// Checks that the ranks agree, then rank 0 writes the trainer's snapshot (unless it holds
    /// a non-finite value) and prunes old checkpoints.
    fn save_checkpoint(&self) -> Result<()> {
        let t = &self.trainer;
        let sums = t.comm.all_gather_u64(t.param_checksum()?)?;
        if sums.iter().any(|&s| s != sums[0]) {
            bail!("parameters differ between ranks at step {} (checksums {sums:x?}): ranks have diverged", t.counters.step);
        }
        if !self.is_root {
            return Ok(());
        }
        let snapshot = t.snapshot()?;
        if let Some(name) = snapshot.non_finite_tensor() {
            // Never persist a poisoned state; the previous checkpoint stays the newest.
            tracing::warn!("not writing the checkpoint at step {}: tensor {name} holds non-finite values", t.counters.step);
            return Ok(());
        }
        snapshot.save(&self.ckpt_root, &self.cfg, t.comm.world_size())?;
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
        let Some((_, snapshot)) = Snapshot::load_latest(&self.ckpt_root, t)? else {
            bail!(
                "{streak} consecutive non-finite updates at step {} and no checkpoint to roll back to in {}",
                t.counters.step,
                self.ckpt_root.display()
            );
        };
        t.restore(&snapshot, Restore::Rollback)?;
        if let Some(tb) = self.tensorboard.as_mut() {
            // The steps after the checkpoint are trained again: their first curves are orphaned.
            tb.restart(snapshot.counters.step + 1)?;
        }
        let scale = snapshot.counters.lr_scale * self.cfg.train.rollback_lr_scale;
        t.set_lr_scale(scale);
        if self.is_root {
            tracing::warn!(
                "rolled back to step {} after {streak} consecutive non-finite updates; learning rates now x{scale}",
                snapshot.counters.step
            );
        }
        if let Some(log) = self.log.as_mut() {
            log.write(&report::rollback_record(t))?;
        }
        Ok(())
    }

    /// The end of the run: messages, every rank met, the metrics' clean end, rank 0's plots.
    pub fn finish(self, outcome: Outcome) -> Result<Outcome> {
        if let Some(p) = self.progress {
            p.finish();
        }
        if let Some(mut tb) = self.tensorboard {
            tb.flush()?;
        }
        let t = &self.trainer;
        if self.is_root && outcome == Outcome::Finished {
            tracing::info!(
                "finished {} iterations ({} this run) in {:.1} s; run directory {}",
                t.counters.step,
                t.counters.step - self.start_step,
                self.started.elapsed().as_secs_f64(),
                self.opts.run_dir.display()
            );
        }
        if self.is_root {
            tracing::info!("{}", self.reads);
        }
        t.comm.barrier()?;
        if let Some(m) = self.monitor {
            m.finish()?;
        }
        if self.is_root {
            // The curves without any server; a failure here must not fail a finished run.
            match crate::plot::write_run_plots(&self.opts.run_dir) {
                Ok(files) => tracing::info!("plots: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")),
                Err(e) => tracing::warn!("cannot write plots: {e:#}"),
            }
        }
        Ok(outcome)
    }
}

/// Evaluates the evaluated generator (see `Trainer::evaluated_generator`) on `eval.n`
/// samples, the same noise every time.
fn evaluate(ev: &RunEvaluator, t: &Trainer, cfg: &Config) -> Result<Map<String, Value>> {
    let start = Instant::now();
    let images = crate::eval::generate(t.evaluated_generator(), cfg.eval.n, cfg.train.seed);
    let mut m = ev.evaluate(&images)?;
    m.insert(log::EVAL_SECONDS.into(), json!(start.elapsed().as_secs_f64()));
    Ok(m)
}
