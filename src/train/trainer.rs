//! The trainer: both networks, each with its training state (`NetState`), the phases of an
//! iteration as data (`Phase`), the data and its order, and the run's counters. Its fields are
//! private: the run asks it (`counters`, `sync`, `take_longest_skip_streak`, ...).
//!
//! An iteration runs its phases in order (n_critic critic updates, then one generator update),
//! and every update takes one path, `update`; the only thing that differs between phases is
//! the loss they build (`critic_loss`, `generator_loss`), from the terms the phase lists with
//! their weights and intervals. After the loss: one all-reduce of one flat buffer (gradient,
//! non-finite flag, the loss's values), and the network's state update after it
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
//! loss terms) stay on the device, packed (`figures`), until `sync`, called by the loop at its
//! sync steps (logging, samples, checkpoints, evaluation, the end), reads every pending update
//! in one host read and only then runs the host's decisions in update order: the health
//! detectors, the skip counts and streaks that trigger a rollback, the step counts. Every
//! rank reads the same reduced values at the same steps, so they decide alike. Noise and
//! interpolation weights are drawn on the CPU from keyed streams (`crate::seeds`) and queued
//! to the device, so a run follows the same trajectory on any device.

use super::faults::Faults;
use super::figures::{Layout, Scalar};
use super::net_state::{NetState, UpdateMeta};
use super::snapshot::{names, Counters, Restore, Snapshot};
use crate::checkpoint::TensorMap;
use crate::collectives::Collective;
use crate::config::{Config, PenaltyKind};
use crate::data::sampler::DistributedSampler;
use crate::data::{DeviceImages, DeviceOrder};
use crate::model::ema::Ema;
use crate::model::params::ParamSet;
use crate::model::{Critic, Generator};
use crate::net::{Net, PerNet};
use crate::objective;
use crate::regularize::{self, feature_matching};
use crate::seeds::{self, Stream};
use crate::sink::record::{IterationRecord, Term, UpdateRecord};
use crate::timing::{LapClock, Stage};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

pub struct Trainer {
    cfg: Config,
    device: Device,
    comm: Rc<dyn Collective>,
    /// The models; their parameters are also their states' (`NetState::params`).
    critic: Critic,
    generator: Generator,
    /// A generator that runs on the EMA weights (`nets.generator`'s EMA buffer), when EMA is on.
    ema_generator: Option<Generator>,
    nets: PerNet<NetState>,
    phases: Vec<Phase>,
    data: DeviceImages,
    order: DeviceOrder,
    /// Updates whose figures are still on the device, oldest first (see `sync`).
    pending: Vec<Pending>,
    /// Steps, applied and skipped updates, the learning-rate scale, as of the last sync (the
    /// steps are exact at any time): what a checkpoint keeps of the host's state.
    counters: Counters,
    /// The longest run of skipped updates of one network seen by the syncs since the loop
    /// last asked (`take_longest_skip_streak`).
    longest_skip_streak: u64,
    faults: Faults,
    local_batch: i64,
    allreduce: AllReduceStats,
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

/// One phase of an iteration, as data (stylegan3's `phases`): the network it updates, its
/// updates per iteration, and the terms of the loss it builds. A lazy penalty is a term with
/// an interval: it joins every `every`-th update of its phase with gain `every` (StyleGAN2's
/// lazy regularisation), inside that update, so that each update keeps one reduction of one
/// loss (the design's one all-reduce per network per update).
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub net: Net,
    pub updates: u64,
    pub terms: Vec<PhaseTerm>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTerm {
    pub term: Term,
    pub weight: f64,
    /// 1: every update; k: every k-th update of the phase (counted over the run), weighted k x.
    pub every: u64,
}

impl Phase {
    /// The phases `cfg` trains with, in order: the critic's, then the generator's.
    pub fn table(cfg: &Config) -> Vec<Phase> {
        let (c, g) = (&cfg.critic, &cfg.generator);
        let term = |term, weight, every| PhaseTerm { term, weight, every };
        let mut critic = vec![term(Term::Adversarial, 1.0, 1)];
        if c.penalty != PenaltyKind::None && c.penalty_weight > 0.0 {
            critic.push(term(Term::Penalty, c.penalty_weight, c.penalty_every));
        }
        let mut generator = Vec::new();
        if g.adversarial > 0.0 {
            generator.push(term(Term::Adversarial, g.adversarial, 1));
        }
        if g.feature_matching > 0.0 {
            generator.push(term(Term::FeatureMatching, g.feature_matching, 1));
        }
        vec![Phase { net: Net::Critic, updates: cfg.train.n_critic, terms: critic }, Phase { net: Net::Generator, updates: 1, terms: generator }]
    }
}

/// A loss assembled from a phase's terms: total = sum of weight * term. Each term's unweighted
/// value is reduced and logged, with diagnostics that are not part of the loss.
#[derive(Default)]
struct Loss {
    terms: Vec<(Term, Tensor, f64)>,
    diagnostics: Vec<(Scalar, Tensor)>,
}

impl Loss {
    fn add(&mut self, term: Term, value: Tensor, weight: f64) {
        self.terms.push((term, value, weight));
    }

