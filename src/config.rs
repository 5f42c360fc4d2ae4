//! The TOML configuration: schema with defaults, `--set a.b=v` overrides, and validation that
//! names the offending field and what it expects.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub loss: LossConfig,
    pub optim: OptimConfig,
    pub clip: ClipConfig,
    pub train: TrainConfig,
    pub dist: DistConfig,
    pub metrics: MetricsConfig,
    pub regularize: RegularizeConfig,
    pub ema: EmaConfig,
    pub health: HealthConfig,
    pub faults: FaultConfig,
    pub eval: EvalConfig,
    /// Left out of the written configuration at its default, so that configurations from
    /// before it hash as they did.
    #[serde(skip_serializing_if = "LogConfig::is_default")]
    pub log: LogConfig,
}

/// Where a run's logs go besides metrics.jsonl (which is always written).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// TensorBoard event files in the run directory (`tensorboard --logdir RUN_DIR`): every
    /// logged scalar, the sample grids, per-layer gradient norms; rank 0 writes them.
    pub tensorboard: bool,
}

impl LogConfig {
    pub fn is_default(&self) -> bool {
        *self == LogConfig::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Base channel width (the paper's DIM).
    pub dim: i64,
    /// Size of the generator's noise input.
    pub latent: i64,
    /// Spectral normalisation of the critic's weights (Miyato et al. 2018).
    pub spectral_norm: bool,
    /// Power-iteration steps per update for spectral normalisation.
    pub sn_power_iterations: u32,
    /// The networks: the paper's 28 x 28 ones, or the DCGAN family that scales with
    /// data.resolution and data.channels. Left out of the written configuration when it is
    /// the paper's, so that configurations from before this key hash as they did.
    #[serde(skip_serializing_if = "Arch::is_paper")]
    pub arch: Arch,
}

/// The generator's and critic's architecture (`crate::model`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The WGAN-GP paper's MNIST networks: 28 x 28 images of any channel count.
    #[default]
    Paper,
    /// DCGAN-style networks without batch statistics, for sides 16 to 256 (powers of two) and
    /// 1 or 3 channels (`crate::model::dcgan`).
    Dcgan,
}

impl Arch {
    pub fn is_paper(&self) -> bool {
        *self == Arch::Paper
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Global batch: the sum over all ranks. Each rank takes batch_size / world_size.
    pub batch_size: i64,
    /// Use only the first N training images (0 = all 60000); for quick runs and tests.
    pub limit: usize,
    pub dataset: Dataset,
}

/// What the GAN learns: MNIST digits, or stacked MNIST (three random digits as the three
/// channels of one image: 1000 modes, the mode-collapse benchmark of VEEGAN and PacGAN).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    Mnist,
    StackedMnist,
}

impl Dataset {
    /// Image channels of the data, and so of the generator's output and the critic's input.
    pub fn channels(self) -> i64 {
        match self {
            Dataset::Mnist => 1,
            Dataset::StackedMnist => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Wasserstein critic loss D(fake) - D(real); pair with the gradient penalty.
    Wgan,
    /// The original minimax BCE GAN: the generator minimises log(1 - D(G(z))).
    Minimax,
    /// The non-saturating BCE GAN: the generator maximises log D(G(z)).
    NonSaturating,
    /// Hinge loss (Lim & Ye 2017, Miyato et al. 2018): critic relu(1 - D(real)) + relu(1 + D(fake)).
    Hinge,
    /// Least squares (Mao et al. 2017), targets 1 (real) and 0 (fake).
    LeastSquares,
}

impl LossKind {
    /// The binary cross-entropy family, the only one where label smoothing means something.
    pub fn is_bce(self) -> bool {
        matches!(self, LossKind::Minimax | LossKind::NonSaturating)
    }
}

/// Which gradient penalty the critic loss carries (weight `loss.gp_lambda`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PenaltyKind {
    /// WGAN-GP: (||grad D(x_hat)|| - 1)^2 at random interpolates.
    TwoSided,
    /// max(0, ||grad D(x_hat)|| - 1)^2 at random interpolates.
    OneSided,
    /// Zero-centred ||grad D(x)||^2 on real data (Mescheder et al. 2018).
    R1,
    /// Zero-centred ||grad D(x)||^2 on generated data.
    R2,
    None,
}

/// Label smoothing of the BCE critic targets (Salimans et al. 2016).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LabelSmoothing {
    None,
    /// Real target 0.9, fake target 0.
    OneSided,
    /// Real target 0.9, fake target 0.1.
    TwoSided,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub kind: LossKind,
    /// Weight of the gradient penalty chosen by `penalty` (0 disables it).
    pub gp_lambda: f64,
    pub penalty: PenaltyKind,
    /// Lazy regularisation: apply the penalty every k critic updates with weight k * gp_lambda.
    pub penalty_every: u64,
    pub label_smoothing: LabelSmoothing,
    /// Weight of the feature-matching term in the generator loss (0 = off).
    pub feature_matching: f64,
    /// Weight of the adversarial term in the generator loss (0 with feature matching = pure FM).
    pub g_adversarial: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    Adam,
    /// Plain SGD: its step scales with the gradient, so norm clipping bounds it (Adam's does not).
    Sgd,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr_g: f64,
    pub lr_d: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClipConfig {
    /// Global L2-norm threshold for the critic's gradient (0 = no clipping).
    pub max_norm_d: f64,
    /// Global L2-norm threshold for the generator's gradient (0 = no clipping).
    pub max_norm_g: f64,
    /// Clamp each element of the critic's gradient to [-v, v] (0 = off); before norm clipping.
    pub value_d: f64,
    /// Same for the generator.
    pub value_g: f64,
}

/// Parameter regularisers that act on the (rank-identical) parameters, and WGAN weight clipping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegularizeConfig {
    /// Historical averaging weight lambda in lambda ||theta - mean of past theta||^2, critic (0 = off).
    pub hist_avg_d: f64,
    pub hist_avg_g: f64,
    /// L2 regularisation lambda ||theta||^2 (weight decay as a gradient term), critic (0 = off).
    pub l2_d: f64,
    pub l2_g: f64,
    /// Original WGAN: clamp every critic parameter to [-c, c] after each step (0 = off).
    pub weight_clip: f64,
}

/// Exponential moving average of the generator's weights.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmaConfig {
    /// Half-life in generator updates (0 = unset).
    pub half_life_steps: f64,
    /// Half-life in images shown to the generator, batch_size per update (0 = unset).
    pub half_life_images: f64,
    /// Sample grids during training come from the EMA weights when EMA is on.
    pub use_for_samples: bool,
}

