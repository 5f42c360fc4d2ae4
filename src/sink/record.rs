//! The typed records of a run, as every reader gets them (`Sink`): one update's figures
//! (`UpdateRecord`), an iteration's (`IterationRecord`), a logging step's (`StepRecord`, the
//! line of metrics.jsonl), an evaluation (`EvalReport`, named metrics), a sample grid, and the
//! run's start, rollbacks and end; and the names of every scalar (`keys`), which metrics.jsonl,
//! the plots, the ablation report and any other reader share.

use crate::health::{GradientHealth, HealthCounts};
use crate::net::{Net, PerNet};
use crate::timing::StageTimes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

/// A term of a network's loss. Values are logged unweighted; `Total` is the weighted sum
/// that was differentiated (with the parameter terms, which join after the reduction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Term {
    Total,
    Adversarial,
    /// The critic's gradient penalty (`critic.penalty`).
    Penalty,
    /// The generator's feature matching.
    FeatureMatching,
    L2,
    /// Historical averaging.
    HistAvg,
}

impl Term {
    pub const ALL: [Term; 6] = [Term::Total, Term::Adversarial, Term::Penalty, Term::FeatureMatching, Term::L2, Term::HistAvg];

    /// Its `term` label in Prometheus (`gandist_loss{net, term}`) and in the plots' legends.
    pub fn label(self) -> &'static str {
        match self {
            Term::Total => "total",
            Term::Adversarial => "adversarial",
            Term::Penalty => "gradient_penalty",
            Term::FeatureMatching => "feature_matching",
            Term::L2 => "l2",
            Term::HistAvg => "historical_averaging",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Each term's value in one update (`None`: this update's loss had no such term, e.g. a lazy
/// penalty between the updates that apply it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Losses([Option<f64>; Term::ALL.len()]);

impl Losses {
    pub fn get(&self, term: Term) -> Option<f64> {
        self.0[term.index()]
    }

    pub fn set(&mut self, term: Term, value: f64) {
        self.0[term.index()] = Some(value);
    }

    /// The terms present, in `Term::ALL` order.
    pub fn iter(&self) -> impl Iterator<Item = (Term, f64)> + '_ {
        Term::ALL.into_iter().filter_map(|t| Some((t, self.get(t)?)))
    }
}

/// Clipping of one update's reduced gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipReport {
    /// The global L2 norm before any clipping (value or norm).
    pub norm_before: f64,
    pub norm_after: f64,
    /// Clipping changed the gradient.
    pub clipped: bool,
}

/// What one update did, identical on every rank (it is read from the reduced values), and this
/// rank's time and traffic for it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRecord {
    pub net: Net,
    /// Skipped on every rank because some rank saw a non-finite gradient.
    pub skipped: bool,
    /// The loss terms, averaged over the global batch (parameter terms absent when skipped).
    pub losses: Losses,
    /// The critic's estimate mean D(real) - mean D(fake) (critic updates only).
    pub wasserstein: Option<f64>,
    /// Mean L2 norm of the critic's input gradient at the penalty's points (when it ran).
    pub penalty_grad_norm: Option<f64>,
    /// Norms before and after clipping; `None` when skipped.
    pub clip: Option<ClipReport>,
    /// Each layer's reduced-gradient L2 norm before clipping, in layer order (empty when skipped).
    pub layer_norms: Vec<(String, f64)>,
    /// The learning rate of the update (after any rollback's scaling).
    pub lr: f64,
    /// This rank's time in each stage of the update.
    pub times: StageTimes,
    /// Bytes this rank handed to the all-reduce (0 for a single process).
    pub allreduce_bytes: u64,
}

/// A network's gradient-health detector after an iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthReport {
    pub state: GradientHealth,
    /// Updates it classed vanishing, exploding, non-finite since the run started.
    pub counts: HealthCounts,
}

