//! One training state and its updates: critic and generator phases, each ending in one
//! all-reduce of one flat buffer (gradient, non-finite flag, loss scalars), then clipping
//! and an Adam step that every rank takes or skips together. Every loss term is built before
//! that reduction; terms that depend on parameters only (L2, historical averaging) are added
//! to the reduced gradient, and state (EMA, averages, spectral-norm vectors) is a function of
//! rank-identical values, so it stays identical on every rank. Feature matching alone adds a
//! small reduction of two mean feature vectors before its backward pass (exact global means).
//!
//! An update never waits for the device. The skip decision is a 0/1 condition on the device
//! that selects between the stepped and the old state (parameters, moments, step count,
//! averages), clipping is a device-side coefficient, and the update's figures (flags, norms,
//! loss terms) stay on the device in a `Pending` record. `sync`, called by the loop at its
//! sync steps (logging, samples, checkpoints, evaluation, the end), reads every pending record
//! in one host read and only then runs the host's decisions in update order: the health
//! detectors, the skip counts and streaks that trigger a rollback, the step counts. Every
//! rank reads the same reduced values at the same steps, so they decide alike. Noise and
//! interpolation weights are drawn on the CPU from keyed streams and queued to the device,
//! so a run follows the same trajectory on any device.

use crate::checkpoint::TensorMap;
use crate::config::Config;
use crate::data::sampler::{derive_seed, DistributedSampler};
use crate::data::{DeviceImages, DeviceOrder};
use crate::dist::Collective;
use crate::config::OptimKind;
use crate::health::HealthMonitor;
use crate::model::ema::Ema;
use crate::model::{Critic, Generator};
use crate::objective;
use crate::optim::{clip_global_norm, clip_value, Adam, ClipReport};
use crate::regularize::historical_average::HistoricalAverage;
use crate::regularize::{self, feature_matching, weight_clip};
use super::phases::{Phase, PhaseClock, PhaseTimes};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// Keys for derived random streams: each draw is seeded by (seed, purpose, counter), so it
/// depends on the global position in training only, never on rank or on resumption.
pub mod purpose {
    pub const INIT: u64 = 1;
    pub const CRITIC_NOISE: u64 = 2;
    pub const INTERPOLATION: u64 = 3;
    pub const GENERATOR_NOISE: u64 = 4;
    pub const FIXED_NOISE: u64 = 5;
    /// Noise for sample-quality evaluation (the same at every evaluation, for comparability).
    pub const EVAL_NOISE: u64 = 6;
    pub const STACKING: u64 = 7;
}

/// Checkpoint names of the generator's EMA weights: this prefix + the parameter name.
pub const EMA_PREFIX: &str = "ema.generator.";