/// Thresholds of the gradient-health detector (diagnostic only: training is not changed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// A network's pre-clip gradient norm under this for `vanish_patience` updates is vanishing.
    pub vanish_threshold: f64,
    pub vanish_patience: u64,
    /// A norm over this is exploding.
    pub explode_threshold: f64,
    /// A norm at least this factor above the one `growth_window` updates earlier is exploding.
    pub growth_factor: f64,
    pub growth_window: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Generator updates to run (each preceded by n_critic critic updates).
    pub iterations: u64,
    pub n_critic: u64,
    pub seed: u64,
    /// "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// CPU threads for libtorch (0 = libtorch's default).
    pub threads: i32,
    pub log_every: u64,
    pub sample_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// After this many skipped (non-finite) updates in a row of one network, roll back to the
    /// newest checkpoint with the learning rates scaled by `rollback_lr_scale`.
    pub max_consecutive_skips: u64,
    pub rollback_lr_scale: f64,
    /// Give up (error) after this many rollbacks in one process.
    pub max_rollbacks: u32,
    /// After SIGTERM/SIGINT the ranks finish the iteration, checkpoint and exit; a process
    /// still running this many seconds after the signal exits at once.
    pub stop_grace_seconds: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Under mpirun/srun: NCCL when every rank has a GPU of its own, else MPI.
    /// Started directly: a single process.
    Auto,
    Local,
    Mpi,
    Nccl,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    pub backend: Backend,
    /// Longest wait for one collective (all-reduce, broadcast, NCCL's set-up) before the job
    /// is aborted. Rank 0's own work is never inside it: see root_work_timeout_seconds.
    pub timeout_seconds: f64,
    /// Longest wait of a rank for the others on the host (the barrier after rank 0's
    /// evaluation, samples and checkpoints, the start-up, the per-iteration stop agreement).
    pub root_work_timeout_seconds: f64,
    /// Take the reduction path (flatten, collective, unflatten, apply) in every update even
    /// with one rank, where it is otherwise skipped: for checking a backend on one GPU (the
    /// GPU check runs NCCL's kernel in every update so). Same parameters either way.
    /// Left out of the written configuration when false, so that configurations from before
    /// the key hash as they did (`trajectory_hash`) and their checkpoints resume.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub force_reduce: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on host:port_base + local rank (false = no server).
    pub enabled: bool,
    /// IP address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 for cluster scraping.
    pub host: String,
    /// Port of local rank 0; 0 lets every rank take any free port (the targets file lists them).
    pub port_base: u16,
    /// A folder that a shared Prometheus watches (file_sd, `gandist-*.json`): rank 0 writes
    /// the run's targets there as gandist-<run>-<job>.json and removes the file at a clean
    /// end. "" = none (the run directory's prometheus-targets.json is written either way).
    pub sd_dir: String,
}