    fn diagnostic(&mut self, what: Scalar, value: Tensor) {
        self.diagnostics.push((what, value.detach()));
    }

    /// A term times its weight, if the loss has it.
    fn weighted(&self, term: Term) -> Option<Tensor> {
        self.terms.iter().find(|(t, _, _)| *t == term).map(|(_, v, w)| v * *w)
    }

    fn total(&self) -> Tensor {
        let mut it = self.terms.iter().map(|(_, v, w)| if *w == 1.0 { v.shallow_clone() } else { v * *w });
        let first = it.next().expect("a loss has at least one term");
        it.fold(first, |acc, t| acc + t)
    }

    /// What the reduction carries, named: the total, each term, each diagnostic.
    fn reduced(&self, total: &Tensor) -> (Vec<Scalar>, Vec<Tensor>) {
        let mut names = vec![Scalar::Term(Term::Total)];
        let mut values = vec![total.detach()];
        for (t, v, _) in &self.terms {
            names.push(Scalar::Term(*t));
            values.push(v.detach());
        }
        for (n, v) in &self.diagnostics {
            names.push(*n);
            values.push(v.shallow_clone());
        }
        (names, values)
    }
}

/// An update's reduced buffer, [gradient | non-finite flag | values], in parts (views on the
/// device).
struct Reduced {
    grad: Tensor,
    /// 1.0 when some rank saw a non-finite gradient (the update is skipped), else 0.0; [1].
    skipped: Tensor,
    values: Tensor,
    allreduce_bytes: u64,
}

/// One update's figures on the device, until the next sync step reads them.
struct Pending {
    net: Net,
    layout: Layout,
    figures: Tensor,
    meta: UpdateMeta,
    /// The counters right after the update.
    step: u64,
    critic_step: u64,
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

/// Both models and their states, as a trainer starts them.
struct Networks {
    critic: Critic,
    generator: Generator,
    ema_generator: Option<Generator>,
    nets: PerNet<NetState>,
}

impl Networks {
    /// Both networks of `cfg` on `device`, initialised from the seed.
    fn new(cfg: &Config, device: Device) -> Result<Networks> {
        seeds::seed_torch(cfg.train.seed, Stream::Init, 0);
        let generator = Generator::from_config(cfg, device)?;
        let critic = Critic::from_config(cfg, device)?;
        // The EMA is the generator's alone: its weights, and a copy of the generator on them.
        let ema_generator = cfg.ema.enabled().then(|| generator.copy());
        let ema = ema_generator.as_ref().map(|g| Ema { beta: cfg.ema.beta(cfg.data.batch_size), flat: g.params.flat.shallow_clone() });
        let nets = PerNet { critic: NetState::new(Net::Critic, cfg, &critic.params, None), generator: NetState::new(Net::Generator, cfg, &generator.params, ema) };
        Ok(Networks { critic, generator, ema_generator, nets })
    }
}

/// Every tensor a checkpoint holds, named, as views of the live state (so that restoring and
/// broadcasting write through them): each network's state, and the critic's spectral-norm
/// vectors.
fn state_tensors(nets: &PerNet<NetState>, critic: &Critic) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = Net::ALL.iter().flat_map(|&net| nets[net].state_tensors()).collect();
    if let Some(sn) = &critic.spectral {
        out.extend(sn.iter().enumerate().map(|(i, s)| (names::spectral_u(i), s.u.shallow_clone())));
    }
    out
}

fn shapes(tensors: Vec<(String, Tensor)>) -> BTreeMap<String, Vec<usize>> {
    tensors.into_iter().map(|(k, t)| (k, t.size().iter().map(|&d| d as usize).collect())).collect()
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
        let Networks { critic, generator, ema_generator, nets } = Networks::new(&cfg, device)?;
        let order = DeviceOrder::new(DistributedSampler::new(data.n, global, comm.rank(), world, cfg.train.seed), device);
        let mut t = Trainer {
            local_batch: (global / world) as i64,
            faults: Faults::new(&cfg.faults, comm.rank()),
            phases: Phase::table(&cfg),
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

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn comm(&self) -> &dyn Collective {
        self.comm.as_ref()
    }

    /// The counters as of the last sync (steps are exact at any time).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Real images this rank feeds each critic update.
    pub fn local_batch(&self) -> i64 {
        self.local_batch
    }

    /// The all-reduces' cost since the start or the last `reset_allreduce_stats`.
    pub fn allreduce_stats(&self) -> AllReduceStats {
        self.allreduce
    }

    pub fn reset_allreduce_stats(&mut self) {
        self.allreduce = AllReduceStats::default();
    }

    /// Parameters of (the generator, the critic).
    pub fn param_counts(&self) -> (i64, i64) {
        (self.generator.params.numel(), self.critic.params.numel())
    }

    /// The longest run of skipped updates of one network seen by the syncs since the last call.
    pub fn take_longest_skip_streak(&mut self) -> u64 {
        std::mem::take(&mut self.longest_skip_streak)
    }

    /// Rank 0's stall in its own work, when fault injection asks for one.
    pub fn stall_root_work(&self) {
        self.faults.stall_root_work();
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

    /// The phases in order, each for its number of updates; none waits for the device.
    pub fn iteration(&mut self) -> Result<()> {
        for phase in self.phases.clone() {
            for _ in 0..phase.updates {
                self.update(&phase)?;
            }
        }
        Ok(())
    }

    /// One update of `phase`'s network: its loss (the phase's own part), the gradient, the one
    /// reduction (a gradient that fault injection keeps out of it joins after), the step count,
    /// then the network's state update; its figures wait in `pending`.
    fn update(&mut self, phase: &Phase) -> Result<()> {
        let mut clock = LapClock::start();
        let net = phase.net;
        let loss = match net {
            Net::Critic => self.critic_loss(phase, &mut clock)?,
            Net::Generator => self.generator_loss(phase, &mut clock)?,
        };
        let total = loss.total();
        clock.lap(Stage::Forward);
        let local = (net == Net::Critic && self.faults.unreduced_penalty()).then(|| loss.weighted(Term::Penalty)).flatten();
        let (grad, local) = gradient(self.nets[net].params(), &total, local);
        if net == Net::Critic {
            self.faults.critic_gradient(&grad)?;
        }
        clock.lap(Stage::Backward);
        let (names, values) = loss.reduced(&total);
        let reduced = self.reduce(grad, &values)?;
        clock.lap(Stage::Allreduce);
        if let Some(local) = local {
            let _ = reduced.grad.shallow_clone().g_add_(&local);
        }
        match net {
            Net::Critic => self.counters.critic_step += 1,
            Net::Generator => self.counters.step += 1,
        }
        let state = &mut self.nets[net];
        let lr = state.lr();
        let (layout, figures) = state.apply(&reduced.grad, &reduced.skipped, reduced.values, names);
        clock.lap(Stage::Optimizer);
        let meta = UpdateMeta { lr, times: clock.times(), allreduce_bytes: reduced.allreduce_bytes };
        self.pending.push(Pending { net, layout, figures, meta, step: self.counters.step, critic_step: self.counters.critic_step });
        Ok(())
    }

    /// The critic's loss on data batch number `critic_step` (its noise keyed the same):
    /// the adversarial term on real and generated images, and the penalty on the updates the
    /// phase's interval selects.
    fn critic_loss(&mut self, phase: &Phase, clock: &mut LapClock) -> Result<Loss> {
        let c = self.counters.critic_step;
        self.critic.power_iterate();
        let real = self.data.batch(&self.order.indices(c));
        let z = self.noise(Stream::CriticNoise, c);
        clock.lap(Stage::Data);
        let fake = tch::no_grad(|| self.generator.forward(&z));
        let (kind, cc) = (self.cfg.loss.kind, &self.cfg.critic);
        let critic = &self.critic;
        // One forward over real and fake together: the critic has no batch statistics, so
        // this is the same function with half the kernel launches.
        let b = real.size()[0];
        let both = critic.forward(&Tensor::cat(&[&real, &fake], 0));
        let (real_out, fake_out) = (both.narrow(0, 0, b), both.narrow(0, b, b));
        let mut loss = Loss::default();
        for t in &phase.terms {
            let weight = regularize::lazy_weight(t.weight, t.every, c);
            if weight == 0.0 {
                continue;
            }
            match t.term {
                Term::Adversarial => {
                    loss.add(Term::Adversarial, objective::critic_loss(kind, cc.label_smoothing, &real_out, &fake_out), weight);
                    loss.diagnostic(Scalar::Wasserstein, objective::wasserstein_estimate(&real_out, &fake_out));
                }
                Term::Penalty => {
                    let eps = || self.draw_global(Stream::Interpolation, c, |g| Tensor::rand([g, 1, 1, 1], (Kind::Float, Device::Cpu)));
                    if let Some(p) = regularize::penalty(cc.penalty, |x| critic.forward(x), &real, &fake, eps) {
                        loss.add(Term::Penalty, p.value, weight);
                        loss.diagnostic(Scalar::PenaltyGradNorm, p.mean_grad_norm);
                    }
                }
                other => unreachable!("the critic's phase has no {other:?} term"),
            }
        }
        Ok(loss)
    }

    /// The generator's loss; its noise is keyed by the generator step.
    fn generator_loss(&mut self, phase: &Phase, clock: &mut LapClock) -> Result<Loss> {
        self.critic.power_iterate();
        let z = self.noise(Stream::GeneratorNoise, self.counters.step);
        clock.lap(Stage::Data);
        let fake = self.generator.forward(&z);
        let (fake_features, fake_out) = self.critic.forward_features(&fake);
        let mut loss = Loss::default();
        for t in &phase.terms {
            let weight = regularize::lazy_weight(t.weight, t.every, self.counters.step);
            match t.term {
                Term::Adversarial => loss.add(Term::Adversarial, objective::generator_loss(self.cfg.loss.kind, &fake_out), weight),
                Term::FeatureMatching => loss.add(Term::FeatureMatching, self.feature_matching_term(&fake_features)?, weight),
                other => unreachable!("the generator's phase has no {other:?} term"),
            }
        }
        Ok(loss)
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

    /// The one all-reduce of an update: [gradient | non-finite flag | values], averaged over
    /// ranks (skipped with one rank unless `dist.force_reduce`). It may return before the mean
    /// is done (NCCL): everything that uses its parts is queued after it.
    fn reduce(&mut self, grad: Tensor, values: &[Tensor]) -> Result<Reduced> {
        let n = grad.numel() as i64;
        let nonfinite = grad.isfinite().logical_not().any().to_kind(Kind::Float).view([1]);
        let mut parts = vec![grad.nan_to_num(0.0, 0.0, 0.0), nonfinite];
        parts.extend(values.iter().map(|s| s.to_kind(Kind::Float).view([1])));
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
            values: buf.narrow(0, n + 1, values.len() as i64),
            allreduce_bytes,
        })
    }

    /// Reads the figures of every update since the last sync (one host read, which waits for
    /// the device), then makes the host's decisions in update order: health detectors, skip
    /// counts, the longest streak of skips, step counts. Returns the iterations' records in
    /// order. Every rank calls it at the same steps, after whole iterations.
    pub fn sync(&mut self) -> Result<Vec<IterationRecord>> {
        let mut out = Vec::new();
        let mut critic = Vec::new();
        for (p, update) in self.observe_pending()? {
            match p.net {
                Net::Critic => critic.push(update),
                Net::Generator => out.push(IterationRecord {
                    step: p.step,
                    critic_step: p.critic_step,
                    skipped_updates: p.skipped_updates,
                    lr_scale: self.counters.lr_scale,
                    critic: std::mem::take(&mut critic),
                    generator: update,
                    health: p.health.expect("taken after every generator update"),
                }),
            }
        }
        if !critic.is_empty() {
            bail!("a sync in the middle of an iteration ({} critic updates without their generator update)", critic.len());
        }
        Ok(out)
    }

    /// Every pending update observed, in order, with the counters after it (and both
    /// detectors after each generator update, the end of an iteration).
    fn observe_pending(&mut self) -> Result<Vec<(Observed, UpdateRecord)>> {
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
            let v = &values[at..at + p.layout.len()];
            at += p.layout.len();
            let state = &mut self.nets[p.net];
            let update = state.observe(&p.layout, v, p.meta);
            if update.skipped {
                self.counters.skipped_updates += 1;
                self.longest_skip_streak = self.longest_skip_streak.max(state.skip_streak());
            } else {
                self.counters.applied[p.net] += 1;
            }
            let health = (p.net == Net::Generator).then(|| self.nets.map(|s| s.health_report()));
            out.push((Observed { net: p.net, step: p.step, critic_step: p.critic_step, skipped_updates: self.counters.skipped_updates, health }, update));
        }
        Ok(out)
    }

    /// Every tensor a checkpoint holds, named, as views of the live state.
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        state_tensors(&self.nets, &self.critic)
    }

