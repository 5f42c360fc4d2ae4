//! The TOML configuration: schema with defaults, `--set a.b=v` overrides, and validation that
//! names the offending field and what it expects. Each network's settings are a table of their
//! own, `[critic]` and `[generator]`; the keys they replaced (`optim.lr_d`, `clip.max_norm_g`,
//! `model.dim`, ...) still work for a release, with a warning naming the new key (`legacy`).
//! Two configurations are the same run when their `trajectory` parts are equal, whichever keys
//! wrote them.

mod legacy;

use crate::net::Net;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub model: ModelConfig,
    pub critic: CriticConfig,
    pub generator: GeneratorConfig,
    pub data: DataConfig,
    pub loss: LossConfig,
    pub train: TrainConfig,
    pub dist: DistConfig,
    pub metrics: MetricsConfig,
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
    /// Size of the generator's noise input.
    pub latent: i64,
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

/// The critic: its optimizer, its width and Lipschitz constraints, the penalty and label
/// smoothing of its loss, and what acts on its reduced gradient and parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CriticConfig {
    pub optimizer: OptimKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Base channel width (the paper's DIM).
    pub width: i64,
    /// Spectral normalisation of the critic's weights (Miyato et al. 2018).
    pub spectral_norm: bool,
    /// Power-iteration steps per update for spectral normalisation.
    pub sn_power_iterations: u32,
    /// Which gradient penalty the critic loss carries.
    pub penalty: PenaltyKind,
    /// Weight of the penalty (0 disables it).
    pub penalty_weight: f64,
    /// Lazy regularisation: apply the penalty every k critic updates with weight k * penalty_weight.
    pub penalty_every: u64,
    pub label_smoothing: LabelSmoothing,
    /// L2 regularisation lambda ||theta||^2 (weight decay as a gradient term; 0 = off).
    pub l2: f64,
    /// Historical averaging weight lambda in lambda ||theta - mean of past theta||^2 (0 = off).
    pub hist_avg: f64,
    /// Global L2-norm threshold of the reduced gradient (0 = no clipping).
    pub clip_norm: f64,
    /// Clamp each element of the gradient to [-v, v] (0 = off); before norm clipping.
    pub clip_value: f64,
    /// Original WGAN: clamp every critic parameter to [-c, c] after each step (0 = off).
    pub weight_clip: f64,
}

/// The generator: its optimizer, its width, the terms of its loss, and what acts on its
/// reduced gradient. (Its EMA is `[ema]`.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorConfig {
    pub optimizer: OptimKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Base channel width (the paper's DIM).
    pub width: i64,
    /// Weight of the adversarial term (0 with feature matching = pure feature matching).
    pub adversarial: f64,
    /// Weight of the feature-matching term (0 = off).
    pub feature_matching: f64,
    /// L2 regularisation weight (0 = off).
    pub l2: f64,
    /// Historical averaging weight (0 = off).
    pub hist_avg: f64,
    /// Global L2-norm threshold of the reduced gradient (0 = no clipping).
    pub clip_norm: f64,
    /// Clamp each element of the gradient to [-v, v] (0 = off); before norm clipping.
    pub clip_value: f64,
}

/// A network's optimizer, as `optim::Optimizer` takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    pub kind: OptimKind,
    /// The learning rate before any rollback's scaling.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// What the update of either network does after the reduction (0 = off): the same fields for
/// both, read from `[critic]` or `[generator]` by `Config::net`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetSettings {
    pub optimizer: OptimizerSettings,
    pub l2: f64,
    pub hist_avg: f64,
    pub clip_norm: f64,
    pub clip_value: f64,
    /// The critic's alone (the original WGAN constrains the critic only); 0 for the generator.
    pub weight_clip: f64,
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

/// Which gradient penalty the critic loss carries (weight `critic.penalty_weight`).
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
    /// The game both networks play; each network's own terms are in its table.
    pub kind: LossKind,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    Adam,
    /// Plain SGD: its step scales with the gradient, so norm clipping bounds it (Adam's does not).
    Sgd,
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
    /// "auto" (cuda when available), "cpu", "cuda" or "cuda:N"; parsed when read.
    pub device: DeviceChoice,
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