/// Fault injection, for tests of the failure paths. Off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Critic updates (0-based, counting every attempt of this process, also those a rollback
    /// undid; a resumed process starts counting at the checkpoint's critic step) whose local
    /// gradient becomes NaN.
    pub nan_critic_updates: Vec<u64>,
    /// The rank that injects them (-1 = every rank).
    pub nan_rank: i64,
    /// Keep the gradient penalty's gradient out of the all-reduce (each rank applies its own):
    /// a deliberately wrong trainer that the world-size tests must catch.
    pub unreduced_penalty: bool,
    /// The critic update attempt (counted like nan_critic_updates) at which `fail_rank`
    /// fails with an error, as a device fault would (absent = never).
    pub fail_critic_update: Option<u64>,
    pub fail_rank: i64,
    /// Rank 0 sleeps this long in its rank-0-only work (slow storage, a long evaluation).
    pub root_work_delay_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate sample quality every N generator updates (0 = never). Rank 0 evaluates while
    /// the other ranks wait for it at a host barrier (dist.root_work_timeout_seconds).
    pub every: u64,
    /// Samples per evaluation: small, since the evaluation stalls the update.
    pub n: usize,
    /// Classifier file ("" = classifier.safetensors in the MNIST folder).
    pub classifier: String,
    /// What each evaluation scores: "classifier-fid" (the MNIST classifier: FID, classes
    /// covered, ...), "inception-fid" (pytorch-fid's Inception FID) or "kid" (torch-fidelity's
    /// KID), the last two against the training images' Inception features, cached. This key
    /// and the two below are left out of the written text at their defaults, so that
    /// configurations from before them hash as they did (`trajectory_hash`).
    #[serde(skip_serializing_if = "EvalConfig::is_default_metric")]
    pub metric: String,
    /// pytorch-fid's weight file for the Inception metrics ("" = $GANDIST_INCEPTION_WEIGHTS,
    /// else torch hub's copy of pt_inception-2015-12-05-6726825d.pth).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub inception_weights: String,
    /// Training images the Inception reference is taken from (the first N; 0 = all).
    #[serde(skip_serializing_if = "EvalConfig::is_default_reference_n")]
    pub reference_n: usize,
}

impl EvalConfig {
    fn is_default_metric(m: &String) -> bool {
        m == "classifier-fid"
    }

    fn is_default_reference_n(n: &usize) -> bool {
        *n == 10_000
    }
}

