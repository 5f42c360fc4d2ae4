//! The trainer: both networks, one state per network (`NetState`), the data and its order,
//! the run's counters, and the updates. Each update (critic or generator) builds its loss from
//! named terms, then takes the same path for both networks: one all-reduce of one flat buffer
//! (gradient, non-finite flag, loss scalars), and the network's state update after it
//! (`NetState::apply`), which every rank takes or skips together. Every loss term is built
//! before that reduction; terms that depend on parameters only (L2, historical averaging) are
//! added to the reduced gradient, and state (EMA, averages, spectral-norm vectors) is a
//! function of rank-identical values, so it stays identical on every rank. Feature matching
//! alone adds a small reduction of two mean feature vectors before its backward pass (exact
//! global means).
//!
//! An update never waits for the device. The skip decision is a 0/1 condition on the device
//! that selects between the stepped and the old state (parameters, moments, step count,
//! averages), clipping is a device-side coefficient, and the update's figures (flags, norms,
//! loss terms) stay on the device in a `Pending` record. `sync`, called by the loop at its
//! sync steps (logging, samples, checkpoints, evaluation, the end), reads every pending record
//! in one host read and only then runs the host's decisions in update order: the health
//! detectors, the skip counts and streaks that trigger a rollback, the step counts. Every
//! rank reads the same reduced values at the same steps, so they decide alike. Noise and
//! interpolation weights are drawn on the CPU from keyed streams (`crate::seeds`) and queued
//! to the device, so a run follows the same trajectory on any device.

use super::faults::Faults;
use super::net_state::{NetState, Pending, Reduced, UpdateStats};
use super::snapshot::Counters;
use super::timing::{LapClock, Stage};
use crate::config::Config;
use crate::data::sampler::DistributedSampler;
use crate::data::{DeviceImages, DeviceOrder};
use crate::collectives::Collective;
use crate::model::ema::Ema;
use crate::model::params::ParamSet;
use crate::model::{Critic, Generator, Net, PerNet};
use crate::objective;
use crate::regularize::{self, feature_matching};
use crate::scalar_log::{self as log, LossTerm};
use crate::seeds::{self, Stream};
use anyhow::{bail, Result};
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