/// One iteration (n_critic critic updates, then a generator update) as read at a sync step,
/// with the run's counters after it.
#[derive(Debug, Clone, PartialEq)]
pub struct IterationRecord {
    /// Generator updates completed.
    pub step: u64,
    /// Critic updates completed (data batches consumed).
    pub critic_step: u64,
    /// Updates skipped so far, both networks.
    pub skipped_updates: u64,
    /// The learning rates' scale (lowered by rollbacks).
    pub lr_scale: f64,
    pub critic: Vec<UpdateRecord>,
    pub generator: UpdateRecord,
    pub health: PerNet<HealthReport>,
}

/// An evaluation of sample quality: named metrics, so that a new metric is a new entry and
/// no reader changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The generator step evaluated.
    pub step: u64,
    /// Wall time of the evaluation.
    pub seconds: f64,
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Its key in metrics.jsonl ("fid", "classes_covered", ...).
    pub name: String,
    pub value: MetricValue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricValue {
    Count(u64),
    Real(f64),
    /// A histogram (counts per bin), e.g. samples per predicted class.
    Counts(Vec<u64>),
}

impl MetricValue {
    /// The value as a scalar (`None` for a histogram).
    pub fn scalar(&self) -> Option<f64> {
        match self {
            MetricValue::Count(c) => Some(*c as f64),
            MetricValue::Real(x) => Some(*x),
            MetricValue::Counts(_) => None,
        }
    }

    fn json(&self) -> Value {
        match self {
            MetricValue::Count(c) => json!(c),
            MetricValue::Real(x) => json!(x),
            MetricValue::Counts(v) => json!(v),
        }
    }
}

impl EvalReport {
    /// The scalar metric `name`, if the report has it.
    pub fn scalar(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.name == name).and_then(|m| m.value.scalar())
    }

    /// Every scalar metric, by name.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, f64)> {
        self.metrics.iter().filter_map(|m| Some((m.name.as_str(), m.value.scalar()?)))
    }
}

/// A logging step: the last iteration's figures with the run's at that step, and the
/// evaluation when one ran at this step. One line of metrics.jsonl (`to_json`).
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub iteration: IterationRecord,
    /// Real images shown to the critic so far (critic updates x global batch).
    pub images: u64,
    /// Critic images per second since the previous logging step.
    pub images_per_second: f64,
    /// Seconds since this process started training.
    pub elapsed_seconds: f64,
    pub world_size: usize,
    pub eval: Option<EvalReport>,
}

impl StepRecord {
    /// The record as metrics.jsonl holds it: counters, the last critic update's and the
    /// generator update's terms, norms and clipping, both detectors, the run's figures, and
    /// the evaluation's metrics.
    pub fn to_json(&self) -> Map<String, Value> {
        let it = &self.iteration;
        let mut m = Map::new();
        m.insert(keys::STEP.into(), json!(it.step));
        m.insert(keys::CRITIC_STEP.into(), json!(it.critic_step));
        m.insert(keys::IMAGES.into(), json!(self.images));
        let last_d = it.critic.last().expect("n_critic >= 1");
        for (net, u) in [(Net::Critic, last_d), (Net::Generator, &it.generator)] {
            for (term, v) in u.losses.iter() {
                m.insert(keys::loss(net, term).key.into(), json!(v));
            }
            if let Some(w) = u.wasserstein {
                m.insert(keys::WASSERSTEIN.into(), json!(w));
            }
            if let Some(n) = u.penalty_grad_norm {
                m.insert(keys::GP_GRAD_NORM.into(), json!(n));
            }
            if let Some(clip) = u.clip {
                m.insert(keys::grad_norm(net), json!(clip.norm_before));
                m.insert(keys::grad_norm_clipped(net), json!(clip.norm_after));
            }
            for (layer, v) in &u.layer_norms {
                m.insert(format!("{}{layer}", keys::layer_norm_prefix(net)), json!(v));
            }
            let h = &it.health[net];
            m.insert(keys::health(net), json!(h.state.as_str()));
            m.insert(keys::vanishing_updates(net), json!(h.counts.vanishing));
            m.insert(keys::exploding_updates(net), json!(h.counts.exploding));
            m.insert(keys::nonfinite_updates(net), json!(h.counts.non_finite));
        }
        if let Some(clip) = it.generator.clip {
            m.insert(keys::G_CLIPPED.into(), json!(clip.clipped));
        }
        let d_clips = it.critic.iter().filter(|u| u.clip.is_some_and(|c| c.clipped)).count();
        m.insert(keys::D_CLIPPED_UPDATES.into(), json!(d_clips));
        m.insert(keys::SKIPPED_UPDATES.into(), json!(it.skipped_updates));
        m.insert(keys::IMAGES_PER_SECOND.into(), json!(self.images_per_second));
        m.insert(keys::ELAPSED_SECONDS.into(), json!(self.elapsed_seconds));
        m.insert(keys::WORLD_SIZE.into(), json!(self.world_size));
        m.insert(keys::LR_SCALE.into(), json!(it.lr_scale));
        if let Some(e) = &self.eval {
            for metric in &e.metrics {
                m.insert(metric.name.clone(), metric.value.json());
            }
            m.insert(keys::EVAL_SECONDS.into(), json!(e.seconds));
        }
        m
    }