    /// Every tensor a checkpoint holds, with its shape.
    pub fn state_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        shapes(self.state_tensors())
    }

    /// The same for a trainer of `cfg`, without data or ranks (the networks are built on the
    /// CPU): what a checkpoint of a run of `cfg` must hold.
    pub fn state_shapes_of(cfg: &Config) -> Result<BTreeMap<String, Vec<usize>>> {
        let n = Networks::new(cfg, Device::Cpu)?;
        Ok(shapes(state_tensors(&n.nets, &n.critic)))
    }

    /// The state on the host (the tensors' one read each).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut tensors = TensorMap::new();
        for (name, t) in self.state_tensors() {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            tensors.insert(name, (shape, crate::hostread::vec_f32(&t)?));
        }
        Ok(Snapshot { counters: self.counters, health: self.nets.map(|s| Some(s.health().snapshot())), tensors })
    }

    /// Returns to `s`: every tensor, the counters and the optimizers' step counts, the
    /// learning rates, no skips in a row; the rest as `why` says (a resume takes the
    /// snapshot's detectors and counts fault-injection attempts from its critic step; a
    /// rollback keeps both).
    pub fn restore(&mut self, s: &Snapshot, why: Restore) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, mut dst) in self.state_tensors() {
                let (shape, data) = s.tensors.get(&name).with_context(|| format!("the state has no tensor {name}"))?;
                let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                dst.copy_(&crate::device::upload(&Tensor::from_slice(data).view(shape.as_slice()), self.device));
            }
            Ok(())
        })?;
        self.counters = s.counters;
        for net in Net::ALL {
            let health = if why == Restore::Resume { s.health[net].as_ref() } else { None };
            self.nets[net].restore(s.counters.applied[net], health);
        }
        self.set_lr_scale(s.counters.lr_scale);
        if why == Restore::Resume {
            self.faults.count_from(s.counters.critic_step);
        }
        Ok(())
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

