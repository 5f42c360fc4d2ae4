//! One training state and its updates: critic and generator phases, each ending in one
//! all-reduce of one flat buffer (gradient, non-finite flag, loss scalars), then clipping
//! and an Adam step that every rank takes or skips together.

use crate::checkpoint::TensorMap;
use crate::config::Config;
use crate::data::sampler::{derive_seed, DistributedSampler};
use crate::data::DeviceImages;
use crate::dist::Collective;
use crate::model::{Critic, Generator};
use crate::objective;
use crate::optim::{clip_global_norm, Adam, ClipReport};
use crate::regularize::gradient_penalty;
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

/// What one update did, after the reduction (identical on every rank).
#[derive(Debug, Clone, Default)]
pub struct UpdateStats {
    /// Named loss terms and diagnostics, averaged over the global batch.
    pub scalars: Vec<(&'static str, f64)>,
    pub clip: Option<ClipReport>,
    /// The update was skipped because some rank saw a non-finite gradient.
    pub skipped: bool,
    /// Some rank asked to stop (signal); travels in the same reduction.
    pub stop_requested: bool,
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
    sampler: DistributedSampler,
    /// Generator updates completed.
    pub step: u64,
    /// Critic updates completed; also the number of data batches consumed.
    pub critic_step: u64,
    pub local_batch: i64,
    pub skipped_updates: u64,
}

impl Trainer {
    /// Builds both networks from the seed and makes every rank hold rank 0's parameters.
    pub fn new(cfg: Config, comm: Rc<dyn Collective>, device: Device, data: DeviceImages) -> Result<Self> {
        let world = comm.world_size();
        let global = cfg.data.batch_size as usize;
        if global % world != 0 {
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
        let opt_g = Adam::new(&generator.params.flat, o.lr_g, o.beta1, o.beta2, o.eps);
        let opt_d = Adam::new(&critic.params.flat, o.lr_d, o.beta1, o.beta2, o.eps);
        let sampler = DistributedSampler::new(data.n, global, comm.rank(), world, cfg.train.seed);
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
            sampler,
            step: 0,
            critic_step: 0,
            skipped_updates: 0,
        };
        t.broadcast_state()?;
        Ok(t)
    }

    /// Rank 0's parameters and optimizer moments overwrite everyone else's.
    pub fn broadcast_state(&mut self) -> Result<()> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        for t in [
            &self.generator.params.flat,
            &self.critic.params.flat,
            &self.opt_g.exp_avg,
            &self.opt_g.exp_avg_sq,
            &self.opt_d.exp_avg,
            &self.opt_d.exp_avg_sq,
        ] {
            let mut t = t.shallow_clone();
            self.comm.broadcast(&mut t, 0)?;
        }
        Ok(())
    }

    /// The rank's slice of a draw made for the whole global batch.
    fn draw_global(&self, purpose: u64, counter: u64, f: impl FnOnce(i64) -> Tensor) -> Tensor {
        seed_stream(self.cfg.train.seed, purpose, counter);
        let global = self.cfg.data.batch_size;
        f(global).narrow(0, self.comm.rank() as i64 * self.local_batch, self.local_batch)
    }

    fn noise(&self, purpose: u64, counter: u64) -> Tensor {
        let (latent, dev) = (self.cfg.model.latent, self.device);
        self.draw_global(purpose, counter, |g| Tensor::randn([g, latent], (Kind::Float, dev)))
    }

    /// One critic update on data batch number `critic_step`.
    pub fn critic_update(&mut self, stop_requested: bool) -> Result<UpdateStats> {
        let c = self.critic_step;
        let idx = self.sampler.rank_indices(c);
        let real = self.data.batch(&idx);
        let z = self.noise(purpose::CRITIC_NOISE, c);
        let fake = tch::no_grad(|| self.generator.forward(&z));
        let kind = self.cfg.loss.kind;
        let critic = &self.critic;
        let real_out = critic.forward(&real);
        let fake_out = critic.forward(&fake);
        let adv = objective::critic_loss(kind, &real_out, &fake_out);
        let wdist = objective::wasserstein_estimate(&real_out, &fake_out).detach();
        let lambda = self.cfg.loss.gp_lambda;
        let (loss, gp, gp_norm) = if lambda > 0.0 {
            let eps = self.draw_global(purpose::INTERPOLATION, c, |g| Tensor::rand([g, 1, 1, 1], (Kind::Float, real.device())));
            let p = gradient_penalty::two_sided(|x| critic.forward(x), &real, &fake, &eps);
            (&adv + &p.value * lambda, p.value.detach(), p.mean_grad_norm)
        } else {
            let zero = Tensor::zeros([], (Kind::Float, self.device));
            (adv.shallow_clone(), zero.shallow_clone(), zero)
        };
        let grads = Tensor::run_backward(&[&loss], &critic.params.tensors, false, false);
        let flat = critic.params.flatten_grads(&grads);
        let names = ["d_loss", "d_adv", "d_gp", "wasserstein", "gp_grad_norm"];
        let scalars = [loss.detach(), adv.detach(), gp, wdist, gp_norm];
        let (grad, mut stats) = self.reduce(flat, &names, &scalars, stop_requested)?;
        self.critic_step += 1;
        if stats.skipped {
            self.skipped_updates += 1;
        } else {
            let clip = clip_global_norm(&grad, self.cfg.clip.max_norm_d);
            self.opt_d.step(&self.critic.params.flat, &grad);
            stats.clip = Some(clip);
        }
        Ok(stats)
    }

