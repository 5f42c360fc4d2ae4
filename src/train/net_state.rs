//! One network's training state, in one value: its parameters (the tensors its model computes
//! with), optimizer, running averages (historical average, EMA), gradient-health detector and
//! run of skipped updates, with its settings (`[critic]` or `[generator]`). And the two halves
//! of an update that read the same for both networks: `apply` is everything after the
//! reduction, on the device (parameter terms added to the reduced gradient, value and norm
//! clipping, the optimizer step, weight clipping, the running averages, each state change
//! selected by the update's skip condition); `observe` is the host's reading of the update's
//! figures at a sync step.

use super::figures::{DeviceFigures, Layout, Scalar};
use super::snapshot::names;
use crate::config::{Config, NetSettings};
use crate::health::{HealthMonitor, HealthSnapshot};
use crate::model::ema::Ema;
use crate::model::params::ParamSet;
use crate::net::Net;
use crate::optim::{clip_global_norm, clip_value, Optimizer};
use crate::regularize::historical_average::HistoricalAverage;
use crate::regularize::{self, weight_clip};
use crate::sink::record::{HealthReport, Losses, Term, UpdateRecord};
use crate::timing::StageTimes;
use tch::{Kind, Tensor};

pub struct NetState {
    net: Net,
    settings: NetSettings,
    /// The network's parameters: the same tensors as its model's (`Critic::params`, ...).
    params: ParamSet,
    optimizer: Optimizer,
    /// The mean of the parameters after every update so far, when historical averaging is on.
    history: Option<HistoricalAverage>,
    /// The exponential moving average of the parameters, when on (the generator's only).
    ema: Option<Ema>,
    health: HealthMonitor,
    /// Skipped updates in a row, as of the last sync.
    skip_streak: u64,
}

/// What the host knows of an update when it queues it, besides its figures.
#[derive(Debug, Clone, Copy)]
pub struct UpdateMeta {
    pub lr: f64,
    pub times: StageTimes,
    pub allreduce_bytes: u64,
}

impl NetState {
    /// Network `net`'s state before its first update, on `params` (shared with its model),
    /// with `ema` when the network keeps one.
    pub fn new(net: Net, cfg: &Config, params: &ParamSet, ema: Option<Ema>) -> NetState {
        let settings = cfg.net(net);
        let params = params.share();
        NetState {
            net,
            optimizer: Optimizer::from_config(&settings.optimizer, &params.flat),
            history: (settings.hist_avg > 0.0).then(|| HistoricalAverage::new(&params.flat, settings.hist_avg)),
            ema,
            health: HealthMonitor::new(&cfg.health),
            skip_streak: 0,
            settings,
            params,
        }
    }

    pub fn params(&self) -> &ParamSet {
        &self.params
    }

    pub fn ema(&self) -> Option<&Ema> {
        self.ema.as_ref()
    }

    pub fn history(&self) -> Option<&HistoricalAverage> {
        self.history.as_ref()
    }

    pub fn health(&self) -> &HealthMonitor {
        &self.health
    }

    pub fn health_report(&self) -> HealthReport {
        HealthReport { state: self.health.state(), counts: self.health.counts() }
    }

    /// Skipped updates in a row, as of the last sync.
    pub fn skip_streak(&self) -> u64 {
        self.skip_streak
    }

    /// The learning rate of the next update.
    pub fn lr(&self) -> f64 {
        self.optimizer.lr
    }

    /// The learning rate is the configured one times `scale` (lowered by each rollback).
    pub fn set_lr_scale(&mut self, scale: f64) {
        self.optimizer.lr = self.settings.optimizer.lr * scale;
    }