/// An observed update's place in the run.
struct Observed {
    net: Net,
    step: u64,
    critic_step: u64,
    skipped_updates: u64,
    /// Both detectors, after a generator update.
    health: Option<PerNet<crate::sink::record::HealthReport>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectives::Local;
    use crate::data::Mnist;

    /// A trainer on 64 random images with a tiny model and the given overrides.
    fn trainer(overrides: &[&str]) -> Trainer {
        let mut all = vec!["critic.width=2", "generator.width=2", "model.latent=4", "data.batch_size=8", "train.n_critic=2", "train.device=\"cpu\""];
        all.extend_from_slice(overrides);
        let o: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        let cfg = Config::from_toml_str("", &o).unwrap();
        let mut rng = crate::seeds::SplitMix64::new(9);
        let n = 64;
        let m = Mnist { images: (0..n * 784).map(|_| rng.below(256) as u8).collect(), labels: vec![0; n], n };
        let data = DeviceImages::from_mnist(&m, Device::Cpu).unwrap();
        Trainer::new(cfg, Rc::new(Local), Device::Cpu, data).unwrap()
    }

    /// One update of the phase of `net`, outside an iteration.
    fn one_update(t: &mut Trainer, net: Net) {
        let phase = t.phases.iter().find(|p| p.net == net).unwrap().clone();
        t.update(&phase).unwrap();
    }