    /// Every scalar of the record under its metrics.jsonl name (booleans as 0 or 1; the
    /// detectors' states and histograms, which are not scalars, left out): what a reader of
    /// scalar time series (TensorBoard) writes at `iteration.step`.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        self.to_json()
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::Number(n) => n.as_f64().map(|x| (k, x)),
                Value::Bool(b) => Some((k, if b { 1.0 } else { 0.0 })),
                _ => None,
            })
            .collect()
    }
}

/// A grid of generated images from the fixed noise, as the run writes it to samples/.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleGrid {
    pub step: u64,
    /// Images, in (n, channels, height, width) order, 0..255.
    pub bytes: Vec<u8>,
    pub n: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// From the EMA generator.
    pub ema: bool,
}

/// The start of training in this process.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStart {
    /// The step it starts at: 0, or the resumed checkpoint's.
    pub step: u64,
    /// The checkpoint it resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// The step it trains to (`train.iterations`).
    pub target_step: u64,
    pub run_dir: PathBuf,
    pub rank: usize,
    pub world_size: usize,
    /// Real images this rank feeds each critic update.
    pub local_batch: u64,
}

/// A return to an earlier checkpoint after non-finite updates (an event, not a step).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    /// The step returned to.
    pub step: u64,
    /// The learning rates' scale from now on.
    pub lr_scale: f64,
    /// Skipped updates in a row that caused it.
    pub streak: u64,
}

/// A clean end of training (finished, or stopped on a signal after a checkpoint).
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub step: u64,
    /// Seconds this process trained.
    pub seconds: f64,
    /// The signal that stopped it, if one did.
    pub stopped_by: Option<i32>,
}

/// The names of every scalar of a run, shared by metrics.jsonl, Prometheus (loss terms),
/// the plots, the ablation report and any other reader. A new loss term is one line in
/// `loss_terms!` and one `Term`.
pub mod keys {
    use super::Term;
    use crate::net::Net;

    /// A loss term: its key in the scalar log, its network and term.
    #[derive(Debug, PartialEq, Eq)]
    pub struct LossTerm {
        pub key: &'static str,
        pub net: Net,
        pub term: Term,
    }

    macro_rules! loss_terms {
        ($($name:ident = $key:literal, $net:ident, $term:ident;)*) => {
            $(pub const $name: LossTerm = LossTerm { key: $key, net: Net::$net, term: Term::$term };)*
            /// Every loss term, in the order the plots list them.
            pub const LOSS_TERMS: &[LossTerm] = &[$($name),*];
        };
    }

    loss_terms! {
        D_LOSS = "d_loss", Critic, Total;
        D_ADV = "d_adv", Critic, Adversarial;
        D_GP = "d_gp", Critic, Penalty;
        G_LOSS = "g_loss", Generator, Total;
        D_L2 = "d_l2", Critic, L2;
        D_HIST_AVG = "d_hist_avg", Critic, HistAvg;
        G_ADV = "g_adv", Generator, Adversarial;
        G_FM = "g_fm", Generator, FeatureMatching;
        G_L2 = "g_l2", Generator, L2;
        G_HIST_AVG = "g_hist_avg", Generator, HistAvg;
    }