/// What one update did, after the reduction (identical on every rank), as read at a sync step.
#[derive(Debug, Clone, Default)]
pub struct UpdateStats {
    /// Named loss terms and diagnostics, averaged over the global batch.
    pub scalars: Vec<(&'static str, f64)>,
    pub clip: Option<ClipReport>,
    /// The update was skipped because some rank saw a non-finite gradient.
    pub skipped: bool,
    /// L2 norm of each layer's reduced gradient before clipping (empty when skipped).
    pub layer_norms: Vec<(String, f64)>,
    /// This rank's time in each phase of the update.
    pub phases: PhaseTimes,
    /// Bytes this rank handed to the all-reduce (0 for a single process).
    pub allreduce_bytes: u64,
}

impl UpdateStats {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.scalars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

pub struct Trainer {
    pub cfg: Config,
    pub device: Device,
    pub comm: Rc<dyn Collective>,
    pub generator: Generator,
    pub critic: Critic,
    pub opt_g: Adam,
    pub opt_d: Adam,
    pub data: DeviceImages,
    order: DeviceOrder,
    /// Updates whose figures are still on the device, oldest first (see `sync`).
    pending: Vec<Pending>,
    /// Generator updates completed.
    pub step: u64,
    /// Critic updates completed; also the number of data batches consumed.
    pub critic_step: u64,
    pub local_batch: i64,
    pub skipped_updates: u64,
    /// Skipped updates in a row, per network: (critic, generator), as of the last sync.
    pub consecutive_skips: (u64, u64),
    /// The longest such run seen by the syncs since the loop last looked (it looks after each).
    pub longest_skip_streak: u64,
    /// Critic updates attempted by this process, including those a rollback undid
    /// (keys fault injection, so that an injected fault does not recur after a rollback).
    pub critic_attempts: u64,
    /// Multiplies both learning rates; lowered by each rollback.
    pub lr_scale: f64,
    pub allreduce: AllReduceStats,
    /// Historical averages of the critic's and generator's parameters, when on.
    pub hist_d: Option<HistoricalAverage>,
    pub hist_g: Option<HistoricalAverage>,
    /// The generator's EMA weights and a generator that runs on them, when on.
    pub ema: Option<(Ema, Generator)>,
    pub health_d: HealthMonitor,
    pub health_g: HealthMonitor,
}

/// Cumulative cost of the all-reduces (zero in a single process).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllReduceStats {
    pub calls: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl AllReduceStats {
    fn record(&mut self, seconds: f64, bytes: u64) {
        self.calls += 1;
        self.bytes += bytes;
        self.seconds += seconds;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Critic,
    Generator,
}

/// One update's figures on the device, until the next sync step reads them. `figures` is
/// [skipped, norm before clipping, norm after, clipped, reduced scalars.., parameter terms..,
/// per-parameter gradient norms..], float32; everything else is known on the host.
struct Pending {
    net: Net,
    figures: Tensor,
    scalar_names: Vec<&'static str>,
    /// Name and weight of each parameter term (L2, historical averaging), in `figures` order.
    param_terms: Vec<(&'static str, f64)>,
    phases: PhaseTimes,
    allreduce_bytes: u64,
}

/// An update's reduced buffer, in parts (views on the device).
struct Reduced {
    grad: Tensor,
    /// 1.0 when some rank saw a non-finite gradient (the update is skipped), else 0.0; [1].
    skipped: Tensor,
    scalars: Tensor,
    allreduce_bytes: u64,
}

/// One iteration's updates as read at a sync step.
pub struct IterationStats {
    pub critic: Vec<UpdateStats>,
    pub generator: UpdateStats,
}

impl IterationStats {
    /// Groups synced updates into iterations (critic updates, then the generator update that
    /// ends them). The loop syncs after whole iterations only, so nothing is left over.
    pub fn group(updates: Vec<(Net, UpdateStats)>) -> Vec<IterationStats> {
        let mut out = Vec::new();
        let mut critic = Vec::new();
        for (net, s) in updates {
            match net {
                Net::Critic => critic.push(s),
                Net::Generator => out.push(IterationStats { critic: std::mem::take(&mut critic), generator: s }),
            }
        }
        debug_assert!(critic.is_empty(), "a sync in the middle of an iteration");
        out
    }
}

impl Net {
    /// Scalar-log names of (total loss, L2 term, historical-averaging term).
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Net::Critic => ("d_loss", "d_l2", "d_hist_avg"),
            Net::Generator => ("g_loss", "g_l2", "g_hist_avg"),
        }
    }
}

/// A loss assembled from named terms: total = sum of weight * term. Each term's unweighted
/// value is logged under its name (the scalar log and the metrics read them by name), with
/// diagnostics that are not part of the loss.
struct LossTerms {
    total_name: &'static str,
    terms: Vec<(&'static str, Tensor, f64)>,
    diagnostics: Vec<(&'static str, Tensor)>,
}

impl LossTerms {
    fn new(total_name: &'static str) -> Self {
        LossTerms { total_name, terms: Vec::new(), diagnostics: Vec::new() }
    }

    fn add(&mut self, name: &'static str, value: Tensor, weight: f64) {
        self.terms.push((name, value, weight));
    }

    fn diagnostic(&mut self, name: &'static str, value: Tensor) {
        self.diagnostics.push((name, value.detach()));
    }

    /// A term times its weight, if the loss has it.
    fn weighted(&self, name: &str) -> Option<Tensor> {
        self.terms.iter().find(|(n, _, _)| *n == name).map(|(_, v, w)| v * *w)
    }

    fn total(&self) -> Tensor {
        let mut it = self.terms.iter().map(|(_, v, w)| if *w == 1.0 { v.shallow_clone() } else { v * *w });
        let first = it.next().expect("a loss has at least one term");
        it.fold(first, |acc, t| acc + t)
    }

    /// Names and detached values for the reduction: the total, each term, each diagnostic.
    fn scalars(&self, total: &Tensor) -> (Vec<&'static str>, Vec<Tensor>) {
        let mut names = vec![self.total_name];
        let mut values = vec![total.detach()];
        for (n, v, _) in &self.terms {
            names.push(n);
            values.push(v.detach());
        }
        for (n, v) in &self.diagnostics {
            names.push(n);
            values.push(v.shallow_clone());
        }
        (names, values)
    }
}

impl Trainer {
    /// Builds both networks from the seed and makes every rank hold rank 0's parameters.
    pub fn new(cfg: Config, comm: Rc<dyn Collective>, device: Device, data: DeviceImages) -> Result<Self> {
        let world = comm.world_size();
        let global = cfg.data.batch_size as usize;
        if !global.is_multiple_of(world) {
            bail!("data.batch_size = {global} (the global batch) must be divisible by the number of ranks, {world}");
        }
        if global > data.n {
            bail!("data.batch_size = {global} is larger than the data set ({} images)", data.n);
        }
        let channels = cfg.data.dataset.channels();
        let data = if channels == 3 && data.stack.is_none() { data.stacked(derive_seed(cfg.train.seed, &[purpose::STACKING])) } else { data };
        seed_stream(cfg.train.seed, purpose::INIT, 0);
        let generator = Generator::with_channels(&cfg.model, channels, device);
        let critic = Critic::with_channels(&cfg.model, channels, device);
        let o = &cfg.optim;
        let (opt_g, opt_d) = match o.kind {
            OptimKind::Adam => (
                Adam::new(&generator.params.flat, o.lr_g, o.beta1, o.beta2, o.eps),
                Adam::new(&critic.params.flat, o.lr_d, o.beta1, o.beta2, o.eps),
            ),
            OptimKind::Sgd => (Adam::sgd(&generator.params.flat, o.lr_g), Adam::sgd(&critic.params.flat, o.lr_d)),
        };
        let r = &cfg.regularize;
        let hist_d = (r.hist_avg_d > 0.0).then(|| HistoricalAverage::new(&critic.params.flat, r.hist_avg_d));
        let hist_g = (r.hist_avg_g > 0.0).then(|| HistoricalAverage::new(&generator.params.flat, r.hist_avg_g));
        let ema = cfg.ema.enabled().then(|| {
            // Its initial draw is overwritten at once; it comes after every seeded draw.
            let g = Generator::new(&cfg.model, device);
            g.params.load_flat(&generator.params.flat);
            let ema = Ema { beta: cfg.ema.beta(cfg.data.batch_size), flat: g.params.flat.shallow_clone() };
            (ema, g)
        });
        let (health_d, health_g) = (HealthMonitor::new(&cfg.health), HealthMonitor::new(&cfg.health));
        let order = DeviceOrder::new(DistributedSampler::new(data.n, global, comm.rank(), world, cfg.train.seed), device);
        let mut t = Trainer {
            local_batch: (global / world) as i64,
            cfg,
            device,
            comm,
            generator,
            critic,
            opt_g,
            opt_d,
            data,
            order,
            pending: Vec::new(),
            step: 0,
            critic_step: 0,
            skipped_updates: 0,
            consecutive_skips: (0, 0),
            longest_skip_streak: 0,
            critic_attempts: 0,
            lr_scale: 1.0,
            allreduce: AllReduceStats::default(),
            hist_d,
            hist_g,
            ema,
            health_d,
            health_g,
        };
        t.broadcast_state()?;
        Ok(t)
    }

    /// Sets the learning-rate scale (after a rollback, or from a checkpoint).
    pub fn set_lr_scale(&mut self, scale: f64) {
        self.lr_scale = scale;
        self.opt_g.lr = self.cfg.optim.lr_g * scale;
        self.opt_d.lr = self.cfg.optim.lr_d * scale;
    }

    /// Rank 0's parameters and optimizer moments overwrite everyone else's.
    pub fn broadcast_state(&mut self) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        // Rank 0 may come from its own work (a checkpoint to load): meet on the host first, so
        // that the collective's deadline times the broadcast alone.
        self.comm.barrier()?;
        // Every checkpointed tensor (parameters, moments, averages, spectral-norm vectors):
        // each is a view of the live state, so broadcasting into it updates that state.
        for (_, t) in self.state_tensors() {
            let mut t = t;
            self.comm.broadcast(&mut t, 0)?;
        }
        Ok(())
    }

    /// The rank's slice of a draw made for the whole global batch, on this rank's device.
    /// `f` draws on the CPU, from libtorch's CPU generator seeded for (purpose, counter): the
    /// values are those of a CPU run whatever the device (CUDA's generator differs, and even
    /// between GPU models), and the copy is queued without making the host wait.
    fn draw_global(&self, purpose: u64, counter: u64, f: impl FnOnce(i64) -> Tensor) -> Tensor {
        seed_stream(self.cfg.train.seed, purpose, counter);
        let global = self.cfg.data.batch_size;
        let mine = f(global).narrow(0, self.comm.rank() as i64 * self.local_batch, self.local_batch);
        crate::device::upload(&mine, self.device)
    }

    fn noise(&self, purpose: u64, counter: u64) -> Tensor {
        let latent = self.cfg.model.latent;
        self.draw_global(purpose, counter, |g| Tensor::randn([g, latent], (Kind::Float, Device::Cpu)))
    }

    /// One critic update on data batch number `critic_step`; its figures wait in `pending`.
    pub fn critic_update(&mut self) -> Result<()> {
        let mut clock = PhaseClock::start();
        let c = self.critic_step;
        self.critic.power_iterate();
        let real = self.data.batch(&self.order.indices(c));
        let z = self.noise(purpose::CRITIC_NOISE, c);
        clock.lap(Phase::Data);
        let fake = tch::no_grad(|| self.generator.forward(&z));
        let lc = &self.cfg.loss;
        let critic = &self.critic;
        // One forward over real and fake together: the critic has no batch statistics, so
        // this is the same function with half the kernel launches.
        let b = real.size()[0];
        let both = critic.forward(&Tensor::cat(&[&real, &fake], 0));
        let (real_out, fake_out) = (both.narrow(0, 0, b), both.narrow(0, b, b));
        let mut terms = LossTerms::new("d_loss");
        terms.add("d_adv", objective::critic_loss(lc.kind, lc.label_smoothing, &real_out, &fake_out), 1.0);
        terms.diagnostic("wasserstein", objective::wasserstein_estimate(&real_out, &fake_out));
        let weight = regularize::lazy_weight(lc.gp_lambda, lc.penalty_every, c);
        if weight > 0.0 {
            let eps = || self.draw_global(purpose::INTERPOLATION, c, |g| Tensor::rand([g, 1, 1, 1], (Kind::Float, Device::Cpu)));
            if let Some(p) = regularize::penalty(lc.penalty, |x| critic.forward(x), &real, &fake, eps) {
                terms.add("d_gp", p.value, weight);
                terms.diagnostic("gp_grad_norm", p.mean_grad_norm);
            }
        }
        let loss = terms.total();
        clock.lap(Phase::Forward);
        let faults = &self.cfg.faults;
        let (flat, unreduced) = match terms.weighted("d_gp").filter(|_| faults.unreduced_penalty) {
            // A deliberately wrong trainer for the tests: the penalty's gradient stays local.
            Some(penalty) => {
                let g_rest = Tensor::run_backward(&[&(&loss - &penalty)], &critic.params.tensors, true, false);
                let g_pen = Tensor::run_backward(&[&penalty], &critic.params.tensors, false, false);
                (critic.params.flatten_grads(&g_rest), Some(critic.params.flatten_grads(&g_pen)))
            }
            None => {
                let grads = Tensor::run_backward(&[&loss], &critic.params.tensors, false, false);
                (critic.params.flatten_grads(&grads), None)
            }
        };
        let rank = self.comm.rank() as i64;
        let attempt = self.critic_attempts;
        self.critic_attempts += 1;
        if faults.nan_critic_updates.contains(&attempt) && (faults.nan_rank < 0 || faults.nan_rank == rank) {
            let _ = flat.shallow_clone().fill_(f64::NAN);
        }
        if faults.fail_critic_update == Some(attempt) && (faults.fail_rank < 0 || faults.fail_rank == rank) {
            bail!("injected fault at critic update {attempt} on rank {rank} (faults.fail_critic_update)");
        }
        clock.lap(Phase::Backward);
        let (names, scalars) = terms.scalars(&loss);
        let reduced = self.reduce(flat, &scalars)?;
        clock.lap(Phase::Allreduce);
        if let Some(local) = unreduced {
            let _ = reduced.grad.shallow_clone().g_add_(&local);
        }
        self.critic_step += 1;
        let pending = self.apply_update(Net::Critic, reduced, names)?;
        clock.lap(Phase::Optimizer);
        self.pending.push(Pending { phases: clock.times(), ..pending });
        Ok(())
    }

    /// One generator update; its noise is keyed by the generator step.
    pub fn generator_update(&mut self) -> Result<()> {
        let mut clock = PhaseClock::start();
        self.critic.power_iterate();
        let z = self.noise(purpose::GENERATOR_NOISE, self.step);
        clock.lap(Phase::Data);
        let fake = self.generator.forward(&z);
        let (fake_features, fake_out) = self.critic.forward_features(&fake);
        let lc = self.cfg.loss.clone();
        let mut terms = LossTerms::new("g_loss");
        if lc.g_adversarial > 0.0 {
            terms.add("g_adv", objective::generator_loss(lc.kind, &fake_out), lc.g_adversarial);
        }
        if lc.feature_matching > 0.0 {
            terms.add("g_fm", self.feature_matching_term(&fake_features)?, lc.feature_matching);
        }
        let loss = terms.total();
        clock.lap(Phase::Forward);
        let grads = Tensor::run_backward(&[&loss], &self.generator.params.tensors, false, false);
        let flat = self.generator.params.flatten_grads(&grads);
        clock.lap(Phase::Backward);
        let (names, scalars) = terms.scalars(&loss);
        let reduced = self.reduce(flat, &scalars)?;
        clock.lap(Phase::Allreduce);
        self.step += 1;
        let pending = self.apply_update(Net::Generator, reduced, names)?;
        clock.lap(Phase::Optimizer);
        self.pending.push(Pending { phases: clock.times(), ..pending });
        Ok(())
    }

    /// Feature matching against the real batch of the preceding critic update, exact over the
    /// global batch: the two mean feature vectors are all-reduced first (see
    /// `regularize::feature_matching` for why a per-rank loss would not be).
    fn feature_matching_term(&mut self, fake_features: &Tensor) -> Result<Tensor> {
        let real = self.data.batch(&self.order.indices(self.critic_step.saturating_sub(1)));
        let real_mean = tch::no_grad(|| feature_matching::batch_mean(&self.critic.forward_features(&real).0));
        let fake_mean = feature_matching::batch_mean(fake_features);
        let f = real_mean.size()[0];
        let mut both = Tensor::cat(&[real_mean.shallow_clone(), fake_mean.detach()], 0);
        let world = self.comm.world_size();
        if world > 1 {
            self.comm.all_reduce_sum(&mut both)?;
            let _ = both.g_div_scalar_(world as f64);
        }
        Ok(feature_matching::loss(&both.narrow(0, 0, f), &both.narrow(0, f, f), &fake_mean))
    }

    /// Everything after the reduction, identical on every rank: parameter regularisers (added
    /// to the reduced gradient, since they depend on parameters only), value and norm
    /// clipping, the optimizer step, weight clipping, running averages; all on the device,
    /// each state change selected by the update's skip condition. Returns the update's
    /// figures for `sync`.
    fn apply_update(&mut self, net: Net, reduced: Reduced, scalar_names: Vec<&'static str>) -> Result<Pending> {
        let Reduced { grad, skipped, scalars, allreduce_bytes } = reduced;
        let r = &self.cfg.regularize;
        let (params, per_param, opt, hist, l2, max_norm, max_value) = match net {
            Net::Critic => (&self.critic.params.flat, self.critic.params.param_norms(&grad), &mut self.opt_d, &mut self.hist_d, r.l2_d, self.cfg.clip.max_norm_d, self.cfg.clip.value_d),
            Net::Generator => (&self.generator.params.flat, self.generator.params.param_norms(&grad), &mut self.opt_g, &mut self.hist_g, r.l2_g, self.cfg.clip.max_norm_g, self.cfg.clip.value_g),
        };
        let (_, l2_name, hist_name) = net.names();
        let apply = skipped.eq(0.0).view([]);
        // Logged unweighted, like every other term; `sync` adds weight * value to the total.
        let mut param_terms = Vec::new();
        let mut figures = vec![skipped.shallow_clone()];
        let mut term_values = Vec::new();
        if l2 > 0.0 {
            term_values.push(regularize::l2::apply(&grad, params, l2));
            param_terms.push((l2_name, l2));
        }
        if let Some(h) = hist.as_ref() {
            term_values.push(h.apply(&grad, params));
            param_terms.push((hist_name, h.lambda));
        }
        let raw_norm = (max_value > 0.0).then(|| grad.norm());
        clip_value(&grad, max_value);
        let clip = clip_global_norm(&grad, max_norm);
        let (norm_before, clipped) = match raw_norm {
            // Value clipping counts as clipping when it changed the norm.
            Some(raw) => {
                let changed = raw.ne_tensor(&clip.norm_after).to_kind(Kind::Float);
                (raw, clip.clipped.maximum(&changed))
            }
            None => (clip.norm_before, clip.clipped),
        };
        opt.step(params, &grad, &apply);
        if net == Net::Critic && r.weight_clip > 0.0 {
            weight_clip::clamp(params, r.weight_clip, &apply);
        }
        // The averages see the parameters as the step (and any clamp) left them.
        if let Some(h) = hist.as_mut() {
            h.record(params, &apply);
        }
        if net == Net::Generator {
            if let Some((ema, _)) = self.ema.as_mut() {
                ema.update(&self.generator.params.flat, &apply);
            }
        }
        figures.extend([norm_before.view([1]), clip.norm_after.view([1]), clipped.view([1]), scalars]);
        figures.extend(term_values.iter().map(|v| v.to_kind(Kind::Float).view([1])));
        figures.push(per_param);
        // One small copy: the pending record keeps no view of the large reduced buffer alive.
        let figures = Tensor::cat(&figures, 0);
        Ok(Pending { net, figures, scalar_names, param_terms, phases: PhaseTimes::default(), allreduce_bytes })
    }

    /// n_critic critic updates then one generator update, none of which waits for the device.
    pub fn iteration(&mut self) -> Result<()> {
        for _ in 0..self.cfg.train.n_critic {
            self.critic_update()?;
        }
        self.generator_update()
    }

    /// Reads the figures of every update since the last sync (one host read, which waits for
    /// the device), then makes the host's decisions in update order: health detectors, skip
    /// counts, the longest streak of skips, step counts. Returns the updates' stats in order
    /// (`IterationStats::group` groups them). Every rank calls it at the same steps.
    pub fn sync(&mut self) -> Result<Vec<(Net, UpdateStats)>> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            self.comm.check()?;
            return Ok(Vec::new());
        }
        let all = Tensor::cat(&pending.iter().map(|p| p.figures.shallow_clone()).collect::<Vec<_>>(), 0);
        let values = crate::hostread::vec_f32(&all)?;
        // A collective that failed asynchronously fails the sync that follows it.
        self.comm.check()?;
        let mut at = 0;
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            let v = &values[at..at + p.figures.numel()];
            at += p.figures.numel();
            let stats = self.observe(&p, v);
            out.push((p.net, stats));
        }
        Ok(out)
    }

