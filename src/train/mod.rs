//! The training run: device and rank set-up, run directory, resume, the loop (critic phase,
//! generator phase, log, samples, checkpoint), and a clean stop on SIGTERM/SIGINT that every
//! rank agrees on.
//!
//! The loop reads from the device only at sync steps (logging, samples, checkpoints,
//! evaluation, a stop, the end; the same steps on every rank): there `Trainer::sync` brings
//! every update's figures to the host, and the decisions that need them (rollback, health,
//! what is logged) are made. Between sync steps an iteration only queues work. A stop request
//! travels in a host-side agreement after every iteration. After rank 0's own work (samples,
//! evaluation, checkpoints) every rank meets at a host barrier bounded by
//! `dist.root_work_timeout_seconds`, so that `dist.timeout_seconds` times collectives alone.

pub mod observe;
pub mod phases;
pub mod step;

use crate::checkpoint::{self, Meta};
use crate::config::Config;
use crate::data::{DeviceImages, Mnist, Split};
use crate::dist::{self, Collective};
use crate::runlog::ScalarLog;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
pub use step::{IterationStats, Trainer, UpdateStats};
use tch::Device;

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

/// libtorch's CPU threads for this rank: `train.threads` when set, else the cores of this
/// process's affinity mask divided among the ranks on this node that have the same mask (all
/// of them when nothing binds, one when the launcher gave each rank cores of its own). Also on
/// GPU runs, where the CPU still draws noise and stages data. libtorch's own default depends
/// on the launcher (every core in a plain process, 1 under mpirun), not on the cores a rank
/// has. A collective when the count is not configured. Returns the count and how it was
/// chosen, for the log.
pub fn threads_per_rank(cfg: &Config, comm: &dyn Collective) -> Result<(i32, String)> {
    if cfg.train.threads > 0 {
        return Ok((cfg.train.threads, "train.threads".into()));
    }
    let cpus = crate::cpus::allowed()?;
    let key = crate::cpus::share_key(&cpus);
    let sharing = comm.all_gather_u64(key)?.iter().filter(|&&k| k == key).count();
    let n = crate::cpus::threads_for(cpus.len(), sharing);
    let how = format!("affinity mask of {} CPU(s), shared by {sharing} rank(s) on this node", cpus.len());
    Ok((n as i32, how))
}

/// Sets libtorch's thread count for this rank (see `threads_per_rank`) and logs it.
pub fn set_threads(cfg: &Config, comm: &dyn Collective) -> Result<()> {
    let (n, how) = threads_per_rank(cfg, comm)?;
    tch::set_num_threads(n);
    tracing::info!("libtorch CPU threads: {n} ({how})");
    Ok(())
}

