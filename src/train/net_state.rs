//! One network's training state: its optimizer, running averages (historical average, EMA),
//! gradient-health detector, run of skipped updates and hyper-parameters; and the two halves
//! of an update that read the same for both networks. `apply` is everything after the
//! reduction, on the device: parameter regularisers added to the reduced gradient (they depend
//! on parameters only), value and norm clipping, the optimizer step, weight clipping, the
//! running averages, each state change selected by the update's skip condition. `observe` is
//! the host's reading of the update's figures at a sync step.

use crate::config::{Config, NetSettings};
use crate::health::HealthMonitor;
use crate::model::ema::Ema;
use crate::model::params::ParamSet;
use crate::model::Net;
use crate::optim::{clip_global_norm, clip_value, ClipReport, Optimizer};
use crate::regularize::historical_average::HistoricalAverage;
use crate::regularize::{self, weight_clip};
use crate::scalar_log;
use super::timing::StageTimes;
use tch::{Kind, Tensor};

pub struct NetState {
    pub net: Net,
    /// Its settings after the reduction (`Config::net`).
    pub hyper: NetSettings,
    pub optimizer: Optimizer,
    /// The mean of the parameters after every update so far, when historical averaging is on.
    pub history: Option<HistoricalAverage>,
    /// The exponential moving average of the parameters, when on (the trainer keeps one for
    /// the generator only).
    pub ema: Option<Ema>,
    pub health: HealthMonitor,
    /// Skipped updates in a row, as of the last sync.
    pub skip_streak: u64,
}

/// What one update did, after the reduction (identical on every rank), as read at a sync step.
#[derive(Debug, Clone, Default)]
pub struct UpdateStats {
    /// Named loss terms (scalar-log keys) and diagnostics, averaged over the global batch.
    pub scalars: Vec<(&'static str, f64)>,
    pub clip: Option<ClipReport>,
    /// The update was skipped because some rank saw a non-finite gradient.
    pub skipped: bool,
    /// L2 norm of each layer's reduced gradient before clipping (empty when skipped).
    pub layer_norms: Vec<(String, f64)>,
    /// This rank's time in each stage of the update.
    pub times: StageTimes,
    /// Bytes this rank handed to the all-reduce (0 for a single process).
    pub allreduce_bytes: u64,
}

impl UpdateStats {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.scalars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// An update's reduced buffer, in parts (views on the device).
pub struct Reduced {
    pub grad: Tensor,
    /// 1.0 when some rank saw a non-finite gradient (the update is skipped), else 0.0; [1].
    pub skipped: Tensor,
    pub scalars: Tensor,
    pub allreduce_bytes: u64,
}

/// One update's figures on the device, until the next sync step reads them. `figures` is
/// [skipped, norm before clipping, norm after, clipped, reduced scalars.., parameter terms..,
/// per-parameter gradient norms..], float32; everything else is known on the host.
pub struct Pending {
    pub net: Net,
    pub figures: Tensor,
    pub scalar_names: Vec<&'static str>,
    /// Key and weight of each parameter term (L2, historical averaging), in `figures` order.
    pub param_terms: Vec<(&'static str, f64)>,
    pub times: StageTimes,
    pub allreduce_bytes: u64,
}

impl NetState {
    /// The state before the first update of parameters `params`; no EMA (see `Trainer::new`).
    pub fn new(net: Net, cfg: &Config, params: &Tensor) -> NetState {
        let hyper = cfg.net(net);
        NetState {
            net,
            optimizer: Optimizer::from_config(&hyper.optimizer, params),
            history: (hyper.hist_avg > 0.0).then(|| HistoricalAverage::new(params, hyper.hist_avg)),
            ema: None,
            health: HealthMonitor::new(&cfg.health),
            skip_streak: 0,
            hyper,
        }
    }

    /// The learning rate is the configured one times `scale` (lowered by each rollback).
    pub fn set_lr_scale(&mut self, scale: f64) {
        self.optimizer.lr = self.hyper.optimizer.lr * scale;
    }