    /// The pending updates, read and observed, wherever the iteration stands.
    fn sync_updates(t: &mut Trainer) -> Vec<UpdateRecord> {
        t.observe_pending().unwrap().into_iter().map(|(_, u)| u).collect()
    }

    fn all_updates(its: &[IterationRecord]) -> impl Iterator<Item = &UpdateRecord> {
        its.iter().flat_map(|it| it.critic.iter().chain([&it.generator]))
    }

    fn values(t: &Tensor) -> Vec<f64> {
        crate::hostread::vec_f32(&t.to_kind(Kind::Float)).unwrap().into_iter().map(f64::from).collect()
    }

    /// The phase table: the critic's n_critic updates with its adversarial term and its lazy
    /// penalty (interval and weight), then the generator's terms.
    #[test]
    fn phases_are_the_configurations_terms() {
        let t = trainer(&["critic.penalty_every=4", "critic.penalty_weight=2", "generator.feature_matching=0.5", "train.n_critic=3"]);
        let term = |term, weight, every| PhaseTerm { term, weight, every };
        assert_eq!(
            t.phases,
            vec![
                Phase { net: Net::Critic, updates: 3, terms: vec![term(Term::Adversarial, 1.0, 1), term(Term::Penalty, 2.0, 4)] },
                Phase { net: Net::Generator, updates: 1, terms: vec![term(Term::Adversarial, 1.0, 1), term(Term::FeatureMatching, 0.5, 1)] },
            ]
        );
        let t = trainer(&["critic.penalty=none", "generator.adversarial=0", "generator.feature_matching=1"]);
        assert_eq!(t.phases[0].terms, vec![term(Term::Adversarial, 1.0, 1)]);
        assert_eq!(t.phases[1].terms, vec![term(Term::FeatureMatching, 1.0, 1)]);
    }