pub struct Trainer {
    pub cfg: Config,
    pub device: Device,
    pub comm: Rc<dyn Collective>,
    pub generator: Generator,
    pub critic: Critic,
    /// A generator that runs on the EMA weights (`nets.generator.ema`'s buffer), when EMA is on.
    pub ema_generator: Option<Generator>,
    /// Each network's optimizer, averages, detector, skips and hyper-parameters.
    pub nets: PerNet<NetState>,
    pub data: DeviceImages,
    order: DeviceOrder,
    /// Updates whose figures are still on the device, oldest first (see `sync`).
    pending: Vec<Pending>,
    /// Steps, applied and skipped updates, the learning-rate scale, as of the last sync (the
    /// steps are exact at any time): what a checkpoint keeps of the host's state.
    pub counters: Counters,
    /// The longest run of skipped updates of one network seen by the syncs since the loop
    /// last looked (it looks after each).
    pub longest_skip_streak: u64,
    pub faults: Faults,
    pub local_batch: i64,
    pub allreduce: AllReduceStats,
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

/// A loss assembled from named terms: total = sum of weight * term. Each term's unweighted
/// value is logged under its key (the scalar log and the metrics read them by key), with
/// diagnostics that are not part of the loss.
struct LossTerms {
    total: &'static LossTerm,
    terms: Vec<(&'static LossTerm, Tensor, f64)>,
    diagnostics: Vec<(&'static str, Tensor)>,
}

impl LossTerms {
    fn new(total: &'static LossTerm) -> Self {
        LossTerms { total, terms: Vec::new(), diagnostics: Vec::new() }
    }

    fn add(&mut self, term: &'static LossTerm, value: Tensor, weight: f64) {
        self.terms.push((term, value, weight));
    }

    fn diagnostic(&mut self, key: &'static str, value: Tensor) {
        self.diagnostics.push((key, value.detach()));
    }

    /// A term times its weight, if the loss has it.
    fn weighted(&self, term: &LossTerm) -> Option<Tensor> {
        self.terms.iter().find(|(t, _, _)| *t == term).map(|(_, v, w)| v * *w)
    }

    fn total(&self) -> Tensor {
        let mut it = self.terms.iter().map(|(_, v, w)| if *w == 1.0 { v.shallow_clone() } else { v * *w });
        let first = it.next().expect("a loss has at least one term");
        it.fold(first, |acc, t| acc + t)
    }

    /// Keys and detached values for the reduction: the total, each term, each diagnostic.
    fn scalars(&self, total: &Tensor) -> (Vec<&'static str>, Vec<Tensor>) {
        let mut names = vec![self.total.key];
        let mut values = vec![total.detach()];
        for (t, v, _) in &self.terms {
            names.push(t.key);
            values.push(v.detach());
        }
        for (n, v) in &self.diagnostics {
            names.push(n);
            values.push(v.shallow_clone());
        }
        (names, values)
    }
}

/// The flat gradient of `loss` over `params`; with `local` (a part of the loss), that part's
/// gradient apart, so that it can be kept out of the reduction.
fn gradient(params: &ParamSet, loss: &Tensor, local: Option<Tensor>) -> (Tensor, Option<Tensor>) {
    match local {
        Some(part) => {
            let rest = Tensor::run_backward(&[&(loss - &part)], &params.tensors, true, false);
            let part = Tensor::run_backward(&[&part], &params.tensors, false, false);
            (params.flatten_grads(&rest), Some(params.flatten_grads(&part)))
        }
        None => (params.flatten_grads(&Tensor::run_backward(&[loss], &params.tensors, false, false)), None),
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
        let data = data.for_dataset(cfg.data.dataset, cfg.train.seed);
        let shape = crate::model::ImageShape { channels: cfg.data.dataset.channels(), side: crate::model::PAPER_SIDE };
        seeds::seed_torch(cfg.train.seed, Stream::Init, 0);
        let generator = Generator::new(&cfg.model, shape, device)?;
        let critic = Critic::new(&cfg.model, shape, device)?;
        let mut nets = PerNet { critic: NetState::new(Net::Critic, &cfg, &critic.params.flat), generator: NetState::new(Net::Generator, &cfg, &generator.params.flat) };
        // The EMA is the generator's alone: its weights, and a copy of the generator on them.
        let ema_generator = cfg.ema.enabled().then(|| generator.copy());
        nets.generator.ema = ema_generator.as_ref().map(|g| Ema { beta: cfg.ema.beta(cfg.data.batch_size), flat: g.params.flat.shallow_clone() });
        let order = DeviceOrder::new(DistributedSampler::new(data.n, global, comm.rank(), world, cfg.train.seed), device);
        let mut t = Trainer {
            local_batch: (global / world) as i64,
            faults: Faults::new(&cfg.faults, comm.rank()),
            cfg,
            device,
            comm,
            generator,
            critic,
            ema_generator,
            nets,
            data,
            order,
            pending: Vec::new(),
            counters: Counters::start(),
            longest_skip_streak: 0,
            allreduce: AllReduceStats::default(),
        };
        t.broadcast_state()?;
        Ok(t)
    }

    /// A network's parameters.
    pub fn params(&self, net: Net) -> &ParamSet {
        match net {
            Net::Critic => &self.critic.params,
            Net::Generator => &self.generator.params,
        }
    }

    /// Sets the learning-rate scale (after a rollback, or from a checkpoint).
    pub fn set_lr_scale(&mut self, scale: f64) {
        self.counters.lr_scale = scale;
        for net in Net::ALL {
            self.nets[net].set_lr_scale(scale);
        }
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
        for (_, mut t) in self.state_tensors() {
            self.comm.broadcast(&mut t, 0)?;
        }
        Ok(())
    }

    /// The rank's slice of a draw made for the whole global batch, on this rank's device.
    /// `f` draws on the CPU, from libtorch's CPU generator seeded for (stream, counter): the
    /// values are those of a CPU run whatever the device (CUDA's generator differs, and even
    /// between GPU models), and the copy is queued without making the host wait.
    fn draw_global(&self, stream: Stream, counter: u64, f: impl FnOnce(i64) -> Tensor) -> Tensor {
        seeds::seed_torch(self.cfg.train.seed, stream, counter);
        let global = self.cfg.data.batch_size;
        let mine = f(global).narrow(0, self.comm.rank() as i64 * self.local_batch, self.local_batch);
        crate::device::upload(&mine, self.device)
    }

    fn noise(&self, stream: Stream, counter: u64) -> Tensor {
        let latent = self.cfg.model.latent;
        self.draw_global(stream, counter, |g| Tensor::randn([g, latent], (Kind::Float, Device::Cpu)))
    }

    /// One critic update on data batch number `critic_step`; its figures wait in `pending`.
    pub fn critic_update(&mut self) -> Result<()> {
        let mut clock = LapClock::start();
        let c = self.counters.critic_step;
        self.critic.power_iterate();
        let real = self.data.batch(&self.order.indices(c));
        let z = self.noise(Stream::CriticNoise, c);
        clock.lap(Stage::Data);
        let fake = tch::no_grad(|| self.generator.forward(&z));
        let lc = &self.cfg.loss;
        let critic = &self.critic;
        // One forward over real and fake together: the critic has no batch statistics, so
        // this is the same function with half the kernel launches.
        let b = real.size()[0];
        let both = critic.forward(&Tensor::cat(&[&real, &fake], 0));
        let (real_out, fake_out) = (both.narrow(0, 0, b), both.narrow(0, b, b));
        let mut terms = LossTerms::new(&log::D_LOSS);
        terms.add(&log::D_ADV, objective::critic_loss(lc.kind, lc.label_smoothing, &real_out, &fake_out), 1.0);
        terms.diagnostic(log::WASSERSTEIN, objective::wasserstein_estimate(&real_out, &fake_out));
        let weight = regularize::lazy_weight(lc.gp_lambda, lc.penalty_every, c);
        if weight > 0.0 {
            let eps = || self.draw_global(Stream::Interpolation, c, |g| Tensor::rand([g, 1, 1, 1], (Kind::Float, Device::Cpu)));
            if let Some(p) = regularize::penalty(lc.penalty, |x| critic.forward(x), &real, &fake, eps) {
                terms.add(&log::D_GP, p.value, weight);
                terms.diagnostic(log::GP_GRAD_NORM, p.mean_grad_norm);
            }
        }
        let loss = terms.total();
        clock.lap(Stage::Forward);
        let local = self.faults.unreduced_penalty().then(|| terms.weighted(&log::D_GP)).flatten();
        let (grad, local) = gradient(&critic.params, &loss, local);
        self.faults.critic_gradient(&grad)?;
        clock.lap(Stage::Backward);
        self.reduce_and_apply(Net::Critic, grad, local, &terms, &loss, clock)
    }

    /// One generator update; its noise is keyed by the generator step.
    pub fn generator_update(&mut self) -> Result<()> {
        let mut clock = LapClock::start();
        self.critic.power_iterate();
        let z = self.noise(Stream::GeneratorNoise, self.counters.step);
        clock.lap(Stage::Data);
        let fake = self.generator.forward(&z);
        let (fake_features, fake_out) = self.critic.forward_features(&fake);
        let lc = self.cfg.loss.clone();
        let mut terms = LossTerms::new(&log::G_LOSS);
        if lc.g_adversarial > 0.0 {
            terms.add(&log::G_ADV, objective::generator_loss(lc.kind, &fake_out), lc.g_adversarial);
        }
        if lc.feature_matching > 0.0 {
            terms.add(&log::G_FM, self.feature_matching_term(&fake_features)?, lc.feature_matching);
        }
        let loss = terms.total();
        clock.lap(Stage::Forward);
        let (grad, _) = gradient(&self.generator.params, &loss, None);
        clock.lap(Stage::Backward);
        self.reduce_and_apply(Net::Generator, grad, None, &terms, &loss, clock)
    }

    /// The rest of an update, the same for both networks: the one reduction (`local`, a
    /// gradient kept out of it, joins after), the step count, then the network's state
    /// update; its figures wait in `pending`.
    fn reduce_and_apply(&mut self, net: Net, grad: Tensor, local: Option<Tensor>, terms: &LossTerms, loss: &Tensor, mut clock: LapClock) -> Result<()> {
        let (names, scalars) = terms.scalars(loss);
        let reduced = self.reduce(grad, &scalars)?;
        clock.lap(Stage::Allreduce);
        if let Some(local) = local {
            let _ = reduced.grad.shallow_clone().g_add_(&local);
        }
        match net {
            Net::Critic => self.counters.critic_step += 1,
            Net::Generator => self.counters.step += 1,
        }
        let params = match net {
            Net::Critic => &self.critic.params,
            Net::Generator => &self.generator.params,
        };
        let mut pending = self.nets[net].apply(params, reduced, names);
        clock.lap(Stage::Optimizer);
        pending.times = clock.times();
        self.pending.push(pending);
        Ok(())
    }

    /// Feature matching against the real batch of the preceding critic update, exact over the
    /// global batch: the two mean feature vectors are all-reduced first (see
    /// `regularize::feature_matching` for why a per-rank loss would not be).
    fn feature_matching_term(&mut self, fake_features: &Tensor) -> Result<Tensor> {
        let real = self.data.batch(&self.order.indices(self.counters.critic_step.saturating_sub(1)));
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
            let params = match p.net {
                Net::Critic => &self.critic.params,
                Net::Generator => &self.generator.params,
            };
            let state = &mut self.nets[p.net];
            let stats = state.observe(params, &p, v);
            if stats.skipped {
                self.counters.skipped_updates += 1;
                self.longest_skip_streak = self.longest_skip_streak.max(state.skip_streak);
            } else {
                self.counters.applied[p.net] += 1;
            }
            out.push((p.net, stats));
        }
        Ok(out)
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
        if world > 1 || self.cfg.dist.force_reduce {
            allreduce_bytes = (buf.numel() * std::mem::size_of::<f32>()) as u64;
            let started = std::time::Instant::now();
            self.comm.all_reduce_mean(&mut buf)?;
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
        seeds::seed_torch(self.cfg.train.seed, Stream::FixedNoise, 0);
        crate::device::upload(&Tensor::randn([n, self.cfg.model.latent], (Kind::Float, Device::Cpu)), self.device)
    }

    /// The generator that sample grids come from: the EMA one when EMA is on and
    /// `ema.use_for_samples`.
    pub fn sampling_generator(&self) -> &Generator {
        match &self.ema_generator {
            Some(g) if self.cfg.ema.use_for_samples => g,
            _ => &self.generator,
        }
    }

    /// The generator that evaluation scores: the EMA one when the run keeps it, as
    /// `gandist eval` does for the run's checkpoints.
    pub fn evaluated_generator(&self) -> &Generator {
        self.ema_generator.as_ref().unwrap_or(&self.generator)
    }

    /// Generated images for `z` from the sampling generator, as bytes 0..255.
    pub fn sample_bytes(&self, z: &Tensor) -> Vec<u8> {
        tch::no_grad(|| crate::model::to_bytes(&self.sampling_generator().forward(z)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Mnist;
    use crate::collectives::Local;

    /// A trainer on 64 random images with a tiny model and the given overrides.
    fn trainer(overrides: &[&str]) -> Trainer {
        let mut all = vec!["model.dim=2", "model.latent=4", "data.batch_size=8", "train.n_critic=2", "train.device=\"cpu\""];
        all.extend_from_slice(overrides);
        let o: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        let cfg = Config::from_toml_str("", &o).unwrap();
        let mut rng = crate::seeds::SplitMix64::new(9);
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
        // Weight clipping is the critic's alone: the generator's weights were drawn wider.
        assert!(t.generator.params.flat.abs().max().double_value(&[]) > 0.02);
        assert!(t.nets.critic.ema.is_none(), "the EMA is the generator's alone");
        let k = seq.len() - 1;
        let ema = values(&t.nets.generator.ema.as_ref().unwrap().flat);
        let hist = t.nets.generator.history.as_ref().unwrap();
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
        // The EMA generator is what samples come from, and it runs on the EMA weights.
        let z = t.fixed_noise(2);
        let from_ema = t.sample_bytes(&z);
        let raw = tch::no_grad(|| crate::model::to_bytes(&t.generator.forward(&z)));
        assert_ne!(from_ema, raw);
        assert_eq!(values(&t.ema_generator.as_ref().unwrap().params.flat), ema);
    }

    /// Stacked MNIST with the EMA generator: both generators make 3-channel images (the EMA
    /// one used to be built with 1 channel, and the first update failed on a size mismatch).
    #[test]
    fn stacked_mnist_with_ema_trains_and_samples_three_channels() {
        let mut t = trainer(&["data.dataset=\"stacked-mnist\"", "ema.half_life_steps=10"]);
        t.iteration().unwrap();
        assert!(t.sync().unwrap().iter().all(|(_, s)| !s.skipped));
        let z = t.fixed_noise(2);
        assert_eq!(t.sample_bytes(&z).len(), 2 * 3 * 28 * 28);
        assert_eq!(t.ema_generator.as_ref().unwrap().channels, 3);
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
        assert_eq!(t.counters.skipped_updates, 1);
        assert_eq!((t.counters.applied.critic, t.counters.applied.generator), (9, 5));
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
        let c = &t.counters;
        assert_eq!((c.applied.critic, c.applied.generator, c.skipped_updates), (2, 1, 1));
        assert_eq!((t.nets.critic.skip_streak, t.nets.generator.skip_streak), (1, 0));
        assert_eq!(t.nets.critic.health.counts().non_finite, 1);
    }
}