/// The values of `eval.metric`.
pub const EVAL_METRICS: [&str; 3] = ["classifier-fid", "inception-fid", "kid"];

impl Default for RegularizeConfig {
    fn default() -> Self {
        RegularizeConfig { hist_avg_d: 0.0, hist_avg_g: 0.0, l2_d: 0.0, l2_g: 0.0, weight_clip: 0.0 }
    }
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig { half_life_steps: 0.0, half_life_images: 0.0, use_for_samples: true }
    }
}

impl EmaConfig {
    pub fn enabled(&self) -> bool {
        self.half_life_steps > 0.0 || self.half_life_images > 0.0
    }

    /// The per-update decay beta = 0.5^(1 / half-life in updates).
    pub fn beta(&self, batch_size: i64) -> f64 {
        let steps = if self.half_life_steps > 0.0 { self.half_life_steps } else { self.half_life_images / batch_size as f64 };
        0.5f64.powf(1.0 / steps)
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { vanish_threshold: 1e-6, vanish_patience: 20, explode_threshold: 1e4, growth_factor: 1e3, growth_window: 50 }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { dim: 64, latent: 128, spectral_norm: false, sn_power_iterations: 1, arch: Arch::Paper }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { batch_size: 50, limit: 0, dataset: Dataset::Mnist }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            kind: LossKind::Wgan,
            gp_lambda: 10.0,
            penalty: PenaltyKind::TwoSided,
            penalty_every: 1,
            label_smoothing: LabelSmoothing::None,
            feature_matching: 0.0,
            g_adversarial: 1.0,
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig { kind: OptimKind::Adam, lr_g: 1e-4, lr_d: 1e-4, beta1: 0.5, beta2: 0.9, eps: 1e-8 }
    }
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig { max_norm_d: 0.0, max_norm_g: 0.0, value_d: 0.0, value_g: 0.0 }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            iterations: 200_000,
            n_critic: 5,
            seed: 0,
            device: "auto".into(),
            threads: 0,
            log_every: 100,
            sample_every: 1000,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            max_consecutive_skips: 20,
            rollback_lr_scale: 0.5,
            max_rollbacks: 3,
            stop_grace_seconds: 120.0,
        }
    }
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { backend: Backend::Auto, timeout_seconds: 300.0, root_work_timeout_seconds: 1800.0, force_reduce: false }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: false, host: "127.0.0.1".into(), port_base: crate::metrics::DEFAULT_PORT_BASE, sd_dir: String::new() }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { every: 0, n: 1000, classifier: String::new(), metric: "classifier-fid".into(), inception_weights: String::new(), reference_n: 10_000 }
    }
}