    /// One generator update; its noise is keyed by the generator step.
    pub fn generator_update(&mut self, stop_requested: bool) -> Result<UpdateStats> {
        let z = self.noise(purpose::GENERATOR_NOISE, self.step);
        let fake = self.generator.forward(&z);
        let fake_out = self.critic.forward(&fake);
        let loss = objective::generator_loss(self.cfg.loss.kind, &fake_out);
        let grads = Tensor::run_backward(&[&loss], &self.generator.params.tensors, false, false);
        let flat = self.generator.params.flatten_grads(&grads);
        let (grad, mut stats) = self.reduce(flat, &["g_loss"], &[loss.detach()], stop_requested)?;
        self.step += 1;
        if stats.skipped {
            self.skipped_updates += 1;
        } else {
            let clip = clip_global_norm(&grad, self.cfg.clip.max_norm_g);
            self.opt_g.step(&self.generator.params.flat, &grad);
            stats.clip = Some(clip);
        }
        Ok(stats)
    }

    /// n_critic critic updates then one generator update.
    pub fn iteration(&mut self, stop_requested: bool) -> Result<(Vec<UpdateStats>, UpdateStats)> {
        let mut critic_stats = Vec::with_capacity(self.cfg.train.n_critic as usize);
        for _ in 0..self.cfg.train.n_critic {
            critic_stats.push(self.critic_update(stop_requested)?);
        }
        let g = self.generator_update(stop_requested)?;
        Ok((critic_stats, g))
    }

    /// The one all-reduce of an update: [gradient | non-finite flag | stop flag | scalars],
    /// summed over ranks and divided by the world size.
    fn reduce(&self, grad: Tensor, names: &[&'static str], scalars: &[Tensor], stop: bool) -> Result<(Tensor, UpdateStats)> {
        let n = grad.numel() as i64;
        let nonfinite = grad.isfinite().logical_not().any().to_kind(Kind::Float).view([1]);
        let stop_flag = Tensor::from_slice(&[stop as i32 as f32]).to_device(self.device);
        let mut parts = vec![grad.nan_to_num(0.0, 0.0, 0.0), nonfinite, stop_flag];
        parts.extend(scalars.iter().map(|s| s.to_kind(Kind::Float).view([1])));
        let mut buf = Tensor::cat(&parts, 0);
        let world = self.comm.world_size();
        if world > 1 {
            self.comm.all_reduce_sum(&mut buf)?;
            let _ = buf.g_div_scalar_(world as f64);
        }
        let tail: Vec<f32> = Vec::try_from(&buf.narrow(0, n, 2 + scalars.len() as i64).to_device(Device::Cpu))?;
        let stats = UpdateStats {
            scalars: names.iter().zip(&tail[2..]).map(|(n, v)| (*n, *v as f64)).collect(),
            clip: None,
            skipped: tail[0] > 0.0,
            stop_requested: tail[1] > 0.0,
        };
        Ok((buf.narrow(0, 0, n), stats))
    }

    /// Fixed noise for sample grids: the same on every device and every resumption.
    pub fn fixed_noise(&self, n: i64) -> Tensor {
        seed_stream(self.cfg.train.seed, purpose::FIXED_NOISE, 0);
        Tensor::randn([n, self.cfg.model.latent], (Kind::Float, Device::Cpu)).to_device(self.device)
    }

    /// Generated images for `z`, as bytes 0..255.
    pub fn sample_bytes(&self, z: &Tensor) -> Vec<u8> {
        tch::no_grad(|| crate::model::to_bytes(&self.generator.forward(z)))
    }

    /// Every tensor a checkpoint holds, with its expected shape.
    pub fn state_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.state_tensors().into_iter().map(|(k, t)| (k, t.size().iter().map(|&d| d as usize).collect())).collect()
    }

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
        out
    }

    pub fn export_state(&self) -> Result<TensorMap> {
        let mut map = TensorMap::new();
        for (name, t) in self.state_tensors() {
            let shape = t.size().iter().map(|&d| d as usize).collect();
            let data: Vec<f32> = Vec::try_from(&t.to_device(Device::Cpu).contiguous().flatten(0, -1))?;
            map.insert(name, (shape, data));
        }
        Ok(map)
    }

    pub fn import_state(&mut self, map: &TensorMap) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (name, t) in self.state_tensors() {
                let (shape, data) = map.get(&name).ok_or_else(|| anyhow::anyhow!("state has no tensor {name}"))?;
                let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                let src = Tensor::from_slice(data).view(shape.as_slice()).to_device(self.device);
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
            let v: Vec<f32> = Vec::try_from(&flat.to_device(Device::Cpu))?;
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