    /// Everything after the reduction, on the device and identical on every rank (see the
    /// module's comment); `params` is this network's. Returns the update's figures.
    pub fn apply(&mut self, params: &ParamSet, reduced: Reduced, scalar_names: Vec<&'static str>) -> Pending {
        let Reduced { grad, skipped, scalars, allreduce_bytes } = reduced;
        let (h, flat) = (&self.hyper, &params.flat);
        // Of the reduced gradient itself, before the parameter terms join it.
        let per_param = params.param_norms(&grad);
        let apply = skipped.eq(0.0).view([]);
        // Logged unweighted, like every other term; `observe` adds weight * value to the total.
        let mut param_terms = Vec::new();
        let mut term_values = Vec::new();
        if h.l2 > 0.0 {
            term_values.push(regularize::l2::apply(&grad, flat, h.l2));
            param_terms.push((scalar_log::l2(self.net).key, h.l2));
        }
        if let Some(hist) = &self.history {
            term_values.push(hist.apply(&grad, flat));
            param_terms.push((scalar_log::hist_avg(self.net).key, hist.lambda));
        }
        let raw_norm = (h.clip_value > 0.0).then(|| grad.norm());
        clip_value(&grad, h.clip_value);
        let clip = clip_global_norm(&grad, h.clip_norm);
        let (norm_before, clipped) = match raw_norm {
            // Value clipping counts as clipping when it changed the norm.
            Some(raw) => {
                let changed = raw.ne_tensor(&clip.norm_after).to_kind(Kind::Float);
                (raw, clip.clipped.maximum(&changed))
            }
            None => (clip.norm_before, clip.clipped),
        };
        self.optimizer.step(flat, &grad, &apply);
        if h.weight_clip > 0.0 {
            weight_clip::clamp(flat, h.weight_clip, &apply);
        }
        // The averages see the parameters as the step (and any clamp) left them.
        if let Some(hist) = self.history.as_mut() {
            hist.record(flat, &apply);
        }
        if let Some(ema) = self.ema.as_mut() {
            ema.update(flat, &apply);
        }
        let mut figures = vec![skipped.shallow_clone(), norm_before.view([1]), clip.norm_after.view([1]), clipped.view([1]), scalars];
        figures.extend(term_values.iter().map(|v| v.to_kind(Kind::Float).view([1])));
        figures.push(per_param);
        // One small copy: the pending record keeps no view of the large reduced buffer alive.
        let figures = Tensor::cat(&figures, 0);
        Pending { net: self.net, figures, scalar_names, param_terms, times: StageTimes::default(), allreduce_bytes }
    }

    /// The host's side of one update, from its figures `v` as read at a sync: the health
    /// detector and the run of skips move; the stats are returned.
    pub fn observe(&mut self, params: &ParamSet, p: &Pending, v: &[f32]) -> UpdateStats {
        let skipped = v[0] > 0.0;
        let (s, t) = (p.scalar_names.len(), p.param_terms.len());
        let mut scalars: Vec<(&'static str, f64)> = p.scalar_names.iter().zip(&v[4..4 + s]).map(|(n, x)| (*n, *x as f64)).collect();
        let mut stats = UpdateStats { times: p.times, allreduce_bytes: p.allreduce_bytes, skipped, ..UpdateStats::default() };
        if skipped {
            self.skip_streak += 1;
            self.health.observe(f64::NAN);
            stats.scalars = scalars;
            return stats;
        }
        self.skip_streak = 0;
        let mut extra = 0.0;
        for ((name, weight), x) in p.param_terms.iter().zip(&v[4 + s..4 + s + t]) {
            scalars.push((name, *x as f64));
            extra += weight * *x as f64;
        }
        let total = scalar_log::total(self.net).key;
        if let Some(tot) = scalars.iter_mut().find(|(n, _)| *n == total) {
            tot.1 += extra;
        }
        let clip = ClipReport { norm_before: v[1] as f64, norm_after: v[2] as f64, clipped: v[3] > 0.0 };
        self.health.observe(clip.norm_before);
        stats.layer_norms = params.group_layers(&v[4 + s + t..]);
        stats.scalars = scalars;
        stats.clip = Some(clip);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_clipping_is_the_critics_alone_and_each_network_reads_its_table() {
        let cfg = Config::from_toml_str(
            "",
            &["critic.weight_clip=0.01", "generator.l2=0.5", "critic.clip_value=0.2", "generator.lr=3e-4", "generator.clip_norm=2"].map(String::from),
        )
        .unwrap();
        let (d, g) = (cfg.net(Net::Critic), cfg.net(Net::Generator));
        assert_eq!((d.weight_clip, g.weight_clip), (0.01, 0.0));
        assert_eq!((d.l2, g.l2), (0.0, 0.5));
        assert_eq!((d.clip_value, g.clip_value), (0.2, 0.0));
        assert_eq!((d.optimizer.lr, g.optimizer.lr), (1e-4, 3e-4));
        assert_eq!((d.clip_norm, g.clip_norm), (0.0, 2.0));
    }
}