/// Installs SIGTERM/SIGINT handlers that only set a flag; the loop acts on it at a safe point.
/// A watchdog thread ends the process if that takes longer than `grace`.
fn stop_flag(grace: std::time::Duration) -> Result<(Arc<AtomicBool>, Arc<AtomicI32>)> {
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
    Ok((flag, which))
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

/// Trains `cfg` and returns how the run ended. Runs on every rank.
pub fn run(cfg: Config, opts: &RunOptions) -> Result<Outcome> {
    let started = dist::init(&cfg.dist, &cfg.train.device)?;
    crate::logging::set_rank(started.comm.rank());
    tracing::info!("{}", started.report);
    let comm: Rc<dyn Collective> = Rc::from(started.comm);
    let result = run_with(cfg, opts, comm.clone(), started.device);
    dist::or_abort(comm.as_ref(), result)
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

fn run_with(cfg: Config, opts: &RunOptions, comm: Rc<dyn Collective>, device: Device) -> Result<Outcome> {
    let rank = comm.rank();
    let is_root = rank == 0;
    crate::logging::set_rank(rank);
    set_threads(&cfg, comm.as_ref())?;
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
    let monitor = match cfg.metrics.enabled {
        true => Some(observe::Monitor::start(&cfg.metrics, comm.as_ref(), device, &opts.run_dir)?),
        false => None,
    };
    if let Some(m) = &monitor {
        m.metrics.set_target_step(cfg.train.iterations);
    }
    let mut mnist = Mnist::load(&opts.data_dir, Split::Train)?;
    mnist.truncate(cfg.data.limit);
    let data = DeviceImages::from_mnist(&mnist, device)?;
    drop(mnist);
    let mut trainer = Trainer::new(cfg.clone(), comm, device, data)?;

    if let Some(resume) = &opts.resume {
        let shapes = trainer.state_shapes();
        let loaded = match resume {
            Resume::Auto => checkpoint::load_latest(&ckpt_root, &shapes)?,
            Resume::Path(p) => Some(checkpoint::load(p, &shapes)?),
        };
        if let Some(l) = loaded {
            restore(&mut trainer, &l)?;
            // Only on resume: a rollback keeps the live detectors, whose counts include the
            // non-finite updates that caused it.
            if let Some(h) = l.meta.health.get("critic") {
                trainer.health_d.restore(h);
            }
            if let Some(h) = l.meta.health.get("generator") {
                trainer.health_g.restore(h);
            }
            if is_root {
                tracing::info!("resumed from {} at step {}", l.dir.display(), l.meta.step);
            }
        } else if is_root {
            tracing::info!("no checkpoint in {}: starting from scratch", ckpt_root.display());
        }
    }
    trainer.broadcast_state()?;
    // An asynchronous failure of the start-up broadcast surfaces here.
    trainer.comm.check()?;

    let evaluator = if is_root && cfg.eval.every > 0 { Some(load_evaluator(&cfg, &opts.data_dir, device)?) } else { None };
    let mut log = if is_root {
        std::fs::write(opts.run_dir.join("config.toml"), cfg.to_toml())
            .with_context(|| format!("cannot write {}", opts.run_dir.join("config.toml").display()))?;
        Some(ScalarLog::open(&opts.run_dir.join("metrics.jsonl"))?)
    } else {
        None
    };
    let (stop, which_signal) = stop_flag(std::time::Duration::from_secs_f64(cfg.train.stop_grace_seconds))?;
    let fixed_noise = trainer.fixed_noise(64);
    let progress = is_root.then(|| Progress::new(std::io::stderr().is_terminal(), cfg.train.iterations, trainer.step));
    let images_per_iteration = (cfg.data.batch_size as u64 * cfg.train.n_critic) as f64;
    let mut window_start = (Instant::now(), trainer.step);
    let run_start = Instant::now();
    let start_step = trainer.step;

    let mut outcome = Outcome::Finished;
    let mut rollbacks = 0;
    let mut reads = ReadTally::default();
    // Rank 0's start-up work (evaluator, files) ends here for everyone: the first collective's
    // deadline does not include it.
    trainer.comm.barrier()?;
    while trainer.step < cfg.train.iterations {
        let reads_before = crate::hostread::count();
        trainer.iteration()?;
        // Any rank's signal stops every rank after this same iteration.
        let stopping = trainer.comm.any(stop.load(Ordering::SeqCst))?;
        let step = trainer.step;
        let due = Due::at(step, &cfg, stopping);
        if !due.sync() {
            reads.between += crate::hostread::count() - reads_before;
            if let Some(p) = &progress {
                p.bar.set_position(step);
            }
            continue;
        }
        reads.sync_steps += 1;
        let iterations = IterationStats::group(trainer.sync()?);
        if let Some(m) = &monitor {
            for it in &iterations {
                m.record_iteration(&trainer, &it.critic, &it.generator);
            }
        }
        let streak = std::mem::take(&mut trainer.longest_skip_streak);
        if streak >= cfg.train.max_consecutive_skips {
            // Every rank saw the same skips (the flag is reduced) at the same sync, so all
            // roll back together.
            rollbacks += 1;
            rollback(&mut trainer, &ckpt_root, &cfg, rollbacks, streak)?;
            if let Some(log) = log.as_mut() {
                let mut rec = Map::new();
                rec.insert("step".into(), json!(trainer.step));
                rec.insert("event".into(), json!("rollback"));
                rec.insert("lr_scale".into(), json!(trainer.lr_scale));
                log.write(&rec)?;
            }
            reads.at_sync += crate::hostread::count() - reads_before;
            continue;
        }
        let last = iterations.last().expect("a sync follows at least one iteration");
        let (critic_stats, g_stats) = (&last.critic, &last.generator);
        if let Some(p) = &progress {
            p.bar.set_position(step);
        }
        let last_d = critic_stats.last().expect("n_critic >= 1");
        // Rank 0 alone evaluates; the others wait for it at the barrier below.
        let quality = match &evaluator {
            Some(ev) if due.eval => Some(evaluate(ev, &trainer, &cfg)?),
            _ => None,
        };
        if due.log {
            let elapsed = window_start.0.elapsed().as_secs_f64().max(1e-9);
            let rate = (step - window_start.1) as f64 * images_per_iteration / elapsed;
            window_start = (Instant::now(), step);
            let mut record = log_record(&trainer, last_d, g_stats, critic_stats, rate, run_start.elapsed().as_secs_f64());
            if let Some(q) = quality {
                if let Some(m) = &monitor {
                    let get = |k: &str| q.get(k).and_then(Value::as_f64);
                    m.metrics.set_eval_scores(step, get("fid"), get("classes_covered"));
                }
                record.extend(q);
            }
            if let Some(log) = log.as_mut() {
                log.write(&record)?;
            }
            if let Some(p) = &progress {
                p.report(progress_line(&record));
            }
        }
        if is_root && due.samples {
            write_samples(&trainer, &fixed_noise, &opts.run_dir, step)?;
        }
        if due.checkpoint {
            save_checkpoint(&trainer, &ckpt_root, &cfg)?;
        }
        if is_root && due.root_work() && cfg.faults.root_work_delay_seconds > 0.0 {
            // Stands for slow storage or a long evaluation, after everything the others join.
            std::thread::sleep(std::time::Duration::from_secs_f64(cfg.faults.root_work_delay_seconds));
        }
        reads.at_sync += crate::hostread::count() - reads_before;
        if stopping {
            let sig = which_signal.load(Ordering::SeqCst);
            if is_root {
                tracing::info!("stop requested (signal {sig} on some rank): checkpoint written at step {step}");
            }
            outcome = Outcome::Stopped(if sig == 0 { signal_hook::consts::SIGTERM } else { sig });
            break;
        }
        if due.root_work() {
            trainer.comm.barrier()?;
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    if is_root && outcome == Outcome::Finished {
        let secs = run_start.elapsed().as_secs_f64();
        tracing::info!(
            "finished {} iterations ({} this run) in {:.1} s; run directory {}",
            trainer.step,
            trainer.step - start_step,
            secs,
            opts.run_dir.display()
        );
    }
    if is_root {
        tracing::info!("{reads}");
    }
    trainer.comm.barrier()?;
    if let Some(m) = monitor {
        m.finish()?;
    }
    if is_root {
        // The curves without any server; a failure here must not fail a finished run.
        match crate::plot::write_run_plots(&opts.run_dir) {
            Ok(files) => tracing::info!("plots: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")),
            Err(e) => tracing::warn!("cannot write plots: {e:#}"),
        }
    }
    Ok(outcome)
}

/// The classifier and test-set statistics for periodic evaluation, checked before training.
fn load_evaluator(cfg: &Config, data_dir: &Path, device: Device) -> Result<crate::eval::Evaluator> {
    let flag = (!cfg.eval.classifier.is_empty()).then(|| Path::new(&cfg.eval.classifier));
    let path = crate::eval::classifier::resolve_path(flag, data_dir);
    crate::eval::Evaluator::load(&path, device).context("eval.every > 0 needs the MNIST classifier")
}

/// Evaluates the current generator on `eval.n` samples (the same noise every time): the EMA
/// weights when the run keeps them, as `gandist eval` does for the run's checkpoints.
fn evaluate(ev: &crate::eval::Evaluator, t: &Trainer, cfg: &Config) -> Result<Map<String, Value>> {
    let start = Instant::now();
    let g = t.ema.as_ref().map_or(&t.generator, |(_, g)| g);
    let images = crate::eval::generate(g, cfg.eval.n, cfg.train.seed);
    let mut m = ev.evaluate(&images)?.to_json();
    m.insert("eval_seconds".into(), json!(start.elapsed().as_secs_f64()));
    Ok(m)
}

/// Rank 0's progress: a bar on a terminal; elsewhere (a file, `sbatch` output) a log line per
/// logged step. indicatif keeps the elapsed time and the estimate of the time left for both.
struct Progress {
    bar: indicatif::ProgressBar,
    interactive: bool,
}

impl Progress {
    fn new(interactive: bool, total: u64, start: u64) -> Progress {
        let bar = match interactive {
            true => indicatif::ProgressBar::new(total),
            false => indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::hidden()),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{pos}/{len} {bar:25} {elapsed_precise} ETA {eta_precise} {msg}")
                .expect("static template"),
        );
        bar.set_position(start);
        // A resumed run starts at its checkpoint's step: that jump is not this run's speed.
        bar.reset_eta();
        Progress { bar, interactive }
    }

    fn report(&self, line: String) {
        if self.interactive {
            self.bar.set_message(line);
        } else {
            let (pos, len) = (self.bar.position(), self.bar.length().unwrap_or(0));
            tracing::info!("{} {line}", progress_prefix(pos, len, self.bar.elapsed(), self.bar.eta()));
        }
    }

    fn finish(self) {
        if self.interactive {
            self.bar.finish();
        }
    }
}

/// `step 120/2000 (6.0%) elapsed 0:01:05 ETA 0:17:02`: what a batch log needs to tell how far
/// a run is and when it will end.
fn progress_prefix(step: u64, total: u64, elapsed: std::time::Duration, eta: std::time::Duration) -> String {
    let pct = if total == 0 { 100.0 } else { 100.0 * step as f64 / total as f64 };
    format!("step {step}/{total} ({pct:.1}%) elapsed {} ETA {}", clock(elapsed), clock(eta))
}

/// `h:mm:ss`, hours unbounded.
fn clock(d: std::time::Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn log_record(t: &Trainer, d: &UpdateStats, g: &UpdateStats, all_d: &[UpdateStats], rate: f64, elapsed: f64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("step".into(), json!(t.step));
    m.insert("critic_step".into(), json!(t.critic_step));
    m.insert("images".into(), json!(t.critic_step * t.cfg.data.batch_size as u64));
    for (k, v) in d.scalars.iter().chain(&g.scalars) {
        m.insert(k.to_string(), json!(v));
    }
    if let Some(c) = d.clip {
        m.insert("d_grad_norm".into(), json!(c.norm_before));
        m.insert("d_grad_norm_clipped".into(), json!(c.norm_after));
    }
    for (prefix, s) in [("d", d), ("g", g)] {
        for (layer, v) in &s.layer_norms {
            m.insert(format!("{prefix}_grad_norm.{layer}"), json!(v));
        }
    }
    if let Some(c) = g.clip {
        m.insert("g_grad_norm".into(), json!(c.norm_before));
        m.insert("g_grad_norm_clipped".into(), json!(c.norm_after));
        m.insert("g_clipped".into(), json!(c.clipped));
    }
    for (prefix, h) in [("d", &t.health_d), ("g", &t.health_g)] {
        let c = h.counts();
        m.insert(format!("{prefix}_health"), json!(h.state().as_str()));
        m.insert(format!("{prefix}_vanishing_updates"), json!(c.vanishing));
        m.insert(format!("{prefix}_exploding_updates"), json!(c.exploding));
        m.insert(format!("{prefix}_nonfinite_updates"), json!(c.non_finite));
    }
    let d_clips = all_d.iter().filter(|s| s.clip.is_some_and(|c| c.clipped)).count();
    m.insert("d_clipped_updates".into(), json!(d_clips));
    m.insert("skipped_updates".into(), json!(t.skipped_updates));
    m.insert("images_per_second".into(), json!(rate));
    m.insert("elapsed_seconds".into(), json!(elapsed));
    m.insert("world_size".into(), json!(t.comm.world_size()));
    m.insert("lr_scale".into(), json!(t.lr_scale));
    m
}

fn progress_line(r: &Map<String, Value>) -> String {
    let f = |k: &str| r.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let mut health = String::new();
    for net in ["d", "g"] {
        if let Some(s) = r.get(&format!("{net}_health")).and_then(|v| v.as_str()).filter(|s| *s != "healthy") {
            health.push_str(&format!(" {net}-grad {s}"));
        }
    }
    format!(
        "d_loss {:.4} g_loss {:.4} W {:.4} gp {:.4} |gd| {:.3} |gg| {:.3} {:.0} img/s{health}",
        f("d_loss"),
        f("g_loss"),
        f("wasserstein"),
        f("d_gp"),
        f("d_grad_norm"),
        f("g_grad_norm"),
        f("images_per_second")
    )
}

fn write_samples(t: &Trainer, z: &tch::Tensor, run_dir: &Path, step: u64) -> Result<()> {
    let bytes = t.sample_bytes(z);
    let n = z.size()[0] as usize;
    let (side, ch) = (crate::data::mnist::SIDE, t.generator.channels as usize);
    crate::samples::write_grid(&run_dir.join("samples").join(format!("step-{step:09}.png")), &bytes, n, ch, side)?;
    crate::samples::write_grid(&run_dir.join("samples").join("latest.png"), &bytes, n, ch, side)
}

fn save_checkpoint(t: &Trainer, root: &Path, cfg: &Config) -> Result<()> {
    let sums = t.comm.all_gather_u64(t.param_checksum()?)?;
    if sums.iter().any(|&s| s != sums[0]) {
        bail!("parameters differ between ranks at step {} (checksums {sums:x?}): ranks have diverged", t.step);
    }
    if t.comm.rank() != 0 {
        return Ok(());
    }
    let state = t.export_state()?;
    if let Some((name, _)) = state.iter().find(|(_, (_, v))| v.iter().any(|x| !x.is_finite())) {
        // Never persist a poisoned state; the previous checkpoint stays the newest.
        tracing::warn!("not writing the checkpoint at step {}: tensor {name} holds non-finite values", t.step);
        return Ok(());
    }
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("opt_g_steps".into(), t.opt_g.steps as f64);
    extra.insert("opt_d_steps".into(), t.opt_d.steps as f64);
    extra.insert("skipped_updates".into(), t.skipped_updates as f64);
    extra.insert("lr_scale".into(), t.lr_scale);
    let meta = Meta {
        format_version: checkpoint::FORMAT_VERSION,
        step: t.step,
        critic_step: t.critic_step,
        seed: cfg.train.seed,
        config_hash: cfg.trajectory_hash(),
        config: cfg.to_toml(),
        world_size: t.comm.world_size(),
        gandist_version: env!("CARGO_PKG_VERSION").into(),
        libtorch_version: crate::LIBTORCH_VERSION.into(),
        state_sha256: String::new(),
        extra,
        health: [("critic".to_string(), t.health_d.snapshot()), ("generator".to_string(), t.health_g.snapshot())].into(),
    };
    checkpoint::save(root, meta, &state)?;
    checkpoint::prune(root, cfg.train.keep_checkpoints)
}

/// Returns to the newest usable checkpoint with lower learning rates.
fn rollback(t: &mut Trainer, root: &Path, cfg: &Config, n: u32, streak: u64) -> Result<()> {
    if n > cfg.train.max_rollbacks {
        bail!(
            "{streak} consecutive non-finite updates after {} rollbacks (train.max_rollbacks): the run keeps diverging",
            cfg.train.max_rollbacks
        );
    }
    let shapes = t.state_shapes();
    let Some(l) = checkpoint::load_latest(root, &shapes)? else {
        bail!(
            "{streak} consecutive non-finite updates at step {} and no checkpoint to roll back to in {}",
            t.step,
            root.display()
        );
    };
    let attempts = t.critic_attempts;
    restore(t, &l)?;
    t.critic_attempts = attempts;
    let scale = t.lr_scale * cfg.train.rollback_lr_scale;
    t.set_lr_scale(scale);
    t.consecutive_skips = (0, 0);
    if t.comm.rank() == 0 {
        tracing::warn!(
            "rolled back to step {} after {streak} consecutive non-finite updates; learning rates now x{scale}",
            l.meta.step
        );
    }
    Ok(())
}

fn restore(t: &mut Trainer, l: &checkpoint::Loaded) -> Result<()> {
    let want = t.cfg.trajectory_hash();
    if l.meta.config_hash != want {
        bail!(
            "checkpoint {} was written by a different configuration (hash {} vs this run's {}): only train.iterations, logging, device, dist and metrics settings may change on resume",
            l.dir.display(),
            l.meta.config_hash,
            want
        );
    }
    t.import_state(&l.tensors)?;
    t.step = l.meta.step;
    t.critic_step = l.meta.critic_step;
    let get = |k: &str| l.meta.extra.get(k).copied().unwrap_or(0.0) as u64;
    t.opt_g.set_steps(get("opt_g_steps"));
    t.opt_d.set_steps(get("opt_d_steps"));
    t.skipped_updates = get("skipped_updates");
    t.critic_attempts = t.critic_step;
    t.set_lr_scale(l.meta.extra.get("lr_scale").copied().unwrap_or(1.0));
    Ok(())
}