    /// Network `net`'s term `term`. Panics for a pair no loss has (the generator's penalty):
    /// the trainer builds only the table's pairs.
    pub fn loss(net: Net, term: Term) -> &'static LossTerm {
        LOSS_TERMS.iter().find(|t| t.net == net && t.term == term).unwrap_or_else(|| panic!("{net:?} has no loss term {term:?}"))
    }

    /// A network's total loss.
    pub fn total(net: Net) -> &'static LossTerm {
        loss(net, Term::Total)
    }

    // Critic diagnostics that are not loss terms.
    /// Mean D(real) - mean D(fake): the critic's estimate of the Wasserstein distance.
    pub const WASSERSTEIN: &str = "wasserstein";
    /// Mean L2 norm of the critic's input gradient at the gradient penalty's points.
    pub const GP_GRAD_NORM: &str = "gp_grad_norm";

    // Counters and figures of the run.
    pub const STEP: &str = "step";
    pub const CRITIC_STEP: &str = "critic_step";
    pub const IMAGES: &str = "images";
    pub const SKIPPED_UPDATES: &str = "skipped_updates";
    pub const IMAGES_PER_SECOND: &str = "images_per_second";
    pub const ELAPSED_SECONDS: &str = "elapsed_seconds";
    pub const WORLD_SIZE: &str = "world_size";
    pub const LR_SCALE: &str = "lr_scale";
    /// Critic updates of the logged iteration whose gradient was clipped.
    pub const D_CLIPPED_UPDATES: &str = "d_clipped_updates";
    /// Whether the logged generator update was clipped.
    pub const G_CLIPPED: &str = "g_clipped";
    /// A record of an event rather than a step ("rollback").
    pub const EVENT: &str = "event";
    pub const ROLLBACK: &str = "rollback";

    // Sample quality at evaluation steps (with the rest of the evaluation's metrics).
    pub const FID: &str = "fid";
    pub const CLASSES_COVERED: &str = "classes_covered";
    pub const EVAL_SECONDS: &str = "eval_seconds";

    /// The global L2 norm of the network's reduced gradient before clipping ("d_grad_norm").
    pub fn grad_norm(net: Net) -> String {
        format!("{}_grad_norm", net.prefix())
    }

    /// The same after clipping.
    pub fn grad_norm_clipped(net: Net) -> String {
        format!("{}_grad_norm_clipped", net.prefix())
    }

    /// The prefix of per-layer norms: `layer_norm_prefix(net) + layer` ("d_grad_norm.conv1").
    pub fn layer_norm_prefix(net: Net) -> String {
        format!("{}_grad_norm.", net.prefix())
    }

    /// The gradient-health detector's state ("d_health").
    pub fn health(net: Net) -> String {
        format!("{}_health", net.prefix())
    }

    /// Updates the detector classed vanishing, exploding, non-finite since the start.
    pub fn vanishing_updates(net: Net) -> String {
        format!("{}_vanishing_updates", net.prefix())
    }

    pub fn exploding_updates(net: Net) -> String {
        format!("{}_exploding_updates", net.prefix())
    }

    pub fn nonfinite_updates(net: Net) -> String {
        format!("{}_nonfinite_updates", net.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::keys::*;
    use super::*;

    #[test]
    fn loss_terms_are_unique_and_snake_case() {
        for (i, a) in LOSS_TERMS.iter().enumerate() {
            assert!(a.key.starts_with(&format!("{}_", a.net.prefix())), "{} is not keyed by its network", a.key);
            for b in &LOSS_TERMS[i + 1..] {
                assert!(a.key != b.key && (a.net, a.term) != (b.net, b.term), "{} / {}", a.key, b.key);
            }
        }
        for t in Term::ALL {
            assert!(t.label().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{}", t.label());
        }
        for net in Net::ALL {
            for t in [Term::Total, Term::Adversarial, Term::L2, Term::HistAvg] {
                assert_eq!(loss(net, t).net, net);
            }
        }
        assert_eq!(loss(Net::Critic, Term::Penalty).key, "d_gp");
        assert_eq!(loss(Net::Generator, Term::FeatureMatching).key, "g_fm");
    }

    #[test]
    fn per_network_keys() {
        assert_eq!(grad_norm(Net::Critic), "d_grad_norm");
        assert_eq!(grad_norm_clipped(Net::Generator), "g_grad_norm_clipped");
        assert_eq!(format!("{}conv1", layer_norm_prefix(Net::Critic)), "d_grad_norm.conv1");
        assert_eq!(health(Net::Generator), "g_health");
        assert_eq!(vanishing_updates(Net::Generator), "g_vanishing_updates");
        assert_eq!(exploding_updates(Net::Critic), "d_exploding_updates");
        assert_eq!(nonfinite_updates(Net::Critic), "d_nonfinite_updates");
    }

    pub(crate) fn update(net: Net, skipped: bool) -> UpdateRecord {
        let mut losses = Losses::default();
        losses.set(Term::Total, 1.5);
        losses.set(Term::Adversarial, 0.5);
        UpdateRecord {
            net,
            skipped,
            losses,
            wasserstein: (net == Net::Critic).then_some(0.25),
            penalty_grad_norm: None,
            clip: (!skipped).then_some(ClipReport { norm_before: 2.0, norm_after: 1.0, clipped: true }),
            layer_norms: if skipped { vec![] } else { vec![("conv1".into(), 3.0)] },
            lr: 1e-4,
            times: StageTimes::default(),
            allreduce_bytes: 0,
        }
    }

    /// The record's line holds every figure under its key, the logged critic update being the
    /// last; its scalars are the line's numbers and booleans.
    #[test]
    fn a_step_record_is_the_scalar_log_line() {
        let healthy = HealthReport { state: GradientHealth::Healthy, counts: HealthCounts { vanishing: 1, exploding: 0, non_finite: 2 } };
        let mut it = IterationRecord {
            step: 7,
            critic_step: 14,
            skipped_updates: 2,
            lr_scale: 0.5,
            critic: vec![update(Net::Critic, false), update(Net::Critic, true)],
            generator: update(Net::Generator, false),
            health: PerNet { critic: healthy, generator: healthy },
        };
        it.critic[1].losses.set(Term::Total, 9.0);
        let eval = EvalReport { step: 7, seconds: 0.5, metrics: vec![Metric { name: "fid".into(), value: MetricValue::Real(3.5) }, Metric { name: "class_histogram".into(), value: MetricValue::Counts(vec![1, 2]) }] };
        let r = StepRecord { iteration: it, images: 14 * 64, images_per_second: 10.0, elapsed_seconds: 2.0, world_size: 2, eval: Some(eval) };
        let j = r.to_json();
        assert_eq!(j["d_loss"], json!(9.0), "the last critic update is logged");
        assert!(!j.contains_key("d_grad_norm"), "it was skipped: no norms");
        assert_eq!((j["g_grad_norm"].clone(), j["g_grad_norm_clipped"].clone(), j["g_clipped"].clone()), (json!(2.0), json!(1.0), json!(true)));
        assert_eq!(j["d_clipped_updates"], json!(1));
        assert_eq!(j["g_grad_norm.conv1"], json!(3.0));
        assert_eq!((j["d_health"].clone(), j["d_nonfinite_updates"].clone()), (json!("healthy"), json!(2)));
        assert_eq!((j["step"].clone(), j["images"].clone(), j["lr_scale"].clone()), (json!(7), json!(896), json!(0.5)));
        assert_eq!((j["fid"].clone(), j["class_histogram"].clone(), j["eval_seconds"].clone()), (json!(3.5), json!([1, 2]), json!(0.5)));
        let s: std::collections::BTreeMap<String, f64> = r.scalars().into_iter().collect();
        assert_eq!((s["g_clipped"], s["fid"], s["wasserstein"]), (1.0, 3.5, 0.25));
        assert!(!s.contains_key("d_health") && !s.contains_key("class_histogram"));
        assert_eq!(s.len(), j.values().filter(|v| v.is_number() || v.is_boolean()).count());
    }
}