    /// The host's side of one update read at a sync.
    fn observe(&mut self, p: &Pending, v: &[f32]) -> UpdateStats {
        let skipped = v[0] > 0.0;
        let (s, t) = (p.scalar_names.len(), p.param_terms.len());
        let mut scalars: Vec<(&'static str, f64)> = p.scalar_names.iter().zip(&v[4..4 + s]).map(|(n, x)| (*n, *x as f64)).collect();
        let (params, health, streak) = match p.net {
            Net::Critic => (&self.critic.params, &mut self.health_d, &mut self.consecutive_skips.0),
            Net::Generator => (&self.generator.params, &mut self.health_g, &mut self.consecutive_skips.1),
        };
        let mut stats = UpdateStats { phases: p.phases, allreduce_bytes: p.allreduce_bytes, skipped, ..UpdateStats::default() };
        if skipped {
            self.skipped_updates += 1;
            *streak += 1;
            self.longest_skip_streak = self.longest_skip_streak.max(*streak);
            health.observe(f64::NAN);
            stats.scalars = scalars;
            return stats;
        }
        *streak = 0;
        let opt = match p.net {
            Net::Critic => &mut self.opt_d,
            Net::Generator => &mut self.opt_g,
        };
        opt.steps += 1;
        let mut extra = 0.0;
        for ((name, weight), x) in p.param_terms.iter().zip(&v[4 + s..4 + s + t]) {
            scalars.push((name, *x as f64));
            extra += weight * *x as f64;
        }
        let total = p.net.names().0;
        if let Some(tot) = scalars.iter_mut().find(|(n, _)| *n == total) {
            tot.1 += extra;
        }
        let clip = ClipReport { norm_before: v[1] as f64, norm_after: v[2] as f64, clipped: v[3] > 0.0 };
        health.observe(clip.norm_before);
        stats.layer_norms = params.group_layers(&v[4 + s + t..]);
        stats.scalars = scalars;
        stats.clip = Some(clip);
        stats
    }

    /// The one all-reduce of an update: [gradient | non-finite flag | scalars], summed over
    /// ranks and divided by the world size. It may return before the sum is done (NCCL):
    /// everything that uses its parts is queued after it.
    fn reduce(&mut self, grad: Tensor, scalars: &[Tensor]) -> Result<Reduced> {
        let n = grad.numel() as i64;
        let nonfinite = grad.isfinite().logical_not().any().to_kind(Kind::Float).view([1]);
        let mut parts = vec![grad.nan_to_num(0.0, 0.0, 0.0), nonfinite];
        parts.extend(scalars.iter().map(|s| s.to_kind(Kind::Float).view([1])));
        let mut buf = Tensor::cat(&parts, 0);
        let world = self.comm.world_size();
        let mut allreduce_bytes = 0;
        if world > 1 {
            allreduce_bytes = (buf.numel() * std::mem::size_of::<f32>()) as u64;
            let started = std::time::Instant::now();
            self.comm.all_reduce_sum(&mut buf)?;
            let _ = buf.g_div_scalar_(world as f64);
            self.allreduce.record(started.elapsed().as_secs_f64(), allreduce_bytes);
        }
        Ok(Reduced {
            grad: buf.narrow(0, 0, n),
            skipped: buf.narrow(0, n, 1).gt(0.0).to_kind(Kind::Float),
            scalars: buf.narrow(0, n + 1, scalars.len() as i64),
            allreduce_bytes,
        })
    }

    /// Fixed noise for sample grids: the same on every device and every resumption.
    pub fn fixed_noise(&self, n: i64) -> Tensor {
        seed_stream(self.cfg.train.seed, purpose::FIXED_NOISE, 0);
        crate::device::upload(&Tensor::randn([n, self.cfg.model.latent], (Kind::Float, Device::Cpu)), self.device)
    }

    /// Generated images for `z`, as bytes 0..255 (from the EMA weights when EMA is on and
    /// `ema.use_for_samples`).
    pub fn sample_bytes(&self, z: &Tensor) -> Vec<u8> {
        let g = match &self.ema {
            Some((_, g)) if self.cfg.ema.use_for_samples => g,
            _ => &self.generator,
        };
        tch::no_grad(|| crate::model::to_bytes(&g.forward(z)))
    }

    /// Every tensor a checkpoint holds, with its expected shape.
    pub fn state_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.state_tensors().into_iter().map(|(k, t)| (k, t.size().iter().map(|&d| d as usize).collect())).collect()
    }