    /// The shapes a checkpoint of a configuration must hold are those of its trainer's state,
    /// for every technique that keeps state.
    #[test]
    fn state_shapes_of_a_configuration_are_its_trainers() {
        for o in [&[][..], &["ema.half_life_steps=2", "critic.hist_avg=1e-3", "generator.hist_avg=1e-3", "critic.spectral_norm=true"][..], &["critic.optimizer=sgd", "data.dataset=\"stacked-mnist\""][..]] {
            let t = trainer(o);
            assert_eq!(Trainer::state_shapes_of(t.config()).unwrap(), t.state_shapes(), "{o:?}");
        }
    }

    /// Through the trainer: the EMA after k generator updates equals the closed form over the
    /// generator's recorded parameters, the historical average is their plain mean, and weight
    /// clipping keeps every critic parameter inside [-c, c].
    #[test]
    fn running_state_follows_the_parameter_sequence() {
        let mut t = trainer(&["ema.half_life_steps=2", "generator.hist_avg=1e-3", "critic.weight_clip=0.02"]);
        let beta = 0.5f64.powf(0.5);
        let mut seq = vec![values(&t.generator.params.flat)];
        for _ in 0..4 {
            t.iteration().unwrap();
            assert!(all_updates(&t.sync().unwrap()).all(|u| !u.skipped));
            seq.push(values(&t.generator.params.flat));
            let max = t.critic.params.flat.abs().max().double_value(&[]);
            assert!(max <= 0.02 + 1e-7, "critic parameter {max} outside the clip range");
        }
        // Weight clipping is the critic's alone: the generator's weights were drawn wider.
        assert!(t.generator.params.flat.abs().max().double_value(&[]) > 0.02);
        assert!(t.nets.critic.ema().is_none(), "the EMA is the generator's alone");
        let k = seq.len() - 1;
        let ema = values(&t.nets.generator.ema().unwrap().flat);
        let hist = t.nets.generator.history().unwrap();
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
        // The state holds the model's parameters themselves, not a copy.
        assert_eq!(t.nets.generator.params().flat.data_ptr(), t.generator.params.flat.data_ptr());
    }