    /// Every tensor of this state a checkpoint holds, named (`snapshot::names`), as views of
    /// the live state, so that restoring and broadcasting write through them.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let (net, params) = (self.net, &self.params);
        let mut out: Vec<(String, Tensor)> = params.names.iter().zip(&params.tensors).map(|(n, t)| (names::param(net, n), t.detach())).collect();
        out.extend(self.optimizer.state().into_iter().map(|(m, t)| (names::moment(net, m), t)));
        if let Some(h) = &self.history {
            out.push((names::history(net, "mean"), h.mean.shallow_clone()));
            out.push((names::history(net, "count"), h.count.shallow_clone()));
        }
        if let Some(e) = &self.ema {
            out.extend(params.views(&e.flat).map(|(n, t)| (names::ema(net, n), t)));
        }
        out
    }

    /// After the tensors were restored: the optimizer's step count (`applied` updates), no
    /// skips in a row, and the detector when a snapshot of it is given.
    pub fn restore(&mut self, applied: u64, health: Option<&HealthSnapshot>) {
        self.optimizer.set_step_count(applied);
        self.skip_streak = 0;
        if let Some(h) = health {
            self.health.restore(h);
        }
    }

    /// Everything after the reduction, on the device and identical on every rank (see the
    /// module's comment): `grad` is the reduced gradient, `skipped` the reduced flag,
    /// `reduced` the values reduced with it (as `layout` names them). Returns the layout of
    /// the update's figures and the figures, packed.
    pub fn apply(&mut self, grad: &Tensor, skipped: &Tensor, reduced: Tensor, layout: Vec<Scalar>) -> (Layout, Tensor) {
        let (s, flat) = (&self.settings, &self.params.flat);
        // Of the reduced gradient itself, before the parameter terms join it.
        let per_param = self.params.param_norms(grad);
        let apply = skipped.eq(0.0).view([]);
        // Logged unweighted, like every other term; `observe` adds weight * value to the total.
        let mut param_terms = Vec::new();
        let mut term_values = Vec::new();
        if s.l2 > 0.0 {
            term_values.push(regularize::l2::apply(grad, flat, s.l2));
            param_terms.push((Term::L2, s.l2));
        }
        if let Some(hist) = &self.history {
            term_values.push(hist.apply(grad, flat));
            param_terms.push((Term::HistAvg, hist.lambda));
        }
        let raw_norm = (s.clip_value > 0.0).then(|| grad.norm());
        clip_value(grad, s.clip_value);
        let clip = clip_global_norm(grad, s.clip_norm);
        let (norm_before, clipped) = match raw_norm {
            // Value clipping counts as clipping when it changed the norm.
            Some(raw) => {
                let changed = raw.ne_tensor(&clip.norm_after).to_kind(Kind::Float);
                (raw, clip.clipped.maximum(&changed))
            }
            None => (clip.norm_before, clip.clipped),
        };
        self.optimizer.step(flat, grad, &apply);
        if s.weight_clip > 0.0 {
            weight_clip::clamp(flat, s.weight_clip, &apply);
        }
        // The averages see the parameters as the step (and any clamp) left them.
        if let Some(hist) = self.history.as_mut() {
            hist.record(flat, &apply);
        }
        if let Some(ema) = self.ema.as_mut() {
            ema.update(flat, &apply);
        }
        let layout = Layout { reduced: layout, param_terms, params: self.params.tensors.len() };
        let figures = DeviceFigures { skipped: skipped.shallow_clone(), norm_before, norm_after: clip.norm_after, clipped, reduced, param_terms: term_values, per_param };
        let packed = layout.pack(figures);
        (layout, packed)
    }

    /// The host's side of one update, from its figures `v` (as `layout` packed them) read at
    /// a sync: the detector and the run of skips move; the update's record is returned.
    pub fn observe(&mut self, layout: &Layout, v: &[f32], meta: UpdateMeta) -> UpdateRecord {
        let f = layout.unpack(v);
        let mut record = UpdateRecord {
            net: self.net,
            skipped: f.skipped,
            losses: Losses::default(),
            wasserstein: None,
            penalty_grad_norm: None,
            clip: None,
            layer_norms: Vec::new(),
            lr: meta.lr,
            times: meta.times,
            allreduce_bytes: meta.allreduce_bytes,
        };
        for (scalar, x) in f.reduced {
            match scalar {
                Scalar::Term(t) => record.losses.set(t, x),
                Scalar::Wasserstein => record.wasserstein = Some(x),
                Scalar::PenaltyGradNorm => record.penalty_grad_norm = Some(x),
            }
        }
        if f.skipped {
            self.skip_streak += 1;
            self.health.observe(f64::NAN);
            return record;
        }
        self.skip_streak = 0;
        let mut extra = 0.0;
        for (term, weight, x) in f.param_terms {
            record.losses.set(term, x);
            extra += weight * x;
        }
        if let Some(total) = record.losses.get(Term::Total) {
            record.losses.set(Term::Total, total + extra);
        }
        self.health.observe(f.clip.norm_before);
        record.layer_norms = self.params.group_layers(&f.per_param);
        record.clip = Some(f.clip);
        record
    }
}