    /// Every tensor a checkpoint holds, as views of the live state (so that loading and
    /// broadcasting write through them).
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (prefix, params) in [("generator", &self.generator.params), ("critic", &self.critic.params)] {
            for (name, t) in params.names.iter().zip(&params.tensors) {
                out.push((format!("{prefix}.{name}"), t.detach()));
            }
        }
        for (prefix, opt) in [("optim.generator", &self.opt_g), ("optim.critic", &self.opt_d)] {
            out.push((format!("{prefix}.exp_avg"), opt.exp_avg.shallow_clone()));
            out.push((format!("{prefix}.exp_avg_sq"), opt.exp_avg_sq.shallow_clone()));
        }
        for (prefix, h) in [("hist_avg.critic", &self.hist_d), ("hist_avg.generator", &self.hist_g)] {
            if let Some(h) = h {
                out.push((format!("{prefix}.mean"), h.mean.shallow_clone()));
                out.push((format!("{prefix}.count"), h.count.shallow_clone()));
            }
        }
        if let Some((_, g)) = &self.ema {
            for (name, t) in g.params.names.iter().zip(&g.params.tensors) {
                out.push((format!("{EMA_PREFIX}{name}"), t.detach()));
            }
        }
        if let Some(sn) = &self.critic.spectral {
            for (i, s) in sn.iter().enumerate() {
                out.push((format!("critic.spectral_u.{i}"), s.u.shallow_clone()));
            }
        }
        out
    }

    pub fn export_state(&self) -> Result<TensorMap> {
        let mut map = TensorMap::new();
        for (name, t) in self.state_tensors() {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let data = crate::hostread::vec_f32(&t)?;
            map.insert(name, (shape, data));
        }
        Ok(map)
    }

    pub fn import_state(&mut self, map: &TensorMap) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, t) in self.state_tensors() {
                let (shape, data) = map.get(&name).ok_or_else(|| anyhow::anyhow!("state has no tensor {name}"))?;
                let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let src = crate::device::upload(&Tensor::from_slice(data).view(shape.as_slice()), self.device);
                let mut dst = t;
                dst.copy_(&src);
            }
            Ok(())
        })
    }

    /// A checksum of both networks' parameters, compared across ranks at checkpoints.
    pub fn param_checksum(&self) -> Result<u64> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for flat in [&self.generator.params.flat, &self.critic.params.flat] {
            let v = crate::hostread::vec_f32(flat)?;
            for x in v {
                h.update(x.to_le_bytes());
            }
        }
        Ok(u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes")))
    }
}