/// Where a rank computes, `train.device`: parsed once, when the configuration is read, and
/// resolved to a libtorch device at start (`crate::device::select`), where CUDA's presence is
/// known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU (the rank's node-local one), else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The rank's node-local GPU; an error without one.
    Cuda,
    /// This GPU (as this process numbers its visible GPUs).
    CudaIndex(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceChoice::CudaIndex(i)),
                _ => Err(format!("{s:?} is not a device: expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")),
            },
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda => f.write_str("cuda"),
            DeviceChoice::CudaIndex(i) => write!(f, "cuda:{i}"),
        }
    }
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

/// Port of local rank 0's exporter unless `metrics.port_base` says otherwise; local rank r
/// serves on 19400 + r. Outside 9100-9999, the range Prometheus's list of default exporter
/// ports has filled (dcgm-exporter takes 9400 on GPU nodes, node_exporter 9100), and away
/// from the services of a GPU node: Slurm (6817-6820), DCGM's host engine (5555), Ray (6379,
/// 8265, 10001), TensorBoard (6006), Jupyter (8888), Grafana (3000), OTLP (4317, 4318),
/// PyTorch's rendezvous (29400) and master (29500) ports; and below Linux's ephemeral range
/// (32768-60999), where a listener can collide with an outgoing connection's port.
pub const DEFAULT_PORT_BASE: u16 = 19400;

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
        ModelConfig { latent: 128, arch: Arch::Paper }
    }
}

/// The paper's WGAN-GP critic: Adam (0.5, 0.9) at 1e-4, width 64, the two-sided penalty at 10.
impl Default for CriticConfig {
    fn default() -> Self {
        CriticConfig {
            optimizer: OptimKind::Adam,
            lr: 1e-4,
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-8,
            width: 64,
            spectral_norm: false,
            sn_power_iterations: 1,
            penalty: PenaltyKind::TwoSided,
            penalty_weight: 10.0,
            penalty_every: 1,
            label_smoothing: LabelSmoothing::None,
            l2: 0.0,
            hist_avg: 0.0,
            clip_norm: 0.0,
            clip_value: 0.0,
            weight_clip: 0.0,
        }
    }
}

/// The paper's WGAN-GP generator: Adam (0.5, 0.9) at 1e-4, width 64, the adversarial loss alone.
impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            optimizer: OptimKind::Adam,
            lr: 1e-4,
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-8,
            width: 64,
            adversarial: 1.0,
            feature_matching: 0.0,
            l2: 0.0,
            hist_avg: 0.0,
            clip_norm: 0.0,
            clip_value: 0.0,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { batch_size: 50, limit: 0, dataset: Dataset::Mnist }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { kind: LossKind::Wgan }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            iterations: 200_000,
            n_critic: 5,
            seed: 0,
            device: DeviceChoice::Auto,
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
        MetricsConfig { enabled: false, host: "127.0.0.1".into(), port_base: DEFAULT_PORT_BASE, sd_dir: String::new() }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { every: 0, n: 1000, classifier: String::new(), metric: "classifier-fid".into(), inception_weights: String::new(), reference_n: 10_000 }
    }
}

impl Config {
    /// Reads a TOML file, applies `section.key=value` overrides, and validates the result.
    /// Each old key (see `legacy`) is warned about once, naming its new key.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml_str(&text, overrides)
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Like `load`, from the text of a file.
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Config> {
        let (config, renamed) = Self::parse(text, overrides)?;
        // Every rank parses the same configuration: one warning per key, from rank 0.
        if crate::logging::rank_from_env().unwrap_or(0) == 0 {
            for r in renamed {
                tracing::warn!("{r}");
            }
        }
        Ok(config)
    }

    /// The configuration a checkpoint or run directory embeds, old keys and all, without
    /// warnings: the user did not type it.
    pub fn from_embedded(text: &str) -> Result<Config> {
        Ok(Self::parse(text, &[])?.0)
    }