impl Config {
    /// Reads a TOML file, applies `section.key=value` overrides, and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml_str(&text, overrides)
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Config> {
        let mut value: toml::Value = toml::from_str(text)?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let config: Config = value.try_into()?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Every range check, each naming its field and the expected range.
    pub fn validate(&self) -> Result<()> {
        fn check(ok: bool, field: &str, value: impl std::fmt::Display, expected: &str) -> Result<()> {
            if !ok {
                bail!("{field} = {value} is out of range: expected {expected}");
            }
            Ok(())
        }
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        check(self.model.dim >= 1 && self.model.dim <= 4096, "model.dim", self.model.dim, "1..=4096")?;
        check(self.model.latent >= 1 && self.model.latent <= 65536, "model.latent", self.model.latent, "1..=65536")?;
        check(self.data.batch_size >= 1, "data.batch_size", self.data.batch_size, "at least 1")?;
        check(finite_nonneg(self.loss.gp_lambda), "loss.gp_lambda", self.loss.gp_lambda, "a finite value >= 0")?;
        check(finite_pos(self.optim.lr_g), "optim.lr_g", self.optim.lr_g, "a finite value > 0")?;
        check(finite_pos(self.optim.lr_d), "optim.lr_d", self.optim.lr_d, "a finite value > 0")?;
        check((0.0..1.0).contains(&self.optim.beta1), "optim.beta1", self.optim.beta1, "0 <= beta1 < 1")?;
        check((0.0..1.0).contains(&self.optim.beta2), "optim.beta2", self.optim.beta2, "0 <= beta2 < 1")?;
        check(finite_pos(self.optim.eps), "optim.eps", self.optim.eps, "a finite value > 0")?;
        check(finite_nonneg(self.clip.max_norm_d), "clip.max_norm_d", self.clip.max_norm_d, "a finite value >= 0 (0 = off)")?;
        check(finite_nonneg(self.clip.max_norm_g), "clip.max_norm_g", self.clip.max_norm_g, "a finite value >= 0 (0 = off)")?;
        check(finite_nonneg(self.clip.value_d), "clip.value_d", self.clip.value_d, "a finite value >= 0 (0 = off)")?;
        check(finite_nonneg(self.clip.value_g), "clip.value_g", self.clip.value_g, "a finite value >= 0 (0 = off)")?;
        check(self.model.sn_power_iterations >= 1, "model.sn_power_iterations", self.model.sn_power_iterations, "at least 1")?;
        check(self.loss.penalty_every >= 1, "loss.penalty_every", self.loss.penalty_every, "at least 1")?;
        check(finite_nonneg(self.loss.feature_matching), "loss.feature_matching", self.loss.feature_matching, "a finite value >= 0 (0 = off)")?;
        check(finite_nonneg(self.loss.g_adversarial), "loss.g_adversarial", self.loss.g_adversarial, "a finite value >= 0")?;
        if self.loss.g_adversarial == 0.0 && self.loss.feature_matching == 0.0 {
            bail!("loss.g_adversarial = 0 and loss.feature_matching = 0 leave the generator without a loss: expected at least one > 0");
        }
        if self.loss.label_smoothing != LabelSmoothing::None && !self.loss.kind.is_bce() {
            bail!(
                "loss.label_smoothing = {:?} applies to the BCE losses only: expected loss.kind = \"minimax\" or \"non-saturating\" (got {:?}), or label_smoothing = \"none\"",
                self.loss.label_smoothing,
                self.loss.kind
            );
        }
        let r = &self.regularize;
        for (v, f) in [(r.hist_avg_d, "regularize.hist_avg_d"), (r.hist_avg_g, "regularize.hist_avg_g"), (r.l2_d, "regularize.l2_d"), (r.l2_g, "regularize.l2_g"), (r.weight_clip, "regularize.weight_clip")] {
            check(finite_nonneg(v), f, v, "a finite value >= 0 (0 = off)")?;
        }
        check(finite_nonneg(self.ema.half_life_steps), "ema.half_life_steps", self.ema.half_life_steps, "a finite value >= 0 (0 = off)")?;
        check(finite_nonneg(self.ema.half_life_images), "ema.half_life_images", self.ema.half_life_images, "a finite value >= 0 (0 = off)")?;
        if self.ema.half_life_steps > 0.0 && self.ema.half_life_images > 0.0 {
            bail!("ema.half_life_steps and ema.half_life_images are both set: expected at most one > 0");
        }
        let h = &self.health;
        check(finite_nonneg(h.vanish_threshold), "health.vanish_threshold", h.vanish_threshold, "a finite value >= 0")?;
        check(h.vanish_patience >= 1, "health.vanish_patience", h.vanish_patience, "at least 1")?;
        check(finite_pos(h.explode_threshold), "health.explode_threshold", h.explode_threshold, "a finite value > 0")?;
        check(h.growth_factor.is_finite() && h.growth_factor > 1.0, "health.growth_factor", h.growth_factor, "a finite value > 1")?;
        check(h.growth_window >= 1, "health.growth_window", h.growth_window, "at least 1")?;
        check(self.train.iterations >= 1, "train.iterations", self.train.iterations, "at least 1")?;
        check(self.train.n_critic >= 1, "train.n_critic", self.train.n_critic, "at least 1")?;
        check(self.train.max_consecutive_skips >= 1, "train.max_consecutive_skips", self.train.max_consecutive_skips, "at least 1")?;
        check(self.train.rollback_lr_scale > 0.0 && self.train.rollback_lr_scale <= 1.0, "train.rollback_lr_scale", self.train.rollback_lr_scale, "0 < scale <= 1")?;
        check(self.train.stop_grace_seconds.is_finite() && self.train.stop_grace_seconds > 0.0, "train.stop_grace_seconds", self.train.stop_grace_seconds, "a finite value > 0")?;
        check(self.train.threads >= 0, "train.threads", self.train.threads, ">= 0")?;
        check(self.train.log_every >= 1, "train.log_every", self.train.log_every, "at least 1")?;
        check(self.train.sample_every >= 1, "train.sample_every", self.train.sample_every, "at least 1")?;
        check(self.train.checkpoint_every >= 1, "train.checkpoint_every", self.train.checkpoint_every, "at least 1")?;
        check(self.train.keep_checkpoints >= 1, "train.keep_checkpoints", self.train.keep_checkpoints, "at least 1")?;
        check(self.dist.timeout_seconds.is_finite() && self.dist.timeout_seconds > 0.0, "dist.timeout_seconds", self.dist.timeout_seconds, "a finite value > 0")?;
        let root = self.dist.root_work_timeout_seconds;
        check(root.is_finite() && root > 0.0, "dist.root_work_timeout_seconds", root, "a finite value > 0")?;
        check(finite_nonneg(self.faults.root_work_delay_seconds), "faults.root_work_delay_seconds", self.faults.root_work_delay_seconds, "a finite value >= 0")?;
        check(
            self.metrics.host.parse::<std::net::IpAddr>().is_ok(),
            "metrics.host",
            format!("{:?}", self.metrics.host),
            "an IP address such as \"127.0.0.1\" or \"0.0.0.0\"",
        )?;
        check(self.eval.n >= 2, "eval.n", self.eval.n, "at least 2 (the Frechet distance needs a covariance)")?;
        check(EVAL_METRICS.contains(&self.eval.metric.as_str()), "eval.metric", format!("{:?}", self.eval.metric), "one of \"classifier-fid\", \"inception-fid\", \"kid\"")?;
        parse_device_name(&self.train.device)
            .with_context(|| format!("train.device = {:?}", self.train.device))?;
        Ok(())
    }

    /// Hash of everything that defines the trajectory of a run, so that a checkpoint is only
    /// resumed by a compatible configuration. Length, logging, device, launch and metrics
    /// settings are left out: they may change between a run and its resumption.
    pub fn trajectory_hash(&self) -> String {
        let mut c = self.clone();
        c.train.iterations = 0;
        c.train.device = String::new();
        c.train.threads = 0;
        c.train.log_every = 0;
        c.train.sample_every = 0;
        c.train.checkpoint_every = 0;
        c.train.keep_checkpoints = 0;
        c.train.max_consecutive_skips = 0;
        c.train.rollback_lr_scale = 0.0;
        c.train.max_rollbacks = 0;
        c.train.stop_grace_seconds = 0.0;
        c.faults = FaultConfig::default();
        c.dist = DistConfig::default();
        c.metrics = MetricsConfig::default();
        c.health = HealthConfig::default();
        c.ema.use_for_samples = true;
        c.eval = EvalConfig::default();
        c.log = LogConfig::default();
        hex::encode(Sha256::digest(c.to_toml().as_bytes()))
    }
}

/// Checks a device name's form; whether CUDA is present is decided at start.
pub fn parse_device_name(name: &str) -> Result<()> {
    match name {
        "auto" | "cpu" | "cuda" => Ok(()),
        s if s.strip_prefix("cuda:").is_some_and(|i| i.parse::<usize>().is_ok()) => Ok(()),
        _ => bail!("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""),
    }
}

/// Applies one `a.b=value` override. The value is read as TOML (so `1e-4`, `true`, `"x"`
/// keep their types) and falls back to a plain string (`kind=wgan`).
fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .with_context(|| format!("override {assignment:?}: expected section.key=value"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        bail!("override {assignment:?}: expected section.key=value");
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let mut node = root;
    for part in &path[..path.len() - 1] {
        let table = node
            .as_table_mut()
            .with_context(|| format!("override {assignment:?}: {part} is not a table"))?;
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    node.as_table_mut()
        .with_context(|| format!("override {assignment:?}: parent of {} is not a table", path[path.len() - 1]))?
        .insert(path[path.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        format!("{:#}", Config::from_toml_str(text, &o).unwrap_err())
    }

    #[test]
    fn defaults_are_the_papers_wgan_gp() {
        let c = Config::from_toml_str("", &[]).unwrap();
        assert_eq!(c.model.dim, 64);
        assert_eq!(c.loss.gp_lambda, 10.0);
        assert_eq!(c.train.n_critic, 5);
        assert_eq!((c.optim.lr_d, c.optim.beta1, c.optim.beta2), (1e-4, 0.5, 0.9));
    }

    #[test]
    fn overrides_keep_types_and_reach_nested_keys() {
        let o = ["optim.lr_d=3e-4".to_string(), "loss.kind=non-saturating".to_string(), "train.device=\"cpu\"".to_string()];
        let c = Config::from_toml_str("[optim]\nlr_d = 1.0\n", &o).unwrap();
        assert_eq!(c.optim.lr_d, 3e-4);
        assert_eq!(c.loss.kind, LossKind::NonSaturating);
        assert_eq!(c.train.device, "cpu");
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(err("[optim]\nlearning_rate = 1.0\n", &[]).contains("learning_rate"));
        assert!(err("[optimizer]\n", &[]).contains("optimizer"));
        assert!(err("", &["train.itrations=5"]).contains("itrations"));
    }

    #[test]
    fn dataset_choice() {
        let c = Config::from_toml_str("", &["data.dataset=stacked-mnist".to_string()]).unwrap();
        assert_eq!((c.data.dataset, c.data.dataset.channels()), (Dataset::StackedMnist, 3));
        assert_eq!(Config::default().data.dataset.channels(), 1);
        let e = err("", &["data.dataset=cifar"]);
        assert!(e.contains("cifar") && e.contains("stacked-mnist"), "{e}");
    }

    #[test]
    fn architecture_choice() {
        assert_eq!(Config::default().model.arch, Arch::Paper);
        let c = Config::from_toml_str("", &["model.arch=dcgan".to_string()]).unwrap();
        assert_eq!(c.model.arch, Arch::Dcgan);
        assert!(c.to_toml().contains("arch = \"dcgan\""));
        let e = err("", &["model.arch=resnet"]);
        assert!(e.contains("resnet") && e.contains("dcgan"), "{e}");
    }

    /// Keys added since (model.arch, the data keys) are left out of the hashed text at their
    /// defaults, so that a configuration from before them hashes as it did and its checkpoints
    /// resume: the hashes of the default and of stacked MNIST, computed by gandist before
    /// those keys existed.
    #[test]
    fn configurations_from_before_new_keys_hash_as_they_did() {
        assert_eq!(Config::default().trajectory_hash(), "56e10ab8c32f99db97e86d140feb3ecf7b7729a7a3cf1c7283925892129f61bc");
        let stacked = Config::from_toml_str("", &["data.dataset=stacked-mnist".to_string()]).unwrap();
        assert_eq!(stacked.trajectory_hash(), "12be5d587fffeb59450bc5f476a0d42af567fed059b8e610a1d19fda16f7cbe2");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = err("[data]\nbatch_size = \"big\"\n", &[]);
        assert!(e.contains("batch_size"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_field_and_range() {
        for (o, field) in [
            ("optim.lr_d=0", "optim.lr_d"),
            ("optim.lr_g=-1", "optim.lr_g"),
            ("data.batch_size=0", "data.batch_size"),
            ("train.n_critic=0", "train.n_critic"),
            ("loss.gp_lambda=-1", "loss.gp_lambda"),
            ("optim.beta2=1.0", "optim.beta2"),
            ("clip.max_norm_d=nan", "clip.max_norm_d"),
            ("train.device=tpu", "train.device"),
            ("clip.value_d=-1", "clip.value_d"),
            ("loss.penalty_every=0", "loss.penalty_every"),
            ("loss.feature_matching=-1", "loss.feature_matching"),
            ("regularize.hist_avg_g=inf", "regularize.hist_avg_g"),
            ("regularize.weight_clip=-0.01", "regularize.weight_clip"),
            ("ema.half_life_images=-5", "ema.half_life_images"),
            ("health.growth_factor=1", "health.growth_factor"),
            ("model.sn_power_iterations=0", "model.sn_power_iterations"),
            ("metrics.host=localhost", "metrics.host"),
            ("metrics.port_base=70000", "port_base"),
            ("eval.n=1", "eval.n"),
            ("eval.metric=\"fid\"", "eval.metric"),
        ] {
            let e = err("", &[o]);
            assert!(e.contains(field), "{o}: {e}");
        }
    }

    #[test]
    fn inconsistent_technique_settings_are_named() {
        let e = err("", &["loss.label_smoothing=one-sided"]);
        assert!(e.contains("loss.label_smoothing") && e.contains("BCE"), "{e}");
        let e = err("", &["loss.g_adversarial=0"]);
        assert!(e.contains("loss.g_adversarial") && e.contains("loss.feature_matching"), "{e}");
        let e = err("", &["ema.half_life_steps=10", "ema.half_life_images=640"]);
        assert!(e.contains("ema.half_life_steps") && e.contains("at most one"), "{e}");
        let e = err("", &["loss.penalty=r3"]);
        assert!(e.contains("penalty") && e.contains("r3"), "{e}");
        // Valid combinations parse.
        let c = Config::from_toml_str("", &["loss.kind=minimax".into(), "loss.label_smoothing=two-sided".into(), "loss.penalty=r1".into()]).unwrap();
        assert_eq!(c.loss.penalty, PenaltyKind::R1);
    }

    #[test]
    fn ema_beta_from_half_life() {
        let mut e = EmaConfig { half_life_steps: 10.0, ..Default::default() };
        assert!((e.beta(64).powi(10) - 0.5).abs() < 1e-12);
        e = EmaConfig { half_life_images: 6400.0, ..Default::default() };
        // 6400 images at 64 per update: a half-life of 100 updates.
        assert!((e.beta(64).powi(100) - 0.5).abs() < 1e-12);
        assert!(!EmaConfig::default().enabled());
    }

    #[test]
    fn malformed_override_is_rejected() {
        assert!(err("", &["train"]).contains("expected section.key=value"));
        assert!(err("", &["train..x=1"]).contains("expected section.key=value"));
    }

    #[test]
    fn trajectory_hash_ignores_length_but_not_learning_rate() {
        let a = Config::default();
        let mut b = a.clone();
        b.train.iterations += 10;
        b.train.device = "cpu".into();
        b.eval.every = 7;
        b.log.tensorboard = true;
        assert_eq!(a.trajectory_hash(), b.trajectory_hash());
        b.optim.lr_d *= 2.0;
        assert_ne!(a.trajectory_hash(), b.trajectory_hash());
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Config::load(&p, &[]).unwrap();
                n += 1;
            }
        }
        assert!(n >= 3, "expected at least 3 configs in {}", dir.display());
        let abl = crate::ablation::configs_in(&dir.join("ablation")).unwrap();
        assert!(abl.len() >= 7);
        for p in abl {
            let c = Config::load(&p, &[]).unwrap();
            assert_eq!(c.train.threads, 1, "{}: ablation runs share the machine", p.display());
        }
    }
}