/// Seeds libtorch's generators for one derived stream.
pub fn seed_stream(seed: u64, purpose: u64, counter: u64) {
    tch::manual_seed((derive_seed(seed, &[purpose, counter]) >> 1) as i64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Mnist;
    use crate::dist::Local;

    /// A trainer on 64 random images with a tiny model and the given overrides.
    fn trainer(overrides: &[&str]) -> Trainer {
        let mut all = vec!["model.dim=2", "model.latent=4", "data.batch_size=8", "train.n_critic=2", "train.device=\"cpu\""];
        all.extend_from_slice(overrides);
        let o: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        let cfg = Config::from_toml_str("", &o).unwrap();
        let mut rng = crate::data::sampler::SplitMix64::new(9);
        let n = 64;
        let m = Mnist { images: (0..n * 784).map(|_| rng.below(256) as u8).collect(), labels: vec![0; n], n };
        let data = DeviceImages::from_mnist(&m, Device::Cpu).unwrap();
        Trainer::new(cfg, Rc::new(Local), Device::Cpu, data).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        crate::hostread::vec_f32(&t.to_kind(Kind::Float)).unwrap().into_iter().map(f64::from).collect()
    }

    /// Through the trainer: the EMA after k generator updates equals the closed form over the
    /// generator's recorded parameters, the historical average is their plain mean, and weight
    /// clipping keeps every critic parameter inside [-c, c].
    #[test]
    fn running_state_follows_the_parameter_sequence() {
        let mut t = trainer(&["ema.half_life_steps=2", "regularize.hist_avg_g=1e-3", "regularize.weight_clip=0.02"]);
        let beta = 0.5f64.powf(0.5);
        let mut seq = vec![values(&t.generator.params.flat)];
        for _ in 0..4 {
            t.iteration().unwrap();
            assert!(t.sync().unwrap().iter().all(|(_, s)| !s.skipped));
            seq.push(values(&t.generator.params.flat));
            let max = t.critic.params.flat.abs().max().double_value(&[]);
            assert!(max <= 0.02 + 1e-7, "critic parameter {max} outside the clip range");
        }
        let k = seq.len() - 1;
        let ema = values(&t.ema.as_ref().unwrap().0.flat);
        let hist = t.hist_g.as_ref().unwrap();
        let mean = values(&hist.mean);
        assert_eq!(hist.count.double_value(&[0]), (k + 1) as f64);
        for j in (0..ema.len()).step_by(97) {
            let mut want = beta.powi(k as i32) * seq[0][j];
            for (i, s) in seq.iter().enumerate().skip(1) {
                want += (1.0 - beta) * beta.powi((k - i) as i32) * s[j];
            }
            assert!((ema[j] - want).abs() < 1e-5, "ema[{j}] {} vs {want}", ema[j]);
            let m = seq.iter().map(|s| s[j]).sum::<f64>() / seq.len() as f64;
            assert!((mean[j] - m).abs() < 1e-5, "mean[{j}] {} vs {m}", mean[j]);
        }
        // The EMA generator is what samples come from.
        let z = t.fixed_noise(2);
        let from_ema = t.sample_bytes(&z);
        let raw = tch::no_grad(|| crate::model::to_bytes(&t.generator.forward(&z)));
        assert_ne!(from_ema, raw);
    }

    /// L2 adds 2 lambda theta to the reduced gradient and its value to the logged loss, and the
    /// lazy penalty appears on every k-th critic update only.
    #[test]
    fn parameter_terms_and_lazy_penalty_are_logged() {
        let mut t = trainer(&["regularize.l2_d=0.5", "loss.penalty_every=2"]);
        let theta = t.critic.params.flat.detach().copy();
        let sq = theta.square().sum(Kind::Float).double_value(&[]);
        t.critic_update().unwrap();
        let s0 = t.sync().unwrap().pop().unwrap().1;
        assert!((s0.get("d_l2").unwrap() - sq).abs() < 1e-4 * sq);
        // Lazy weight 2 x gp_lambda 10 on even critic steps; L2 weight 0.5.
        let total = s0.get("d_adv").unwrap() + 20.0 * s0.get("d_gp").unwrap() + 0.5 * sq;
        assert!((s0.get("d_loss").unwrap() - total).abs() < 1e-4 * total.abs().max(1.0), "{s0:?}");
        t.critic_update().unwrap();
        let s1 = t.sync().unwrap().pop().unwrap().1;
        assert!(s1.get("d_gp").is_none() && s1.get("d_adv").is_some());
    }

    /// With SGD at learning rate 1, one critic step with L2 (lambda) and one without, from the
    /// same state, differ by exactly the gradient term: -2 lambda theta.
    #[test]
    fn l2_and_historical_averaging_enter_the_gradient() {
        let base = ["optim.kind=sgd", "optim.lr_d=1.0"];
        let mut plain = trainer(&base);
        let mut reg = trainer(&[base[0], base[1], "regularize.l2_d=0.25", "regularize.hist_avg_d=3.0"]);
        let theta = plain.critic.params.flat.detach().copy();
        plain.critic_update().unwrap();
        reg.critic_update().unwrap();
        // Historical averaging adds 2 * 3 (theta - mean) = 0 on the first step (mean = theta).
        let diff = &reg.critic.params.flat - &plain.critic.params.flat;
        let want = &theta * -0.5;
        assert!((diff - want).abs().max().double_value(&[]) < 1e-5);
        // On the second step the history term is 2 * 3 (theta_1 - (theta_0 + theta_1) / 2).
        let mut reg2 = trainer(&[base[0], base[1], "regularize.hist_avg_d=3.0"]);
        let mut plain2 = trainer(&base);
        reg2.critic_update().unwrap();
        plain2.critic_update().unwrap();
        let t1 = reg2.critic.params.flat.detach().copy();
        plain2.critic.params.load_flat(&t1);
        reg2.critic_update().unwrap();
        plain2.critic_update().unwrap();
        let diff = &reg2.critic.params.flat - &plain2.critic.params.flat;
        let want = (&t1 - (&theta + &t1) / 2.0) * -6.0;
        assert!((diff - want).abs().max().double_value(&[]) < 1e-5);
    }

    /// Every technique at once, between sync steps: no update reads anything from the device
    /// (the count covers every read in the crate, see `hostread`), and the sync that follows
    /// reads once and reports every update.
    #[test]
    fn updates_between_sync_steps_read_nothing_from_the_device() {
        let mut t = trainer(&[
            "clip.max_norm_d=0.5",
            "clip.max_norm_g=1e-3",
            "clip.value_d=0.05",
            "clip.value_g=0.05",
            "regularize.l2_d=1e-3",
            "regularize.l2_g=1e-3",
            "regularize.hist_avg_d=1e-3",
            "regularize.hist_avg_g=1e-3",
            "regularize.weight_clip=0.5",
            "ema.half_life_steps=3",
            "model.spectral_norm=true",
            "loss.feature_matching=0.5",
            "loss.penalty_every=2",
            "faults.nan_critic_updates=[3]",
        ]);
        let before = crate::hostread::count();
        for _ in 0..5 {
            t.iteration().unwrap();
        }
        assert_eq!(crate::hostread::count(), before, "an update between sync steps read from the device");
        let synced = t.sync().unwrap();
        assert_eq!(crate::hostread::count(), before + 1, "a sync is one read");
        assert_eq!(synced.len(), 5 * 3);
        let iterations = IterationStats::group(synced);
        assert_eq!(iterations.len(), 5);
        // Critic attempt 3 (iteration 1, second critic update) was skipped, nothing else.
        assert!(iterations[1].critic[1].skipped);
        assert_eq!(t.skipped_updates, 1);
        assert_eq!((t.opt_d.steps, t.opt_g.steps), (9, 5));
        let g = &iterations[4].generator;
        let clip = g.clip.unwrap();
        assert!(clip.clipped && clip.norm_after <= 1e-3 * (1.0 + 1e-5), "{clip:?}");
        assert!(g.get("g_l2").is_some() && g.get("g_hist_avg").is_some() && g.get("g_fm").is_some(), "{g:?}");
        assert_eq!(g.layer_norms.len(), 4);
        // Nothing is pending after a sync.
        assert!(t.sync().unwrap().is_empty());
    }

    /// Without parameter terms or value clipping, the layer norms and the global norm come
    /// from the same reduced gradient by different device computations: the root sum of
    /// squares of the one must equal the other (float32 sums: 1e-5 relative).
    #[test]
    fn synced_norms_agree_with_each_other() {
        let mut t = trainer(&["clip.max_norm_d=0.1"]);
        t.iteration().unwrap();
        t.iteration().unwrap();
        for (net, s) in t.sync().unwrap() {
            let c = s.clip.unwrap();
            let rss = s.layer_norms.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
            assert!((rss - c.norm_before).abs() <= 1e-5 * c.norm_before, "{net:?}: {rss} vs {}", c.norm_before);
            if net == Net::Critic {
                assert_eq!(c.clipped, c.norm_before > 0.1, "{c:?}");
                let want = if c.clipped { c.norm_before * 0.1 / (c.norm_before + 1e-6) } else { c.norm_before };
                assert!((c.norm_after - want).abs() <= 1e-6 * want, "{c:?}");
            }
        }
    }

    /// A skipped update (a NaN injected into the local gradient) leaves every piece of state
    /// exactly as it was: parameters, Adam's moments, averages, EMA weights; the step count
    /// moves only for the updates taken.
    #[test]
    fn a_skipped_update_leaves_the_state_exactly_unchanged() {
        let mut t = trainer(&["faults.nan_critic_updates=[2]", "regularize.hist_avg_d=1e-3", "regularize.weight_clip=0.5", "ema.half_life_steps=3"]);
        let bits = |t: &Trainer| -> Vec<(String, Vec<u32>)> {
            t.state_tensors().into_iter().map(|(k, v)| (k, values(&v).iter().map(|x| (*x as f32).to_bits()).collect())).collect()
        };
        t.critic_update().unwrap();
        t.critic_update().unwrap();
        let before = bits(&t);
        t.critic_update().unwrap();
        assert_eq!(bits(&t), before, "the skipped critic update changed state");
        t.generator_update().unwrap();
        let after = bits(&t);
        assert!(after.iter().zip(&before).any(|(a, b)| a.0.starts_with("generator.") && a != b), "the next update must move");
        let synced = t.sync().unwrap();
        assert_eq!(synced.iter().map(|(_, s)| s.skipped).collect::<Vec<_>>(), vec![false, false, true, false]);
        assert!(synced[2].1.clip.is_none() && synced[2].1.layer_norms.is_empty());
        assert_eq!((t.opt_d.steps, t.opt_g.steps, t.skipped_updates, t.consecutive_skips), (2, 1, 1, (1, 0)));
        assert_eq!(t.health_d.counts().non_finite, 1);
    }
}