    /// Parses, migrates old keys (the file's, then each override's in order, so that a later
    /// override wins whichever name it uses), validates; returns the old keys met.
    fn parse(text: &str, overrides: &[String]) -> Result<(Config, Vec<legacy::Renamed>)> {
        let mut value: toml::Value = toml::from_str(text)?;
        let mut renamed = legacy::migrate(&mut value)?;
        for o in overrides {
            renamed.extend(apply_override(&mut value, o)?);
        }
        let config: Config = value.try_into().map_err(|e| legacy::explain(anyhow::Error::from(e), &renamed))?;
        config.validate().map_err(|e| legacy::explain(e, &renamed))?;
        Ok((config, renamed))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Network `net`'s settings after the reduction: optimizer, parameter terms, clipping.
    pub fn net(&self, net: Net) -> NetSettings {
        match net {
            Net::Critic => {
                let c = &self.critic;
                NetSettings {
                    optimizer: OptimizerSettings { kind: c.optimizer, lr: c.lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps },
                    l2: c.l2,
                    hist_avg: c.hist_avg,
                    clip_norm: c.clip_norm,
                    clip_value: c.clip_value,
                    weight_clip: c.weight_clip,
                }
            }
            Net::Generator => {
                let g = &self.generator;
                NetSettings {
                    optimizer: OptimizerSettings { kind: g.optimizer, lr: g.lr, beta1: g.beta1, beta2: g.beta2, eps: g.eps },
                    l2: g.l2,
                    hist_avg: g.hist_avg,
                    clip_norm: g.clip_norm,
                    clip_value: g.clip_value,
                    weight_clip: 0.0,
                }
            }
        }
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
        check(self.model.latent >= 1 && self.model.latent <= 65536, "model.latent", self.model.latent, "1..=65536")?;
        check(self.data.batch_size >= 1, "data.batch_size", self.data.batch_size, "at least 1")?;
        for net in Net::ALL {
            let t = net.as_str();
            let (width, o) = match net {
                Net::Critic => (self.critic.width, self.net(net).optimizer),
                Net::Generator => (self.generator.width, self.net(net).optimizer),
            };
            check((1..=4096).contains(&width), &format!("{t}.width"), width, "1..=4096")?;
            check(finite_pos(o.lr), &format!("{t}.lr"), o.lr, "a finite value > 0")?;
            check((0.0..1.0).contains(&o.beta1), &format!("{t}.beta1"), o.beta1, "0 <= beta1 < 1")?;
            check((0.0..1.0).contains(&o.beta2), &format!("{t}.beta2"), o.beta2, "0 <= beta2 < 1")?;
            check(finite_pos(o.eps), &format!("{t}.eps"), o.eps, "a finite value > 0")?;
            let s = self.net(net);
            for (v, key) in [(s.l2, "l2"), (s.hist_avg, "hist_avg"), (s.clip_norm, "clip_norm"), (s.clip_value, "clip_value"), (s.weight_clip, "weight_clip")] {
                check(finite_nonneg(v), &format!("{t}.{key}"), v, "a finite value >= 0 (0 = off)")?;
            }
        }
        let c = &self.critic;
        check(finite_nonneg(c.penalty_weight), "critic.penalty_weight", c.penalty_weight, "a finite value >= 0")?;
        check(c.sn_power_iterations >= 1, "critic.sn_power_iterations", c.sn_power_iterations, "at least 1")?;
        check(c.penalty_every >= 1, "critic.penalty_every", c.penalty_every, "at least 1")?;
        let g = &self.generator;
        check(finite_nonneg(g.feature_matching), "generator.feature_matching", g.feature_matching, "a finite value >= 0 (0 = off)")?;
        check(finite_nonneg(g.adversarial), "generator.adversarial", g.adversarial, "a finite value >= 0")?;
        if g.adversarial == 0.0 && g.feature_matching == 0.0 {
            bail!("generator.adversarial = 0 and generator.feature_matching = 0 leave the generator without a loss: expected at least one > 0");
        }
        if c.label_smoothing != LabelSmoothing::None && !self.loss.kind.is_bce() {
            bail!(
                "critic.label_smoothing = {:?} applies to the BCE losses only: expected loss.kind = \"minimax\" or \"non-saturating\" (got {:?}), or label_smoothing = \"none\"",
                c.label_smoothing,
                self.loss.kind
            );
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
        Ok(())
    }

    /// Everything that defines the trajectory of a run, so that a checkpoint is only resumed
    /// by a compatible configuration: this configuration with length, logging, device,
    /// launch, metrics and evaluation settings reset (they may change between a run and its
    /// resumption). Compare these, not the text: old and new keys give the same value.
    pub fn trajectory(&self) -> Config {
        let mut c = self.clone();
        c.train.iterations = 0;
        c.train.device = DeviceChoice::Auto;
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
        c
    }

    /// A hash of `trajectory()`, recorded in checkpoints (the comparison itself is of values).
    pub fn trajectory_hash(&self) -> String {
        hex::encode(Sha256::digest(self.trajectory().to_toml().as_bytes()))
    }

    /// The trajectory settings in which `other` differs from this configuration, as
    /// `key = this vs other` lines (empty: the same trajectory).
    pub fn trajectory_differences(&self, other: &Config) -> Vec<String> {
        let flat = |c: &Config| {
            let mut out = std::collections::BTreeMap::new();
            legacy::flatten("", &toml::Value::try_from(c.trajectory()).expect("config serialises"), &mut out);
            out
        };
        let (a, b) = (flat(self), flat(other));
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let show = |v: Option<&toml::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
        keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| format!("{k} = {} vs {}", show(a.get(k)), show(b.get(k)))).collect()
    }
}

/// Applies one `a.b=value` override. The value is read as TOML (so `1e-4`, `true`, `"x"`
/// keep their types) and falls back to a plain string (`kind=wgan`). An old key is applied as
/// its new one(s); it is returned so that the caller can warn.
fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<Vec<legacy::Renamed>> {
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
    // The override on its own, migrated like a file, then merged in leaf by leaf.
    let mut single = value;
    for part in path.iter().rev() {
        single = toml::Value::Table(toml::Table::from_iter([(part.to_string(), single)]));
    }
    let renamed = legacy::migrate(&mut single).with_context(|| format!("override {assignment:?}"))?;
    let mut leaves = std::collections::BTreeMap::new();
    legacy::flatten("", &single, &mut leaves);
    for (leaf, v) in leaves {
        let parts: Vec<&str> = leaf.split('.').collect();
        let mut node = &mut *root;
        for part in &parts[..parts.len() - 1] {
            let table = node
                .as_table_mut()
                .with_context(|| format!("override {assignment:?}: {part} is not a table"))?;
            node = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
        node.as_table_mut()
            .with_context(|| format!("override {assignment:?}: parent of {} is not a table", parts[parts.len() - 1]))?
            .insert(parts[parts.len() - 1].to_string(), v);
    }
    Ok(renamed)
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
        assert_eq!((c.critic.width, c.generator.width), (64, 64));
        assert_eq!(c.critic.penalty_weight, 10.0);
        assert_eq!(c.train.n_critic, 5);
        assert_eq!((c.critic.lr, c.critic.beta1, c.critic.beta2), (1e-4, 0.5, 0.9));
        assert_eq!((c.generator.lr, c.generator.beta1, c.generator.beta2), (1e-4, 0.5, 0.9));
    }

    #[test]
    fn overrides_keep_types_and_reach_nested_keys() {
        let o = ["critic.lr=3e-4".to_string(), "loss.kind=non-saturating".to_string(), "train.device=\"cpu\"".to_string()];
        let c = Config::from_toml_str("[critic]\nlr = 1.0\n", &o).unwrap();
        assert_eq!(c.critic.lr, 3e-4);
        assert_eq!(c.loss.kind, LossKind::NonSaturating);
        assert_eq!(c.train.device, DeviceChoice::Cpu);
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(err("[critic]\nlearning_rate = 1.0\n", &[]).contains("learning_rate"));
        // A key of a retired table that was never one of its keys: named, with where they went.
        let e = err("[optim]\nlearning_rate = 1.0\n", &[]);
        assert!(e.contains("optim.learning_rate") && e.contains("[critic]"), "{e}");
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

    /// train.device is parsed when the configuration is read, and written back as it was given.
    #[test]
    fn the_device_is_parsed_once_and_round_trips() {
        for (text, want) in [("auto", DeviceChoice::Auto), ("cpu", DeviceChoice::Cpu), ("cuda", DeviceChoice::Cuda), ("cuda:3", DeviceChoice::CudaIndex(3))] {
            let c = Config::from_toml_str(&format!("[train]\ndevice = \"{text}\"\n"), &[]).unwrap();
            assert_eq!(c.train.device, want);
            assert!(c.to_toml().contains(&format!("device = \"{text}\"")), "{}", c.to_toml());
        }
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let e = err(&format!("[train]\ndevice = \"{bad}\"\n"), &[]);
            assert!(e.contains("train.device") && e.contains("cuda:N"), "{bad:?}: {e}");
        }
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

    /// A configuration written before keys were added or renamed (the format-1 fixture's,
    /// from before model.arch and the network tables) reads as the configuration it was: its
    /// old keys under their new names, defaults for the keys added since. Resuming compares
    /// values (`Snapshot::from_checkpoint`), so its checkpoints resume under today's keys.
    #[test]
    fn configurations_from_before_new_keys_are_the_same_configuration() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("tests/fixtures/checkpoint-v1/step-000000002/meta.json")).unwrap()).unwrap();
        let text = meta["config"].as_str().unwrap();
        assert!(text.contains("[regularize]") && !text.contains("arch"), "the fixture is from before");
        let old = Config::from_embedded(text).unwrap();
        let sets = [
            "critic.width=1", "generator.width=1", "model.latent=4", "data.batch_size=4", "data.limit=64", "train.iterations=4",
            "train.checkpoint_every=2", "train.sample_every=2", "train.log_every=1", "ema.half_life_steps=2", "critic.hist_avg=1e-3",
            "generator.hist_avg=1e-3", "critic.spectral_norm=true", "faults.nan_critic_updates=[1]",
        ];
        let smoke = std::fs::read_to_string(root.join("configs/smoke.toml")).unwrap();
        let today = Config::from_toml_str(&smoke, &sets.map(String::from)).unwrap();
        assert_eq!(old.model.arch, Arch::Paper);
        assert!(old.trajectory_differences(&today).is_empty(), "{:?}", old.trajectory_differences(&today));
        assert_eq!(old.trajectory_hash(), today.trajectory_hash());
    }

    #[test]
    fn wrong_types_are_named() {
        let e = err("[data]\nbatch_size = \"big\"\n", &[]);
        assert!(e.contains("batch_size"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_field_and_range() {
        for (o, field) in [
            ("critic.lr=0", "critic.lr"),
            ("generator.lr=-1", "generator.lr"),
            ("data.batch_size=0", "data.batch_size"),
            ("train.n_critic=0", "train.n_critic"),
            ("critic.penalty_weight=-1", "critic.penalty_weight"),
            ("generator.beta2=1.0", "generator.beta2"),
            ("critic.clip_norm=nan", "critic.clip_norm"),
            ("train.device=tpu", "train.device"),
            ("critic.clip_value=-1", "critic.clip_value"),
            ("critic.penalty_every=0", "critic.penalty_every"),
            ("generator.feature_matching=-1", "generator.feature_matching"),
            ("generator.hist_avg=inf", "generator.hist_avg"),
            ("critic.weight_clip=-0.01", "critic.weight_clip"),
            ("critic.width=0", "critic.width"),
            ("generator.width=5000", "generator.width"),
            ("ema.half_life_images=-5", "ema.half_life_images"),
            ("health.growth_factor=1", "health.growth_factor"),
            ("critic.sn_power_iterations=0", "critic.sn_power_iterations"),
            // An old key's error names the new key and the old one the user typed.
            ("optim.lr_d=0", "critic.lr was given by its old name optim.lr_d"),
            ("regularize.hist_avg_g=inf", "generator.hist_avg"),
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
        let e = err("", &["critic.label_smoothing=one-sided"]);
        assert!(e.contains("critic.label_smoothing") && e.contains("BCE"), "{e}");
        let e = err("", &["generator.adversarial=0"]);
        assert!(e.contains("generator.adversarial") && e.contains("generator.feature_matching"), "{e}");
        let e = err("", &["ema.half_life_steps=10", "ema.half_life_images=640"]);
        assert!(e.contains("ema.half_life_steps") && e.contains("at most one"), "{e}");
        let e = err("", &["critic.penalty=r3"]);
        assert!(e.contains("penalty") && e.contains("r3"), "{e}");
        // Spectral norm and weight clipping are the critic's: the generator has no such keys.
        assert!(err("", &["generator.spectral_norm=true"]).contains("spectral_norm"));
        assert!(err("", &["generator.weight_clip=0.1"]).contains("weight_clip"));
        // Valid combinations parse.
        let c = Config::from_toml_str("", &["loss.kind=minimax".into(), "critic.label_smoothing=two-sided".into(), "critic.penalty=r1".into()]).unwrap();
        assert_eq!(c.critic.penalty, PenaltyKind::R1);
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
        b.train.device = DeviceChoice::Cpu;
        b.eval.every = 7;
        b.log.tensorboard = true;
        assert_eq!(a.trajectory_hash(), b.trajectory_hash());
        assert!(a.trajectory_differences(&b).is_empty());
        b.critic.lr *= 2.0;
        assert_ne!(a.trajectory_hash(), b.trajectory_hash());
        assert_eq!(a.trajectory_differences(&b), vec!["critic.lr = 0.0001 vs 0.0002".to_string()]);
    }

    /// Every old key reaches its new key(s) with its value, from a file and through --set,
    /// and gives the configuration (so the trajectory) that the new keys give.
    #[test]
    fn old_keys_are_their_new_keys() {
        use toml::Value;
        let defaults = {
            let mut m = std::collections::BTreeMap::new();
            legacy::flatten("", &Value::try_from(Config::default()).unwrap(), &mut m);
            m
        };
        for &(old, new) in legacy::RENAMED {
            assert!(!defaults.contains_key(old), "{old} is still in the schema");
            // A value unlike the default, of the right type, valid for the key.
            let v = match &defaults[new[0]] {
                Value::Float(_) => match old {
                    "optim.beta1" | "optim.beta2" => "0.25".to_string(),
                    _ => "0.5".to_string(),
                },
                Value::Integer(_) => "3".to_string(),
                Value::Boolean(_) => "true".to_string(),
                Value::String(_) => match old {
                    "optim.kind" => "\"sgd\"".to_string(),
                    "loss.penalty" => "\"r1\"".to_string(),
                    _ => "\"one-sided\"".to_string(),
                },
                other => panic!("{old}: {other:?}"),
            };
            // Label smoothing needs a BCE loss.
            let extra: Vec<String> = if old == "loss.label_smoothing" { vec!["loss.kind=minimax".into()] } else { vec![] };
            let (table, field) = old.split_once('.').unwrap();
            let file_old = format!("[{table}]\n{field} = {v}\n");
            let file_new: String = new.iter().map(|k| {
                let (t, f) = k.split_once('.').unwrap();
                format!("[{t}]\n{f} = {v}\n")
            }).collect();
            let want = Config::parse(&file_new, &extra).unwrap_or_else(|e| panic!("{old}: {e:#}")).0;
            let (from_file, met) = Config::parse(&file_old, &extra).unwrap_or_else(|e| panic!("{old}: {e:#}"));
            assert_eq!(from_file, want, "{old} in a file");
            assert_eq!(met, vec![legacy::Renamed { old, new }]);
            let (from_set, met) = Config::parse("", &[extra.clone(), vec![format!("{old}={v}")]].concat()).unwrap();
            assert_eq!(from_set, want, "--set {old}");
            assert_eq!(met.len(), 1);
            let base = Config::parse("", &extra).unwrap().0;
            assert_ne!(want, base, "{old}: the test value is the default");
            assert!(want.trajectory_differences(&from_file).is_empty());
            assert!(met[0].to_string().contains(new[0]) && met[0].to_string().contains(old));
        }
        // An override wins whichever name it uses; an old and a new name in one file is refused.
        let c = Config::from_embedded("[critic]\nwidth = 8\n[generator]\nwidth = 8\n").unwrap();
        assert_eq!((c.critic.width, c.generator.width), (8, 8));
        let c = Config::from_toml_str("[critic]\nwidth = 8\n", &["model.dim=4".into()]).unwrap();
        assert_eq!((c.critic.width, c.generator.width), (4, 4));
        let c = Config::from_toml_str("[model]\ndim = 4\n", &["generator.width=16".into()]).unwrap();
        assert_eq!((c.critic.width, c.generator.width), (4, 16));
        let e = err("[model]\ndim = 4\n[critic]\nwidth = 8\n", &[]);
        assert!(e.contains("model.dim is the old name of critic.width"), "{e}");
    }

    /// docs/configuration.md lists every old key with its new one(s).
    #[test]
    fn docs_list_every_old_key() {
        let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")).unwrap();
        for &(old, new) in legacy::RENAMED {
            let row = format!("| `{old}` | {} |", new.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" and "));
            assert!(doc.contains(&row), "docs/configuration.md has no row {row}");
        }
    }

    /// The fixture configurations written in the old keys (tests/fixtures) read as the same
    /// trajectory as their new-key form, written by `to_toml`.
    #[test]
    fn an_old_key_configuration_and_its_new_key_form_are_one_trajectory() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer-v1/wgan.toml")).unwrap();
        assert!(text.contains("lr_d"), "the fixture is written in the old keys");
        let old = Config::from_embedded(&text).unwrap();
        let new = Config::from_embedded(&old.to_toml()).unwrap();
        assert!(!old.to_toml().contains("lr_d"));
        assert_eq!(old, new);
        assert_eq!(old.trajectory_hash(), new.trajectory_hash());
        assert_eq!((old.critic.lr, old.critic.clip_norm, old.generator.clip_norm, old.critic.width), (1e-3, 1.0, 0.05, 1));
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
