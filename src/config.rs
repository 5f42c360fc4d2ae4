//! The TOML configuration: schema with defaults, `--set a.b=v` overrides, and validation that
//! names the offending field and what it expects.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    pub eval: EvalConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Base channel width (the paper's DIM).
    pub dim: i64,
    /// Size of the generator's noise input.
    pub latent: i64,
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub kind: LossKind,
    /// Weight of the WGAN-GP gradient penalty (0 disables it).
    pub gp_lambda: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
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
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// MPI when launched by mpirun/srun, else a single process.
    Auto,
    Local,
    Mpi,
    Nccl,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    pub backend: Backend,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on host:port_base + local rank (false = no server).
    pub enabled: bool,
    pub host: String,
    pub port_base: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate sample quality every N generator updates (0 = never). Rank 0 evaluates while
    /// the other ranks go on and then wait for it at their next all-reduce.
    pub every: u64,
    /// Samples per evaluation: small, since the evaluation stalls the update.
    pub n: usize,
    /// Classifier file ("" = classifier.safetensors in the MNIST folder).
    pub classifier: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: ModelConfig::default(),
            data: DataConfig::default(),
            loss: LossConfig::default(),
            optim: OptimConfig::default(),
            clip: ClipConfig::default(),
            train: TrainConfig::default(),
            dist: DistConfig::default(),
            metrics: MetricsConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { dim: 64, latent: 128 }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig { batch_size: 50, limit: 0, dataset: Dataset::Mnist }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { kind: LossKind::Wgan, gp_lambda: 10.0 }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig { lr_g: 1e-4, lr_d: 1e-4, beta1: 0.5, beta2: 0.9, eps: 1e-8 }
    }
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig { max_norm_d: 0.0, max_norm_g: 0.0 }
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
        }
    }
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { backend: Backend::Auto }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: false, host: "127.0.0.1".into(), port_base: 9400 }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { every: 0, n: 1000, classifier: String::new() }
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
        check(self.train.iterations >= 1, "train.iterations", self.train.iterations, "at least 1")?;
        check(self.train.n_critic >= 1, "train.n_critic", self.train.n_critic, "at least 1")?;
        check(self.train.threads >= 0, "train.threads", self.train.threads, ">= 0")?;
        check(self.train.log_every >= 1, "train.log_every", self.train.log_every, "at least 1")?;
        check(self.train.sample_every >= 1, "train.sample_every", self.train.sample_every, "at least 1")?;
        check(self.train.checkpoint_every >= 1, "train.checkpoint_every", self.train.checkpoint_every, "at least 1")?;
        check(self.train.keep_checkpoints >= 1, "train.keep_checkpoints", self.train.keep_checkpoints, "at least 1")?;
        check(self.eval.n >= 2, "eval.n", self.eval.n, "at least 2 (the Frechet distance needs a covariance)")?;
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
        c.dist = DistConfig::default();
        c.metrics = MetricsConfig::default();
        c.eval = EvalConfig::default();
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
            ("eval.n=1", "eval.n"),
        ] {
            let e = err("", &[o]);
            assert!(e.contains(field), "{o}: {e}");
        }
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
    }
}