    /// Stacked MNIST with the EMA generator: both generators make 3-channel images (the EMA
    /// one used to be built with 1 channel, and the first update failed on a size mismatch).
    #[test]
    fn stacked_mnist_with_ema_trains_and_samples_three_channels() {
        let mut t = trainer(&["data.dataset=\"stacked-mnist\"", "ema.half_life_steps=10"]);
        t.iteration().unwrap();
        assert!(all_updates(&t.sync().unwrap()).all(|u| !u.skipped));
        let z = t.fixed_noise(2);
        assert_eq!(t.sample_bytes(&z).len(), 2 * 3 * 28 * 28);
        assert_eq!(t.ema_generator.as_ref().unwrap().channels, 3);
    }

    /// L2 adds 2 lambda theta to the reduced gradient and its value to the logged loss, and the
    /// lazy penalty appears on every k-th critic update only.
    #[test]
    fn parameter_terms_and_lazy_penalty_are_logged() {
        let mut t = trainer(&["critic.l2=0.5", "critic.penalty_every=2"]);
        let theta = t.critic.params.flat.detach().copy();
        let sq = theta.square().sum(Kind::Float).double_value(&[]);
        one_update(&mut t, Net::Critic);
        let s0 = sync_updates(&mut t).pop().unwrap();
        let l = |t: Term| s0.losses.get(t).unwrap();
        assert!((l(Term::L2) - sq).abs() < 1e-4 * sq);
        // Lazy weight 2 x penalty_weight 10 on even critic steps; L2 weight 0.5.
        let total = l(Term::Adversarial) + 20.0 * l(Term::Penalty) + 0.5 * sq;
        assert!((l(Term::Total) - total).abs() < 1e-4 * total.abs().max(1.0), "{s0:?}");
        assert!(s0.penalty_grad_norm.is_some() && s0.wasserstein.is_some());
        one_update(&mut t, Net::Critic);
        let s1 = sync_updates(&mut t).pop().unwrap();
        assert!(s1.losses.get(Term::Penalty).is_none() && s1.penalty_grad_norm.is_none() && s1.losses.get(Term::Adversarial).is_some());
        // A sync must follow whole iterations.
        one_update(&mut t, Net::Critic);
        assert!(t.sync().unwrap_err().to_string().contains("middle of an iteration"));
    }

    /// With SGD at learning rate 1, one critic step with L2 (lambda) and one without, from the
    /// same state, differ by exactly the gradient term: -2 lambda theta.
    #[test]
    fn l2_and_historical_averaging_enter_the_gradient() {
        let base = ["critic.optimizer=sgd", "critic.lr=1.0"];
        let mut plain = trainer(&base);
        let mut reg = trainer(&[base[0], base[1], "critic.l2=0.25", "critic.hist_avg=3.0"]);
        let theta = plain.critic.params.flat.detach().copy();
        one_update(&mut plain, Net::Critic);
        one_update(&mut reg, Net::Critic);
        // Historical averaging adds 2 * 3 (theta - mean) = 0 on the first step (mean = theta).
        let diff = &reg.critic.params.flat - &plain.critic.params.flat;
        let want = &theta * -0.5;
        assert!((diff - want).abs().max().double_value(&[]) < 1e-5);
        // On the second step the history term is 2 * 3 (theta_1 - (theta_0 + theta_1) / 2).
        let mut reg2 = trainer(&[base[0], base[1], "critic.hist_avg=3.0"]);
        let mut plain2 = trainer(&base);
        one_update(&mut reg2, Net::Critic);
        one_update(&mut plain2, Net::Critic);
        let t1 = reg2.critic.params.flat.detach().copy();
        plain2.critic.params.load_flat(&t1);
        one_update(&mut reg2, Net::Critic);
        one_update(&mut plain2, Net::Critic);
        let diff = &reg2.critic.params.flat - &plain2.critic.params.flat;
        let want = (&t1 - (&theta + &t1) / 2.0) * -6.0;
        assert!((diff - want).abs().max().double_value(&[]) < 1e-5);
    }

    /// Every technique at once, between sync steps: no update reads anything from the device
    /// (the count covers every read in the crate, see `hostread`), and the sync that follows
    /// reads once and reports every update, by iteration.
    #[test]
    fn updates_between_sync_steps_read_nothing_from_the_device() {
        let mut t = trainer(&[
            "critic.clip_norm=0.5",
            "generator.clip_norm=1e-3",
            "critic.clip_value=0.05",
            "generator.clip_value=0.05",
            "critic.l2=1e-3",
            "generator.l2=1e-3",
            "critic.hist_avg=1e-3",
            "generator.hist_avg=1e-3",
            "critic.weight_clip=0.5",
            "ema.half_life_steps=3",
            "critic.spectral_norm=true",
            "generator.feature_matching=0.5",
            "critic.penalty_every=2",
            "faults.nan_critic_updates=[3]",
        ]);
        let before = crate::hostread::count();
        for _ in 0..5 {
            t.iteration().unwrap();
        }
        assert_eq!(crate::hostread::count(), before, "an update between sync steps read from the device");
        let iterations = t.sync().unwrap();
        assert_eq!(crate::hostread::count(), before + 1, "a sync is one read");
        assert_eq!(iterations.len(), 5);
        assert!(iterations.iter().all(|it| it.critic.len() == 2));
        assert_eq!(iterations.iter().map(|it| (it.step, it.critic_step)).collect::<Vec<_>>(), vec![(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]);
        // Critic attempt 3 (iteration 1, second critic update) was skipped, nothing else.
        assert!(iterations[1].critic[1].skipped);
        assert_eq!(all_updates(&iterations).filter(|u| u.skipped).count(), 1);
        assert_eq!(iterations.iter().map(|it| it.skipped_updates).collect::<Vec<_>>(), vec![0, 1, 1, 1, 1]);
        assert_eq!(iterations[1].health.critic.counts.non_finite, 1);
        assert_eq!(t.counters.skipped_updates, 1);
        assert_eq!((t.counters.applied.critic, t.counters.applied.generator), (9, 5));
        let g = &iterations[4].generator;
        let clip = g.clip.unwrap();
        assert!(clip.clipped && clip.norm_after <= 1e-3 * (1.0 + 1e-5), "{clip:?}");
        assert!(g.losses.get(Term::L2).is_some() && g.losses.get(Term::HistAvg).is_some() && g.losses.get(Term::FeatureMatching).is_some(), "{g:?}");
        assert_eq!(g.layer_norms.len(), 4);
        assert_eq!(g.lr, 1e-4);
        // Nothing is pending after a sync.
        assert!(t.sync().unwrap().is_empty());
    }

    /// Without parameter terms or value clipping, the layer norms and the global norm come
    /// from the same reduced gradient by different device computations: the root sum of
    /// squares of the one must equal the other (float32 sums: 1e-5 relative).
    #[test]
    fn synced_norms_agree_with_each_other() {
        let mut t = trainer(&["critic.clip_norm=0.1"]);
        t.iteration().unwrap();
        t.iteration().unwrap();
        for u in all_updates(&t.sync().unwrap()) {
            let c = u.clip.unwrap();
            let rss = u.layer_norms.iter().map(|(_, v)| v * v).sum::<f64>().sqrt();
            assert!((rss - c.norm_before).abs() <= 1e-5 * c.norm_before, "{:?}: {rss} vs {}", u.net, c.norm_before);
            if u.net == Net::Critic {
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
        let mut t = trainer(&["faults.nan_critic_updates=[2]", "critic.hist_avg=1e-3", "critic.weight_clip=0.5", "ema.half_life_steps=3"]);
        let bits = |t: &Trainer| -> Vec<(String, Vec<u32>)> {
            t.state_tensors().into_iter().map(|(k, v)| (k, values(&v).iter().map(|x| (*x as f32).to_bits()).collect())).collect()
        };
        one_update(&mut t, Net::Critic);
        one_update(&mut t, Net::Critic);
        let before = bits(&t);
        one_update(&mut t, Net::Critic);
        assert_eq!(bits(&t), before, "the skipped critic update changed state");
        one_update(&mut t, Net::Generator);
        let after = bits(&t);
        assert!(after.iter().zip(&before).any(|(a, b)| a.0.starts_with("generator.") && a != b), "the next update must move");
        let synced = sync_updates(&mut t);
        assert_eq!(synced.iter().map(|u| u.skipped).collect::<Vec<_>>(), vec![false, false, true, false]);
        assert!(synced[2].clip.is_none() && synced[2].layer_norms.is_empty());
        let c = &t.counters;
        assert_eq!((c.applied.critic, c.applied.generator, c.skipped_updates), (2, 1, 1));
        assert_eq!((t.nets.critic.skip_streak(), t.nets.generator.skip_streak()), (1, 0));
        assert_eq!(t.nets.critic.health().counts().non_finite, 1);
    }
}
